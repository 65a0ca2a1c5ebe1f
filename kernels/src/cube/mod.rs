//! Fused prefix-attention kernels for Burn's CubeCL backends (wgpu and CUDA), and their launch.
//!
//! The kernels compute in f32 with head dimensions up to [`MAX_HEAD_DIM`]. f16 and bf16 inputs
//! are cast to f32 on the way in and the results back on the way out (`O(B·H·L·d)` casts, no
//! score matrix); the log-sum-exp stays f32 for every input dtype, also on the reference path
//! that larger heads take (still correct, not fused). See `docs/kernels.md` for the
//! algorithm, tiling and launch shapes.

#[cfg(all(feature = "cuda", feature = "wgpu"))]
pub mod cuda_source;
mod fusion;
mod kernels;
mod tiled;

use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::{
    DType, Shape,
    ops::{FloatTensorOps, IntTensorOps},
};
use burn_cubecl::{
    CubeBackend, CubeRuntime, FloatElement, IntElement, element::BoolElement,
    kernel::into_contiguous, tensor::CubeTensor,
};
use cubecl::{CubeCount, CubeDim, features::Plane};

use crate::{
    BLOCK_SIZES, KernelPass, KernelShape, LANE_COUNTS, ROW_COUNTS,
    op::{AttentionDims, AttentionGrads, PrefixAttentionArgs, PrefixAttentionBackend},
    reference,
};

pub use kernels::NEG_LARGE;

/// Largest head dimension the kernels take (the per-unit registers grow with it).
pub const MAX_HEAD_DIM: usize = 128;
/// Query rows (forward, dQ) or key columns (dK/dV) a cube of the row-walking kernels walks at
/// least (units × rows per unit; see `RowLaunch`).
pub const CUBE_ROWS: u32 = 64;
/// Key/value columns (forward, dQ) or query rows (dK/dV) staged per tile.
pub const TILE: usize = 32;
/// Units per cube of the partial-gradient sums.
const SUM_UNITS: u32 = 256;
/// Most cubes of the partial-gradient sums (a grid-stride loop covers the rest; wgpu allows
/// 65 535 cubes along one dimension).
const MAX_SUM_CUBES: usize = 65_535;

type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

/// Whether the kernels take the call: head dimensions up to [`MAX_HEAD_DIM`], f32 inputs
/// directly, f16 and bf16 through f32 casts, and the row kernels' shared memory within the
/// device's (a launch over the limit is refused without an error reaching the caller, and the
/// output buffer keeps whatever it held: the reference path is taken instead).
fn supported<R: CubeRuntime>(t: &CubeTensor<R>, dims: &AttentionDims) -> bool {
    let max_shared = t.client.properties().hardware.max_shared_memory_size;
    matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16)
        && dims.head_dim <= MAX_HEAD_DIM
        && dims.head_dim > 0
        && row_shared_bytes(dims.head_dim) <= max_shared
        && dkdv_shared_bytes(dims.head_dim, query_tile(dims.head_dim, max_shared)) <= max_shared
}

/// Shared memory of the forward and dQ kernels at head dimension `head_dim`: a key and a value
/// tile of [`TILE`] columns (f32).
fn row_shared_bytes(head_dim: usize) -> usize {
    2 * TILE * head_dim * 4
}

/// Shared memory of the dK/dV kernel with query tiles of `rows` rows: queries, output
/// gradients, and their rows' log-sum-exp and `D` (f32).
fn dkdv_shared_bytes(head_dim: usize, rows: usize) -> usize {
    (2 * rows * head_dim + 2 * rows) * 4
}

/// Query rows per tile of the dK/dV kernel: [`TILE`], or half of it where that would exceed the
/// device's shared memory (`d = 128` on lavapipe's 32 KiB: 32.25 KiB with 32 rows).
fn query_tile(head_dim: usize, max_shared: usize) -> usize {
    if dkdv_shared_bytes(head_dim, TILE) <= max_shared {
        TILE
    } else {
        TILE / 2
    }
}

