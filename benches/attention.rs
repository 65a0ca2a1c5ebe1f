//! Criterion: prefix attention, fused against Burn's own attention (the prefix concatenated,
//! heads repeated, scores materialised) and against this crate's unfused reference, forward and
//! forward + backward, at a CPU-sized shape with SmolLM2's head layout.
//!
//! `cargo bench --bench attention` (Flex); add `--features wgpu` for the wgpu rows (lavapipe
//! without a GPU). `peft bench attention` runs the full-size shape.

use burn::{
    backend::Autodiff,
    tensor::{Bool, Distribution, Tensor},
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use peft_kernels::{AttentionPath, PrefixAttention, PrefixAttentionBackend, baseline};

/// `(batch, heads, kv_heads, seq, prefix, head_dim)`.
const SHAPE: (usize, usize, usize, usize, usize, usize) = (2, 9, 3, 128, 16, 64);

fn inputs<B: PrefixAttentionBackend>(device: &B::Device) -> [Tensor<B, 4>; 5] {
    let (b, h, kv, l, p, d) = SHAPE;
    let n = Distribution::Normal(0.0, 1.0);
    [
        Tensor::random([b, h, l, d], n, device),
        Tensor::random([b, kv, l, d], n, device),
        Tensor::random([b, kv, l, d], n, device),
        Tensor::random([1, kv, p, d], n, device),
        Tensor::random([1, kv, p, d], n, device),
    ]
}

/// The mask is built once, outside the timed loop, as `peft bench attention` does.
fn run<B: PrefixAttentionBackend>(
    which: &str,
    [q, k, v, pk, pv]: [Tensor<B, 4>; 5],
    mask: &Tensor<B, 4, Bool>,
) -> Tensor<B, 4> {
    match which {
        "burn" => baseline::burn_prefix_attention(q, k, v, pk, pv, mask.clone()),
        path => PrefixAttention::new(q, k, v)
            .with_prefix(pk, pv)
            .with_path(match path {
                "fused" => AttentionPath::Fused,
                _ => AttentionPath::Unfused,
            })
            .forward(),
    }
}

fn bench_backend<B: PrefixAttentionBackend>(c: &mut Criterion, name: &str, device: B::Device) {
    let mut group = c.benchmark_group(format!("prefix_attention/{name}"));
    group.sample_size(10);
    let (b, h, _, l, p, _) = SHAPE;
    let x = inputs::<B>(&device);
    let xa = inputs::<Autodiff<B>>(&device);
    let mask = baseline::causal_prefix_mask::<B>(b, h, l, p, &device);
    let mask_a = baseline::causal_prefix_mask::<Autodiff<B>>(b, h, l, p, &device);
    for which in ["fused", "burn", "reference"] {
        group.bench_function(BenchmarkId::new("forward", which), |bench| {
            bench.iter(|| run(which, x.clone(), &mask).sum().into_scalar())
        });
        group.bench_function(BenchmarkId::new("forward_backward", which), |bench| {
            bench.iter(|| {
                let grads = run(which, xa.clone().map(|t| t.require_grad()), &mask_a)
                    .sum()
                    .backward();
                let _ = B::sync(&device);
                grads
            })
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_backend::<burn::backend::Flex>(c, "flex", Default::default());
    #[cfg(feature = "wgpu")]
    bench_backend::<burn::backend::Wgpu>(c, "wgpu", burn::backend::wgpu::WgpuDevice::default());
}

criterion_group!(attention, benches);
criterion_main!(attention);
