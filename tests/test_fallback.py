"""`verify_with_fallback`: Rust first, math-verify in a killable worker for Unknown pairs."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rlkd import InvalidArgumentError, Verdict, verify, verify_batch_with_fallback, verify_with_fallback
from rlkd.fallback import STARTUP_TIMEOUT_S

CORPUS = Path(__file__).resolve().parent / "data" / "verify_corpus.jsonl.gz"  # shipped fixture

# Rust says Unknown (needs a CAS); math-verify (sympy) decides them.
CAS_EQUAL = (r"$\sin^2 x + \cos^2 x$", r"The answer is $\boxed{1}$.")
CAS_NOT_EQUAL = (r"$2\sqrt{3}$", r"So we get $\boxed{3\sqrt{2}}$.")


def adversarial_pair() -> tuple[str, str]:
    """A corpus row math-verify timed out on (5 s) that Rust leaves Unknown."""
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["timed_out"] and row["category"] == "adversarial" and verify(row["gold"], row["pred"]) == Verdict.Unknown:
                return row["gold"], row["pred"]
    pytest.skip("no timed-out adversarial row that Rust leaves Unknown")


def test_decided_pairs_never_reach_math_verify() -> None:
    assert verify_with_fallback("12", "#### 12") == Verdict.Equal
    assert verify_with_fallback("12", "#### 13") == Verdict.NotEqual
    assert verify_with_fallback("12", "nothing here") == Verdict.NoAnswer


def test_unknown_pairs_get_math_verify_verdicts() -> None:
    assert verify(*CAS_EQUAL) == Verdict.Unknown
    assert verify_with_fallback(*CAS_EQUAL) == Verdict.Equal
    assert verify(*CAS_NOT_EQUAL) == Verdict.Unknown
    assert verify_with_fallback(*CAS_NOT_EQUAL) == Verdict.NotEqual


def test_hard_timeout_kills_the_worker_and_returns_unknown() -> None:
    gold, output = adversarial_pair()
    verify_with_fallback(*CAS_EQUAL)  # warm the worker: start-up is not part of the limit
    timeout_s = 1.0
    start = time.monotonic()
    assert verify_with_fallback(gold, output, timeout_s=timeout_s) == Verdict.Unknown
    elapsed = time.monotonic() - start
    assert elapsed < timeout_s + 1.0, f"took {elapsed:.2f}s with a {timeout_s}s limit"
    # The worker was killed; the next call restarts it and still gets real verdicts.
    assert verify_with_fallback(*CAS_EQUAL) == Verdict.Equal


def test_batch_with_fallback() -> None:
    gold, output = adversarial_pair()
    golds = ["5", CAS_EQUAL[0], CAS_NOT_EQUAL[0], gold, "7"]
    outputs = ["#### 5", CAS_EQUAL[1], CAS_NOT_EQUAL[1], output, "no answer"]
    start = time.monotonic()
    codes = verify_batch_with_fallback(golds, outputs, timeout_s=5.0)
    assert codes.dtype == np.int8
    assert codes.tolist() == [1, 1, 0, 2, 3]
    # At most one worker (re)start (bounded by STARTUP_TIMEOUT_S) plus one 5 s cut.
    assert time.monotonic() - start < STARTUP_TIMEOUT_S + 30


# The README's example, run the ways users run it: the worker must not re-run the caller's
# `__main__` (a spawned multiprocessing worker did, and the parent died with EOFError).
SCRIPT = r"""
from rlkd import verify_batch_with_fallback
print(verify_batch_with_fallback([r"$\sin^2 x + \cos^2 x$", "5"], [r"The answer is $\boxed{1}$.", "#### 5"], timeout_s=60).tolist())
"""


def test_fallback_from_stdin() -> None:
    result = subprocess.run([sys.executable, "-"], input=SCRIPT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[1, 1]"


def test_fallback_from_a_script_without_a_main_guard(tmp_path: Path) -> None:
    script = tmp_path / "check.py"
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[1, 1]"


@pytest.mark.parametrize("timeout_s", [float("nan"), float("inf"), 0, -1.0, True, "5"])
def test_bad_timeouts_are_rejected_up_front(timeout_s) -> None:
    with pytest.raises(InvalidArgumentError, match="timeout_s must be a finite number of seconds > 0"):
        verify_batch_with_fallback(["1"], ["#### 1"], timeout_s=timeout_s)
    with pytest.raises(InvalidArgumentError, match="timeout_s"):
        verify_with_fallback("1", "#### 1", timeout_s=timeout_s)


def test_non_string_golds_are_named() -> None:
    with pytest.raises(InvalidArgumentError, match=r"golds\[1\] must be a str, got float nan"):
        verify_batch_with_fallback(["1", float("nan")], ["#### 1", "#### 2"])
