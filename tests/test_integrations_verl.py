"""rlkd's verl reward functions.

Two layers: (1) the functions called with verl's documented signatures (always run); (2) verl's
own reward managers calling them on a real `DataProto` built as verl's rollout builds it:
the `NaiveRewardManager` and `BatchRewardManager` of `verl.workers.reward_manager`, with rlkd's
functions loaded through verl's `get_custom_reward_fn` from rlkd's file path. Not covered: verl's
asynchronous reward loop (`verl.experimental.reward_loop`, which calls `judge_score` per sample):
importing it on this CPU machine hangs (it reaches for a Ray runtime), so only its per-sample
signature is tested here. Layer 2 needs verl, which pins
an older transformers than rlkd, so it is not in the `dev` extra: `make test-verl` installs it
with `--no-deps` (plus the four modules its reward code imports) and runs this file; verl 0.9.1
imports and runs on CPU that way. Without verl, layer 2 is skipped (and says so).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import rlkd.integrations.verl as rlkd_verl
from rlkd.integrations import load_judge
from rlkd.integrations.verl import compute_score, judge_compute_score, judge_score

QUESTIONS = ["What is 2 + 3?", "What is 10 / 4?", "What is 7 * 6?"]
SOLUTIONS = ["2 + 3 = 5. The answer is \\boxed{5}.", "10 / 4 = 2.5, so the answer is \\boxed{3}.", "I do not know."]
GOLDS = ["5", "#### 5/2", "42"]


def test_compute_score_per_sample_signature():
    rows = [compute_score("openai/gsm8k", s, g, {"question": q}) for q, s, g in zip(QUESTIONS, SOLUTIONS, GOLDS)]
    assert [r["score"] for r in rows] == [1.0, pytest.approx(0.1), 0.0]
    assert [r["verdict"] for r in rows] == [1.0, 0.0, -1.0] and all(r["unscored"] == 0.0 for r in rows)
    assert compute_score("x", "The answer is 5.", "5", None, correct=2.0)["score"] == 2.0  # reward_kwargs
    no_gold = compute_score("x", "The answer is 5.", None)
    assert no_gold == {"score": 0.0, "verdict": -2.0, "unscored": 1.0}


@pytest.fixture(scope="module")
def judge_path(tiny_model_path) -> str:
    return str(tiny_model_path)


def _kwargs(judge_path: str, **extra) -> dict:
    return dict(judge=judge_path, mode="reference_free", dtype="float32", device="cpu",
                judge_options={"abstain_threshold": 0.0}, **extra)  # fmt: skip


def test_judge_compute_score_batch_signature(judge_path):
    judge = load_judge(judge_path, mode="reference_free", dtype="float32", device="cpu", abstain_threshold=0.0)
    expected = judge.score(QUESTIONS, SOLUTIONS).reward
    infos = [{"question": q, "index": i} for i, q in enumerate(QUESTIONS)]
    rows = judge_compute_score(["gsm8k"] * 3, SOLUTIONS, GOLDS, infos, **_kwargs(judge_path))
    np.testing.assert_allclose([r["score"] for r in rows], expected, atol=1e-6)
    assert all(r["unscored"] == 0.0 and r["abstained"] == 0.0 for r in rows)
    # mixed with the verifier: score = 0.5 r_VR + 0.5 r_judge
    mixed = judge_compute_score(["gsm8k"] * 3, SOLUTIONS, GOLDS, infos, **_kwargs(judge_path, vr_weight=0.5))
    np.testing.assert_allclose([r["score"] for r in mixed], 0.5 * np.array([1.0, 0.1, 0.0]) + 0.5 * expected, atol=1e-6)
    assert [r["verdict"] for r in mixed] == [1.0, 0.0, -1.0]
    assert judge_score("gsm8k", SOLUTIONS[0], GOLDS[0], infos[0], **_kwargs(judge_path))["score"] == pytest.approx(expected[0], abs=1e-6)


def test_judge_compute_score_abstention_is_unscored_and_counted(judge_path):
    kwargs = dict(_kwargs(judge_path), judge_options={"abstain_threshold": 1.0})
    rows = judge_compute_score(["s"] * 3, SOLUTIONS, GOLDS, [{"question": q} for q in QUESTIONS], **kwargs)
    from rlkd.rewards import has_final_answer

    answered = has_final_answer(SOLUTIONS)
    assert answered.any()
    assert all(r["score"] == 0.0 and r["unscored"] == 1.0 and r["abstained"] == 1.0 and r["judge"] == -1.0
               for r, a in zip(rows, answered) if a)
    # a solution without a final answer is gated (reward 0 without a forward pass), not an abstention
    assert all(r["score"] == 0.0 and r["abstained"] == 0.0 for r, a in zip(rows, answered) if not a)


def test_judge_compute_score_errors_name_the_problem(judge_path):
    with pytest.raises(KeyError, match=r"row 1 has no extra_info\['question'\]"):
        judge_compute_score(["s"] * 2, SOLUTIONS[:2], GOLDS[:2], [{"question": "q"}, {}], **_kwargs(judge_path))
    with pytest.raises(ValueError, match="exactly one of"):
        judge_compute_score(["s"], SOLUTIONS[:1], GOLDS[:1], [{"question": "q"}])
    guided = dict(_kwargs(judge_path), mode="reference_guided")
    with pytest.raises(ValueError, match="row 0 has no ground truth"):
        judge_compute_score(["s"], SOLUTIONS[:1], [None], [{"question": "q"}], **guided)


# ----------------------------------------------------------------------------- verl itself


def _data_proto(tokenizer, questions, solutions, golds):
    """A batch as verl's rollout hands it to the reward manager: left-padded prompts,
    right-padded responses, one attention mask over both, and the dataset's non-tensor fields."""
    from verl import DataProto

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
               for q in questions]  # fmt: skip
    prompts = [p["input_ids"] if isinstance(p, dict) or hasattr(p, "keys") else p for p in prompts]
    responses = [tokenizer.encode(s, add_special_tokens=False) + [tokenizer.eos_token_id] for s in solutions]
    P, R = max(map(len, prompts)), max(map(len, responses))
    prompt_ids = torch.tensor([[pad] * (P - len(p)) + list(p) for p in prompts])
    response_ids = torch.tensor([r + [pad] * (R - len(r)) for r in responses])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) + [1] * len(r) + [0] * (R - len(r)) for p, r in zip(prompts, responses)])
    return DataProto.from_dict(
        tensors={"prompts": prompt_ids, "responses": response_ids, "attention_mask": mask,
                 "input_ids": torch.cat([prompt_ids, response_ids], dim=1)},
        non_tensors={"data_source": np.array(["openai/gsm8k"] * len(questions), dtype=object),
                     "reward_model": np.array([{"style": "rule", "ground_truth": g} for g in golds], dtype=object),
                     "extra_info": np.array([{"question": q, "index": i} for i, q in enumerate(questions)], dtype=object)},
    ), [len(r) for r in responses]  # fmt: skip


