//! How each fused kernel is launched: the shared memory it takes, the layout chosen for the
//! device and the call (rows per unit, lanes per row, step blocks, cube sizes, row or tiled
//! kernel), and the overrides from the process-wide settings and the environment.

use burn_cubecl::{CubeRuntime, tensor::CubeTensor};
use cubecl::{CubeCount, CubeDim, features::Plane};

use super::{CUBE_ROWS, TILE, tiled};
use crate::{BLOCK_SIZES, KernelPass, KernelShape, LANE_COUNTS, ROW_COUNTS, op::AttentionDims};

/// Shared memory of the forward and dQ kernels at head dimension `head_dim`: a key and a value
/// tile of [`TILE`] columns (f32).
pub(super) fn row_shared_bytes(head_dim: usize) -> usize {
    2 * TILE * head_dim * 4
}

/// Shared memory of the dK/dV kernel with query tiles of `rows` rows: queries, output
/// gradients, and their rows' log-sum-exp and `D` (f32).
pub(super) fn dkdv_shared_bytes(head_dim: usize, rows: usize) -> usize {
    (2 * rows * head_dim + 2 * rows) * 4
}

/// Query rows per tile of the dK/dV kernel: [`TILE`], or half of it where that would exceed the
/// device's shared memory (`d = 128` on lavapipe's 32 KiB: 32.25 KiB with 32 rows).
pub(super) fn query_tile(head_dim: usize, max_shared: usize) -> usize {
    if dkdv_shared_bytes(head_dim, TILE) <= max_shared {
        TILE
    } else {
        TILE / 2
    }
}

/// Whether to unroll the head-dimension loops (keeping each row's vectors in registers). On by
/// default: with rows read as 4-float vectors the loops are `d / 4` long, and lavapipe (LLVM)
/// compiles the four kernels of one head size in about 15 s with eight rows per unit.
/// `PEFT_KERNEL_UNROLL=0` rolls them (the per-row arrays then live in per-lane memory, which
/// measured slower on lavapipe; figures in `docs/measured/kernels-2026-11-27-lavapipe.md`).
pub(super) fn unroll_loops() -> bool {
    !matches!(std::env::var("PEFT_KERNEL_UNROLL").as_deref(), Ok("0"))
}

/// Units (before lanes) a cube of the row-walking kernels may have, smallest first.
pub(super) const CUBE_UNITS: [usize; 4] = [8, 16, 32, 64];

/// How a row-walking kernel (forward, dQ, dK/dV) is launched over `n` rows (or columns) per
/// group: `units` units per cube, each owning `per_unit` rows shared with `lanes - 1` other
/// units (`units·lanes` units in all), and `cubes` cubes per group along the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RowLaunch {
    cubes: usize,
    units: usize,
}

impl RowLaunch {
    /// The smallest cube of at least [`CUBE_ROWS`] rows (`units·per_unit`) that, with lanes,
    /// fills whole planes (`plane` units: the shuffles and votes must be reached by every unit
    /// of a plane). A row slot past the last row still costs its share of the arithmetic (the
    /// per-slot loops are unrolled), so the last cube of a group should be small: with eight
    /// rows per unit (lavapipe) one 64-unit cube over the 192 columns of `P = 64, L = 128`
    /// would do 512 columns' work, where three 8-unit cubes do 192. A cube of 64 rows still
    /// reads each staged tile for as many rows as the 64-unit cubes of one row per unit (the
    /// GPU layout, unchanged by this), and one cube size per layout keeps one compiled kernel
    /// per layout (the cube size is part of a compiled kernel).
    pub(super) fn new(n: usize, per_unit: usize, lanes: usize, plane: usize) -> Self {
        let units = CUBE_UNITS
            .into_iter()
            .find(|&u| u * per_unit >= CUBE_ROWS as usize && (lanes == 1 || u * lanes >= plane))
            .unwrap_or(CUBE_ROWS as usize);
        RowLaunch {
            cubes: n.max(1).div_ceil(units * per_unit),
            units,
        }
    }

    /// The grid: these cubes along the rows, `groups` batch·key/value heads, `heads` query heads.
    pub(super) fn count(self, groups: usize, heads: usize) -> CubeCount {
        CubeCount::Static(self.cubes as u32, groups as u32, heads as u32)
    }

