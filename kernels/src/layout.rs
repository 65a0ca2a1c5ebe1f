//! Process-wide override of how the fused kernels lay rows out over units (benchmarks compare
//! layouts in one process with it).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Units that may share one query row (forward, dQ) or key column (dK/dV) of the fused kernels.
pub const LANE_COUNTS: [usize; 4] = [1, 2, 4, 8];

/// Errors of [`set_lanes_per_row`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} lanes per row: the fused kernels take 1, 2, 4 or 8")]
pub struct LanesError(pub usize);

static LANES: AtomicUsize = AtomicUsize::new(0);

/// Sets the units that share each row in every fused kernel launched afterwards in this process,
/// in place of the device's default and of `PEFT_KERNEL_LANES`; `None` returns to those. More
/// lanes hold fewer registers per unit and reduce each dot product over the lanes with plane
/// shuffles; a count that does not divide the row's vectors, or exceeds the device's plane size,
/// falls back to the largest that does. Only the CubeCL kernels read it (other backends have
/// none), and the device must support plane shuffles (wgpu subgroups).
pub fn set_lanes_per_row(lanes: Option<usize>) -> Result<(), LanesError> {
    match lanes {
        Some(w) if !LANE_COUNTS.contains(&w) => Err(LanesError(w)),
        _ => {
            LANES.store(lanes.unwrap_or(0), Ordering::Relaxed);
            Ok(())
        }
    }
}

/// The lanes per row set with [`set_lanes_per_row`], if any.
pub fn lanes_per_row_override() -> Option<usize> {
    match LANES.load(Ordering::Relaxed) {
        0 => None,
        w => Some(w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_kernels_lane_counts_are_accepted_and_none_clears() {
        assert_eq!(set_lanes_per_row(Some(3)), Err(LanesError(3)));
        assert_eq!(set_lanes_per_row(Some(16)), Err(LanesError(16)));
        assert_eq!(lanes_per_row_override(), None);
        set_lanes_per_row(Some(2)).unwrap();
        assert_eq!(lanes_per_row_override(), Some(2));
        set_lanes_per_row(None).unwrap();
        assert_eq!(lanes_per_row_override(), None);
    }
}
