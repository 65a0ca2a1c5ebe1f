//! Shared helpers of the model tests: the real checkpoint (or a loud skip) and the fixture.
#![allow(dead_code)]

pub mod gguf_builder;

use std::path::PathBuf;

use serde_json::Value;

/// The SmolLM2 GGUF, from `PEFT_MODEL` or `models/` at the repository root. Without it the
/// test is skipped with a loud message — unless `PEFT_REQUIRE_MODEL=1` (CI sets it), which
/// turns the absence into a failure.
pub fn model_path() -> Option<PathBuf> {
    let path = std::env::var_os("PEFT_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if path.exists() {
        return Some(path);
    }
    if std::env::var("PEFT_REQUIRE_MODEL").is_ok_and(|v| v == "1") {
        panic!(
            "PEFT_REQUIRE_MODEL=1 but the model is missing at {}",
            path.display()
        );
    }
    eprintln!("\n==============================================================");
    eprintln!("SKIPPED: SmolLM2 model not found at {}", path.display());
    eprintln!("Run scripts/fetch-model.sh to download it (CI always does).");
    eprintln!("==============================================================\n");
    None
}

/// The workspace root (the directory holding Cargo.lock), from whichever crate's tests include
/// this file.
pub fn repo_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("Cargo.lock").exists() && dir.pop() {}
    dir
}

/// A JSON file under the repository root.
pub fn read_json(relative: &str) -> Value {
    let path = repo_root().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

/// The reference values written by scripts/reference/model_fixture.py.
pub fn fixture() -> Value {
    read_json("crates/peft-models/tests/fixtures/smollm2_reference.json")
}

/// Largest |Δ| between `logits` (a full vocabulary row) and a reference entry holding
/// `top_logits` (`[[id, logit], ...]`) and `sampled_logits` (every `stride`-th id).
pub fn max_logit_error(logits: &[f32], reference: &Value, stride: usize) -> f32 {
    let mut worst = 0.0f32;
    for pair in reference["top_logits"].as_array().expect("top") {
        let id = pair[0].as_u64().expect("id") as usize;
        worst = worst.max((logits[id] - pair[1].as_f64().expect("logit") as f32).abs());
    }
    for (k, want) in reference["sampled_logits"]
        .as_array()
        .expect("sampled")
        .iter()
        .enumerate()
    {
        worst = worst.max((logits[k * stride] - want.as_f64().expect("logit") as f32).abs());
    }
    worst
}

/// A JSON array of unsigned integers as u32.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Runs the fixture's prompts on backend `B` and checks the last-position logits (within `tol`
/// absolute) and 16 greedy tokens (identical) against Hugging Face.
pub fn check_against_reference<B: peft_kernels::PrefixAttentionBackend>(
    path: &std::path::Path,
    device: &B::Device,
    tol: f32,
) {
    use peft_models::{
        Checkpoint,
        generate::{Conditioning, GenerationConfig, generate},
    };
    let ckpt = Checkpoint::open(path).expect("open");
    let model = ckpt.load::<B>(device).expect("load");
    let fx = fixture();
    let stride = fx["sample_stride"].as_u64().expect("stride") as usize;
    for p in fx["prompts"].as_array().expect("prompts") {
        let prompt = ids(&p["ids"]);
        let text = p["prompt"].as_str().expect("prompt");
        assert_eq!(ckpt.tokenizer.encode(text).expect("encode"), prompt);
        let config = GenerationConfig {
            max_new_tokens: 16,
            ..Default::default()
        };
        let out = generate(
            &model,
            &ckpt.tokenizer,
            &prompt,
            &Conditioning::default(),
            &config,
            |_| {},
        )
        .expect("generate");
        let worst = max_logit_error(&out.prompt_logits, p, stride);
        eprintln!("{}: {text:?}: max |Δlogit| = {worst:e}", B::name(device));
        assert!(worst < tol, "{text:?}: max |Δlogit| = {worst}");
        assert_eq!(out.ids, ids(&p["greedy"]), "greedy tokens of {text:?}");
    }
}
