//! Reading and writing adapters in Hugging Face PEFT's layout: a directory with
//! `adapter_config.json` and `adapter_model.safetensors` holding the single tensor
//! `prompt_embeddings` — `[N, hidden]` for prompt tuning, `[N, layers·2·kv_heads·head_dim]`
//! for prefix tuning (the computed prefix, also when it was trained through the MLP).

use std::{collections::HashMap, path::Path};

use burn::tensor::{Tensor, TensorData, backend::Backend};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde_json::{Value, json};

use super::{Adapter, AdapterConfig, PeftType, describe_model};
use crate::{
    error::{PeftError, Result},
    fs::write_atomic,
    model::ModelDims,
    prefix::{Prefix, PrefixLayout},
    prompt::{PromptInit, SoftPrompt},
};

/// The file names PEFT uses.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file name.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The one tensor of prompt-learning adapters.
pub const TENSOR_NAME: &str = "prompt_embeddings";

/// Optional facts recorded in `adapter_config.json`.
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    /// `base_model_name_or_path`.
    pub base_model: Option<String>,
    /// How a soft prompt was initialised (`prompt_tuning_init`, `prompt_tuning_init_text`).
    pub prompt_init: Option<PromptInit>,
    /// `tokenizer_name_or_path` (for TEXT init).
    pub tokenizer: Option<String>,
}

/// Writes `adapter` (collapsed to its inference form) to `dir` in PEFT's layout. Each file is
/// written atomically; other files in `dir` are left alone.
pub fn save_adapter<B: Backend>(
    dir: &Path,
    adapter: &Adapter<B>,
    dims: &ModelDims,
    opts: &SaveOptions,
) -> Result<()> {
    adapter.check_fits(&dir.display().to_string(), dims)?;
    let n = adapter.num_virtual_tokens();
    let (flat, mut config) = match adapter {
        Adapter::Prompt(p) => (
            p.embeddings(),
            base_config(
                PeftType::PromptTuning,
                n,
                dims.hidden_size,
                dims.num_heads,
                dims,
            ),
        ),
        Adapter::Prefix(p) => {
            let layout = p.layout();
            let mut c = base_config(
                PeftType::PrefixTuning,
                n,
                layout.token_dim(),
                layout.kv_heads,
                dims,
            );
            c.prefix_projection = Some(p.is_reparameterised());
            c.encoder_hidden_size = Some(match &p.params {
                crate::prefix::PrefixParams::Mlp(m) => m.hidden.weight.dims()[1],
                crate::prefix::PrefixParams::Direct(_) => layout.token_dim(),
            });
            c.extra.insert("init_weights".into(), Value::Null);
            (p.flat(), c)
        }
    };
    if let Adapter::Prompt(_) = adapter {
        let init = opts
            .prompt_init
            .clone()
            .unwrap_or(PromptInit::Random { seed: 0 });
        config.prompt_tuning_init = Some(init.peft_name().into());
        if let PromptInit::Text(t) = &init {
            config.prompt_tuning_init_text = Some(t.clone());
            config.tokenizer_name_or_path =
                opts.tokenizer.clone().or_else(|| opts.base_model.clone());
        }
    }
    config.base_model_name_or_path = opts.base_model.clone();
    let [rows, cols] = flat.dims();
    let values: Vec<f32> = flat
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| PeftError::Invalid(format!("reading the adapter tensor: {e:?}")))?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, vec![rows, cols], &bytes)
        .map_err(|e| PeftError::Invalid(format!("building the safetensors view: {e}")))?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let st = safetensors::serialize([(TENSOR_NAME, view)], Some(meta))
        .map_err(|e| PeftError::Invalid(format!("serialising the adapter: {e}")))?;
    write_atomic(&dir.join(WEIGHTS_FILE), &st)?;
    write_atomic(&dir.join(CONFIG_FILE), config.to_json().as_bytes())
}

