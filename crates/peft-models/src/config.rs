//! The configuration of a decoder, read from GGUF metadata or a Hugging Face `config.json`.
//!
//! The fields every family shares are read here; what a family adds or spells differently
//! (Gemma 3's sandwich norms, Qwen 3's head_dim default, Llama 3's RoPE scaling…) is read by its
//! module in [`crate::family`] into [`Features`].

use std::path::Path;

use serde_json::{Map, Value};

use crate::{
    error::{ModelError, Result},
    family::Family,
    gguf::{GgufFile, MetaValue},
};

/// Hyper-parameters of a decoder-only transformer of one of the supported families.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DecoderConfig {
    /// Architecture name as the checkpoint spells it (`llama`, `qwen2`, `gemma3_text`, …).
    pub architecture: String,
    /// The family the architecture belongs to.
    #[serde(default)]
    pub family: Family,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Gated MLP inner width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub num_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// RoPE base frequency (of the global-attention layers where the family has two kinds).
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Longest sequence (positions) the model supports.
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections have a bias (Qwen2).
    pub attention_bias: bool,
    /// What the family adds to the Llama layout.
    #[serde(default)]
    pub features: Features,
}

/// The parts of a decoder that differ between families; the default is the Llama layout
/// (pre-norms only, SwiGLU, unscaled embeddings, `1/√head_dim` attention, every layer global).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Features {
    /// RoPE frequency scaling of the global layers.
    pub rope_scaling: RopeScaling,
    /// RoPE base of the sliding-window layers (Gemma 3's local base); `None`: [`DecoderConfig::rope_theta`].
    pub local_rope_theta: Option<f64>,
    /// Keys a sliding-window layer sees: key `j` is visible from query `i` when `i − j <` this.
    pub sliding_window: Option<usize>,
    /// The attention kind of each layer; empty means every layer is global.
    pub layer_kinds: Vec<AttentionKind>,
    /// Per-head RMSNorm of queries and keys before RoPE (Qwen 3, Gemma 3).
    pub qk_norm: bool,
    /// Norms after attention and after the MLP, before each residual add (Gemma 2/3).
    pub sandwich_norms: bool,
    /// The gate's activation in the MLP.
    pub activation: Activation,
    /// Multiplier of the token embeddings (Gemma: `√hidden`); `None`: 1.
    pub embedding_scale: Option<f64>,
    /// Multiplier of `q·k` before the softmax; `None`: `1/√head_dim`.
    pub attention_scale: Option<f64>,
    /// Added to every stored RMSNorm weight to get the scale (Gemma stores `w` and multiplies by
    /// `1 + w`); 0 elsewhere.
    pub norm_weight_offset: f64,
}

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub enum RopeScaling {
    /// Plain `1/θ^(2i/d)`.
    #[default]
    None,
    /// Every frequency divided by `factor` (position interpolation).
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3's scaling: long wavelengths divided by `factor`, short ones kept, a smooth
    /// blend between (`transformers`' `_compute_llama3_parameters`).
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are divided by `factor`.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context the model was pre-trained with.
        original_max_position_embeddings: f64,
    },
    /// One divisor per frequency, as llama.cpp stores Llama 3 scaling (`rope_freqs.weight`).
    Factors(Vec<f32>),
}

/// Which keys a layer attends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AttentionKind {
    /// Every earlier key.
    Global,
    /// The keys within [`Features::sliding_window`] positions.
    Sliding,
}

