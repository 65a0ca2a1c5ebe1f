//! The fusion-wrapped CubeCL backends (what `burn::backend::Wgpu` and `Cuda` resolve to): the
//! forward and the backward are each registered as one custom operation of the fusion stream,
//! executed by the inner backend's kernels.
//!
//! The inputs are the five float tensors `[q, k, v, pk, pv]` (an absent prefix is stood in for by
//! the keys and values, flagged, never read) followed by the per-row lengths that were given, in
//! that order; the flags say which. Absent lengths cost nothing: no placeholder is allocated.

use std::marker::PhantomData;

use burn::tensor::{Shape, ops::FloatTensor};
use burn_fusion::{
    Fusion, FusionBackend, FusionRuntime, FusionTensor,
    stream::{Operation, OperationStreams},
};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use crate::{
    counts::Caller,
    op::{AttentionGrads, PrefixAttentionArgs, PrefixAttentionBackend},
};

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

impl Present {
    /// How many length tensors follow the five float inputs.
    fn lengths(self) -> usize {
        usize::from(self.prefix_lengths) + usize::from(self.key_lengths)
    }
}

/// The float inputs `[q, k, v, pk, pv]` and the lengths that were given (prefix, then key).
fn normalise<B: FusionBackend>(
    args: PrefixAttentionArgs<Fusion<B>>,
) -> (Present, [FTensor<B>; 5], Vec<FTensor<B>>) {
    let present = Present {
        prefix: args.prefix_key.is_some() && args.prefix_value.is_some(),
        prefix_lengths: args.prefix_lengths.is_some(),
        key_lengths: args.key_lengths.is_some(),
        scale: args.scale,
    };
    let (pk, pv) = match (args.prefix_key, args.prefix_value) {
        (Some(pk), Some(pv)) => (pk, pv),
        _ => (args.key.clone(), args.value.clone()),
    };
    let lengths = args
        .prefix_lengths
        .into_iter()
        .chain(args.key_lengths)
        .collect();
    (present, [args.query, args.key, args.value, pk, pv], lengths)
}

/// Inner-backend arguments from the executed inputs: the five floats, then the given lengths.
fn fetch_args<B: FusionBackend>(
    h: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    p: Present,
    inputs: &[TensorIr],
) -> PrefixAttentionArgs<B> {
    let f = |h: &mut HandleContainer<_>, i: usize| h.get_float_tensor::<B>(&inputs[i]);
    let [query, key, value, pk, pv] = [f(h, 0), f(h, 1), f(h, 2), f(h, 3), f(h, 4)];
    let mut ints = inputs[5..5 + p.lengths()]
        .iter()
        .map(|ir| h.get_int_tensor::<B>(ir));
    let prefix_lengths = if p.prefix_lengths { ints.next() } else { None };
    let key_lengths = if p.key_lengths { ints.next() } else { None };
    PrefixAttentionArgs {
        query,
        key,
        value,
        prefix_key: p.prefix.then_some(pk),
        prefix_value: p.prefix.then_some(pv),
        prefix_lengths,
        key_lengths,
        scale: p.scale,
    }
}

#[derive(Debug, Clone)]
struct ForwardOp<B> {
    desc: CustomOpIr,
    present: Present,
    /// The thread that queued the call: the path it takes is counted there.
    caller: Caller,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + PrefixAttentionBackend> Operation<B::FusionRuntime> for ForwardOp<B> {
    fn execute(&self, h: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>) {
        let [out, lse] = &self.desc.outputs[..] else {
            unreachable!("the forward op registers two outputs")
        };
        let args = fetch_args::<B>(h, self.present, &self.desc.inputs);
        let (o, l) = self.caller.run(|| B::prefix_attention_forward(args));
        h.register_float_tensor::<B>(&out.id, o);
        h.register_float_tensor::<B>(&lse.id, l);
    }
}

#[derive(Debug, Clone)]
struct BackwardOp<B> {
    desc: CustomOpIr,
    present: Present,
    /// The thread that queued the call: the path it takes is counted there.
    caller: Caller,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + PrefixAttentionBackend> Operation<B::FusionRuntime> for BackwardOp<B> {
    fn execute(&self, h: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>) {
        let inputs = &self.desc.inputs;
        let [dq, dk, dv, dpk, dpv] = &self.desc.outputs[..] else {
            unreachable!("the backward op registers five outputs")
        };
        let args = fetch_args::<B>(h, self.present, inputs);
        // out, lse and grad_out follow the lengths.
        let extra = 5 + self.present.lengths();
        let out = h.get_float_tensor::<B>(&inputs[extra]);
        let lse = h.get_float_tensor::<B>(&inputs[extra + 1]);
        let grad_out = h.get_float_tensor::<B>(&inputs[extra + 2]);
        let g = self
            .caller
            .run(|| B::prefix_attention_backward(args, out, lse, grad_out));
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

/// Frozen products through Burn's fused matmul (the trait's defaults).
impl<B: FusionBackend> crate::FrozenLinearBackend for Fusion<B> {}

/// Burn's fusion compiles the compositions of tensor ops into its own kernels.
impl<B: FusionBackend> crate::LayerOpsBackend for Fusion<B> {}

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
        // f32 for every input dtype (the CubeCL backends' log-sum-exp is always f32).
        let lse = TensorIr::uninit(
            client.create_empty_handle(),
            Shape::new([dims.batch, dims.heads, dims.queries]),
            burn::tensor::DType::F32,
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
            caller: Caller::current(),
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
            caller: Caller::current(),
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
