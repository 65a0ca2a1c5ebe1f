//! Backend-generic parameter-efficient fine-tuning for decoder-only language models:
//! soft prompt tuning and prefix tuning, adapter files interoperable with Hugging Face PEFT,
//! and the pieces of a training loop.
#![warn(missing_docs)]

pub mod model;

pub use model::{CausalLm, DecoderInput, KvCache, ModelDims, Positions, PrefixKv};
