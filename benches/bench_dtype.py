"""bf16 against fp32 on this CPU: what `model.dtype = "auto"` chooses between (BENCHMARKS.md
"bf16 or fp32 on the CPU").

    python benches/bench_dtype.py                    # the embedded student, both dtypes
    python benches/bench_dtype.py --model DIR --dtypes bfloat16

For each dtype, with the student and the main job's chat prompt: greedy `generate` of the first
`--prompts` GSM8K test questions in one call (<= `--new-tokens` tokens; output tokens/s), then
the LoRA update's unit of work, forward + backward of `--micro-batch` x `--seq-len` tokens through
rank-32 adapters on every linear layer (the last of three passes; the first ones warm up).
Prints one line per figure and writes bench_dtype.json to --out. Whether the CPU has native bf16
(`rlkd.models.cpu_supports_bf16`) is printed too: that is what `auto` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

STUDENT = "embedded:qwen2.5-coder-0.5b-instruct"
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def decode_tok_s(model, tokenizer, prompts: list[str], new_tokens: int) -> tuple[float, int, float]:
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False)
    seconds = time.perf_counter() - start
    tokens = int((out[:, enc.input_ids.shape[1]:] != tokenizer.pad_token_id).sum())
    return tokens / seconds, tokens, seconds


def lora_step_s(model, micro_batch: int, seq_len: int) -> float:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, target_modules=LORA_MODULES)).train()
    ids = torch.randint(100, 20000, (micro_batch, seq_len), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        start = time.perf_counter()
        model(input_ids=ids).logits.float().logsumexp(-1).mean().backward()
        seconds = time.perf_counter() - start
    return seconds


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForCausalLM

    from rlkd.data import load_examples
    from rlkd.models import cpu_supports_bf16, load_causal_lm, resolve_dtype, resolve_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=STUDENT)
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=320)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/bench_dtype")))
    args = p.parse_args(argv)

    path = resolve_model(args.model)
    users = [e.question + "\nPut your final answer within \\boxed{}." for e in load_examples("builtin:gsm8k/test", limit=args.prompts)]
    result = {"model": args.model, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "native_bf16": cpu_supports_bf16(),
              "auto": str(resolve_dtype("auto", "cpu")).removeprefix("torch."), "dtypes": {}}
    print(f"native bf16: {result['native_bf16']} (auto = {result['auto']}), {result['threads']} torch threads")
    for name in args.dtypes.split(","):
        model, tokenizer = load_causal_lm(path, dtype=name, device="cpu")
        tokenizer.padding_side = "left"
        prompts = tokenizer.apply_chat_template(
            [[{"role": "system", "content": "You are a helpful math assistant. Reason briefly, step by step."},
              {"role": "user", "content": u}] for u in users], tokenize=False, add_generation_prompt=True)
        tok_s, tokens, seconds = decode_tok_s(model, tokenizer, prompts, args.new_tokens)
        print(f"{name}: greedy {args.prompts} x <= {args.new_tokens} tokens: {tokens} tokens in {seconds:.1f} s = {tok_s:.1f} tok/s",
              flush=True)
        step = lora_step_s(AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(name, "cpu")),
                           args.micro_batch, args.seq_len)
        print(f"{name}: LoRA forward + backward {args.micro_batch} x {args.seq_len} tokens: {step:.1f} s", flush=True)
        result["dtypes"][name] = {"greedy_tok_s": tok_s, "greedy_tokens": tokens, "lora_fwd_bwd_s": step}
        del model
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_dtype.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out / 'bench_dtype.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
