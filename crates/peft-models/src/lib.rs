//! Decoder-only language models for burn-peft: one decoder generic over the Burn backend that
//! runs the Llama, Qwen 2/3 and Gemma 3 families ([`family`]), weight loading from GGUF (with ggml dequantisation) and Hugging Face
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
pub mod decoder;
pub mod error;
pub mod evaluate;
pub mod family;
pub mod generate;
pub mod gguf;
pub mod random;
pub mod safetensors;
pub mod source;
pub mod summary;
pub mod tokenizer;

pub use checkpoint::{Checkpoint, DEFAULT_MODEL_PATH};
pub use config::{Activation, AttentionKind, DecoderConfig, Features, RopeScaling};
pub use decoder::Decoder;
pub use error::{ModelError, Result};
pub use family::Family;
pub use random::RandomWeights;
pub use tokenizer::Tokenizer;
