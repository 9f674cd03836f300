"""Verification (kernel 2) through the public Python API, plus the GSM8K / MATH-500 proofs."""

from __future__ import annotations

import gzip
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rlkd
from rlkd import LengthMismatchError, RlkdError, Verdict, normalize_answer, verify, verify_batch

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT / "python" / "rlkd" / "datasets"  # shipped with the package
MATH500 = ROOT / "tests" / "data" / "math500_test.jsonl.gz"  # shipped test fixture


def test_verdict_codes_are_api() -> None:
    assert [int(v) for v in (Verdict.NotEqual, Verdict.Equal, Verdict.Unknown, Verdict.NoAnswer)] == [0, 1, 2, 3]
    assert Verdict.Equal == Verdict.Equal and Verdict.Equal != Verdict.NotEqual
    assert len({Verdict.Equal, Verdict.Equal, Verdict.Unknown}) == 2
    assert rlkd._core.Verdict is Verdict


@pytest.mark.parametrize(
    ("gold", "output", "expected"),
    [
        ("1000", "The answer is 1,000.", Verdict.Equal),
        ("1000", r"\boxed{1{,}000}", Verdict.Equal),
        ("1000", r"\boxed{1\,000}", Verdict.Equal),
        (r"\frac{1}{2}", "The answer is 0.5", Verdict.Equal),
        (r"\frac{1}{3}", r"\boxed{0.333333}", Verdict.Equal),
        (r"\frac{7}{3}", r"\boxed{2.33}", Verdict.NotEqual),
        (r"\dfrac{3}{4}", r"\boxed{\tfrac34}", Verdict.Equal),
        (r"3\frac{1}{2}", r"\boxed{3.5}", Verdict.Equal),
        ("1500", r"\boxed{1.5 \times 10^{3}}", Verdict.Equal),
        ("-4", "#### -4", Verdict.Equal),
        ("0.125", "It is 12.5 percent.", Verdict.Equal),
        ("768", "Answer: 768 miles", Verdict.Equal),
        ("18", "#### $18", Verdict.Equal),
        (r"90^\circ", r"\boxed{90}", Verdict.Equal),
        (r"\text{Evelyn}", r"\boxed{\text{evelyn}}", Verdict.Equal),
        (r"\left( 3, \frac{\pi}{2} \right)", r"\boxed{(3, \frac{\pi}{2})}", Verdict.Equal),
        ("[1, 2)", r"\boxed{(1, 2)}", Verdict.NotEqual),
        (r"\{1, 2, 3\}", r"\boxed{\{3, 2, 1\}}", Verdict.Equal),
        (r"(-\infty, 0) \cup (1, \infty)", r"\boxed{(1,\infty)\cup(-\infty,0)}", Verdict.Equal),
        (r"\sin^2 x + \cos^2 x", r"\boxed{1}", Verdict.Unknown),
        ("5", "I could not solve it.", Verdict.NoAnswer),
    ],
)
def test_forms(gold: str, output: str, expected: Verdict) -> None:
    assert verify(gold, output) == expected


def test_argument_order_is_api() -> None:
    # The output always goes through answer extraction; the gold only when it has a marker
    # (`\boxed`, `####`), else it is used whole -- so swapping the arguments changes verdicts.
    assert verify("4", "The answer is 4") == Verdict.Equal
    assert verify("The answer is 4", "4") == Verdict.Unknown
    # A marked gold is extracted strictly; an output falls back to its last number.
    assert verify("#### 12", "Some work 5 then 12") == Verdict.Equal
    assert verify("Some work 5 then 12", "#### 12") == Verdict.Unknown
    # Percent rules are symmetric, as in math-verify's comparison (its gold-percent asymmetry
    # comes from parsing a bare `25\%` gold as 25: see docs/verify-differences.md, R2).
    assert verify("0.25", r"The answer is \boxed{25\%}") == Verdict.Equal
    assert verify(r"\boxed{25\%}", r"\boxed{0.25}") == Verdict.Equal
    assert verify("40", r"\boxed{40\%}") == Verdict.Equal  # integers: math-verify's 9% == 9
    # One side has a percent sign and the values agree without it: not sure, so Unknown (the
    # math-verify fallback decides; docs/verify-differences.md, "NotEqual only when sure").
    assert verify(r"\boxed{62.5\%}", r"\boxed{62.5}") == Verdict.Unknown


