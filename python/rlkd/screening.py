"""Difficulty filtering of the labeled pool (`data.labeled_filter = "solved"`).

GRPO learns only from groups whose rewards differ. A labeled problem the start policy cannot
solve gives an all-wrong group almost every time, so the verifiable reward carries no gradient
there; a problem it solves greedily gives, at T ~ 0.7, a group of right and wrong answers. So
RL samples only the labeled problems the RL start model answers right greedily within
rollout.max_new_tokens. DAPO and Polaris filter by a sampled pass rate; one greedy answer per
problem is the proxy this CPU affords, and it is screened once and cached like any greedy eval.
"""

from __future__ import annotations

from collections.abc import Sequence

from rlkd.config import Config
from rlkd.data import Example


def solved_labeled(cfg: Config, model_path: str, model_key: str, labeled: Sequence[Example], *,
                   log=print) -> list[Example]:
    """The labeled problems whose greedy answer by `model_path` the verifier calls right, in
    pool order (`model_key` names the model in the eval cache)."""
    from rlkd.sft import cached_greedy

    result, _ = cached_greedy(cfg, model_path, model_key, labeled, max_new_tokens=cfg.rollout.max_new_tokens,
                              what="labeled filter: greedy answers of", log=log)
    right = {r["id"] for r in result.rows if r["verdict"] == "Equal"}
    kept = [e for e in labeled if e.id in right]
    log(f"rlkd: labeled filter: RL samples the {len(kept)} of {len(labeled)} labeled problems the start model "
        f"solves greedily within {cfg.rollout.max_new_tokens} tokens")
    if not kept:
        raise ValueError(f"data.labeled_filter = \"solved\": the start model solves none of the {len(labeled)} "
                         "labeled problems greedily; raise data.labeled_count or set data.labeled_filter = \"none\"")
    return kept
