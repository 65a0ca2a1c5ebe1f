//! Flex float tensors as f32 slices and back: what every host kernel on Flex (attention, the
//! layer operations, the bf16 products) needs around its slice code.

use burn::{
    backend::Flex,
    tensor::{DType, Tensor, TensorData, TensorPrimitive},
};
use burn_flex::FlexTensor;

/// `t` with its f32 values in one contiguous run (a copy only where they are not), or `None`
/// when `t` is not f32.
pub(crate) fn contiguous_f32(t: FlexTensor) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    Some(if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    })
}

/// The values of a tensor returned by [`contiguous_f32`].
pub(crate) fn f32_values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .unwrap_or_else(|| unreachable!("a contiguous f32 tensor is a slice of f32"))
}

/// A new row-major f32 tensor.
pub(crate) fn from_f32<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(FlexTensor::from_data(
        TensorData::new(values, shape),
    )))
}
