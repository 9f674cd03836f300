//! Advantages: group-relative estimators (GRPO family) and GAE (PPO).
//!
//! # Group advantages
//! Rewards arrive as contiguous groups `[p0 × G, p1 × G, ...]`: the `G` responses sampled for
//! one prompt sit next to each other. Every group is normalised on its own.
//!
//! Conventions (pinned by tests here and in `tests/test_advantage.py`):
//! - `grpo`:    `(r - mean) / (std + eps)` with the **unbiased** std (ddof = 1), as in
//!   DeepSeekMath and TRL (`torch.std` defaults to ddof = 1). `eps` is added to the std,
//!   not to the variance.
//! - `dr_grpo`: `r - mean` (Dr. GRPO drops the std division).
//! - `rloo`:    `r - mean(other rewards of the group)`, which equals `n/(n-1) · (r - mean)`.
//! - A **NaN reward means "excluded"** (the judge abstained): that sample's advantage is exactly
//!   0 and it is left out of its group's mean, std and leave-one-out mean. A group's effective
//!   size `n` is its count of non-NaN rewards.
//! - A group whose effective rewards are all equal, or with `n ≤ 1`, gets advantage exactly
//!   0.0 for every sample (checked explicitly, not left to floating-point cancellation).
//! - `±inf` rewards are rejected (`Error::InvalidArgument`); `eps` must be finite and ≥ 0.
//! - Statistics are accumulated in f64 and the result is rounded once to f32.
//!
//! # GAE
//! Ragged sequences are flattened token-wise and described by `lengths`. Each sequence is
//! terminal after its last token (the value after it is 0), so
//! `delta_t = r_t + γ·V_{t+1} − V_t`, `A_t = delta_t + γλ·A_{t+1}`, and `returns = A + V`.
//! Rewards and values must be finite (there is no "excluded" token: mask those in the loss).

use rayon::prelude::*;

use crate::{Error, Result};

/// Rewards per parallel task (rounded to whole groups); below 4 tasks' worth, one thread.
const PARALLEL_TASK_REWARDS: usize = 1 << 14;

/// Which group-relative estimator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimator {
    /// `(r - mean) / (std_ddof1 + eps)`.
    Grpo,
    /// `r - mean`.
    DrGrpo,
    /// `r - mean of the other rewards in the group`.
    Rloo,
}

impl Estimator {
    /// The names accepted by [`Estimator::from_name`], in documentation order.
    pub const NAMES: [&'static str; 3] = ["grpo", "dr_grpo", "rloo"];

    /// Parses an estimator name; the error lists the valid names.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "grpo" => Ok(Estimator::Grpo),
            "dr_grpo" => Ok(Estimator::DrGrpo),
            "rloo" => Ok(Estimator::Rloo),
            other => Err(Error::InvalidArgument(format!(
                "unknown estimator {other:?}; valid estimators: {}",
                Estimator::NAMES.join(", ")
            ))),
        }
    }
}

/// Group-relative advantages for contiguous groups of `group_size` rewards (see module docs).
pub fn group_advantages(
    rewards: &[f32],
    group_size: usize,
    estimator: Estimator,
    eps: f32,
) -> Result<Vec<f32>> {
    if group_size == 0 || !rewards.len().is_multiple_of(group_size) {
        return Err(Error::GroupSize(format!(
            "group_size {group_size} must be positive and divide the number of rewards {}",
            rewards.len()
        )));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::InvalidArgument(format!(
            "eps must be finite and >= 0, got {eps}"
        )));
    }
    if let Some(index) = rewards.iter().position(|r| r.is_infinite()) {
        return Err(Error::InvalidArgument(format!(
            "reward at index {index} is {}; rewards must be finite (NaN marks an excluded sample)",
            rewards[index]
        )));
    }
    let mut advantages = vec![0.0_f32; rewards.len()];
    let run = |rewards: &[f32], out: &mut [f32]| {
        for (group, out) in rewards
            .chunks_exact(group_size)
            .zip(out.chunks_exact_mut(group_size))
        {
            advantages_of_group(group, estimator, f64::from(eps), out);
        }
    };
    // Large batches are split across threads in whole groups of ~16k rewards per task.
    if rewards.len() >= 4 * PARALLEL_TASK_REWARDS {
        let task = group_size * (PARALLEL_TASK_REWARDS / group_size).max(1);
        rewards
            .par_chunks(task)
            .zip(advantages.par_chunks_mut(task))
            .for_each(|(rewards, out)| run(rewards, out));
    } else {
        run(rewards, &mut advantages);
    }
    Ok(advantages)
}