    /// The cube: `units·lanes` units in one dimension.
    pub(super) fn dim(self, lanes: usize) -> CubeDim {
        CubeDim::new_1d((self.units * lanes) as u32)
    }
}

/// The largest plane (warp, subgroup) size of the device of `t`.
pub(super) fn plane_size<R: CubeRuntime>(t: &CubeTensor<R>) -> usize {
    t.client.properties().hardware.plane_size_max.max(1) as usize
}

/// The value of environment variable `name` when it is one of `allowed` (else none).
pub(super) fn env_choice(name: &str, allowed: &[usize]) -> Option<usize> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| allowed.contains(n))
}

/// Query rows (forward, dQ) or key columns (dK/dV) per unit. On a CPU Vulkan driver such as
/// lavapipe, where a shader's shared-memory reads cost far more than its arithmetic, eight: each
/// vector read from shared memory then serves eight rows (on lavapipe the forward measured
/// 172 ms with 1 row, 78 ms with 4 and 49 ms with 8; `docs/measured/kernels-2026-11-27-lavapipe.md`). On GPUs one, which
/// keeps a unit's vectors in registers. [`crate::set_rows_per_unit`], else
/// `PEFT_KERNEL_ROWS=1|2|4|8|16`, overrides.
pub(super) fn rows_per_unit<R: CubeRuntime>(t: &CubeTensor<R>) -> usize {
    if let Some(n) =
        crate::rows_per_unit_override().or_else(|| env_choice("PEFT_KERNEL_ROWS", &ROW_COUNTS))
    {
        return n;
    }
    // cubecl-wgpu enables plane (subgroup) operations on every wgpu adapter that has them
    // except CPU adapters, so a wgpu client without them is a CPU driver (or a GPU without
    // subgroups, where eight rows per unit costs registers but stays correct).
    let cpu_like = R::name(&t.client).contains("wgpu")
        && !t.client.properties().features.plane.contains(Plane::Ops);
    if cpu_like { 8 } else { 1 }
}

/// Staged columns (forward, dQ) or query rows (dK/dV) a unit takes per step of its walk over a
/// tile. A step's `rows · block` dot products are independent of each other — instruction-level
/// parallelism that a one-row unit otherwise lacks, each of its dot products being one chain of
/// `d / (4·lanes)` dependent vector multiply-adds — and the forward rescales a row's sums at most
/// once per step. One by default: on an H200 at `d = 64` eight columns a step left the forward
/// unchanged and slowed forward + backward (3.12 against 2.11 ms with one lane, 1.64 against
/// 1.42 ms with two; `docs/measured/h200-2026-11-28-run2.jsonl`). [`crate::set_step_block`], else
/// `PEFT_KERNEL_BLOCK=1|2|4|8`, overrides.
pub(super) fn step_block() -> usize {
    crate::step_block_override()
        .or_else(|| env_choice("PEFT_KERNEL_BLOCK", &BLOCK_SIZES))
        .unwrap_or(1)
}

/// Row floats per unit the default lanes aim for (see [`default_lanes`]). Measured on an H200
/// at `d = 64` (`docs/measured/h200-2026-11-28-run1.jsonl`): the forward was as fast with one lane (128 floats) as with
/// four, and the backward fastest with two lanes (96 and 128 floats), 1.6× faster than with the
/// four that a bound of 64 floats gave.
pub(super) const ROW_FLOATS_PER_UNIT: usize = 128;

/// The three kernels that walk rows or columns, for their lanes-per-row choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Walk {
    Forward,
    Dq,
    Dkdv,
}