/// `t` in `dtype` (the same tensor when it already is).
fn cast<R: CubeRuntime>(t: CubeTensor<R>, dtype: DType) -> CubeTensor<R> {
    if t.dtype == dtype {
        t
    } else {
        burn_cubecl::kernel::cast(t, dtype)
    }
}

/// Contiguous f32 inputs and the per-row lengths that were given: `lengths` holds the prefix
/// lengths (`[B]`, when bit 0 of `lengths_given` is set), then the key lengths (`[B]`, bit 1).
/// `io_dtype` is the dtype the inputs came in, which the outputs go back to.
struct Prepared<R: CubeRuntime> {
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    pk: CubeTensor<R>,
    pv: CubeTensor<R>,
    lengths: CubeTensor<R>,
    lengths_given: u32,
    dims: AttentionDims,
    scale: f32,
    io_dtype: DType,
}

/// Largest buffer the fused kernels have allocated in this process (bytes).
static LARGEST_ALLOCATION: AtomicUsize = AtomicUsize::new(0);

/// The largest buffer, in bytes, that the fused forward or backward has allocated in this
/// process since the last [`reset_largest_allocation`]. Every buffer the kernels write is
/// allocated through one function that records its size here, so tests can check that the
/// fused path never builds a `[B, H, L, P + L]` score matrix.
pub fn largest_allocation() -> usize {
    LARGEST_ALLOCATION.load(Ordering::Relaxed)
}

/// Resets [`largest_allocation`] to zero.
pub fn reset_largest_allocation() {
    LARGEST_ALLOCATION.store(0, Ordering::Relaxed);
}

fn empty<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape, dtype: DType) -> CubeTensor<R> {
    let bytes = shape.num_elements() * dtype.size();
    LARGEST_ALLOCATION.fetch_max(bytes, Ordering::Relaxed);
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        like.client.empty(bytes),
        dtype,
    )
}

fn prepare<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    args: PrefixAttentionArgs<Cube<R, F, I, BT>>,
) -> Prepared<R> {
    let dims = args.dims();
    let io_dtype = args.query.dtype;
    let f32 = |t: CubeTensor<R>| cast(into_contiguous(t), DType::F32);
    let q = f32(args.query);
    let k = f32(args.key);
    let v = f32(args.value);
    q.assert_is_on_same_device(&k);
    let (pk, pv) = match (args.prefix_key, args.prefix_value) {
        (Some(pk), Some(pv)) => (f32(pk), f32(pv)),
        // Never read when there is no prefix (the kernels see P = 0).
        _ => (k.clone(), v.clone()),
    };
    // Lengths that were not given are not materialised (no launches for them): the kernels
    // use the full prefix and sequence instead. Without any, the binding is a one-element view
    // of the queries' buffer that the kernels never read.
    let lengths_given =
        u32::from(args.prefix_lengths.is_some()) | (u32::from(args.key_lengths.is_some()) << 1);
    let lengths = match (args.prefix_lengths, args.key_lengths) {
        (Some(p), Some(k)) => into_contiguous(<Cube<R, F, I, BT> as IntTensorOps<_>>::int_cat(
            vec![p, k],
            0,
        )),
        (Some(one), None) | (None, Some(one)) => into_contiguous(one),
        (None, None) => CubeTensor::new_contiguous(
            q.client.clone(),
            q.device.clone(),
            Shape::new([1]),
            q.handle.clone(),
            I::dtype(),
        ),
    };
    Prepared {
        q,
        k,
        v,
        pk,
        pv,
        lengths,
        lengths_given,
        dims,
        scale: args.scale,
        io_dtype,
    }
}

/// Whether to unroll the head-dimension loops (keeping each row's vectors in registers). On by
/// default: with rows read as 4-float vectors the loops are `d / 4` long, and lavapipe (LLVM)
/// compiles the four kernels of one head size in about 15 s with eight rows per unit.
/// `PEFT_KERNEL_UNROLL=0` rolls them (the per-row arrays then live in per-lane memory, which
/// measured slower on lavapipe; figures in `docs/kernels.md`).
fn unroll_loops() -> bool {
    !matches!(std::env::var("PEFT_KERNEL_UNROLL").as_deref(), Ok("0"))
}

