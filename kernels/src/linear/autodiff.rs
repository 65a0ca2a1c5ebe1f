//! Frozen products under [`Autodiff`]: one graph node whose backward is `dx = dy·W` through the
//! inner backend. The node keeps only the weight (shared, not copied), never the input.

use burn::{
    backend::autodiff::{
        Autodiff,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    tensor::{Int, Tensor, TensorPrimitive},
};

use super::{FrozenLinearBackend, FrozenWeight, WeightPrecision, cross_entropy};

impl<B: FrozenLinearBackend, C: CheckpointStrategy> FrozenLinearBackend for Autodiff<B, C> {
    fn supports_precision(device: &Self::Device, precision: WeightPrecision) -> bool {
        B::supports_precision(device, precision)
    }

    fn frozen_weight(weight: Tensor<Self, 2>, precision: WeightPrecision) -> FrozenWeight<Self> {
        B::frozen_weight(weight.inner(), precision).retensor(Tensor::from_inner)
    }

    fn frozen_forward(x: Tensor<Self, 2>, weight: &FrozenWeight<Self>) -> Tensor<Self, 2> {
        let inner = weight.retensor(Tensor::inner);
        let x = x.into_primitive().tensor();
        let node = x.node.clone();
        let out = B::frozen_forward(
            Tensor::from_primitive(TensorPrimitive::Float(x.primitive)),
            &inner,
        )
        .into_primitive()
        .tensor();
        let out = match FrozenProductBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(inner, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    fn frozen_backward(dy: Tensor<Self, 2>, weight: &FrozenWeight<Self>) -> Tensor<Self, 2> {
        Tensor::from_inner(B::frozen_backward(
            dy.inner(),
            &weight.retensor(Tensor::inner),
        ))
    }

    /// One graph node: the inner backend's chunked forward, which also gives the per-row
    /// log-sum-exp; the node keeps the input `[n, in]`, the targets and that `[n]`, and its
    /// backward recomputes the logits chunk by chunk ([`cross_entropy`]).
    fn frozen_log_probs(
        x: Tensor<Self, 2>,
        weight: &FrozenWeight<Self>,
        targets: Tensor<Self, 1, Int>,
    ) -> Tensor<Self, 1> {
        let inner = weight.retensor(Tensor::inner);
        let targets = targets.inner();
        let x = x.into_primitive().tensor();
        let node = x.node.clone();
        let x: Tensor<B, 2> = Tensor::from_primitive(TensorPrimitive::Float(x.primitive));
        let (log_probs, lse) =
            cross_entropy::log_probs_forward::<B>(x.clone(), &inner, targets.clone());
        let log_probs = log_probs.into_primitive().tensor();
        let out = match LogProbsBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                LogProbsState {
                    x,
                    weight: inner,
                    targets,
                    lse,
                },
                log_probs,
            ),
            OpsKind::UnTracked(prep) => prep.finish(log_probs),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    fn frozen_log_probs_backward(
        x: Tensor<Self, 2>,
        weight: &FrozenWeight<Self>,
        targets: Tensor<Self, 1, Int>,
        lse: Tensor<Self, 1>,
        dlp: Tensor<Self, 1>,
    ) -> Tensor<Self, 2> {
        Tensor::from_inner(B::frozen_log_probs_backward(
            x.inner(),
            &weight.retensor(Tensor::inner),
            targets.inner(),
            lse.inner(),
            dlp.inner(),
        ))
    }
}

/// What the backward of [`FrozenLinearBackend::frozen_log_probs`] needs.
#[derive(Debug, Clone)]
struct LogProbsState<B: FrozenLinearBackend> {
    x: Tensor<B, 2>,
    weight: FrozenWeight<B>,
    targets: Tensor<B, 1, Int>,
    lse: Tensor<B, 1>,
}

#[derive(Debug)]
struct LogProbsBackward;

impl<B: FrozenLinearBackend> Backward<B, 1> for LogProbsBackward {
    type State = LogProbsState<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dlp = grads.consume::<B>(&ops.node);
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let LogProbsState {
                x,
                weight,
                targets,
                lse,
            } = ops.state;
            let dx = B::frozen_log_probs_backward(
                x,
                &weight,
                targets,
                lse,
                Tensor::from_primitive(TensorPrimitive::Float(dlp)),
            );
            grads.register::<B>(node.id, dx.into_primitive().tensor());
        }
    }
}

#[derive(Debug)]
struct FrozenProductBackward;

impl<B: FrozenLinearBackend> Backward<B, 1> for FrozenProductBackward {
    type State = FrozenWeight<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let dx = B::frozen_backward(
                Tensor::from_primitive(TensorPrimitive::Float(dy)),
                &ops.state,
            );
            grads.register::<B>(node.id, dx.into_primitive().tensor());
        }
    }
}
