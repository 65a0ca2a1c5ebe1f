//! One decoder layer: RMSNorm → grouped-query self-attention (optional per-head q/k norms,
//! RoPE, optional prefix, optional sliding window) → optional RMSNorm → residual → RMSNorm →
//! gated MLP (SwiGLU or GeGLU) → optional RMSNorm → residual.

use burn::{
    module::Module,
    nn::RmsNorm,
    tensor::{Int, Tensor},
};
use peft_kernels::{
    AttentionPath, PrefixAttention, PrefixAttentionBackend, layer_ops::geglu_tanh, rms_norm, swiglu,
};

use crate::config::Activation;

use super::{
    linear::{FrozenLinear, linear, linears},
    rope::RopeSlice,
};

/// Self-attention.
///
/// The projections stay separate (rather than one fused q/k/v matrix) so each output is a
/// contiguous tensor: CPU backends run element-wise ops on contiguous tensors many times faster
/// than on strided views.
#[derive(Module, Debug)]
pub struct Attention<B: PrefixAttentionBackend> {
    /// `[heads·head_dim, hidden]` (`[out, in]`).
    pub q: FrozenLinear<B>,
    /// `[kv_heads·head_dim, hidden]`.
    pub k: FrozenLinear<B>,
    /// `[kv_heads·head_dim, hidden]`.
    pub v: FrozenLinear<B>,
    /// `[hidden, heads·head_dim]`.
    pub out: FrozenLinear<B>,
    /// Per-head RMSNorm of the queries, before RoPE (Qwen 3, Gemma 3).
    pub q_norm: Option<RmsNorm<B>>,
    /// Per-head RMSNorm of the keys, before RoPE.
    pub k_norm: Option<RmsNorm<B>>,
    /// Query heads.
    #[module(skip)]
    pub heads: usize,
    /// Key/value heads.
    #[module(skip)]
    pub kv_heads: usize,
    /// Dimension of one head.
    #[module(skip)]
    pub head_dim: usize,
    /// Multiplier of `q·k`; `None`: `1/√head_dim`.
    #[module(skip)]
    pub scale: Option<f64>,
    /// Sliding window; `None` for a global layer.
    #[module(skip)]
    pub window: Option<usize>,
    /// Attention implementation for this layer; `None` follows the process-wide setting.
    #[module(skip)]
    pub path: Option<AttentionPath>,
}

/// Gated MLP: `down(act(gate(x)) · up(x))`, `act` SiLU (SwiGLU) or tanh-GELU (GeGLU).
#[derive(Module, Debug)]
pub struct Mlp<B: PrefixAttentionBackend> {
    /// The gate's activation.
    #[module(skip)]
    pub activation: Activation,
    /// `[intermediate, hidden]` (`[out, in]`).
    pub gate: FrozenLinear<B>,
    /// `[intermediate, hidden]`.
    pub up: FrozenLinear<B>,
    /// `[hidden, intermediate]`.
    pub down: FrozenLinear<B>,
}

/// One decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: PrefixAttentionBackend> {
    /// Norm before attention.
    pub attn_norm: RmsNorm<B>,
    /// Self-attention.
    pub attn: Attention<B>,
    /// Norm of the attention output before the residual add (Gemma 3).
    pub post_attn_norm: Option<RmsNorm<B>>,
    /// Norm before the MLP.
    pub mlp_norm: RmsNorm<B>,
    /// Feed-forward block.
    pub mlp: Mlp<B>,
    /// Norm of the MLP output before the residual add (Gemma 3).
    pub post_mlp_norm: Option<RmsNorm<B>>,
    /// Whether the layer takes the sliding-window RoPE tables (Gemma 3's local base).
    #[module(skip)]
    pub local_rope: bool,
}

/// What one layer attends to besides the new inputs.
pub(crate) struct LayerContext<'a, B: PrefixAttentionBackend> {
    pub rope: &'a RopeSlice<B>,
    pub prefix: Option<&'a (Tensor<B, 4>, Tensor<B, 4>)>,
    pub prefix_lengths: Option<&'a Tensor<B, 1, Int>>,
    pub key_lengths: Option<&'a Tensor<B, 1, Int>>,
}

