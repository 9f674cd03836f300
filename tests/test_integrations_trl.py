"""rlkd's TRL reward functions: TRL's calling convention, and a real `trl.GRPOTrainer` on CPU."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from rlkd.integrations import load_judge
from rlkd.integrations.trl import JudgeReward, RerankReward, VerifiableReward
from rlkd.judge_cli import REFERENCE_FREE_TEMPLATE

GSM8K_TEST = Path(__file__).resolve().parents[1] / "python" / "rlkd" / "datasets" / "gsm8k_test.jsonl.gz"


def _gsm8k(n: int) -> list[dict]:
    with gzip.open(GSM8K_TEST, "rt") as f:
        return [json.loads(next(f)) for _ in range(n)]


def _conversation(text: str, role: str = "user") -> list[dict]:
    return [{"role": role, "content": text}]


def test_verifiable_reward_in_plain_and_conversational_format():
    vr = VerifiableReward(gold_column="answer")
    completions = ["2 + 2 = 4. The answer is \\boxed{4}.", "The answer is \\boxed{5}.", "I am not sure.", "#### 4"]
    answers = ["4", "#### 4", "4", None]  # a worked "#### x" gold works; None = unlabeled row
    plain = vr(prompts=["What is 2+2?"] * 4, completions=completions, answer=answers, trainer_state=None)
    assert plain == [1.0, pytest.approx(0.1), 0.0, None]
    chat = vr(prompts=[_conversation("What is 2+2?")] * 4,
              completions=[_conversation(c, "assistant") for c in completions], answer=answers)  # fmt: skip
    assert chat == plain
    assert vr.__name__ == "rlkd_verifiable"


def test_verifiable_reward_names_a_missing_column():
    with pytest.raises(KeyError, match="no column 'gold'.*'answer'"):
        VerifiableReward(gold_column="gold")(prompts=["q"], completions=["a"], answer=["1"])


@pytest.fixture(scope="module")
def judge(smollm2_path):
    # abstain_threshold 0: SmolLM2-135M puts little mass on Yes/No; these tests want finite rewards.
    return load_judge(str(smollm2_path), mode="reference_free", dtype="float32", device="cpu", max_len=256,
                      abstain_threshold=0.0)


def test_judge_reward_equals_the_judge_and_abstains_to_none(judge):
    rows = _gsm8k(3)
    questions = [r["question"] for r in rows]
    completions = [r["answer"].replace("####", "The answer is") for r in rows]
    expected = judge.score(questions, completions)
    reward = JudgeReward(judge)
    logged: dict[str, list] = {}
    got = reward(prompts=[_conversation(q) for q in questions], completions=[_conversation(c, "assistant") for c in completions],
                 log_metric=lambda k, v: logged.setdefault(k, []).append(v),
                 log_extra=lambda k, v: logged.setdefault(k, []).extend(v))  # fmt: skip
    np.testing.assert_allclose(got, expected.reward, rtol=1e-6)
    assert logged["rlkd_judge/abstain_rate"] == [0.0] and len(logged["rlkd_judge/p_yes"]) == 3

    from rlkd.judge import SingleTokenJudge

    strict = SingleTokenJudge(judge.model, judge.tokenizer, template=REFERENCE_FREE_TEMPLATE, abstain_threshold=1.0)
    assert JudgeReward(strict)(prompts=questions, completions=completions) == [None, None, None]


def test_reference_guided_judge_reads_the_reference_column(judge):
    from rlkd.config import JudgeSection
    from rlkd.judge import SingleTokenJudge

    guided = SingleTokenJudge(judge.model, judge.tokenizer, template=JudgeSection().template, max_len=256)
    with pytest.raises(ValueError, match="pass reference_column"):
        JudgeReward(guided)
    reward = JudgeReward(guided, reference_column="gold")
    got = reward(prompts=["What is 2+2?"], completions=["The answer is 4."], gold=["4"])
    assert got == pytest.approx(guided.score(["What is 2+2?"], ["The answer is 4."], ["4"]).reward.tolist())
    with pytest.raises(ValueError, match="row 0 has no 'gold'"):
        reward(prompts=["What is 2+2?"], completions=["4"], gold=[None])


def test_rerank_reward(tmp_path, tiny_model_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=2)
    model.config.pad_token_id = AutoTokenizer.from_pretrained(tiny_model_path).eos_token_id
    model.save_pretrained(tmp_path / "rr")
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(tmp_path / "rr")
    rerank = RerankReward.from_pretrained(str(tmp_path / "rr"), dtype="float32")
    got = rerank(prompts=["q1", "q2"], completions=["a", "b b"])
    assert len(got) == 2 and all(0 < v < 1 for v in got)
    assert got == pytest.approx(rerank.reranker.score(["q1", "q2"], ["a", "b b"]).tolist())


class Recorded:
    """Keeps what a reward function returned to TRL, call by call (a pass-through wrapper)."""

    def __init__(self, func) -> None:
        self.func, self.calls = func, []
        self.__name__ = func.__name__

    def __call__(self, **kwargs):
        out = self.func(**kwargs)
        self.calls.append(out)
        return out


@pytest.mark.slow
def test_grpo_trainer_logs_rlkd_rewards(tmp_path, tiny_model_path, judge):
    import trl  # rlkd's optional `trl` extra; in `dev`, so `make test` installs it
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = _gsm8k(4)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"]}], "answer": r["answer"]} for r in rows])
    vr = Recorded(VerifiableReward(gold_column="answer"))
    jr = Recorded(JudgeReward(judge))
    config = trl.GRPOConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=4,
        max_completion_length=8, learning_rate=1e-5, logging_steps=1, report_to=[], use_cpu=True,
        reward_weights=[0.5, 0.5], save_strategy="no", seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    trainer = trl.GRPOTrainer(model=policy, reward_funcs=[vr, jr], args=config, train_dataset=dataset,
                              processing_class=AutoTokenizer.from_pretrained(tiny_model_path))  # fmt: skip
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "rewards/rlkd_judge/mean" in entry]
    assert len(logs) == 2 and len(jr.calls) == 2 and len(vr.calls) == 2
    for entry, judge_out, vr_out in zip(logs, jr.calls, vr.calls):
        assert len(judge_out) == 4 and all(0 <= v <= 1 for v in judge_out)  # 1 prompt x 4 generations
        assert entry["rlkd_judge/abstain_rate"] == 0.0  # rlkd's log_metric reached TRL's log
        assert entry["rewards/rlkd_judge/mean"] == pytest.approx(np.mean(judge_out), abs=1e-5)
        assert entry["rewards/rlkd_verifiable/mean"] == pytest.approx(np.mean(vr_out), abs=1e-5)
        assert entry["reward"] == pytest.approx(np.mean(0.5 * np.array(vr_out) + 0.5 * np.array(judge_out)), abs=1e-5)
