"""Judge calibration against the verifier, fitted on past steps only."""

import numpy as np
import pytest

from rlkd.calibration import JudgeCalibrator


def _small_judge_step(rng, n=32):
    """A 0.5B-like judge: r ~ 0.3 everywhere, a little higher when the answer is right."""
    correct = rng.random(n) < 0.5
    r = np.clip(0.28 + 0.04 * correct + rng.normal(0, 0.01, n), 0, 1).astype(np.float32)
    return r, correct.astype(np.float64)


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_learns_a_decision_point_far_from_one_half(method):
    rng = np.random.default_rng(0)
    cal = JudgeCalibrator(method, min_samples=32)
    labeled = np.ones(32, bool)
    for _ in range(6):
        r, y = _small_judge_step(rng)
        cal.step(r, labeled, y, np.zeros(32, bool), apply_to_unlabeled=False)
    assert cal.fitted and 0.27 < cal.decision_point() < 0.33
    r, y = _small_judge_step(rng)
    _, m = cal.step(r, labeled, y, np.zeros(32, bool), apply_to_unlabeled=False)
    assert m["calib/brier_calibrated"] < m["calib/brier_raw"]  # out of sample: this step was not fitted
    p = cal.transform(np.array([0.25, 0.35, np.nan], np.float32))
    assert p[0] < 0.5 < p[1] and np.isnan(p[2])


def test_only_past_steps_and_only_unlabeled_rows_change():
    rng = np.random.default_rng(1)
    cal = JudgeCalibrator("isotonic", min_samples=16)
    r, y = _small_judge_step(rng, 16)
    half = np.arange(16) < 8  # first half labeled
    gated = np.zeros(16, bool)
    gated[-1] = True
    r[-1] = 0.0
    out, m = cal.step(r, half, np.where(half, y, np.nan), gated, apply_to_unlabeled=True)
    assert m["calib/fitted"] == 0.0 and np.array_equal(out, r)  # not fitted yet: identity
    for _ in range(3):
        r2, y2 = _small_judge_step(rng, 16)
        cal.step(r2, np.ones(16, bool), y2, np.zeros(16, bool), apply_to_unlabeled=True)
    assert cal.fitted
    out, _ = cal.step(r, half, np.where(half, y, np.nan), gated, apply_to_unlabeled=True)
    assert np.array_equal(out[half], r[half])  # labeled rows keep the raw judge reward
    assert out[-1] == 0.0  # gated rows stay 0
    assert not np.allclose(out[~half & ~gated], r[~half & ~gated])


def test_unknown_verdicts_and_abstentions_are_not_fitted():
    cal = JudgeCalibrator("platt", min_samples=2)
    r = np.array([np.nan, 0.3, 0.4], np.float32)
    cal.step(r, np.ones(3, bool), np.array([1.0, np.nan, 1.0]), np.zeros(3, bool), apply_to_unlabeled=False)
    assert not cal.fitted and cal._y == [1.0]


def test_bad_method():
    with pytest.raises(ValueError, match="isotonic"):
        JudgeCalibrator("sigmoid")
