//! Criterion benches for judge-prompt packing (no Python): `cargo bench --bench pack`.
//! Workload as in bench_kernels.py: 4,096 prompts of 200-1,500 tokens.

use std::hint::black_box;

use _core::pack::{pack_judge_prompts, PackOptions, TokenId};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

type Workload = (Vec<Vec<TokenId>>, Vec<Vec<Vec<TokenId>>>);

/// xorshift64: deterministic input without a rand dependency.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }

    fn tokens(&mut self, len: u64) -> Vec<TokenId> {
        (0..len).map(|_| self.below(50_000) as TokenId).collect()
    }
}

fn workload(n: usize) -> Workload {
    let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
    let pieces = vec![rng.tokens(24), rng.tokens(8), rng.tokens(12)];
    let (mut questions, mut responses) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let total = 200 + rng.below(1301);
        let question = 20 + rng.below(130);
        questions.push(rng.tokens(question));
        responses.push(rng.tokens(total - 44 - question));
    }
    (pieces, vec![questions, responses])
}

fn bench_pack(c: &mut Criterion) {
    let (pieces, fields) = workload(4096);
    let tokens: usize = fields.iter().flatten().map(Vec::len).sum::<usize>() + 4096 * 44;
    let mut group = c.benchmark_group("pack_4096_prompts");
    group.throughput(Throughput::Elements(tokens as u64));
    group.sample_size(30);
    for (name, varlen, sort_by_length) in [
        ("padded_sorted", false, true),
        ("varlen_sorted", true, true),
        ("padded_arrival", false, false),
    ] {
        let options = PackOptions {
            max_tokens_per_batch: 16_384,
            max_len: 1_536,
            varlen,
            sort_by_length,
            ..PackOptions::default()
        };
        group.bench_function(name, |b| {
            b.iter(|| pack_judge_prompts(black_box(&pieces), black_box(&fields), &options))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_pack);
criterion_main!(benches);
