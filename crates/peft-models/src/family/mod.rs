//! The decoder families: each is one module that maps its checkpoints' configuration (Hugging
//! Face `config.json`, GGUF metadata) onto [`DecoderConfig`] and [`Features`](crate::config::Features), and names the
//! weights its checkpoints spell differently. The decoder itself ([`crate::decoder`]) reads only
//! the configuration, never the family; nothing outside this crate branches on one.
//!
//! | family | Hugging Face `model_type` | GGUF `general.architecture` |
//! |---|---|---|
//! | [`Family::Llama`] (Llama 2/3, SmolLM, Mistral) | `llama`, `mistral` | `llama` |
//! | [`Family::Qwen2`] (Qwen 2, 2.5) | `qwen2` | `qwen2` |
//! | [`Family::Qwen3`] | `qwen3` | `qwen3` |
//! | [`Family::Gemma3`] (text) | `gemma3_text` | `gemma3` |

mod gemma3;
mod llama;
mod qwen2;
mod qwen3;

use crate::{
    config::{DecoderConfig, GgufMeta, HfFields},
    error::Result,
    source::LayerWeight,
};

/// A family of decoders sharing one layout.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Family {
    /// Llama 2/3, SmolLM, Mistral: pre-norms, SwiGLU, rotate-half RoPE (Llama 3 scaling).
    #[default]
    Llama,
    /// Qwen 2 / 2.5: the Llama layout with biased q/k/v projections.
    Qwen2,
    /// Qwen 3: per-head RMSNorm of queries and keys, head_dim independent of the width.
    Qwen3,
    /// Gemma 3 (text): scaled embeddings, `(1 + w)` norms around attention and MLP, GeGLU,
    /// per-head q/k norms, sliding-window layers with their own RoPE base, tied head.
    Gemma3,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 4] = [Family::Llama, Family::Qwen2, Family::Qwen3, Family::Gemma3];
    /// The Hugging Face `model_type`s read.
    pub const HF_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "gemma3_text"];
    /// The GGUF architectures read.
    pub const GGUF_ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "gemma3"];

    /// The family of a Hugging Face `model_type`.
    pub fn from_hf_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "llama" | "mistral" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            "qwen3" => Some(Self::Qwen3),
            "gemma3_text" => Some(Self::Gemma3),
            _ => None,
        }
    }

    /// The family of a GGUF `general.architecture`.
    pub fn from_gguf_architecture(arch: &str) -> Option<Self> {
        match arch {
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            "qwen3" => Some(Self::Qwen3),
            "gemma3" => Some(Self::Gemma3),
            _ => None,
        }
    }

    /// A short name (`llama`, `qwen2`, `qwen3`, `gemma3`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma3 => "gemma3",
        }
    }

    /// Reads what the family adds to the shared fields of a `config.json`.
    pub(crate) fn read_hf(self, fields: &HfFields<'_>, config: &mut DecoderConfig) -> Result<()> {
        if config
            .features
            .layer_kinds
            .contains(&crate::config::AttentionKind::Sliding)
        {
            config.features.sliding_window = fields.uint("sliding_window")?;
        }
        match self {
            Self::Llama => llama::read_hf(fields, config),
            Self::Qwen2 => qwen2::read_hf(fields, config),
            Self::Qwen3 => qwen3::read_hf(fields, config),
            Self::Gemma3 => gemma3::read_hf(fields, config),
        }
    }

    /// Reads what the family adds to the shared GGUF metadata.
    pub(crate) fn read_gguf(self, meta: &GgufMeta<'_>, config: &mut DecoderConfig) -> Result<()> {
        match self {
            Self::Llama => llama::read_gguf(meta, config),
            Self::Qwen2 | Self::Qwen3 => {
                config.features.rope_scaling = meta.rope_scaling()?;
                config.features.qk_norm = meta
                    .file
                    .header()
                    .tensor("blk.0.attn_q_norm.weight")
                    .is_some();
                Ok(())
            }
            Self::Gemma3 => gemma3::read_gguf(meta, config),
        }
    }

    /// The Hugging Face name of a layer weight, after `model.layers.{i}.`.
    pub fn hf_layer_name(self, weight: LayerWeight) -> &'static str {
        match self {
            Self::Gemma3 => gemma3::hf_layer_name(weight),
            _ => llama::hf_layer_name(weight),
        }
    }

    /// What llama.cpp's converter added to this family's RMSNorm weights (Gemma stores `1 + w`
    /// in GGUF); a GGUF source subtracts it to serve Hugging Face values.
    pub fn gguf_norm_shift(self) -> f32 {
        match self {
            Self::Gemma3 => 1.0,
            _ => 0.0,
        }
    }

    /// Whether llama.cpp's converter permuted this family's Q/K rows to interleaved pairs.
    pub fn gguf_rotary_permuted(self) -> bool {
        self == Self::Llama
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
