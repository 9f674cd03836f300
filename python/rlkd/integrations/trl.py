"""rlkd's rewards as TRL reward functions: ``GRPOTrainer(reward_funcs=[...], args=GRPOConfig(reward_weights=[...]))``.

TRL calls each reward function as ``f(prompts=..., completions=..., completion_ids=...,
**columns)``, where `columns` are the dataset's other columns (one value per completion) plus
``trainer_state``, ``log_extra`` and ``log_metric``; prompts and completions are strings
(standard format) or lists of chat messages (conversational format). A function returns one
float per completion, or ``None`` where it has no value; TRL turns ``None`` into NaN, sums the
functions with ``reward_weights`` using ``nansum`` and logs each as ``rewards/<name>/mean``.

- :class:`VerifiableReward`: rlkd's Rust verifier (math-verify fallback), ReFT values (1 correct,
  0.1 found but wrong, 0 no answer). ``None`` for a row without a gold answer, and for a verdict
  that stays Unknown (not scored as wrong).
- :class:`JudgeReward`: the single-token judge, P(Yes)/(P(Yes)+P(No)); model loaded once,
  packed batches; ``None`` where the judge abstained. Reference-guided judges read the reference
  from a dataset column. Takes a local :class:`~rlkd.judge.SingleTokenJudge` or a
  :class:`~rlkd.judge_client.RemoteJudge` (``rlkd-judge serve``).
- :class:`RerankReward`: P(correct) of a sequence-classification verifier.

Mixing: TRL computes ``sum_i w_i r_i`` over the functions that have a value (nansum) and does not
renormalise as rlkd's mix does on unlabeled prompts. All completions of one GRPO group share a
prompt, so they all lack the VR term together: within a group the difference is one scale
factor, which ``scale_rewards="group"`` (TRL's default) divides out of the advantage.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from rlkd.integrations import message_text, question_text
from rlkd.rewards import VRValues, verifiable_rewards

__all__ = ["VerifiableReward", "JudgeReward", "RerankReward"]


def _optional_str(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _to_list(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in np.asarray(values, dtype=np.float64)]


def _column(kwargs: dict, name: str, n: int, who: str) -> list:
    if name not in kwargs:
        columns = sorted(k for k in kwargs if k not in ("trainer_state", "log_extra", "log_metric", "completion_ids"))
        raise KeyError(f"{who}: the dataset has no column {name!r} (columns TRL passed: {columns})")
    values = list(kwargs[name])
    if len(values) != n:
        raise ValueError(f"{who}: column {name!r} has {len(values)} values for {n} completions")
    return values


class VerifiableReward:
    """Verifiable reward against the gold answer in dataset column `gold_column`.

    The gold is the final answer ("72", "\\frac{1}{2}"); a GSM8K-style worked answer ending in
    ``#### 72`` is accepted too (the text after the last ``####`` is the gold).
    """

    def __init__(self, gold_column: str = "answer", *, values: VRValues = VRValues(), timeout_s: float = 5.0,
                 name: str = "rlkd_verifiable") -> None:  # fmt: skip
        self.gold_column, self.values, self.timeout_s = gold_column, values, timeout_s
        self.__name__ = name  # TRL logs rewards/<__name__>/mean

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs: Any) -> list[float | None]:
        from rlkd.data import gsm8k_gold

        n = len(completions)
        golds = []
        for value in _column(kwargs, self.gold_column, n, self.__name__):
            gold = _optional_str(value)
            if gold is not None and "####" in gold:
                gold = gsm8k_gold(gold)
            golds.append(gold)
        responses = [message_text(c) for c in completions]
        rewards, _ = verifiable_rewards(golds, responses, self.values, timeout_s=self.timeout_s)
        return _to_list(rewards)


class JudgeReward:
    """The single-token judge as a TRL reward function (one instance = one loaded model).

    `judge`: a :class:`~rlkd.judge.SingleTokenJudge` or :class:`~rlkd.judge_client.RemoteJudge`;
    or use :meth:`from_pretrained` / :meth:`from_url`. `reference_column`: the dataset column
    shown as the reference (required iff the judge's template has ``{reference}``).
    `question_column`: a column holding the bare question; by default the question is the prompt
    (its last user message if conversational).
    """

    def __init__(self, judge, *, reference_column: str | None = None, question_column: str | None = None,
                 name: str = "rlkd_judge") -> None:  # fmt: skip
        if judge.needs_reference and reference_column is None:
            raise ValueError("JudgeReward: this judge's template shows {reference}: pass reference_column=")
        self.judge, self.reference_column, self.question_column = judge, reference_column, question_column
        self.__name__ = name

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, mode: str = "reference_free", template: str | None = None,
                        dtype: str = "auto", device: str = "", reference_column: str | None = None,
                        question_column: str | None = None, name: str = "rlkd_judge", **judge_options: Any) -> "JudgeReward":  # fmt: skip
        from rlkd.integrations import load_judge

        judge = load_judge(name_or_path, mode=mode, template=template, dtype=dtype, device=device, **judge_options)
        return cls(judge, reference_column=reference_column, question_column=question_column, name=name)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> "JudgeReward":
        from rlkd.judge_client import RemoteJudge

        return cls(RemoteJudge(url), **kwargs)

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs: Any) -> list[float | None]:
        n = len(completions)
        if self.question_column is not None:
            questions = [str(q) for q in _column(kwargs, self.question_column, n, self.__name__)]
        else:
            questions = [question_text(p) for p in prompts]
        references = None
        if self.judge.needs_reference:
            raw = _column(kwargs, self.reference_column, n, self.__name__)  # type: ignore[arg-type]
            references = []
            for i, value in enumerate(raw):
                ref = _optional_str(value)
                if ref is None:  # an empty reference would let the judge compare against nothing
                    raise ValueError(f"{self.__name__}: row {i} has no {self.reference_column!r} for a reference-guided judge")
                references.append(ref)
        scores = self.judge.score(questions, [message_text(c) for c in completions], references)
        log_metric, log_extra = kwargs.get("log_metric"), kwargs.get("log_extra")
        if log_metric is not None:
            log_metric(f"{self.__name__}/abstain_rate", float(np.mean(scores.abstained)))
            gated = getattr(scores, "gated", None)
            if gated is not None:
                log_metric(f"{self.__name__}/gated_rate", float(np.mean(gated)))
        if log_extra is not None:
            log_extra(f"{self.__name__}/p_yes", [float(p) for p in scores.p_yes])
        return _to_list(scores.reward)


class RerankReward:
    """P(correct) from a sequence-classification verifier (:class:`rlkd.rewards.Reranker`)."""

    def __init__(self, reranker, *, question_column: str | None = None, name: str = "rlkd_rerank") -> None:
        self.reranker, self.question_column = reranker, question_column
        self.__name__ = name

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype: str = "auto", device: str = "cpu", max_len: int = 1024,
                        question_column: str | None = None, name: str = "rlkd_rerank") -> "RerankReward":  # fmt: skip
        from rlkd.models import load_sequence_classifier
        from rlkd.rewards import Reranker

        model, tokenizer = load_sequence_classifier(name_or_path, dtype=dtype, device=device, progress=False)
        return cls(Reranker(model.eval(), tokenizer, max_len=max_len), question_column=question_column, name=name)

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs: Any) -> list[float | None]:
        n = len(completions)
        if self.question_column is not None:
            questions = [str(q) for q in _column(kwargs, self.question_column, n, self.__name__)]
        else:
            questions = [question_text(p) for p in prompts]
        return _to_list(self.reranker.score(questions, [message_text(c) for c in completions]))
