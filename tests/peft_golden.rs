//! Golden tests against Hugging Face PEFT 0.21 on the real SmolLM2 (fixtures from
//! scripts/reference/peft_fixture.py): TEXT-initialised soft prompt and fixed prefix adapters
//! saved by PEFT load here and give PEFT's logits and greedy tokens (identical); adapters saved
//! here were loaded by PEFT, whose logits with them we match too.
//!
//! Logit tolerance: 1e-4 absolute, under twice the worst adapter seen (6.1e-5 on an Intel Xeon
//! with AVX-512, docs/measured/2026-12-05-test-figures.log; f32 throughout).

mod common;

use std::path::PathBuf;

use burn::backend::Flex;
use common::{conditioning, model};
use peft_core::{
    Adapter, CausalLm,
    adapter::{SaveOptions, load_adapter, save_adapter},
    prefix::Prefix,
    prompt::{PromptInit, SoftPrompt, text_init_ids},
};
use peft_models::{
    Checkpoint, Decoder,
    generate::{GenerationConfig, generate},
};
use serde_json::Value;

const TOL: f64 = 1e-4;

fn fixture_dir() -> PathBuf {
    model::repo_root().join("tests/fixtures/peft")
}

fn reference() -> Value {
    model::read_json("tests/fixtures/peft/peft_reference.json")
}

fn setup() -> Option<(Checkpoint, Decoder<Flex>)> {
    let path = model::model_path()?;
    let ckpt = Checkpoint::open(&path).expect("open");
    let model = ckpt.load::<Flex>(&Default::default()).expect("load");
    Some((ckpt, model))
}

/// Logits at the last prompt position and 16 greedy tokens with `adapter`, against PEFT.
fn check_adapter(ckpt: &Checkpoint, model: &Decoder<Flex>, adapter: &Adapter<Flex>, key: &str) {
    let r = reference();
    let prompt = model::ids(&r["prompt_ids"]);
    let stride = r["sample_stride"].as_u64().expect("stride") as usize;
    let config = GenerationConfig {
        max_new_tokens: 16,
        ..Default::default()
    };
    let out = generate(
        model,
        &ckpt.tokenizer,
        &prompt,
        &conditioning(adapter),
        &config,
        |_| {},
    )
    .expect("generate");
    let worst = model::max_logit_error(&out.prompt_logits, &r[key], stride);
    eprintln!("{key}: max |Δlogit| vs PEFT = {worst:e}");
    assert!(
        worst <= TOL,
        "{key}: max |Δlogit| = {worst} (tolerance {TOL})"
    );
    assert_eq!(
        out.ids,
        model::ids(&r[key]["greedy"]),
        "{key}: greedy tokens differ from PEFT's"
    );
}

#[test]
fn text_init_equals_peft() {
    let Some((ckpt, model)) = setup() else { return };
    let r = &reference()["prompt_text8"];
    let text = r["init_text"].as_str().expect("text");
    let ids = text_init_ids(&ckpt.tokenizer.encode(text).expect("encode"), 8);
    assert_eq!(ids, model::ids(&r["init_ids"]));
    let ours = SoftPrompt::init(&model, 8, &PromptInit::Text(text.into()), |t| {
        ckpt.tokenizer
            .encode(t)
            .map_err(|e| peft_core::PeftError::Invalid(e.to_string()))
    })
    .expect("init");
    let (theirs, _) = load_adapter::<Flex>(
        &fixture_dir().join("prompt_text8"),
        &model.dims(),
        &Default::default(),
    )
    .expect("load");
    let a: Vec<f32> = ours.embeddings().into_data().to_vec().expect("f32");
    let b: Vec<f32> = theirs
        .virtual_tokens()
        .expect("prompt")
        .into_data()
        .to_vec()
        .expect("f32");
    assert_eq!(a, b, "TEXT-initialised embeddings differ from PEFT's");
}

#[test]
fn peft_prompt_adapter_gives_peft_logits() {
    let Some((ckpt, model)) = setup() else { return };
    let (adapter, config) = load_adapter::<Flex>(
        &fixture_dir().join("prompt_text8"),
        &model.dims(),
        &Default::default(),
    )
    .expect("load");
    assert_eq!(config.num_virtual_tokens, 8);
    check_adapter(&ckpt, &model, &adapter, "prompt_text8");
}

