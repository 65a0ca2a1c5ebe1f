//! One way to fetch a named weight, whatever the checkpoint format: the model's loading code asks
//! for a [`WeightKey`] and gets row-major f32 values in Hugging Face layout.

use std::path::Path;

use crate::error::Result;

/// A weight of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerWeight {
    /// Input RMSNorm scale `[hidden]`.
    AttnNorm,
    /// Query projection `[heads·head_dim, hidden]`.
    Query,
    /// Key projection `[kv_heads·head_dim, hidden]`.
    Key,
    /// Value projection `[kv_heads·head_dim, hidden]`.
    Value,
    /// Output projection `[hidden, heads·head_dim]`.
    Output,
    /// Optional query bias `[heads·head_dim]`.
    QueryBias,
    /// Optional key bias `[kv_heads·head_dim]`.
    KeyBias,
    /// Optional value bias `[kv_heads·head_dim]`.
    ValueBias,
    /// Per-head RMSNorm scale of the queries `[head_dim]` (Qwen 3, Gemma 3).
    QueryNorm,
    /// Per-head RMSNorm scale of the keys `[head_dim]`.
    KeyNorm,
    /// RMSNorm scale after attention, before the residual add `[hidden]` (Gemma 3).
    PostAttnNorm,
    /// RMSNorm scale before the MLP `[hidden]`.
    MlpNorm,
    /// RMSNorm scale after the MLP, before the residual add `[hidden]` (Gemma 3).
    PostMlpNorm,
    /// SwiGLU gate projection `[intermediate, hidden]`.
    Gate,
    /// SwiGLU up projection `[intermediate, hidden]`.
    Up,
    /// Down projection `[hidden, intermediate]`.
    Down,
}

/// A weight of a decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightKey {
    /// Token embedding `[vocab, hidden]`.
    Embedding,
    /// Untied LM head `[vocab, hidden]`.
    LmHead,
    /// Final RMSNorm scale `[hidden]`.
    FinalNorm,
    /// A weight of layer `i`.
    Layer(usize, LayerWeight),
}

impl WeightKey {
    /// Whether the weight is an RMSNorm scale.
    pub fn is_norm(self) -> bool {
        matches!(
            self,
            WeightKey::FinalNorm
                | WeightKey::Layer(
                    _,
                    LayerWeight::AttnNorm
                        | LayerWeight::QueryNorm
                        | LayerWeight::KeyNorm
                        | LayerWeight::PostAttnNorm
                        | LayerWeight::MlpNorm
                        | LayerWeight::PostMlpNorm
                )
        )
    }
}

/// A weight read from a checkpoint.
#[derive(Debug, Clone)]
pub struct LoadedTensor {
    /// Its name in the checkpoint's own naming.
    pub name: String,
    /// Row-major shape, Hugging Face orientation (`[out, in]` for projections).
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// A checkpoint that serves weights by [`WeightKey`].
pub trait TensorSource {
    /// The checkpoint file (or directory), for error messages.
    fn path(&self) -> &Path;
    /// The checkpoint's own name for a weight.
    fn name(&self, key: WeightKey) -> String;
    /// Whether the checkpoint holds the weight.
    fn contains(&self, key: WeightKey) -> bool;
    /// Reads a weight as f32, in Hugging Face's values (Gemma's norm weights as `w`, not the
    /// `1 + w` llama.cpp stores).
    fn load(&self, key: WeightKey) -> Result<LoadedTensor>;
}
