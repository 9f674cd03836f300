"""Judge speed on this CPU: single-token vs generative judging, and packing vs naive padding.

    python benches/bench_judge.py [--model embedded:qwen2.5-coder-1.5b-instruct] [--n 48] [--no-write]

One run, one model (default SmolLM2-135M-Instruct, embedded), the same rows for every path:

1. Single-token judge (`SingleTokenJudge.score`: one forward pass, P(Yes)/(P(Yes)+P(No)) at the
   last position) vs generative judge (`GenerativeJudge.score`: the same prompt plus an
   instruction to reply "Yes"/"No" with an optional one-sentence reason, greedy decoding of up to
   `--max-new-tokens` tokens, first Yes/No word parsed). Responses/s for each, the ratio, and
   accuracy against the labels for each.
2. Packing vs naive padding, same forward (`SingleTokenJudge.last_token_probs`) on the same token
   ids: `rlkd._core.pack_judge_prompts` (length-sorted batches under a token budget) vs fixed-size
   batches in arrival order, each row left-padded to its batch's longest row; the naive batch
   size is the packed run's mean rows per batch, so only the padding differs. Padding tokens and
   seconds for each; the scores must agree.

Rows: the first n/2 questions of GSM8K test (the split shipped in `python/rlkd/datasets/`, or `--data`).
Each gives a CORRECT response -- its gold solution (calculator annotations `<<...>>` removed) --
and an INCORRECT one -- the same solution with the number after `####` perturbed (+1..+9 or x2,
seeded), so the working and the final line disagree. The judge runs reference-guided with the
gold answer as the reference, as training does on labeled prompts (`--mode reference_free`
drops it).

Writes its table into BENCHMARKS.md ("Judge" section; `--no-write` to skip).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))

from rlkd import metrics  # noqa: E402
from rlkd.config import JudgeSection  # noqa: E402
from rlkd.generative_judge import GenerativeJudge, generative_template  # noqa: E402
from rlkd.judge import SingleTokenJudge  # noqa: E402
from rlkd.judge_cli import REFERENCE_FREE_TEMPLATE  # noqa: E402
from rlkd.models import load_causal_lm, set_torch_threads  # noqa: E402

DEFAULT_DATA = ROOT / "python" / "rlkd" / "datasets" / "gsm8k_test.jsonl.gz"  # ships with rlkd
SECTION = "## Judge"


def gsm8k_judge_rows(path: Path, n: int, seed: int = 0) -> list[dict]:
    """n rows (n/2 questions): gold solution (correct) and a perturbed final answer (incorrect)."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    with gzip.open(path, "rt") if path.suffix == ".gz" else path.open() as f:
        for line in f:
            if len(rows) >= n:
                break
            item = json.loads(line)
            solution = re.sub(r"<<[^>]*>>", "", item["answer"]).strip()
            body, _, gold = solution.rpartition("####")
            gold = gold.strip()
            try:
                value = int(gold.replace(",", ""))
            except ValueError:
                continue
            wrong = value * 2 if rng.random() < 0.25 and value != 0 else value + int(rng.integers(1, 10))
            base = {"question": item["question"], "gold": gold}
            rows.append({**base, "response": f"{body.strip()}\n#### {gold}", "label": True})
            rows.append({**base, "response": f"{body.strip()}\n#### {wrong}", "label": False})
    return rows[:n]


def naive_batches(prompts: list[list[int]], batch_rows: int, pad_id: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]]:
    """Fixed-size batches in arrival order, left-padded to the batch's longest row."""
    out = []
    for start in range(0, len(prompts), batch_rows):
        chunk = prompts[start : start + batch_rows]
        width = max(len(p) for p in chunk)
        ids = np.full((len(chunk), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(chunk), width), dtype=np.int64)
        for r, p in enumerate(chunk):
            ids[r, width - len(p) :] = p
            mask[r, width - len(p) :] = 1
        out.append((ids, mask, np.full(len(chunk), width - 1, dtype=np.int64), list(range(start, start + len(chunk)))))
    return out


def packed_prompts(judge: SingleTokenJudge, questions, responses, references):
    """The packed batches of `judge.score` and each sample's unpadded ids (input order)."""
    batches = judge.pack(questions, responses, references)
    prompts: list[list[int]] = [[] for _ in responses]
    for b in batches:
        ids, mask = np.asarray(b.input_ids), np.asarray(b.attention_mask).astype(bool)
        for r, k in enumerate(np.asarray(b.sample_index).tolist()):
            prompts[k] = ids[r][mask[r]].tolist()
    return batches, prompts


