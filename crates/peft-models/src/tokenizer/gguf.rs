//! The tokenizer stored in GGUF metadata, rebuilt as the pipeline transformers builds from the
//! same file (`transformers/integrations/gguf/gguf_tokenizer_mapping.py` in 5.24), so ids equal
//! `AutoTokenizer.from_pretrained(dir, gguf_file=…)`'s:
//!
//! * `tokenizer.ggml.model = gpt2`: byte-level BPE with the file's merges, the pre-tokenizer
//!   that `tokenizer.ggml.pre` names, a byte-level decoder.
//! * `tokenizer.ggml.model = llama` on a Gemma architecture: SentencePiece's vocabulary run as
//!   BPE with byte fallback. Whitespace-only tokens are respelled with `▁`; without
//!   `tokenizer.ggml.merges` the merges are derived from the vocabulary order (the scores are not
//!   used: llama.cpp gives added tokens score −1000); spaces become `▁` before the model and
//!   back after decoding; no `▁` is prepended.
//!
//! Control tokens (type 3) are special added tokens, so `<start_of_turn>` in text is one token;
//! user-defined tokens (type 4) are added tokens too. A BOS (and EOS) is added by a template
//! when `tokenizer.ggml.add_bos_token` (`add_eos_token`) asks, as Hugging Face's post-processor
//! does; for a SentencePiece vocabulary `add_bos_token` defaults to true, as in transformers.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

use super::{Tokenizer, parse};
use crate::{
    error::{ModelError, Result},
    gguf::{GgufFile, MetaValue},
};

/// GGUF `token_type` of control tokens.
const CONTROL: i64 = 3;
/// GGUF `token_type` of user-defined tokens.
const USER_DEFINED: i64 = 4;

/// The architectures whose SentencePiece vocabulary transformers runs as Gemma's tokenizer.
const GEMMA_ARCHITECTURES: &[&str] = &["gemma", "gemma2", "gemma3"];

/// The metadata of one file's tokenizer, with errors naming the key.
struct Meta<'a> {
    file: &'a GgufFile,
    source: String,
}

impl Meta<'_> {
    fn fail(&self, what: String) -> ModelError {
        ModelError::Tokenizer {
            source_name: self.source.clone(),
            what,
        }
    }

    fn get(&self, k: &str) -> Option<&MetaValue> {
        self.file.meta(k)
    }

    fn strings(&self, k: &str) -> Result<Vec<&str>> {
        let arr = self
            .get(k)
            .and_then(MetaValue::as_array)
            .ok_or_else(|| self.fail(format!("{k} is missing or not an array")))?;
        arr.iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .ok_or_else(|| self.fail(format!("{k}[{i}] is not a string")))
            })
            .collect()
    }

    fn flag(&self, k: &str) -> Option<bool> {
        self.get(k).and_then(MetaValue::as_bool)
    }

    /// A token id, checked against the vocabulary size.
    fn id(&self, k: &str, n: usize) -> Result<Option<u32>> {
        match self.get(k).and_then(MetaValue::as_u64) {
            Some(v) if v >= n as u64 => {
                Err(self.fail(format!("{k} = {v} is outside the vocabulary of {n}")))
            }
            other => Ok(other.map(|v| v as u32)),
        }
    }
}

