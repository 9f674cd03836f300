import math

import pytest

from rlkd.significance import correct_by_id, format_comparison, mcnemar_exact_p, paired_comparison, wilson_interval


def test_mcnemar_exact_matches_a_hand_computation():
    # b = 1 lost, c = 6 gained: P(X <= 1 | n = 7, p = 1/2) = (1 + 7) / 128; two-sided: 16 / 128.
    assert mcnemar_exact_p(1, 6) == pytest.approx(16 / 128)
    assert mcnemar_exact_p(6, 1) == pytest.approx(16 / 128)  # symmetric
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(3, 3) == 1.0  # capped at 1
    # b = 2, c = 12: (1 + 14 + 91) / 2**14 * 2
    assert mcnemar_exact_p(2, 12) == pytest.approx(2 * 106 / 2**14)


def test_wilson_interval_matches_a_hand_computation():
    lo, hi = wilson_interval(30, 100)
    z = 1.959963984540054
    centre = (0.3 + z * z / 200) / (1 + z * z / 100)
    half = z * math.sqrt(0.3 * 0.7 / 100 + z * z / 40000) / (1 + z * z / 100)
    assert (lo, hi) == pytest.approx((centre - half, centre + half))
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_paired_comparison_counts_only_shared_problems():
    before = {"a": True, "b": False, "c": False, "d": True, "only-before": True}
    after = {"a": True, "b": True, "c": True, "d": False, "only-after": False}
    cmp = paired_comparison(before, after)
    assert cmp["n"] == 4
    assert (cmp["gained"], cmp["lost"]) == (2, 1)
    assert cmp["pass@1_before"] == 0.5 and cmp["pass@1_after"] == 0.75
    assert cmp["diff"] == pytest.approx(0.25)
    assert cmp["mcnemar_p"] == pytest.approx(mcnemar_exact_p(1, 2))
    assert cmp["diff_ci95"][0] < 0.25 < cmp["diff_ci95"][1]
    assert "+25.0 points" in format_comparison(cmp)


def test_correct_by_id_reads_eval_rows():
    rows = [{"id": 1, "verdict": "Equal"}, {"id": "x", "verdict": "NoAnswer"}]
    assert correct_by_id(rows) == {"1": True, "x": False}
