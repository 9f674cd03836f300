"""Rust first, math-verify for what Rust cannot decide -- in a killable worker process.

`verify_with_fallback(gold, output)` returns the Rust verdict when it is Equal, NotEqual or
NoAnswer. When Rust says Unknown (deciding would need a CAS), the pair goes to math-verify
(`math_verify.parse` on both sides, then `math_verify.verify`) in a separate process:

- one persistent worker process (`python -m rlkd.math_verify_worker`, talking JSON lines over
  pipes) is reused across calls, so sympy is imported once; being a module of its own, it never
  re-runs the caller's `__main__` (scripts without a main guard, stdin and notebooks work);
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
import json
import math
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from rlkd._core import InvalidArgumentError, Verdict, verify, verify_batch

__all__ = ["verify_batch_with_fallback", "verify_with_fallback"]

# Start-up (a new interpreter importing sympy/math-verify) is not counted against a pair's timeout.
STARTUP_TIMEOUT_S = 120.0


def _as_math_verify_gold(gold: str) -> str:
    if any(m in gold for m in ("$", "\\(", "\\[", "\\boxed", "\\fbox", "####")):
        return gold
    return f"${gold.strip()}$"


def _check_timeout(timeout_s: float) -> float:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s) or timeout_s <= 0:
        raise InvalidArgumentError(f"timeout_s must be a finite number of seconds > 0, got {timeout_s!r}")
    return float(timeout_s)


def _check_texts(name: str, texts: Sequence[str]) -> None:
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InvalidArgumentError(f"{name}[{i}] must be a str, got {type(t).__name__} {t!r}")


class _MathVerifyWorker:
    """One persistent math-verify process with a per-pair wall-clock limit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlkd.math_verify_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, encoding="utf-8", bufsize=1,
        )
        if self._read_line(proc, STARTUP_TIMEOUT_S) != json.dumps("ready"):
            self._kill_proc(proc)
            raise RuntimeError(f"the math-verify worker ({sys.executable} -m rlkd.math_verify_worker) did not start")
        self._proc = proc
        return proc

    @staticmethod
    def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str | None:
        """The worker's next line within `timeout_s`, or None (timed out or exited)."""
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout_s
            while not sel.select(max(0.0, deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    return None
        line = proc.stdout.readline()
        return line.strip() if line else None

    @staticmethod
    def _kill_proc(proc: subprocess.Popen[str]) -> None:
        proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()

    def _kill(self) -> None:
        if self._proc is not None:
            self._kill_proc(self._proc)
        self._proc = None

    def check(self, gold: str, output: str, timeout_s: float) -> Verdict:
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                self._kill()
                proc = self._start()
            try:
                assert proc.stdin is not None
                proc.stdin.write(json.dumps([_as_math_verify_gold(gold), output]) + "\n")
                proc.stdin.flush()
                line = self._read_line(proc, timeout_s)
                if line is not None:
                    return _CODES.get(int(line), Verdict.Unknown)
            except (OSError, ValueError):
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
    timeout_s = _check_timeout(timeout_s)
    _check_texts("gold", [gold])
    _check_texts("output", [output])
    verdict = verify(gold, output)
    if verdict != Verdict.Unknown:
        return verdict
    return _WORKER.check(gold, output, timeout_s)


def verify_batch_with_fallback(
    golds: Sequence[str], outputs: Sequence[str], timeout_s: float = 5.0
) -> npt.NDArray[np.int8]:
    """`rlkd.verify_batch` (int8 codes), with each Unknown pair sent to math-verify."""
    timeout_s = _check_timeout(timeout_s)
    _check_texts("golds", golds)
    _check_texts("outputs", outputs)
    codes = verify_batch(golds, outputs)
    unknown = int(Verdict.Unknown)
    for i in np.flatnonzero(codes == unknown).tolist():
        codes[i] = int(_WORKER.check(golds[i], outputs[i], timeout_s))
    return codes
