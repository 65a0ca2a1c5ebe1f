//! The compositions of Burn tensor ops that every backend can run: the forward ones are what
//! `burn::nn::RmsNorm`, `silu(gate) * up` and the models' rotary embedding computed before the
//! trait existed, the backward ones their analytic input gradients.

use burn::tensor::{
    DType, Tensor, TensorData, activation::sigmoid, activation::silu, backend::Backend,
};

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

/// The `[d, d]` signed permutation `R` with `x·R = [−x2 | x1]` for a head `x = [x1 | x2]`.
fn rotate_half<B: Backend>(d: usize, device: &B::Device) -> Tensor<B, 2> {
    let half = d / 2;
    let mut r = vec![0.0f32; d * d];
    for j in 0..half {
        r[(j + half) * d + j] = -1.0;
        r[j * d + j + half] = 1.0;
    }
    Tensor::from_data(TensorData::new(r, [d, d]), device)
}

/// `x·cos + rotate_half(x)·sin`, with `rotate_half` as one product with [`rotate_half`]'s
/// matrix over the heads (a contiguous product, not strided slices).
pub fn rotary<B: Backend>(
    x: Tensor<B, 2>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    head_dim: usize,
) -> Tensor<B, 2> {
    let [rows, n] = x.dims();
    let rotated = x
        .clone()
        .reshape([rows * n / head_dim, head_dim])
        .matmul(rotate_half(head_dim, &x.device()))
        .reshape([rows, n]);
    x * cos + rotated * sin
}

/// `dy·cos + (dy·sin)·Rᵀ`.
pub fn rotary_backward<B: Backend>(
    dy: Tensor<B, 2>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    head_dim: usize,
) -> Tensor<B, 2> {
    let [rows, n] = dy.dims();
    let r = rotate_half(head_dim, &dy.device()).transpose();
    let back = (dy.clone() * sin)
        .reshape([rows * n / head_dim, head_dim])
        .matmul(r)
        .reshape([rows, n]);
    dy * cos + back
}
