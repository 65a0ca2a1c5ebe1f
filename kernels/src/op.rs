//! The prefix-attention operation: its arguments, the backend extension trait and the
//! tensor-level builder that library code calls.

use burn::tensor::{
    Int, Tensor, TensorMetadata, TensorPrimitive,
    backend::Backend,
    ops::{FloatTensor, IntTensor},
};

use crate::{AttentionPath, attention_path, reference};

/// Primitive arguments of one prefix-attention call, already validated by
/// [`PrefixAttention::forward`].
#[derive(Debug, Clone)]
pub struct PrefixAttentionArgs<B: Backend> {
    /// Queries `[B, H, L, d]`.
    pub query: FloatTensor<B>,
    /// Sequence keys `[B, Hkv, S, d]`, `S ≥ L`.
    pub key: FloatTensor<B>,
    /// Sequence values `[B, Hkv, S, d]`.
    pub value: FloatTensor<B>,
    /// Prefix keys `[Bp, Hkv, P, d]` with `Bp ∈ {1, B}`.
    pub prefix_key: Option<FloatTensor<B>>,
    /// Prefix values, same shape as the prefix keys.
    pub prefix_value: Option<FloatTensor<B>>,
    /// Valid prefix slots per row `[B]`; slots at or past the length are masked.
    pub prefix_lengths: Option<IntTensor<B>>,
    /// Valid sequence keys per row `[B]` (right padding); keys at or past the length are masked.
    pub key_lengths: Option<IntTensor<B>>,
    /// Multiplier of `q·k` before the softmax.
    pub scale: f32,
}

impl<B: Backend> PrefixAttentionArgs<B> {
    /// `[batch, heads, queries, keys in the sequence, kv heads, head dim, prefix slots,
    /// prefix batch]`.
    pub fn dims(&self) -> AttentionDims {
        let [b, h, l, d] = self.query.shape().dims::<4>();
        let [_, hkv, s, _] = self.key.shape().dims::<4>();
        let (p, bp) = match &self.prefix_key {
            Some(pk) => {
                let [bp, _, p, _] = pk.shape().dims::<4>();
                (p, bp)
            }
            None => (0, 1),
        };
        AttentionDims {
            batch: b,
            heads: h,
            kv_heads: hkv,
            queries: l,
            keys: s,
            head_dim: d,
            prefix: p,
            prefix_batch: bp,
        }
    }
}

/// The sizes of one prefix-attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionDims {
    /// Batch size `B`.
    pub batch: usize,
    /// Query heads `H`.
    pub heads: usize,
    /// Key/value heads `Hkv` (`H` is a multiple of it).
    pub kv_heads: usize,
    /// Queries per row `L`.
    pub queries: usize,
    /// Sequence keys per row `S`.
    pub keys: usize,
    /// Head dimension `d`.
    pub head_dim: usize,
    /// Prefix slots `P` (0 without a prefix).
    pub prefix: usize,
    /// Batch dimension of the prefix: 1 when shared, `B` when per row.
    pub prefix_batch: usize,
}