def _custom_reward_fn(name: str, **reward_kwargs):
    """rlkd's function loaded exactly as verl loads `reward.custom_reward_function`."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    cfg = OmegaConf.create({"reward": {"custom_reward_function": {
        "path": str(Path(rlkd_verl.__file__)), "name": name, "reward_kwargs": reward_kwargs}}})  # fmt: skip
    return get_custom_reward_fn(cfg)


@pytest.fixture(scope="module")
def verl_tokenizer(tiny_model_path):
    pytest.importorskip("verl", reason="verl is not installed: `make test-verl` runs these against verl itself")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def test_verl_naive_reward_manager_calls_compute_score(verl_tokenizer):
    from verl.workers.reward_manager import NaiveRewardManager

    data, lengths = _data_proto(verl_tokenizer, QUESTIONS, SOLUTIONS, GOLDS)
    manager = NaiveRewardManager(verl_tokenizer, num_examine=0, compute_score=_custom_reward_fn("compute_score"))
    out = manager(data, return_dict=True)
    rewards = out["reward_tensor"]
    # verl puts the score on each response's last real token
    assert [rewards[i, n - 1].item() for i, n in enumerate(lengths)] == [1.0, pytest.approx(0.1), 0.0]
    assert rewards.sum().item() == pytest.approx(1.1)
    assert out["reward_extra_info"]["verdict"] == [1.0, 0.0, -1.0]


def test_verl_batch_reward_manager_calls_judge_compute_score(verl_tokenizer, judge_path):
    from verl.workers.reward_manager import BatchRewardManager

    data, lengths = _data_proto(verl_tokenizer, QUESTIONS, SOLUTIONS, GOLDS)
    fn = _custom_reward_fn("judge_compute_score", **_kwargs(judge_path, vr_weight=0.5))
    out = BatchRewardManager(verl_tokenizer, num_examine=0, compute_score=fn)(data, return_dict=True)
    judge = load_judge(judge_path, mode="reference_free", dtype="float32", device="cpu", abstain_threshold=0.0)
    expected = 0.5 * np.array([1.0, 0.1, 0.0]) + 0.5 * judge.score(QUESTIONS, SOLUTIONS).reward
    got = [out["reward_tensor"][i, n - 1].item() for i, n in enumerate(lengths)]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert out["reward_extra_info"]["unscored"] == [0.0, 0.0, 0.0]
