"""`rlkd-ablate CONFIG`: the paper's ablation in miniature, from one SFT checkpoint, one budget.

Three RL runs that differ only in the reward mix (every other key, the SFT warm-up, the data, the
step/time budget and the held-out set are the config's):

    rlvr        λ=1            labeled prompts only (labeled_fraction = 1): the supervised baseline
    semi        λ=0.5, μ=0.5   labeled and unlabeled prompts (the config's ratio): the paper's setting
    judge_only  λ=0,   μ=1     the judge alone, label-free rewards (the paper reports collapse)

Runs go to OUT/<setting>-<timestamp>/; the command is resumable: a finished setting (its run has
comparison.json) is skipped, an interrupted one resumes from its last checkpoint. Each setting
trains in its own `rlkd-train` process (`python -m rlkd.cli train`), so no run inherits the
memory of the one before and a failing run reports through rlkd-train's own error path. At the end it
writes OUT/ablation.md (pass@1 with 95% CI per setting, plus the SFT start) and OUT/ablation.png
(held-out pass@1 against step for the three).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from rlkd.config import Config, ConfigError, load_config

SETTINGS: dict[str, list[str]] = {
    "rlvr": ["rewards.vr_weight=1.0", "rewards.judge_weight=0.0", "rewards.rerank_weight=0.0", "data.labeled_fraction=1.0"],
    "semi": ["rewards.vr_weight=0.5", "rewards.judge_weight=0.5", "rewards.rerank_weight=0.0"],
    "judge_only": ["rewards.vr_weight=0.0", "rewards.judge_weight=1.0", "rewards.rerank_weight=0.0"],
}


def setting_overrides(overrides: list[str], setting: str, out: Path) -> list[str]:
    return [*overrides, *SETTINGS[setting], f"run.name={json.dumps(setting)}", f"run.output_dir={json.dumps(str(out))}"]


def setting_config(config: Path, overrides: list[str], setting: str, out: Path) -> Config:
    return load_config(config, setting_overrides(overrides, setting, out))


def _run_dir(out: Path, setting: str) -> Path | None:
    runs = sorted(p for p in out.glob(f"{setting}-*") if p.is_dir())
    return runs[-1] if runs else None


def _evals(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("event") == "eval"]


def write_report(out: Path, settings: list[str]) -> tuple[Path, Path | None]:
    """ablation.md (table) and ablation.png (pass@1 against step) from the finished runs."""
    lines = ["| setting | steps | pass@1 start | pass@1 end (95% CI) | change (95% CI) | gained / lost | McNemar p |",
             "|---|---|---|---|---|---|---|"]
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for setting in settings:
        run = _run_dir(out, setting)
        if run is None or not (run / "comparison.json").exists():
            lines.append(f"| {setting} | not run | | | | | |")
            continue
        c = json.loads((run / "comparison.json").read_text())
        pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
        lines.append(f"| {setting} | {c['end_step']} | {pct(c['pass@1_before'])} | {pct(c['pass@1_after'])} "
                     f"({pct(c['pass@1_after_ci95'][0])}–{pct(c['pass@1_after_ci95'][1])}) | {c['diff'] * 100:+.1f} "
                     f"({c['diff_ci95'][0] * 100:+.1f} to {c['diff_ci95'][1] * 100:+.1f}) | {c['gained']} / {c['lost']} "
                     f"| {c['mcnemar_p']:.3g} |")
        evals = _evals(run)
        curves[setting] = ([int(e["step"]) for e in evals], [float(e["eval/pass@1"]) for e in evals])
    table = out / "ablation.md"
    table.write_text("\n".join(lines) + "\n")
    png = None
    if curves:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for setting, (steps, values) in curves.items():
            ax.plot(steps, [100 * v for v in values], marker="o", label=setting)
        ax.set_xlabel("RL step")
        ax.set_ylabel("held-out greedy pass@1 (%)")
        ax.set_title("Reward ablation from one SFT checkpoint")
        ax.legend()
        ax.grid(alpha=0.3)
        png = out / "ablation.png"
        fig.tight_layout()
        fig.savefig(png, dpi=120)
        plt.close(fig)
    return table, png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rlkd-ablate", description=__doc__.split("\n\n")[0])
    p.add_argument("config", type=Path)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--out", type=Path, default=Path("runs/ablation"), help="directory of the three runs (default runs/ablation)")
    p.add_argument("--only", choices=list(SETTINGS), action="append", help="run only these settings (repeatable)")
    args = p.parse_args(argv)
    settings = args.only or list(SETTINGS)
    try:
        for setting in settings:  # every setting's config is valid before the first run starts
            setting_config(args.config, args.overrides, setting, args.out)
    except ConfigError as err:
        print(f"rlkd-ablate: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for setting in settings:
        run = _run_dir(args.out, setting)
        if run is not None and (run / "comparison.json").exists():
            print(f"rlkd-ablate: {setting}: done ({run})")
            continue
        resume = run if run is not None and (run / "checkpoints").is_dir() else None
        print(f"rlkd-ablate: {setting}: {'resuming ' + str(resume) if resume else 'starting'}")
        sets = [a for item in setting_overrides(args.overrides, setting, args.out) for a in ("--set", item)]
        cmd = [sys.executable, "-m", "rlkd.cli", "train", str(args.config), *sets] + (["--resume", str(resume)] if resume else [])
        code = subprocess.run(cmd).returncode
        if code != 0:
            print(f"rlkd-ablate: {setting} stopped (rlkd-train exit {code}); the same command resumes it", file=sys.stderr)
            return code
    table, png = write_report(args.out, settings)
    print(table.read_text())
    print(f"rlkd-ablate: table {table}" + (f", plot {png}" if png else ""))
    return 0
