//! Tokenizers, from a Hugging Face `tokenizer.json` or from GGUF metadata ([`gguf`]: byte-level
//! BPE and Gemma's SentencePiece vocabulary, rebuilt as transformers builds them), run by the
//! `tokenizers` crate.

mod gguf;

use std::path::Path;

use serde_json::Value;

use crate::error::{ModelError, Result};

/// A text tokenizer with the special ids generation needs.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: String,
    bos: Option<u32>,
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
            eos,
            pad,
        })
    }

    /// Token ids of `text` as Hugging Face's `tokenizer.encode(text)` gives them: special tokens
    /// in the text are recognised, and the tokenizer's template adds what it adds (Gemma's BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// Token ids of `text` continuing a sequence: no BOS or other template tokens
    /// (`add_special_tokens=False`); special tokens in the text are still recognised.
    pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, false)
    }

    fn encode_with(&self, text: &str, template: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, template)
            .map_err(|e| ModelError::Tokenizer {
                source_name: self.source.clone(),
                what: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
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

    fn encode_continuation(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
        Tokenizer::encode_continuation(self, text).map_err(|e| e.to_string())
    }

    fn eos_id(&self) -> Option<u32> {
        self.eos.first().copied()
    }
}