impl<B: PrefixAttentionBackend> Attention<B> {
    /// Projects `x` `[B, L, hidden]` to rotated queries and keys and values, each
    /// `[B, heads, L, head_dim]`.
    fn project(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeSlice<B>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let [b, l, _] = x.dims();
        let (h, kv, d) = (self.heads, self.kv_heads, self.head_dim);
        let heads = |t: Tensor<B, 3>, n: usize| t.reshape([b, l, n, d]).swap_dims(1, 2);
        let [q, k, v] = linears([&self.q, &self.k, &self.v], x);
        let q = heads(
            rope.rotate_queries(head_norm(self.q_norm.as_ref(), q, d)),
            h,
        );
        let k = heads(rope.rotate_keys(head_norm(self.k_norm.as_ref(), k, d)), kv);
        let v = heads(v, kv);
        (q, k, v)
    }

    fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &LayerContext<'_, B>,
        cache: Option<(&mut peft_core::KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let [b, l, _] = x.dims();
        let (q, k, v) = self.project(x, ctx.rope);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => (k, v),
        };
        let mut op = PrefixAttention::new(q, k, v);
        if let Some(path) = self.path {
            op = op.with_path(path);
        }
        if let Some(scale) = self.scale {
            op = op.with_scale(scale);
        }
        if let Some(window) = self.window {
            op = op.with_window(window);
        }
        if let Some((pk, pv)) = ctx.prefix {
            op = op.with_prefix(pk.clone(), pv.clone());
        }
        if let Some(len) = ctx.prefix_lengths {
            op = op.with_prefix_lengths(len.clone());
        }
        if let Some(len) = ctx.key_lengths {
            op = op.with_key_lengths(len.clone());
        }
        let out = op
            .forward()
            .swap_dims(1, 2)
            .reshape([b, l, self.heads * self.head_dim]);
        linear(&self.out, out)
    }
}

impl<B: PrefixAttentionBackend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [gate, up] = linears([&self.gate, &self.up], x);
        let hidden = match self.activation {
            Activation::Silu => swiglu(gate, up),
            Activation::GeluTanh => geglu_tanh(gate, up),
        };
        linear(&self.down, hidden)
    }
}

impl<B: PrefixAttentionBackend> DecoderLayer<B> {
    /// Runs the layer on `x` `[B, L, hidden]`.
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &LayerContext<'_, B>,
        cache: Option<(&mut peft_core::KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let attn = self
            .attn
            .forward(norm(&self.attn_norm, x.clone()), ctx, cache);
        let h = x + maybe_norm(self.post_attn_norm.as_ref(), attn);
        let mlp = self.mlp.forward(norm(&self.mlp_norm, h.clone()));
        h + maybe_norm(self.post_mlp_norm.as_ref(), mlp)
    }
}

fn maybe_norm<B: PrefixAttentionBackend>(n: Option<&RmsNorm<B>>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    match n {
        Some(n) => norm(n, x),
        None => x,
    }
}

/// `n` applied to each head of `x` `[B, L, heads·d]` (over the last `d` values).
fn head_norm<B: PrefixAttentionBackend>(
    n: Option<&RmsNorm<B>>,
    x: Tensor<B, 3>,
    d: usize,
) -> Tensor<B, 3> {
    let Some(n) = n else { return x };
    let [b, l, width] = x.dims();
    norm(n, x.reshape([b, l * width / d, d])).reshape([b, l, width])
}

/// `norm` applied to `x` through [`peft_kernels::rms_norm`] (host kernels on Flex; Burn's
/// `RmsNorm::forward` composition elsewhere).
pub(crate) fn norm<B: PrefixAttentionBackend>(norm: &RmsNorm<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    rms_norm(x, norm.gamma.val(), norm.epsilon)
}
