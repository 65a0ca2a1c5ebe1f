//! Every supported family against transformers and PEFT, on tiny random models
//! (scripts/reference/families_fixture.py): Llama 3 (RoPE scaling), Qwen 2 (q/k/v biases),
//! Qwen 3 (q/k norms, head_dim ≠ hidden/heads), Gemma 3 (scaled embeddings, `1 + w` sandwich
//! norms, GeGLU, one key/value head, sliding-window layers with window 4 < sequence and prefix,
//! local RoPE base). Each model is read from its Hugging Face directory and from the GGUF written
//! the way llama.cpp writes that architecture; adapters saved by PEFT give PEFT's logits.
//!
//! Tolerance 1e-5 absolute on logits, f32 throughout: about twice the worst seen (4.9e-6, the
//! Llama 3 prefix adapter; each test prints its own).

mod common;

use std::path::PathBuf;

use burn::backend::Flex;
use common::model;
use peft_core::{
    Adapter, CausalLm,
    adapter::load_adapter,
    peft_model::{Routing, forward},
    prompt::{PromptInit, SoftPrompt},
};
use peft_models::{AttentionKind, Checkpoint, Decoder, Family};
use serde_json::Value;

const TOL: f64 = 1e-5;
const FAMILIES: [(&str, Family); 4] = [
    ("llama3", Family::Llama),
    ("qwen2", Family::Qwen2),
    ("qwen3", Family::Qwen3),
    ("gemma3", Family::Gemma3),
];

fn dir(family: &str) -> PathBuf {
    model::repo_root()
        .join("tests/fixtures/families")
        .join(family)
}

fn reference(family: &str) -> Value {
    model::read_json("tests/fixtures/families/reference.json")["families"][family].clone()
}

fn sequences() -> Vec<Vec<u32>> {
    model::read_json("tests/fixtures/families/reference.json")["sequences"]
        .as_array()
        .expect("sequences")
        .iter()
        .map(model::ids)
        .collect()
}

/// Flattened `[positions, vocab]` logits of each sequence of a reference entry.
fn expected(entry: &Value) -> Vec<Vec<f64>> {
    entry
        .as_array()
        .expect("logits per sequence")
        .iter()
        .map(|seq| {
            seq.as_array()
                .expect("positions")
                .iter()
                .flat_map(|row| row.as_array().expect("row").iter())
                .map(|v| v.as_f64().expect("number"))
                .collect()
        })
        .collect()
}

/// Logits of every real position of each sequence (run one at a time), with `adapter`.
fn logits(model: &Decoder<Flex>, adapter: Option<&Adapter<Flex>>) -> Vec<Vec<f32>> {
    sequences()
        .into_iter()
        .map(|seq| {
            let out =
                forward(model, std::slice::from_ref(&seq), Routing::All(adapter)).expect("forward");
            let idx: Vec<usize> = (0..seq.len()).map(|t| out.flat_index(0, t)).collect();
            let hidden = out.gather(&idx);
            let [n, h] = hidden.dims();
            let v = model.dims().vocab_size;
            model
                .logits(hidden.reshape([1, n, h]))
                .reshape([n * v])
                .into_data()
                .to_vec()
                .expect("f32")
        })
        .collect()
}

fn check(what: &str, got: &[Vec<f32>], want: &[Vec<f64>]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: sequences");
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| peft_testing::assert_close(w, g, TOL, what))
        .fold(0.0, f64::max);
    eprintln!("{what}: max |Δlogit| = {worst:e}");
    worst
}

fn open(family: &str, gguf: bool) -> (Checkpoint, Decoder<Flex>) {
    let path = match gguf {
        true => dir(family).join("model.gguf"),
        false => dir(family),
    };
    let ckpt = Checkpoint::open(&path).expect("open");
    let model = ckpt.load::<Flex>(&Default::default()).expect("load");
    (ckpt, model)
}

