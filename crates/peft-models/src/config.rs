//! The configuration of a Llama-family decoder, read from GGUF metadata or a Hugging Face
//! `config.json`.

use std::path::Path;

use serde_json::Value;

use crate::{
    error::{ModelError, Result},
    gguf::{GgufFile, MetaValue},
};

/// Hyper-parameters of a Llama-family decoder (Llama, SmolLM, Mistral, Qwen2).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LlamaConfig {
    /// Architecture name as the checkpoint spells it (`llama`, `qwen2`, …).
    pub architecture: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub num_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Longest sequence (positions) the model supports.
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections have a bias (Qwen2).
    pub attention_bias: bool,
}

impl LlamaConfig {
    /// Checks the invariants the model relies on.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ModelError::config(path, field, "must be positive"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(ModelError::config(
                path,
                "num_key_value_heads",
                format!(
                    "{} query heads are not a multiple of {} key/value heads",
                    self.num_heads, self.num_kv_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ModelError::config(
                path,
                "head_dim",
                format!("{} is odd; RoPE needs pairs", self.head_dim),
            ));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(ModelError::config(
                path,
                "rope_theta",
                format!("{} is not a positive number", self.rope_theta),
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(ModelError::config(
                path,
                "rms_norm_eps",
                format!("{} is not a positive number", self.rms_norm_eps),
            ));
        }
        // Bound the sizes so a crafted header cannot request an absurd allocation.
        let params = (self.vocab_size as u128) * (self.hidden_size as u128)
            + (self.num_layers as u128)
                * (self.hidden_size as u128)
                * (3 * self.intermediate_size as u128
                    + 2 * (self.num_heads + self.num_kv_heads) as u128 * self.head_dim as u128);
        if params > 1u128 << 40 || self.max_position_embeddings > 1 << 24 {
            return Err(ModelError::config(
                path,
                "(sizes)",
                "the configuration describes an implausibly large model",
            ));
        }
        Ok(())
    }

    /// Number of parameters of the model this configuration describes.
    pub fn num_parameters(&self) -> usize {
        let (h, kv) = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        let attn = self.hidden_size * (h + 2 * kv) + h * self.hidden_size;
        let bias = if self.attention_bias { h + 2 * kv } else { 0 };
        let mlp = 3 * self.hidden_size * self.intermediate_size;
        let layer = attn + bias + mlp + 2 * self.hidden_size;
        let embed = self.vocab_size * self.hidden_size;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.num_layers * layer + self.hidden_size
    }

    /// Reads the configuration from a GGUF file's metadata (`{arch}.block_count`, …).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = file.path();
        let arch = file.architecture()?.to_string();
        if !matches!(arch.as_str(), "llama" | "qwen2") {
            return Err(ModelError::config(
                path,
                "general.architecture",
                format!("`{arch}` is not a Llama-family architecture (llama, qwen2)"),
            ));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let uint = |k: &str| -> Result<Option<usize>> {
            match file.meta(&key(k)) {
                None => Ok(None),
                Some(v) => v.as_u64().map(|v| Some(v as usize)).ok_or_else(|| {
                    ModelError::config(path, key(k), format!("{v} is not an unsigned integer"))
                }),
            }
        };
        let float = |k: &str| -> Result<Option<f64>> {
            match file.meta(&key(k)) {
                None => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                    ModelError::config(path, key(k), format!("{v} is not a number"))
                }),
            }
        };
        let required =
            |k: &str| uint(k)?.ok_or_else(|| ModelError::config(path, key(k), "missing"));
        if let Some(kind) = file
            .meta(&key("rope.scaling.type"))
            .and_then(MetaValue::as_str)
            && kind != "none"
        {
            return Err(ModelError::config(
                path,
                key("rope.scaling.type"),
                format!("RoPE scaling `{kind}` is not supported"),
            ));
        }
        let hidden = required("embedding_length")?;
        let heads = required("attention.head_count")?;
        let embed =
            file.header()
                .tensor("token_embd.weight")
                .ok_or_else(|| ModelError::MissingTensor {
                    path: path.to_path_buf(),
                    tensor: "token_embd.weight".into(),
                })?;
        let vocab = match uint("vocab_size")? {
            Some(v) => v,
            None => embed.dims.get(1).copied().unwrap_or(0) as usize,
        };
        let head_dim = match uint("attention.key_length")? {
            Some(d) => d,
            None if heads > 0 => hidden / heads,
            None => 0,
        };
        let config = Self {
            architecture: arch.clone(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: required("feed_forward_length")?,
            num_layers: required("block_count")?,
            num_heads: heads,
            num_kv_heads: uint("attention.head_count_kv")?.unwrap_or(heads),
            head_dim,
            rope_theta: float("rope.freq_base")?.unwrap_or(10_000.0),
            rms_norm_eps: float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
            max_position_embeddings: required("context_length")?,
            tie_word_embeddings: file.header().tensor("output.weight").is_none(),
            attention_bias: file.header().tensor("blk.0.attn_q.bias").is_some(),
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| {
            ModelError::malformed(
                path,
                format!(
                    "invalid JSON at line {}, column {}: {e}",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let obj = json
            .as_object()
            .ok_or_else(|| ModelError::malformed(path, "top level is not a JSON object"))?;
        let model_type = obj
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("llama")
            .to_string();
        if !matches!(model_type.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(ModelError::config(
                path,
                "model_type",
                format!("`{model_type}` is not a Llama-family model (llama, mistral, qwen2)"),
            ));
        }
        let uint = |k: &str| -> Result<Option<usize>> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_u64().map(|v| Some(v as usize)).ok_or_else(|| {
                    ModelError::config(path, k, format!("{v} is not an unsigned integer"))
                }),
            }
        };
        let float = |k: &str| -> Result<Option<f64>> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| ModelError::config(path, k, format!("{v} is not a number"))),
            }
        };
        let boolean = |k: &str| -> Result<Option<bool>> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_bool()
                    .map(Some)
                    .ok_or_else(|| ModelError::config(path, k, format!("{v} is not a bool"))),
            }
        };
        let required = |k: &str| uint(k)?.ok_or_else(|| ModelError::config(path, k, "missing"));
        if let Some(scaling) = obj.get("rope_scaling").filter(|v| !v.is_null()) {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("?");
            if kind != "default" {
                return Err(ModelError::config(
                    path,
                    "rope_scaling",
                    format!("RoPE scaling `{kind}` is not supported"),
                ));
            }
        }
        let rope_theta = match float("rope_theta")? {
            Some(t) => t,
            None => obj
                .get("rope_parameters")
                .and_then(|p| p.get("rope_theta"))
                .and_then(Value::as_f64)
                .unwrap_or(10_000.0),
        };
        let hidden = required("hidden_size")?;
        let heads = required("num_attention_heads")?;
        let config = Self {
            architecture: model_type.clone(),
            vocab_size: required("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: required("intermediate_size")?,
            num_layers: required("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: uint("num_key_value_heads")?.unwrap_or(heads),
            head_dim: match uint("head_dim")? {
                Some(d) => d,
                None if heads > 0 => hidden / heads,
                None => 0,
            },
            rope_theta,
            rms_norm_eps: float("rms_norm_eps")?.unwrap_or(1e-6),
            max_position_embeddings: required("max_position_embeddings")?,
            tie_word_embeddings: boolean("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: boolean("attention_bias")?.unwrap_or(model_type == "qwen2"),
        };
        config.validate(path)?;
        Ok(config)
    }
}
