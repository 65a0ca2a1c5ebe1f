//! Helpers of the end-to-end tests (shared with peft-models' tests).
#![allow(dead_code)]

#[path = "../../crates/peft-models/tests/common/mod.rs"]
pub mod model;

use burn::tensor::backend::Backend;
use peft_core::Adapter;
use peft_models::generate::Conditioning;

/// What generation needs from an adapter.
pub fn conditioning<B: Backend>(adapter: &Adapter<B>) -> Conditioning<B> {
    Conditioning { virtual_tokens: adapter.virtual_tokens(), prefix: adapter.prefix() }
}
