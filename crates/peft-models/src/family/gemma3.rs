//! Gemma 3 (text): embeddings scaled by `√hidden`, RMSNorms that multiply by `1 + w`, norms
//! before and after both attention and the MLP, GeGLU (tanh-approximated GELU), per-head q/k
//! norms, `query_pre_attn_scalar` for the attention scale, sliding-window layers (five of every
//! six by default) with their own RoPE base, and a tied head.

use crate::{
    config::{Activation, AttentionKind, DecoderConfig, Features, GgufMeta, HfFields},
    error::{ModelError, Result},
    source::LayerWeight,
};

/// Layers per global layer when the checkpoint does not list them (transformers'
/// `sliding_window_pattern` default; llama.cpp's fixed pattern for `gemma3`).
const PATTERN: usize = 6;
/// RoPE base of the sliding layers when the checkpoint does not give one.
const LOCAL_ROPE_THETA: f64 = 10_000.0;

/// The features with transformers' defaults for a model of width `hidden`.
fn features(hidden: usize) -> Features {
    Features {
        qk_norm: true,
        sandwich_norms: true,
        activation: Activation::GeluTanh,
        embedding_scale: Some((hidden as f64).sqrt()),
        norm_weight_offset: 1.0,
        local_rope_theta: Some(LOCAL_ROPE_THETA),
        ..Features::default()
    }
}

/// Every `PATTERN`-th layer global, the others sliding.
fn pattern(layers: usize, every: usize) -> Vec<AttentionKind> {
    (0..layers)
        .map(|i| match (i + 1) % every {
            0 => AttentionKind::Global,
            _ => AttentionKind::Sliding,
        })
        .collect()
}

pub(super) fn read_hf(fields: &HfFields<'_>, config: &mut DecoderConfig) -> Result<()> {
    for field in ["final_logit_softcapping", "attn_logit_softcapping"] {
        if let Some(v) = fields.float(field)? {
            return Err(ModelError::config(
                fields.path,
                field,
                format!("soft-capping ({v}) is not supported (Gemma 3 has none)"),
            ));
        }
    }
    if fields.boolean("use_bidirectional_attention")? == Some(true) {
        return Err(ModelError::config(
            fields.path,
            "use_bidirectional_attention",
            "bidirectional attention (an encoder) is not a decoder this library tunes",
        ));
    }
    if let Some(act) = fields.string("hidden_activation")?
        && act != "gelu_pytorch_tanh"
    {
        return Err(ModelError::config(
            fields.path,
            "hidden_activation",
            format!("`{act}` is not supported (gelu_pytorch_tanh)"),
        ));
    }
    if fields.uint("head_dim")?.is_none() {
        config.head_dim = 256;
    }
    if fields.boolean("tie_word_embeddings")?.is_none() {
        config.tie_word_embeddings = true;
    }
    let layer_kinds = std::mem::take(&mut config.features.layer_kinds);
    let scaling = config.features.rope_scaling.clone();
    config.features = Features {
        rope_scaling: scaling,
        ..features(config.hidden_size)
    };
    config.features.layer_kinds = match layer_kinds.is_empty() {
        false => layer_kinds,
        true => {
            let every = fields.uint("sliding_window_pattern")?.unwrap_or(PATTERN);
            if every == 0 {
                return Err(ModelError::config(
                    fields.path,
                    "sliding_window_pattern",
                    "must be positive",
                ));
            }
            pattern(config.num_layers, every)
        }
    };
    config.features.sliding_window = Some(fields.uint("sliding_window")?.unwrap_or(4096));
    let scalar = fields.float("query_pre_attn_scalar")?.unwrap_or(256.0);
    config.features.attention_scale = Some(scalar.powf(-0.5));
    if let Some(local) = fields.rope_theta("sliding_attention")? {
        config.features.local_rope_theta = Some(local);
    } else if let Some(local) = fields.float("rope_local_base_freq")? {
        config.features.local_rope_theta = Some(local);
    }
    if fields.rope_scaling("sliding_attention")? != crate::config::RopeScaling::None {
        return Err(ModelError::config(
            fields.path,
            "rope_parameters.sliding_attention",
            "RoPE scaling on the sliding layers is not supported",
        ));
    }
    Ok(())
}

/// llama.cpp's `gemma3`: the window from metadata, the fixed five-to-one pattern, local base
/// 10 000, and `1/√head_dim` attention except for the 27B model (62 layers), which scales by
/// `1/√(hidden/heads)`.
pub(super) fn read_gguf(meta: &GgufMeta<'_>, config: &mut DecoderConfig) -> Result<()> {
    config.features = Features {
        rope_scaling: meta.rope_scaling()?,
        ..features(config.hidden_size)
    };
    config.features.layer_kinds = pattern(config.num_layers, PATTERN);
    config.features.sliding_window = Some(meta.uint("attention.sliding_window")?.unwrap_or(4096));
    let scalar = match config.num_layers {
        62 => config.hidden_size / config.num_heads,
        _ => config.head_dim,
    };
    config.features.attention_scale = Some((scalar as f64).powf(-0.5));
    Ok(())
}

pub(super) fn hf_layer_name(weight: LayerWeight) -> &'static str {
    match weight {
        LayerWeight::PostAttnNorm => "post_attention_layernorm.weight",
        LayerWeight::MlpNorm => "pre_feedforward_layernorm.weight",
        LayerWeight::PostMlpNorm => "post_feedforward_layernorm.weight",
        other => super::llama::hf_layer_name(other),
    }
}
