//! Flex's prefix attention: the host kernels of [`super::attention`] read Flex's f32 storage in
//! place (any layout with non-negative strides, so the model's `[B, L, H, d]` projections viewed
//! as `[B, H, L, d]` are not copied first) and return new tensors stored `[B, L, H, d]`, viewed
//! as `[B, H, L, d]`, so that the model's way back to `[B, L, H·d]` is not a copy either.
//!
//! Tensors of another float dtype take the reference path, counted as such
//! ([`crate::path_counts`]).

use burn::{
    backend::Flex,
    tensor::{DType, Int, Tensor, ops::FloatTensor},
};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{
    attention::{self, HostArgs, View4},
    flex_tensor::from_f32,
};
use crate::{
    counts::{Ran, record},
    op::{AttentionGrads, PrefixAttentionArgs},
    reference,
};

/// `t` as an f32 tensor whose strides are all non-negative (a copy only when one is negative).
fn host_layout(t: &FlexTensor) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    Some(if t.layout().strides().iter().all(|&s| s >= 0) {
        t.clone()
    } else {
        t.to_contiguous()
    })
}

/// The view of a tensor prepared by [`host_layout`].
fn view(t: &FlexTensor) -> View4<'_> {
    let strides = t.layout().strides();
    View4 {
        data: t.storage::<f32>(),
        offset: t.layout().start_offset(),
        strides: std::array::from_fn(|i| strides[i].unsigned_abs()),
    }
}

fn lengths(t: Option<FlexTensor>) -> Option<Vec<usize>> {
    t.map(|t| {
        Tensor::<Flex, 1, Int>::from_primitive(t)
            .into_data()
            .iter::<i64>()
            .map(|x| usize::try_from(x).unwrap_or(0))
            .collect()
    })
}

/// The inputs of a call prepared for the host kernels, or `None` when one is not f32.
struct Prepared {
    tensors: Vec<FlexTensor>,
    args: PrefixAttentionArgs<Flex>,
}

impl Prepared {
    /// The inputs of `args` in host layouts, or `None` when one is not f32.
    fn host_inputs(args: &PrefixAttentionArgs<Flex>) -> Option<Vec<FlexTensor>> {
        let mut inputs = vec![&args.query, &args.key, &args.value];
        inputs.extend(args.prefix_key.iter().chain(&args.prefix_value));
        inputs.into_iter().map(host_layout).collect()
    }

    fn host_args(&self) -> HostArgs<'_> {
        let t = &self.tensors;
        HostArgs {
            dims: self.args.dims(),
            query: view(&t[0]),
            key: view(&t[1]),
            value: view(&t[2]),
            prefix: (t.len() == 5).then(|| (view(&t[3]), view(&t[4]))),
            prefix_lengths: lengths(self.args.prefix_lengths.clone()),
            key_lengths: lengths(self.args.key_lengths.clone()),
            scale: self.args.scale,
        }
    }
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    from_f32(values, shape).into_primitive().tensor()
}

/// `[b, h, l, d]` row-major values as a `[b, h, l, d]` tensor stored `[b, l, h, d]` (a view with
/// dimensions 1 and 2 swapped): the layout of the projections the model makes heads of, so
/// its `swap_dims(1, 2)` and reshape to `[b, l, h·d]` after the attention (forward, and the
/// autodiff backward of the projections' reshape) need no copy. The values are moved over on
/// the Rayon threads, one `[h, d]` row of the new layout per item.
fn sequence_major(values: Vec<f32>, [b, h, l, d]: [usize; 4]) -> FlexTensor {
    let mut moved = vec![0.0f32; values.len()];
    if d > 0 && h > 0 {
        moved
            .par_chunks_mut(h * d)
            .enumerate()
            .for_each(|(row, dst)| {
                let (bi, li) = (row / l.max(1), row % l.max(1));
                for (hi, dst) in dst.chunks_exact_mut(d).enumerate() {
                    let src = ((bi * h + hi) * l + li) * d;
                    dst.copy_from_slice(&values[src..src + d]);
                }
            });
    }
    tensor(moved, [b, l, h, d]).transpose(1, 2)
}

/// [`crate::PrefixAttentionBackend::prefix_attention_forward`] for Flex.
pub(crate) fn forward(args: PrefixAttentionArgs<Flex>) -> (FloatTensor<Flex>, FloatTensor<Flex>) {
    let Some(tensors) = Prepared::host_inputs(&args) else {
        let (out, lse) = reference::forward_with_lse::<Flex>(&args.into_tensors());
        return (out.into_primitive().tensor(), lse.into_primitive().tensor());
    };
    let prepared = Prepared { tensors, args };
    record(Ran::FusedForward);
    let host = prepared.host_args();
    let d = host.dims;
    let (out, lse) = attention::forward(&host);
    (
        sequence_major(out, [d.batch, d.heads, d.queries, d.head_dim]),
        tensor(lse, [d.batch, d.heads, d.queries]),
    )
}

/// [`crate::PrefixAttentionBackend::prefix_attention_backward`] for Flex.
pub(crate) fn backward(
    args: PrefixAttentionArgs<Flex>,
    out: FloatTensor<Flex>,
    lse: FloatTensor<Flex>,
    grad_out: FloatTensor<Flex>,
) -> AttentionGrads<Flex> {
    let Some(tensors) = Prepared::host_inputs(&args) else {
        return reference_backward(args, out, lse, grad_out);
    };
    let prepared = Prepared { tensors, args };
    let lse_values = lse.to_contiguous().as_slice::<f32>().map(<[f32]>::to_vec);
    let (Some(out), Some(grad_out), Some(lse)) =
        (host_layout(&out), host_layout(&grad_out), lse_values)
    else {
        return reference_backward(prepared.args, out, lse, grad_out);
    };
    record(Ran::FusedBackward);
    let host = prepared.host_args();
    let d = host.dims;
    let g = attention::backward(&host, view(&out), &lse, view(&grad_out));
    let kv = [d.batch, d.kv_heads, d.keys, d.head_dim];
    let prefix = [d.prefix_batch, d.kv_heads, d.prefix, d.head_dim];
    let (prefix_key, prefix_value) = match g.prefix {
        Some((pk, pv)) => (Some(tensor(pk, prefix)), Some(tensor(pv, prefix))),
        None => (None, None),
    };
    AttentionGrads {
        query: sequence_major(g.query, [d.batch, d.heads, d.queries, d.head_dim]),
        key: sequence_major(g.key, kv),
        value: sequence_major(g.value, kv),
        prefix_key,
        prefix_value,
    }
}

fn reference_backward(
    args: PrefixAttentionArgs<Flex>,
    out: FloatTensor<Flex>,
    lse: FloatTensor<Flex>,
    grad_out: FloatTensor<Flex>,
) -> AttentionGrads<Flex> {
    reference::backward::<Flex>(
        &args.into_tensors(),
        float(out),
        float(lse),
        float(grad_out),
    )
}

fn float<const D: usize>(t: FloatTensor<Flex>) -> Tensor<Flex, D> {
    Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(t))
}
