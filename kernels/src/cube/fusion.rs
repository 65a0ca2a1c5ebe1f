//! The fusion-wrapped CubeCL backends (what `burn::backend::Wgpu` and `Cuda` resolve to): the
//! forward and the backward are each registered as one custom operation of the fusion stream,
//! executed by the inner backend's kernels.
//!
//! Optional inputs are normalised to a fixed list — absent prefixes and lengths are replaced by
//! placeholder tensors and flagged — because a custom operation has a fixed arity.

use std::marker::PhantomData;

use burn::tensor::{
    Element, Shape,
    ops::{FloatTensor, IntTensor, IntTensorOps},
};
use burn_fusion::{
    Fusion, FusionBackend, FusionRuntime, FusionTensor,
    stream::{Operation, OperationStreams},
};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use crate::op::{AttentionGrads, PrefixAttentionArgs, PrefixAttentionBackend};

/// Which optional inputs are real.
#[derive(Debug, Clone, Copy)]
struct Present {
    prefix: bool,
    prefix_lengths: bool,
    key_lengths: bool,
    scale: f32,
}

/// A fusion tensor of backend `B`.
type FTensor<B> = FusionTensor<<B as FusionBackend>::FusionRuntime>;

/// The fixed input list `[q, k, v, pk, pv]` and `[prefix_lengths, key_lengths]`.
fn normalise<B: FusionBackend>(
    args: PrefixAttentionArgs<Fusion<B>>,
) -> (Present, [FTensor<B>; 5], [FTensor<B>; 2]) {
    let present = Present {
        prefix: args.prefix_key.is_some() && args.prefix_value.is_some(),
        prefix_lengths: args.prefix_lengths.is_some(),
        key_lengths: args.key_lengths.is_some(),
        scale: args.scale,
    };
    let device = args.query.client.device().clone();
    let placeholder = || -> IntTensor<Fusion<B>> {
        <Fusion<B> as IntTensorOps<Fusion<B>>>::int_zeros(
            Shape::new([1]),
            &device,
            B::IntElem::dtype().into(),
        )
    };
    let (pk, pv) = match (args.prefix_key, args.prefix_value) {
        (Some(pk), Some(pv)) => (pk, pv),
        _ => (args.key.clone(), args.value.clone()),
    };
    let plen = args.prefix_lengths.unwrap_or_else(placeholder);
    let klen = args.key_lengths.unwrap_or_else(placeholder);
    (
        present,
        [args.query, args.key, args.value, pk, pv],
        [plen, klen],
    )
}

/// Inner-backend arguments from executed inputs.
fn inner_args<B: FusionBackend>(
    p: Present,
    floats: [B::FloatTensorPrimitive; 5],
    ints: [B::IntTensorPrimitive; 2],
) -> PrefixAttentionArgs<B> {
    let [query, key, value, pk, pv] = floats;
    let [plen, klen] = ints;
    PrefixAttentionArgs {
        query,
        key,
        value,
        prefix_key: p.prefix.then_some(pk),
        prefix_value: p.prefix.then_some(pv),
        prefix_lengths: p.prefix_lengths.then_some(plen),
        key_lengths: p.key_lengths.then_some(klen),
        scale: p.scale,
    }
}

fn fetch<B: FusionBackend>(
    h: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    floats: &[TensorIr],
    ints: &[TensorIr],
) -> ([B::FloatTensorPrimitive; 5], [B::IntTensorPrimitive; 2]) {
    let f = |h: &mut HandleContainer<_>, i: usize| h.get_float_tensor::<B>(&floats[i]);
    let floats = [f(h, 0), f(h, 1), f(h, 2), f(h, 3), f(h, 4)];
    let ints = [
        h.get_int_tensor::<B>(&ints[0]),
        h.get_int_tensor::<B>(&ints[1]),
    ];
    (floats, ints)
}

