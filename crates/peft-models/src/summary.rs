//! What a checkpoint is and which tuning methods fit it, from its configuration alone (no
//! weights loaded): what `peft inspect MODEL` prints.

use serde::Serialize;

use peft_kernels::CUBE_MAX_HEAD_DIM;

use crate::{checkpoint::Checkpoint, config::AttentionKind, family::Family};

/// A checkpoint's family, sizes and the tuning methods that fit it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    /// The checkpoint path.
    pub path: String,
    /// The family.
    pub family: Family,
    /// The architecture as the checkpoint spells it.
    pub architecture: String,
    /// Decoder layers.
    pub layers: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Gated MLP inner width.
    pub intermediate_size: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest sequence.
    pub max_positions: usize,
    /// Every value of the model (Hugging Face's count).
    pub parameters: usize,
    /// Layers attending to every earlier key.
    pub global_layers: usize,
    /// Layers attending within a sliding window, and the window.
    pub sliding_layers: usize,
    /// The sliding window, when some layer has one.
    pub sliding_window: Option<usize>,
    /// Whether the LM head is the embedding table.
    pub tied_head: bool,
    /// Tuning methods and what each trains on this model.
    pub methods: Vec<MethodFit>,
}

/// One tuning method on one model.
#[derive(Debug, Clone, Serialize)]
pub struct MethodFit {
    /// The method (`prompt`, `prefix`, `prefix-mlp`: `peft train --method`).
    pub method: &'static str,
    /// Trainable values with `virtual_tokens` virtual tokens (what is saved; the MLP of
    /// `prefix-mlp` is trained too and collapsed into the prefix when saved).
    pub saved_values: usize,
    /// Virtual tokens the count is for.
    pub virtual_tokens: usize,
    /// What to know about this method on this model.
    pub notes: Vec<String>,
}

impl ModelSummary {
    /// The summary of `ckpt`, with method sizes for `virtual_tokens` virtual tokens.
    pub fn of(ckpt: &Checkpoint, virtual_tokens: usize) -> Self {
        let c = &ckpt.config;
        let sliding = (0..c.num_layers)
            .filter(|&i| c.layer_kind(i) == AttentionKind::Sliding)
            .count();
        let window = c.features.sliding_window.filter(|_| sliding > 0);
        let n = virtual_tokens;
        let mut prefix_notes = vec![format!(
            "{} key/value head(s) of dim {} per layer: {} values per virtual token",
            c.num_kv_heads,
            c.head_dim,
            2 * c.num_layers * c.num_kv_heads * c.head_dim
        )];
        if let Some(w) = window {
            prefix_notes.push(format!(
                "on the {sliding} sliding-window layers the prefix sits before position 0 of the \
                 input, as in PEFT: a token at position t sees prefix slot p while P + t − p < {w}"
            ));
        }
        if c.head_dim > CUBE_MAX_HEAD_DIM {
            prefix_notes.push(format!(
                "head_dim {} > {CUBE_MAX_HEAD_DIM}: the CubeCL (wgpu, CUDA) attention kernels \
                 take the reference path; Flex's host kernels run it fused",
                c.head_dim
            ));
        }
        let prompt_notes = match c.features.embedding_scale {
            Some(s) => vec![format!(
                "the model scales token embeddings by {s:.4}; soft prompts live after that scale \
                 (as in PEFT) and are initialised from scaled embeddings"
            )],
            None => Vec::new(),
        };
        let prefix_values = n * 2 * c.num_layers * c.num_kv_heads * c.head_dim;
        Self {
            path: ckpt.path().display().to_string(),
            family: c.family,
            architecture: c.architecture.clone(),
            layers: c.num_layers,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            vocab_size: c.vocab_size,
            max_positions: c.max_position_embeddings,
            parameters: c.num_parameters(),
            global_layers: c.num_layers - sliding,
            sliding_layers: sliding,
            sliding_window: window,
            tied_head: c.tie_word_embeddings,
            methods: vec![
                MethodFit {
                    method: "prompt",
                    saved_values: n * c.hidden_size,
                    virtual_tokens: n,
                    notes: prompt_notes,
                },
                MethodFit {
                    method: "prefix",
                    saved_values: prefix_values,
                    virtual_tokens: n,
                    notes: prefix_notes.clone(),
                },
                MethodFit {
                    method: "prefix-mlp",
                    saved_values: prefix_values,
                    virtual_tokens: n,
                    notes: prefix_notes,
                },
            ],
        }
    }
}
