"""Rust first, math-verify for what Rust cannot decide -- in a killable worker process.

`verify_with_fallback(gold, output)` returns the Rust verdict when it is Equal, NotEqual or
NoAnswer. When Rust says Unknown (deciding would need a CAS), the pair goes to math-verify
(`math_verify.parse` on both sides, then `math_verify.verify`) in a separate process:

- one persistent worker (multiprocessing, *spawn* context) is reused across calls, so sympy is
  imported once;
- each pair gets a hard wall-clock limit `timeout_s`; on timeout the worker is killed (it is
  restarted lazily on the next call) and the verdict is Unknown;
- math-verify's own SIGALRM timeouts are disabled in the worker (the kill is the limit), and no
  signal is ever used in the caller, so this works from any thread;
- a bare gold without math delimiters is wrapped in `$...$` for math-verify, whose parser
  otherwise reads only the last number of bare LaTeX (see docs/verify-differences.md);
- math-verify errors and parse failures (either side empty) give Unknown.

Unknown after the fallback stays Unknown: callers count it, they do not score it as wrong.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import numpy.typing as npt

from rlkd._core import Verdict, verify, verify_batch

__all__ = ["verify_batch_with_fallback", "verify_with_fallback"]

# Start-up (spawn + importing sympy/math-verify) is not counted against a pair's timeout.
STARTUP_TIMEOUT_S = 120.0


def _as_math_verify_gold(gold: str) -> str:
    if any(m in gold for m in ("$", "\\(", "\\[", "\\boxed", "\\fbox", "####")):
        return gold
    return f"${gold.strip()}$"


def _worker_main(conn: Connection) -> None:
    """Worker loop: receive (gold, output), send back an int verdict code."""
    import logging

    logging.disable(logging.WARNING)  # math-verify warns once that its timeouts are disabled
    from math_verify import parse  # type: ignore[import-untyped]
    from math_verify import verify as mv_verify  # type: ignore[import-untyped]

    conn.send("ready")
    while True:
        try:
            gold, output = conn.recv()
        except EOFError:
            return
        code = int(Verdict.Unknown)
        try:
            g = parse(gold, parsing_timeout=None)
            p = parse(output, parsing_timeout=None)
            if g and p:
                equal = mv_verify(g, p, timeout_seconds=None)
                code = int(Verdict.Equal) if equal else int(Verdict.NotEqual)
        except Exception:  # math-verify failing on an input is an Unknown, not a crash
            code = int(Verdict.Unknown)
        conn.send(code)


class _MathVerifyWorker:
    """One persistent math-verify process with a per-pair wall-clock limit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Connection | None = None

    def _start(self) -> Connection:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child,), daemon=True, name="rlkd-math-verify")
        proc.start()
        child.close()
        if not parent.poll(STARTUP_TIMEOUT_S) or parent.recv() != "ready":
            proc.kill()
            proc.join()
            raise RuntimeError("math-verify worker did not start")
        self._proc, self._conn = proc, parent
        return parent

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def check(self, gold: str, output: str, timeout_s: float) -> Verdict:
        with self._lock:
            conn = self._conn
            if conn is None or self._proc is None or not self._proc.is_alive():
                self._kill()
                conn = self._start()
            try:
                conn.send((_as_math_verify_gold(gold), output))
                if conn.poll(timeout_s):
                    return _CODES.get(conn.recv(), Verdict.Unknown)
            except (EOFError, OSError, BrokenPipeError):
                pass
            self._kill()  # timed out or died: kill now, restart on the next call
            return Verdict.Unknown

    def close(self) -> None:
        with self._lock:
            self._kill()


_CODES = {int(v): v for v in (Verdict.NotEqual, Verdict.Equal, Verdict.Unknown, Verdict.NoAnswer)}
_WORKER = _MathVerifyWorker()
atexit.register(_WORKER.close)


def verify_with_fallback(gold: str, output: str, timeout_s: float = 5.0) -> Verdict:
    """`rlkd.verify`, with Unknown pairs sent to math-verify under a hard `timeout_s` limit."""
    verdict = verify(gold, output)
    if verdict != Verdict.Unknown:
        return verdict
    return _WORKER.check(gold, output, timeout_s)


def verify_batch_with_fallback(
    golds: Sequence[str], outputs: Sequence[str], timeout_s: float = 5.0
) -> npt.NDArray[np.int8]:
    """`rlkd.verify_batch` (int8 codes), with each Unknown pair sent to math-verify."""
    codes = verify_batch(golds, outputs)
    unknown = int(Verdict.Unknown)
    for i in np.flatnonzero(codes == unknown).tolist():
        codes[i] = int(_WORKER.check(golds[i], outputs[i], timeout_s))
    return codes