/// Units (before lanes) a cube of the row-walking kernels may have, smallest first.
const CUBE_UNITS: [usize; 4] = [8, 16, 32, 64];

/// How a row-walking kernel (forward, dQ, dK/dV) is launched over `n` rows (or columns) per
/// group: `units` units per cube, each owning `per_unit` rows shared with `lanes - 1` other
/// units (`units·lanes` units in all), and `cubes` cubes per group along the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RowLaunch {
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
    fn new(n: usize, per_unit: usize, lanes: usize, plane: usize) -> Self {
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
    fn count(self, groups: usize, heads: usize) -> CubeCount {
        CubeCount::Static(self.cubes as u32, groups as u32, heads as u32)
    }

    /// The cube: `units·lanes` units in one dimension.
    fn dim(self, lanes: usize) -> CubeDim {
        CubeDim::new_1d((self.units * lanes) as u32)
    }
}

/// The largest plane (warp, subgroup) size of the device of `t`.
fn plane_size<R: CubeRuntime>(t: &CubeTensor<R>) -> usize {
    t.client.properties().hardware.plane_size_max.max(1) as usize
}

/// The value of environment variable `name` when it is one of `allowed` (else none).
fn env_choice(name: &str, allowed: &[usize]) -> Option<usize> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| allowed.contains(n))
}

