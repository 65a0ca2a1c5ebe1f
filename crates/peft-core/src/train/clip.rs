//! Global-norm gradient clipping over all of an adapter's parameters (Burn's built-in clipping
//! is per tensor), computed on the device without a host round trip.

use burn::{
    module::{AutodiffModule, ModuleVisitor, Param, ParamId},
    optim::GradientsParams,
    tensor::{Tensor, backend::AutodiffBackend},
};

/// Sum of squares of every gradient of `module`'s parameters.
struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let sq = g.square().sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + sq,
                None => sq,
            });
        }
    }
}

/// Multiplies every gradient by a factor `[1]`.
struct Scale<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    factor: Tensor<B::InnerBackend, 1>,
    ids: Vec<ParamId>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let shape = [1; D];
            let scaled = g * self.factor.clone().reshape(shape);
            self.grads.register::<B::InnerBackend, D>(param.id, scaled);
            self.ids.push(param.id);
        }
    }
}

/// The global L2 norm of the gradients `[1]` (before clipping), after scaling them so it is at
/// most `max_norm` (Hugging Face's `clip_grad_norm_` with its 1e-6 guard).
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: Option<f64>,
) -> Option<Tensor<B::InnerBackend, 1>> {
    let mut sq = SquaredNorm::<B> { grads, total: None };
    module.visit(&mut sq);
    let norm = sq.total?.sqrt();
    if let Some(max) = max_norm {
        let factor = norm
            .clone()
            .add_scalar(1e-6)
            .recip()
            .mul_scalar(max)
            .clamp_max(1.0);
        module.visit(&mut Scale::<B> {
            grads,
            factor,
            ids: Vec::new(),
        });
    }
    Some(norm)
}