/// The activation of the gate in the gated MLP `down(act(gate(x)) · up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Activation {
    /// `x · sigmoid(x)` (SwiGLU).
    #[default]
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`, GeGLU).
    GeluTanh,
}

impl DecoderConfig {
    /// The attention kind of layer `i`.
    pub fn layer_kind(&self, i: usize) -> AttentionKind {
        self.features
            .layer_kinds
            .get(i)
            .copied()
            .unwrap_or(AttentionKind::Global)
    }

    /// The sliding window of layer `i`, `None` for a global layer.
    pub fn window(&self, i: usize) -> Option<usize> {
        match self.layer_kind(i) {
            AttentionKind::Global => None,
            AttentionKind::Sliding => self.features.sliding_window,
        }
    }

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
        let f = &self.features;
        let positive_floats = [
            ("rope_theta", Some(self.rope_theta)),
            ("rms_norm_eps", Some(self.rms_norm_eps)),
            ("rope_local_base_freq", f.local_rope_theta),
            ("embedding scale", f.embedding_scale),
            ("query_pre_attn_scalar", f.attention_scale),
        ];
        for (field, value) in positive_floats {
            if let Some(v) = value
                && !(v > 0.0 && v.is_finite())
            {
                return Err(ModelError::config(
                    path,
                    field,
                    format!("{v} is not a positive number"),
                ));
            }
        }
        match &f.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => positive_scaling(path, &[*factor])?,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive_scaling(
                    path,
                    &[
                        *factor,
                        *low_freq_factor,
                        *high_freq_factor,
                        *original_max_position_embeddings,
                    ],
                )?;
                if high_freq_factor <= low_freq_factor {
                    return Err(ModelError::config(
                        path,
                        "rope_scaling.high_freq_factor",
                        format!("{high_freq_factor} must exceed low_freq_factor {low_freq_factor}"),
                    ));
                }
            }
            RopeScaling::Factors(factors) => {
                if factors.len() != self.head_dim / 2 {
                    return Err(ModelError::config(
                        path,
                        "rope_freqs.weight",
                        format!(
                            "{} factors for {} frequencies",
                            factors.len(),
                            self.head_dim / 2
                        ),
                    ));
                }
                positive_scaling(path, &factors.iter().map(|&x| x as f64).collect::<Vec<_>>())?;
            }
        }
        if !f.layer_kinds.is_empty() && f.layer_kinds.len() != self.num_layers {
            return Err(ModelError::config(
                path,
                "layer_types",
                format!(
                    "{} entries for {} layers",
                    f.layer_kinds.len(),
                    self.num_layers
                ),
            ));
        }
        if f.layer_kinds.contains(&AttentionKind::Sliding)
            && f.sliding_window.is_none_or(|w| w == 0)
        {
            return Err(ModelError::config(
                path,
                "sliding_window",
                "sliding-window layers need a positive window",
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
        let qk_norm = if self.features.qk_norm {
            2 * self.head_dim
        } else {
            0
        };
        let norms = if self.features.sandwich_norms { 4 } else { 2 } * self.hidden_size;
        let mlp = 3 * self.hidden_size * self.intermediate_size;
        let layer = attn + bias + qk_norm + mlp + norms;
        let embed = self.vocab_size * self.hidden_size;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.num_layers * layer + self.hidden_size
    }

    /// Reads the configuration from a GGUF file's metadata (`{arch}.block_count`, …).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = file.path();
        let arch = file.architecture()?.to_string();
        let family = Family::from_gguf_architecture(&arch).ok_or_else(|| {
            ModelError::config(
                path,
                "general.architecture",
                format!(
                    "`{arch}` is not a supported architecture ({})",
                    Family::GGUF_ARCHITECTURES.join(", ")
                ),
            )
        })?;
        let meta = GgufMeta { file, arch: &arch };
        let hidden = meta.required("embedding_length")?;
        let heads = meta.required("attention.head_count")?;
        let embed =
            file.header()
                .tensor("token_embd.weight")
                .ok_or_else(|| ModelError::MissingTensor {
                    path: path.to_path_buf(),
                    tensor: "token_embd.weight".into(),
                })?;
        let vocab = match meta.uint("vocab_size")? {
            Some(v) => v,
            None => embed.dims.get(1).copied().unwrap_or(0) as usize,
        };
        let head_dim = match meta.uint("attention.key_length")? {
            Some(d) => d,
            None if heads > 0 => hidden / heads,
            None => 0,
        };
        let mut config = Self {
            architecture: arch.clone(),
            family,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: meta.required("feed_forward_length")?,
            num_layers: meta.required("block_count")?,
            num_heads: heads,
            num_kv_heads: meta.uint("attention.head_count_kv")?.unwrap_or(heads),
            head_dim,
            rope_theta: meta.float("rope.freq_base")?.unwrap_or(10_000.0),
            rms_norm_eps: meta
                .float("attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-5),
            max_position_embeddings: meta.required("context_length")?,
            tie_word_embeddings: file.header().tensor("output.weight").is_none(),
            attention_bias: file.header().tensor("blk.0.attn_q.bias").is_some(),
            features: Features::default(),
        };
        family.read_gguf(&meta, &mut config)?;
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
        let fields = HfFields { obj, path };
        let model_type = obj
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("llama")
            .to_string();
        let family = Family::from_hf_model_type(&model_type).ok_or_else(|| {
            ModelError::config(
                path,
                "model_type",
                format!(
                    "`{model_type}` is not a supported model type ({})",
                    Family::HF_MODEL_TYPES.join(", ")
                ),
            )
        })?;
        let hidden = fields.required("hidden_size")?;
        let heads = fields.required("num_attention_heads")?;
        let mut config = Self {
            architecture: model_type.clone(),
            family,
            vocab_size: fields.required("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: fields.required("intermediate_size")?,
            num_layers: fields.required("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: fields.uint("num_key_value_heads")?.unwrap_or(heads),
            head_dim: match fields.uint("head_dim")? {
                Some(d) => d,
                None if heads > 0 => hidden / heads,
                None => 0,
            },
            rope_theta: fields.rope_theta("full_attention")?.unwrap_or(10_000.0),
            rms_norm_eps: fields.float("rms_norm_eps")?.unwrap_or(1e-6),
            max_position_embeddings: fields.required("max_position_embeddings")?,
            tie_word_embeddings: fields.boolean("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: fields.boolean("attention_bias")?.unwrap_or(false),
            features: Features::default(),
        };
        config.features.rope_scaling = fields.rope_scaling("full_attention")?;
        config.features.layer_kinds = fields.layer_types()?;
        family.read_hf(&fields, &mut config)?;
        config.validate(path)?;
        Ok(config)
    }
}

fn positive_scaling(path: &Path, values: &[f64]) -> Result<()> {
    match values.iter().find(|v| !(**v > 0.0 && v.is_finite())) {
        Some(v) => Err(ModelError::config(
            path,
            "rope_scaling",
            format!("{v} is not a positive number"),
        )),
        None => Ok(()),
    }
}

/// Typed access to the fields of a `config.json`, each error naming the file and field.
pub(crate) struct HfFields<'a> {
    pub obj: &'a Map<String, Value>,
    pub path: &'a Path,
}

impl HfFields<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.obj.get(k).filter(|v| !v.is_null())
    }

    pub fn uint(&self, k: &str) -> Result<Option<usize>> {
        self.get(k)
            .map(|v| {
                v.as_u64().map(|v| v as usize).ok_or_else(|| {
                    ModelError::config(self.path, k, format!("{v} is not an unsigned integer"))
                })
            })
            .transpose()
    }

    pub fn float(&self, k: &str) -> Result<Option<f64>> {
        self.get(k)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| ModelError::config(self.path, k, format!("{v} is not a number")))
            })
            .transpose()
    }

    pub fn boolean(&self, k: &str) -> Result<Option<bool>> {
        self.get(k)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| ModelError::config(self.path, k, format!("{v} is not a bool")))
            })
            .transpose()
    }

    pub fn string(&self, k: &str) -> Result<Option<&str>> {
        self.get(k)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| ModelError::config(self.path, k, format!("{v} is not a string")))
            })
            .transpose()
    }

    pub fn required(&self, k: &str) -> Result<usize> {
        self.uint(k)?
            .ok_or_else(|| ModelError::config(self.path, k, "missing"))
    }

    /// The RoPE parameters of one layer kind, wherever this transformers version put them:
    /// `rope_parameters` (flat, or keyed by layer type), else `rope_scaling` beside a
    /// top-level `rope_theta`. Returns the object and the field name for errors.
    fn rope_parameters(&self, kind: &str) -> Option<(&Map<String, Value>, String)> {
        if let Some(p) = self.get("rope_parameters").and_then(Value::as_object) {
            if let Some(per_kind) = p.get(kind).and_then(Value::as_object) {
                return Some((per_kind, format!("rope_parameters.{kind}")));
            }
            if !p.contains_key("full_attention") && !p.contains_key("sliding_attention") {
                return Some((p, "rope_parameters".into()));
            }
            return None;
        }
        self.get("rope_scaling")
            .and_then(Value::as_object)
            .map(|s| (s, "rope_scaling".into()))
    }

    /// The RoPE base of one layer kind (`full_attention` or `sliding_attention`).
    pub fn rope_theta(&self, kind: &str) -> Result<Option<f64>> {
        if let Some((p, field)) = self.rope_parameters(kind)
            && let Some(v) = p.get("rope_theta").filter(|v| !v.is_null())
        {
            return v.as_f64().map(Some).ok_or_else(|| {
                ModelError::config(
                    self.path,
                    format!("{field}.rope_theta"),
                    format!("{v} is not a number"),
                )
            });
        }
        if kind == "full_attention" {
            self.float("rope_theta")
        } else {
            Ok(None)
        }
    }

    /// The RoPE scaling of one layer kind.
    pub fn rope_scaling(&self, kind: &str) -> Result<RopeScaling> {
        let Some((p, field)) = self.rope_parameters(kind) else {
            return Ok(RopeScaling::None);
        };
        let kind = p
            .get("rope_type")
            .or_else(|| p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let number = |k: &str| -> Result<f64> {
            p.get(k).and_then(Value::as_f64).ok_or_else(|| {
                ModelError::config(self.path, format!("{field}.{k}"), "missing or not a number")
            })
        };
        match kind {
            "default" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear {
                factor: number("factor")?,
            }),
            "llama3" => Ok(RopeScaling::Llama3 {
                factor: number("factor")?,
                low_freq_factor: number("low_freq_factor")?,
                high_freq_factor: number("high_freq_factor")?,
                original_max_position_embeddings: number("original_max_position_embeddings")?,
            }),
            other => Err(ModelError::config(
                self.path,
                format!("{field}.rope_type"),
                format!("RoPE scaling `{other}` is not supported (default, linear, llama3)"),
            )),
        }
    }

    /// `layer_types` (`full_attention` / `sliding_attention` per layer); empty when absent.
    pub fn layer_types(&self) -> Result<Vec<AttentionKind>> {
        let Some(v) = self.get("layer_types") else {
            return Ok(Vec::new());
        };
        let list = v.as_array().ok_or_else(|| {
            ModelError::config(self.path, "layer_types", format!("{v} is not a list"))
        })?;
        list.iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                Some("full_attention") => Ok(AttentionKind::Global),
                Some("sliding_attention") => Ok(AttentionKind::Sliding),
                _ => Err(ModelError::config(
                    self.path,
                    format!("layer_types[{i}]"),
                    format!("{t} is not `full_attention` or `sliding_attention`"),
                )),
            })
            .collect()
    }
}

/// Typed access to `{arch}.*` metadata of a GGUF file, each error naming the key.
pub(crate) struct GgufMeta<'a> {
    pub file: &'a GgufFile,
    pub arch: &'a str,
}

impl GgufMeta<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn uint(&self, k: &str) -> Result<Option<usize>> {
        match self.file.meta(&self.key(k)) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|v| Some(v as usize)).ok_or_else(|| {
                ModelError::config(
                    self.path(),
                    self.key(k),
                    format!("{v} is not an unsigned integer"),
                )
            }),
        }
    }

    pub fn float(&self, k: &str) -> Result<Option<f64>> {
        match self.file.meta(&self.key(k)) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                ModelError::config(self.path(), self.key(k), format!("{v} is not a number"))
            }),
        }
    }

    pub fn string(&self, k: &str) -> Option<&str> {
        self.file.meta(&self.key(k)).and_then(MetaValue::as_str)
    }

    pub fn required(&self, k: &str) -> Result<usize> {
        self.uint(k)?
            .ok_or_else(|| ModelError::config(self.path(), self.key(k), "missing"))
    }

    /// `{arch}.rope.scaling.type` with its factor (`linear`), or an error naming any other kind.
    pub fn rope_scaling(&self) -> Result<RopeScaling> {
        match self.string("rope.scaling.type") {
            None | Some("none") => Ok(RopeScaling::None),
            Some("linear") => {
                let factor = self.float("rope.scaling.factor")?.ok_or_else(|| {
                    ModelError::config(self.path(), self.key("rope.scaling.factor"), "missing")
                })?;
                Ok(RopeScaling::Linear { factor })
            }
            Some(kind) => Err(ModelError::config(
                self.path(),
                self.key("rope.scaling.type"),
                format!("RoPE scaling `{kind}` is not supported (none, linear)"),
            )),
        }
    }
}
