//! Process-wide overrides of how the fused kernels lay rows out over units (benchmarks compare
//! layouts in one process with them).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Units that may share one query row (forward, dQ) or key column (dK/dV) of the fused kernels.
pub const LANE_COUNTS: [usize; 4] = [1, 2, 4, 8];

/// Query rows (forward, dQ) or key columns (dK/dV) one unit of the fused kernels may own.
pub const ROW_COUNTS: [usize; 5] = [1, 2, 4, 8, 16];

/// Staged columns (forward, dQ) or query rows (dK/dV) one unit of the fused kernels may take per
/// step of its walk over a tile.
pub const BLOCK_SIZES: [usize; 4] = [1, 2, 4, 8];

/// A layout value the fused kernels do not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A lanes-per-row count outside [`LANE_COUNTS`].
    #[error("{0} lanes per row: the fused kernels take 1, 2, 4 or 8")]
    Lanes(usize),
    /// A rows-per-unit count outside [`ROW_COUNTS`].
    #[error("{0} rows per unit: the fused kernels take 1, 2, 4, 8 or 16")]
    Rows(usize),
    /// A step block outside [`BLOCK_SIZES`].
    #[error("a step block of {0}: the fused kernels take 1, 2, 4 or 8")]
    Block(usize),
    /// A kernel shape other than `rows` or `tiles`.
    #[error("kernel `{0}`: the fused kernels are `rows` or `tiles`")]
    Shape(String),
}

/// The two shapes of the fused kernels' work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelShape {
    /// Each unit owns whole query rows (forward, dQ) or key columns (dK/dV), or a lane's share
    /// of them, and walks the staged key/value columns (or query rows) one, or a step block, at
    /// a time.
    Rows,
    /// Each unit computes 4 × 4 blocks of scores and a 4-row block of the output, of dQ, or of
    /// dK and dV, from the cube's rows and a tile in shared memory (head dimensions that are
    /// multiples of 32 and shared memory within the device's; other calls take the row kernel).
    Tiles,
}

/// The fused kernels whose shape ([`KernelShape`]) can be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPass {
    /// The forward kernel (output and log-sum-exp).
    Forward,
    /// The query-gradient kernel of the backward.
    Dq,
    /// The key- and value-gradient kernel of the backward (prefix gradients included).
    Dkdv,
}

impl KernelPass {
    /// Every pass, in launch order.
    pub const ALL: [KernelPass; 3] = [KernelPass::Forward, KernelPass::Dq, KernelPass::Dkdv];

    /// The environment variable that chooses this kernel's shape (`rows` or `tiles`) when no
    /// [`set_kernel_shape`] is in force: `PEFT_KERNEL_FORWARD`, `PEFT_KERNEL_DQ` or
    /// `PEFT_KERNEL_DKDV`.
    pub fn env_var(self) -> &'static str {
        match self {
            KernelPass::Forward => "PEFT_KERNEL_FORWARD",
            KernelPass::Dq => "PEFT_KERNEL_DQ",
            KernelPass::Dkdv => "PEFT_KERNEL_DKDV",
        }
    }

    /// The pass's name: `forward`, `dq` or `dkdv`.
    pub fn name(self) -> &'static str {
        match self {
            KernelPass::Forward => "forward",
            KernelPass::Dq => "dq",
            KernelPass::Dkdv => "dkdv",
        }
    }
}

impl std::str::FromStr for KernelShape {
    type Err = LayoutError;

    fn from_str(s: &str) -> Result<Self, LayoutError> {
        match s {
            "rows" => Ok(KernelShape::Rows),
            "tiles" => Ok(KernelShape::Tiles),
            other => Err(LayoutError::Shape(other.to_string())),
        }
    }
}

impl std::fmt::Display for KernelShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelShape::Rows => "rows",
            KernelShape::Tiles => "tiles",
        })
    }
}

static LANES: AtomicUsize = AtomicUsize::new(0);
static ROWS: AtomicUsize = AtomicUsize::new(0);
static BLOCK: AtomicUsize = AtomicUsize::new(0);
/// The shape set for each [`KernelPass`], in [`KernelPass::ALL`]'s order. 0: none set, 1: rows,
/// 2: tiles.
static SHAPES: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];

/// Stores `value` (0 for none) in `slot` when it is one of `allowed`.
fn store(
    slot: &AtomicUsize,
    value: Option<usize>,
    allowed: &[usize],
    error: fn(usize) -> LayoutError,
) -> Result<(), LayoutError> {
    match value {
        Some(n) if !allowed.contains(&n) => Err(error(n)),
        _ => {
            slot.store(value.unwrap_or(0), Ordering::Relaxed);
            Ok(())
        }
    }
}

/// The value in `slot`, if one was set.
fn load(slot: &AtomicUsize) -> Option<usize> {
    match slot.load(Ordering::Relaxed) {
        0 => None,
        n => Some(n),
    }
}

/// Sets the units that share each row in every fused kernel launched afterwards in this process,
/// in place of the device's default and of `PEFT_KERNEL_LANES`; `None` returns to those. More
/// lanes hold fewer registers per unit and reduce each dot product over the lanes with plane
/// shuffles; a count that does not divide the row's vectors, or exceeds the device's plane size,
/// falls back to the largest that does. Only the CubeCL kernels read it (other backends have
/// none), and the device must support plane shuffles (wgpu subgroups).
pub fn set_lanes_per_row(lanes: Option<usize>) -> Result<(), LayoutError> {
    store(&LANES, lanes, &LANE_COUNTS, LayoutError::Lanes)
}

