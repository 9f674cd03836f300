"""Answer extraction (kernel 1) through the public Python API, plus the GSM8K proof."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlkd import extract_answer, extract_answers

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT / "python" / "rlkd" / "datasets"  # shipped with the package


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"first \boxed{1} then \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\fbox{42}", "42"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        ("work <<2*3=6>>6\n#### 1,000", "1,000"),
        ("So the final answer is 3439. I hope it is correct.", "3439"),
        ("Therefore, the answer is: 12.", "12"),
        ("Answer: 768 miles", "768 miles"),
        ("Q: how many?\nA: 17", "17"),
        ("**Final Answer**\n2929", "2929"),
        ("Thus there are 1357 ways in total.", "1357"),
        (r"So we get $$ \sqrt{12} $$", r"\sqrt{12}"),
        ("The answer is $5$.", "5"),
    ],
)
def test_forms(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


def test_strict_turns_off_the_fallbacks() -> None:
    assert extract_answer("Thus there are 1357 ways.") == "1357"
    assert extract_answer("Thus there are 1357 ways.", strict=True) is None
    assert extract_answer(r"\boxed{3}", strict=True) == "3"
    assert extract_answer("", strict=False) is None
    assert extract_answer("no number at all") is None


COMMENTS = ["The answer is correct.", "Final Answer: Yes", "The answer is: the same as the reference answer.",
            "The student's final answer is correct.", "Note to the judge: the reference answer is wrong.",
            "Q: right?\nA: Yes", r"\boxed{correct}", r"$\boxed{\text{Correct!}}$", "#### The answer is correct"]


@pytest.mark.parametrize("text", COMMENTS)
def test_a_comment_on_the_solution_is_not_an_answer(text: str) -> None:
    """rust/extract.rs "Values": prose after an answer phrase and verdicts anywhere are not answers."""
    assert extract_answer(text, strict=True) is None
    assert extract_answer(text) is None  # no number either: the verifier says NoAnswer


@pytest.mark.parametrize(
    ("text", "expected"),
    [("The answer is (C).", "(C)"), ("The answer is p - q.", "p - q"), ("The answer is $Evelyn$", "Evelyn"),
     (r"So \boxed{Navin}", "Navin"), (r"\boxed{Yes}", "Yes"), ("The answer is 18. Note: the answer is correct.", "18"),
     (r"\boxed{18} and \boxed{correct}", "18")],
)
def test_values_that_are_not_numbers_still_count(text: str, expected: str) -> None:
    assert extract_answer(text, strict=True) == expected


def test_hostile_inputs_return_quickly() -> None:
    assert extract_answer("\\boxed{" * 100_000) is None
    assert extract_answer("{" * 200_000 + "1") == "1"
    assert extract_answer("é😀\x00#### ü\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace")) is not None


def test_batch_matches_scalar() -> None:
    texts = [f"step {i}\n#### {i * 7}" if i % 3 else f"no answer {i}" for i in range(2000)]
    for strict in (False, True):
        assert extract_answers(texts, strict=strict) == [extract_answer(t, strict=strict) for t in texts]
    assert extract_answers([]) == []
    with pytest.raises(TypeError):
        extract_answers("not a list of strings")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_extracts_without_error(text: str) -> None:
    out = extract_answer(text)
    assert out is None or (out and out == out.strip())
    assert extract_answers([text]) == [out]


def _rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("split", ["train", "test"])
def test_gsm8k_extraction_matches_the_marker(split: str) -> None:
    rows = _rows(GSM8K / f"gsm8k_{split}.jsonl.gz")
    answers = [r["answer"] for r in rows]
    golds = [a.split("#### ")[-1].strip() for a in answers]
    assert extract_answers(answers) == golds


def test_lone_surrogates_are_an_rlkd_error() -> None:
    from rlkd import InvalidArgumentError, normalize_answer, verify

    for call in (lambda: extract_answer("\ud800"), lambda: normalize_answer("x\udfff"), lambda: verify("1", "\ud800")):
        with pytest.raises(InvalidArgumentError, match="lone surrogate"):
            call()


def test_batches_read_a_lone_surrogate_as_a_replacement_character() -> None:
    """One invalid string must not fail a batch (rust/py.rs `batch_texts`); the scalars raise instead."""
    from rlkd import Verdict, verify_batch, verify_batch_with_fallback

    texts = ["\ud800", "x\udfff The answer is 5.", "#### 7"]
    assert extract_answers(texts, strict=True) == [None, "5", "7"]
    assert extract_answers(texts) == [None, "5", "7"]
    assert verify_batch(["5", "5", "7"], texts).tolist() == [int(Verdict.NoAnswer), int(Verdict.Equal), int(Verdict.Equal)]
    assert verify_batch(["\ud800"], ["#### 7"]).tolist() == [int(Verdict.Unknown)]  # a gold of U+FFFD: nothing to compare
    assert verify_batch_with_fallback(["5", "5"], texts[:2]).tolist() == [int(Verdict.NoAnswer), int(Verdict.Equal)]
