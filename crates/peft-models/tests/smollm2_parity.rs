//! SmolLM2-135M (the real GGUF) against Hugging Face transformers, on the CPU backend.
//!
//! Reference values: scripts/reference/model_fixture.py (transformers dequantises the same GGUF
//! to f32). Tolerance: 1e-4 absolute on logits of magnitude up to ~30, f32 throughout, about
//! twice the worst prompt seen (4.4e-5 on an Intel Xeon with AVX-512,
//! docs/measured/2026-12-05-test-figures.log; other CPUs sum in other orders).

mod common;

use burn::backend::Flex;
use common::{fixture, ids, model_path};
use peft_core::CausalLm;
use peft_models::{
    Checkpoint,
    generate::{Conditioning, GenerationConfig, generate},
};

const LOGIT_TOL: f64 = 1e-4;

#[test]
fn tokenizer_matches_hugging_face() {
    let Some(path) = model_path() else { return };
    let ckpt = Checkpoint::open(&path).expect("open");
    let cases = fixture()["tokenizer"].as_array().expect("cases").clone();
    assert!(cases.len() >= 30);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want = ids(&case["ids"]);
        assert_eq!(
            ckpt.tokenizer.encode(text).expect("encode"),
            want,
            "encode {text:?}"
        );
        assert_eq!(
            ckpt.tokenizer.decode(&want).expect("decode"),
            case["decoded"].as_str().expect("decoded"),
            "decode {text:?}"
        );
    }
}

#[test]
fn logits_and_greedy_tokens_match_hugging_face() {
    let Some(path) = model_path() else { return };
    common::check_against_reference::<Flex>(&path, &Default::default(), LOGIT_TOL);
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