/// Units that share one query row (forward, dQ) or key column (dK/dV), each holding `1/lanes` of
/// its `dl` vectors, with dot products reduced over the lanes by plane shuffles.
///
/// The default is 1 without plane operations — which cubecl-wgpu does not advertise on CPU
/// adapters, where rows per unit do that job — and on devices with them the [`default_lanes`]
/// of the head dimension. [`crate::set_lanes_per_row`], else `PEFT_KERNEL_LANES=1|2|4|8`,
/// overrides for all three kernels, also where plane operations are not advertised (the device
/// must still support subgroup shuffles: lavapipe does, which is how CI tests the layout); a
/// count that does not divide `dl` or exceeds the plane size falls back to the largest below it
/// that fits.
pub(super) fn lanes_per_row<R: CubeRuntime>(
    t: &CubeTensor<R>,
    head_dim: usize,
    walk: Walk,
) -> usize {
    let props = t.client.properties();
    let dl = head_dim / vector_size(head_dim);
    let fits = |w: usize| dl.is_multiple_of(w) && w as u32 <= props.hardware.plane_size_min;
    let wanted = match crate::lanes_per_row_override()
        .or_else(|| env_choice("PEFT_KERNEL_LANES", &LANE_COUNTS))
    {
        Some(w) => w,
        None if props.features.plane.contains(Plane::Ops) => default_lanes(head_dim, walk),
        None => 1,
    };
    LANE_COUNTS
        .into_iter()
        .rev()
        .find(|&w| w <= wanted && fits(w))
        .unwrap_or(1)
}

/// Floats of whole rows a unit of `walk` holds in registers with one lane, at head dimension
/// `head_dim`: the forward its query row and accumulator, dQ those and its output-gradient row,
/// dK/dV its key and value columns and their two accumulators.
pub(super) fn row_floats(head_dim: usize, walk: Walk) -> usize {
    head_dim
        * match walk {
            Walk::Forward => 2,
            Walk::Dq => 3,
            Walk::Dkdv => 4,
        }
}

/// The default lanes per row on devices with plane operations: the fewest that bring a unit's
/// row floats to [`ROW_FLOATS_PER_UNIT`] or below (at most 8).
pub(super) fn default_lanes(head_dim: usize, walk: Walk) -> usize {
    let floats = row_floats(head_dim, walk);
    LANE_COUNTS
        .into_iter()
        .find(|&w| floats <= ROW_FLOATS_PER_UNIT * w)
        .unwrap_or(8)
}

/// Floats per vector in the kernels' row layout: 4 when the head dimension allows it.
pub(super) fn vector_size(head_dim: usize) -> usize {
    [4, 2, 1]
        .into_iter()
        .find(|n| head_dim.is_multiple_of(*n))
        .unwrap_or(1)
}

/// Key/value columns (forward, dQ) or query rows (dK/dV) per tile of the register-tiled kernels.
pub(super) const TILED_COLUMNS: usize = 32;

/// Whether the register-tiled kernel of `pass` is chosen: [`crate::set_kernel_shape`], else
/// the pass's environment variable (`PEFT_KERNEL_FORWARD`, `PEFT_KERNEL_DQ`,
/// `PEFT_KERNEL_DKDV`: `rows` or `tiles`; anything else is ignored), else the row kernel.
pub(super) fn tiles_chosen(pass: KernelPass) -> bool {
    let shape = crate::kernel_shape_override(pass).or_else(|| {
        std::env::var(pass.env_var())
            .ok()
            .and_then(|v| v.parse::<KernelShape>().ok())
    });
    shape == Some(KernelShape::Tiles)
}

/// Whether a register-tiled kernel ([`tiled`]) taking `shared` bytes of shared memory fits the
/// call: rows of 4-float vectors, a head dimension that is a multiple of 32 (each of the 8
/// lanes of a row group owns whole vectors), planes of at least 8 units (row maxima and sums
/// are reduced over 8 lanes with plane shuffles), and the shared memory within the device's
/// (32 KiB on lavapipe).
pub(super) fn tiled_fits<R: CubeRuntime>(
    t: &CubeTensor<R>,
    head_dim: usize,
    shared: usize,
) -> bool {
    let hardware = &t.client.properties().hardware;
    vector_size(head_dim) == 4
        && head_dim.is_multiple_of(4 * tiled::TILED_LANES)
        && hardware.plane_size_min as usize >= tiled::TILED_LANES
        && shared <= hardware.max_shared_memory_size
}

/// Whether the forward takes the register-tiled kernel: when it is chosen ([`tiles_chosen`])
/// and fits the call ([`tiled_fits`]; on lavapipe head dimensions up to 64).
pub(super) fn tiled_forward<R: CubeRuntime>(t: &CubeTensor<R>, head_dim: usize) -> bool {
    tiles_chosen(KernelPass::Forward)
        && tiled_fits(t, head_dim, tiled::shared_bytes(head_dim, TILED_COLUMNS))
}

