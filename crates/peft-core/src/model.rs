//! The seam between PEFT methods and models: what a method needs from a decoder.
//!
//! A method never branches on a model's name and a model never branches on a method's: soft
//! prompts arrive as input embeddings, prefixes as per-layer key/value tensors, and both shift
//! the positions of the real tokens.

use burn::{
    module::Module,
    tensor::{Int, Tensor, backend::Backend},
};

/// The sizes of a decoder that methods need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelDims {
    /// Decoder layers.
    pub num_layers: usize,
    /// Model width (embedding size).
    pub hidden_size: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest sequence in positions.
    pub max_positions: usize,
}

impl ModelDims {
    /// Width of one layer's key (or value) block: `kv_heads · head_dim`.
    pub fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

/// Per-layer prefix keys and values that every real token attends to.
#[derive(Debug, Clone)]
pub struct PrefixKv<B: Backend> {
    /// One `(key, value)` pair per layer, each `[Bp, kv_heads, P, head_dim]` with `Bp = 1`
    /// (shared by the batch) or the batch size. Keys are used as stored: no RoPE is applied.
    pub layers: Vec<(Tensor<B, 4>, Tensor<B, 4>)>,
    /// Valid prefix slots per row `[B]` when rows use prefixes of different lengths.
    pub lengths: Option<Tensor<B, 1, Int>>,
}

impl<B: Backend> PrefixKv<B> {
    /// Number of prefix slots `P`.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether the prefix has no slots.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where the real tokens of each row start in position space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Positions {
    /// Every row starts at this position (the number of virtual tokens before it).
    Offset(usize),
    /// Row `r` starts at position `starts[r]`.
    PerRow(Vec<usize>),
}

impl Default for Positions {
    fn default() -> Self {
        Self::Offset(0)
    }
}

impl Positions {
    /// The largest starting position.
    pub fn max_start(&self) -> usize {
        match self {
            Self::Offset(o) => *o,
            Self::PerRow(v) => v.iter().copied().max().unwrap_or(0),
        }
    }
}

/// Input of one forward pass without a KV cache.
#[derive(Debug, Clone)]
pub struct DecoderInput<B: Backend> {
    /// Input embeddings `[B, L, hidden]` (soft prompts already prepended).
    pub embeds: Tensor<B, 3>,
    /// Position of the first input of each row.
    pub positions: Positions,
    /// Per-layer prefix keys/values.
    pub prefix: Option<PrefixKv<B>>,
    /// Valid inputs per row `[B]` (right padding); `None` when no row is padded.
    pub key_lengths: Option<Tensor<B, 1, Int>>,
}

impl<B: Backend> DecoderInput<B> {
    /// Plain input embeddings starting at position 0, no prefix, no padding.
    pub fn new(embeds: Tensor<B, 3>) -> Self {
        Self {
            embeds,
            positions: Positions::Offset(0),
            prefix: None,
            key_lengths: None,
        }
    }
}

/// Keys and values of the tokens seen so far, for incremental decoding.
///
/// A cache may start pre-filled with a prefix adapter's virtual slots; the positions of real
/// tokens then continue after them, exactly as when the prefix is passed to a full forward.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    prefix: Option<PrefixKv<B>>,
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    tokens: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for a model with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            prefix: None,
            layers: vec![None; num_layers],
            tokens: 0,
        }
    }

    /// A cache pre-filled with prefix slots (one `(key, value)` pair per layer).
    ///
    /// # Panics
    ///
    /// If the prefix does not have one entry per layer.
    pub fn with_prefix(num_layers: usize, prefix: PrefixKv<B>) -> Self {
        assert_eq!(
            prefix.layers.len(),
            num_layers,
            "prefix must have one key/value pair per layer"
        );
        Self {
            prefix: Some(prefix),
            layers: vec![None; num_layers],
            tokens: 0,
        }
    }

    /// Position of the next token: prefix slots plus tokens seen.
    pub fn position(&self) -> usize {
        self.prefix_len() + self.tokens
    }

    /// Number of real (non-prefix) positions cached.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Number of prefix slots.
    pub fn prefix_len(&self) -> usize {
        self.prefix.as_ref().map_or(0, PrefixKv::len)
    }

    /// The prefix slots of `layer`, if any.
    pub fn prefix(&self, layer: usize) -> Option<&(Tensor<B, 4>, Tensor<B, 4>)> {
        self.prefix.as_ref().map(|p| &p.layers[layer])
    }

    /// Valid prefix slots per row, if rows differ.
    pub fn prefix_lengths(&self) -> Option<&Tensor<B, 1, Int>> {
        self.prefix.as_ref().and_then(|p| p.lengths.as_ref())
    }

    /// The cached keys and values of `layer`, `[B, kv_heads, tokens, head_dim]`.
    pub fn layer(&self, layer: usize) -> Option<&(Tensor<B, 4>, Tensor<B, 4>)> {
        self.layers.get(layer).and_then(Option::as_ref)
    }

    /// Appends new keys/values `[B, kv_heads, L, d]` to `layer` and returns all of them.
    pub fn append(
        &mut self,
        layer: usize,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let entry = &mut self.layers[layer];
        let full = match entry.take() {
            None => (key, value),
            Some((k, v)) => (Tensor::cat(vec![k, key], 2), Tensor::cat(vec![v, value], 2)),
        };
        *entry = Some(full.clone());
        full
    }

    /// Records that `count` new tokens went through every layer.
    pub fn advance(&mut self, count: usize) {
        self.tokens += count;
    }
}