impl AttentionDims {
    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// Gradients of one prefix-attention call, shaped like the corresponding inputs.
#[derive(Debug, Clone)]
pub struct AttentionGrads<B: Backend> {
    /// `∂L/∂Q`, `[B, H, L, d]`.
    pub query: FloatTensor<B>,
    /// `∂L/∂K`, `[B, Hkv, S, d]`.
    pub key: FloatTensor<B>,
    /// `∂L/∂V`, `[B, Hkv, S, d]`.
    pub value: FloatTensor<B>,
    /// `∂L/∂P_k`, `[Bp, Hkv, P, d]` (summed over the batch and the query-head group when
    /// the prefix is shared).
    pub prefix_key: Option<FloatTensor<B>>,
    /// `∂L/∂P_v`, like `prefix_key`.
    pub prefix_value: Option<FloatTensor<B>>,
}

/// Backend extension for prefix attention.
///
/// Every method has a default body built from ordinary tensor ops (the crate's `reference`
/// module), so a backend without kernels implements the trait with an empty `impl` block.
/// Backends with fused kernels override [`forward`](Self::prefix_attention_forward) and
/// [`backward`](Self::prefix_attention_backward) and return `true` from
/// [`has_fused_prefix_attention`](Self::has_fused_prefix_attention); the CubeCL backends'
/// forward returns the log-sum-exp in f32 for every input dtype.
///
/// It is the backend bound of the models and the training code, so it also requires the frozen
/// products of [`FrozenLinearBackend`](crate::FrozenLinearBackend) and the layer operations of
/// [`LayerOpsBackend`](crate::LayerOpsBackend) (every backend here implements all three).
pub trait PrefixAttentionBackend:
    Backend + crate::FrozenLinearBackend + crate::LayerOpsBackend
{
    /// Whether this backend runs fused kernels (and so prefers them by default).
    fn has_fused_prefix_attention() -> bool {
        false
    }

    /// Whether tensor ops run on the host CPU, synchronously on the calling thread (Burn's CPU
    /// backends, Flex and NdArray), rather than being queued on a device.
    ///
    /// Models then take few-row products `x·Wᵀ` (decoding) as `(W·xᵀ)ᵀ`, which reads the
    /// stored `W` in place: NdArray copies a transposed operand into standard layout first.
    fn runs_on_host_thread() -> bool {
        false
    }

    /// Whether this backend runs a matrix-vector product (a product with one row or one
    /// column) on a single host thread whatever its thread pool holds, so that callers gain by
    /// splitting it over threads themselves. True for Flex, whose `gemm` kernel for such
    /// products is single-threaded. False for NdArray: its slices are copies, so a split copies
    /// the weights, and decoding measured slower split than whole.
    fn single_threaded_matvec() -> bool {
        false
    }

    /// Attention output `[B, H, L, d]` and the f32 log-sum-exp of every query row
    /// `[B, H, L]` (natural log, of the scaled scores), which the backward reuses.
    fn prefix_attention_forward(
        args: PrefixAttentionArgs<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (out, lse) = reference::forward_with_lse::<Self>(&args.into_tensors());
        (out.into_primitive().tensor(), lse.into_primitive().tensor())
    }

    /// Gradients of the inputs given the forward's output, its log-sum-exp and the output
    /// gradient `grad_out` `[B, H, L, d]`.
    fn prefix_attention_backward(
        args: PrefixAttentionArgs<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
    ) -> AttentionGrads<Self> {
        reference::backward::<Self>(
            &args.into_tensors(),
            float(out),
            float(lse),
            float(grad_out),
        )
    }
}

/// An autodiff backend whose inner backend has prefix attention too: what training code needs
/// (`Autodiff<B>` for any [`PrefixAttentionBackend`] `B`).
pub trait PrefixAttentionAutodiffBackend:
    burn::tensor::backend::AutodiffBackend<InnerBackend: PrefixAttentionBackend>
    + PrefixAttentionBackend
{
}

impl<B> PrefixAttentionAutodiffBackend for B
where
    B: burn::tensor::backend::AutodiffBackend + PrefixAttentionBackend,
    B::InnerBackend: PrefixAttentionBackend,
{
}

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// Tensor-level view of [`PrefixAttentionArgs`] used by the reference implementation.
#[derive(Debug, Clone)]
pub(crate) struct ArgTensors<B: Backend> {
    pub query: Tensor<B, 4>,
    pub key: Tensor<B, 4>,
    pub value: Tensor<B, 4>,
    pub prefix: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    pub prefix_lengths: Option<Tensor<B, 1, Int>>,
    pub key_lengths: Option<Tensor<B, 1, Int>>,
    pub scale: f32,
    /// Sliding window (only the reference path takes one; see [`PrefixAttention::with_window`]).
    pub window: Option<usize>,
}

impl<B: Backend> PrefixAttentionArgs<B> {
    pub(crate) fn into_tensors(self) -> ArgTensors<B> {
        ArgTensors {
            query: float(self.query),
            key: float(self.key),
            value: float(self.value),
            prefix: match (self.prefix_key, self.prefix_value) {
                (Some(k), Some(v)) => Some((float(k), float(v))),
                _ => None,
            },
            prefix_lengths: self.prefix_lengths.map(Tensor::from_primitive),
            key_lengths: self.key_lengths.map(Tensor::from_primitive),
            scale: self.scale,
            window: None,
        }
    }
}

/// Builder for one prefix-attention call; see the crate documentation for the semantics.
///
/// ```
/// # use burn::{backend::Flex, tensor::{Int, Tensor, Distribution}};
/// # use peft_kernels::PrefixAttention;
/// # let device = Default::default();
/// # let q = Tensor::<Flex, 4>::random([2, 4, 3, 16], Distribution::Default, &device);
/// # let k = Tensor::<Flex, 4>::random([2, 4, 3, 16], Distribution::Default, &device);
/// # let v = k.clone();
/// let lengths = Tensor::<Flex, 1, Int>::from_ints([3, 1], &device);
/// let out = PrefixAttention::new(q, k, v).with_key_lengths(lengths).forward();
/// ```
#[derive(Debug, Clone)]
pub struct PrefixAttention<B: Backend> {
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    prefix: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    prefix_lengths: Option<Tensor<B, 1, Int>>,
    key_lengths: Option<Tensor<B, 1, Int>>,
    scale: Option<f64>,
    window: Option<usize>,
    path: Option<AttentionPath>,
}

impl<B: PrefixAttentionBackend> PrefixAttention<B> {
    /// Causal attention of `query` `[B, H, L, d]` over `key`/`value` `[B, Hkv, S, d]`.
    pub fn new(query: Tensor<B, 4>, key: Tensor<B, 4>, value: Tensor<B, 4>) -> Self {
        Self {
            query,
            key,
            value,
            prefix: None,
            prefix_lengths: None,
            key_lengths: None,
            scale: None,
            window: None,
            path: None,
        }
    }