/// The grid and cube of a register-tiled kernel with `groups` row (or column) groups, over `n`
/// rows or columns of each (batch row, key/value head) — the forward's and dQ's `g·L` query
/// rows, dK/dV's `P + S` columns of `[prefix ; sequence]` — `4·groups` of them per cube (`x`);
/// one `y` per (batch row, key/value head); `heads` along `z` (dK/dV: the query heads of a
/// group, else 1); `groups` groups of [`tiled::TILED_LANES`] units.
pub(super) fn tiled_launch(
    d: &AttentionDims,
    n: usize,
    heads: usize,
    groups: usize,
) -> (CubeCount, CubeDim) {
    let cubes = n.max(1).div_ceil(4 * groups);
    (
        CubeCount::Static(cubes as u32, (d.batch * d.kv_heads) as u32, heads as u32),
        CubeDim::new_1d((groups * tiled::TILED_LANES) as u32),
    )
}

/// The row (or column) groups of a register-tiled backward kernel when it is chosen
/// ([`tiles_chosen`]) and fits the call: 16 (64 rows or columns a cube, as the tiled forward)
/// where its shared memory (`shared(groups)` bytes) allows, else 8.
pub(super) fn tiled_groups<R: CubeRuntime>(
    t: &CubeTensor<R>,
    head_dim: usize,
    pass: KernelPass,
    shared: impl Fn(usize) -> usize,
) -> Option<usize> {
    if !tiles_chosen(pass) {
        return None;
    }
    [16, 8]
        .into_iter()
        .find(|&groups| tiled_fits(t, head_dim, shared(groups)))
}

/// The row groups of the register-tiled dQ ([`tiled_groups`]; on lavapipe's 32 KiB: 16 up to
/// `d = 32`, 8 at `d = 64`, none at 128).
pub(super) fn tiled_dq_groups<R: CubeRuntime>(t: &CubeTensor<R>, head_dim: usize) -> Option<usize> {
    tiled_groups(t, head_dim, KernelPass::Dq, |groups| {
        tiled::dq_shared_bytes(head_dim, TILED_COLUMNS, groups)
    })
}

