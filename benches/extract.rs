//! Criterion bench of answer extraction (kernel 1): `cargo bench --bench extract`.
//! The `hostile` group also runs verification (kernel 2) on adversarial inputs at two sizes.

use _core::extract::{extract_answer, extract_answers, hostile_inputs};
use _core::verify::verify;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn inputs() -> Vec<(&'static str, String)> {
    let reasoning = "We compute 3 * 4 = <<3*4=12>>12 apples, then 12 + 5 = 17. ".repeat(30);
    vec![
        ("gsm8k_hashes", format!("{reasoning}\n#### 1,017")),
        ("boxed_frac", format!(r"{reasoning} Therefore, the final answer is: $\boxed{{\frac{{13}}{{14}}}}$. I hope it is correct.")),
        ("answer_phrase", format!("{reasoning} So the final answer is 3439. I hope it is correct.")),
        ("last_number", format!("{reasoning} Thus there are 1357 ways in total.")),
        ("adversarial_nesting", format!(r"The answer is ${}1{}$", "{".repeat(2000), "}".repeat(2000))),
        ("unbalanced_boxes_64k", r"\boxed{".repeat(8_000)),
    ]
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("extract_answer");
    for (name, text) in inputs() {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| b.iter(|| extract_answer(black_box(&text), false)));
    }
    group.finish();

    let batch: Vec<String> = inputs().into_iter().map(|(_, t)| t).cycle().take(4096).collect();
    let mut group = c.benchmark_group("extract_answers");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("batch_4096", |b| b.iter(|| extract_answers(black_box(&batch), false)));
    group.finish();

    // Linearity on hostile inputs: the same throughput (bytes/s) at 100 kB and 400 kB.
    let names = ["braces", "unbalanced_boxes", "parens", "digit_groups", "dollars", "phrases", "unicode", "nested_boxes"];
    let mut group = c.benchmark_group("hostile");
    group.sample_size(10);
    for n in [100_000, 400_000] {
        for (name, text) in names.iter().zip(hostile_inputs(n)) {
            group.throughput(Throughput::Bytes(text.len() as u64));
            group.bench_function(format!("{name}_{}k", n / 1000), |b| {
                b.iter(|| (extract_answer(black_box(&text), false), verify("1", black_box(&text)), verify(black_box(&text), black_box(&text))))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
