"""rlkd's rewards inside the trainers users already run.

- :mod:`rlkd.integrations.trl`: reward functions for ``trl.GRPOTrainer(reward_funcs=[...])``.
- :mod:`rlkd.integrations.verl`: verl custom reward functions (per-sample and batched).
- ``rlkd-judge serve`` (:mod:`rlkd.serve`): a judge server for OpenRLHF's ``--remote_rm_url``, for
  rlkd-train's ``judge.url`` and for any client of its JSON endpoint.

:func:`load_judge` builds the same :class:`rlkd.judge.SingleTokenJudge` that training builds
(the defaults of :class:`rlkd.config.JudgeSection`), so every integration scores like rlkd-train.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["load_judge", "message_text", "question_text"]


def load_judge(
    name_or_path: str,
    *,
    mode: str = "reference_guided",
    template: str | None = None,
    dtype: str = "auto",
    device: str = "",
    **judge_options: Any,
):
    """A :class:`~rlkd.judge.SingleTokenJudge` on a freshly loaded causal LM.

    `mode` picks the default template (training's reference-guided one, or the reference-free one
    of ``rlkd-judge``); `template` overrides it. `judge_options` (system_prompt, yes_words,
    no_words, abstain_threshold, max_len, max_tokens_per_batch) default to training's.
    """
    import torch

    from rlkd.config import JudgeSection
    from rlkd.judge import JudgeError, SingleTokenJudge
    from rlkd.judge_cli import REFERENCE_FREE_TEMPLATE
    from rlkd.models import load_causal_lm

    if mode not in ("reference_guided", "reference_free"):
        raise JudgeError(f"judge mode must be reference_guided or reference_free, got {mode!r}")
    d = JudgeSection()
    if template is None:
        template = d.template if mode == "reference_guided" else REFERENCE_FREE_TEMPLATE
    options = {
        "system_prompt": d.system_prompt or None, "yes_words": d.yes_words, "no_words": d.no_words,
        "abstain_threshold": d.abstain_threshold, "max_len": d.max_len, "max_tokens_per_batch": d.max_tokens_per_batch,
    }  # fmt: skip
    unknown = sorted(set(judge_options) - set(options))
    if unknown:
        raise JudgeError(f"load_judge: unknown judge option(s) {unknown}; allowed: {sorted(options)}")
    options.update(judge_options)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_causal_lm(name_or_path, dtype=dtype, device=device, progress=False)
    return SingleTokenJudge(model.eval(), tokenizer, template=template, **options)


def message_text(value: Any) -> str:
    """The text of a TRL/verl prompt or completion: a string, or the content of the last message
    of a conversation (a list of ``{"role", "content"}`` dicts)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and value and all(isinstance(m, dict) for m in value):
        return _content(value[-1])
    raise TypeError(f"expected a string or a list of chat messages, got {type(value).__name__}")


def question_text(prompt: Any) -> str:
    """The question in a prompt: the whole string for a plain prompt, the last user message of a
    conversational one (system prompts and earlier turns are the policy's, not the judge's)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence) and all(isinstance(m, dict) for m in prompt):
        users = [m for m in prompt if m.get("role") == "user"]
        if users:
            return _content(users[-1])
    raise TypeError(f"expected a prompt string or a conversation with a user message, got {prompt!r:.80}")


def _content(message: dict) -> str:
    content = message.get("content", "")
    if isinstance(content, list):  # multimodal-style parts: keep the text parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)
