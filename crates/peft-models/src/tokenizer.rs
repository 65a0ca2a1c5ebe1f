//! Byte-level BPE tokenizer, from a Hugging Face `tokenizer.json` or from GGUF metadata.
//!
//! The GGUF path rebuilds the same pipeline Hugging Face uses: the vocabulary and merges of
//! `tokenizer.ggml.*`, the pre-tokenizer that `tokenizer.ggml.pre` names, a byte-level decoder,
//! and the control tokens as special added tokens (so `<|im_start|>` in text is one token).

use std::path::Path;

use serde_json::{Value, json};

use crate::{
    error::{ModelError, Result},
    gguf::{GgufFile, MetaValue},
};

/// A text tokenizer with the special ids generation needs.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: String,
    bos: Option<u32>,
    add_bos: bool,
    eos: Vec<u32>,
    pad: Option<u32>,
}

/// Builds a `tokenizers` tokenizer from its JSON. JSON is UTF-8, and the `tokenizers` crate
/// panics on some files that are not (found by fuzzing: an invalid byte inside a JSON key), so
/// the text is checked first and a bad byte is reported by its offset. Any other panic of the
/// crate is caught and returned as an error too, like any other malformed file.
fn parse(json: &[u8]) -> std::result::Result<tokenizers::Tokenizer, String> {
    let text = std::str::from_utf8(json).map_err(|e| {
        format!(
            "invalid tokenizer JSON: not UTF-8 at byte {}",
            e.valid_up_to()
        )
    })?;
    match std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>()) {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(format!(
            "invalid tokenizer JSON ({})",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("the tokenizers crate panicked")
        )),
    }
}

