//! The decoder's linear layers: frozen weights (`peft_kernels::FrozenWeight`) in the precision
//! the model was loaded in, plus an optional bias, applied to `[B, L, in]` as one `[B·L, in]`
//! matrix product (one large product instead of a batch of small ones, forward and backward).

use burn::{
    module::{Module, Param},
    tensor::Tensor,
};
use peft_kernels::{FrozenWeight, PrefixAttentionBackend, WeightPrecision};

/// A frozen linear layer `y = x·Wᵀ + b`, `W` stored `[out, in]` as the weight files store it.
///
/// The weight is no parameter: it never gets a gradient, and the backward of `x·Wᵀ` computes
/// only `dx = dy·W` (`FrozenLinearBackend`).
#[derive(Module, Debug)]
pub struct FrozenLinear<B: PrefixAttentionBackend> {
    /// `[out, in]`.
    pub weight: FrozenWeight<B>,
    /// `[out]` (the q/k/v projections of Qwen-style models).
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: PrefixAttentionBackend> FrozenLinear<B> {
    /// A layer from its `[out, in]` weight, prepared for products in `precision`.
    pub fn new(
        weight: Tensor<B, 2>,
        bias: Option<Tensor<B, 1>>,
        precision: WeightPrecision,
    ) -> Self {
        Self {
            weight: B::frozen_weight(weight, precision),
            bias: bias.map(Param::from_tensor),
        }
    }

    /// Inputs `in`.
    pub fn inputs(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Outputs `out`.
    pub fn outputs(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Values of the frozen weight (which Burn's `num_params` does not see: it is no
    /// parameter; the bias is one).
    pub fn weight_values(&self) -> usize {
        let [out, input] = self.weight.dims();
        out * input
    }
}

/// `layer` on `[B, L, in]`.
pub(crate) fn linear<B: PrefixAttentionBackend>(
    layer: &FrozenLinear<B>,
    x: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [y] = linears([layer], x);
    y
}

/// [`linear`] of several layers on the same input. Decoding products of a few rows with f32
/// weights on a CPU backend run together (`matmul::matmul_wt_many`: one parallel region for the
/// layer's q/k/v or gate/up); every other product is the backend's frozen product.
pub(crate) fn linears<B: PrefixAttentionBackend, const N: usize>(
    layers: [&FrozenLinear<B>; N],
    x: Tensor<B, 3>,
) -> [Tensor<B, 3>; N] {
    let [b, l, d_in] = x.dims();
    let x = x.reshape([b * l, d_in]);
    let tensors: Option<Vec<Tensor<B, 2>>> = layers
        .iter()
        .map(|layer| layer.weight.f32_tensor().cloned())
        .collect();
    let ys: [Tensor<B, 2>; N] = match tensors {
        Some(ws) if super::matmul::few_rows_on_host::<B>(b * l) => {
            let ws: [Tensor<B, 2>; N] = match ws.try_into() {
                Ok(ws) => ws,
                Err(_) => unreachable!("one weight per layer"),
            };
            super::matmul::matmul_wt_many(x, ws)
        }
        _ => layers.map(|layer| B::frozen_forward(x.clone(), &layer.weight)),
    };
    // `[T; N]::map` calls the closure once per element, in order: product `i` is layer `i`'s.
    let mut i = 0;
    ys.map(|y| {
        let layer = layers[i];
        i += 1;
        let d_out = y.dims()[1];
        let y = match &layer.bias {
            Some(bias) => y + bias.val().unsqueeze::<2>(),
            None => y,
        };
        y.reshape([b, l, d_out])
    })
}
