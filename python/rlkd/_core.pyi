# Hand-written stub for the Rust extension; checked by `python -m mypy.stubtest rlkd._core`.

from collections.abc import Sequence
from typing import Any, ClassVar, final

import numpy as np
import numpy.typing as npt

# pyo3 exports a runtime __all__ with every name the module registers.
__all__ = [
    "__version__",
    "RlkdError",
    "GroupSizeError",
    "LengthMismatchError",
    "PackingError",
    "InvalidArgumentError",
    "Verdict",
    "extract_answer",
    "extract_answers",
    "hedges",
    "normalize_answer",
    "verify",
    "verify_batch",
    "group_advantages",
    "gae",
    "pack_judge_prompts",
    "PackedBatch",
]

__version__: str

class RlkdError(ValueError): ...
class GroupSizeError(RlkdError): ...
class LengthMismatchError(RlkdError): ...
class PackingError(RlkdError): ...
class InvalidArgumentError(RlkdError): ...

# ---- text kernels: answer extraction (rust/extract.rs) and verification (rust/verify.rs) ----

@final
class Verdict:
    """Verdict of `verify`; int values are API: NotEqual=0, Equal=1, Unknown=2, NoAnswer=3."""

    NotEqual: ClassVar[Verdict]
    Equal: ClassVar[Verdict]
    Unknown: ClassVar[Verdict]
    NoAnswer: ClassVar[Verdict]
    def __int__(self) -> int: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

def extract_answer(text: str, strict: bool = False) -> str | None: ...
def extract_answers(texts: Sequence[str], strict: bool = False) -> list[str | None]: ...
def hedges(texts: Sequence[str]) -> list[bool]: ...
def normalize_answer(text: str) -> str: ...
def verify(gold: str, output: str) -> Verdict: ...
def verify_batch(golds: Sequence[str], outputs: Sequence[str]) -> npt.NDArray[np.int8]: ...

# ---- numeric kernels: advantages (rust/advantage.rs) and judge-prompt packing (rust/pack.rs) ----

_Float32Array = npt.NDArray[np.float32]
_Int64Array = npt.NDArray[np.int64]
_TokenIds = Sequence[int] | npt.NDArray[np.integer[Any]]

def group_advantages(
    rewards: npt.ArrayLike, group_size: int, estimator: str = "grpo", eps: float = 1e-6
) -> _Float32Array:
    """Advantages over contiguous groups [p0 x G, p1 x G, ...] ("grpo", "dr_grpo", "rloo").

    grpo: (r - mean) / (std + eps) with ddof=1; NaN rewards are excluded (advantage 0);
    all-equal groups and groups of one get exactly 0. Non-float32 input is converted to float32.
    """

def gae(
    rewards: npt.ArrayLike,
    values: npt.ArrayLike,
    lengths: npt.ArrayLike,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[_Float32Array, _Float32Array]:
    """GAE over ragged sequences flattened with `lengths`: returns (advantages, returns)."""

@final
class PackedBatch:
    """One batch of packed judge prompts (padded, or varlen with cu_seqlens)."""

    @property
    def input_ids(self) -> _Int64Array: ...
    @property
    def attention_mask(self) -> _Int64Array | None: ...
    @property
    def last_index(self) -> _Int64Array: ...
    @property
    def sample_index(self) -> _Int64Array: ...
    @property
    def lengths(self) -> _Int64Array: ...
    @property
    def cu_seqlens(self) -> npt.NDArray[np.int32] | None: ...
    @property
    def position_ids(self) -> _Int64Array | None: ...
    @property
    def num_truncated(self) -> int: ...
    @property
    def num_padding_tokens(self) -> int: ...
    def __len__(self) -> int: ...

def pack_judge_prompts(
    template_pieces: Sequence[_TokenIds],
    fields: Sequence[Sequence[_TokenIds]],
    *,
    max_tokens_per_batch: int,
    max_len: int,
    pad_id: int,
    padding_side: str = "left",
    truncate_field: int = -1,
    truncation: str = "keep_end",
    varlen: bool = False,
    sort_by_length: bool = True,
) -> list[PackedBatch]:
    """Pack pieces[0] + fields[0][i] + pieces[1] + ... + pieces[k] per sample into batches."""
