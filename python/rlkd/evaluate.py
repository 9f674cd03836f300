"""Held-out evaluation: greedy pass@1 judged by the verifier (Rust first, math-verify fallback).

Unknown verdicts are reported separately and never counted as wrong silently: pass@1 is
`correct / n`, and `unknown` says how many of the n could not be decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from rlkd import _core
from rlkd.config import render_template
from rlkd.data import Example
from rlkd.fallback import verify_batch_with_fallback
from rlkd.rollout import render_prompts

EQUAL, UNKNOWN, NO_ANSWER = int(_core.Verdict.Equal), int(_core.Verdict.Unknown), int(_core.Verdict.NoAnswer)
VERDICT_NAMES = {0: "NotEqual", 1: "Equal", 2: "Unknown", 3: "NoAnswer"}


@dataclass
class EvalResult:
    n: int
    correct: int
    unknown: int
    no_answer: int
    rows: list[dict] = field(default_factory=list)

    @property
    def pass_at_1(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    def summary(self, prefix: str = "eval/") -> dict[str, float]:
        return {
            f"{prefix}pass@1": self.pass_at_1,
            f"{prefix}unknown": self.unknown,
            f"{prefix}no_answer_rate": self.no_answer / self.n if self.n else float("nan"),
            f"{prefix}n": self.n,
        }


def greedy_pass_at_1(
    rollout,
    tokenizer,
    examples: Sequence[Example],
    *,
    system_prompt: str | None,
    user_template: str,
    max_new_tokens: int | None = None,
    timeout_s: float = 5.0,
    progress: bool = False,
) -> EvalResult:
    """Greedy decoding of every example once; verdicts against each example's gold answer.

    `user_template` uses the config's str.format syntax (`{question}`, literal braces doubled).
    """
    labeled = [e for e in examples if e.answer is not None]
    users = [render_template(user_template, question=e.question) for e in labeled]
    prompt_ids = render_prompts(tokenizer, users, system_prompt=system_prompt)
    out = rollout.generate(prompt_ids, 1, greedy=True, progress=progress, max_new_tokens=max_new_tokens)
    verdicts = verify_batch_with_fallback([e.answer for e in labeled], out.response_text, timeout_s=timeout_s)
    rows = [
        {
            "id": e.id,
            "question": e.question,
            "gold": e.answer,
            "response": text,
            "extracted": _core.extract_answer(text),
            "verdict": VERDICT_NAMES.get(int(v), str(int(v))),
        }
        for e, text, v in zip(labeled, out.response_text, verdicts)
    ]
    v = np.asarray(verdicts)
    return EvalResult(
        n=len(labeled),
        correct=int((v == EQUAL).sum()),
        unknown=int((v == UNKNOWN).sum()),
        no_answer=int((v == NO_ANSWER).sum()),
        rows=rows,
    )