#[test]
fn peft_prefix_adapter_gives_peft_logits() {
    let Some((ckpt, model)) = setup() else { return };
    let (adapter, _) = load_adapter::<Flex>(
        &fixture_dir().join("prefix8"),
        &model.dims(),
        &Default::default(),
    )
    .expect("load");
    assert!(matches!(adapter, Adapter::Prefix(_)));
    check_adapter(&ckpt, &model, &adapter, "prefix8");
}

/// The adapters this crate writes for the round trip: a seeded SAMPLE_VOCAB prompt and a prefix
/// holding the keys/values of a text.
fn rust_adapters(
    ckpt: &Checkpoint,
    model: &Decoder<Flex>,
) -> [(&'static str, Adapter<Flex>, SaveOptions); 2] {
    let init = PromptInit::SampleVocab { seed: 7 };
    let prompt = SoftPrompt::init(model, 6, &init, |_| unreachable!("no text")).expect("prompt");
    let ids = ckpt.tokenizer.encode("Reply in French.").expect("encode");
    let prefix = Prefix::from_text(model, &ids).expect("prefix");
    let opts = SaveOptions {
        base_model: Some("HuggingFaceTB/SmolLM2-135M-Instruct".into()),
        prompt_init: Some(init),
        tokenizer: None,
    };
    [
        ("rust_prompt", Adapter::Prompt(prompt), opts.clone()),
        ("rust_prefix", Adapter::Prefix(prefix), opts),
    ]
}

/// Writes tests/fixtures/peft/rust_*; run before scripts/reference/peft_fixture.py.
#[test]
#[ignore = "writes fixtures"]
fn write_rust_adapters() {
    let Some((ckpt, model)) = setup() else { return };
    for (name, adapter, opts) in rust_adapters(&ckpt, &model) {
        save_adapter(&fixture_dir().join(name), &adapter, &model.dims(), &opts).expect("save");
    }
}

#[test]
fn adapters_saved_here_load_in_peft_with_equal_logits() {
    let Some((ckpt, model)) = setup() else { return };
    let r = reference();
    let tmp = std::env::temp_dir().join(format!("peft-golden-{}", std::process::id()));
    for (name, adapter, opts) in rust_adapters(&ckpt, &model) {
        assert!(
            r.get(name).is_some(),
            "{name}: the fixture has no PEFT values; rerun peft_fixture.py"
        );
        // The committed files are what this code writes now (values within float noise).
        save_adapter(&tmp.join(name), &adapter, &model.dims(), &opts).expect("save");
        let committed = fixture_dir().join(name);
        assert_eq!(
            std::fs::read_to_string(tmp.join(name).join("adapter_config.json")).expect("new"),
            std::fs::read_to_string(committed.join("adapter_config.json")).expect("committed"),
        );
        let (fresh, _) = load_adapter::<Flex>(&tmp.join(name), &model.dims(), &Default::default())
            .expect("reload");
        let (loaded, _) =
            load_adapter::<Flex>(&committed, &model.dims(), &Default::default()).expect("load");
        let flat = |a: &Adapter<Flex>| -> Vec<f32> {
            match a {
                Adapter::Prompt(p) => p.embeddings().into_data().to_vec().expect("f32"),
                Adapter::Prefix(p) => p.flat().into_data().to_vec().expect("f32"),
            }
        };
        peft_testing::assert_close(
            &flat(&loaded),
            &flat(&fresh),
            1e-4,
            &format!("{name}: a fresh save against the committed adapter"),
        );
        // PEFT loaded the committed adapter; its logits are the reference.
        check_adapter(&ckpt, &model, &loaded, name);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// An adapter trained here (prefix through the MLP, `examples/e2e_prefix_tuning`, collapsed on
/// export) loads in PEFT, which records its logits; loaded here it gives the same ones.
#[test]
fn trained_and_exported_adapter_matches_peft() {
    let Some((ckpt, model)) = setup() else { return };
    let dir = fixture_dir().join("rust_trained");
    let (adapter, config) =
        load_adapter::<Flex>(&dir, &model.dims(), &Default::default()).expect("load");
    assert_eq!(
        config.prefix_projection,
        Some(true),
        "trained through the MLP"
    );
    check_adapter(&ckpt, &model, &adapter, "rust_trained");
}
