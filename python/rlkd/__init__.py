"""rlkd: reinforcement-learning knowledge distillation with a single-token LLM judge.

The public API is re-exported here; `rlkd._core` (the Rust kernels) stays importable.
"""

from rlkd import _core
from rlkd._core import (
    GroupSizeError,
    InvalidArgumentError,
    LengthMismatchError,
    PackingError,
    RlkdError,
)

# numeric kernels: advantages and judge-prompt packing
from rlkd._core import PackedBatch, gae, group_advantages, pack_judge_prompts
# ---- text kernels: answer extraction and verification --------------------------------------
from rlkd._core import (
    Verdict,
    extract_answer,
    extract_answers,
    normalize_answer,
    verify,
    verify_batch,
)
from rlkd.fallback import verify_batch_with_fallback, verify_with_fallback
# ---- end text kernels ------------------------------------------------------------------------

__version__ = _core.__version__

__all__ = [
    "GroupSizeError",
    "InvalidArgumentError",
    "LengthMismatchError",
    "PackingError",
    "RlkdError",
    # numeric kernels
    "PackedBatch",
    "gae",
    "group_advantages",
    "pack_judge_prompts",
    # text kernels
    "Verdict",
    "extract_answer",
    "extract_answers",
    "normalize_answer",
    "verify",
    "verify_batch",
    "verify_batch_with_fallback",
    "verify_with_fallback",
]
