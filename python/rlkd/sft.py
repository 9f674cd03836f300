"""Stage 0 of the method: SFT warm-up of the student on the labeled pool's worked solutions.

The paper starts RL from an SFT checkpoint; for a small student it is also what makes it finish
its answers within the token budget (a 0.5B instruct model writes ~300-token essays; GSM8K's
worked solutions are ~100 tokens and end in the answer).

Each example is the RL prompt (the same chat template, system prompt and user template that RL
and evaluation use) followed by the worked solution rewritten to end in the answer marker the
verifier reads (`sft_target`: GSM8K's `<<48/2=24>>` calculator annotations removed, `#### x`
replaced by `The answer is \\boxed{x}.`) and the chat template's end-of-turn token. The loss is
the mean token cross-entropy over response tokens only (prompt and padding labels are -100).
By default LoRA adapters (peft) train on every linear layer and are merged into the weights at
the end; the result is a plain bf16 HF checkpoint that `rlkd-train` starts from and `rlkd-eval`
reads.

With `sft.source = "self"` the targets are instead the student's own greedy answers to the same
problems, kept where they finished within the RL budget and the verifier says right (rejection
sampling, as in RFT: Yuan et al. 2023): the student keeps its own reasoning style and only learns
to finish, where imitating GSM8K's terse solutions made it finish but reason worse (BENCHMARKS.md).

It runs once: the checkpoint is cached under `<RLKD_CACHE>/sft/<key>/`, where the key hashes
everything that changes the result (student, recipe, prompts, the exact examples, seed).
`sft.json` there records the recipe, the loss curve, the time taken and pass@1 before/after.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from rlkd.algorithms import gather_logprobs
from rlkd.config import Config, render_template
from rlkd.data import Example, build_pools
from rlkd.models import dtype_key, model_cache_key
from rlkd.rollout import render_prompts

__all__ = ["SFTResult", "sft_target", "keep_right_and_finished", "end_of_turn_id", "build_sft_rows", "sft_loss", "ensure_sft", "sft_cache_key"]

_CALCULATOR = re.compile(r"<<[^<>]*>>")
FORMAT_VERSION = 1  # bump when the target format or the training loop changes what a key means
# the [sft] keys that change the checkpoint: hashed into its cache key and recorded in sft.json
RECIPE_KEYS = ("source", "epochs", "lr", "batch_size", "micro_batch_size", "lora_rank", "lora_alpha", "max_len",
               "warmup_steps")


@dataclass(frozen=True)
class SFTResult:
    path: Path  # the HF checkpoint directory
    key: str  # cache key: names the model for the eval cache
    info: dict[str, Any]  # sft.json
    cached: bool  # True when it was already there


def sft_target(solution: str, answer: str) -> str:
    """The worked solution as the student should write it, ending in `\\boxed{answer}`."""
    text = _CALCULATOR.sub("", solution).strip()
    if "####" in text:
        text = text.rsplit("####", 1)[0].rstrip()
    elif "\\boxed" in text or "\\fbox" in text:
        return text  # MATH-style solutions already end in their boxed answer
    return f"{text}\nThe answer is \\boxed{{{answer}}}."


def end_of_turn_id(tokenizer: Any) -> int:
    """The token the chat template closes an assistant turn with (Qwen: <|im_end|>)."""
    probe = "\u27e6RLKD-END\u27e7"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}], tokenize=False
    )
    after = rendered[rendered.rfind(probe) + len(probe):] if probe in rendered else ""
    ids = tokenizer.encode(after, add_special_tokens=False) if after else []
    special = set(tokenizer.all_special_ids)
    for i in ids:  # the first special token after the content (skips a newline some templates put first)
        if i in special:
            return int(i)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r}: cannot tell the end-of-turn token")
    return int(tokenizer.eos_token_id)


def build_sft_rows(
    tokenizer: Any, examples: Sequence[Example], *, system_prompt: str | None, user_template: str, max_len: int
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(prompt ids, response ids incl. end of turn) per example; and how many were over max_len."""
    users = [render_template(user_template, question=e.question) for e in examples]
    prompts = render_prompts(tokenizer, users, system_prompt=system_prompt)
    eot = end_of_turn_id(tokenizer)
    rows, skipped = [], 0
    for ex, prompt in zip(examples, prompts):
        response = tokenizer.encode(sft_target(ex.solution or "", str(ex.answer)), add_special_tokens=False) + [eot]
        if len(prompt) + len(response) > max_len:
            skipped += 1
            continue
        rows.append((list(prompt), response))
    return rows, skipped


