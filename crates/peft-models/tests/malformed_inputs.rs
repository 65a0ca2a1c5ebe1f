//! Broken model files give an error that names the file and the field or tensor — never a panic.

mod common;

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use common::gguf_builder::{GgufBuilder, tiny_llama};
use peft_models::{Checkpoint, ModelError};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("peft-malformed-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        Self(dir)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Opens and loads `path`, returning the error message.
fn load_error(path: &Path) -> String {
    let err = match Checkpoint::open(path) {
        Err(e) => e,
        Ok(ckpt) => match ckpt.load::<Flex>(&Default::default()) {
            Err(e) => e,
            Ok(_) => panic!("{} loaded although it is broken", path.display()),
        },
    };
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name the file: {msg}"
    );
    msg
}

fn gguf_error(tag: &str, bytes: &[u8]) -> String {
    let dir = TempDir::new(tag);
    load_error(&dir.write("model.gguf", bytes))
}

#[test]
fn valid_synthetic_gguf_loads() {
    let dir = TempDir::new("valid");
    let path = dir.write("model.gguf", &tiny_llama().build());
    let ckpt = Checkpoint::open(&path).expect("open");
    ckpt.load::<Flex>(&Default::default())
        .expect("a valid file loads");
}

#[test]
fn empty_and_foreign_files() {
    assert!(gguf_error("empty", b"").contains("file ends inside the magic number"));
    let msg = gguf_error("magic", b"GGML\x03\x00\x00\x00rest of a file");
    assert!(msg.contains("not a GGUF file"), "{msg}");
    let mut v1 = tiny_llama();
    v1.version = 1;
    assert!(gguf_error("version", &v1.build()).contains("unsupported GGUF version 1"));
}

#[test]
fn truncated_files() {
    let bytes = tiny_llama().build();
    let msg = gguf_error("trunc-meta", &bytes[..200]);
    assert!(
        msg.contains("file ends inside") || msg.contains("cannot fit"),
        "{msg}"
    );
    let msg = gguf_error("trunc-data", &bytes[..bytes.len() - 40]);
    assert!(
        msg.contains("tensor `blk.0.ffn_down.weight`") && msg.contains("run past the end"),
        "{msg}"
    );
}

#[test]
fn lengths_larger_than_the_file_are_refused_before_allocating() {
    let huge_string = GgufBuilder::new()
        .raw_meta("general.name", 8, u64::MAX.to_le_bytes().to_vec())
        .build();
    let msg = gguf_error("huge-string", &huge_string);
    assert!(
        msg.contains("general.name") && msg.contains("string of"),
        "{msg}"
    );
    let mut payload = 4u32.to_le_bytes().to_vec();
    payload.extend(1_000_000_000_000u64.to_le_bytes());
    let huge_array = GgufBuilder::new()
        .raw_meta("tokenizer.ggml.tokens", 9, payload)
        .build();
    let msg = gguf_error("huge-array", &huge_array);
    assert!(
        msg.contains("tokenizer.ggml.tokens") && msg.contains("does not fit"),
        "{msg}"
    );
    let huge_tensor = tiny_llama()
        .tensor_raw("big", &[1 << 20, 1 << 20], 0, vec![])
        .build();
    let msg = gguf_error("huge-tensor", &huge_tensor);
    assert!(
        msg.contains("tensor `big`") && msg.contains("run past the end"),
        "{msg}"
    );
}

#[test]
fn unknown_and_unsupported_tensor_types() {
    let unknown = tiny_llama()
        .tensor_raw("odd", &[32], 99, vec![0; 64])
        .build();
    let msg = gguf_error("unknown-type", &unknown);
    assert!(
        msg.contains("tensor `odd`: unknown tensor type 99"),
        "{msg}"
    );
    // IQ2_XXS is valid GGUF, but has no dequantiser here.
    let iq = tiny_llama()
        .without_tensor("blk.0.attn_norm.weight")
        .tensor_raw("blk.0.attn_norm.weight", &[256], 16, vec![0; 66])
        .build();
    let msg = gguf_error("unsupported-type", &iq);
    assert!(
        msg.contains("blk.0.attn_norm.weight") && msg.contains("IQ2_XXS is not supported"),
        "{msg}"
    );
}

