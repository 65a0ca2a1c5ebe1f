//! Decoder-only language models for burn-peft: a Llama-family transformer generic over the
//! Burn backend, weight loading from GGUF (with ggml dequantisation) and Hugging Face
//! safetensors, byte-level BPE tokenizers, and text generation with a KV cache.
//!
//! ```no_run
//! use burn::backend::Flex;
//! use peft_models::{Checkpoint, generate::{generate, Conditioning, GenerationConfig}};
//!
//! let ckpt = Checkpoint::open("models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let model = ckpt.load::<Flex>(&Default::default())?;
//! let ids = ckpt.tokenizer.encode("The capital of France is")?;
//! let out = generate(&model, &ckpt.tokenizer, &ids, &Conditioning::default(),
//!                    &GenerationConfig::default(), |piece| print!("{piece}"))?;
//! # Ok::<(), peft_models::ModelError>(())
//! ```
#![warn(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod evaluate;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod random;
pub mod safetensors;
pub mod source;
pub mod tokenizer;

pub use checkpoint::{Checkpoint, DEFAULT_MODEL_PATH};
pub use config::LlamaConfig;
pub use error::{ModelError, Result};
pub use llama::Llama;
pub use random::RandomWeights;
pub use tokenizer::Tokenizer;