impl Tokenizer {
    /// Builds the tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let meta = Meta {
            file,
            source: format!("{} metadata", file.path().display()),
        };
        let model = meta
            .get("tokenizer.ggml.model")
            .and_then(MetaValue::as_str)
            .unwrap_or("");
        let tokens = meta.strings("tokenizer.ggml.tokens")?;
        let types: Vec<i64> = match meta
            .get("tokenizer.ggml.token_type")
            .and_then(MetaValue::as_array)
        {
            Some(a) => a
                .iter()
                .map(|v| v.as_u64().map_or(1, |t| t as i64))
                .collect(),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(meta.fail(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let n = tokens.len();
        let bos = meta.id("tokenizer.ggml.bos_token_id", n)?;
        let eos = meta.id("tokenizer.ggml.eos_token_id", n)?;
        let eot = meta.id("tokenizer.ggml.eot_token_id", n)?;
        let pad = meta.id("tokenizer.ggml.padding_token_id", n)?;
        let unk = meta.id("tokenizer.ggml.unknown_token_id", n)?;
        let arch = file.architecture().unwrap_or("");
        let (spec, add_bos_default) = match model {
            "gpt2" => (byte_level(&meta, &tokens, &types)?, false),
            "llama" if GEMMA_ARCHITECTURES.contains(&arch) => {
                let specials = [bos, eos, unk, pad];
                (sentencepiece(&meta, &tokens, &types, &specials, unk)?, true)
            }
            other => {
                return Err(meta.fail(format!(
                    "tokenizer.ggml.model = `{other}` (architecture `{arch}`) is not supported: \
                     byte-level BPE (`gpt2`) and Gemma's SentencePiece vocabulary (`llama` on \
                     gemma, gemma2, gemma3) are; pass a tokenizer.json instead"
                )));
            }
        };
        let add_bos = meta
            .flag("tokenizer.ggml.add_bos_token")
            .unwrap_or(add_bos_default);
        let add_eos = meta.flag("tokenizer.ggml.add_eos_token").unwrap_or(false);
        let name = |id: Option<u32>| id.map(|i| (tokens[i as usize].to_string(), i));
        let mut spec = spec;
        spec["post_processor"] = template(
            add_bos.then(|| name(bos)).flatten(),
            add_eos.then(|| name(eos)).flatten(),
        );
        let inner = parse(spec.to_string().as_bytes()).map_err(|e| meta.fail(e))?;
        Ok(Self {
            inner,
            source: meta.source.clone(),
            bos,
            eos: eos
                .into_iter()
                .chain(eot.filter(|e| Some(*e) != eos))
                .collect(),
            pad,
        })
    }
}

/// The template that adds `bos` before and `eos` after each sequence (Hugging Face's
/// `TemplateProcessing` as transformers rebuilds it from `add_bos_token`/`add_eos_token`).
fn template(bos: Option<(String, u32)>, eos: Option<(String, u32)>) -> Value {
    let special = |(t, _): &(String, u32), type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let side = |id: &str, type_id: u32| -> Vec<Value> {
        bos.iter()
            .map(|b| special(b, type_id))
            .chain([seq(id, type_id)])
            .chain(eos.iter().map(|e| special(e, type_id)))
            .collect()
    };
    let single = side("A", 0);
    let pair: Vec<Value> = side("A", 0).into_iter().chain(side("B", 1)).collect();
    let specials: Map<String, Value> = bos
        .iter()
        .chain(eos.iter())
        .map(|(t, id)| (t.clone(), json!({"id": t, "ids": [id], "tokens": [t]})))
        .collect();
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

fn added(id: usize, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false,
           "rstrip": false, "normalized": false, "special": special})
}

/// `tokenizer.ggml.merges` as `[left, right]` pairs (pieces may contain spaces once split).
fn file_merges(meta: &Meta<'_>) -> Result<Vec<Value>> {
    meta.strings("tokenizer.ggml.merges")?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| meta.fail(format!("merge {i} ({m:?}) is not two tokens")))?;
            Ok(json!([a, b]))
        })
        .collect()
}

/// Byte-level BPE (`gpt2`): the file's vocabulary and merges; control and user-defined tokens
/// added.
fn byte_level(meta: &Meta<'_>, tokens: &[&str], types: &[i64]) -> Result<Value> {
    let pre = meta
        .get("tokenizer.ggml.pre")
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
            return Err(meta.fail(format!(
                "tokenizer.ggml.pre = `{other}` is not supported (supported: smollm, gpt2); pass a tokenizer.json instead"
            )));
        }
    };
    let merges = file_merges(meta)?;
    let mut vocab = Map::with_capacity(tokens.len());
    let mut added_tokens = Vec::new();
    for (id, (tok, ty)) in tokens.iter().zip(types).enumerate() {
        if vocab.insert(tok.to_string(), json!(id)).is_some() {
            return Err(meta.fail(format!("token {tok:?} appears twice (id {id})")));
        }
        if *ty == CONTROL || *ty == USER_DEFINED {
            added_tokens.push(added(id, tok, *ty == CONTROL));
        }
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    }))
}

/// A token made only of whitespace with at least one space, spelled with `▁` (one per
/// character), as transformers respells llama.cpp's Gemma whitespace tokens.
fn respell(token: &str) -> String {
    if token.contains(' ') && token.chars().all(char::is_whitespace) {
        "▁".repeat(token.chars().count())
    } else {
        token.to_string()
    }
}

/// Longest token whose merges are derived (Gemma 3's longest is 48 bytes): deriving them costs
/// the square of a token's length, so a crafted file with one huge token is refused rather than
/// left to run for hours.
const MAX_TOKEN_BYTES: usize = 1024;

