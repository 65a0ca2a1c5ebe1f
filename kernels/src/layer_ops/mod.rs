//! The element-wise and row-wise operations of a decoder layer besides attention and the frozen
//! products: RMSNorm, the SwiGLU gate and the rotary embedding (rotate-half).
//!
//! [`LayerOpsBackend`] is a backend extension trait like the others of this crate: its default
//! methods are compositions of Burn's tensor ops ([`reference`]), exactly what the models ran
//! before the trait existed, so a backend without kernels implements it with an empty `impl`.
//! Flex overrides it with host kernels (`crate::host::elementwise`): one pass per operation over
//! contiguous f32 slices, split over the Rayon threads, where Burn 0.21's Flex runs each of the
//! composition's several passes on one thread. Under [`Autodiff`](burn::backend::Autodiff) each
//! operation is one graph node whose backward calls the backend's backward method.
//!
//! The RMSNorm weight is a constant here (the base model is frozen): only the input receives a
//! gradient. A weight that requires a gradient takes the composition instead, which
//! differentiates both. The rotary tables are constants too (computed on the host from the
//! positions).

mod autodiff;
pub mod reference;

use std::cell::Cell;

use burn::tensor::{Tensor, backend::Backend};

/// Backend extension for the element-wise operations of a decoder layer.
pub trait LayerOpsBackend: Backend {
    /// RMSNorm of each row of `x` `[rows, n]`: `x / sqrt(mean(x²) + eps) · weight`, with
    /// `weight` `[n]`.
    fn rms_norm(x: Tensor<Self, 2>, weight: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        reference::rms_norm(x, weight, eps)
    }

    /// The input gradient of [`rms_norm`](Self::rms_norm) given the output gradient `dy`.
    fn rms_norm_backward(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 1>,
        eps: f64,
        dy: Tensor<Self, 2>,
    ) -> Tensor<Self, 2> {
        reference::rms_norm_backward(x, weight, eps, dy)
    }

    /// `silu(gate) · up`, element-wise (`[rows, n]` each).
    fn swiglu(gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        reference::swiglu(gate, up)
    }

    /// The gradients of `gate` and `up` in [`swiglu`](Self::swiglu) given the output gradient
    /// `dy`.
    fn swiglu_backward(
        gate: Tensor<Self, 2>,
        up: Tensor<Self, 2>,
        dy: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        reference::swiglu_backward(gate, up, dy)
    }

    /// Rotary embedding in Hugging Face's rotate-half convention over rows of heads: `x`
    /// `[rows, n]` with `n` a multiple of `head_dim` (even), each head `[x1 | x2]` becoming
    /// `x·cos + [−x2 | x1]·sin`, with `cos` and `sin` `[1 or rows, n]` (one row shared by
    /// every row of `x`, or one each).
    fn rotary(
        x: Tensor<Self, 2>,
        cos: Tensor<Self, 2>,
        sin: Tensor<Self, 2>,
        head_dim: usize,
    ) -> Tensor<Self, 2> {
        reference::rotary(x, cos, sin, head_dim)
    }

    /// The input gradient of [`rotary`](Self::rotary) given the output gradient `dy`:
    /// `dy·cos + [v2 | −v1]` with `[v1 | v2] = dy·sin` per head.
    fn rotary_backward(
        dy: Tensor<Self, 2>,
        cos: Tensor<Self, 2>,
        sin: Tensor<Self, 2>,
        head_dim: usize,
    ) -> Tensor<Self, 2> {
        reference::rotary_backward(dy, cos, sin, head_dim)
    }
}

/// RMSNorm over the last dimension of `x` with `weight` (its length) and `eps`, through
/// [`LayerOpsBackend::rms_norm`].
pub fn rms_norm<B: LayerOpsBackend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let dims = x.dims();
    let n = dims[D - 1];
    let rows = dims[..D - 1].iter().product();
    B::rms_norm(x.reshape([rows, n]), weight, eps).reshape(dims)
}

/// `silu(gate) · up` for tensors of one shape, through [`LayerOpsBackend::swiglu`].
///
/// # Panics
///
/// If the shapes differ.
pub fn swiglu<B: LayerOpsBackend, const D: usize>(
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
) -> Tensor<B, D> {
    let dims = gate.dims();
    assert_eq!(dims, up.dims(), "swiglu: gate and up shapes differ");
    let n = dims[D - 1];
    let rows = dims[..D - 1].iter().product();
    B::swiglu(gate.reshape([rows, n]), up.reshape([rows, n])).reshape(dims)
}

/// `gelu_tanh(gate) · up` (GeGLU with the tanh-approximated GELU, PyTorch's
/// `gelu(approximate="tanh")`: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`), composed of
/// tensor ops on every backend, so autodiff differentiates it like any composition.
///
/// # Panics
///
/// If the shapes differ.
pub fn geglu_tanh<B: Backend, const D: usize>(
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
) -> Tensor<B, D> {
    assert_eq!(gate.dims(), up.dims(), "geglu: gate and up shapes differ");
    let beta = (2.0 / std::f64::consts::PI).sqrt();
    let cube = gate
        .clone()
        .mul(gate.clone())
        .mul(gate.clone())
        .mul_scalar(0.044_715);
    let inner = gate
        .clone()
        .add(cube)
        .mul_scalar(beta)
        .tanh()
        .add_scalar(1.0);
    gate.mul(inner).mul_scalar(0.5).mul(up)
}

/// [`LayerOpsBackend::rotary`] on `x` `[rows, n]`.
///
/// # Panics
///
/// If `head_dim` is odd or does not divide `n`, or if the tables are not `[1 or rows, n]`.
pub fn rotary<B: LayerOpsBackend>(
    x: Tensor<B, 2>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    head_dim: usize,
) -> Tensor<B, 2> {
    let [rows, n] = x.dims();
    assert!(
        head_dim > 0 && head_dim.is_multiple_of(2) && n.is_multiple_of(head_dim),
        "rotary: head_dim {head_dim} must be even and divide the width {n}"
    );
    for t in [&cos, &sin] {
        let [tr, tn] = t.dims();
        assert!(
            tn == n && (tr == 1 || tr == rows),
            "rotary: a table of [{tr}, {tn}] for rows [{rows}, {n}]"
        );
    }
    B::rotary(x, cos, sin, head_dim)
}

thread_local! {
    static HOST_CALLS: Cell<u64> = const { Cell::new(0) };
}

/// Forward and backward calls of these operations that the calling thread ran on host kernels
/// (Flex) so far: tests assert that the fast path ran.
pub fn host_layer_op_calls() -> u64 {
    HOST_CALLS.with(Cell::get)
}

/// Counts one call computed by host kernels.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) fn record_host_call() {
    HOST_CALLS.with(|c| c.set(c.get() + 1));
}