#[test]
fn missing_metadata_and_tensors_and_wrong_shapes() {
    let msg = gguf_error(
        "no-layers",
        &tiny_llama().without_meta("llama.block_count").build(),
    );
    assert!(
        msg.contains("config field `llama.block_count`: missing"),
        "{msg}"
    );
    let msg = gguf_error(
        "no-tensor",
        &tiny_llama().without_tensor("blk.0.ffn_up.weight").build(),
    );
    assert!(
        msg.contains("missing tensor `blk.0.ffn_up.weight`"),
        "{msg}"
    );
    let wrong = tiny_llama()
        .without_tensor("blk.0.attn_k.weight")
        .tensor_f32("blk.0.attn_k.weight", &[8, 8], &[0.0; 64])
        .build();
    let msg = gguf_error("shape", &wrong);
    assert!(
        msg.contains(
            "tensor `blk.0.attn_k.weight` has shape [8, 8], the model configuration expects [4, 8]"
        ),
        "{msg}"
    );
    let bad_heads = tiny_llama()
        .without_meta("llama.attention.head_count_kv")
        .u32("llama.attention.head_count_kv", 3)
        .build();
    let msg = gguf_error("heads", &bad_heads);
    assert!(
        msg.contains("num_key_value_heads") && msg.contains("not a multiple"),
        "{msg}"
    );
}

fn hf_dir(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(name), dir.0.join(name)).expect("copy");
    }
    dir
}

#[test]
fn broken_hugging_face_checkpoints() {
    let dir = hf_dir("st-trunc");
    let st = std::fs::read(dir.0.join("model.safetensors")).expect("read");
    dir.write("model.safetensors", &st[..st.len() / 2]);
    let msg = load_error(&dir.0);
    assert!(
        msg.contains("model.safetensors") && msg.contains("invalid safetensors"),
        "{msg}"
    );

    let dir = hf_dir("json");
    let path = dir.write("config.json", b"{\n  \"hidden_size\": 32,\n  oops\n}");
    let msg = load_error(&dir.0);
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("line 3"),
        "{msg}"
    );

    let dir = hf_dir("field");
    let cfg = std::fs::read_to_string(dir.0.join("config.json")).expect("read");
    let mut json: serde_json::Value = serde_json::from_str(&cfg).expect("json");
    json.as_object_mut().expect("object").remove("hidden_size");
    dir.write("config.json", json.to_string().as_bytes());
    assert!(load_error(&dir.0).contains("config field `hidden_size`: missing"));

    let dir = hf_dir("mismatch");
    json = serde_json::from_str(&cfg).expect("json");
    json["intermediate_size"] = 65.into();
    dir.write("config.json", json.to_string().as_bytes());
    let msg = load_error(&dir.0);
    assert!(
        msg.contains("model.layers.0.mlp.gate_proj.weight")
            && msg.contains("[64, 32]")
            && msg.contains("[65, 32]"),
        "{msg}"
    );

    let dir = hf_dir("tokenizer");
    dir.write("tokenizer.json", b"{\"model\": 7}");
    let msg = load_error(&dir.0);
    assert!(msg.contains("tokenizer.json"), "{msg}");
}

#[test]
fn missing_model_file_says_how_to_get_it() {
    let err = Checkpoint::open("/nonexistent/model.gguf").unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }));
    assert!(err.to_string().contains("scripts/fetch-model.sh"), "{err}");
}

