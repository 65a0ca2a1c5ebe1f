//! Frozen products under [`Autodiff`]: one graph node whose backward is `dx = dy·W` through the
//! inner backend. The node keeps only the weight (shared, not copied), never the input.

use burn::{
    backend::autodiff::{
        Autodiff,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    tensor::{Tensor, TensorPrimitive},
};

use super::{FrozenLinearBackend, FrozenWeight, WeightPrecision};

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
