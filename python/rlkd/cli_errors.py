"""The one error path of the four CLIs (rlkd-train, rlkd-eval, rlkd-judge, rlkd-plot).

Bad user input -- a wrong config value, a missing or unreadable file, a model directory that is
not a model -- surfaces as `RlkdError` (rlkd's own checks), `ValueError` (raised by libraries
such as transformers on bad files or names), `OSError` (missing files, permissions, full disks)
or `EmbeddedModelError` (a bad embedded model name or checksum). Each becomes ONE line on
stderr, `PROG: error: <message>`, and exit status 2. Every other exception is a bug and keeps
its traceback. `RLKD_TRACEBACK=1` shows the traceback of a user error too. A library's error
also names the line of rlkd that it came through (`(from rlkd/models.py:210)`): a ValueError
deep in a run may be a bug rather than bad input, and the line says where to look.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from rlkd._core import RlkdError
from rlkd.weights import EmbeddedModelError

USER_ERRORS: tuple[type[BaseException], ...] = (RlkdError, ValueError, OSError, EmbeddedModelError)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def describe(err: BaseException) -> str:
    """The message of a user error; library exceptions are prefixed with their type."""
    message = str(err).strip() or type(err).__name__
    if isinstance(err, RlkdError):
        return message
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.strerror}: {err.filename}"
    return f"{type(err).__name__}: {message}"


def origin(err: BaseException) -> str | None:
    """`rlkd/<module>.py:<line>` of the innermost rlkd frame that `err` passed through."""
    package = Path(__file__).resolve().parent
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).resolve().is_relative_to(package)]
    if not frames:
        return None
    where = Path(frames[-1].filename).resolve().relative_to(package.parent)
    return f"{where.as_posix()}:{frames[-1].lineno}"


def run_cli(prog: str, body: Callable[[], int], interrupted: str = "interrupted") -> int:
    """Run a CLI body: user errors are one line and exit 2, Ctrl-C is exit 130."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"\n{prog}: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as err:
        if os.environ.get("RLKD_TRACEBACK"):
            traceback.print_exc()
        where = None if isinstance(err, RlkdError) else origin(err)
        suffix = f" (from {where})" if where else ""
        print(f"{prog}: error: {describe(err)}{suffix}", file=sys.stderr)
        return EXIT_USER_ERROR