/// Fills `out` (pre-zeroed) with one group's advantages; NaN rewards keep their 0.
fn advantages_of_group(group: &[f32], estimator: Estimator, eps: f64, out: &mut [f32]) {
    let count = group.iter().filter(|r| !r.is_nan()).count();
    let first = group.iter().copied().find(|r| !r.is_nan()).unwrap_or(0.0);
    // All-equal (including n == 1) and empty groups carry no signal: exactly 0 by contract.
    if count <= 1 || group.iter().all(|&r| r.is_nan() || r == first) {
        return;
    }
    let n = count as f64;
    let mean = sum_non_nan(group, f64::from) / n;
    let scale = match estimator {
        Estimator::DrGrpo => 1.0,
        Estimator::Rloo => n / (n - 1.0),
        Estimator::Grpo => {
            // Two-pass variance: exact enough in f64 and immune to catastrophic cancellation.
            let squared_deviations = sum_non_nan(group, |r| (f64::from(r) - mean).powi(2));
            let std = (squared_deviations / (n - 1.0)).sqrt();
            1.0 / (std + eps)
        }
    };
    for (&r, a) in group.iter().zip(out.iter_mut()) {
        if !r.is_nan() {
            *a = ((f64::from(r) - mean) * scale) as f32;
        }
    }
}

/// `sum(term(r))` over the non-NaN rewards, in f64 with four independent accumulators: one
/// running sum would serialise every add on the previous one (the kernel's bottleneck).
fn sum_non_nan(group: &[f32], term: impl Fn(f32) -> f64) -> f64 {
    let term = |r: f32| if r.is_nan() { 0.0 } else { term(r) };
    let mut lanes = [0.0_f64; 4];
    let quads = group.chunks_exact(4);
    for (lane, &r) in quads.remainder().iter().enumerate() {
        lanes[lane] += term(r);
    }
    for quad in quads {
        for (lane, &r) in lanes.iter_mut().zip(quad) {
            *lane += term(r);
        }
    }
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
}