/// Merges derived from the vocabulary order: for each token in id order (the last id of a
/// spelling), every split into two vocabulary tokens, longest left part first.
fn merges_from_vocab(
    spelled: &[String],
    vocab: &HashMap<&str, usize>,
) -> std::result::Result<Vec<Value>, String> {
    let mut merges = Vec::new();
    for (id, tok) in spelled.iter().enumerate() {
        if vocab.get(tok.as_str()) != Some(&id) {
            continue;
        }
        if tok.len() > MAX_TOKEN_BYTES {
            return Err(format!(
                "tokenizer.ggml.tokens[{id}] is {} bytes long, over the {MAX_TOKEN_BYTES} bytes                  this reader derives merges for",
                tok.len()
            ));
        }
        let bounds: Vec<usize> = tok.char_indices().map(|(i, _)| i).skip(1).collect();
        for &at in bounds.iter().rev() {
            let (l, r) = tok.split_at(at);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                merges.push(json!([l, r]));
            }
        }
    }
    Ok(merges)
}

/// Gemma's SentencePiece vocabulary as BPE with byte fallback.
fn sentencepiece(
    meta: &Meta<'_>,
    tokens: &[&str],
    types: &[i64],
    specials: &[Option<u32>],
    unk: Option<u32>,
) -> Result<Value> {
    let spelled: Vec<String> = tokens.iter().map(|t| respell(t)).collect();
    // The last id of a spelling wins, as in a Python dict built in id order.
    let vocab: HashMap<&str, usize> = spelled
        .iter()
        .enumerate()
        .map(|(id, t)| (t.as_str(), id))
        .collect();
    let merges = match meta.get("tokenizer.ggml.merges") {
        Some(_) => file_merges(meta)?,
        None => merges_from_vocab(&spelled, &vocab).map_err(|e| meta.fail(e))?,
    };
    // Added tokens by id; a later rule overrides an earlier one's `special`.
    let mut added_by_id: BTreeMap<usize, (&str, bool)> = BTreeMap::new();
    let named = specials
        .iter()
        .flatten()
        .map(|&id| tokens[id as usize])
        .chain(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]);
    for tok in named {
        if let Some(&id) = vocab.get(tok) {
            added_by_id.insert(id, (tok, true));
        }
    }
    for (tok, ty) in tokens.iter().zip(types) {
        if *ty == CONTROL
            && let Some(&id) = vocab.get(tok)
        {
            added_by_id.insert(id, (tok, true));
        }
    }
    for (tok, ty) in tokens.iter().zip(types) {
        if *ty == USER_DEFINED
            && let Some(&id) = vocab.get(tok)
        {
            added_by_id.insert(id, (tok, false));
        }
    }
    let added_tokens: Vec<Value> = added_by_id
        .into_iter()
        .map(|(id, (tok, special))| added(id, tok, special))
        .collect();
    let unk_token = unk.map_or("<unk>", |id| tokens[id as usize]);
    let vocab: Map<String, Value> = vocab
        .into_iter()
        .map(|(t, id)| (t.to_string(), json!(id)))
        .collect();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"}
        ]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk_token, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_tokens_are_respelled_and_others_kept() {
        assert_eq!(respell("  "), "▁▁");
        assert_eq!(respell(" \t"), "▁▁");
        assert_eq!(respell("\n\n"), "\n\n");
        assert_eq!(respell(" a"), " a");
    }

    #[test]
    fn merges_follow_vocabulary_order_longest_left_first() {
        let spelled: Vec<String> = ["a", "b", "c", "ab", "abc", "bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let vocab: HashMap<&str, usize> = spelled
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        let merges = merges_from_vocab(&spelled, &vocab).expect("short tokens");
        assert_eq!(
            merges,
            vec![
                json!(["a", "b"]),
                json!(["ab", "c"]),
                json!(["a", "bc"]),
                json!(["b", "c"])
            ]
        );
    }

    #[test]
    fn a_huge_token_is_refused_not_split() {
        let spelled = vec!["a".to_string(), "a".repeat(MAX_TOKEN_BYTES + 1)];
        let vocab: HashMap<&str, usize> = spelled
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        let err = merges_from_vocab(&spelled, &vocab).unwrap_err();
        assert!(err.contains("tokenizer.ggml.tokens[1]"), "{err}");
    }
}
