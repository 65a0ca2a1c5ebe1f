//! Length-bucketed batches in a seeded, reproducible order.
//!
//! Each epoch shuffles the examples (seed and epoch decide the order), cuts the shuffled list
//! into windows of 32 batches, sorts each window by length — so a batch holds examples of
//! similar length and little padding — and shuffles the order of the batches. The micro-batch
//! at any global index is a pure function of (seed, index), which is what makes resuming exact.

use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};

/// Batches per sorting window.
const WINDOW: usize = 32;

/// The batch plan of a dataset.
#[derive(Debug, Clone)]
pub struct BatchPlan {
    lengths: Vec<usize>,
    batch_size: usize,
    seed: u64,
}

impl BatchPlan {
    /// A plan over examples of the given lengths.
    pub fn new(lengths: Vec<usize>, batch_size: usize, seed: u64) -> Self {
        Self {
            lengths,
            batch_size: batch_size.max(1),
            seed,
        }
    }

    /// Micro-batches per epoch (the last one may be smaller).
    pub fn batches_per_epoch(&self) -> usize {
        self.lengths.len().div_ceil(self.batch_size)
    }

    /// The example indices of every batch of `epoch`, in training order.
    pub fn epoch(&self, epoch: usize) -> Vec<Vec<usize>> {
        let mut rng =
            StdRng::seed_from_u64(self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut order: Vec<usize> = (0..self.lengths.len()).collect();
        order.shuffle(&mut rng);
        let mut batches = Vec::with_capacity(self.batches_per_epoch());
        for window in order.chunks(self.batch_size * WINDOW) {
            let mut window = window.to_vec();
            window.sort_by_key(|&i| (self.lengths[i], i));
            batches.extend(window.chunks(self.batch_size).map(<[usize]>::to_vec));
        }
        batches.shuffle(&mut rng);
        batches
    }

    /// The batch at global micro-batch index `index` (epochs follow one another).
    pub fn batch(&self, index: usize) -> Vec<usize> {
        let per = self.batches_per_epoch();
        self.epoch(index / per).swap_remove(index % per)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_once_per_epoch_and_reproducible() {
        let lengths: Vec<usize> = (0..103).map(|i| (i * 37) % 50 + 1).collect();
        let plan = BatchPlan::new(lengths, 8, 42);
        let e0 = plan.epoch(0);
        let mut seen: Vec<usize> = e0.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..103).collect::<Vec<_>>());
        assert_eq!(e0, plan.epoch(0));
        assert_ne!(e0, plan.epoch(1));
        assert_eq!(plan.batch(plan.batches_per_epoch() + 3), plan.epoch(1)[3]);
    }
}
