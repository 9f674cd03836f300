"""Reward sources and their mix: r = λ·r_VR + μ·r_judge + ρ·r_rerank.

Every array here is float32 of shape [n] (one entry per sampled response) and uses NaN for
"this source has no value for this sample": r_VR on unlabeled prompts or when the verifier
says Unknown even after the math-verify fallback, r_judge when the judge abstained. The mix
renormalises over the sources that exist for a sample *by design* (VR is absent on unlabeled
prompts, so an unlabeled sample gets (μ·r_judge + ρ·r_rerank) / (μ + ρ)); a source that should
have had a value but does not (abstention, Unknown) makes the total NaN, so the sample is left
out of its group's advantage instead of being scored 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from rlkd import _core
from rlkd.fallback import verify_batch_with_fallback

NOT_EQUAL, EQUAL, UNKNOWN, NO_ANSWER = (int(v) for v in (_core.Verdict.NotEqual, _core.Verdict.Equal, _core.Verdict.Unknown, _core.Verdict.NoAnswer))
UNLABELED = -1  # verdict code for samples without a gold answer


@dataclass(frozen=True)
class VRValues:
    """ReFT-style verifiable reward values."""

    correct: float = 1.0
    wrong: float = 0.1
    no_answer: float = 0.0


def has_final_answer(responses: Sequence[str]) -> np.ndarray:
    """[n] bool: the response states a final answer explicitly (\\boxed{}, `#### x`, "the answer is x").

    Strict extraction: the last-number fallback does not count, because in a response that
    stopped mid-sentence the last number is a fragment of the reasoning, not an answer."""
    return np.array([a is not None for a in _core.extract_answers(list(responses), strict=True)], dtype=bool)


def verifiable_rewards(
    golds: Sequence[str | None],
    responses: Sequence[str],
    values: VRValues,
    *,
    finished: Sequence[bool] | None = None,
    timeout_s: float = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(rewards [n] float32 with NaN where unlabeled/Unknown, verdicts [n] int8 with -1 = unlabeled).

    With `finished` given, a response that did not finish (cut at the token budget) and has no
    explicit final answer (`has_final_answer`) is NoAnswer without being verified: truncation
    earns `no_answer`, never the "answered but wrong" reward."""
    n = len(responses)
    verdicts = np.full(n, UNLABELED, dtype=np.int8)
    labeled = [i for i, g in enumerate(golds) if g is not None]
    if finished is not None and labeled:
        cut = [i for i in labeled if not finished[i]]
        if cut:
            no_marker = ~has_final_answer([responses[i] for i in cut])
            verdicts[[i for i, nm in zip(cut, no_marker) if nm]] = NO_ANSWER
            labeled = [i for i in labeled if verdicts[i] == UNLABELED]
    if labeled:
        verdicts[labeled] = verify_batch_with_fallback(
            [golds[i] for i in labeled], [responses[i] for i in labeled], timeout_s=timeout_s
        )
    table = {EQUAL: values.correct, NOT_EQUAL: values.wrong, NO_ANSWER: values.no_answer}
    rewards = np.array([table.get(int(v), np.nan) for v in verdicts], dtype=np.float32)
    return rewards, verdicts


@dataclass(frozen=True)
class RewardWeights:
    vr: float  # λ
    judge: float  # μ
    rerank: float  # ρ


def mix_rewards(
    weights: RewardWeights,
    labeled: np.ndarray,
    vr: np.ndarray | None = None,
    judge: np.ndarray | None = None,
    rerank: np.ndarray | None = None,
) -> np.ndarray:
    """Total reward per sample; NaN where a source that applies to it has no value.

    `labeled` [n] bool says which samples have a gold answer (VR applies only to those).
    A source with weight 0 is ignored and may be None.
    """
    n = len(labeled)
    total = np.zeros(n, dtype=np.float64)
    weight_sum = np.zeros(n, dtype=np.float64)
    for weight, values, applies in (
        (weights.vr, vr, labeled),
        (weights.judge, judge, np.ones(n, dtype=bool)),
        (weights.rerank, rerank, np.ones(n, dtype=bool)),
    ):
        if weight == 0:
            continue
        if values is None:
            raise ValueError("mix_rewards: a source with a non-zero weight needs its values")
        total += np.where(applies, weight * np.asarray(values, dtype=np.float64), 0.0)
        weight_sum += np.where(applies, weight, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mixed = np.where(weight_sum > 0, total / weight_sum, np.nan)
    return mixed.astype(np.float32)


class Reranker:
    """P(correct) from a sequence-classification verifier over (question, response) pairs.

    Each row is read where the classifier pools, whatever the batch around it:

    - encoders (BERT, RoBERTa, DeBERTa: a ``classifier`` head over position 0, the [CLS] token)
      get RIGHT padding, so position 0 is a real token in every row (left padding would put a
      pad token there in every row but the longest);
    - decoder classifiers (Llama, Qwen...: a linear ``score`` head over the last token) run as
      base model + head here, read at each row's last real token as the attention mask says.
      transformers finds that token by looking for pad ids, and a response can contain the pad
      id (a student who writes "<|im_end|>" as text gets it back as that token id).
    """

    def __init__(self, model, tokenizer, *, max_len: int = 1024, batch_size: int = 8) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_len, self.batch_size = max_len, batch_size
        head = getattr(model, "score", None)
        self._decoder_head = head if isinstance(head, torch.nn.Linear) and model.base_model is not model else None

    def _logits(self, enc) -> torch.Tensor:
        if self._decoder_head is None:
            return self.model(**enc).logits
        hidden = self.model.base_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        last = enc["attention_mask"].sum(dim=1) - 1  # right padding: the last real token of each row
        return self._decoder_head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])

    def encode(self, questions: Sequence[str], responses: Sequence[str]):
        """The tokenized (question, response) pairs; both are plain text, never control tokens."""
        return self.tokenizer(
            list(questions),
            list(responses),
            truncation="only_second",
            max_length=self.max_len,
            padding=True,
            padding_side="right",
            return_tensors="pt",
            split_special_tokens=True,
        )

    @torch.no_grad()
    def score(self, questions: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        device = next(self.model.parameters()).device
        out = np.zeros(len(responses), dtype=np.float32)
        for start in range(0, len(responses), self.batch_size):
            stop = start + self.batch_size
            enc = self.encode(questions[start:stop], responses[start:stop]).to(device)
            logits = self._logits(enc).float()
            # One logit: sigmoid; two or more: the probability of the last class ("correct").
            probs = torch.sigmoid(logits[:, 0]) if logits.shape[-1] == 1 else torch.softmax(logits, -1)[:, -1]
            out[start:stop] = probs.cpu().numpy()
        return out
