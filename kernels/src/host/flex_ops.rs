//! Flex's layer operations: the host kernels of [`super::elementwise`] on the tensors' f32
//! values (made contiguous first where they are not). Tensors of another float dtype take the
//! compositions of [`crate::layer_ops::reference`].

use burn::{backend::Flex, tensor::Tensor};
use burn_flex::FlexTensor;

use super::{
    elementwise,
    flex_tensor::{contiguous_f32, f32_values as values, from_f32 as tensor},
};
use crate::layer_ops::{LayerOpsBackend, record_host_call, reference};

/// The contiguous f32 storage of `t`, or `None` for another dtype.
fn host<const D: usize>(t: &Tensor<Flex, D>) -> Option<FlexTensor> {
    contiguous_f32(t.clone().into_primitive().tensor())
}

impl LayerOpsBackend for Flex {
    fn rms_norm(x: Tensor<Self, 2>, weight: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        let (Some(xs), Some(ws)) = (host(&x), host(&weight)) else {
            return reference::rms_norm(x, weight, eps);
        };
        record_host_call();
        tensor(
            elementwise::rms_norm(values(&xs), values(&ws), eps as f32),
            x.dims(),
        )
    }

    fn rms_norm_backward(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 1>,
        eps: f64,
        dy: Tensor<Self, 2>,
    ) -> Tensor<Self, 2> {
        let (Some(xs), Some(ws), Some(dys)) = (host(&x), host(&weight), host(&dy)) else {
            return reference::rms_norm_backward(x, weight, eps, dy);
        };
        record_host_call();
        tensor(
            elementwise::rms_norm_backward(values(&xs), values(&ws), eps as f32, values(&dys)),
            x.dims(),
        )
    }

    fn swiglu(gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let (Some(gs), Some(us)) = (host(&gate), host(&up)) else {
            return reference::swiglu(gate, up);
        };
        record_host_call();
        tensor(elementwise::swiglu(values(&gs), values(&us)), gate.dims())
    }

    fn swiglu_backward(
        gate: Tensor<Self, 2>,
        up: Tensor<Self, 2>,
        dy: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        let (Some(gs), Some(us), Some(dys)) = (host(&gate), host(&up), host(&dy)) else {
            return reference::swiglu_backward(gate, up, dy);
        };
        record_host_call();
        let dims = gate.dims();
        let (d_gate, d_up) = elementwise::swiglu_backward(values(&gs), values(&us), values(&dys));
        (tensor(d_gate, dims), tensor(d_up, dims))
    }

    fn rotary(
        x: Tensor<Self, 2>,
        cos: Tensor<Self, 2>,
        sin: Tensor<Self, 2>,
        head_dim: usize,
    ) -> Tensor<Self, 2> {
        match rotary(&x, &cos, &sin, head_dim, false) {
            Some(out) => out,
            None => reference::rotary(x, cos, sin, head_dim),
        }
    }

    fn rotary_backward(
        dy: Tensor<Self, 2>,
        cos: Tensor<Self, 2>,
        sin: Tensor<Self, 2>,
        head_dim: usize,
    ) -> Tensor<Self, 2> {
        match rotary(&dy, &cos, &sin, head_dim, true) {
            Some(dx) => dx,
            None => reference::rotary_backward(dy, cos, sin, head_dim),
        }
    }
}

/// The host kernel for [`LayerOpsBackend::rotary`] (or its backward), or `None` when a tensor is
/// not f32.
fn rotary(
    x: &Tensor<Flex, 2>,
    cos: &Tensor<Flex, 2>,
    sin: &Tensor<Flex, 2>,
    head_dim: usize,
    backward: bool,
) -> Option<Tensor<Flex, 2>> {
    let (xs, cs, ss) = (host(x)?, host(cos)?, host(sin)?);
    record_host_call();
    let [_, n] = x.dims();
    let out = elementwise::rotary(values(&xs), values(&cs), values(&ss), n, head_dim, backward);
    Some(tensor(out, x.dims()))
}
