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
mod launch;
mod tiled;

use burn::tensor::{
    DType, Shape,
    ops::{FloatTensorOps, IntTensorOps},
};
use burn_cubecl::{
    CubeBackend, CubeRuntime, FloatElement, IntElement, element::BoolElement,
    kernel::into_contiguous, tensor::CubeTensor,
};
use cubecl::{CubeCount, CubeDim};

use crate::{
    counts::{Ran, record},
    op::{AttentionDims, AttentionGrads, PrefixAttentionArgs, PrefixAttentionBackend},
    reference,
};

pub use kernels::NEG_LARGE;
use launch::{
    RowLaunch, TILED_COLUMNS, Walk, dkdv_shared_bytes, lanes_per_row, plane_size, query_tile,
    row_shared_bytes, rows_per_unit, step_block, tiled_dkdv_groups, tiled_dq_groups, tiled_forward,
    tiled_launch, unroll_loops, vector_size,
};

/// Largest head dimension the kernels take (the per-unit registers grow with it).
pub const MAX_HEAD_DIM: usize = crate::CUBE_MAX_HEAD_DIM;
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

/// `t` in `dtype` (the same tensor when it already is).
fn cast<R: CubeRuntime>(t: CubeTensor<R>, dtype: DType) -> CubeTensor<R> {
    if t.dtype == dtype {
        t
    } else {
        burn_cubecl::kernel::cast(t, dtype)
    }
}

/// Contiguous f32 inputs and the per-row lengths that were given: `lengths` holds the prefix
/// lengths (`[B]`, when bit 0 of `scalars.lengths_given` is set), then the key lengths (`[B]`,
/// bit 1). `io_dtype` is the dtype the inputs came in, which the outputs go back to.
struct Prepared<R: CubeRuntime> {
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    pk: CubeTensor<R>,
    pv: CubeTensor<R>,
    lengths: CubeTensor<R>,
    scalars: kernels::AttentionScalars,
    dims: AttentionDims,
    io_dtype: DType,
}

/// A new contiguous buffer on `like`'s device (contents undefined: the kernels write all of it).
fn empty<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape, dtype: DType) -> CubeTensor<R> {
    let bytes = shape.num_elements() * dtype.size();
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
        scalars: kernels::AttentionScalars {
            scale: args.scale,
            prefix: dims.prefix as u32,
            prefix_shared: u32::from(dims.prefix_batch == 1),
            lengths_given,
        },
        dims,
        io_dtype,
    }
}

/// The CubeCL backends multiply frozen weights with Burn's matmul in the weight's dtype (the
/// trait's defaults; bf16 runs Burn's bf16 matmul).
impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> crate::FrozenLinearBackend
    for Cube<R, F, I, BT>
{
}

/// The CubeCL backends run the layer operations as compositions of tensor ops (the trait's
/// defaults), which the fusion-wrapped types compile into fused kernels of their own.
impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> crate::LayerOpsBackend
    for Cube<R, F, I, BT>
{
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
        record(Ran::FusedForward);
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
            let (count, dim) = tiled_launch(&d, d.group() * d.queries, 1, tiled::TILED_GROUPS);
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
                p.scalars.arg(),
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
            p.scalars.arg(),
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
        record(Ran::FusedBackward);
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
            let (count, dim) = tiled_launch(&d, d.group() * d.queries, 1, groups);
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
                p.scalars.arg(),
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
                p.scalars.arg(),
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
            let (count, dim) = tiled_launch(&d, d.prefix + d.keys, d.group(), groups);
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
                p.scalars.arg(),
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
                p.scalars.arg(),
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
        // dimension took 83 and 79 µs for dK and dV at the shape on an H200,
        // docs/measured/h200-2026-11-28-run1-profile.txt, where reading their 10.6 MB of
        // partials takes a few microseconds). Nothing to sum is a
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