@torch.no_grad()
def run_batches(judge: SingleTokenJudge, batches: list[tuple], n: int) -> tuple[np.ndarray, float]:
    p_yes = np.zeros(n, dtype=np.float32)
    t0 = time.perf_counter()
    for ids, mask, last, rows in batches:
        probs = judge.last_token_probs(ids, mask, last)
        p_yes[np.asarray(rows)] = probs[:, judge.yes_ids].sum(-1).numpy()
    return p_yes, time.perf_counter() - t0


def padding(batches: list[tuple]) -> tuple[int, int]:
    real = sum(int(np.asarray(m).sum()) for _, m, _, _ in batches)
    slots = sum(int(np.asarray(i).size) for i, _, _, _ in batches)
    return slots - real, real


def write_section(text: str, path: Path, section: str = SECTION) -> None:
    """Replace (or append) the `section` of BENCHMARKS.md, leaving other sections alone."""
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    start = doc.find(section + "\n")
    if start < 0:
        doc = doc.rstrip("\n") + "\n\n" + text
    else:
        nxt = doc.find("\n## ", start + len(section))
        doc = doc[:start] + text.rstrip("\n") + "\n" + ("\n" + doc[nxt + 1 :] if nxt >= 0 else "")
        doc = doc.rstrip("\n") + "\n"
    path.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="single-token vs generative judging; packing vs naive padding (CPU)")
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--n", type=int, default=48, help="rows (half correct, half incorrect)")
    ap.add_argument("--mode", default="reference_guided", choices=("reference_free", "reference_guided"))
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--gen-batch-size", type=int, default=16)
    ap.add_argument("--max-tokens-per-batch", type=int, default=JudgeSection().max_tokens_per_batch)
    ap.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    args = ap.parse_args(argv)

    set_torch_threads(args.threads)
    d = JudgeSection()
    rows = gsm8k_judge_rows(Path(args.data), args.n)
    questions = [r["question"] for r in rows]
    responses = [r["response"] for r in rows]
    labels = np.array([r["label"] for r in rows], dtype=bool)
    guided = args.mode == "reference_guided"
    references = [r["gold"] for r in rows] if guided else None
    template = d.template if guided else REFERENCE_FREE_TEMPLATE
    model, tok = load_causal_lm(args.model, dtype=args.dtype, device="cpu", progress=False)
    kw = dict(system_prompt=d.system_prompt, yes_words=d.yes_words, no_words=d.no_words, max_len=d.max_len,
              max_tokens_per_batch=args.max_tokens_per_batch)  # fmt: skip
    single = SingleTokenJudge(model, tok, template=template, abstain_threshold=d.abstain_threshold, **kw)
    gen = GenerativeJudge(model, tok, template=generative_template(template), max_new_tokens=args.max_new_tokens,
                          batch_size=args.gen_batch_size, **kw)  # fmt: skip
    warm = slice(0, 4)
    single.score(questions[warm], responses[warm], references[warm] if references else None)
    gen.score(questions[warm], responses[warm], references[warm] if references else None)

    t0 = time.perf_counter()
    st = single.score(questions, responses, references)
    st_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    gv = gen.score(questions, responses, references)
    gen_s = time.perf_counter() - t0

    batches, prompts = packed_prompts(single, questions, responses, references)
    packed = [(b.input_ids, b.attention_mask, b.last_index, np.asarray(b.sample_index).tolist()) for b in batches]
    rows_per_batch = max(1, round(len(rows) / len(batches)))
    naive = naive_batches(prompts, rows_per_batch, single.pad_id)
    p_packed, packed_s = run_batches(single, packed, len(rows))
    p_naive, naive_s = run_batches(single, naive, len(rows))
    pad_packed, real = padding(packed)
    pad_naive, _ = padding(naive)

    s = st.reward.astype(np.float64)
    ok = ~np.isnan(s)
    g_ok = ~gv.abstained
    res = {
        "model": args.model, "dtype": str(model.dtype).replace("torch.", ""), "n": len(rows), "mode": args.mode,
        "threads": torch.get_num_threads(), "machine": platform.platform(), "cpu": _cpu_name(),
        "load_avg": os.getloadavg(), "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "mean_prompt_tokens": real / len(rows),
        "single": {"seconds": st_s, "rps": len(rows) / st_s, "auroc": metrics.auroc(s, labels),
                   "acc05": metrics.accuracy_at(s, labels, 0.5), "best": metrics.best_threshold(s, labels),
                   "abstain": float(st.abstained.mean()), "mass": float(np.mean(st.p_yes + st.p_no))},
        "generative": {"seconds": gen_s, "rps": len(rows) / gen_s, "max_new_tokens": args.max_new_tokens,
                       "mean_new_tokens": float(gv.new_tokens.mean()), "abstain": float(gv.abstained.mean()),
                       "acc_parsed": float(((gv.reward[g_ok] >= 0.5) == labels[g_ok]).mean()) if g_ok.any() else float("nan"),
                       "acc_all": float(np.mean(np.where(g_ok, (gv.reward >= 0.5) == labels, False))),
                       "examples": gv.text[:4]},
        "packing": {"batches": len(batches), "rows_per_naive_batch": rows_per_batch, "naive_batches": len(naive),
                    "real_tokens": real, "pad_packed": pad_packed, "pad_naive": pad_naive,
                    "packed_s": packed_s, "naive_s": naive_s, "max_abs_diff_p_yes": float(np.max(np.abs(p_packed - p_naive)))},
    }  # fmt: skip
    res["ratio"] = res["single"]["rps"] / res["generative"]["rps"]
    print(json.dumps(res, indent=1, default=float))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=float) + "\n")
    if not args.no_write:
        write_section(section_text(res, " ".join(["python benches/bench_judge.py"] + (argv if argv is not None else sys.argv[1:]))),
                      ROOT / "BENCHMARKS.md")  # fmt: skip
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def section_text(r: dict, command: str) -> str:
    s, g, p = r["single"], r["generative"], r["packing"]
    la = ", ".join(f"{x:.1f}" for x in r["load_avg"])
    return f"""{SECTION}

Machine: {r['machine']}; {r['cpu']}; torch threads {r['threads']}; load average {la}  
Date: {r['date']}; model `{r['model']}` ({r['dtype']}); {r['n']} GSM8K rows (half correct), {r['mode']}, mean prompt {r['mean_prompt_tokens']:.0f} tokens  
Command: `{command}`

| judge | responses/s | seconds | accuracy @0.5 | other |
|---|---|---|---|---|
| single-token (1 forward, P(Yes)/(P(Yes)+P(No))) | {s['rps']:.2f} | {s['seconds']:.1f} | {s['acc05']:.3f} | AUROC {s['auroc']:.3f}; best threshold {s['best'][0]:.3f} -> {s['best'][1]:.3f}; abstain {s['abstain']:.2f}; mean P(Yes)+P(No) {s['mass']:.2f} |
| generative (greedy, <= {g['max_new_tokens']} new tokens, first Yes/No word) | {g['rps']:.2f} | {g['seconds']:.1f} | {g['acc_parsed']:.3f} of parsed; {g['acc_all']:.3f} counting unparseable as wrong | unparseable (abstain) {g['abstain']:.2f}; mean {g['mean_new_tokens']:.1f} new tokens |
| **ratio single-token / generative** | **{r['ratio']:.1f}x** | | | goal >= 10x |

| batching (same forward, same ids) | batches | padding tokens | padding / real tokens | seconds |
|---|---|---|---|---|
| `rlkd._core` packing (length-sorted, budget {JudgeSection().max_tokens_per_batch} tokens) | {p['batches']} | {p['pad_packed']:,} | {p['pad_packed'] / p['real_tokens']:.1%} | {p['packed_s']:.1f} |
| naive: {p['rows_per_naive_batch']} rows per batch in arrival order, padded to the longest | {p['naive_batches']} | {p['pad_naive']:,} | {p['pad_naive'] / p['real_tokens']:.1%} | {p['naive_s']:.1f} |

- Rows: per question, the gold solution (calculator annotations removed) as the correct response and the same solution with the number after `####` perturbed as the incorrect one (so the working and the final line disagree); the gold answer is the reference (reference-guided, as training on labeled prompts). `benches/bench_judge.py` documents it.
- Packed and naive scores agree to {p['max_abs_diff_p_yes']:.1e} (max |dP(Yes)|; in {r['dtype']} a row's padded width changes the rounding). Real tokens: {p['real_tokens']:,}.
- Quality: a 135M model is no judge (AUROC ~0.5; it rarely starts a written verdict with Yes/No, hence the unparseable rate). This section is about speed; docs/judge.md has judge quality for the Qwen judges (`--model embedded:qwen2.5-coder-1.5b-instruct`).
- Why the ratio is what it is: with ~{r['mean_prompt_tokens']:.0f}-token prompts the prefill (shared by both judges) dominates on a CPU; the generative judge adds {g['mean_new_tokens']:.0f} decode steps. The gap grows with verdict length and on GPUs, where decode steps are latency-bound (see the GPU section).
- Wall times on a shared 2-core machine (see load average): ratios move by tens of percent between runs.
"""


if __name__ == "__main__":
    raise SystemExit(main())
