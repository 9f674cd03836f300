# Hand-written stub for the Rust extension; checked by `python -m mypy.stubtest rlkd._core`.

from collections.abc import Sequence
from typing import ClassVar, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "__version__",
    "RlkdError",
    "GroupSizeError",
    "LengthMismatchError",
    "PackingError",
    "InvalidArgumentError",
]

__version__: str

class RlkdError(ValueError): ...
class GroupSizeError(RlkdError): ...
class LengthMismatchError(RlkdError): ...
class PackingError(RlkdError): ...
class InvalidArgumentError(RlkdError): ...

# ---- text kernels: answer extraction and verification --------------------------------------

__all__ += ["Verdict", "extract_answer", "extract_answers", "normalize_answer", "verify", "verify_batch"]

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
def normalize_answer(text: str) -> str: ...
def verify(gold: str, output: str) -> Verdict: ...
def verify_batch(golds: Sequence[str], outputs: Sequence[str]) -> npt.NDArray[np.int8]: ...

# ---- end text kernels ------------------------------------------------------------------------
