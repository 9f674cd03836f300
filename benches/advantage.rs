//! Criterion benches for the advantage kernels (no Python): `cargo bench --bench advantage`.

use std::hint::black_box;

use _core::advantage::{gae, group_advantages, Estimator};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Deterministic pseudo-random rewards in [0, 1) (no rand dependency needed).
fn rewards(n: usize) -> Vec<f32> {
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

fn bench_group_advantages(c: &mut Criterion) {
    let rewards = rewards(1 << 20);
    let mut group = c.benchmark_group("group_advantages_1M");
    group.throughput(Throughput::Elements(rewards.len() as u64));
    for estimator in [Estimator::Grpo, Estimator::DrGrpo, Estimator::Rloo] {
        for group_size in [8_usize, 16, 64] {
            let id = BenchmarkId::new(format!("{estimator:?}"), group_size);
            group.bench_with_input(id, &group_size, |b, &g| {
                b.iter(|| group_advantages(black_box(&rewards), g, estimator, 1e-6))
            });
        }
    }
    group.finish();
}

fn bench_gae(c: &mut Criterion) {
    let rewards = rewards(1 << 20);
    let values = self::rewards((1 << 20) + 1)[1..].to_vec();
    let lengths = vec![1024_i64; 1 << 10]; // 1,024 sequences of 1,024 tokens
    let mut group = c.benchmark_group("gae_1M_tokens");
    group.throughput(Throughput::Elements(rewards.len() as u64));
    group.bench_function("1024x1024", |b| {
        b.iter(|| gae(black_box(&rewards), black_box(&values), &lengths, 1.0, 0.95))
    });
    group.finish();
}

criterion_group!(benches, bench_group_advantages, bench_gae);
criterion_main!(benches);
