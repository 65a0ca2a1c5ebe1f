//! Gemma 3 270M (the real Q4_K_M GGUF, `scripts/fetch-model.sh gemma3-270m`) against Hugging
//! Face transformers reading the same file, on the CPU backend.
//!
//! Reference values: scripts/reference/model_fixture.py (transformers dequantises the GGUF to
//! f32 and builds Gemma's tokenizer from its metadata). Tolerance: 1.5e-4 absolute on logits of
//! magnitude up to ~30, f32 throughout; the worst prompt is printed (see
//! docs/measured/ for the figure on this project's machine).

mod common;

use burn::backend::Flex;
use common::{gemma3_fixture, gemma3_path};
use peft_core::CausalLm;
use peft_models::{AttentionKind, Checkpoint, Family};

const LOGIT_TOL: f64 = 1.5e-4;

#[test]
fn tokenizer_matches_hugging_face() {
    let Some(path) = gemma3_path() else { return };
    common::check_tokenizer(&path, &gemma3_fixture(), 40); // SmolLM2's strings plus multilingual and code
}

#[test]
fn configuration_is_gemma3_270m() {
    let Some(path) = gemma3_path() else { return };
    let ckpt = Checkpoint::open(&path).expect("open");
    let c = &ckpt.config;
    assert_eq!(c.family, Family::Gemma3);
    assert_eq!(
        (
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim
        ),
        (18, 640, 4, 1, 256)
    );
    assert_eq!(c.features.sliding_window, Some(512));
    let global: Vec<usize> = (0..c.num_layers)
        .filter(|&i| c.layer_kind(i) == AttentionKind::Global)
        .collect();
    assert_eq!(global, vec![5, 11, 17]);
    assert_eq!(ckpt.tokenizer.bos_id(), Some(2));
}

#[test]
fn logits_and_greedy_tokens_match_hugging_face() {
    let Some(path) = gemma3_path() else { return };
    common::check_against_reference::<Flex>(
        &path,
        &gemma3_fixture(),
        &Default::default(),
        LOGIT_TOL,
    );
}

#[test]
fn parameter_count_is_hugging_faces() {
    let Some(path) = gemma3_path() else { return };
    let ckpt = Checkpoint::open(&path).expect("open");
    let model = ckpt.load::<Flex>(&Default::default()).expect("load");
    // transformers: sum(p.numel() for p in model.parameters()) of the model read from this file.
    assert_eq!(model.parameter_count(), ckpt.config.num_parameters());
    assert_eq!(model.parameter_count(), 268_098_176);
}
