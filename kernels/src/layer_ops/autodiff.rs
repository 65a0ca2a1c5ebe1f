//! The layer operations under [`Autodiff`]: one graph node each, whose backward calls the inner
//! backend's backward method. The nodes keep their inputs (what the composition's nodes kept
//! too, without its intermediates).

use burn::{
    backend::autodiff::{
        Autodiff, NodeId,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    tensor::{Tensor, TensorPrimitive},
};

use super::{LayerOpsBackend, reference};

impl<B: LayerOpsBackend, C: CheckpointStrategy> LayerOpsBackend for Autodiff<B, C> {
    /// One node with `x` as its parent; a weight that requires a gradient takes the
    /// composition, which differentiates it too.
    fn rms_norm(x: Tensor<Self, 2>, weight: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        if weight.is_require_grad() {
            return reference::rms_norm(x, weight, eps);
        }
        let weight = weight.inner();
        let x = x.into_primitive().tensor();
        let node = x.node.clone();
        let x = inner(x.primitive);
        let out = B::rms_norm(x.clone(), weight.clone(), eps)
            .into_primitive()
            .tensor();
        let out = match RmsNormBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(RmsNormState { x, weight, eps }, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    fn rms_norm_backward(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 1>,
        eps: f64,
        dy: Tensor<Self, 2>,
    ) -> Tensor<Self, 2> {
        Tensor::from_inner(B::rms_norm_backward(
            x.inner(),
            weight.inner(),
            eps,
            dy.inner(),
        ))
    }

    /// One node with `gate` and `up` as its parents.
    fn swiglu(gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let (gate, up) = (gate.into_primitive().tensor(), up.into_primitive().tensor());
        let (gate_node, up_node) = (gate.node.clone(), up.node.clone());
        let (gate, up) = (inner(gate.primitive), inner(up.primitive));
        let out = B::swiglu(gate.clone(), up.clone())
            .into_primitive()
            .tensor();
        let out = match SwigluBackward
            .prepare::<C>([gate_node, up_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((gate, up), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    fn swiglu_backward(
        gate: Tensor<Self, 2>,
        up: Tensor<Self, 2>,
        dy: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        let (d_gate, d_up) = B::swiglu_backward(gate.inner(), up.inner(), dy.inner());
        (Tensor::from_inner(d_gate), Tensor::from_inner(d_up))
    }

    /// One node with `x` as its parent; tables that require a gradient take the composition.
    fn rotary(
        x: Tensor<Self, 2>,
        cos: Tensor<Self, 2>,
        sin: Tensor<Self, 2>,
        head_dim: usize,
    ) -> Tensor<Self, 2> {
        if cos.is_require_grad() || sin.is_require_grad() {
            return reference::rotary(x, cos, sin, head_dim);
        }
        let (cos, sin) = (cos.inner(), sin.inner());
        let x = x.into_primitive().tensor();
        let node = x.node.clone();
        let out = B::rotary(inner(x.primitive), cos.clone(), sin.clone(), head_dim)
            .into_primitive()
            .tensor();
        let out = match RotaryBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((cos, sin, head_dim), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    fn rotary_backward(
        dy: Tensor<Self, 2>,
        cos: Tensor<Self, 2>,
        sin: Tensor<Self, 2>,
        head_dim: usize,
    ) -> Tensor<Self, 2> {
        Tensor::from_inner(B::rotary_backward(
            dy.inner(),
            cos.inner(),
            sin.inner(),
            head_dim,
        ))
    }
}

/// An inner-backend float primitive as a tensor.
fn inner<B: LayerOpsBackend>(t: burn::tensor::ops::FloatTensor<B>) -> Tensor<B, 2> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn register<B: LayerOpsBackend>(grads: &mut Gradients, node: NodeId, grad: Tensor<B, 2>) {
    grads.register::<B>(node, grad.into_primitive().tensor());
}

#[derive(Debug, Clone)]
struct RmsNormState<B: LayerOpsBackend> {
    x: Tensor<B, 2>,
    weight: Tensor<B, 1>,
    eps: f64,
}

#[derive(Debug)]
struct RmsNormBackward;

impl<B: LayerOpsBackend> Backward<B, 1> for RmsNormBackward {
    type State = RmsNormState<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let RmsNormState { x, weight, eps } = ops.state;
            register(
                grads,
                node.id,
                B::rms_norm_backward(x, weight, eps, inner(dy)),
            );
        }
    }
}

#[derive(Debug)]
struct SwigluBackward;

impl<B: LayerOpsBackend> Backward<B, 2> for SwigluBackward {
    type State = (Tensor<B, 2>, Tensor<B, 2>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let [gate_parent, up_parent] = ops.parents;
        if gate_parent.is_none() && up_parent.is_none() {
            return;
        }
        let (gate, up) = ops.state;
        let (d_gate, d_up) = B::swiglu_backward(gate, up, inner(dy));
        if let Some(node) = gate_parent {
            register(grads, node.id, d_gate);
        }
        if let Some(node) = up_parent {
            register(grads, node.id, d_up);
        }
    }
}

#[derive(Debug)]
struct RotaryBackward;

impl<B: LayerOpsBackend> Backward<B, 1> for RotaryBackward {
    type State = (Tensor<B, 2>, Tensor<B, 2>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let (cos, sin, head_dim) = ops.state;
            register(
                grads,
                node.id,
                B::rotary_backward(inner(dy), cos, sin, head_dim),
            );
        }
    }
}
