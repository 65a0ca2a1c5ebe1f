//! Prefix attention under [`Autodiff`]: one graph node whose backward calls the inner backend's
//! [`prefix_attention_backward`](PrefixAttentionBackend::prefix_attention_backward).
//!
//! Nothing of size `[B, H, L, P + S]` is kept between the passes: the node's state is its inputs
//! (held through the checkpointer, so Burn's checkpointing strategies may recompute them), the
//! output and the f32 log-sum-exp.

use burn::{
    backend::autodiff::{
        Autodiff, NodeId,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    tensor::{
        backend::AutodiffBackend,
        ops::{FloatTensor, IntTensor},
    },
};

use crate::op::{PrefixAttentionArgs, PrefixAttentionBackend};

impl<B: PrefixAttentionBackend, C: CheckpointStrategy> PrefixAttentionBackend for Autodiff<B, C> {
    fn has_fused_prefix_attention() -> bool {
        B::has_fused_prefix_attention()
    }

    fn runs_on_host_thread() -> bool {
        B::runs_on_host_thread()
    }

    fn single_threaded_matvec() -> bool {
        B::single_threaded_matvec()
    }

    fn prefix_attention_forward(
        args: PrefixAttentionArgs<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let lengths = Lengths::<B> {
            prefix: args.prefix_lengths,
            key: args.key_lengths,
            scale: args.scale,
        };
        let (out, lse) = match (args.prefix_key, args.prefix_value) {
            (Some(pk), Some(pv)) => {
                record::<B, C, 5>([args.query, args.key, args.value, pk, pv], lengths)
            }
            _ => record::<B, C, 3>([args.query, args.key, args.value], lengths),
        };
        (out, <Self as AutodiffBackend>::from_inner(lse))
    }
}

/// The non-differentiable arguments of a call.
#[derive(Debug, Clone)]
struct Lengths<B: PrefixAttentionBackend> {
    prefix: Option<IntTensor<B>>,
    key: Option<IntTensor<B>>,
    scale: f32,
}

impl<B: PrefixAttentionBackend> Lengths<B> {
    /// Inner-backend arguments from the inputs `[q, k, v]` or `[q, k, v, pk, pv]`.
    fn args<const N: usize>(self, inputs: [FloatTensor<B>; N]) -> PrefixAttentionArgs<B> {
        let mut it = inputs.into_iter();
        let (query, key, value) = (next(&mut it), next(&mut it), next(&mut it));
        let (prefix_key, prefix_value) = (it.next(), it.next());
        PrefixAttentionArgs {
            query,
            key,
            value,
            prefix_key,
            prefix_value,
            prefix_lengths: self.prefix,
            key_lengths: self.key,
            scale: self.scale,
        }
    }
}

fn next<T>(it: &mut impl Iterator<Item = T>) -> T {
    it.next()
        .unwrap_or_else(|| unreachable!("attention inputs are q, k, v (+ pk, pv)"))
}

#[derive(Debug, Clone)]
struct State<B: PrefixAttentionBackend, const N: usize> {
    inputs: [NodeId; N],
    lengths: Lengths<B>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
}

#[derive(Debug)]
struct PrefixAttentionBackward;

impl<B: PrefixAttentionBackend, const N: usize> Backward<B, N> for PrefixAttentionBackward {
    type State = State<B, N>;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let grad_out = grads.consume::<B>(&ops.node);
        let State {
            inputs,
            lengths,
            out,
            lse,
        } = ops.state;
        let inputs = inputs.map(|id| checkpointer.retrieve_node_output::<FloatTensor<B>>(id));
        let g = B::prefix_attention_backward(lengths.args(inputs), out, lse, grad_out);
        let all = [
            Some(g.query),
            Some(g.key),
            Some(g.value),
            g.prefix_key,
            g.prefix_value,
        ];
        for (parent, grad) in ops.parents.into_iter().zip(all) {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// Runs the inner forward and records one graph node for it.
fn record<B: PrefixAttentionBackend, C: CheckpointStrategy, const N: usize>(
    inputs: [FloatTensor<Autodiff<B, C>>; N],
    lengths: Lengths<B>,
) -> (FloatTensor<Autodiff<B, C>>, FloatTensor<B>) {
    let nodes = inputs.each_ref().map(|t| t.node.clone());
    let primitives = inputs.each_ref().map(|t| t.primitive.clone());
    match PrefixAttentionBackward
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let ids = inputs.each_ref().map(|t| prep.checkpoint(t));
            let (out, lse) = B::prefix_attention_forward(lengths.clone().args(primitives));
            let state = State {
                inputs: ids,
                lengths,
                out: out.clone(),
                lse: lse.clone(),
            };
            (prep.finish(state, out), lse)
        }
        OpsKind::UnTracked(prep) => {
            let (out, lse) = B::prefix_attention_forward(lengths.args(primitives));
            (prep.finish(out), lse)
        }
    }
}
