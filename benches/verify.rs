//! Criterion bench of verification (kernel 2): `cargo bench --bench verify`.

use _core::verify::{verify, verify_batch};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn pairs() -> Vec<(&'static str, String, String)> {
    let reasoning = "We compute 3 * 4 = <<3*4=12>>12 apples, then 12 + 5 = 17. ".repeat(30);
    vec![
        ("gsm8k_integer", "1017".into(), format!("{reasoning}\n#### 1,017")),
        ("boxed_fraction", r"\dfrac{13}{14}".into(), format!(r"{reasoning} The answer is $\boxed{{\frac{{26}}{{28}}}}$.")),
        ("decimal_vs_fraction", r"\frac{8}{7}".into(), r"Let me compute. \[\boxed{1.142857}\]".into()),
        ("percent", "0.125".into(), "The percentage increase is 12.5 percent.".into()),
        ("interval_union", r"(-\infty, 0) \cup (1, \infty)".into(), r"\boxed{(1,\infty)\cup(-\infty,0)}".into()),
        ("symbolic_unknown", r"\sin^2 x + \cos^2 x".into(), r"The answer is $\boxed{1}$.".into()),
        ("adversarial_nesting", "1".into(), format!(r"The answer is ${}1{}$", "{".repeat(2000), "}".repeat(2000))),
    ]
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify");
    for (name, gold, output) in pairs() {
        group.bench_function(name, |b| b.iter(|| verify(black_box(&gold), black_box(&output))));
    }
    group.finish();

    let all = pairs();
    let golds: Vec<String> = all.iter().map(|p| p.1.clone()).cycle().take(4096).collect();
    let outputs: Vec<String> = all.iter().map(|p| p.2.clone()).cycle().take(4096).collect();
    let mut group = c.benchmark_group("verify_batch");
    group.throughput(Throughput::Elements(golds.len() as u64));
    group.bench_function("batch_4096", |b| b.iter(|| verify_batch(black_box(&golds), black_box(&outputs))));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
