//! Qwen 3: per-head RMSNorm of queries and keys (before RoPE) and a head_dim that need not be
//! `hidden / heads` (transformers' default 128).

use crate::{
    config::{DecoderConfig, HfFields},
    error::Result,
};

pub(super) fn read_hf(fields: &HfFields<'_>, config: &mut DecoderConfig) -> Result<()> {
    if fields.uint("head_dim")?.is_none() {
        config.head_dim = 128;
    }
    config.features.qk_norm = true;
    Ok(())
}
