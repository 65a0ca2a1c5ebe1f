//! `adapter_config.json` in Hugging Face PEFT's format.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{PeftError, Result};

/// The PEFT methods this crate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PeftType {
    /// Soft prompt (Lester et al. 2021).
    PromptTuning,
    /// Per-layer key/value prefix (Li & Liang 2021; P-tuning v2 without the MLP).
    PrefixTuning,
}

/// The fields of `adapter_config.json` that PEFT writes for prompt and prefix tuning. Unknown
/// keys are kept in `extra` and written back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Method.
    pub peft_type: PeftType,
    /// Task; `CAUSAL_LM` for decoder-only models.
    #[serde(default)]
    pub task_type: Option<String>,
    /// Number of virtual tokens (prompt) or prefix slots (prefix).
    pub num_virtual_tokens: usize,
    /// Width of one virtual token: the hidden size (prompt) or `kv_heads · head_dim` (prefix).
    #[serde(default)]
    pub token_dim: Option<usize>,
    /// Always 1 for decoder-only models.
    #[serde(default)]
    pub num_transformer_submodules: Option<usize>,
    /// Attention heads (key/value heads for prefix tuning on GQA models).
    #[serde(default)]
    pub num_attention_heads: Option<usize>,
    /// Decoder layers.
    #[serde(default)]
    pub num_layers: Option<usize>,
    /// Prompt tuning: `RANDOM`, `SAMPLE_VOCAB` or `TEXT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tuning_init: Option<String>,
    /// Prompt tuning: the init text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tuning_init_text: Option<String>,
    /// Prompt tuning: the tokenizer of the init text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_name_or_path: Option<String>,
    /// Prefix tuning: hidden width of the reparameterisation MLP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_hidden_size: Option<usize>,
    /// Prefix tuning: whether the prefix was trained through the MLP (the saved tensor is always
    /// the computed prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_projection: Option<bool>,
    /// The base model.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Written as `true`: the file holds an inference-ready adapter.
    #[serde(default)]
    pub inference_mode: bool,
    /// Everything else PEFT writes (`peft_version`, `revision`, `auto_mapping`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl AdapterConfig {
    /// Reads `adapter_config.json`, naming the file and field on error.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| PeftError::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            PeftError::malformed(
                path,
                format!(
                    "invalid JSON at line {}, column {}: {e}",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let obj = value
            .as_object()
            .ok_or_else(|| PeftError::malformed(path, "top level is not a JSON object"))?;
        let peft_type = obj
            .get("peft_type")
            .and_then(Value::as_str)
            .unwrap_or("<missing>");
        if !matches!(peft_type, "PROMPT_TUNING" | "PREFIX_TUNING") {
            return Err(PeftError::Unsupported {
                path: path.to_path_buf(),
                what: format!(
                    "peft_type `{peft_type}` is not supported (PROMPT_TUNING and PREFIX_TUNING are)"
                ),
            });
        }
        serde_json::from_value(value)
            .map_err(|e| PeftError::malformed(path, format!("invalid field: {e}")))
    }

    /// The JSON PEFT would write: keys sorted, two-space indentation, trailing newline.
    pub fn to_json(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        let sorted: std::collections::BTreeMap<String, Value> = match value {
            Value::Object(m) => m.into_iter().collect(),
            _ => Default::default(),
        };
        let mut s = serde_json::to_string_pretty(&sorted).unwrap_or_default();
        s.push('\n');
        s
    }
}
