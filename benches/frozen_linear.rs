//! Criterion: the frozen products of a SmolLM2-135M training step at batch 8 × 128 plus 20
//! virtual tokens (1184 rows): each CPU bf16 kernel this machine runs
//! (`peft_kernels::linear::cpu`) against Burn's f32 matmul on Flex (the `gemm` crate), on the
//! forward shapes `(out, in)` of the q/o, k/v, gate/up and down projections and the tied LM head.
//! Throughput is in multiply-adds × 2 (FLOP) per second.
//!
//! `cargo bench --bench frozen_linear`

use burn::{backend::Flex, tensor::Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use peft_kernels::linear::cpu::{CpuKernel, PackedWeight};

const ROWS: usize = 8 * (128 + 20);

/// `(name, out, in)` of the step's products.
const SHAPES: [(&str, usize, usize); 5] = [
    ("q_o", 576, 576),
    ("k_v", 192, 576),
    ("gate_up", 1536, 576),
    ("down", 576, 1536),
    ("lm_head", 49_152, 576),
];

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = peft_testing::Rng::new(seed);
    (0..n).map(|_| rng.next_f32() * 0.5).collect()
}

fn bench(c: &mut Criterion) {
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    eprintln!(
        "{machine}; kernels available: {:?}",
        CpuKernel::ALL
            .iter()
            .filter(|k| k.is_available())
            .collect::<Vec<_>>()
    );
    let mut group = c.benchmark_group("frozen_linear");
    group.sample_size(10);
    let device = Default::default();
    for (name, n, k) in SHAPES {
        let x = values(ROWS * k, 1);
        let w = values(n * k, 2);
        group.throughput(Throughput::Elements((2 * ROWS * n * k) as u64));
        let xt = Tensor::<Flex, 1>::from_floats(x.as_slice(), &device).reshape([ROWS, k]);
        let wt = Tensor::<Flex, 1>::from_floats(w.as_slice(), &device).reshape([n, k]);
        group.bench_function(BenchmarkId::new("burn_f32", name), |b| {
            b.iter(|| xt.clone().matmul(wt.clone().transpose()).into_data())
        });
        for kernel in CpuKernel::ALL.into_iter().filter(|k| k.is_available()) {
            let packed = PackedWeight::pack(&w, n, k, kernel).expect("available");
            group.bench_function(BenchmarkId::new(kernel.name(), name), |b| {
                b.iter(|| packed.matmul_wt(&x, ROWS))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