    /// Adds prefix keys and values `[Bp, Hkv, P, d]` (`Bp` is 1 or the batch size). A prefix
    /// with `P = 0` is the same as no prefix.
    pub fn with_prefix(mut self, key: Tensor<B, 4>, value: Tensor<B, 4>) -> Self {
        self.prefix = Some((key, value));
        self
    }

    /// Number of valid prefix slots per row `[B]` (for batches mixing adapters of different
    /// lengths).
    pub fn with_prefix_lengths(mut self, lengths: Tensor<B, 1, Int>) -> Self {
        self.prefix_lengths = Some(lengths);
        self
    }

    /// Number of valid sequence keys per row `[B]` (right padding).
    pub fn with_key_lengths(mut self, lengths: Tensor<B, 1, Int>) -> Self {
        self.key_lengths = Some(lengths);
        self
    }

    /// Overrides the default scale `1/sqrt(d)`.
    pub fn with_scale(mut self, scale: f64) -> Self {
        self.scale = Some(scale);
        self
    }

    /// Limits each query to the keys fewer than `window` positions behind it (a sliding-window
    /// layer). Positions follow Hugging Face's layout of a prefix cache: a row with `Pr` valid
    /// prefix slots has slot `p` at position `p` and its sequence from position `Pr`, so query
    /// `i` (the last `L` of the `S` sequence positions) sees sequence key `j` when
    /// `(S − L + i) − j < window` and prefix slot `p` when `Pr + (S − L + i) − p < window`.
    ///
    /// A window that hides nothing in this call (`P + S ≤ window`) is dropped, so the call runs
    /// on whatever path it would take without one. A window that hides something always runs
    /// the reference path (the fused kernels take no window), whatever
    /// [`with_path`](Self::with_path) asks; [`crate::path_counts`] records it as a reference
    /// forward.
    pub fn with_window(mut self, window: usize) -> Self {
        self.window = Some(window);
        self
    }