/// A decoder-only language model that PEFT methods can tune.
pub trait CausalLm<B: Backend>: Module<B> {
    /// The model's sizes.
    fn dims(&self) -> ModelDims;

    /// Token embeddings `[B, L, hidden]` of ids `[B, L]`.
    fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3>;

    /// The token embedding table `[vocab, hidden]` as stored (before
    /// [`embedding_scale`](Self::embedding_scale)).
    fn embedding_table(&self) -> Tensor<B, 2>;

    /// The multiplier [`embed`](Self::embed) applies to the table's rows (Gemma: `√hidden`).
    /// Soft prompts live in the scaled space, as PEFT's do: they are concatenated to `embed`'s
    /// output and never scaled again.
    fn embedding_scale(&self) -> f64 {
        1.0
    }

    /// Final-normalised hidden states `[B, L, hidden]`.
    fn forward_hidden(&self, input: DecoderInput<B>) -> Tensor<B, 3>;

    /// Hidden states of new inputs `[B, L, hidden]` that continue the cached sequence; the
    /// cache's prefix and position are used and the new keys/values appended.
    fn forward_cached(&self, embeds: Tensor<B, 3>, cache: &mut KvCache<B>) -> Tensor<B, 3>;

    /// Vocabulary logits `[B, L, vocab]` of hidden states.
    fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3>;

    /// Log-probability `[n]` of each target id `targets` `[n]` after the hidden states `hidden`
    /// `[n, hidden]` (one position each): `log softmax(logits)[i, targets[i]]`. The default
    /// computes the `[n, vocab]` logits; a model can compute it without them (the Llama decoder
    /// does, chunk by chunk, `peft_kernels::FrozenLinearBackend::frozen_log_probs`).
    fn target_log_probs(&self, hidden: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        let [n, h] = hidden.dims();
        let logits = self.logits(hidden.reshape([1, n, h]));
        let vocab = logits.dims()[2];
        crate::loss::log_probs_of_logits(logits.reshape([n, vocab]), targets)
    }

    /// Every value of the model, frozen weights included (what Hugging Face counts as its
    /// parameters). The default is Burn's [`Module::num_params`], which sees only `Param`s: a
    /// model holding frozen weights outside `Param`s counts them itself.
    fn parameter_count(&self) -> usize {
        self.num_params()
    }

    /// An empty cache sized for this model.
    fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.dims().num_layers)
    }
}