/// GGUF `token_type` of control tokens.
const CONTROL: i64 = 3;
/// GGUF `token_type` of user-defined tokens.
const USER_DEFINED: i64 = 4;

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`. Special ids are read from a sibling
    /// `tokenizer_config.json` / `config.json` / `generation_config.json` when present.
    pub fn from_file(path: &Path) -> Result<Self> {
        let source = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        let inner = parse(&bytes).map_err(|what| ModelError::Tokenizer {
            source_name: source.clone(),
            what,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let read_json = |name: &str| -> Option<Value> {
            let text = std::fs::read_to_string(dir.join(name)).ok()?;
            serde_json::from_str(&text).ok()
        };
        let mut eos = Vec::new();
        let mut bos = None;
        let mut pad = None;
        for name in ["generation_config.json", "config.json"] {
            if let Some(cfg) = read_json(name) {
                match cfg.get("eos_token_id") {
                    Some(Value::Number(n)) => eos.extend(n.as_u64().map(|v| v as u32)),
                    Some(Value::Array(a)) => {
                        eos.extend(a.iter().filter_map(Value::as_u64).map(|v| v as u32))
                    }
                    _ => {}
                }
                bos = bos.or_else(|| {
                    cfg.get("bos_token_id")
                        .and_then(Value::as_u64)
                        .map(|v| v as u32)
                });
                pad = pad.or_else(|| {
                    cfg.get("pad_token_id")
                        .and_then(Value::as_u64)
                        .map(|v| v as u32)
                });
            }
        }
        if eos.is_empty()
            && let Some(cfg) = read_json("tokenizer_config.json")
            && let Some(tok) = cfg.get("eos_token").and_then(Value::as_str)
        {
            eos.extend(inner.token_to_id(tok));
        }
        eos.dedup();
        Ok(Self {
            inner,
            source,
            bos,
            add_bos: false,
            eos,
            pad,
        })
    }

    /// Builds the tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let source = format!("{} metadata", file.path().display());
        let fail = |what: String| ModelError::Tokenizer {
            source_name: source.clone(),
            what,
        };
        let meta = |k: &str| file.meta(k);
        let model = meta("tokenizer.ggml.model")
            .and_then(MetaValue::as_str)
            .unwrap_or("");
        if model != "gpt2" {
            return Err(fail(format!(
                "tokenizer.ggml.model = `{model}`: only byte-level BPE (`gpt2`) is supported; pass a tokenizer.json instead"
            )));
        }
        let pre = meta("tokenizer.ggml.pre")
            .and_then(MetaValue::as_str)
            .unwrap_or("default");
        let pre_tokenizer = match pre {
            "smollm" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
            ]}),
            "default" | "gpt2" | "gpt-2" => {
                json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
            }
            other => {
                return Err(fail(format!(
                    "tokenizer.ggml.pre = `{other}` is not supported (supported: smollm, gpt2); pass a tokenizer.json instead"
                )));
            }
        };
        let strings = |k: &str| -> Result<Vec<&str>> {
            let arr = meta(k)
                .and_then(MetaValue::as_array)
                .ok_or_else(|| fail(format!("{k} is missing or not an array")))?;
            arr.iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .ok_or_else(|| fail(format!("{k}[{i}] is not a string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<i64> = match meta("tokenizer.ggml.token_type").and_then(MetaValue::as_array)
        {
            Some(a) => a
                .iter()
                .map(|v| v.as_u64().map_or(1, |t| t as i64))
                .collect(),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(fail(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        let mut added = Vec::new();
        for (id, (tok, ty)) in tokens.iter().zip(&types).enumerate() {
            if vocab.insert(tok.to_string(), json!(id)).is_some() {
                return Err(fail(format!("token {tok:?} appears twice (id {id})")));
            }
            if *ty == CONTROL || *ty == USER_DEFINED {
                added.push(
                    json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": *ty == CONTROL}),
                );
            }
        }
        let merges: Vec<Value> = merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let (a, b) = m
                    .split_once(' ')
                    .ok_or_else(|| fail(format!("merge {i} ({m:?}) is not two tokens")))?;
                Ok(json!([a, b]))
            })
            .collect::<Result<_>>()?;
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges},
        });
        let inner = parse(spec.to_string().as_bytes()).map_err(fail)?;
        let id = |k: &str| meta(k).and_then(MetaValue::as_u64).map(|v| v as u32);
        let n = tokens.len() as u32;
        let check = |k: &str| -> Result<Option<u32>> {
            match id(k) {
                Some(v) if v >= n => {
                    Err(fail(format!("{k} = {v} is outside the vocabulary of {n}")))
                }
                other => Ok(other),
            }
        };
        let bos = check("tokenizer.ggml.bos_token_id")?;
        let eos = check("tokenizer.ggml.eos_token_id")?;
        let eot = check("tokenizer.ggml.eot_token_id")?;
        let pad = check("tokenizer.ggml.padding_token_id")?;
        Ok(Self {
            inner,
            source,
            bos,
            add_bos: meta("tokenizer.ggml.add_bos_token")
                .and_then(MetaValue::as_bool)
                .unwrap_or(false),
            eos: eos
                .into_iter()
                .chain(eot.filter(|e| Some(*e) != eos))
                .collect(),
            pad,
        })
    }

    /// Token ids of `text` as Hugging Face's `tokenizer.encode(text)` gives them (special tokens
    /// in the text are recognised; a BOS is added only when the tokenizer asks for one).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| ModelError::Tokenizer {
                source_name: self.source.clone(),
                what: e.to_string(),
            })?;
        let ids = enc.get_ids();
        Ok(match self.bos {
            Some(bos) if self.add_bos && ids.first() != Some(&bos) => {
                std::iter::once(bos).chain(ids.iter().copied()).collect()
            }
            _ => ids.to_vec(),
        })
    }

    /// Text of `ids`, special tokens included (Hugging Face's `decode` default).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenizer {
                source_name: self.source.clone(),
                what: e.to_string(),
            })
    }

    /// Number of tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// The beginning-of-sequence id, if the vocabulary has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The padding id (falls back to the first end-of-sequence id).
    pub fn pad_id(&self) -> Option<u32> {
        self.pad.or_else(|| self.eos.first().copied())
    }
}

impl peft_core::train::data::Tokenize for Tokenizer {
    fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
        Tokenizer::encode(self, text).map_err(|e| e.to_string())
    }

    fn eos_id(&self) -> Option<u32> {
        self.eos.first().copied()
    }
}