/// The column groups of the register-tiled dK/dV ([`tiled_groups`]; on lavapipe's 32 KiB: 16
/// up to `d = 32`, 8 at `d = 64`, none at 128).
pub(super) fn tiled_dkdv_groups<R: CubeRuntime>(
    t: &CubeTensor<R>,
    head_dim: usize,
) -> Option<usize> {
    tiled_groups(t, head_dim, KernelPass::Dkdv, |groups| {
        tiled::dkdv_shared_bytes(head_dim, TILED_COLUMNS, groups)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lanes_bring_whole_rows_to_128_floats_per_unit() {
        // d = 64, the SmolLM2 head: the forward holds 128 floats of rows, dQ 192, dK/dV 256.
        assert_eq!(default_lanes(64, Walk::Forward), 1);
        assert_eq!(default_lanes(64, Walk::Dq), 2);
        assert_eq!(default_lanes(64, Walk::Dkdv), 2);
        // d = 32: 64, 96 and 128 floats.
        assert_eq!(default_lanes(32, Walk::Forward), 1);
        assert_eq!(default_lanes(32, Walk::Dq), 1);
        assert_eq!(default_lanes(32, Walk::Dkdv), 1);
        // d = 128: 256, 384 and 512 floats.
        assert_eq!(default_lanes(128, Walk::Forward), 2);
        assert_eq!(default_lanes(128, Walk::Dq), 4);
        assert_eq!(default_lanes(128, Walk::Dkdv), 4);
    }

    #[test]
    fn shared_memory_fits_lavapipes_32_kib_up_to_d_128() {
        let lavapipe = 32 * 1024;
        // Forward and dQ: two tiles of 32 columns, exactly 32 KiB at d = 128.
        assert_eq!(row_shared_bytes(128), lavapipe);
        // dK/dV: 32 query rows up to d = 64, 16 at d = 128 (32 would be 32.25 KiB).
        assert_eq!(query_tile(64, lavapipe), 32);
        assert_eq!(dkdv_shared_bytes(128, 32), 33_024);
        assert_eq!(query_tile(128, lavapipe), 16);
        assert!(dkdv_shared_bytes(128, 16) <= lavapipe);
        // A GPU's 48 KiB keeps 32 rows.
        assert_eq!(query_tile(128, 48 * 1024), 32);
    }

    #[test]
    fn tiled_dq_takes_64_rows_where_they_fit_and_32_at_d_64_on_lavapipe() {
        let lavapipe = 32 * 1024;
        let bytes = |d, groups| tiled::dq_shared_bytes(d, TILED_COLUMNS, groups);
        // Queries and output gradients of 4·groups rows, the key tile (or dS, 4·groups rows by
        // 32 columns), the value tile (or the key tile).
        assert_eq!(bytes(32, 16), (2 * 64 * 32 + 64 * 32 + 32 * 32) * 4);
        assert!(bytes(32, 16) <= lavapipe);
        assert_eq!(bytes(64, 16), 48 * 1024);
        assert_eq!(bytes(64, 8), lavapipe);
        assert_eq!(bytes(128, 8), 64 * 1024);
        // The forward's shared memory is the dQ's less the output gradients.
        assert_eq!(
            tiled::shared_bytes(64, TILED_COLUMNS) + 64 * 64 * 4,
            bytes(64, 16)
        );
    }

    #[test]
    fn tiled_dkdv_takes_64_columns_where_they_fit_and_32_at_d_64_on_lavapipe() {
        let lavapipe = 32 * 1024;
        let bytes = |d, groups| tiled::dkdv_shared_bytes(d, TILED_COLUMNS, groups);
        // Keys and values of 4·groups columns, the query tile (32 rows), and the output
        // gradients' tile or P and dS (32 rows by 4·groups columns, more than the tile at
        // d = 32 with 64 columns).
        assert_eq!(bytes(32, 16), (2 * 64 * 32 + 32 * 32 + 32 * 64) * 4);
        assert!(bytes(32, 16) <= lavapipe);
        assert_eq!(bytes(64, 16), 48 * 1024);
        assert_eq!(bytes(64, 8), lavapipe);
        assert_eq!(bytes(128, 8), 64 * 1024);
    }

    #[test]
    fn row_launches_are_the_smallest_cubes_of_64_rows() {
        let launch = |n, per_unit, lanes, plane| {
            let l = RowLaunch::new(n, per_unit, lanes, plane);
            assert!(l.cubes * l.units * per_unit >= n.max(1), "{n} rows: {l:?}");
            (l.cubes, l.units)
        };
        // Eight rows per unit (lavapipe): 8-unit cubes. The 576 columns of P = 64, L = 512
        // take nine of them, exactly (two 64-unit cubes would walk 1024 columns); the 192 of
        // P = 64, L = 128 three.
        assert_eq!(launch(576, 8, 1, 8), (9, 8));
        assert_eq!(launch(192, 8, 1, 8), (3, 8));
        assert_eq!(launch(1536, 8, 1, 8), (24, 8));
        assert_eq!(launch(1, 8, 1, 8), (1, 8));
        assert_eq!(launch(0, 8, 1, 8), (1, 8));
        // Sixteen rows per unit: still at least eight units.
        assert_eq!(launch(100, 16, 1, 8), (1, 8));
        // One row per unit (GPUs): 64 units, as before lanes and cube sizes were chosen.
        assert_eq!(launch(148, 1, 4, 32), (3, 64));
        assert_eq!(launch(1536, 1, 2, 32), (24, 64));
        // Two rows per unit: 32 units.
        assert_eq!(launch(148, 2, 4, 32), (3, 32));
        assert_eq!(launch(148, 2, 1, 32), (3, 32));
        // With lanes, whole planes: 8 units of two lanes would fill half a 32-wide plane.
        assert_eq!(launch(40, 8, 2, 32), (1, 16));
        assert_eq!(launch(40, 8, 4, 32), (1, 8));
        assert_eq!(launch(40, 8, 2, 8), (1, 8));
    }
}
