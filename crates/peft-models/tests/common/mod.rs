//! Shared helpers of the model tests: the real checkpoint (or a counted skip) and the fixture.
#![allow(dead_code)]

pub mod gguf_builder;

use std::path::PathBuf;

use serde_json::Value;

/// The SmolLM2 GGUF, from `PEFT_MODEL` or `models/` at the repository root. Without it the
/// test is skipped through [`peft_testing::skip`]: counted by `scripts/test.sh`, and a failure
/// where `PEFT_NO_SKIP=1` (CI sets it).
pub fn model_path() -> Option<PathBuf> {
    real_model(
        "PEFT_MODEL",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2",
        "",
    )
}

/// The Gemma 3 270M GGUF, from `PEFT_GEMMA3_MODEL` or `models/`; a counted skip without it.
pub fn gemma3_path() -> Option<PathBuf> {
    real_model(
        "PEFT_GEMMA3_MODEL",
        "gemma-3-270m-q4_k_m.gguf",
        "Gemma 3 270M",
        " gemma3-270m",
    )
}

fn real_model(var: &str, file: &str, what: &str, fetch_arg: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models").join(file));
    if path.exists() {
        return Some(path);
    }
    peft_testing::skip(format!(
        "{what} not found at {} (scripts/fetch-model.sh{fetch_arg} fetches it)",
        path.display()
    ));
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

/// The reference values written by scripts/reference/model_fixture.py for SmolLM2.
pub fn fixture() -> Value {
    read_json("crates/peft-models/tests/fixtures/smollm2_reference.json")
}

/// The reference values written by scripts/reference/model_fixture.py for Gemma 3 270M.
pub fn gemma3_fixture() -> Value {
    read_json("crates/peft-models/tests/fixtures/gemma3_270m_reference.json")
}

/// Largest |Δ| between `logits` (a full vocabulary row) and a reference entry holding
/// `top_logits` (`[[id, logit], ...]`) and `sampled_logits` (every `stride`-th id).
///
/// # Panics
///
/// On any NaN or infinity in the whole row or in the reference.
pub fn max_logit_error(logits: &[f32], reference: &Value, stride: usize) -> f64 {
    peft_testing::assert_finite(logits, "logits");
    let (mut want, mut got) = (Vec::new(), Vec::new());
    for pair in reference["top_logits"].as_array().expect("top") {
        want.push(pair[1].as_f64().expect("logit"));
        got.push(logits[pair[0].as_u64().expect("id") as usize]);
    }
    for (k, w) in reference["sampled_logits"]
        .as_array()
        .expect("sampled")
        .iter()
        .enumerate()
    {
        want.push(w.as_f64().expect("logit"));
        got.push(logits[k * stride]);
    }
    peft_testing::max_abs_diff(&want, &got)
}

/// A JSON array of unsigned integers as u32.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Asserts that the tokenizer of the checkpoint at `path` encodes every string of `fx`'s
/// `tokenizer` cases (a model_fixture.py file; at least `min_cases` of them) to Hugging Face's
/// ids and decodes those ids to its text.
pub fn check_tokenizer(path: &std::path::Path, fx: &Value, min_cases: usize) {
    let ckpt = peft_models::Checkpoint::open(path).expect("open");
    let cases = fx["tokenizer"].as_array().expect("cases");
    assert!(cases.len() >= min_cases, "{} tokenizer cases", cases.len());
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

/// Runs the prompts of `fx` (a model_fixture.py file) on backend `B` and checks the
/// last-position logits (within `tol` absolute) and 16 greedy tokens (identical) against Hugging
/// Face. Returns the largest logit difference seen.
pub fn check_against_reference<B: peft_kernels::PrefixAttentionBackend>(
    path: &std::path::Path,
    fx: &Value,
    device: &B::Device,
    tol: f64,
) -> f64 {
    use peft_models::{
        Checkpoint,
        generate::{Conditioning, GenerationConfig, generate},
    };
    let ckpt = Checkpoint::open(path).expect("open");
    let model = ckpt.load::<B>(device).expect("load");
    let stride = fx["sample_stride"].as_u64().expect("stride") as usize;
    let mut worst_seen = 0.0f64;
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
        assert!(
            worst <= tol,
            "{text:?}: max |Δlogit| = {worst} (tolerance {tol})"
        );
        assert_eq!(out.ids, ids(&p["greedy"]), "greedy tokens of {text:?}");
        worst_seen = worst_seen.max(worst);
    }
    worst_seen
}
