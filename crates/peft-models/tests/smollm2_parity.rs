//! SmolLM2-135M (the real GGUF) against Hugging Face transformers, on the CPU backend.
//!
//! Reference values: scripts/reference/model_fixture.py (transformers dequantises the same GGUF
//! to f32). Tolerance: 1e-4 absolute on logits of magnitude up to ~30, f32 throughout, about
//! twice the worst prompt seen (4.4e-5 on an Intel Xeon with AVX-512,
//! docs/measured/2026-12-05-test-figures.log; other CPUs sum in other orders).

mod common;

use burn::backend::Flex;
use common::{fixture, ids, max_logit_error, model_path};
use peft_core::CausalLm;
use peft_kernels::{WeightPrecision, linear::cpu::CpuKernel};
use peft_models::{
    Checkpoint,
    generate::{Conditioning, GenerationConfig, generate},
};

const LOGIT_TOL: f64 = 1e-4;
/// Logit tolerance with bf16 weights, against the f32 reference (see the test).
const BF16_LOGIT_TOL: f64 = 0.3;

#[test]
fn tokenizer_matches_hugging_face() {
    let Some(path) = model_path() else { return };
    common::check_tokenizer(&path, &fixture(), 30);
}

#[test]
fn logits_and_greedy_tokens_match_hugging_face() {
    let Some(path) = model_path() else { return };
    common::check_against_reference::<Flex>(&path, &fixture(), &Default::default(), LOGIT_TOL);
}

#[test]
fn kv_cache_decoding_equals_full_recompute() {
    let Some(path) = model_path() else { return };
    let ckpt = Checkpoint::open(&path).expect("open");
    let model = ckpt.load::<Flex>(&Default::default()).expect("load");
    let prompt = ckpt
        .tokenizer
        .encode("Once upon a time, in a small village,")
        .expect("encode");
    let config = GenerationConfig {
        max_new_tokens: 12,
        stop_at_eos: false,
        ..Default::default()
    };
    let cached = generate(
        &model,
        &ckpt.tokenizer,
        &prompt,
        &Conditioning::default(),
        &config,
        |_| {},
    )
    .expect("generate");

    // Recompute the whole sequence for every new token, no cache.
    let device = Default::default();
    let mut seq = prompt.clone();
    for _ in 0..12 {
        let ids: Vec<i64> = seq.iter().map(|&i| i as i64).collect();
        let t = burn::tensor::Tensor::<Flex, 2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(ids, [1, seq.len()]),
            &device,
        );
        let hidden = model.forward_hidden(peft_core::DecoderInput::new(model.embed(t)));
        let logits = model.logits(hidden.narrow(1, seq.len() - 1, 1));
        let row = logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("logits");
        seq.push(peft_models::generate::argmax(&row));
    }
    assert_eq!(
        cached.ids,
        seq[prompt.len()..],
        "cached and recomputed greedy decoding differ"
    );
}

/// bf16 weights (`--precision bf16`): every frozen linear product runs on the fastest bf16 CPU
/// kernel of this machine, and the prompts' logits stay within `BF16_LOGIT_TOL` of Hugging
/// Face's f32 logits. The bound comes from bf16 rounding (relative 2⁻⁹ on every weight and
/// every product input, through 30 layers): about twice the worst prompt seen (0.148 on an
/// Intel Xeon with AMX, docs/measured/2026-12-05-test-figures.log). The next token (the
/// largest logit) is Hugging Face's on every prompt.
#[test]
fn bf16_weights_stay_close_to_the_f32_reference() {
    let Some(path) = model_path() else { return };
    let ckpt = Checkpoint::open(&path).expect("open");
    let model = ckpt
        .load_with_precision::<Flex>(&Default::default(), WeightPrecision::Bf16)
        .expect("load");
    let best = CpuKernel::best();
    let linears = model.layers.iter().flat_map(|l| {
        [
            &l.attn.q,
            &l.attn.k,
            &l.attn.v,
            &l.attn.out,
            &l.mlp.gate,
            &l.mlp.up,
            &l.mlp.down,
        ]
    });
    for linear in linears.chain([&model.lm_head]) {
        assert_eq!(linear.weight.precision(), WeightPrecision::Bf16);
        assert_eq!(linear.weight.cpu_kernel(), Some(best));
    }

    let fx = fixture();
    let stride = fx["sample_stride"].as_u64().expect("stride") as usize;
    let calls_before = best.calls();
    let mut worst_seen = 0.0f64;
    for p in fx["prompts"].as_array().expect("prompts") {
        let prompt = ids(&p["ids"]);
        let device = Default::default();
        let t = burn::tensor::Tensor::<Flex, 2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(
                prompt.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [1, prompt.len()],
            ),
            &device,
        );
        let hidden = model.forward_hidden(peft_core::DecoderInput::new(model.embed(t)));
        let row = model
            .logits(hidden.narrow(1, prompt.len() - 1, 1))
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("logits");
        let worst = max_logit_error(&row, p, stride);
        eprintln!("bf16 {:?}: max |Δlogit| = {worst:e}", p["prompt"]);
        assert_eq!(
            peft_models::generate::argmax(&row) as u64,
            p["top_logits"][0][0].as_u64().expect("id"),
            "bf16 next token of {:?}",
            p["prompt"]
        );
        worst_seen = worst_seen.max(worst);
    }
    assert!(
        worst_seen <= BF16_LOGIT_TOL,
        "bf16 weights: max |Δlogit| = {worst_seen} (tolerance {BF16_LOGIT_TOL})"
    );
    let ran = best.calls() - calls_before;
    assert!(ran > 0, "no product ran on the {best} kernel");
}
