//! Flex: bf16 weights packed for the host CPU's bf16 instructions ([`super::cpu`]).

use std::sync::Arc;

use burn::{
    backend::Flex,
    tensor::{DType, Int, Tensor},
};

use crate::host::{
    flex_tensor::{contiguous_f32, f32_values, from_f32},
    log_softmax,
};

use super::{
    CpuPair, FrozenLinearBackend, FrozenWeight, Storage, WeightPrecision, burn_backward,
    burn_forward,
    cpu::{CpuKernel, PackedWeight},
    cross_entropy::{record_host_pass, target_log_softmax_reference},
};

impl FrozenLinearBackend for Flex {
    /// Every precision: bf16 products run on the host CPU's kernels (a portable one on any CPU).
    fn supports_precision(_: &Self::Device, _: WeightPrecision) -> bool {
        true
    }

    /// bf16 weights are packed for [`CpuKernel::best`] (`W`; `Wᵀ` on the first backward
    /// product); f32 weights stay tensors for Burn's matmul (the f32 path is numerically the
    /// model as loaded).
    fn frozen_weight(weight: Tensor<Self, 2>, precision: WeightPrecision) -> FrozenWeight<Self> {
        if precision != WeightPrecision::Bf16 {
            return FrozenWeight::tensor(weight, precision);
        }
        let [n, k] = weight.dims();
        let Ok(values) = weight
            .clone()
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
        else {
            return FrozenWeight::tensor(weight, precision);
        };
        match PackedWeight::pack(&values, n, k, CpuKernel::best()) {
            Ok(forward) => FrozenWeight {
                shape: [n, k],
                precision,
                storage: Storage::Cpu(Arc::new(CpuPair::new(forward))),
            },
            // `best` is available by definition; a weight stays usable regardless.
            Err(_) => FrozenWeight::tensor(weight, precision),
        }
    }

    fn frozen_forward(x: Tensor<Self, 2>, weight: &FrozenWeight<Self>) -> Tensor<Self, 2> {
        match &weight.storage {
            Storage::Cpu(p) => product(x, &p.forward),
            Storage::Tensor(_) => burn_forward(x, weight),
        }
    }

    fn frozen_backward(dy: Tensor<Self, 2>, weight: &FrozenWeight<Self>) -> Tensor<Self, 2> {
        match &weight.storage {
            Storage::Cpu(p) => product(dy, p.backward()),
            Storage::Tensor(_) => burn_backward(dy, weight),
        }
    }

    /// One pass per row on the Rayon threads ([`log_softmax`]), the gradient written over the
    /// logits' own values. f32 logits with targets in range; anything else takes the
    /// composition of Burn ops.
    fn target_log_softmax(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        grad: bool,
    ) -> (Tensor<Self, 1>, Option<Tensor<Self, 2>>) {
        let [rows, width] = logits.dims();
        let ids: Option<Vec<usize>> = targets
            .to_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .ok()
            .and_then(|v| {
                v.into_iter()
                    .map(|t| usize::try_from(t).ok().filter(|&t| t < width))
                    .collect()
            });
        let (Some(ids), DType::F32) = (ids, logits.dtype()) else {
            return target_log_softmax_reference(logits, targets, grad);
        };
        record_host_pass();
        let device = logits.device();
        let mut values = logits
            .into_data()
            .into_vec::<f32>()
            .unwrap_or_else(|_| unreachable!("f32 logits checked above"));
        let lp = log_softmax::target_log_softmax(&mut values, width, &ids, grad);
        (
            from_f32(lp, [rows]).to_device(&device),
            grad.then(|| from_f32(values, [rows, width]).to_device(&device)),
        )
    }
}

/// `x·Pᵀ` for a packed `P`, reading `x`'s f32 values in place where it is contiguous.
fn product(x: Tensor<Flex, 2>, p: &PackedWeight) -> Tensor<Flex, 2> {
    let [m, _] = x.dims();
    let device = x.device();
    let x = if x.dtype() == DType::F32 {
        x
    } else {
        x.cast(DType::F32)
    };
    let x = contiguous_f32(x.into_primitive().tensor())
        .unwrap_or_else(|| unreachable!("cast to f32 above"));
    from_f32(p.matmul_wt(f32_values(&x), m), [m, p.outputs()]).to_device(&device)
}