def test_normalize_answer() -> None:
    assert normalize_answer(r"\dfrac{6}{4}") == "1.5"
    assert normalize_answer(r"\frac{1}{3}") == "1/3"
    assert normalize_answer("$1,000$") == "1000"
    assert normalize_answer(r"\{2, 1\}") == r"\{1, 2\}"
    assert normalize_answer("  something symbolic x ") == "something symbolic x"


def test_verify_batch_codes_dtype_and_errors() -> None:
    golds = ["1", "2", "3", r"\sin x"]
    outputs = ["#### 1", "#### 3", "nothing", r"\boxed{\cos x}"]
    codes = verify_batch(golds, outputs)
    assert codes.dtype == np.int8 and codes.shape == (4,)
    assert codes.tolist() == [1, 0, 3, 2]
    assert verify_batch([], []).dtype == np.int8
    with pytest.raises(LengthMismatchError, match="golds has 2 items but outputs has 1"):
        verify_batch(["1", "2"], ["1"])
    assert issubclass(LengthMismatchError, RlkdError) and issubclass(RlkdError, ValueError)


def test_batch_matches_scalar_and_releases_the_gil() -> None:
    golds = [str(i % 97) for i in range(20_000)]
    outputs = [f"The answer is {i % 89}." for i in range(20_000)]
    expected = np.array([int(verify(g, o)) for g, o in zip(golds, outputs)], dtype=np.int8)
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    t = threading.Thread(target=count)
    t.start()
    try:
        for _ in range(5):
            got = verify_batch(golds, outputs)
    finally:
        done.set()
        t.join()
    np.testing.assert_array_equal(got, expected)
    assert ticks > 0  # the other thread ran while Rust worked


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.text(max_size=300))
def test_any_pair_gives_a_verdict(gold: str, output: str) -> None:
    v = verify(gold, output)
    assert int(v) in (0, 1, 2, 3)
    assert verify_batch([gold], [output]).tolist() == [int(v)]


@settings(max_examples=200, deadline=None)
@given(st.integers(-(10**12), 10**12), st.integers(1, 10**6))
def test_numbers_equal_themselves_in_every_form(n: int, d: int) -> None:
    assert verify(str(n), f"#### {n:,}") == Verdict.Equal
    assert verify(rf"\frac{{{n}}}{{{d}}}", rf"\boxed{{\dfrac{{{n * 3}}}{{{d * 3}}}}}") == Verdict.Equal
    assert verify(str(n), f"The answer is {n + 1}.") == Verdict.NotEqual


def _rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("split", ["train", "test"])
def test_gsm8k_gold_verifies_against_its_solution(split: str) -> None:
    rows = _rows(GSM8K / f"gsm8k_{split}.jsonl.gz")
    golds = [r["answer"].split("#### ")[-1].strip().replace(",", "") for r in rows]
    codes = verify_batch(golds, [r["answer"] for r in rows])
    bad = [(g, r["answer"][-60:]) for g, r, c in zip(golds, rows, codes) if c != int(Verdict.Equal)]
    assert not bad, f"{len(bad)} GSM8K rows not Equal, e.g. {bad[:3]}"


def test_math500_answer_verifies_against_its_solution(capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(MATH500)
    codes = verify_batch([r["answer"] for r in rows], [r["solution"] for r in rows])
    equal = float(np.mean(codes == int(Verdict.Equal)))
    with capsys.disabled():
        print(f"\n[math500] verify(answer, solution) Equal on {equal:.1%} of {len(rows)} rows")
    misses = [(r["answer"], int(c)) for r, c in zip(rows, codes) if c != int(Verdict.Equal)]
    assert equal >= 0.99, f"only {equal:.1%} Equal; misses: {misses[:20]}"
