//! Fuzz targets: every parser of outside input, driven end to end through the public API.
//!
//! Each target takes arbitrary bytes and must return normally — an `Err` is the expected
//! outcome for garbage — never panic, and never allocate more than the input justifies (the
//! harness checks both). File-based loaders get the bytes through a temporary file, so the
//! whole path a user's file takes is exercised. [`watchdog`] ends a run whose call hangs, with
//! the input saved.
#![warn(missing_docs)]

pub mod watchdog;

use std::{
    io::Cursor,
    path::{Path, PathBuf},
};

use burn::backend::Flex;
use peft_core::{
    ModelDims,
    adapter::load_adapter,
    train::data::{Dataset, Tokenize, Truncation, parse_jsonl},
};
use peft_models::{Checkpoint, DecoderConfig, Tokenizer, gguf::GgufHeader};

/// A named target.
pub struct Target {
    /// Name on the command line.
    pub name: &'static str,
    /// What it feeds.
    pub about: &'static str,
    /// Runs one input; returns a short description of the outcome (for corpus diversity). An
    /// `Err` is a failure of the harness itself (writing into the scratch directory), not an
    /// outcome of the input.
    pub run: fn(&[u8], &Path) -> std::io::Result<String>,
}

/// All targets.
pub const TARGETS: &[Target] = &[
    Target {
        name: "gguf_header",
        about: "GGUF header, metadata and tensor table (in memory)",
        run: gguf_header,
    },
    Target {
        name: "gguf_model",
        about: "a GGUF file through Checkpoint::open and a model load",
        run: gguf_model,
    },
    Target {
        name: "dequant",
        about: "ggml dequantisation of every type (first byte picks it)",
        run: dequant,
    },
    Target {
        name: "safetensors_model",
        about: "model.safetensors next to a valid config.json, loaded",
        run: safetensors_model,
    },
    Target {
        name: "config_json",
        about: "Hugging Face config.json",
        run: config_json,
    },
    Target {
        name: "tokenizer_json",
        about: "tokenizer.json through Tokenizer::from_file, then encode/decode",
        run: tokenizer_json,
    },
    Target {
        name: "adapter_config",
        about: "adapter_config.json next to a valid adapter tensor",
        run: adapter_config,
    },
    Target {
        name: "adapter_tensors",
        about: "adapter_model.safetensors next to a valid config",
        run: adapter_tensors,
    },
    Target {
        name: "jsonl",
        about: "training data JSONL, parsed and tokenised",
        run: jsonl,
    },
];

fn outcome<T, E: std::fmt::Display>(dir: &Path, r: Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".into(),
        // Keep the message's shape, not its numbers or the scratch path, so outcomes group by
        // kind of error.
        Err(e) => e
            .to_string()
            .replace(&*dir.to_string_lossy(), "")
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .take(120)
            .collect(),
    }
}

fn write(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, data)
        .map_err(|e| std::io::Error::new(e.kind(), format!("writing {}: {e}", p.display())))?;
    Ok(p)
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/peft-models/tests/fixtures")
}

fn gguf_header(data: &[u8], dir: &Path) -> std::io::Result<String> {
    Ok(outcome(
        dir,
        GgufHeader::read(Cursor::new(data), data.len() as u64),
    ))
}

fn gguf_model(data: &[u8], dir: &Path) -> std::io::Result<String> {
    let path = write(dir, "model.gguf", data)?;
    Ok(outcome(
        dir,
        Checkpoint::open(&path).and_then(|c| {
            let model = c.load::<Flex>(&Default::default())?;
            let ids = c.tokenizer.encode("fuzz 123 héllo")?;
            let _ = c.tokenizer.decode(&ids)?;
            let _ = model;
            Ok(())
        }),
    ))
}

fn dequant(data: &[u8], dir: &Path) -> std::io::Result<String> {
    use peft_models::gguf::{GgmlType, dequantize};
    let Some((&code, rest)) = data.split_first() else {
        return Ok("empty".into());
    };
    let Some(ty) = GgmlType::from_code(u32::from(code % 42)) else {
        return Ok("unknown type".into());
    };
    let (block, bytes) = ty.block();
    let elements = (rest.len() as u64 / bytes * block) as usize;
    let usable = (elements as u64 / block * bytes) as usize;
    Ok(outcome(dir, dequantize(ty, &rest[..usable], elements)))
}

