//! Backend-generic parameter-efficient fine-tuning for decoder-only language models:
//! soft prompt tuning and prefix tuning, adapter files interoperable with Hugging Face PEFT,
//! and the pieces of a training loop.
//!
//! * [`model`]: the seam a model implements ([`CausalLm`]) to be tunable.
//! * [`prompt`] and [`prefix`]: the two methods, one folder each.
//! * [`adapter`]: the [`Adapter`] enum and PEFT-format files.
//! * [`peft_model`]: a frozen base with named adapters; batches that mix adapters per row.
//! * [`loss`]: the causal LM loss on target positions.
//! * [`train`]: data, schedule, clipping, checkpoints and the training loop.
#![warn(missing_docs)]

pub mod adapter;
pub mod error;
pub mod fs;
pub mod init;
pub mod loss;
pub mod model;
pub mod peft_model;
pub mod prefix;
pub mod prompt;
pub mod threads;
pub mod train;

pub use adapter::{Adapter, Method};
pub use error::{PeftError, Result};
pub use model::{CausalLm, DecoderInput, KvCache, ModelDims, Positions, PrefixKv};
pub use peft_model::{ParameterCount, PeftModel, PeftOutput, Routing};
