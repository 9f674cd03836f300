"""Differential tests: the Rust verifier against math-verify 0.9's verdicts.

Two shipped fixtures (tests/data/README.md):
- `verify_corpus.jsonl.gz`: 5,010 (gold, output) pairs. Agreement is measured on the pairs Rust
  decides (Equal / NotEqual), excluding rows where math-verify timed out (their False is not a
  verdict). Pairs that hit a documented, deliberate difference (docs/verify-differences.md) are
  excluded by the explicit rules in `deliberate_difference` below -- never by id -- and
  reported with their counts.
- `latex_equivalences.jsonl.gz`: MATH-500 answers rewritten in equivalent forms.

On both, a NotEqual where math-verify says Equal is counted on its own: Rust says NotEqual only
when it is sure, so every such pair must be a documented math-verify misreading.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
from pathlib import Path

import pytest

from rlkd import Verdict, extract_answer, verify

def verdict_name(v: Verdict) -> str:
    return repr(v).rsplit(".", 1)[-1]


FIXTURES = Path(__file__).resolve().parent / "data"
CORPUS = FIXTURES / "verify_corpus.jsonl.gz"
EQUIVALENCES = FIXTURES / "latex_equivalences.jsonl.gz"
INTEGER_SUM = re.compile(r"^[+-]?\d+(?:[+-]\d+)+$")

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


def math_verify_misreading(row: dict) -> str | None:
    """Why math-verify's Equal is a misreading, for a pair Rust says is NotEqual (or None)."""
    if deliberate_difference(row) == "R2 math-verify read only a number out of a larger answer":
        return "R2 math-verify read only a number out of a larger answer"
    text, value = row["pred_parsed"][-1].strip(), row["pred_parsed"][0].strip()
    if INTEGER_SUM.match(text) and str(sum(int(t) for t in re.findall(r"[+-]?\d+", text))) != value:
        return "R7 math-verify's parse of a long integer sum is not its value"
    return None


def load_rows(path: Path = CORPUS) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_corpus_agreement_with_math_verify(capsys: pytest.CaptureFixture[str]) -> None:
    rows = load_rows()
    considered = [r for r in rows if not r["timed_out"]]
    verdicts: collections.Counter[Verdict] = collections.Counter()
    decided = agree = 0
    excluded: collections.Counter[str] = collections.Counter()
    disagreements: collections.Counter[str] = collections.Counter()
    examples: dict[str, dict] = {}
    false_not_equal: collections.Counter[str | None] = collections.Counter()
    for row in considered:
        v = verify(row["gold"], row["pred"])
        verdicts[v] += 1
        if v == Verdict.NotEqual and row["mv_result"]:
            false_not_equal[math_verify_misreading(row)] += 1
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
        print(f"[verify corpus] NotEqual where math-verify says Equal: {sum(false_not_equal.values())}")
        for rule, n in sorted(false_not_equal.items(), key=lambda kv: str(kv[0])):
            print(f"[verify corpus]   {rule or 'UNEXPLAINED'}: {n}")
    assert agreement >= 0.99, f"agreement {agreement:.2%} < 99% on decided pairs"
    assert false_not_equal[None] == 0, f"{false_not_equal[None]} NotEqual verdicts on pairs math-verify calls Equal"


def test_no_not_equal_on_true_latex_equivalences(capsys: pytest.CaptureFixture[str]) -> None:
    """MATH-500 answers in equivalent forms that math-verify agrees are Equal: never NotEqual."""
    rows = [r for r in load_rows(EQUIVALENCES) if r["mv_result"]]
    assert len(rows) > 10_000
    verdicts = collections.Counter(verify(r["gold"], r["pred"]) for r in rows)
    wrong = [(r["rewrite"], r["gold"], r["pred"][-60:]) for r in rows if verify(r["gold"], r["pred"]) == Verdict.NotEqual]
    with capsys.disabled():
        print(f"\n[latex equivalences] {len(rows)} pairs math-verify calls Equal: "
              + ", ".join(f"{verdict_name(k)}={n}" for k, n in sorted(verdicts.items(), key=lambda kv: int(kv[0]))))
    assert not wrong, f"{len(wrong)} NotEqual on true equivalences, e.g. {wrong[:5]}"
    assert verdicts[Verdict.Equal] / len(rows) >= 0.95
