"""Training curves as PNG files: ``rlkd-plot RUN_DIR`` (and :func:`plot_run` from Python).

Reads ``RUN_DIR/metrics.jsonl`` (one JSON object per training step, plus ``"event": "eval"``
records; see :mod:`rlkd.runlog`) and writes into ``RUN_DIR/plots/``:

========================  ===================================================================
``reward.png``            mean reward by source: ``reward/total``, ``reward/vr``, ``reward/judge``,
                          ``reward/rerank``
``vr_accuracy.png``       ``vr/accuracy`` of the labeled samples (and ``vr/no_answer_rate``)
``eval_pass1.png``        ``eval/pass@1`` of the eval records
``judge.png``             ``judge/vr_auroc`` (judge score vs verifier on labeled samples),
                          ``judge/vr_agreement``, ``judge/abstain_rate``; 0.5 = chance AUROC
``kl.png``                every ``update/*kl*`` key (``update/kl`` to the reference policy,
                          ``update/approx_kl`` to the rollout policy, as logged)
``response_length.png``   ``response/length_mean`` and ``response/length_max`` (tokens)
``time.png``              seconds per phase per step (``time/*_s``), stacked bars
``overview.png``          every panel above that has data, in one figure
========================  ===================================================================

Missing keys, ``null`` (a NaN the run could not measure) and non-numeric values are skipped
point by point; a panel without any data is not drawn (and not written). A partial last line (a
run still writing) is ignored. Uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PANELS", "load_metrics", "main", "plot_run", "series"]

# Canonical phase order of the time plot; other time/*_s keys follow alphabetically.
PHASES = ("rollout", "teacher", "judge", "rerank", "verify", "update", "sync")


def load_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """(step records, eval records) of a metrics.jsonl, each sorted by step; a step logged twice
    (e.g. a resumed run) keeps its last record."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is this an rlkd run directory?)")
    steps: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue  # being written right now
            print(f"rlkd-plot: {path}:{i + 1}: not JSON, skipped", file=sys.stderr)
            continue
        if not isinstance(rec, dict) or not _number(rec.get("step")):
            continue
        if rec.get("event") == "eval":
            evals[int(rec["step"])] = rec
        elif "event" not in rec:  # other events (teacher_references, train_done) are not steps
            steps[int(rec["step"])] = rec
    return [steps[k] for k in sorted(steps)], [evals[k] for k in sorted(evals)]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` over records that have a finite number for it."""
    xs, ys = [], []
    for r in records:
        v: Any = r.get(key)
        if _number(v):
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


def _lines(ax: Any, records: Sequence[dict], keys: Sequence[str], *, styles: dict[str, str] | None = None) -> bool:
    drawn = False
    unmeasured = []
    for key in keys:
        xs, ys = series(records, key)
        if not xs:
            if any(key in r for r in records):  # logged, but only as null (NaN: not measurable)
                unmeasured.append(key)
            continue
        marker = "o" if len(xs) <= 40 else None
        ax.plot(xs, ys, label=key, marker=marker, markersize=4, linestyle=(styles or {}).get(key, "-"))
        drawn = True
    if drawn:
        ax.legend(fontsize=8, loc="best")
        if unmeasured:
            ax.text(0.01, 0.01, "no finite values: " + ", ".join(unmeasured), transform=ax.transAxes,
                    fontsize=7, color="grey", va="bottom")
    return drawn


def _reward(ax: Any, steps: list[dict], evals: list[dict]) -> bool:
    ax.set_title("Reward by source (mean per step)")
    ax.set_ylabel("reward")
    return _lines(ax, steps, ["reward/total", "reward/vr", "reward/judge", "reward/rerank"])


def _vr(ax: Any, steps: list[dict], evals: list[dict]) -> bool:
    ax.set_title("Verifiable reward: accuracy of labeled samples")
    ax.set_ylabel("fraction")
    ax.set_ylim(-0.02, 1.12)
    return _lines(ax, steps, ["vr/accuracy", "vr/no_answer_rate"], styles={"vr/no_answer_rate": "--"})


def _eval(ax: Any, steps: list[dict], evals: list[dict]) -> bool:
    ax.set_title("Held-out greedy pass@1")
    ax.set_ylabel("pass@1")
    ax.set_ylim(-0.02, 1.12)
    xs, ys = series(evals, "eval/pass@1")
    if not xs:
        return False
    ax.plot(xs, ys, marker="o", label="eval/pass@1")
    for x, y in zip(xs, ys):
        ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.legend(fontsize=8, loc="best")
    return True


def _judge(ax: Any, steps: list[dict], evals: list[dict]) -> bool:
    ax.set_title("Judge vs verifier (labeled samples)")
    ax.set_ylim(-0.02, 1.12)
    drawn = _lines(ax, steps, ["judge/vr_auroc", "judge/vr_agreement", "judge/abstain_rate"],
                   styles={"judge/abstain_rate": ":"})
    if drawn:
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
        ax.text(ax.get_xlim()[0], 0.5, " chance AUROC", va="bottom", fontsize=7, color="grey")
    return drawn


def _kl(ax: Any, steps: list[dict], evals: list[dict]) -> bool:
    ax.set_title("KL")
    keys = sorted({k for r in steps for k in r if k.startswith("update/") and "kl" in k[len("update/"):]})
    return _lines(ax, steps, keys)


def _length(ax: Any, steps: list[dict], evals: list[dict]) -> bool:
    ax.set_title("Response length")
    ax.set_ylabel("tokens")
    return _lines(ax, steps, ["response/length_mean", "response/length_max"], styles={"response/length_max": "--"})


def _time(ax: Any, steps: list[dict], evals: list[dict]) -> bool:
    import numpy as np

    ax.set_title("Seconds per phase (per step)")
    ax.set_ylabel("seconds")
    found = {k for r in steps for k in r if k.startswith("time/") and k.endswith("_s") and k != "time/eval_s"}
    canon = [f"time/{p}_s" for p in PHASES]
    keys = [k for k in canon if k in found] + sorted(found - set(canon))
    keys = [k for k in keys if series(steps, k)[0]]
    if not keys:
        return False
    xs = [int(r["step"]) for r in steps]
    bottom = np.zeros(len(xs))
    for key in keys:
        vals = np.array([float(r[key]) if _number(r.get(key)) else 0.0 for r in steps])
        ax.bar(xs, vals, bottom=bottom, label=key.removeprefix("time/").removesuffix("_s"), width=0.8)
        bottom += vals
    ex, ey = series(evals, "time/eval_s")
    if ex:
        ax.scatter(ex, ey, marker="x", color="black", label="eval (not stacked)", zorder=3)
    top = max([float(bottom.max()) if len(bottom) else 0.0] + ey)
    ax.set_ylim(0, top * 1.35 if top > 0 else 1.0)  # headroom for the legend above the bars
    ax.legend(fontsize=7, loc="upper center", ncol=min(4, len(keys) + bool(ex)), framealpha=0.9)
    return True


#: (file stem, draw function) of each panel, in overview order.
PANELS: list[tuple[str, Callable[[Any, list[dict], list[dict]], bool]]] = [
    ("reward", _reward),
    ("vr_accuracy", _vr),
    ("eval_pass1", _eval),
    ("judge", _judge),
    ("kl", _kl),
    ("response_length", _length),
    ("time", _time),
]


def _finish(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None, *, dpi: int = 110) -> list[Path]:
    """Draw the panels of ``run_dir/metrics.jsonl`` into ``out_dir`` (default ``run_dir/plots``);
    returns the PNG paths written (panels without data are skipped, overview.png last)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    steps, evals = load_metrics(run_dir / "metrics.jsonl")
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    have: list[tuple[str, Callable]] = []
    for name, draw in PANELS:
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        try:
            if draw(ax, steps, evals):
                _finish(ax)
                fig.suptitle(run_dir.name, fontsize=8, color="grey", x=0.99, ha="right")
                fig.tight_layout()
                path = out / f"{name}.png"
                fig.savefig(path, dpi=dpi)
                written.append(path)
                have.append((name, draw))
        finally:
            plt.close(fig)
    if have:
        cols = 2 if len(have) > 1 else 1
        rows = math.ceil(len(have) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 3.6 * rows), squeeze=False)
        try:
            for ax, (_, draw) in zip(axes.flat, have):
                draw(ax, steps, evals)
                _finish(ax)
            for ax in list(axes.flat)[len(have):]:
                ax.set_visible(False)
            fig.suptitle(f"{run_dir.name}: {len(steps)} steps, {len(evals)} evals")
            fig.tight_layout()
            path = out / "overview.png"
            fig.savefig(path, dpi=dpi)
            written.append(path)
        finally:
            plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rlkd-plot", description="PNG training curves from RUN_DIR/metrics.jsonl.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, default=None, help="output directory (default RUN_DIR/plots)")
    p.add_argument("--dpi", type=int, default=110)
    args = p.parse_args(argv)
    from rlkd.cli_errors import run_cli

    return run_cli("rlkd-plot", lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    paths = plot_run(args.run_dir, args.out, dpi=args.dpi)
    if not paths:
        print(f"rlkd-plot: {args.run_dir / 'metrics.jsonl'} has no plottable metrics yet", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
