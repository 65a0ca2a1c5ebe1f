//! Criterion: the prefix module at SmolLM2-135M's layout (30 layers × key/value × 3 heads × 64,
//! 20 slots): the reparameterisation MLP's forward and backward (what a prefix-MLP training step
//! pays once per step), a direct prefix's reshape into per-layer keys/values, and the collapse
//! of the MLP into a plain prefix after training.
//!
//! `cargo bench --bench prefix_module`

use burn::backend::{Autodiff, Flex};
use criterion::{Criterion, criterion_group, criterion_main};
use peft_core::{
    ModelDims,
    prefix::{Prefix, PrefixLayout},
};

fn layout() -> PrefixLayout {
    PrefixLayout::of(&ModelDims {
        num_layers: 30,
        hidden_size: 576,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        vocab_size: 49152,
        max_positions: 8192,
    })
}

fn benches(c: &mut Criterion) {
    let device = Default::default();
    let mlp = Prefix::<Flex>::mlp(20, layout().token_dim(), 512, 0, layout(), &device);
    let mlp_ad = Prefix::<Autodiff<Flex>>::mlp(20, layout().token_dim(), 512, 0, layout(), &device);
    let direct = Prefix::<Flex>::random(20, 1.0, 0, layout(), &device);

    let mut group = c.benchmark_group("prefix_module/flex");
    group.sample_size(20);
    group.bench_function("mlp_forward", |b| b.iter(|| mlp.flat().sum().into_scalar()));
    group.bench_function("mlp_forward_backward", |b| {
        b.iter(|| {
            let kv = mlp_ad.key_values();
            let total = kv
                .layers
                .iter()
                .map(|(k, v)| k.clone().sum() + v.clone().sum())
                .reduce(|a, b| a + b)
                .expect("30 layers");
            total.backward()
        })
    });
    group.bench_function("direct_key_values", |b| {
        b.iter(|| {
            let kv = direct.key_values();
            kv.layers[29].0.clone().sum().into_scalar()
        })
    });
    group.bench_function("collapse", |b| {
        b.iter(|| mlp.clone().collapse().flat().sum().into_scalar())
    });
    group.finish();
}

criterion_group!(prefix_module, benches);
criterion_main!(prefix_module);
