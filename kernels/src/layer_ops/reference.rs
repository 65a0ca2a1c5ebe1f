//! The compositions of Burn tensor ops that every backend can run: the forward ones are what
//! `burn::nn::RmsNorm` and `silu(gate) * up` compute, the backward ones their analytic input
//! gradients.

use burn::tensor::{DType, Tensor, activation::sigmoid, activation::silu, backend::Backend};

/// `x / sqrt(mean(x², last) + eps) · weight`, as `burn::nn::RmsNorm::forward` computes it.
pub fn rms_norm<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    let dtype = x.dtype();
    let rms = (x.clone().cast(DType::F32).square().mean_dim(1) + eps).sqrt();
    (x / rms.cast(dtype)) * weight.unsqueeze()
}

/// `dx = r·g − x·r³·mean(g∘x)` with `g = dy∘weight` and `r = 1 / sqrt(mean(x²) + eps)`, per
/// row.
pub fn rms_norm_backward<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 1>,
    eps: f64,
    dy: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let r = (x.clone().square().mean_dim(1) + eps).sqrt().recip();
    let g = dy * weight.unsqueeze();
    let m = (g.clone() * x.clone()).mean_dim(1);
    g * r.clone() - x * (r.powi_scalar(3) * m)
}

/// `silu(gate) · up`.
pub fn swiglu<B: Backend>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
    silu(gate) * up
}

/// `d_gate = dy·up·σ(gate)·(1 + gate·(1 − σ(gate)))`, `d_up = dy·silu(gate)`.
pub fn swiglu_backward<B: Backend>(
    gate: Tensor<B, 2>,
    up: Tensor<B, 2>,
    dy: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let s = sigmoid(gate.clone());
    let d_up = dy.clone() * gate.clone() * s.clone();
    let d_gate = dy * up * s.clone() * ((s.neg() + 1.0) * gate + 1.0);
    (d_gate, d_up)
}
