"""`verify_with_fallback`: Rust first, math-verify in a killable worker for Unknown pairs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from rlkd import Verdict, verify, verify_batch_with_fallback, verify_with_fallback

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CORPUS = DATA / "verify" / "corpus.jsonl"

# Rust says Unknown (needs a CAS); math-verify (sympy) decides them.
CAS_EQUAL = (r"$\sin^2 x + \cos^2 x$", r"The answer is $\boxed{1}$.")
CAS_NOT_EQUAL = (r"$2\sqrt{3}$", r"So we get $\boxed{3\sqrt{2}}$.")


def adversarial_pair() -> tuple[str, str]:
    """A corpus row math-verify timed out on (5 s) that Rust leaves Unknown."""
    if not CORPUS.exists():
        pytest.skip(f"corpus not found at {CORPUS} (the shared data directory is absent)")
    with CORPUS.open() as f:
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
    codes = verify_batch_with_fallback(golds, outputs, timeout_s=1.0)
    assert codes.dtype == np.int8
    assert codes.tolist() == [1, 1, 0, 2, 3]
    assert time.monotonic() - start < 60  # includes at most one worker (re)start