/// Query rows (forward, dQ) or key columns (dK/dV) per unit. On a CPU Vulkan driver such as
/// lavapipe, where a shader's shared-memory reads cost far more than its arithmetic, eight: each
/// vector read from shared memory then serves eight rows (on lavapipe the forward measured
/// 172 ms with 1 row, 78 ms with 4 and 49 ms with 8; `docs/kernels.md`). On GPUs one, which
/// keeps a unit's vectors in registers. [`crate::set_rows_per_unit`], else
/// `PEFT_KERNEL_ROWS=1|2|4|8|16`, overrides.
fn rows_per_unit<R: CubeRuntime>(t: &CubeTensor<R>) -> usize {
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
/// 1.42 ms with two; `docs/kernels.md`). [`crate::set_step_block`], else
/// `PEFT_KERNEL_BLOCK=1|2|4|8`, overrides.
pub(crate) fn step_block() -> usize {
    crate::step_block_override()
        .or_else(|| env_choice("PEFT_KERNEL_BLOCK", &BLOCK_SIZES))
        .unwrap_or(1)
}

/// Row floats per unit the default lanes aim for (see [`default_lanes`]). Measured on an H200
/// at `d = 64` (`docs/kernels.md`): the forward was as fast with one lane (128 floats) as with
/// four, and the backward fastest with two lanes (96 and 128 floats), 1.6× faster than with the
/// four that a bound of 64 floats gave.
const ROW_FLOATS_PER_UNIT: usize = 128;

/// The three kernels that walk rows or columns, for their lanes-per-row choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
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
fn lanes_per_row<R: CubeRuntime>(t: &CubeTensor<R>, head_dim: usize, walk: Walk) -> usize {
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
fn row_floats(head_dim: usize, walk: Walk) -> usize {
    head_dim
        * match walk {
            Walk::Forward => 2,
            Walk::Dq => 3,
            Walk::Dkdv => 4,
        }
}

/// The default lanes per row on devices with plane operations: the fewest that bring a unit's
/// row floats to [`ROW_FLOATS_PER_UNIT`] or below (at most 8).
fn default_lanes(head_dim: usize, walk: Walk) -> usize {
    let floats = row_floats(head_dim, walk);
    LANE_COUNTS
        .into_iter()
        .find(|&w| floats <= ROW_FLOATS_PER_UNIT * w)
        .unwrap_or(8)
}

/// Floats per vector in the kernels' row layout: 4 when the head dimension allows it.
fn vector_size(head_dim: usize) -> usize {
    [4, 2, 1]
        .into_iter()
        .find(|n| head_dim.is_multiple_of(*n))
        .unwrap_or(1)
}

/// Key/value columns (forward, dQ) or query rows (dK/dV) per tile of the register-tiled kernels.
const TILED_COLUMNS: usize = 32;

/// Whether the register-tiled kernel of `pass` is chosen: [`crate::set_kernel_shape`], else
/// the pass's environment variable (`PEFT_KERNEL_FORWARD`, `PEFT_KERNEL_DQ`,
/// `PEFT_KERNEL_DKDV`: `rows` or `tiles`; anything else is ignored), else the row kernel.
fn tiles_chosen(pass: KernelPass) -> bool {
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
fn tiled_fits<R: CubeRuntime>(t: &CubeTensor<R>, head_dim: usize, shared: usize) -> bool {
    let hardware = &t.client.properties().hardware;
    vector_size(head_dim) == 4
        && head_dim.is_multiple_of(4 * tiled::TILED_LANES)
        && hardware.plane_size_min as usize >= tiled::TILED_LANES
        && shared <= hardware.max_shared_memory_size
}

/// Whether the forward takes the register-tiled kernel: when it is chosen ([`tiles_chosen`])
/// and fits the call ([`tiled_fits`]; on lavapipe head dimensions up to 64).
fn tiled_forward<R: CubeRuntime>(t: &CubeTensor<R>, head_dim: usize) -> bool {
    tiles_chosen(KernelPass::Forward)
        && tiled_fits(t, head_dim, tiled::shared_bytes(head_dim, TILED_COLUMNS))
}

/// The grid and cube of the register-tiled forward or dQ with `groups` row groups: `4·groups`
/// query rows of one (batch row, key/value head) per cube (`x`), one `y` per (batch row,
/// key/value head), `groups` row groups of [`tiled::TILED_LANES`] units.
fn tiled_launch(d: &AttentionDims, groups: usize) -> (CubeCount, CubeDim) {
    let cubes = (d.group() * d.queries).max(1).div_ceil(4 * groups);
    (
        CubeCount::Static(cubes as u32, (d.batch * d.kv_heads) as u32, 1),
        CubeDim::new_1d((groups * tiled::TILED_LANES) as u32),
    )
}

/// The grid and cube of the register-tiled dK/dV with `groups` column groups: `4·groups`
/// columns of `[prefix ; sequence]` of one (batch row, key/value head) per cube (`x`), one `y`
/// per (batch row, key/value head), one `z` per query head of the group.
fn tiled_dkdv_launch(d: &AttentionDims, groups: usize) -> (CubeCount, CubeDim) {
    let cubes = (d.prefix + d.keys).max(1).div_ceil(4 * groups);
    (
        CubeCount::Static(
            cubes as u32,
            (d.batch * d.kv_heads) as u32,
            d.group() as u32,
        ),
        CubeDim::new_1d((groups * tiled::TILED_LANES) as u32),
    )
}

/// The row (or column) groups of a register-tiled backward kernel when it is chosen
/// ([`tiles_chosen`]) and fits the call: 16 (64 rows or columns a cube, as the tiled forward)
/// where its shared memory (`shared(groups)` bytes) allows, else 8.
fn tiled_groups<R: CubeRuntime>(
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
fn tiled_dq_groups<R: CubeRuntime>(t: &CubeTensor<R>, head_dim: usize) -> Option<usize> {
    tiled_groups(t, head_dim, KernelPass::Dq, |groups| {
        tiled::dq_shared_bytes(head_dim, TILED_COLUMNS, groups)
    })
}

/// The column groups of the register-tiled dK/dV ([`tiled_groups`]; on lavapipe's 32 KiB: 16
/// up to `d = 32`, 8 at `d = 64`, none at 128).
fn tiled_dkdv_groups<R: CubeRuntime>(t: &CubeTensor<R>, head_dim: usize) -> Option<usize> {
    tiled_groups(t, head_dim, KernelPass::Dkdv, |groups| {
        tiled::dkdv_shared_bytes(head_dim, TILED_COLUMNS, groups)
    })
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> PrefixAttentionBackend
    for Cube<R, F, I, BT>
{
    fn has_fused_prefix_attention() -> bool {
        true
    }

    /// The output in the inputs' dtype and the log-sum-exp in f32 (for every input dtype, also
    /// on the reference path).
    fn prefix_attention_forward(args: PrefixAttentionArgs<Self>) -> (CubeTensor<R>, CubeTensor<R>) {
        if !supported(&args.query, &args.dims()) {
            let (out, lse) = reference::forward_with_lse::<Self>(&args.into_tensors());
            let lse = cast(lse.into_primitive().tensor(), DType::F32);
            return (out.into_primitive().tensor(), lse);
        }
        let p = prepare(args);
        let d = p.dims;
        let dtype = DType::F32;
        let unroll = unroll_loops();
        let out = empty(
            &p.q,
            Shape::new([d.batch, d.heads, d.queries, d.head_dim]),
            dtype,
        );
        let lse = empty(&p.q, Shape::new([d.batch, d.heads, d.queries]), dtype);
        let n = vector_size(d.head_dim);
        if tiled_forward(&p.q, d.head_dim) {
            let (count, dim) = tiled_launch(&d, tiled::TILED_GROUPS);
            tiled::forward_tiled_kernel::launch::<R>(
                &p.q.client,
                count,
                dim,
                n,
                p.q.clone().into_tensor_arg(),
                p.k.into_tensor_arg(),
                p.v.into_tensor_arg(),
                p.pk.into_tensor_arg(),
                p.pv.into_tensor_arg(),
                p.lengths.clone().into_tensor_arg(),
                out.clone().into_tensor_arg(),
                lse.clone().into_tensor_arg(),
                p.scale,
                d.prefix as u32,
                u32::from(d.prefix_batch == 1),
                p.lengths_given,
                d.head_dim / n,
                TILED_COLUMNS,
                [dtype.into(), p.lengths.dtype.into()],
            );
            return (cast(out, p.io_dtype), lse);
        }
        let rows = rows_per_unit(&p.q);
        let lanes = lanes_per_row(&p.q, d.head_dim, Walk::Forward);
        let launch = RowLaunch::new(d.group() * d.queries, rows, lanes, plane_size(&p.q));
        kernels::forward_kernel::launch::<R>(
            &p.q.client,
            launch.count(d.batch * d.kv_heads, 1),
            launch.dim(lanes),
            n,
            p.q.clone().into_tensor_arg(),
            p.k.into_tensor_arg(),
            p.v.into_tensor_arg(),
            p.pk.into_tensor_arg(),
            p.pv.into_tensor_arg(),
            p.lengths.clone().into_tensor_arg(),
            out.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            p.scale,
            d.prefix as u32,
            u32::from(d.prefix_batch == 1),
            p.lengths_given,
            d.head_dim / n,
            TILE,
            rows,
            lanes,
            step_block(),
            unroll,
            [dtype.into(), p.lengths.dtype.into()],
        );
        (cast(out, p.io_dtype), lse)
    }

    fn prefix_attention_backward(
        args: PrefixAttentionArgs<Self>,
        out: CubeTensor<R>,
        lse: CubeTensor<R>,
        grad_out: CubeTensor<R>,
    ) -> AttentionGrads<Self> {
        if !supported(&args.query, &args.dims()) {
            use burn::tensor::{Tensor, TensorPrimitive};
            let dtype = args.query.dtype;
            let lse = Tensor::from_primitive(TensorPrimitive::Float(cast(lse, dtype)));
            return reference::backward::<Self>(
                &args.into_tensors(),
                Tensor::from_primitive(TensorPrimitive::Float(out)),
                lse,
                Tensor::from_primitive(TensorPrimitive::Float(grad_out)),
            );
        }
        let p = prepare(args);
        let d = p.dims;
        let dtype = DType::F32;
        let unroll = unroll_loops();
        let client = p.q.client.clone();
        let out = cast(into_contiguous(out), dtype);
        let grad_out = cast(into_contiguous(grad_out), dtype);
        let lse = cast(into_contiguous(lse), dtype);
        let rows = d.batch * d.heads * d.queries;
        let n = vector_size(d.head_dim);
        let rows_per = rows_per_unit(&p.q);
        // stats = [lse ; D] in one buffer, written by the dQ kernel for the dK/dV kernel, which
        // would otherwise need 13 storage bindings.
        let stats = empty(&p.q, Shape::new([2 * rows]), dtype);
        let dq = empty(
            &p.q,
            Shape::new([d.batch, d.heads, d.queries, d.head_dim]),
            dtype,
        );
        let plane = plane_size(&p.q);
        if let Some(groups) = tiled_dq_groups(&p.q, d.head_dim) {
            let (count, dim) = tiled_launch(&d, groups);
            tiled::dq_tiled_kernel::launch::<R>(
                &client,
                count,
                dim,
                n,
                p.q.clone().into_tensor_arg(),
                p.k.clone().into_tensor_arg(),
                p.v.clone().into_tensor_arg(),
                p.pk.clone().into_tensor_arg(),
                p.pv.clone().into_tensor_arg(),
                p.lengths.clone().into_tensor_arg(),
                grad_out.clone().into_tensor_arg(),
                out.into_tensor_arg(),
                lse.into_tensor_arg(),
                stats.clone().into_tensor_arg(),
                dq.clone().into_tensor_arg(),
                p.scale,
                d.prefix as u32,
                u32::from(d.prefix_batch == 1),
                p.lengths_given,
                d.head_dim / n,
                TILED_COLUMNS,
                groups,
                [dtype.into(), p.lengths.dtype.into()],
            );
        } else {
            let lanes = lanes_per_row(&p.q, d.head_dim, Walk::Dq);
            let launch = RowLaunch::new(d.group() * d.queries, rows_per, lanes, plane);
            kernels::dq_kernel::launch::<R>(
                &client,
                launch.count(d.batch * d.kv_heads, 1),
                launch.dim(lanes),
                n,
                p.q.clone().into_tensor_arg(),
                p.k.clone().into_tensor_arg(),
                p.v.clone().into_tensor_arg(),
                p.pk.clone().into_tensor_arg(),
                p.pv.clone().into_tensor_arg(),
                p.lengths.clone().into_tensor_arg(),
                grad_out.clone().into_tensor_arg(),
                out.into_tensor_arg(),
                lse.into_tensor_arg(),
                stats.clone().into_tensor_arg(),
                dq.clone().into_tensor_arg(),
                p.scale,
                d.prefix as u32,
                u32::from(d.prefix_batch == 1),
                p.lengths_given,
                d.head_dim / n,
                TILE,
                rows_per,
                lanes,
                step_block(),
                unroll,
                [dtype.into(), p.lengths.dtype.into()],
            );
        }
        // Partials per query head of the group, summed below.
        let g = d.group();
        let kv_shape = Shape::new([g, d.batch, d.kv_heads, d.keys, d.head_dim]);
        let dk = empty(&p.q, kv_shape.clone(), dtype);
        let dv = empty(&p.q, kv_shape, dtype);
        // Per-head, per-batch prefix partials (at least one slot so the binding is valid).
        let prefix_shape = Shape::new([g, d.batch, d.kv_heads, d.prefix.max(1), d.head_dim]);
        let dpk = empty(&p.q, prefix_shape.clone(), dtype);
        let dpv = empty(&p.q, prefix_shape, dtype);
        if let Some(groups) = tiled_dkdv_groups(&p.q, d.head_dim) {
            let (count, dim) = tiled_dkdv_launch(&d, groups);
            tiled::dkdv_tiled_kernel::launch::<R>(
                &client,
                count,
                dim,
                n,
                p.q.into_tensor_arg(),
                p.k.into_tensor_arg(),
                p.v.into_tensor_arg(),
                p.pk.into_tensor_arg(),
                p.pv.into_tensor_arg(),
                p.lengths.clone().into_tensor_arg(),
                grad_out.into_tensor_arg(),
                stats.into_tensor_arg(),
                dk.clone().into_tensor_arg(),
                dv.clone().into_tensor_arg(),
                dpk.clone().into_tensor_arg(),
                dpv.clone().into_tensor_arg(),
                p.scale,
                d.prefix as u32,
                u32::from(d.prefix_batch == 1),
                p.lengths_given,
                d.head_dim / n,
                TILED_COLUMNS,
                groups,
                [dtype.into(), p.lengths.dtype.into()],
            );
        } else {
            let lanes = lanes_per_row(&p.q, d.head_dim, Walk::Dkdv);
            let launch = RowLaunch::new(d.prefix + d.keys, rows_per, lanes, plane);
            kernels::dkdv_kernel::launch::<R>(
                &client,
                launch.count(d.batch * d.kv_heads, g),
                launch.dim(lanes),
                n,
                p.q.into_tensor_arg(),
                p.k.into_tensor_arg(),
                p.v.into_tensor_arg(),
                p.pk.into_tensor_arg(),
                p.pv.into_tensor_arg(),
                p.lengths.clone().into_tensor_arg(),
                grad_out.into_tensor_arg(),
                stats.into_tensor_arg(),
                dk.clone().into_tensor_arg(),
                dv.clone().into_tensor_arg(),
                dpk.clone().into_tensor_arg(),
                dpv.clone().into_tensor_arg(),
                p.scale,
                d.prefix as u32,
                u32::from(d.prefix_batch == 1),
                p.lengths_given,
                d.head_dim / n,
                query_tile(
                    d.head_dim,
                    client.properties().hardware.max_shared_memory_size,
                ),
                rows_per,
                lanes,
                step_block(),
                unroll,
                [dtype.into(), p.lengths.dtype.into()],
            );
        }
        // Sum each pair of partials (contiguous, in f32) over its `summed` leading slices — the
        // group's heads, and the batch rows too for a prefix shared by the batch — into `shape`,
        // then back to the inputs' dtype. One launch per pair (Burn's `sum_dim` over a leading
        // dimension took 80 µs for each of dK and dV at the shape on an H200, where
        // reading their 10.6 MB of partials takes a few microseconds). Nothing to sum is a
        // reshape: one slice, or no elements (the kernel divides by the sum's length).
        let io_dtype = p.io_dtype;
        let sum_pair = |a: CubeTensor<R>, b: CubeTensor<R>, summed: usize, shape: Shape| {
            let reshape = |t| <Self as FloatTensorOps<Self>>::float_reshape(t, shape.clone());
            if summed == 1 || shape.num_elements() == 0 {
                return (cast(reshape(a), io_dtype), cast(reshape(b), io_dtype));
            }
            let a_sum = empty(&a, shape.clone(), dtype);
            let b_sum = empty(&a, shape.clone(), dtype);
            let vectors = shape.num_elements() / n;
            let cubes = vectors.div_ceil(SUM_UNITS as usize).clamp(1, MAX_SUM_CUBES);
            kernels::sum_partials_kernel::launch::<R>(
                &client,
                CubeCount::Static(cubes as u32, 1, 1),
                CubeDim::new_1d(SUM_UNITS),
                n,
                a.into_tensor_arg(),
                b.into_tensor_arg(),
                a_sum.clone().into_tensor_arg(),
                b_sum.clone().into_tensor_arg(),
                dtype.into(),
            );
            (cast(a_sum, io_dtype), cast(b_sum, io_dtype))
        };
        let (dk, dv) = sum_pair(
            dk,
            dv,
            g,
            Shape::new([d.batch, d.kv_heads, d.keys, d.head_dim]),
        );
        let (prefix_key, prefix_value) = if d.prefix == 0 {
            (None, None)
        } else {
            // A shared prefix sums over the batch as well.
            let (batch, summed) = if d.prefix_batch == 1 {
                (1, g * d.batch)
            } else {
                (d.batch, g)
            };
            let shape = Shape::new([batch, d.kv_heads, d.prefix, d.head_dim]);
            let (dpk, dpv) = sum_pair(dpk, dpv, summed, shape);
            (Some(dpk), Some(dpv))
        };
        AttentionGrads {
            query: cast(dq, io_dtype),
            key: dk,
            value: dv,
            prefix_key,
            prefix_value,
        }
    }
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