#[test]
fn every_family_reads_its_configuration() {
    for (name, family) in FAMILIES {
        for gguf in [false, true] {
            let (ckpt, _) = open(name, gguf);
            let c = &ckpt.config;
            assert_eq!(c.family, family, "{name} (gguf: {gguf})");
            let f = &c.features;
            match family {
                Family::Llama => assert!(
                    matches!(
                        f.rope_scaling,
                        peft_models::RopeScaling::Llama3 { .. }
                            | peft_models::RopeScaling::Factors(_)
                    ),
                    "{name}: RoPE scaling {:?}",
                    f.rope_scaling
                ),
                Family::Qwen2 => assert!(c.attention_bias),
                Family::Qwen3 => assert!(f.qk_norm && c.head_dim == 16 && c.hidden_size == 32),
                Family::Gemma3 => {
                    assert!(f.qk_norm && f.sandwich_norms && c.tie_word_embeddings);
                    assert_eq!(f.sliding_window, Some(4));
                    assert_eq!(f.local_rope_theta, Some(10_000.0));
                    assert_eq!((c.num_kv_heads, c.head_dim), (1, 16));
                    let kinds: Vec<_> = (0..c.num_layers).map(|i| c.layer_kind(i)).collect();
                    assert_eq!(
                        kinds
                            .iter()
                            .filter(|k| **k == AttentionKind::Global)
                            .count(),
                        1
                    );
                    assert_eq!(kinds[5], AttentionKind::Global);
                }
            }
        }
    }
}

#[test]
fn every_family_matches_transformers() {
    for (name, _) in FAMILIES {
        let want = expected(&reference(name)["logits"]);
        for gguf in [false, true] {
            let (_, model) = open(name, gguf);
            let what = format!("{name} ({})", if gguf { "GGUF" } else { "safetensors" });
            check(&what, &logits(&model, None), &want);
        }
    }
}

#[test]
fn peft_adapters_of_every_family_give_peft_logits() {
    for (name, _) in FAMILIES {
        let (_, model) = open(name, false);
        let r = reference(name);
        for kind in ["prompt", "prefix"] {
            let (adapter, _) =
                load_adapter::<Flex>(&dir(name).join(kind), &model.dims(), &Default::default())
                    .expect("load adapter");
            let what = format!("{name} {kind}");
            check(&what, &logits(&model, Some(&adapter)), &expected(&r[kind]));
        }
    }
}

/// The sliding window hides prefix keys in this fixture (window 4, prefix 6): the reference
/// path must have run for the sliding layers, and the logits above match PEFT's with it.
#[test]
fn gemma3_sliding_layers_take_the_windowed_path() {
    let (_, model) = open("gemma3", false);
    let (adapter, _) = load_adapter::<Flex>(
        &dir("gemma3").join("prefix"),
        &model.dims(),
        &Default::default(),
    )
    .expect("load adapter");
    let before = peft_kernels::path_counts();
    let _ = logits(&model, Some(&adapter));
    let ran = peft_kernels::path_counts().since(before);
    // Five sliding layers per sequence, two sequences.
    assert!(ran.reference_forward >= 10, "windowed layers ran {ran:?}");
}

/// TEXT init embeds the text as the model does, scaled by √hidden on Gemma (PEFT calls the
/// embedding module).
#[test]
fn gemma3_text_init_equals_peft() {
    let (ckpt, model) = open("gemma3", false);
    let r = &reference("gemma3")["prompt_text"];
    let text = r["init_text"].as_str().expect("text");
    let want: Vec<f64> = r["embeddings"]
        .as_array()
        .expect("rows")
        .iter()
        .flat_map(|row| row.as_array().expect("row").iter())
        .map(|v| v.as_f64().expect("number"))
        .collect();
    let n = want.len() / model.dims().hidden_size;
    let ours = SoftPrompt::init(&model, n, &PromptInit::Text(text.into()), |t| {
        ckpt.tokenizer
            .encode(t)
            .map_err(|e| peft_core::PeftError::Invalid(e.to_string()))
    })
    .expect("init");
    let got: Vec<f32> = ours.embeddings().into_data().to_vec().expect("f32");
    // The JSON holds PEFT's f32 values printed as f64: equal up to that printing.
    peft_testing::assert_close(&want, &got, 1e-12, "gemma3 TEXT init");
    let (theirs, _) = load_adapter::<Flex>(
        &dir("gemma3").join("prompt_text"),
        &model.dims(),
        &Default::default(),
    )
    .expect("load adapter");
    let saved: Vec<f32> = theirs
        .virtual_tokens()
        .expect("prompt")
        .into_data()
        .to_vec()
        .expect("f32");
    peft_testing::assert_finite(&got, "gemma3 TEXT init");
    assert_eq!(got, saved, "TEXT init differs from the adapter PEFT saved");
}
