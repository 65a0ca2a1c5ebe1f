//! A tiny random Llama (2 layers, GQA 4:2, head_dim 8) in Hugging Face safetensors layout and as
//! a llama.cpp-style GGUF (permuted Q/K, one Q8_0 tensor per layer), against transformers.
//! Fixtures: scripts/reference/tiny_fixture.py. Tolerance 1e-5 absolute (f32), about twice the
//! worst sequence seen (4.8e-6, docs/measured/2026-12-05-test-figures.log).

use std::path::PathBuf;

use burn::{
    backend::Flex,
    tensor::{Int, Tensor, TensorData},
};
use peft_core::{CausalLm, DecoderInput};
use peft_models::Checkpoint;
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny_reference.json")).expect("read"),
    )
    .expect("json")
}

fn logits(ckpt: &Checkpoint, seq: &[u32]) -> Vec<f32> {
    let device = Default::default();
    let model = ckpt.load::<Flex>(&device).expect("load");
    let ids: Vec<i64> = seq.iter().map(|&i| i as i64).collect();
    let ids = Tensor::<Flex, 2, Int>::from_data(TensorData::new(ids, [1, seq.len()]), &device);
    let hidden = model.forward_hidden(DecoderInput::new(model.embed(ids)));
    model
        .logits(hidden)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32")
}

/// Logit tolerance (absolute, f32 throughout).
const LOGIT_TOL: f64 = 1e-5;

fn check(ckpt: &Checkpoint, key: &str) {
    let r = reference();
    for (seq, want) in r["sequences"]
        .as_array()
        .expect("seqs")
        .iter()
        .zip(r[key].as_array().expect("logits"))
    {
        let seq: Vec<u32> = seq
            .as_array()
            .expect("seq")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let want: Vec<f64> = want
            .as_array()
            .expect("rows")
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .expect("row")
                    .iter()
                    .map(|v| v.as_f64().expect("logit"))
                    .collect::<Vec<_>>()
            })
            .collect();
        let got = logits(ckpt, &seq);
        let worst =
            peft_testing::assert_close(&want, &got, LOGIT_TOL, &format!("{key} {seq:?}: logits"));
        eprintln!("{key} {seq:?}: max |Δlogit| = {worst:e}");
    }
}

#[test]
fn safetensors_checkpoint_matches_transformers() {
    let ckpt = Checkpoint::open(fixtures().join("tiny-llama")).expect("open");
    assert_eq!(ckpt.config.num_kv_heads, 2);
    assert!(ckpt.config.tie_word_embeddings);
    check(&ckpt, "logits");
}

#[test]
fn gguf_checkpoint_matches_transformers_reading_the_same_file() {
    let ckpt = Checkpoint::open(fixtures().join("tiny-llama.gguf")).expect("open");
    check(&ckpt, "gguf_logits");
}

#[test]
fn gguf_and_tokenizer_json_tokenizers_agree_with_hugging_face() {
    let gguf = Checkpoint::open(fixtures().join("tiny-llama.gguf")).expect("open");
    let hf = Checkpoint::open(fixtures().join("tiny-llama")).expect("open");
    for case in reference()["tokenizer"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        let want: Vec<u32> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        assert_eq!(
            gguf.tokenizer.encode(text).expect("gguf"),
            want,
            "GGUF tokenizer on {text:?}"
        );
        assert_eq!(
            hf.tokenizer.encode(text).expect("json"),
            want,
            "tokenizer.json on {text:?}"
        );
    }
    assert_eq!(hf.tokenizer.eos_ids(), &[2]);
    assert_eq!(gguf.tokenizer.eos_ids(), &[2]);
}
