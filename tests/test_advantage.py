"""rlkd.group_advantages and rlkd.gae against plain numpy / Python references.

Pinned conventions: grpo uses the unbiased std (ddof=1) and adds eps to the std; NaN rewards are
excluded (advantage 0, left out of the statistics); all-equal groups and groups of one get
exactly 0; output is float32 whatever the input dtype.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rlkd
from rlkd import GroupSizeError, InvalidArgumentError, LengthMismatchError, RlkdError

ESTIMATORS = ["grpo", "dr_grpo", "rloo"]


def reference_advantages(rewards: np.ndarray, group_size: int, estimator: str, eps: float) -> np.ndarray:
    """The formulas in float64, one group at a time, written for clarity."""
    rewards = np.asarray(rewards, dtype=np.float32).astype(np.float64)
    out = np.zeros_like(rewards)
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        kept = ~np.isnan(group)
        values = group[kept]
        n = len(values)
        if n <= 1 or np.all(values == values[0]):
            continue
        mean = values.mean()
        if estimator == "grpo":
            adv = (values - mean) / (values.std(ddof=1) + eps)
        elif estimator == "dr_grpo":
            adv = values - mean
        else:  # rloo: r minus the mean of the others
            adv = values - (values.sum() - values) / (n - 1)
        out[start : start + group_size][kept] = adv
    return out


reward_values = st.one_of(
    st.floats(-100, 100, width=32),
    st.sampled_from([0.0, 0.1, 1.0]),
    st.just(float("nan")),
)


@settings(max_examples=400, deadline=None)
@given(
    group_size=st.integers(1, 16),
    num_groups=st.integers(0, 6),
    estimator=st.sampled_from(ESTIMATORS),
    eps=st.sampled_from([0.0, 1e-6, 1e-2]),
    data=st.data(),
)
def test_matches_numpy_reference(group_size, num_groups, estimator, eps, data):
    rewards = np.array(
        data.draw(st.lists(reward_values, min_size=group_size * num_groups, max_size=group_size * num_groups)),
        dtype=np.float32,
    )
    got = rlkd.group_advantages(rewards, group_size, estimator, eps)
    want = reference_advantages(rewards, group_size, estimator, eps)
    assert got.dtype == np.float32 and got.shape == rewards.shape
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    assert np.all(got[np.isnan(rewards)] == 0.0)


def test_grpo_uses_ddof_1_and_eps_on_the_std():
    rewards = np.array([0.0, 1.0, 2.0, 3.0], dtype=np.float32)
    std1 = rewards.std(ddof=1)
    np.testing.assert_allclose(rlkd.group_advantages(rewards, 4, eps=0.0), (rewards - 1.5) / std1, rtol=1e-6)
    np.testing.assert_allclose(rlkd.group_advantages(rewards, 4, eps=0.5), (rewards - 1.5) / (std1 + 0.5), rtol=1e-6)
    # the default estimator is grpo and the default eps is 1e-6
    np.testing.assert_allclose(rlkd.group_advantages(rewards, 4), (rewards - 1.5) / (std1 + 1e-6), rtol=1e-6)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_all_equal_groups_and_groups_of_one_are_exactly_zero(estimator):
    # 0.1 is not representable: a naive mean would leave ~1e-9 residues, amplified by 1/eps.
    rewards = np.array([0.1] * 7 + [0.3] * 7, dtype=np.float32)
    assert np.all(rlkd.group_advantages(rewards, 7, estimator, 0.0) == 0.0)
    assert np.all(rlkd.group_advantages(np.array([0.2, 5.0, -1.0], np.float32), 1, estimator) == 0.0)
    # one non-NaN reward left in the group: effectively a group of one
    assert np.all(rlkd.group_advantages(np.array([np.nan, 0.7, np.nan], np.float32), 3, estimator) == 0.0)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_nan_rewards_are_excluded(estimator):
    with_nan = rlkd.group_advantages(np.array([1.0, np.nan, 0.0, 0.25], np.float32), 4, estimator)
    without = rlkd.group_advantages(np.array([1.0, 0.0, 0.25], np.float32), 3, estimator)
    assert with_nan[1] == 0.0
    np.testing.assert_array_equal(with_nan[[0, 2, 3]], without)


def test_rloo_is_leave_one_out():
    got = rlkd.group_advantages(np.array([1, 0, 0, 0, 3, 1], np.float32), 3, "rloo")
    np.testing.assert_allclose(got, [1.0, -0.5, -0.5, -2.0, 2.5, -0.5], atol=1e-6)


def test_dtypes_in_and_out():
    as64 = rlkd.group_advantages(np.array([0.0, 1.0], np.float64), 2, "dr_grpo")
    from_list = rlkd.group_advantages([0.0, 1.0], 2, "dr_grpo")
    from_ints = rlkd.group_advantages(np.array([0, 1]), 2, "dr_grpo")
    for got in (as64, from_list, from_ints):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, [-0.5, 0.5])
    strided = np.arange(8, dtype=np.float32)[::2]  # non-contiguous input
    np.testing.assert_allclose(rlkd.group_advantages(strided, 2, "dr_grpo"), [-1, 1, -1, 1])
    assert rlkd.group_advantages(np.zeros(0, np.float32), 8).shape == (0,)


def test_errors():
    with pytest.raises(GroupSizeError, match=r"group_size 4 .* rewards 10"):
        rlkd.group_advantages(np.zeros(10, np.float32), 4)
    with pytest.raises(GroupSizeError):
        rlkd.group_advantages(np.zeros(10, np.float32), 0)
    with pytest.raises(GroupSizeError):
        rlkd.group_advantages(np.zeros(10, np.float32), -2)
    with pytest.raises(InvalidArgumentError, match="grpo, dr_grpo, rloo"):
        rlkd.group_advantages(np.zeros(4, np.float32), 2, "ppo")
    with pytest.raises(InvalidArgumentError, match="index 2"):
        rlkd.group_advantages(np.array([0, 1, np.inf, 0], np.float32), 2)
    with pytest.raises(InvalidArgumentError, match="eps"):
        rlkd.group_advantages(np.zeros(4, np.float32), 2, eps=-1.0)
    with pytest.raises(InvalidArgumentError, match="one-dimensional"):
        rlkd.group_advantages(np.zeros((2, 2), np.float32), 2)
    with pytest.raises(RlkdError):  # RlkdError is a ValueError
        rlkd.group_advantages(["a", "b"], 2)
    assert issubclass(RlkdError, ValueError)


# ---------------------------------------------------------------------------------------------
# GAE


def reference_gae(rewards, values, lengths, gamma, lam):
    """Hand-written GAE: each sequence is terminal after its last token (next value 0)."""
    advantages: list[float] = []
    start = 0
    for length in lengths:
        r = [float(x) for x in rewards[start : start + length]]
        v = [float(x) for x in values[start : start + length]]
        seq = [0.0] * length
        running = 0.0
        for t in reversed(range(length)):
            next_value = v[t + 1] if t + 1 < length else 0.0
            delta = r[t] + gamma * next_value - v[t]
            running = delta + gamma * lam * running
            seq[t] = running
        advantages += seq
        start += length
    return np.array(advantages, dtype=np.float64)


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 20), max_size=6),
    gamma=st.floats(0, 1),
    lam=st.floats(0, 1),
    data=st.data(),
)
def test_gae_matches_reference(lengths, gamma, lam, data):
    total = sum(lengths)
    finite = st.floats(-5, 5, width=32)
    rewards = np.array(data.draw(st.lists(finite, min_size=total, max_size=total)), dtype=np.float32)
    values = np.array(data.draw(st.lists(finite, min_size=total, max_size=total)), dtype=np.float32)
    advantages, returns = rlkd.gae(rewards, values, np.array(lengths, dtype=np.int64), gamma, lam)
    assert advantages.dtype == returns.dtype == np.float32
    want = reference_gae(rewards, values, lengths, np.float32(gamma), np.float32(lam))
    np.testing.assert_allclose(advantages, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(returns, want + values, rtol=1e-4, atol=1e-4)


def test_gae_sparse_terminal_reward_with_defaults():
    # gamma=1, lam=0.95 (the defaults), zero values: A_t = 0.95^(T-1-t) * reward
    advantages, returns = rlkd.gae(np.array([0, 0, 0, 1], np.float32), np.zeros(4, np.float32), [4])
    np.testing.assert_allclose(advantages, [0.95**3, 0.95**2, 0.95, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(returns, advantages)
    # the second sequence does not bootstrap from the first
    advantages, _ = rlkd.gae(np.array([1, 1], np.float32), np.array([0, 7], np.float32), [1, 1], 1.0, 1.0)
    np.testing.assert_allclose(advantages, [1.0, -6.0])
    assert math.isclose(float(advantages[0]), 1.0)


def test_gae_errors():
    r = np.zeros(5, np.float32)
    with pytest.raises(LengthMismatchError, match="sum\\(lengths\\) is 4"):
        rlkd.gae(r, r, [2, 2])
    with pytest.raises(LengthMismatchError):
        rlkd.gae(r, np.zeros(4, np.float32), [5])
    with pytest.raises(InvalidArgumentError, match="lengths\\[1\\]"):
        rlkd.gae(r, r, [6, -1])
    with pytest.raises(InvalidArgumentError, match="integers"):
        rlkd.gae(r, r, np.array([2.5, 2.5]))
    with pytest.raises(InvalidArgumentError, match="gamma"):
        rlkd.gae(r, r, [5], gamma=1.5)
    with pytest.raises(InvalidArgumentError, match="values\\[3\\]"):
        rlkd.gae(r, np.array([0, 0, 0, np.nan, 0], np.float32), [5])


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_large_batches_take_the_threaded_path_and_agree(estimator):
    rng = np.random.default_rng(1)
    rewards = rng.random(100_000, dtype=np.float32)
    rewards[rng.random(rewards.size) < 0.05] = np.nan
    rewards[:800] = 0.5  # some all-equal groups
    got = rlkd.group_advantages(rewards, 8, estimator)
    np.testing.assert_allclose(got, reference_advantages(rewards, 8, estimator, 1e-6), rtol=1e-4, atol=1e-4)
    assert np.all(got[:800] == 0.0)


def test_a_bool_group_size_is_refused_not_taken_as_1() -> None:
    with pytest.raises(GroupSizeError, match="group_size must be an integer, got True"):
        rlkd.group_advantages(np.ones(4, dtype=np.float32), True)
    with pytest.raises(GroupSizeError, match="group_size must be an integer"):
        rlkd.group_advantages(np.ones(4, dtype=np.float32), 2.0)