    /// Chooses the implementation for this call, overriding the process-wide
    /// [`attention_path`](crate::attention_path).
    pub fn with_path(mut self, path: AttentionPath) -> Self {
        self.path = Some(path);
        self
    }

    /// Runs the attention on the path chosen by [`with_path`](Self::with_path), or else by
    /// [`attention_path`](crate::attention_path).
    ///
    /// # Panics
    ///
    /// If the shapes do not fit together (this is a programming error of the caller, not a
    /// data error): heads not a multiple of the key/value heads, `S < L`, mismatched head
    /// dimensions, or a prefix batch that is neither 1 nor `B`.
    pub fn forward(self) -> Tensor<B, 4> {
        let path = self.path.unwrap_or_else(attention_path);
        let prefix = self.prefix.as_ref().map_or(0, |(pk, _)| pk.dims()[2]);
        let keys = self.key.dims()[2];
        if let Some(window) = self.window.filter(|&w| prefix + keys > w) {
            let mut tensors = self.into_args().into_tensors();
            tensors.window = Some(window);
            return reference::forward(&tensors);
        }
        let args = self.into_args();
        let fused = match path {
            AttentionPath::Auto => B::has_fused_prefix_attention(),
            AttentionPath::Fused => true,
            AttentionPath::Unfused => false,
        };
        if fused {
            let (out, _lse) = B::prefix_attention_forward(args);
            float(out)
        } else {
            reference::forward(&args.into_tensors())
        }
    }

    /// Validates the shapes and lowers the builder to primitive arguments.
    pub fn into_args(self) -> PrefixAttentionArgs<B> {
        let [b, h, l, d] = self.query.dims();
        let [bk, hkv, s, dk] = self.key.dims();
        assert_eq!(
            self.value.dims(),
            [bk, hkv, s, dk],
            "prefix attention: key/value shapes differ"
        );
        assert_eq!(b, bk, "prefix attention: query batch {b} != key batch {bk}");
        assert_eq!(
            d, dk,
            "prefix attention: query head dim {d} != key head dim {dk}"
        );
        assert!(
            hkv > 0 && h % hkv == 0,
            "prefix attention: {h} query heads are not a multiple of {hkv} kv heads"
        );
        assert!(
            s >= l,
            "prefix attention: {s} keys cannot serve {l} causal queries"
        );
        let prefix = self.prefix.filter(|(pk, _)| pk.dims()[2] > 0);
        if let Some((pk, pv)) = &prefix {
            let [bp, ph, _, pd] = pk.dims();
            assert_eq!(
                pk.dims(),
                pv.dims(),
                "prefix attention: prefix key/value shapes differ"
            );
            assert!(
                bp == 1 || bp == b,
                "prefix attention: prefix batch {bp} is neither 1 nor {b}"
            );
            assert_eq!(
                (ph, pd),
                (hkv, d),
                "prefix attention: prefix heads/dim do not match the keys"
            );
        }
        for lengths in [&self.prefix_lengths, &self.key_lengths]
            .into_iter()
            .flatten()
        {
            assert_eq!(
                lengths.dims(),
                [b],
                "prefix attention: lengths must have one entry per row"
            );
        }
        let scale = self.scale.unwrap_or(1.0 / (d as f64).sqrt()) as f32;
        let (prefix_key, prefix_value) = match prefix {
            Some((k, v)) => (
                Some(k.into_primitive().tensor()),
                Some(v.into_primitive().tensor()),
            ),
            None => (None, None),
        };
        PrefixAttentionArgs {
            query: self.query.into_primitive().tensor(),
            key: self.key.into_primitive().tensor(),
            value: self.value.into_primitive().tensor(),
            prefix_key,
            // Lengths without a prefix have nothing to mask.
            prefix_lengths: if prefix_value.is_some() {
                self.prefix_lengths.map(|t| t.into_primitive())
            } else {
                None
            },
            prefix_value,
            key_lengths: self.key_lengths.map(|t| t.into_primitive()),
            scale,
        }
    }
}