/// Generalised advantage estimation over ragged sequences flattened token-wise.
///
/// Returns `(advantages, returns)` with `returns = advantages + values` (see module docs).
pub fn gae(
    rewards: &[f32],
    values: &[f32],
    lengths: &[i64],
    gamma: f32,
    lam: f32,
) -> Result<(Vec<f32>, Vec<f32>)> {
    if rewards.len() != values.len() {
        return Err(Error::LengthMismatch(format!(
            "rewards has {} tokens but values has {}",
            rewards.len(),
            values.len()
        )));
    }
    if let Some(index) = lengths.iter().position(|&l| l < 0) {
        return Err(Error::InvalidArgument(format!(
            "lengths[{index}] is {}; lengths must be >= 0",
            lengths[index]
        )));
    }
    // Summed in i128 so that no i64 overflow can sneak past the comparison.
    let total: i128 = lengths.iter().map(|&l| i128::from(l)).sum();
    if total != rewards.len() as i128 {
        return Err(Error::LengthMismatch(format!(
            "sum(lengths) is {total} but rewards and values have {} tokens",
            rewards.len()
        )));
    }
    for (name, x) in [("gamma", gamma), ("lam", lam)] {
        if !(0.0..=1.0).contains(&x) {
            return Err(Error::InvalidArgument(format!(
                "{name} must be in [0, 1], got {x}"
            )));
        }
    }
    for (name, xs) in [("rewards", rewards), ("values", values)] {
        if let Some(index) = xs.iter().position(|x| !x.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "{name}[{index}] is {}; GAE needs finite rewards and values",
                xs[index]
            )));
        }
    }

    let (gamma, gamma_lam) = (f64::from(gamma), f64::from(gamma) * f64::from(lam));
    let mut advantages = vec![0.0_f32; rewards.len()];
    let mut returns = vec![0.0_f32; rewards.len()];
    let mut start = 0_usize;
    for &length in lengths {
        // Lengths are non-negative and sum to rewards.len(), so this range is in bounds.
        let end = start + length as usize;
        let mut next_value = 0.0_f64; // terminal after the last token
        let mut next_advantage = 0.0_f64;
        for t in (start..end).rev() {
            let value = f64::from(values[t]);
            let delta = f64::from(rewards[t]) + gamma * next_value - value;
            next_advantage = delta + gamma_lam * next_advantage;
            next_value = value;
            advantages[t] = next_advantage as f32;
            returns[t] = (next_advantage + value) as f32;
        }
        start = end;
    }
    Ok((advantages, returns))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::needless_range_loop
)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The textbook formulas, written as plainly as possible (f64, no shortcuts).
    fn reference(rewards: &[f32], g: usize, estimator: Estimator, eps: f64) -> Vec<f64> {
        let mut out = vec![0.0; rewards.len()];
        for (k, group) in rewards.chunks(g).enumerate() {
            let kept: Vec<f64> = group
                .iter()
                .filter(|r| !r.is_nan())
                .map(|&r| f64::from(r))
                .collect();
            let n = kept.len();
            if n <= 1 || kept.iter().all(|&r| r == kept[0]) {
                continue;
            }
            let mean = kept.iter().sum::<f64>() / n as f64;
            let std =
                (kept.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt();
            for (j, &r) in group.iter().enumerate() {
                if r.is_nan() {
                    continue;
                }
                let r = f64::from(r);
                out[k * g + j] = match estimator {
                    Estimator::Grpo => (r - mean) / (std + eps),
                    Estimator::DrGrpo => r - mean,
                    Estimator::Rloo => r - (kept.iter().sum::<f64>() - r) / (n as f64 - 1.0),
                };
            }
        }
        out
    }

    #[test]
    fn grpo_uses_unbiased_std_and_eps_on_std() {
        let a = group_advantages(&[0.0, 1.0], 2, Estimator::Grpo, 0.0).unwrap();
        // mean 0.5, ddof=1 std = sqrt(0.5)
        let expected = 0.5 / 0.5_f64.sqrt();
        assert!((f64::from(a[1]) - expected).abs() < 1e-6);
        let a = group_advantages(&[0.0, 1.0], 2, Estimator::Grpo, 0.5).unwrap();
        assert!((f64::from(a[1]) - 0.5 / (0.5_f64.sqrt() + 0.5)).abs() < 1e-6);
    }

    #[test]
    fn equal_groups_and_singletons_are_exactly_zero() {
        for est in [Estimator::Grpo, Estimator::DrGrpo, Estimator::Rloo] {
            let a = group_advantages(&[0.1, 0.1, 0.1, 0.7, 0.7, 0.7], 3, est, 0.0).unwrap();
            assert!(a.iter().all(|&x| x == 0.0), "{est:?}: {a:?}");
            let a = group_advantages(&[0.3, -2.0, 5.0], 1, est, 1e-6).unwrap();
            assert!(a.iter().all(|&x| x == 0.0));
            let a = group_advantages(&[f32::NAN, 0.2, f32::NAN, f32::NAN], 2, est, 1e-6).unwrap();
            assert!(a.iter().all(|&x| x == 0.0));
        }
    }

    #[test]
    fn nan_is_excluded_from_statistics() {
        let with_nan =
            group_advantages(&[1.0, f32::NAN, 0.0, 0.5], 4, Estimator::Rloo, 0.0).unwrap();
        let without = group_advantages(&[1.0, 0.0, 0.5], 3, Estimator::Rloo, 0.0).unwrap();
        assert_eq!(with_nan, vec![without[0], 0.0, without[1], without[2]]);
    }

    #[test]
    fn rloo_is_leave_one_out() {
        let a = group_advantages(&[1.0, 0.0, 0.0, 0.0], 4, Estimator::Rloo, 0.0).unwrap();
        assert_eq!(a, vec![1.0, -1.0 / 3.0, -1.0 / 3.0, -1.0 / 3.0]);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = group_advantages(&[0.0; 10], 3, Estimator::Grpo, 1e-6).unwrap_err();
        assert!(
            matches!(&e, Error::GroupSize(m) if m.contains('3') && m.contains("10")),
            "{e}"
        );
        assert!(matches!(
            group_advantages(&[0.0; 2], 0, Estimator::Grpo, 1e-6),
            Err(Error::GroupSize(_))
        ));
        let e = group_advantages(&[0.0, f32::INFINITY], 2, Estimator::Grpo, 1e-6).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("index 1")),
            "{e}"
        );
        assert!(group_advantages(&[0.0; 2], 2, Estimator::Grpo, -1.0).is_err());
        let e = Estimator::from_name("ppo").unwrap_err();
        assert!(e.to_string().contains("grpo, dr_grpo, rloo"), "{e}");
        // An empty batch is fine: zero groups.
        assert_eq!(
            group_advantages(&[], 4, Estimator::Grpo, 1e-6).unwrap(),
            Vec::<f32>::new()
        );
    }

    /// Python-style GAE written from the definition, per sequence, in f64.
    fn gae_reference(r: &[f32], v: &[f32], lengths: &[i64], gamma: f64, lam: f64) -> Vec<f64> {
        let mut out = Vec::new();
        let mut start = 0;
        for &l in lengths {
            let (rs, vs) = (&r[start..start + l as usize], &v[start..start + l as usize]);
            let mut seq = vec![0.0; rs.len()];
            for t in 0..rs.len() {
                // A_t = sum_k (γλ)^k δ_{t+k}
                let mut acc = 0.0;
                for k in t..rs.len() {
                    let next_v = if k + 1 < rs.len() {
                        f64::from(vs[k + 1])
                    } else {
                        0.0
                    };
                    let delta = f64::from(rs[k]) + gamma * next_v - f64::from(vs[k]);
                    acc += (gamma * lam).powi((k - t) as i32) * delta;
                }
                seq[t] = acc;
            }
            out.extend(seq);
            start += l as usize;
        }
        out
    }

    #[test]
    fn gae_matches_definition_and_validates() {
        let r = [0.0, 0.0, 1.0, 0.5, -1.0];
        let v = [0.2, 0.4, 0.6, 0.1, 0.3];
        let lengths = [3, 0, 2];
        let (adv, ret) = gae(&r, &v, &lengths, 0.99, 0.9).unwrap();
        let expected = gae_reference(&r, &v, &lengths, 0.99, 0.9);
        for t in 0..r.len() {
            assert!((f64::from(adv[t]) - expected[t]).abs() < 1e-6);
            assert!((ret[t] - (adv[t] + v[t])).abs() < 1e-6);
        }
        assert!(matches!(
            gae(&r, &v[..4], &lengths, 1.0, 0.95),
            Err(Error::LengthMismatch(_))
        ));
        assert!(matches!(
            gae(&r, &v, &[3, 1], 1.0, 0.95),
            Err(Error::LengthMismatch(_))
        ));
        assert!(matches!(
            gae(&r, &v, &[6, -1], 1.0, 0.95),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            gae(&r, &v, &[5], 1.5, 0.95),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            gae(&[f32::NAN], &[0.0], &[1], 1.0, 0.95),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            gae(&r, &v, &[i64::MAX, i64::MAX], 1.0, 0.95),
            Err(Error::LengthMismatch(_))
        ));
    }

    fn reward() -> impl Strategy<Value = f32> {
        prop_oneof![
            8 => -10.0_f32..10.0,
            2 => prop::sample::select(vec![0.0_f32, 0.1, 1.0]),
            1 => Just(f32::NAN),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn advantages_match_reference(
            g in 1_usize..20,
            groups in 0_usize..6,
            est in prop::sample::select(vec![Estimator::Grpo, Estimator::DrGrpo, Estimator::Rloo]),
            eps in prop::sample::select(vec![0.0_f32, 1e-6, 0.1]),
            seed in prop::collection::vec(reward(), 120),
        ) {
            let rewards = &seed[..g * groups];
            let got = group_advantages(rewards, g, est, eps).unwrap();
            let want = reference(rewards, g, est, f64::from(eps));
            for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                prop_assert!((f64::from(a) - b).abs() <= 1e-5 * (1.0 + b.abs()), "index {}: {} vs {}", i, a, b);
                if rewards[i].is_nan() { prop_assert!(a == 0.0); }
            }
        }

        #[test]
        fn gae_matches_reference(
            lengths in prop::collection::vec(0_i64..12, 0..6),
            gamma in 0.0_f32..=1.0,
            lam in 0.0_f32..=1.0,
            seed in prop::collection::vec((-2.0_f32..2.0, -2.0_f32..2.0), 72),
        ) {
            let total = lengths.iter().sum::<i64>() as usize;
            let (r, v): (Vec<f32>, Vec<f32>) = seed[..total].iter().copied().unzip();
            let (adv, _) = gae(&r, &v, &lengths, gamma, lam).unwrap();
            let want = gae_reference(&r, &v, &lengths, f64::from(gamma), f64::from(lam));
            for (&a, &b) in adv.iter().zip(&want) {
                prop_assert!((f64::from(a) - b).abs() <= 1e-4 * (1.0 + b.abs()));
            }
        }
    }
}
