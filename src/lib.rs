//! burn-peft: parameter-efficient fine-tuning — soft prompt tuning and prefix tuning — of
//! decoder-only language models in Rust on Burn, with fused prefix-attention kernels.
//!
//! This crate re-exports the workspace's libraries under one name for the examples, benchmarks
//! and users who want a single dependency:
//!
//! * [`core`] (`peft-core`): the methods, adapters in Hugging Face PEFT's format, training;
//! * [`models`] (`peft-models`): the Llama-family decoder, GGUF/safetensors loading, tokenizer,
//!   generation;
//! * [`kernels`] (`peft-kernels`): prefix attention, fused on wgpu and CUDA, and backend
//!   selection.
#![warn(missing_docs)]

pub use peft_core as core;
pub use peft_kernels as kernels;
pub use peft_models as models;
