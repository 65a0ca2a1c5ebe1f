//! Data-parallel training: peers that each hold a replica of the frozen base and a copy of the
//! adapter, train on their shard of every global batch, and sum their gradients with an
//! all-reduce before the (identical) optimizer step.
//!
//! The result does not depend on the layout. The global batch of micro-batch `i` is the one a
//! single device trains on ([`super::batching::BatchPlan`] is a pure function of seed and index);
//! peer `r` of `n` takes the `r`-th contiguous slice of its rows ([`shard`]). Every peer knows
//! the whole batch, so it divides its summed token losses by the global target-token count
//! itself, and the all-reduced *sum* of the peers' gradients is exactly the single-device
//! gradient of the mean loss — not a mean of per-peer means. Clipping and AdamW then run on the
//! same values on every peer, so their states stay identical.
//!
//! The transport is a [`Collective`]: [`Solo`] for one device, or (feature `collective`)
//! [`burn_collective::BurnCollective`]: peers that are threads of one process
//! ([`peers::run_local_peers`]) sum through Burn's `burn-collective` engine, and processes
//! (nodes, on one or several machines) through the coordinator of [`nodes`].

#[cfg(feature = "collective")]
pub mod burn_collective;
pub mod nodes;
#[cfg(feature = "collective")]
pub mod peers;

use std::ops::Range;

use burn::{
    module::{AutodiffModule, ModuleVisitor, Param},
    optim::GradientsParams,
    tensor::{
        Tensor,
        backend::{AutodiffBackend, Backend},
    },
};

use crate::error::Result;

/// The sum of a vector across all peers of a run.
pub trait Collective<B: Backend> {
    /// This peer's index in `0..world`; peer 0 writes the run's files.
    fn rank(&self) -> usize;
    /// The number of peers.
    fn world(&self) -> usize;
    /// Returns the element-wise sum of `values` over every peer. Every peer calls it the same
    /// number of times with vectors of the same length; an error when a peer is lost.
    fn all_reduce_sum(&mut self, values: Tensor<B, 1>) -> Result<Tensor<B, 1>>;
}

/// One device: the sum over one peer is the vector itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Solo;

impl<B: Backend> Collective<B> for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, values: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        Ok(values)
    }
}

/// The devices of `n` local peers: the backend's default device for one peer, else devices
/// `0..n` of the default device's kind (CUDA device indices; the CPU backends have one device,
/// which the peers share).
pub fn peer_devices<B: Backend>(n: usize) -> Vec<B::Device> {
    use burn::tensor::backend::{Device as _, DeviceId};
    let default = B::Device::default();
    if n <= 1 {
        return vec![default];
    }
    let kind = default.to_id().type_id;
    (0..n)
        .map(|i| B::Device::from_id(DeviceId::new(kind, i as u16)))
        .collect()
}

/// The rows of a batch of `len` rows that peer `rank` of `world` trains on: contiguous slices,
/// the first `len % world` one row longer. A peer's slice is empty when the batch has fewer
/// rows than there are peers; it then contributes zero gradients.
pub fn shard(len: usize, rank: usize, world: usize) -> Range<usize> {
    let world = world.max(1);
    let (base, extra) = (len / world, len % world);
    let start = rank * base + rank.min(extra);
    let size = base + usize::from(rank < extra);
    start.min(len)..(start + size).min(len)
}

/// Gathers the gradients of `module`'s trainable parameters, in the module's visiting order, as
/// one flat vector (zeros for a parameter this peer produced no gradient for).
struct Flatten<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    device: B::Device,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.is_require_grad() {
            return;
        }
        let dims = param.val().dims();
        let n = dims.iter().product::<usize>();
        let grad = self
            .grads
            .remove::<B::InnerBackend, D>(param.id)
            .unwrap_or_else(|| Tensor::zeros(dims, &self.device));
        self.parts.push(grad.reshape([n]));
    }
}

/// Puts the slices of a flat vector back as the gradients of `module`'s trainable parameters.
struct Unflatten<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    flat: Tensor<B::InnerBackend, 1>,
    offset: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.is_require_grad() {
            return;
        }
        let dims = param.val().dims();
        let n = dims.iter().product::<usize>();
        let part = self.flat.clone().slice(self.offset..self.offset + n);
        self.offset += n;
        self.grads
            .register::<B::InnerBackend, D>(param.id, part.reshape(dims));
    }
}

/// Sums the gradients of `module` and the extra `scalars` (a loss, a stop flag) over every peer
/// with one all-reduce, and returns the summed scalars. With one peer nothing moves.
pub fn all_reduce_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    scalars: Tensor<B::InnerBackend, 1>,
    collective: &mut dyn Collective<B::InnerBackend>,
) -> Result<Tensor<B::InnerBackend, 1>> {
    if collective.world() == 1 {
        return Ok(scalars);
    }
    let device = scalars.device();
    let extra = scalars.dims()[0];
    let mut flatten = Flatten::<B> {
        grads,
        device,
        parts: Vec::new(),
    };
    module.visit(&mut flatten);
    let mut parts = flatten.parts;
    parts.push(scalars);
    let flat = collective.all_reduce_sum(Tensor::cat(parts, 0))?;
    let total = flat.dims()[0];
    module.visit(&mut Unflatten::<B> {
        grads,
        flat: flat.clone(),
        offset: 0,
    });
    Ok(flat.slice(total - extra..total))
}

#[cfg(test)]
mod tests {
    use super::shard;

    #[test]
    fn shards_cover_the_batch_once_in_order() {
        for len in 0..12 {
            for world in 1..6 {
                let mut next = 0;
                for rank in 0..world {
                    let r = shard(len, rank, world);
                    assert_eq!(r.start, next, "len {len} world {world} rank {rank}");
                    assert!(r.len() <= len.div_ceil(world));
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
        assert_eq!(shard(8, 2, 3), 6..8);
        assert_eq!(shard(2, 2, 3), 2..2);
    }
}
