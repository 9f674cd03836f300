"""rlkd's rewards as verl custom reward functions.

verl config (``custom_reward_function.path`` = this file, or a two-line file importing from it):

- :func:`compute_score`: the per-sample signature of verl's ``NaiveRewardManager``
  (``reward_model.reward_manager=naive``): ``compute_score(data_source, solution_str,
  ground_truth, extra_info)`` -> ``{"score": float, ...}``. rlkd's verifier, ReFT values.
- :func:`judge_score`: the same judge per sample, for verl's asynchronous reward loop (verl >= 0.7,
  which calls ``compute_score`` per sample from many threads at once): with ``url`` set the
  ``rlkd-judge serve`` server batches those concurrent calls.
- :func:`judge_compute_score`: the batched signature of verl's ``BatchRewardManager``
  (``reward_model.reward_manager=batch``): ``f(data_sources, solution_strs, ground_truths,
  extra_infos, **reward_kwargs)`` -> one dict per row. The single-token judge (loaded once per
  process and kept, or a ``rlkd-judge serve`` URL), optionally mixed with the verifier:
  ``score = vr_weight * r_VR + (1 - vr_weight) * r_judge``. The question comes from
  ``extra_info["question"]`` (verl's GSM8K/MATH preprocessing stores it there).

verl adds every key of the returned dicts to ``reward_extra_info`` (logged per row). verl's
reward is a number per row: a row rlkd cannot score (verifier Unknown after the math-verify
fallback, judge abstained) gets ``unscored_score`` (default 0, the floor of both rewards, so it
never pays more than a scored row) and ``unscored = 1`` in its dict, so it is counted, not hidden.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

from rlkd.rewards import EQUAL, NO_ANSWER, NOT_EQUAL, VRValues, verifiable_rewards

__all__ = ["compute_score", "judge_compute_score", "judge_score"]

_VERDICT_CODES = {EQUAL: 1, NOT_EQUAL: 0, NO_ANSWER: -1}  # unknown/unlabeled: -2


def _gold(ground_truth: Any) -> str | None:
    from rlkd.data import gsm8k_gold

    if ground_truth is None:
        return None
    text = str(ground_truth).strip()
    if "####" in text:
        text = gsm8k_gold(text) or ""
    return text or None


def _vr(golds: Sequence[str | None], responses: Sequence[str], values: VRValues, timeout_s: float):
    rewards, verdicts = verifiable_rewards(list(golds), list(responses), values, timeout_s=timeout_s)
    return rewards, [_VERDICT_CODES.get(int(v), -2) for v in verdicts]


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    *,
    correct: float = 1.0,
    wrong: float = 0.1,
    no_answer: float = 0.0,
    unscored_score: float = 0.0,
    timeout_s: float = 5.0,
    **kwargs: Any,
) -> dict[str, float]:
    """rlkd's verifiable reward for one verl sample.

    Returns ``{"score", "verdict", "unscored"}``: verdict 1 correct, 0 wrong, -1 no answer,
    -2 unknown (or no ground truth); unscored 1 for the last two.
    """
    rewards, verdicts = _vr([_gold(ground_truth)], [solution_str], VRValues(correct, wrong, no_answer), timeout_s)
    unscored = bool(np.isnan(rewards[0]))
    return {"score": unscored_score if unscored else float(rewards[0]), "verdict": float(verdicts[0]),
            "unscored": float(unscored)}  # fmt: skip


@functools.lru_cache(maxsize=4)
def _cached_judge(judge: str, url: str, mode: str, template: str | None, dtype: str, device: str, options: tuple):
    """One judge per process and configuration: verl calls the reward function every step."""
    if url:
        from rlkd.judge_client import RemoteJudge

        return RemoteJudge(url)
    from rlkd.integrations import load_judge

    return load_judge(judge, mode=mode, template=template, dtype=dtype, device=device, **dict(options))


def judge_compute_score(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[dict | None],
    *,
    judge: str = "",
    url: str = "",
    mode: str = "reference_guided",
    template: str | None = None,
    dtype: str = "auto",
    device: str = "",
    question_key: str = "question",
    vr_weight: float = 0.0,
    correct: float = 1.0,
    wrong: float = 0.1,
    no_answer: float = 0.0,
    unscored_score: float = 0.0,
    timeout_s: float = 5.0,
    judge_options: dict | None = None,
    **kwargs: Any,
) -> list[dict[str, float]]:
    """The single-token judge over a verl batch (reference = the row's ground truth when the
    judge is reference-guided). `judge` is a model (embedded:NAME, dir, hub id) or `url` a
    ``rlkd-judge serve`` address; exactly one of them."""
    if bool(judge) == bool(url):
        raise ValueError("judge_compute_score: give exactly one of reward_kwargs.judge (a model) or reward_kwargs.url")
    if not 0 <= vr_weight <= 1:
        raise ValueError(f"judge_compute_score: vr_weight must be in [0, 1], got {vr_weight}")
    n = len(solution_strs)
    questions = []
    for i, info in enumerate(extra_infos):
        if not isinstance(info, dict) or not isinstance(info.get(question_key), str):
            raise KeyError(f"judge_compute_score: row {i} has no extra_info[{question_key!r}] (the question the judge reads)")
        questions.append(info[question_key])
    golds = [_gold(g) for g in ground_truths]
    scorer = _cached_judge(judge, url, mode, template, dtype, device, tuple(sorted((judge_options or {}).items())))
    references = None
    if scorer.needs_reference:
        missing = next((i for i, g in enumerate(golds) if g is None), None)
        if missing is not None:
            raise ValueError(f"judge_compute_score: row {missing} has no ground truth for a reference-guided judge")
        references = golds
    scores = scorer.score(questions, list(solution_strs), references)
    r_judge = np.asarray(scores.reward, dtype=np.float64)
    r_vr, verdicts = (None, [-2] * n)
    if vr_weight > 0:
        r_vr, verdicts = _vr(golds, solution_strs, VRValues(correct, wrong, no_answer), timeout_s)
    gated = getattr(scores, "gated", None)
    out = []
    for i in range(n):
        total = r_judge[i] if r_vr is None else vr_weight * r_vr[i] + (1 - vr_weight) * r_judge[i]
        unscored = bool(np.isnan(total))
        row = {"score": unscored_score if unscored else float(total), "judge": float(np.nan_to_num(r_judge[i], nan=-1.0)),
               "p_yes": float(scores.p_yes[i]), "abstained": float(scores.abstained[i]), "unscored": float(unscored)}  # fmt: skip
        if gated is not None:
            row["gated"] = float(gated[i])
        if r_vr is not None:
            row["verdict"] = float(verdicts[i])
        out.append(row)
    return out


def judge_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None, **kwargs: Any) -> dict[str, float]:
    """:func:`judge_compute_score` for one sample: the per-sample signature of verl's reward loop
    (verl >= 0.7, ``reward.reward_manager.name=naive``), which runs many samples concurrently in
    threads. Give it ``url`` (a ``rlkd-judge serve``): the server batches the concurrent calls."""
    return judge_compute_score([data_source], [solution_str], [ground_truth], [extra_info], **kwargs)[0]
