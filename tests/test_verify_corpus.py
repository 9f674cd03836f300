"""Differential test: the Rust verifier against math-verify 0.9's verdicts on the shared corpus.

Agreement is measured on the pairs Rust decides (Equal / NotEqual), excluding rows where
math-verify timed out (their False is not a verdict). Pairs that hit a documented, deliberate
difference (docs/verify-differences.md) are excluded by the explicit rules in
`deliberate_difference` below -- never by id -- and reported with their counts.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import pytest

from rlkd import Verdict, extract_answer, verify

def verdict_name(v: Verdict) -> str:
    return repr(v).rsplit(".", 1)[-1]


DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CORPUS = DATA / "verify" / "corpus.jsonl"

# `33 903 511`, `47\,833\,407`, `73{,}805{,}975`, thin spaces: digit groups math-verify sums or cuts.
DIGIT_GROUPS = re.compile(r"^-?\d{1,3}(?:(?: |\\,|\\ |\{,\}|\u2009|\u202f)\d{3})+(?:\.\d+)?$")
NUMBER = re.compile(r"^-?[\d.,]+$")
UNIT_PRODUCT = re.compile(r"^-?[\d.]+\*[A-Za-z]{2,}(\*\*\d+)?$")


def gold_answer_text(gold: str) -> str:
    """The gold answer the Rust verifier uses (rust/verify.rs `gold_answer`)."""
    if any(m in gold for m in ("\\boxed", "\\fbox", "####")):
        extracted = extract_answer(gold, strict=True)
        if extracted is not None:
            return extracted
    return gold.strip().strip("$").strip()


def deliberate_difference(row: dict) -> str | None:
    """The documented rule (docs/verify-differences.md) that explains a disagreement, if any."""
    if not row["gold_parsed"] or not row["pred_parsed"]:
        return "R1 math-verify could not parse one side"
    ours = {"gold": gold_answer_text(row["gold"]), "pred": extract_answer(row["pred"]) or ""}
    for side in ("gold", "pred"):
        mv_text = row[f"{side}_parsed"][-1].strip()
        if NUMBER.match(mv_text) and mv_text != ours[side] and mv_text in ours[side]:
            return "R2 math-verify read only a number out of a larger answer"
    if DIGIT_GROUPS.match(ours["pred"]):
        return "R3 space / thin-space separated digit groups"
    if UNIT_PRODUCT.match(row["pred_parsed"][0]) or UNIT_PRODUCT.match(row["gold_parsed"][0]):
        return "R4 unit word kept as a symbol by math-verify"
    if row["pred_parsed"][0].startswith("{") and not ours["pred"].startswith(("\\{", "{")) and "," not in ours["pred"]:
        return "R5 several answers in the output: math-verify takes their set, we take the last"
    if row["gold_parsed"][0] == row["pred_parsed"][0] and not row["mv_result"]:
        return "R6 math-verify's own parses print identically, yet it says False"
    return None


def load_rows() -> list[dict]:
    if not CORPUS.exists():
        pytest.skip(f"corpus not found at {CORPUS} (the shared data directory is absent)")
    with CORPUS.open() as f:
        return [json.loads(line) for line in f]


def test_corpus_agreement_with_math_verify(capsys: pytest.CaptureFixture[str]) -> None:
    rows = load_rows()
    considered = [r for r in rows if not r["timed_out"]]
    verdicts: collections.Counter[Verdict] = collections.Counter()
    decided = agree = 0
    excluded: collections.Counter[str] = collections.Counter()
    disagreements: collections.Counter[str] = collections.Counter()
    examples: dict[str, dict] = {}
    for row in considered:
        v = verify(row["gold"], row["pred"])
        verdicts[v] += 1
        if v not in (Verdict.Equal, Verdict.NotEqual):
            continue
        if (v == Verdict.Equal) == row["mv_result"]:
            decided += 1
            agree += 1
            continue
        rule = deliberate_difference(row)
        if rule is not None:
            excluded[rule] += 1
            continue
        decided += 1
        key = f"{row['category']}: rust {verdict_name(v)}, math-verify {row['mv_result']}"
        disagreements[key] += 1
        examples.setdefault(key, row)

    agreement = agree / decided
    coverage = (verdicts[Verdict.Equal] + verdicts[Verdict.NotEqual]) / len(considered)
    with capsys.disabled():
        print(f"\n[verify corpus] {len(considered)} pairs (timed-out rows excluded: {len(rows) - len(considered)})")
        print("[verify corpus] verdicts: " + ", ".join(f"{verdict_name(k)}={n}" for k, n in sorted(verdicts.items(), key=lambda kv: int(kv[0]))))
        print(f"[verify corpus] coverage (decided share): {coverage:.1%}")
        print(f"[verify corpus] agreement on decided pairs: {agreement:.2%} ({agree}/{decided})")
        for rule, n in sorted(excluded.items()):
            print(f"[verify corpus] deliberate difference {rule}: {n}")
        for key, n in disagreements.most_common():
            ex = examples[key]
            print(f"[verify corpus] disagreement {key}: {n}  e.g. gold={ex['gold'][:60]!r} pred=...{ex['pred'][-80:]!r}")
    assert agreement >= 0.99, f"agreement {agreement:.2%} < 99% on decided pairs"
