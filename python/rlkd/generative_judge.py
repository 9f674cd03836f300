"""The generative judge: the same model WRITES a short verdict, which is parsed for Yes/No.

This is the baseline the single-token judge (:class:`rlkd.judge.SingleTokenJudge`) is measured
against: same model, same rows, same prompt construction, but instead of reading P(Yes)/P(No) at
one position the model decodes up to ``max_new_tokens`` tokens greedily and the first Yes/No word
of its text is the verdict.

- Prompt: the judge template (by default the single-token one) with :data:`GENERATIVE_SUFFIX`
  appended, asking for "Yes" or "No" first and at most one sentence of reason. It is split,
  tokenized, truncated (overlong responses keep their END) and packed exactly as the single-token
  judge does -- this class subclasses it -- and the packed prompts are decoded with
  :class:`rlkd.rollout.HFRollout` (greedy, KV cache, length-grouped batches of ``batch_size``).
- Parsing (:func:`parse_verdict`): the first whole word, case-insensitive, that is one of the yes
  or no words ("Yes" / "No" by default); "Not", "Nope", "Yesterday" are not matches. No such
  word = unparseable: the judge ABSTAINED on that row (verdict NaN, counted), never a silent No.
- The answer gate and plain-text fields are the single-token judge's: a response with no final
  answer gets 0.0 without being decoded (``gated``).
- Output: :class:`GenerativeVerdicts` -- ``reward`` is 1.0 (Yes), 0.0 (No) or NaN (abstained), so
  the same metrics (accuracy at 0.5) apply to both judges.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from rlkd.judge import JudgeError, SingleTokenJudge, check_rows, gated_rows, no_gate_reasons

__all__ = ["GENERATIVE_SUFFIX", "GenerativeJudge", "GenerativeVerdicts", "generative_template", "parse_verdict"]

GENERATIVE_SUFFIX = (
    '\n\nReply with "Yes" or "No" first; after it you may give one short sentence of reason.'
)


def generative_template(template: str) -> str:
    """The single-token judge template with the instruction to write a short verdict appended."""
    return template.rstrip() + GENERATIVE_SUFFIX


def _word_pattern(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in sorted({w.strip() for w in words if w.strip()}, key=len, reverse=True))


def parse_verdict(
    text: str, yes_words: Sequence[str] = ("Yes",), no_words: Sequence[str] = ("No",)
) -> bool | None:
    """True (yes), False (no) or None (unparseable) from the FIRST yes/no word in ``text``.

    Words match whole, case-insensitively (``\\b`` boundaries): "No, because..." is False,
    "**Yes**." is True, "Not quite" and "I cannot tell" are None.
    """
    yes, no = _word_pattern(yes_words), _word_pattern(no_words)
    if not yes or not no:
        raise JudgeError("parse_verdict: yes_words and no_words must each hold a non-empty word")
    m = re.search(rf"(?<![\w])(?:(?P<yes>{yes})|(?P<no>{no}))(?![\w])", text, flags=re.IGNORECASE)
    if m is None:
        return None
    return m.group("yes") is not None


@dataclass(frozen=True)
class GenerativeVerdicts:
    """Per-sample outputs of :class:`GenerativeJudge`, in input order."""

    reward: np.ndarray  # float32: 1.0 Yes, 0.0 No, NaN where unparseable (abstained)
    abstained: np.ndarray  # bool: no Yes/No word in the text
    text: list[str]  # the decoded verdicts (special tokens skipped)
    new_tokens: np.ndarray  # int64: tokens generated per sample (EOS included)
    num_truncated: int  # prompts whose response lost tokens to max_len
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    gated: np.ndarray | None = None  # bool: the answer gate paid 0.0 without decoding
    gate_reason: np.ndarray | None = None  # object: "no_answer" | "control_text" | None per row

    def __post_init__(self) -> None:
        if self.gated is None:
            object.__setattr__(self, "gated", np.zeros(len(self.reward), dtype=bool))
        if self.gate_reason is None:
            object.__setattr__(self, "gate_reason", no_gate_reasons(len(self.reward)))

    @property
    def abstain_rate(self) -> float:
        return float(self.abstained.mean()) if len(self.abstained) else 0.0


class GenerativeJudge(SingleTokenJudge):
    """Asks the judge model for a written verdict (greedy) and parses its first Yes/No word.

    Takes the same arguments as :class:`SingleTokenJudge` (``template`` is used as given: wrap a
    single-token template with :func:`generative_template`), plus ``max_new_tokens`` and
    ``batch_size`` (sequences decoded together). ``abstain_threshold`` is not used: here the judge
    abstains when its text holds no Yes/No word.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        template: str,
        system_prompt: str | None = None,
        yes_words: Sequence[str] = ("Yes",),
        no_words: Sequence[str] = ("No",),
        max_len: int = 2048,
        max_tokens_per_batch: int = 8192,
        max_new_tokens: int = 16,
        batch_size: int = 16,
        answer_gate: bool = True,
    ) -> None:
        super().__init__(
            model, tokenizer, template=template, system_prompt=system_prompt, yes_words=yes_words,
            no_words=no_words, abstain_threshold=0.0, max_len=max_len, max_tokens_per_batch=max_tokens_per_batch,
            answer_gate=answer_gate,
        )  # fmt: skip
        if not 1 <= max_new_tokens <= 256:
            raise JudgeError(f"generative judge: max_new_tokens must be in [1, 256], got {max_new_tokens}")
        if batch_size < 1:
            raise JudgeError(f"generative judge: batch_size must be >= 1, got {batch_size}")
        self.yes_words = tuple(yes_words)
        self.no_words = tuple(no_words)
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        if not _word_pattern(self.yes_words) or not _word_pattern(self.no_words):
            raise JudgeError("generative judge: yes_words and no_words must each hold a non-empty word")

    def prompt_ids(
        self, questions: Sequence[str], responses: Sequence[str], references: Sequence[str] | None = None
    ) -> tuple[list[list[int]], int]:
        """Token ids of each judge prompt (packed and truncated as the single-token judge does),
        in input order, and the number of truncated prompts."""
        n = len(responses)
        batches = self.pack(questions, responses, references,
                            max_tokens_per_batch=max(self.max_tokens_per_batch, self.max_len))
        out: list[list[int]] = [[] for _ in range(n)]
        for batch in batches:
            ids = np.asarray(batch.input_ids)
            mask = np.asarray(batch.attention_mask).astype(bool)
            for row, k in enumerate(np.asarray(batch.sample_index).tolist()):
                out[k] = ids[row][mask[row]].tolist()
        truncated = int(sum(getattr(b, "num_truncated", 0) for b in batches))
        return out, truncated

    @torch.no_grad()
    def score(  # type: ignore[override]
        self,
        questions: Sequence[str],
        responses: Sequence[str],
        references: Sequence[str] | None = None,
        *,
        progress: bool = False,
    ) -> GenerativeVerdicts:
        from rlkd.rollout import HFRollout

        start = time.perf_counter()
        n = check_rows(questions, responses, references, needs_reference=self.needs_reference)
        gate_reason = self.gate_reasons(responses)
        gated = gated_rows(gate_reason)
        keep = np.flatnonzero(~gated)
        pick = lambda xs: None if xs is None else [xs[i] for i in keep]  # noqa: E731
        reward = np.zeros(n, dtype=np.float32)  # gated rows: 0.0, not decoded
        abstained = np.zeros(n, dtype=bool)
        text = [""] * n
        new_tokens = np.zeros(n, dtype=np.int64)
        truncated = 0
        if len(keep):
            prompts, truncated = self.prompt_ids(pick(questions), pick(responses), pick(references))
            rollout = HFRollout(self.model, self.tokenizer, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
            out = rollout.generate(prompts, 1, greedy=True, progress=progress)
            parsed = [parse_verdict(t, self.yes_words, self.no_words) for t in out.response_text]
            abstained[keep] = [p is None for p in parsed]
            reward[keep] = [np.nan if p is None else float(p) for p in parsed]
            for i, t in zip(keep, out.response_text):
                text[i] = t
            new_tokens[keep] = out.response_lengths
        return GenerativeVerdicts(
            reward=reward,
            abstained=abstained,
            text=text,
            new_tokens=new_tokens,
            num_truncated=truncated,
            seconds=time.perf_counter() - start,
            gated=gated,
            gate_reason=gate_reason,
        )