/// The lanes per row set with [`set_lanes_per_row`], if any.
pub fn lanes_per_row_override() -> Option<usize> {
    load(&LANES)
}

/// Sets the query rows (forward, dQ) or key columns (dK/dV) each unit owns in every fused kernel
/// launched afterwards in this process, in place of the device's default (8 on CPU Vulkan
/// drivers, 1 elsewhere) and of `PEFT_KERNEL_ROWS`; `None` returns to those. More rows let each
/// vector read from shared memory serve more rows, at the price of registers (`rows / lanes`
/// whole rows per unit). Only the CubeCL kernels read it.
pub fn set_rows_per_unit(rows: Option<usize>) -> Result<(), LayoutError> {
    store(&ROWS, rows, &ROW_COUNTS, LayoutError::Rows)
}

/// The rows per unit set with [`set_rows_per_unit`], if any.
pub fn rows_per_unit_override() -> Option<usize> {
    load(&ROWS)
}

/// Sets the staged columns (forward, dQ) or query rows (dK/dV) each unit takes per step in
/// every fused kernel launched afterwards in this process, in place of the default (1) and of
/// `PEFT_KERNEL_BLOCK`; `None` returns to those. A step's `rows ·
/// block` dot products are independent (instruction-level parallelism), at the price of that
/// many scores in registers. Only the CubeCL kernels read it.
pub fn set_step_block(block: Option<usize>) -> Result<(), LayoutError> {
    store(&BLOCK, block, &BLOCK_SIZES, LayoutError::Block)
}

/// The step block set with [`set_step_block`], if any.
pub fn step_block_override() -> Option<usize> {
    load(&BLOCK)
}

/// Sets the shape of the fused kernel of `pass` for every launch of it afterwards in this
/// process, in place of the device's default and of the pass's environment variable
/// ([`KernelPass::env_var`]: `rows` or `tiles`); `None` returns to those. Only the CubeCL
/// backends read it.
pub fn set_kernel_shape(pass: KernelPass, shape: Option<KernelShape>) {
    store_shape(&SHAPES[pass as usize], shape);
}

/// The shape of `pass`'s kernel set with [`set_kernel_shape`], if any.
pub fn kernel_shape_override(pass: KernelPass) -> Option<KernelShape> {
    load_shape(&SHAPES[pass as usize])
}

fn store_shape(cell: &AtomicUsize, kernel: Option<KernelShape>) {
    let code = match kernel {
        None => 0,
        Some(KernelShape::Rows) => 1,
        Some(KernelShape::Tiles) => 2,
    };
    cell.store(code, Ordering::Relaxed);
}

fn load_shape(cell: &AtomicUsize) -> Option<KernelShape> {
    match cell.load(Ordering::Relaxed) {
        1 => Some(KernelShape::Rows),
        2 => Some(KernelShape::Tiles),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test for the overrides: they are process-wide and tests run in parallel.
    #[test]
    fn only_the_kernels_counts_are_accepted_and_none_clears() {
        assert_eq!(set_lanes_per_row(Some(3)), Err(LayoutError::Lanes(3)));
        assert_eq!(set_lanes_per_row(Some(16)), Err(LayoutError::Lanes(16)));
        assert_eq!(lanes_per_row_override(), None);
        set_lanes_per_row(Some(2)).unwrap();
        assert_eq!(lanes_per_row_override(), Some(2));
        set_lanes_per_row(None).unwrap();
        assert_eq!(lanes_per_row_override(), None);

        assert_eq!(set_rows_per_unit(Some(3)), Err(LayoutError::Rows(3)));
        assert_eq!(set_rows_per_unit(Some(32)), Err(LayoutError::Rows(32)));
        assert_eq!(set_rows_per_unit(Some(0)), Err(LayoutError::Rows(0)));
        assert_eq!(rows_per_unit_override(), None);
        set_rows_per_unit(Some(16)).unwrap();
        assert_eq!(rows_per_unit_override(), Some(16));
        assert_eq!(lanes_per_row_override(), None);
        set_rows_per_unit(None).unwrap();
        assert_eq!(rows_per_unit_override(), None);

        assert_eq!(set_step_block(Some(16)), Err(LayoutError::Block(16)));
        assert_eq!(set_step_block(Some(3)), Err(LayoutError::Block(3)));
        assert_eq!(step_block_override(), None);
        set_step_block(Some(8)).unwrap();
        assert_eq!(step_block_override(), Some(8));
        set_step_block(None).unwrap();
        assert_eq!(step_block_override(), None);
        for pass in KernelPass::ALL {
            assert_eq!(kernel_shape_override(pass), None);
            set_kernel_shape(pass, Some("tiles".parse().unwrap()));
            assert_eq!(kernel_shape_override(pass), Some(KernelShape::Tiles));
            let mut others = KernelPass::ALL.into_iter().filter(|&p| p != pass);
            assert!(others.all(|p| kernel_shape_override(p).is_none()));
            set_kernel_shape(pass, Some(KernelShape::Rows));
            assert_eq!(kernel_shape_override(pass), Some(KernelShape::Rows));
            set_kernel_shape(pass, None);
            assert_eq!(kernel_shape_override(pass), None);
        }
        assert_eq!(KernelPass::Dkdv.env_var(), "PEFT_KERNEL_DKDV");
        assert_eq!(
            "tile".parse::<KernelShape>(),
            Err(LayoutError::Shape("tile".into()))
        );
        assert_eq!(KernelShape::Tiles.to_string(), "tiles");
        assert_eq!(
            LayoutError::Rows(3).to_string(),
            "3 rows per unit: the fused kernels take 1, 2, 4, 8 or 16"
        );
    }
}