/// The bytes of a safetensors file from a fuzz input. An input that starts with `{` is taken as
/// `header JSON, NUL, data` and gets its 8-byte length prefix computed, so that mutations of the
/// header's tensor table (dtypes, shapes, offsets) reach the loader instead of stopping at a
/// length prefix that no longer matches; any other input is used as the file, unchanged.
fn safetensors_file(data: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if data.first() != Some(&b'{') {
        return std::borrow::Cow::Borrowed(data);
    }
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (header, rest) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(rest);
    std::borrow::Cow::Owned(file)
}

fn safetensors_model(data: &[u8], dir: &Path) -> std::io::Result<String> {
    let src = fixtures().join("tiny-llama");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("copying {f} into the scratch directory: {e}"),
            )
        })?;
    }
    write(dir, "model.safetensors", &safetensors_file(data))?;
    Ok(outcome(
        dir,
        Checkpoint::open(dir).and_then(|c| c.load::<Flex>(&Default::default()).map(|_| ())),
    ))
}

fn config_json(data: &[u8], dir: &Path) -> std::io::Result<String> {
    let path = write(dir, "config.json", data)?;
    Ok(outcome(dir, DecoderConfig::from_hf_json(&path)))
}

fn tokenizer_json(data: &[u8], dir: &Path) -> std::io::Result<String> {
    let path = write(dir, "tokenizer.json", data)?;
    Ok(outcome(
        dir,
        Tokenizer::from_file(&path).and_then(|t| {
            let ids = t.encode("fuzz <|im_start|> 42\n\n  x")?;
            t.decode(&ids)
        }),
    ))
}

/// The tiny model's sizes, which the adapter targets load against.
fn dims() -> ModelDims {
    ModelDims {
        num_layers: 2,
        hidden_size: 32,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        vocab_size: 320,
        max_positions: 128,
    }
}

const ADAPTER_CONFIG: &str = r#"{"peft_type":"PREFIX_TUNING","task_type":"CAUSAL_LM","num_virtual_tokens":2,"token_dim":16,"num_attention_heads":2,"num_layers":2,"num_transformer_submodules":1,"inference_mode":true}"#;

/// A valid adapter tensor file for [`ADAPTER_CONFIG`]'s shape (`[2, 64]` f32).
fn adapter_tensor() -> std::io::Result<Vec<u8>> {
    let values = vec![0.5f32; 2 * 64];
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 64], &bytes)
        .map_err(std::io::Error::other)?;
    safetensors::serialize([("prompt_embeddings", view)], None).map_err(std::io::Error::other)
}

fn adapter_config(data: &[u8], dir: &Path) -> std::io::Result<String> {
    write(dir, "adapter_config.json", data)?;
    write(dir, "adapter_model.safetensors", &adapter_tensor()?)?;
    Ok(outcome(
        dir,
        load_adapter::<Flex>(dir, &dims(), &Default::default()),
    ))
}

fn adapter_tensors(data: &[u8], dir: &Path) -> std::io::Result<String> {
    write(dir, "adapter_config.json", ADAPTER_CONFIG.as_bytes())?;
    write(dir, "adapter_model.safetensors", &safetensors_file(data))?;
    Ok(outcome(
        dir,
        load_adapter::<Flex>(dir, &dims(), &Default::default()),
    ))
}

struct Bytes;
impl Tokenize for Bytes {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn eos_id(&self) -> Option<u32> {
        Some(0)
    }
}

fn jsonl(data: &[u8], dir: &Path) -> std::io::Result<String> {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz.jsonl");
    Ok(outcome(
        dir,
        parse_jsonl(path, &text)
            .and_then(|r| Dataset::tokenize(path, r, &Bytes, 64, Truncation::Left)),
    ))
}

/// The committed seed files of a target (real and truncated files).
pub fn seed_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target)
}
