import math

import numpy as np
import pytest

from rlkd.metrics import (
    accuracy_at,
    auroc,
    best_threshold,
    brier,
    expected_calibration_error,
    reliability_bins,
    same_correctness_share,
)


def test_auroc_hand_computed():
    # positives 0.9, 0.4; negatives 0.5, 0.1 -> pairs (pos > neg): (0.9>0.5),(0.9>0.1),(0.4>0.1) = 3 of 4
    assert auroc([0.9, 0.4, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.75)


def test_auroc_ties_count_half():
    assert auroc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert auroc([0.7, 0.5, 0.5], [1, 1, 0]) == pytest.approx(0.75)


def test_auroc_ignores_nan_and_needs_both_classes():
    assert auroc([0.9, np.nan, 0.1], [1, 0, 0]) == pytest.approx(1.0)
    assert math.isnan(auroc([0.2, 0.3], [1, 1]))


def test_auroc_matches_pairwise_definition_on_random_data():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 200) / 4.0  # many ties
    y = rng.random(200) < 0.4
    pos, neg = s[y], s[~y]
    expected = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert auroc(s, y) == pytest.approx(expected)


def test_accuracy_brier_and_best_threshold():
    s, y = [0.9, 0.6, 0.4, 0.2], [1, 0, 1, 0]
    assert accuracy_at(s, y, 0.5) == pytest.approx(0.5)
    assert brier(s, y) == pytest.approx((0.01 + 0.36 + 0.36 + 0.04) / 4)
    threshold, acc = best_threshold([0.3, 0.35, 0.1, 0.05], [1, 1, 0, 0])
    assert acc == 1.0 and 0.1 < threshold <= 0.3


def test_reliability_bins_and_ece():
    bins = reliability_bins([0.05, 0.15, 0.95, 0.85], [0, 0, 1, 0], n_bins=2)
    assert [b["count"] for b in bins] == [2, 2]
    assert bins[1]["accuracy"] == pytest.approx(0.5) and bins[1]["mean_score"] == pytest.approx(0.9)
    # |0.1 - 0| * 2 + |0.9 - 0.5| * 2, over 4
    assert expected_calibration_error([0.05, 0.15, 0.95, 0.85], [0, 0, 1, 0], n_bins=2) == pytest.approx(0.25)


def test_same_correctness_share_hand_computed():
    # groups of 2: labeled all-wrong (|A| 0.2+0.2), labeled mixed (1+1), unlabeled (ignored: 5+5)
    advantages = [0.2, -0.2, 1.0, -1.0, 5.0, -5.0]
    labeled = [True, True, True, True, False, False]
    correct = [False, False, True, False, False, False]
    assert same_correctness_share(advantages, labeled, correct, 2) == pytest.approx(0.4 / 2.4)
    assert math.isnan(same_correctness_share([0.0] * 6, labeled, correct, 2))
