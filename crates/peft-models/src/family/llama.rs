//! Llama 2/3, SmolLM and Mistral: the base layout every other family extends.

use crate::{
    config::{AttentionKind, DecoderConfig, GgufMeta, HfFields, RopeScaling},
    error::{ModelError, Result},
    source::LayerWeight,
};

pub(super) fn read_hf(fields: &HfFields<'_>, config: &mut DecoderConfig) -> Result<()> {
    // transformers' Mistral masks every layer to `sliding_window` keys when it is set.
    if config.architecture == "mistral"
        && let Some(window) = fields.uint("sliding_window")?
    {
        config.features.sliding_window = Some(window);
        config.features.layer_kinds = vec![AttentionKind::Sliding; config.num_layers];
    }
    Ok(())
}

/// llama.cpp writes Llama 3's scaling as one divisor per frequency, `rope_freqs.weight`.
pub(super) fn read_gguf(meta: &GgufMeta<'_>, config: &mut DecoderConfig) -> Result<()> {
    config.features.rope_scaling = meta.rope_scaling()?;
    if meta.file.header().tensor("rope_freqs.weight").is_some() {
        if config.features.rope_scaling != RopeScaling::None {
            return Err(ModelError::config(
                meta.path(),
                "rope_freqs.weight",
                "per-frequency factors beside another RoPE scaling",
            ));
        }
        let (_, factors) = meta.file.read_f32("rope_freqs.weight")?;
        config.features.rope_scaling = RopeScaling::Factors(factors);
    }
    Ok(())
}

pub(super) fn hf_layer_name(weight: LayerWeight) -> &'static str {
    match weight {
        LayerWeight::AttnNorm => "input_layernorm.weight",
        LayerWeight::Query => "self_attn.q_proj.weight",
        LayerWeight::Key => "self_attn.k_proj.weight",
        LayerWeight::Value => "self_attn.v_proj.weight",
        LayerWeight::Output => "self_attn.o_proj.weight",
        LayerWeight::QueryBias => "self_attn.q_proj.bias",
        LayerWeight::KeyBias => "self_attn.k_proj.bias",
        LayerWeight::ValueBias => "self_attn.v_proj.bias",
        LayerWeight::QueryNorm => "self_attn.q_norm.weight",
        LayerWeight::KeyNorm => "self_attn.k_norm.weight",
        LayerWeight::PostAttnNorm => "post_attention_norm.weight",
        LayerWeight::MlpNorm => "post_attention_layernorm.weight",
        LayerWeight::PostMlpNorm => "post_mlp_norm.weight",
        LayerWeight::Gate => "mlp.gate_proj.weight",
        LayerWeight::Up => "mlp.up_proj.weight",
        LayerWeight::Down => "mlp.down_proj.weight",
    }
}