/// A copy of the tiny `family` fixture (tests/fixtures/families/) with `edit` applied to its
/// `config.json`; returns the error of opening it.
fn family_config_error(family: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let dir = TempDir::new(&format!("family-{family}"));
    let src = common::repo_root()
        .join("tests/fixtures/families")
        .join(family);
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(name), dir.0.join(name)).expect("copy");
    }
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.0.join("config.json")).expect("read"))
            .expect("json");
    edit(&mut json);
    dir.write("config.json", json.to_string().as_bytes());
    load_error(&dir.0)
}

/// What the decoder does not implement is refused naming the field, never approximated.
#[test]
fn unsupported_family_features_are_refused_by_field() {
    let msg = family_config_error("gemma3", |j| j["final_logit_softcapping"] = 30.0.into());
    assert!(
        msg.contains("`final_logit_softcapping`") && msg.contains("soft-capping"),
        "{msg}"
    );
    let msg = family_config_error("gemma3", |j| j["use_bidirectional_attention"] = true.into());
    assert!(msg.contains("`use_bidirectional_attention`"), "{msg}");
    let msg = family_config_error("gemma3", |j| j["hidden_activation"] = "gelu".into());
    assert!(
        msg.contains("`hidden_activation`") && msg.contains("gelu_pytorch_tanh"),
        "{msg}"
    );
    let msg = family_config_error("gemma3", |j| {
        j["layer_types"].as_array_mut().expect("list").pop();
    });
    assert!(
        msg.contains("`layer_types`") && msg.contains("5 entries for 6 layers"),
        "{msg}"
    );
    let msg = family_config_error("gemma3", |j| j["layer_types"][0] = "chunked".into());
    assert!(msg.contains("`layer_types[0]`"), "{msg}");
    let msg = family_config_error("llama3", |j| {
        j["rope_parameters"]["rope_type"] = "yarn".into()
    });
    assert!(
        msg.contains("`rope_parameters.rope_type`") && msg.contains("yarn"),
        "{msg}"
    );
    let msg = family_config_error("llama3", |j| {
        j["rope_parameters"]
            .as_object_mut()
            .expect("object")
            .remove("low_freq_factor");
    });
    assert!(msg.contains("`rope_parameters.low_freq_factor`"), "{msg}");
    let msg = family_config_error("qwen3", |j| j["model_type"] = "phi3".into());
    assert!(
        msg.contains("`model_type`") && msg.contains("phi3") && msg.contains("gemma3_text"),
        "{msg}"
    );
}

/// Family defaults where the file is silent, as transformers' config classes have them.
#[test]
fn family_defaults_follow_transformers() {
    let open = |family: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let dir = TempDir::new(&format!("defaults-{family}"));
        let src = common::repo_root()
            .join("tests/fixtures/families")
            .join(family);
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).expect("read"))
                .expect("json");
        edit(&mut json);
        let path = dir.write("config.json", json.to_string().as_bytes());
        peft_models::DecoderConfig::from_hf_json(&path).expect("config")
    };
    // Qwen 3: head_dim 128 when absent (not hidden / heads).
    let c = open("qwen3", &|j| {
        j.as_object_mut().expect("object").remove("head_dim");
    });
    assert_eq!(c.head_dim, 128);
    // Gemma 3: without layer_types, every sixth layer global; query_pre_attn_scalar sets the scale.
    let c = open("gemma3", &|j| {
        let o = j.as_object_mut().expect("object");
        o.remove("layer_types");
        o.insert("query_pre_attn_scalar".into(), 12.into());
    });
    let kinds: Vec<_> = (0..6).map(|i| c.layer_kind(i)).collect();
    use peft_models::AttentionKind::{Global, Sliding};
    assert_eq!(kinds, [Sliding, Sliding, Sliding, Sliding, Sliding, Global]);
    assert_eq!(c.features.attention_scale, Some(12f64.powf(-0.5)));
    // Qwen 2: q/k/v biases whatever the file says.
    let c = open("qwen2", &|j| j["attention_bias"] = false.into());
    assert!(c.attention_bias);
}