fn base_config(
    peft_type: PeftType,
    n: usize,
    token_dim: usize,
    heads: usize,
    dims: &ModelDims,
) -> AdapterConfig {
    let mut extra = serde_json::Map::new();
    extra.insert(
        "peft_version".into(),
        json!(concat!("burn-peft ", env!("CARGO_PKG_VERSION"))),
    );
    extra.insert("revision".into(), Value::Null);
    extra.insert("auto_mapping".into(), Value::Null);
    extra.insert("modules_to_save".into(), Value::Null);
    AdapterConfig {
        peft_type,
        task_type: Some("CAUSAL_LM".into()),
        num_virtual_tokens: n,
        token_dim: Some(token_dim),
        num_transformer_submodules: Some(1),
        num_attention_heads: Some(heads),
        num_layers: Some(dims.num_layers),
        prompt_tuning_init: None,
        prompt_tuning_init_text: None,
        tokenizer_name_or_path: None,
        encoder_hidden_size: None,
        prefix_projection: None,
        base_model_name_or_path: None,
        inference_mode: true,
        extra,
    }
}

/// Reads an adapter saved by PEFT (or by [`save_adapter`]) for a model of sizes `dims`.
///
/// A reparameterised prefix loads in its collapsed form, as in PEFT's inference mode. An adapter
/// made for other sizes is refused with an error that names both.
pub fn load_adapter<B: Backend>(
    dir: &Path,
    dims: &ModelDims,
    device: &B::Device,
) -> Result<(Adapter<B>, AdapterConfig)> {
    let config_path = dir.join(CONFIG_FILE);
    if !config_path.exists() {
        return Err(PeftError::io(
            &config_path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no adapter_config.json: not an adapter directory",
            ),
        ));
    }
    let config = AdapterConfig::read(&config_path)?;
    let unsupported = |what: String| PeftError::Unsupported {
        path: config_path.clone(),
        what,
    };
    if let Some(task) = config.task_type.as_deref().filter(|t| *t != "CAUSAL_LM") {
        return Err(unsupported(format!(
            "task_type `{task}`: only CAUSAL_LM adapters apply to a decoder-only model"
        )));
    }
    if config.num_transformer_submodules.is_some_and(|s| s != 1) {
        return Err(unsupported(
            "num_transformer_submodules != 1 (encoder-decoder adapters) is not supported".into(),
        ));
    }
    if config.num_virtual_tokens == 0 {
        return Err(PeftError::malformed(
            &config_path,
            "field `num_virtual_tokens` must be positive",
        ));
    }
    let adapter_name = dir.display().to_string();
    let incompatible = |adapter_dims: String| PeftError::Incompatible {
        adapter: adapter_name.clone(),
        adapter_dims,
        model_dims: describe_model(dims),
    };
    let n = config.num_virtual_tokens;
    let (expected_cols, layout) = match config.peft_type {
        PeftType::PromptTuning => {
            let width = config.token_dim.unwrap_or(dims.hidden_size);
            if width != dims.hidden_size {
                return Err(incompatible(format!(
                    "token_dim {width} (virtual tokens of width {width})"
                )));
            }
            (width, None)
        }
        PeftType::PrefixTuning => {
            let layers = config.num_layers.unwrap_or(dims.num_layers);
            let heads = config.num_attention_heads.unwrap_or(dims.num_kv_heads);
            let token_dim = config.token_dim.unwrap_or(dims.kv_width());
            if layers != dims.num_layers
                || heads != dims.num_kv_heads
                || token_dim != dims.kv_width()
            {
                return Err(incompatible(format!(
                    "num_layers {layers}, num_attention_heads {heads}, token_dim {token_dim} (prefix for {layers} layers × {heads} kv heads × head dim {})",
                    token_dim.checked_div(heads).unwrap_or(0)
                )));
            }
            let layout = PrefixLayout::of(dims);
            (layout.width(), Some(layout))
        }
    };
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights_path).map_err(|e| PeftError::io(&weights_path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| PeftError::malformed(&weights_path, format!("invalid safetensors: {e}")))?;
    let view = st.tensor(TENSOR_NAME).map_err(|_| {
        PeftError::malformed(
            &weights_path,
            format!(
                "no tensor `{TENSOR_NAME}` (found: {})",
                st.names().join(", ")
            ),
        )
    })?;
    if view.shape() != [n, expected_cols] {
        return Err(incompatible(format!(
            "tensor `{TENSOR_NAME}` of shape {:?} where {:?} was expected from its config",
            view.shape(),
            [n, expected_cols]
        )));
    }
    let values = to_f32(view.dtype(), view.data())
        .map_err(|what| PeftError::malformed(&weights_path, what))?;
    if values.iter().any(|v| !v.is_finite()) {
        return Err(PeftError::malformed(
            &weights_path,
            format!("tensor `{TENSOR_NAME}` holds NaN or infinite values"),
        ));
    }
    let flat = Tensor::<B, 2>::from_data(TensorData::new(values, [n, expected_cols]), device);
    let adapter = match layout {
        None => Adapter::Prompt(SoftPrompt::from_tensor(flat)),
        Some(layout) => Adapter::Prefix(Prefix::direct(flat, layout)),
    };
    Ok((adapter, config))
}

