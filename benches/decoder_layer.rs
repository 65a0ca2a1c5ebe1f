//! Criterion: one SmolLM2-135M-sized decoder layer (width 576, 9 query / 3 key-value heads of
//! 64, SwiGLU 1536) with random weights, forward and forward + backward (weights tracked, so the
//! backward computes weight and activation gradients: an upper bound on what PEFT training,
//! which freezes the weights, pays per layer), with and without a 20-slot prefix, batch 4 × 64
//! on Flex. The vocabulary is cut to 256 so the layer, not the
//! embedding, dominates.
//!
//! `cargo bench --bench decoder_layer`

use burn::{
    backend::{Autodiff, Flex},
    tensor::{Int, Tensor},
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use peft_core::{
    CausalLm, DecoderInput,
    prefix::{Prefix, PrefixLayout},
};
use peft_kernels::PrefixAttentionBackend;
use peft_models::{Decoder, DecoderConfig, Family, RandomWeights};

fn config() -> DecoderConfig {
    DecoderConfig {
        architecture: "llama".into(),
        family: Family::Llama,
        features: Default::default(),
        vocab_size: 256,
        hidden_size: 576,
        intermediate_size: 1536,
        num_layers: 1,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        rope_theta: 100_000.0,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 2048,
        tie_word_embeddings: true,
        attention_bias: false,
    }
}

fn input<B: PrefixAttentionBackend>(
    model: &Decoder<B>,
    prefix: Option<&Prefix<B>>,
    device: &B::Device,
) -> DecoderInput<B> {
    let ids: Vec<i64> = (0..4 * 64).map(|i| (i * 31 % 256) as i64).collect();
    let ids = Tensor::<B, 1, Int>::from_data(ids.as_slice(), device).reshape([4, 64]);
    let mut input = DecoderInput::new(model.embed(ids));
    input.prefix = prefix.map(Prefix::key_values);
    input
}

fn benches(c: &mut Criterion) {
    let device = Default::default();
    let cfg = config();
    let weights = RandomWeights::new(&cfg, 0);
    let model = Decoder::<Flex>::load(&cfg, &weights, &device).expect("random weights fit");
    let trained =
        Decoder::<Autodiff<Flex>>::load(&cfg, &weights, &device).expect("random weights fit");
    let layout = PrefixLayout::of(&model.dims());
    let prefix = Prefix::<Flex>::random(20, 1.0, 0, layout, &device);
    let prefix_ad = Prefix::<Autodiff<Flex>>::random(20, 1.0, 0, layout, &device);

    let mut group = c.benchmark_group("decoder_layer/flex");
    group.sample_size(10);
    for (name, with_prefix) in [("plain", false), ("prefix20", true)] {
        group.bench_function(BenchmarkId::new("forward", name), |b| {
            b.iter(|| {
                let x = input(&model, with_prefix.then_some(&prefix), &device);
                model.forward_hidden(x).sum().into_scalar()
            })
        });
        group.bench_function(BenchmarkId::new("forward_backward", name), |b| {
            b.iter(|| {
                let x = input(&trained, with_prefix.then_some(&prefix_ad), &device);
                trained.forward_hidden(x).sum().backward()
            })
        });
    }
    group.finish();
}

criterion_group!(decoder_layer, benches);
criterion_main!(decoder_layer);