#[derive(Debug, Clone)]
struct ForwardOp<B> {
    desc: CustomOpIr,
    present: Present,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + PrefixAttentionBackend> Operation<B::FusionRuntime> for ForwardOp<B> {
    fn execute(&self, h: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>) {
        let (inputs, [out, lse]) = self.desc.as_fixed::<7, 2>();
        let (floats, ints) = fetch::<B>(h, &inputs[..5], &inputs[5..]);
        let (o, l) = B::prefix_attention_forward(inner_args::<B>(self.present, floats, ints));
        h.register_float_tensor::<B>(&out.id, o);
        h.register_float_tensor::<B>(&lse.id, l);
    }
}

#[derive(Debug, Clone)]
struct BackwardOp<B> {
    desc: CustomOpIr,
    present: Present,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + PrefixAttentionBackend> Operation<B::FusionRuntime> for BackwardOp<B> {
    fn execute(&self, h: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>) {
        let (inputs, outputs) = self.desc.as_fixed::<10, 5>();
        let (floats, ints) = fetch::<B>(h, &inputs[..5], &inputs[5..7]);
        let out = h.get_float_tensor::<B>(&inputs[7]);
        let lse = h.get_float_tensor::<B>(&inputs[8]);
        let grad_out = h.get_float_tensor::<B>(&inputs[9]);
        let g = B::prefix_attention_backward(
            inner_args::<B>(self.present, floats, ints),
            out,
            lse,
            grad_out,
        );
        let [dq, dk, dv, dpk, dpv] = outputs;
        let device = B::float_device(&g.query);
        h.register_float_tensor::<B>(&dq.id, g.query);
        h.register_float_tensor::<B>(&dk.id, g.key);
        h.register_float_tensor::<B>(&dv.id, g.value);
        // Without a prefix the two prefix outputs are placeholders the caller drops.
        let placeholder = || B::float_zeros(dpk.shape.clone(), &device, dpk.dtype.into());
        h.register_float_tensor::<B>(&dpk.id, g.prefix_key.unwrap_or_else(placeholder));
        h.register_float_tensor::<B>(&dpv.id, g.prefix_value.unwrap_or_else(placeholder));
    }
}

impl<B: FusionBackend + PrefixAttentionBackend> PrefixAttentionBackend for Fusion<B> {
    fn has_fused_prefix_attention() -> bool {
        B::has_fused_prefix_attention()
    }

    fn prefix_attention_forward(
        args: PrefixAttentionArgs<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let dims = args.dims();
        let (present, floats, ints) = normalise::<B>(args);
        let client = floats[0].client.clone();
        let dtype = floats[0].dtype;
        let streams = OperationStreams::with_inputs(floats.iter().chain(ints.iter()));
        let out = TensorIr::uninit(
            client.create_empty_handle(),
            Shape::new([dims.batch, dims.heads, dims.queries, dims.head_dim]),
            dtype,
        );
        let lse = TensorIr::uninit(
            client.create_empty_handle(),
            Shape::new([dims.batch, dims.heads, dims.queries]),
            dtype,
        );
        let inputs: Vec<TensorIr> = floats
            .into_iter()
            .map(|t| t.into_ir())
            .chain(ints.into_iter().map(|t| t.into_ir()))
            .collect();
        let desc = CustomOpIr::new("peft_prefix_attention_forward", &inputs, &[out, lse]);
        let op = ForwardOp::<B> {
            desc: desc.clone(),
            present,
            _b: PhantomData,
        };
        let [out, lse] = two(client.register(streams, OperationIr::Custom(desc), op));
        (out, lse)
    }

    fn prefix_attention_backward(
        args: PrefixAttentionArgs<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
    ) -> AttentionGrads<Self> {
        let dims = args.dims();
        let (present, floats, ints) = normalise::<B>(args);
        let client = floats[0].client.clone();
        let dtype = floats[0].dtype;
        let shapes: [Shape; 5] = [
            floats[0].shape.clone(),
            floats[1].shape.clone(),
            floats[2].shape.clone(),
            if present.prefix {
                floats[3].shape.clone()
            } else {
                Shape::new([1])
            },
            if present.prefix {
                floats[4].shape.clone()
            } else {
                Shape::new([1])
            },
        ];
        let extra = [out, lse, grad_out];
        let streams =
            OperationStreams::with_inputs(floats.iter().chain(ints.iter()).chain(extra.iter()));
        let outputs = shapes.map(|s| TensorIr::uninit(client.create_empty_handle(), s, dtype));
        let inputs: Vec<TensorIr> = floats
            .into_iter()
            .map(|t| t.into_ir())
            .chain(ints.into_iter().map(|t| t.into_ir()))
            .chain(extra.into_iter().map(|t| t.into_ir()))
            .collect();
        let desc = CustomOpIr::new("peft_prefix_attention_backward", &inputs, &outputs);
        let op = BackwardOp::<B> {
            desc: desc.clone(),
            present,
            _b: PhantomData,
        };
        let mut it = client
            .register(streams, OperationIr::Custom(desc), op)
            .into_iter();
        let mut next = || {
            it.next()
                .unwrap_or_else(|| unreachable!("the backward op registers five outputs"))
        };
        let (query, key, value, pk, pv) = (next(), next(), next(), next(), next());
        let _ = dims;
        AttentionGrads {
            query,
            key,
            value,
            prefix_key: present.prefix.then_some(pk),
            prefix_value: present.prefix.then_some(pv),
        }
    }
}

fn two<T>(v: Vec<T>) -> [T; 2] {
    v.try_into()
        .unwrap_or_else(|_| unreachable!("the forward op registers two outputs"))
}