/// What an adapter directory holds, read without a model (for `peft inspect`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterSummary {
    /// The parsed configuration.
    pub config: AdapterConfig,
    /// Shape of `prompt_embeddings`.
    pub tensor_shape: Vec<usize>,
    /// Its dtype as safetensors names it.
    pub dtype: String,
    /// Number of stored values (the trainable count of a direct adapter).
    pub parameters: usize,
    /// Size of the weights file in bytes.
    pub file_bytes: u64,
}

impl AdapterSummary {
    /// Which models the adapter fits, in words.
    pub fn compatible_models(&self) -> String {
        let c = &self.config;
        let opt = |v: Option<usize>| v.map_or("?".to_string(), |v| v.to_string());
        match c.peft_type {
            PeftType::PromptTuning => {
                format!("decoder-only models with hidden size {}", opt(c.token_dim))
            }
            PeftType::PrefixTuning => {
                let head_dim = c
                    .token_dim
                    .zip(c.num_attention_heads)
                    .and_then(|(t, h)| t.checked_div(h));
                format!(
                    "decoder-only models with {} layers, {} key/value heads and head dim {}",
                    opt(c.num_layers),
                    opt(c.num_attention_heads),
                    opt(head_dim)
                )
            }
        }
    }
}

/// Reads an adapter directory's config and tensor header.
pub fn inspect_adapter(dir: &Path) -> Result<AdapterSummary> {
    let config = AdapterConfig::read(&dir.join(CONFIG_FILE))?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights_path).map_err(|e| PeftError::io(&weights_path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| PeftError::malformed(&weights_path, format!("invalid safetensors: {e}")))?;
    let view = st.tensor(TENSOR_NAME).map_err(|_| {
        PeftError::malformed(
            &weights_path,
            format!(
                "no tensor `{TENSOR_NAME}` (found: {})",
                st.names().join(", ")
            ),
        )
    })?;
    Ok(AdapterSummary {
        tensor_shape: view.shape().to_vec(),
        dtype: format!("{:?}", view.dtype()),
        parameters: view.shape().iter().product(),
        file_bytes: bytes.len() as u64,
        config,
    })
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> std::result::Result<Vec<f32>, String> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect(),
        other => {
            return Err(format!(
                "tensor `{TENSOR_NAME}` has dtype {other:?}; F32, F16 or BF16 expected"
            ));
        }
    })
}

/// IEEE half to f32 (exact).
fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = (h >> 10) & 0x1f;
    let frac = f32::from(h & 0x3ff);
    sign * match exp {
        0 => frac * 2f32.powi(-24),
        31 if frac == 0.0 => f32::INFINITY,
        31 => f32::NAN,
        e => (1.0 + frac / 1024.0) * 2f32.powi(i32::from(e) - 15),
    }
}
