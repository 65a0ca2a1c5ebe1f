//! Qwen 2 / 2.5: the Llama layout with a bias on the query, key and value projections
//! (transformers' `Qwen2Attention` builds them with `bias=True` whatever the config says).

use crate::{
    config::{DecoderConfig, HfFields},
    error::Result,
};

pub(super) fn read_hf(_fields: &HfFields<'_>, config: &mut DecoderConfig) -> Result<()> {
    config.attention_bias = true;
    Ok(())
}
