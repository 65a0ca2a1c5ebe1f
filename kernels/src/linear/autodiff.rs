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

    /// One graph node: the inner backend's chunked pass ([`cross_entropy::log_probs`]), which,
    /// when the node is tracked, also gives each row's input gradient `G` `[n, in]`; the node
    /// keeps `G` alone, and its backward scales row `i` by the upstream gradient `dlpᵢ`.
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
        let out = match LogProbsBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (log_probs, grad) = cross_entropy::log_probs::<B>(x, &inner, targets, true);
                let grad = grad.unwrap_or_else(|| unreachable!("asked for the gradient"));
                prep.finish(grad, log_probs.into_primitive().tensor())
            }
            OpsKind::UnTracked(prep) => {
                let (log_probs, _) = cross_entropy::log_probs::<B>(x, &inner, targets, false);
                prep.finish(log_probs.into_primitive().tensor())
            }
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    fn target_log_softmax(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        grad: bool,
    ) -> (Tensor<Self, 1>, Option<Tensor<Self, 2>>) {
        let (lp, g) = B::target_log_softmax(logits.inner(), targets.inner(), grad);
        (Tensor::from_inner(lp), g.map(Tensor::from_inner))
    }
}

#[derive(Debug)]
struct LogProbsBackward;

impl<B: FrozenLinearBackend> Backward<B, 1> for LogProbsBackward {
    /// The per-row input gradient `G` `[n, in]` of the log-probabilities.
    type State = Tensor<B, 2>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dlp = grads.consume::<B>(&ops.node);
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let dlp: Tensor<B, 1> = Tensor::from_primitive(TensorPrimitive::Float(dlp));
            let dx = ops.state * dlp.unsqueeze_dim::<2>(1);
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