def sft_loss(model: Any, rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the response tokens of `rows` (right-padded) and their count.

    Shapes: input_ids/labels [rows, width]; labels are -100 on prompt and padding positions, so
    prompt tokens never contribute to the loss."""
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, r) in enumerate(rows):
        seq = p + r
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(p): len(seq)] = torch.tensor(r)
        mask[i, : len(seq)] = 1
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    # Position t predicts token t+1: shift labels left by one; only response positions are kept,
    # and their log-softmax runs in fp32 chunks (no fp32 [rows, width, vocab] copy).
    shifted = labels[:, 1:].to(device)
    keep = shifted != -100
    logprobs = gather_logprobs(logits[:, :-1][keep], shifted[keep])
    return -logprobs.sum(), int(keep.sum())


def _examples(cfg: Config, log=print) -> list[Example]:
    """The SFT examples: `solution` holds the text the student learns to write."""
    pools = build_pools(cfg.data, seed=cfg.run.seed)
    gold = cfg.sft.source == "gold"
    labeled = [e for e in pools.labeled if e.solution] if gold else list(pools.labeled)
    what = "worked solutions" if gold else "labeled problems"
    if gold and not labeled:
        raise ValueError("sft: the labeled pool has no worked solutions (data.labeled_count > 0 with a "
                         "data set whose answers are worked solutions, e.g. builtin:gsm8k/train, or "
                         "sft.source = \"self\")")
    n = cfg.sft.examples or len(labeled)
    if n > len(labeled):
        raise ValueError(f"sft.examples = {n} but the labeled pool has {len(labeled)} {what} "
                         "(raise data.labeled_count)")
    if gold:
        return labeled[:n]
    result, _ = cached_greedy(cfg, cfg.model.name_or_path, model_cache_key(cfg.model.name_or_path), labeled[:n],
                              max_new_tokens=cfg.rollout.max_new_tokens, what="SFT targets: greedy answers of",
                              log=log)
    kept = keep_right_and_finished(labeled[:n], result.rows)
    log(f"rlkd: SFT targets: {len(kept)} of {n} of the student's own answers finished within "
        f"{cfg.rollout.max_new_tokens} tokens and are right")
    if not kept:
        raise ValueError(f"sft.source = \"self\": none of the student's {n} answers to the labeled problems finished "
                         "and was right; use sft.source = \"gold\" or more sft.examples")
    return kept


def keep_right_and_finished(examples: Sequence[Example], rows: Sequence[dict[str, Any]]) -> list[Example]:
    """Rejection sampling: the examples whose generated answer finished and was verified right,
    with that answer as their SFT target (`rows`: greedy_pass_at_1's, matched by example id)."""
    by_id = {r["id"]: r for r in rows}
    return [replace(e, solution=by_id[e.id]["response"]) for e in examples
            if e.id in by_id and by_id[e.id]["finished"] and by_id[e.id]["verdict"] == "Equal"]


def sft_cache_key(cfg: Config, examples: Sequence[Example]) -> str:
    s, m = cfg.sft, cfg.model
    h = hashlib.sha256()
    recipe = {k: getattr(s, k) for k in RECIPE_KEYS}
    h.update(json.dumps({"v": FORMAT_VERSION, "model": model_cache_key(m.name_or_path), "dtype": dtype_key(m.dtype, m.device), "system": m.system_prompt,
                         "user": m.user_template, "seed": cfg.run.seed, "recipe": recipe}, sort_keys=True).encode())
    for e in examples:
        h.update(b"\0" + e.question.encode() + b"\1" + (e.solution or "").encode())
    return h.hexdigest()[:16]


def sft_cache_root() -> Path:
    from rlkd.weights import cache_dir

    return cache_dir() / "sft"


def ensure_sft(cfg: Config, *, progress: bool = True, log=print) -> SFTResult:
    """The SFT checkpoint of this config: from the cache, or trained now (and cached)."""
    examples = _examples(cfg, log=log)
    key = sft_cache_key(cfg, examples)
    root = Path(cfg.sft.cache_dir) if cfg.sft.cache_dir else sft_cache_root()
    final = root / key
    if (final / "sft.json").exists():
        info = json.loads((final / "sft.json").read_text())
        log(f"rlkd: SFT checkpoint (cached) {final}")
        return SFTResult(final, key, info, cached=True)
    log(f"rlkd: SFT warm-up of {cfg.model.name_or_path} on {len(examples)} worked solutions -> {final}")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
    try:
        info = _train(cfg, examples, tmp, progress=progress, log=log)
        info["key"] = key
        (tmp / "sft.json").write_text(json.dumps(info, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SFTResult(final, key, info, cached=False)


def _train(cfg: Config, examples: Sequence[Example], out: Path, *, progress: bool, log) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from rlkd.algorithms import build_optimizer, build_scheduler
    from rlkd.models import apply_lora, load_causal_lm, resolve_dtype, trainable_load_dtype

    s, m = cfg.sft, cfg.model
    start = time.perf_counter()
    model, tokenizer = load_causal_lm(m.name_or_path, dtype=trainable_load_dtype(m.dtype, s.lora_rank), device=m.device)
    rows, skipped = build_sft_rows(tokenizer, examples, system_prompt=m.system_prompt or None,
                                   user_template=m.user_template, max_len=s.max_len)
    if s.lora_rank > 0:
        targets = sorted({n.rsplit(".", 1)[-1] for n, mod in model.named_modules()
                          if isinstance(mod, torch.nn.Linear) and not n.endswith("lm_head")})
        model = apply_lora(model, s.lora_rank, s.lora_alpha, targets)
    model.train()
    _disable_dropout(model)
    params = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = math.ceil(len(rows) / s.batch_size)
    total = steps_per_epoch * s.epochs
    optimizer = build_optimizer(params, lr=s.lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    scheduler = build_scheduler(optimizer, schedule="cosine", warmup_steps=s.warmup_steps, total_steps=total)
    dtype = resolve_dtype(m.dtype, m.device)
    device_type = torch.device(m.device).type
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rng = random.Random(cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    losses: list[float] = []
    bar = tqdm(total=total, desc="sft", unit="step", disable=not progress)
    for _ in range(s.epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        for b in range(steps_per_epoch):
            batch = [rows[i] for i in order[b * s.batch_size:(b + 1) * s.batch_size]]
            tokens = sum(len(r) for _, r in batch)
            total_loss = 0.0
            # Length-sorted micro-batches: less padding; the loss is summed then divided by the
            # batch's response-token count, so micro-batching does not change the gradient.
            batch.sort(key=lambda pr: len(pr[0]) + len(pr[1]))
            for i in range(0, len(batch), s.micro_batch_size):
                with torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
                    loss_sum, _ = sft_loss(model, batch[i:i + s.micro_batch_size], pad_id)
                (loss_sum / tokens).backward()
                total_loss += float(loss_sum)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(total_loss / tokens)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    train_s = time.perf_counter() - start
    model.eval()
    if s.lora_rank > 0:
        model = model.merge_and_unload()
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    log(f"rlkd: SFT done in {train_s:.0f} s: {total} steps, loss {losses[0]:.3f} -> {sum(losses[-5:]) / len(losses[-5:]):.3f}")
    return {
        "base_model": m.name_or_path,
        "examples": len(rows),
        "skipped_over_max_len": skipped,
        "response_tokens_mean": sum(len(r) for _, r in rows) / max(1, len(rows)),
        "steps": total,
        "recipe": {k: getattr(s, k) for k in RECIPE_KEYS},
        "loss": losses,
        "train_s": train_s,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _disable_dropout(model: torch.nn.Module) -> None:
    """Train mode for the backward (and gradient checkpointing) but no dropout noise."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def heldout_eval(cfg: Config, model_path: str, model_key: str, *, log=print) -> tuple[Any, bool]:
    """Greedy pass@1 of a model on the config's held-out set, cached by (model key, eval settings)."""
    pools = build_pools(cfg.data, seed=cfg.run.seed)
    return cached_greedy(cfg, model_path, model_key, pools.eval, max_new_tokens=cfg.train.eval_max_new_tokens,
                         what="held-out eval of", log=log)


def cached_greedy(cfg: Config, model_path: str, model_key: str, examples: Sequence[Example], *, max_new_tokens: int,
                  what: str, log=print) -> tuple[Any, bool]:
    """Greedy answers of a model to `examples` with their verdicts (EvalResult), cached by
    (model key, examples, prompts, budget)."""
    from rlkd.evaluate import cached_greedy_pass_at_1, eval_cache_key, greedy_pass_at_1
    from rlkd.models import load_causal_lm
    from rlkd.rollout import HFRollout

    m, t = cfg.model, cfg.train
    key = eval_cache_key(model_key, examples, system_prompt=m.system_prompt or None, user_template=m.user_template,
                         max_new_tokens=max_new_tokens, dtype=dtype_key(m.dtype, m.device))

    def run_eval():
        model, tokenizer = load_causal_lm(model_path, dtype=m.dtype, device=m.device)
        rollout = HFRollout(model, tokenizer, max_new_tokens=max_new_tokens, batch_size=t.eval_batch_size)
        log(f"rlkd: {what} {model_path} on {len(examples)} problems (greedy, <= {max_new_tokens} tokens)")
        return greedy_pass_at_1(rollout, tokenizer, examples, system_prompt=m.system_prompt or None,
                                user_template=m.user_template, max_new_tokens=max_new_tokens,
                                timeout_s=cfg.rewards.fallback_timeout_s, progress=cfg.log.progress_bar)

    start = time.perf_counter()
    result, cached = cached_greedy_pass_at_1(key, run_eval)
    if not cached:
        log(f"rlkd: took {time.perf_counter() - start:.0f} s")
    return result, cached


def warm_up(cfg: Config, *, log=print) -> SFTResult:
    """The SFT stage as rlkd-train and rlkd-sft run it: the checkpoint (cached) and pass@1 of the
    student before and after SFT on the held-out set (cached too), printed and kept in sft.json."""
    from rlkd.significance import correct_by_id, format_comparison, paired_comparison

    sft = ensure_sft(cfg, progress=cfg.log.progress_bar, log=log)
    if cfg.train.eval_every == 0:
        return sft
    before, _ = heldout_eval(cfg, cfg.model.name_or_path, model_cache_key(cfg.model.name_or_path), log=log)
    after, _ = heldout_eval(cfg, str(sft.path), f"sft:{sft.key}", log=log)
    cmp = paired_comparison(correct_by_id(before.rows), correct_by_id(after.rows))
    for name, res in (("before", before), ("after", after)):
        summary = res.summary()
        cmp[f"finished_rate_{name}"] = summary["eval/finished_rate"]
        cmp[f"length_mean_{name}"] = summary["eval/length_mean"]
    log(f"rlkd: SFT warm-up: {format_comparison(cmp)}; finished {100 * cmp['finished_rate_before']:.0f}% -> "
        f"{100 * cmp['finished_rate_after']:.0f}%, mean length {cmp['length_mean_before']:.0f} -> "
        f"{cmp['length_mean_after']:.0f} tokens")
    info = dict(sft.info, eval=cmp)
    if info != sft.info:
        (sft.path / "sft.json").write_text(json.dumps(info, indent=1))
    return SFTResult(sft.path, sft.key, info, sft.cached)


def main(argv: list[str] | None = None) -> int:
    """rlkd-sft CONFIG [--set k=v]: only the SFT warm-up (and its before/after eval)."""
    import argparse
    import sys

    from rlkd.config import ConfigError, load_config

    p = argparse.ArgumentParser(prog="rlkd-sft", description="SFT warm-up of the student (cached; rlkd-train runs it too).")
    p.add_argument("config", type=Path)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"rlkd-sft: {err}", file=sys.stderr)
        return 2
    try:
        sft = warm_up(cfg)
    except ValueError as err:  # RlkdError is a ValueError: bad data / config combinations
        print(f"rlkd-sft: {err}", file=sys.stderr)
        return 2
    print(f"rlkd: SFT checkpoint {sft.path}")
    return 0
