//! The register-tiled forward, dQ and dK/dV kernels: the cube's query block (dK/dV: its key
//! and value columns) and each key/value tile (dK/dV: query tile) in shared memory, and every
//! unit computing a 4 × 4 block of scores and a 4-row block of the output, of dQ, or of dK and
//! dV from them, instead of one whole row per unit.
//!
//! Why: the row kernel of [`super::kernels`] keeps a unit's query row and output accumulator in
//! registers (`2·d` floats, 164 registers at `d = 64` on sm_90a), so the compiler has room for
//! only three or four vector loads in flight, each of its dot products is one chain of
//! dependent additions, and an H200 ran it with about two warps per scheduler, issuing an
//! instruction every 4.3 cycles per warp (docs/measured/h200-2026-11-28-run3-ncu-forward.txt). Here a unit holds 16 independent
//! score sums and `4·d/8` output sums: each step of the head-dimension walk loads two vectors
//! from shared memory for 16 multiply-adds, and each step of the column walk three for 32.
//!
//! Layout (`N = 4`, head dimension a multiple of 32; the launch falls back to the row kernel
//! otherwise):
//! * A cube owns 64 query rows of the per-key/value-head view
//!   ([`QueryBlock`](super::kernels::QueryBlock)) and has 128 units: 16 row groups (`ty`) of 8
//!   lanes (`tx`). Unit `(ty, tx)` owns rows `ty, ty + 16, ty + 32, ty + 48` of the block — one
//!   vector of four rows.
//! * `qs` `[d][16]`: the scaled queries transposed, entry `(k, ty)` the vector of the four rows
//!   of group `ty` at head-dimension index `k`. Staged once.
//! * `kps` `[d][BC/4]`: a tile of `BC` key columns transposed, entry `(k, c4)` the vector of
//!   columns `4·c4 … 4·c4 + 3` at `k`. Lane `tx` owns column vectors `tx + 8u`.
//! * `vs` `[BC][d/4]`: the value tile as it is in memory. Lane `tx` owns output vectors
//!   `tx + 8w` of each of its rows.
//! * Then `kps` `[BC][16]`: the tile's probabilities, entry `(c, ty)` the vector of the four
//!   rows of group `ty` at column `c`, written after the softmax step (the keys are no longer
//!   needed), read by the output step.
//!
//! Shared memory: `16·d + max(d·BC/4, 16·BC) + BC·d/4` vectors, 32 KiB at `d = 64, BC = 32`.
//!
//! Per tile: stage the keys and `vs` (sync), scores `S = Q·Kᵀ` as outer products over `k`, the
//! online softmax per row (the row maximum reduced over the 8 lanes with plane shuffles, so
//! every lane of a row rescales by the same factor; each lane keeps its own partial sum,
//! reduced once at the end), (sync) the probabilities (sync), `O += P·V` as outer products
//! over the tile's columns (sync).
//! Visibility is applied per score as in the row kernel; tiles past the cube's causal reach are
//! not walked.
//!
//! # The tiled dQ
//!
//! The same layout with `groups` row groups (16, or 8 where 64 rows' shared memory does not
//! fit: lavapipe at `d = 64`). The cube's output gradients are staged transposed beside the
//! queries (`dos`, as `qs`); `D = dO · O` per row from the lane's `d/32` vectors of it, reduced
//! over the row's lanes. Per tile: stage the keys and the values, both transposed (sync); `S`
//! and `dP = dO·Vᵀ` as outer products over `k`; `dS = exp(S − lse) ∘ (dP − D)`, zero for hidden
//! pairs (sync); `dS` by column into the key buffer and the keys as they are into the value
//! buffer (sync); `dQ += dS·K` as outer products over the tile's columns (sync).
//! Shared memory: the forward's plus `groups·d` vectors of output gradients (48 KiB at
//! `d = 64` with 16 groups, 32 KiB with 8).
//!
//! # The tiled dK/dV
//!
//! The dQ's roles turned around: a cube owns `4·groups` columns of `[prefix ; sequence]` of one
//! (batch row, key/value head) and one query head of the group ([`ColumnCube`]); unit
//! `(ty, tx)` owns columns `ty + groups·s`. The cube's keys (scaled) and values are staged
//! transposed once (`kt`, `vt`, as the queries are in the forward). Per tile of `bq` query rows
//! from the first that can see the cube's columns: stage the queries and output gradients
//! transposed (sync); `Sᵀ = K·Qᵀ` and `dPᵀ = V·dOᵀ` as outer products over `k`; `P` and
//! `dS = P ∘ (dP − D)` with the rows' log-sum-exp and `D` from `stats`, zero for hidden pairs
//! (sync); P by query row into the output gradients' buffer and the output gradients as they
//! are into the queries' buffer (sync); `dV += P·dO` (sync); the same with dS and the queries
//! for `dK += dS·Q` (sync, sync). No shuffles: each score is one unit's.
//! Shared memory: `2·groups·d` vectors of keys and values, `bq·d/4` of the query tile and
//! `max(bq·d/4, bq·groups)` of the second buffer (48 KiB at `d = 64` with 16 groups, 32 KiB
//! with 8).

use cubecl::{cube, prelude::*};

use super::kernels::{
    AttentionScalars, ColumnCube, ColumnLayout, NEG_LARGE, RowCube, lane_max, lane_sum,
};

/// Units sharing a row group: they split the tile's columns and the output's head dimension.
pub const TILED_LANES: usize = 8;
/// Row groups of a cube (each a vector of four rows).
pub const TILED_GROUPS: usize = 16;
/// Query rows of a cube.
pub const TILED_ROWS: usize = 4 * TILED_GROUPS;
/// Steps of the head-dimension and column walks per (unrolled) iteration.
const STEP: usize = 4;

/// Register-tiled forward pass (module documentation). Outputs `out` `[B, H, L, d]` and `lse`
/// `[B, H, L]`, as the row kernel. `dl` is `d / 4`, a multiple of 8; `bc` the tile's columns, a
/// multiple of 32.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn forward_tiled_kernel<F: Float, I: Int, N: Size>(
    q: &Tensor<Vector<F, N>>,
    k: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    pk: &Tensor<Vector<F, N>>,
    pv: &Tensor<Vector<F, N>>,
    lengths: &Tensor<I>,
    out: &mut Tensor<Vector<F, N>>,
    lse: &mut Tensor<F>,
    scalars: &AttentionScalars,
    #[comptime] dl: usize,
    #[comptime] bc: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    // 16 row groups of 8 lanes; slot `s` of unit (ty, tx) is row `16·s + ty` of the block.
    let cube = RowCube::of_cube::<F, N, I>(q, k, lengths, scalars, 4usize, TILED_LANES);
    let (block, vis, layout, end) = (cube.block, cube.vis, cube.layout, cube.end);
    let (rows, tx, ty) = (block.rows, block.lanes.lane, block.lanes.first);
    let d = comptime!(dl * 4);
    // Column vectors of a tile, those a lane owns, and output vectors a lane owns per row.
    let bc4 = comptime!(bc / 4);
    let cv = comptime!(bc / (4 * TILED_LANES));
    let dv = comptime!(dl / TILED_LANES);
    let zero = Vector::new(F::new(0.0));

    let mut qs = SharedMemory::<Vector<F, N>>::new(d * TILED_GROUPS);
    let (first, row_layout) = (block.first(), block.rows_layout());
    let scale_f = F::cast_from(scalars.scale);
    stage_groups_transposed::<F, N>(
        q,
        q,
        &mut qs,
        &row_layout,
        first,
        rows,
        scale_f,
        dl,
        TILED_GROUPS,
    );

    let mut pos = Array::<usize>::new(4usize);
    let mut m = Array::<F>::new(4usize);
    let mut den = Array::<F>::new(4usize);
    let mut acc = Array::<Vector<F, N>>::new(4usize * dv);
    let mut score = Array::<F>::new(16usize * cv);
    #[unroll]
    for s in 0..4usize {
        pos[s] = block.position(block.row(s));
        m[s] = F::new(NEG_LARGE);
        den[s] = F::new(0.0);
        #[unroll]
        for w in 0..dv {
            acc[s * dv + w] = zero;
        }
    }

    // The key tile, then (once the scores are taken) the probabilities: one buffer, so that
    // `d = 64` fits in 32 KiB of shared memory (lavapipe's limit).
    let mut kps =
        SharedMemory::<Vector<F, N>>::new(comptime!(usize::max(d * bc4, bc * TILED_GROUPS)));
    let mut vs = SharedMemory::<Vector<F, N>>::new(bc * dl);
    let mut tile = 0;
    while tile < end {
        // Keys transposed, values as they are; zeros past `end`.
        stage_tile::<F, N>(k, pk, &mut kps, &layout, tile, end, dl, bc, true);
        stage_tile::<F, N>(v, pv, &mut vs, &layout, tile, end, dl, bc, false);
        sync_cube();

        tile_scores::<F, N>(&mut score, &qs, &kps, ty, tx, d, bc4, cv, TILED_GROUPS);

        // Online softmax: the row maximum over the row's lanes, so that they all rescale by
        // the same factor; hidden pairs add nothing (p = 0).
        #[unroll]
        for s in 0..4usize {
            let mut top = F::new(NEG_LARGE);
            #[unroll]
            for u in 0..cv {
                #[unroll]
                for e in 0..4usize {
                    let c = tile + lane_column(tx, u, e);
                    let sc = score[score_slot(s, u, e, cv)];
                    if vis.sees(c, pos[s]) && sc > top {
                        top = sc;
                    }
                }
            }
            top = lane_max::<F>(top, TILED_LANES);
            if top > m[s] {
                let correction = F::exp(m[s] - top);
                den[s] *= correction;
                let cvec = Vector::new(correction);
                #[unroll]
                for w in 0..dv {
                    acc[s * dv + w] *= cvec;
                }
                m[s] = top;
            }
            #[unroll]
            for u in 0..cv {
                #[unroll]
                for e in 0..4usize {
                    let c = tile + lane_column(tx, u, e);
                    let x = score_slot(s, u, e, cv);
                    let p = select(vis.sees(c, pos[s]), F::exp(score[x] - m[s]), F::new(0.0));
                    den[s] += p;
                    score[x] = p;
                }
            }
        }
        // The probabilities in place of the keys once every unit has taken its scores.
        sync_cube();
        store_tile_columns::<F, N>(&score, &mut kps, ty, tx, cv, TILED_GROUPS);
        sync_cube();

        accumulate_rows::<F, N>(&mut acc, &kps, &vs, ty, tx, bc, dl, TILED_GROUPS);
        sync_cube();
        tile += bc;
    }

    #[unroll]
    for s in 0..4usize {
        // Outside the row test: the shuffles must be reached by the whole plane.
        let total = lane_sum::<F>(den[s], TILED_LANES);
        let row = block.row(s);
        if row < rows {
            let r = block.index(row);
            let mut inv = F::new(0.0);
            let mut row_lse = F::new(NEG_LARGE);
            if total > F::new(0.0) {
                inv = F::new(1.0) / total;
                row_lse = m[s] + F::ln(total);
            }
            let inv_v = Vector::new(inv);
            #[unroll]
            for w in 0..dv {
                out[r * dl + tx + TILED_LANES * w] = acc[s * dv + w] * inv_v;
            }
            if tx == 0 {
                lse[r] = row_lse;
            }
        }
    }
}

/// Register-tiled query gradient (module documentation, *The tiled dQ*): `dq` `[B, H, L, d]`
/// from the forward's output `out` and log-sum-exp `lse`, and `stats` `[2, B·H·L]` (the
/// log-sum-exp, then `D = rowsum(dO ∘ O)`) for the dK/dV kernel, as the row kernel's dQ.
/// `groups` row groups of [`TILED_LANES`] units, `4·groups` rows a cube; `dl` is `d / 4`, a
/// multiple of 8; `bc` the tile's columns, a multiple of 32.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn dq_tiled_kernel<F: Float, I: Int, N: Size>(
    q: &Tensor<Vector<F, N>>,
    k: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    pk: &Tensor<Vector<F, N>>,
    pv: &Tensor<Vector<F, N>>,
    lengths: &Tensor<I>,
    grad_out: &Tensor<Vector<F, N>>,
    out: &Tensor<Vector<F, N>>,
    lse: &Tensor<F>,
    stats: &mut Tensor<F>,
    dq: &mut Tensor<Vector<F, N>>,
    scalars: &AttentionScalars,
    #[comptime] dl: usize,
    #[comptime] bc: usize,
    #[comptime] groups: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    // `groups` row groups of 8 lanes; slot `s` of unit (ty, tx) is row `groups·s + ty`.
    let cube = RowCube::of_cube::<F, N, I>(q, k, lengths, scalars, 4usize, TILED_LANES);
    let (block, vis, layout, end) = (cube.block, cube.vis, cube.layout, cube.end);
    let (rows, tx, ty) = (block.rows, block.lanes.lane, block.lanes.first);
    let n_rows = q.shape(0) * q.shape(1) * block.l;
    let d = comptime!(dl * 4);
    let bc4 = comptime!(bc / 4);
    let cv = comptime!(bc / (4 * TILED_LANES));
    let dv = comptime!(dl / TILED_LANES);
    let zero = Vector::new(F::new(0.0));

    let mut qs = SharedMemory::<Vector<F, N>>::new(d * groups);
    let (first, row_layout) = (block.first(), block.rows_layout());
    let scale_f = F::cast_from(scalars.scale);
    stage_groups_transposed::<F, N>(q, q, &mut qs, &row_layout, first, rows, scale_f, dl, groups);
    let mut dos = SharedMemory::<Vector<F, N>>::new(d * groups);
    let one = F::new(1.0);
    let go = grad_out;
    stage_groups_transposed::<F, N>(go, go, &mut dos, &row_layout, first, rows, one, dl, groups);

    // Each row's log-sum-exp and `D = dO · O` (this lane's output vectors, summed over the
    // row's lanes), written to `stats` for the dK/dV kernel.
    let mut pos = Array::<usize>::new(4usize);
    let mut row_lse = Array::<F>::new(4usize);
    let mut row_delta = Array::<F>::new(4usize);
    let mut acc = Array::<Vector<F, N>>::new(4usize * dv);
    #[unroll]
    for s in 0..4usize {
        let row = block.row(s);
        let r = block.index(row);
        pos[s] = block.position(row);
        row_lse[s] = F::new(0.0);
        let mut part = F::new(0.0);
        #[unroll]
        for w in 0..dv {
            acc[s * dv + w] = zero;
            if row < rows {
                let at = r * dl + tx + TILED_LANES * w;
                part += grad_out[at].dot(out[at]);
            }
        }
        if row < rows {
            row_lse[s] = lse[r];
        }
        // Outside the row test: the shuffles must be reached by the whole plane.
        let delta = lane_sum::<F>(part, TILED_LANES);
        row_delta[s] = delta;
        if row < rows && tx == 0 {
            stats[r] = row_lse[s];
            stats[n_rows + r] = delta;
        }
    }

    let mut score = Array::<F>::new(16usize * cv);
    let mut dp = Array::<F>::new(16usize * cv);
    // The key tile transposed, then dS; the value tile transposed, then the key tile as it is.
    let mut kds = SharedMemory::<Vector<F, N>>::new(comptime!(usize::max(d * bc4, bc * groups)));
    let mut vks = SharedMemory::<Vector<F, N>>::new(d * bc4);
    let mut tile = 0;
    while tile < end {
        stage_tile::<F, N>(k, pk, &mut kds, &layout, tile, end, dl, bc, true);
        stage_tile::<F, N>(v, pv, &mut vks, &layout, tile, end, dl, bc, true);
        sync_cube();

        // S = Q·Kᵀ (scaled), dP = dO·Vᵀ, then dS = P ∘ (dP − D), zero for hidden pairs.
        tile_scores::<F, N>(&mut score, &qs, &kds, ty, tx, d, bc4, cv, groups);
        tile_scores::<F, N>(&mut dp, &dos, &vks, ty, tx, d, bc4, cv, groups);
        #[unroll]
        for s in 0..4usize {
            #[unroll]
            for u in 0..cv {
                #[unroll]
                for e in 0..4usize {
                    let c = tile + lane_column(tx, u, e);
                    let x = score_slot(s, u, e, cv);
                    let ds = F::exp(score[x] - row_lse[s]) * (dp[x] - row_delta[s]);
                    score[x] = select(vis.sees(c, pos[s]), ds, F::new(0.0));
                }
            }
        }
        sync_cube();
        store_tile_columns::<F, N>(&score, &mut kds, ty, tx, cv, groups);
        stage_tile::<F, N>(k, pk, &mut vks, &layout, tile, end, dl, bc, false);
        sync_cube();

        // dQ += dS·K, outer products over the tile's columns.
        accumulate_rows::<F, N>(&mut acc, &kds, &vks, ty, tx, bc, dl, groups);
        sync_cube();
        tile += bc;
    }

    let scale_v = Vector::new(scale_f);
    #[unroll]
    for s in 0..4usize {
        let row = block.row(s);
        if row < rows {
            let r = block.index(row);
            #[unroll]
            for w in 0..dv {
                dq[r * dl + tx + TILED_LANES * w] = acc[s * dv + w] * scale_v;
            }
        }
    }
}

/// Register-tiled partial key and value gradients (module documentation, *The tiled dK/dV*):
/// the row kernel's outputs — `dk`/`dv` `[g, B, Hkv, S, d]` for sequence columns, `dpk`/`dpv`
/// `[g, B, Hkv, P, d]` for prefix columns, one slice per query head of the group
/// (`CUBE_POS_Z`) — from `stats` `[2, B·H·L]` (log-sum-exp, then `D`). `groups` column groups
/// of [`TILED_LANES`] units, `4·groups` columns a cube; `dl` is `d / 4`, a multiple of 8; `bq`
/// the query rows of a tile, a multiple of 32.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn dkdv_tiled_kernel<F: Float, I: Int, N: Size>(
    q: &Tensor<Vector<F, N>>,
    k: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    pk: &Tensor<Vector<F, N>>,
    pv: &Tensor<Vector<F, N>>,
    lengths: &Tensor<I>,
    grad_out: &Tensor<Vector<F, N>>,
    stats: &Tensor<F>,
    dk: &mut Tensor<Vector<F, N>>,
    dv: &mut Tensor<Vector<F, N>>,
    dpk: &mut Tensor<Vector<F, N>>,
    dpv: &mut Tensor<Vector<F, N>>,
    scalars: &AttentionScalars,
    #[comptime] dl: usize,
    #[comptime] bq: usize,
    #[comptime] groups: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    // `groups` column groups of 8 lanes; slot `s` of unit (ty, tx) is column
    // `first + groups·s + ty` of the cube.
    let cube = ColumnCube::of_cube::<F, N, I>(q, k, lengths, scalars, 4 * groups);
    let (vis, layout, queries, l) = (cube.vis, cube.layout, cube.queries, cube.l);
    let (first, columns) = (cube.first, cube.columns);
    let tx = UNIT_POS_X as usize % TILED_LANES;
    let ty = UNIT_POS_X as usize / TILED_LANES;
    let d = comptime!(dl * 4);
    let bq4 = comptime!(bq / 4);
    let cv = comptime!(bq / (4 * TILED_LANES));
    let dw = comptime!(dl / TILED_LANES);
    let zero = Vector::new(F::new(0.0));

    // The cube's key columns (scaled) and value columns, transposed, for the whole walk.
    let mut kt = SharedMemory::<Vector<F, N>>::new(d * groups);
    let mut vt = SharedMemory::<Vector<F, N>>::new(d * groups);
    let scale_f = F::cast_from(scalars.scale);
    let one = F::new(1.0);
    stage_groups_transposed::<F, N>(k, pk, &mut kt, &layout, first, columns, scale_f, dl, groups);
    stage_groups_transposed::<F, N>(v, pv, &mut vt, &layout, first, columns, one, dl, groups);

    let mut col = Array::<usize>::new(4usize);
    let mut dk_acc = Array::<Vector<F, N>>::new(4usize * dw);
    let mut dv_acc = Array::<Vector<F, N>>::new(4usize * dw);
    #[unroll]
    for s in 0..4usize {
        col[s] = first + groups * s + ty;
        #[unroll]
        for w in 0..dw {
            dk_acc[s * dw + w] = zero;
            dv_acc[s * dw + w] = zero;
        }
    }

    let mut score = Array::<F>::new(16usize * cv);
    let mut dp = Array::<F>::new(16usize * cv);
    // The query tile transposed, then the output gradients as they are, then the queries as
    // they are; the output gradients transposed, then P, then dS.
    let mut qa = SharedMemory::<Vector<F, N>>::new(d * bq4);
    let mut qb = SharedMemory::<Vector<F, N>>::new(comptime!(usize::max(d * bq4, bq * groups)));
    let go = grad_out;
    let mut tile = cube.first_query - cube.first_query % bq;
    while tile < l {
        stage_tile::<F, N>(q, q, &mut qa, &queries, tile, l, dl, bq, true);
        stage_tile::<F, N>(go, go, &mut qb, &queries, tile, l, dl, bq, true);
        sync_cube();

        // Sᵀ = K·Qᵀ (scaled), dPᵀ = V·dOᵀ, then P and dS = P ∘ (dP − D), zero for hidden
        // pairs.
        tile_scores::<F, N>(&mut score, &kt, &qa, ty, tx, d, bq4, cv, groups);
        tile_scores::<F, N>(&mut dp, &vt, &qb, ty, tx, d, bq4, cv, groups);
        #[unroll]
        for u in 0..cv {
            #[unroll]
            for e in 0..4usize {
                let i = tile + lane_column(tx, u, e);
                let row_lse = cube.lse::<F>(stats, i);
                let row_delta = cube.delta::<F>(stats, i);
                #[unroll]
                for s in 0..4usize {
                    let x = score_slot(s, u, e, cv);
                    let p = select(vis.sees(col[s], i), F::exp(score[x] - row_lse), F::new(0.0));
                    score[x] = p;
                    dp[x] = p * (dp[x] - row_delta);
                }
            }
        }
        sync_cube();
        // dV += P·dO, outer products over the tile's query rows.
        store_tile_columns::<F, N>(&score, &mut qb, ty, tx, cv, groups);
        stage_tile::<F, N>(go, go, &mut qa, &queries, tile, l, dl, bq, false);
        sync_cube();
        accumulate_rows::<F, N>(&mut dv_acc, &qb, &qa, ty, tx, bq, dl, groups);
        sync_cube();
        // dK += dS·Q.
        store_tile_columns::<F, N>(&dp, &mut qb, ty, tx, cv, groups);
        stage_tile::<F, N>(q, q, &mut qa, &queries, tile, l, dl, bq, false);
        sync_cube();
        accumulate_rows::<F, N>(&mut dk_acc, &qb, &qa, ty, tx, bq, dl, groups);
        sync_cube();
        tile += bq;
    }

    let scale_v = Vector::new(scale_f);
    #[unroll]
    for s in 0..4usize {
        #[unroll]
        for w in 0..dw {
            let x = tx + TILED_LANES * w;
            let dk_val = dk_acc[s * dw + w] * scale_v;
            cube.partials
                .write::<F, N>(dk, dpk, col[s], x, dk_val, columns, dl);
            cube.partials
                .write::<F, N>(dv, dpv, col[s], x, dv_acc[s * dw + w], columns, dl);
        }
    }
}

/// Stages `4·groups` rows (or columns) of `layout` from `first` on — query rows, or key or value
/// columns of `[prefix ; sequence]` (`seq_t`, `prefix_t`) — transposed in four-by-four blocks
/// and scaled: `dst[k·groups + group]` is the vector of rows `first + group + groups·e`
/// (`e` = 0 … 3) at head-dimension index `k`, zeros from `end` on. Four vector loads and four
/// vector stores per block.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_groups_transposed<F: Float, N: Size>(
    seq_t: &Tensor<Vector<F, N>>,
    prefix_t: &Tensor<Vector<F, N>>,
    dst: &mut SharedMemory<Vector<F, N>>,
    layout: &ColumnLayout,
    first: usize,
    end: usize,
    scale: F,
    #[comptime] dl: usize,
    #[comptime] groups: usize,
) {
    let mut idx = UNIT_POS_X as usize;
    while idx < dl * groups {
        let group = idx % groups;
        let kvec = idx / groups;
        let mut rows4 = Array::<Vector<F, N>>::new(4usize);
        #[unroll]
        for e in 0..4usize {
            let row = first + groups * e + group;
            rows4[e] = layout.vector::<F, N>(seq_t, prefix_t, row, kvec, end, dl);
        }
        transpose_store::<F, N>(&rows4, dst, kvec * 4usize * groups + group, groups, scale);
        idx += CUBE_DIM_X as usize;
    }
}

/// Stages columns `[tile, tile + bc)` of `[prefix ; sequence]` (keys or values: `seq_t`,
/// `prefix_t`) in shared memory, zeros from `end` on. `transposed`: in four-by-four blocks,
/// `dst[k·bc/4 + c4]` the vector of columns `tile + 4·c4 … + 3` at head-dimension index `k`;
/// otherwise as they are in memory, `dst[c·dl + x]` vector `x` of column `tile + c`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_tile<F: Float, N: Size>(
    seq_t: &Tensor<Vector<F, N>>,
    prefix_t: &Tensor<Vector<F, N>>,
    dst: &mut SharedMemory<Vector<F, N>>,
    layout: &ColumnLayout,
    tile: usize,
    end: usize,
    #[comptime] dl: usize,
    #[comptime] bc: usize,
    #[comptime] transposed: bool,
) {
    let mut idx = UNIT_POS_X as usize;
    if transposed {
        let bc4 = comptime!(bc / 4);
        while idx < dl * bc4 {
            let c4 = idx % bc4;
            let kvec = idx / bc4;
            let mut cols4 = Array::<Vector<F, N>>::new(4usize);
            #[unroll]
            for e in 0..4usize {
                let c = tile + 4usize * c4 + e;
                cols4[e] = layout.vector::<F, N>(seq_t, prefix_t, c, kvec, end, dl);
            }
            transpose_store::<F, N>(&cols4, dst, kvec * 4usize * bc4 + c4, bc4, F::new(1.0));
            idx += CUBE_DIM_X as usize;
        }
    } else {
        while idx < bc * dl {
            dst[idx] = layout.vector::<F, N>(seq_t, prefix_t, tile + idx / dl, idx % dl, end, dl);
            idx += CUBE_DIM_X as usize;
        }
    }
}

/// The `4 × 4·cv` block of products of unit `(ty, tx)`: `score[s·4·cv + 4·u + e]` is row `s` of
/// group `ty` (`rows_t`, staged by [`stage_groups_transposed`]) times column `4·(tx + 8u) + e` of
/// the tile (`cols_t`, staged transposed by [`stage_tile`]), over the `d` entries: outer
/// products, two vector loads per 16 multiply-adds.
#[cube]
#[allow(clippy::too_many_arguments)]
fn tile_scores<F: Float, N: Size>(
    score: &mut Array<F>,
    rows_t: &SharedMemory<Vector<F, N>>,
    cols_t: &SharedMemory<Vector<F, N>>,
    ty: usize,
    tx: usize,
    #[comptime] d: usize,
    #[comptime] bc4: usize,
    #[comptime] cv: usize,
    #[comptime] groups: usize,
) {
    #[unroll]
    for x in 0..16 * cv {
        score[x] = F::new(0.0);
    }
    // Four entries of `k` per iteration (unrolled), the iterations rolled: the registers of
    // full unrolling (`ptxas`: 168 and a spill at d = 64) are occupancy lost.
    for k0 in 0..comptime!(d / STEP) {
        #[unroll]
        for kf in 0..STEP {
            let kk = k0 * STEP + kf;
            let qv = rows_t[kk * groups + ty];
            #[unroll]
            for u in 0..cv {
                let kvec = cols_t[kk * bc4 + tx + TILED_LANES * u];
                #[unroll]
                for s in 0..4usize {
                    #[unroll]
                    for e in 0..4usize {
                        score[score_slot(s, u, e, cv)] += qv[s] * kvec[e];
                    }
                }
            }
        }
    }
}

/// Writes unit `(ty, tx)`'s `4 × 4·cv` block (as [`tile_scores`] lays it out) to `dst` by
/// column: `dst[c·groups + ty]` is the vector of the group's four rows at tile column `c`.
#[cube]
fn store_tile_columns<F: Float, N: Size>(
    score: &Array<F>,
    dst: &mut SharedMemory<Vector<F, N>>,
    ty: usize,
    tx: usize,
    #[comptime] cv: usize,
    #[comptime] groups: usize,
) {
    #[unroll]
    for u in 0..cv {
        #[unroll]
        for e in 0..4usize {
            let mut col = Vector::<F, N>::empty();
            #[unroll]
            for s in 0..4usize {
                col[s] = score[score_slot(s, u, e, cv)];
            }
            dst[lane_column(tx, u, e) * groups + ty] = col;
        }
    }
}

/// `acc[s·dv + w] += Σ_c weights[c][s] · vals[c][tx + 8w]` over the tile's `bc` columns, for
/// the four rows `s` of group `ty` (`weights` as [`store_tile_columns`] writes it, `vals` as
/// [`stage_tile`] stages it untransposed; `dv = dl / 8` vectors a lane): outer products, three
/// vector loads per 32 multiply-adds at `d = 64`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn accumulate_rows<F: Float, N: Size>(
    acc: &mut Array<Vector<F, N>>,
    weights: &SharedMemory<Vector<F, N>>,
    vals: &SharedMemory<Vector<F, N>>,
    ty: usize,
    tx: usize,
    #[comptime] bc: usize,
    #[comptime] dl: usize,
    #[comptime] groups: usize,
) {
    let dv = comptime!(dl / TILED_LANES);
    for c0 in 0..comptime!(bc / STEP) {
        #[unroll]
        for cf in 0..STEP {
            let c = c0 * STEP + cf;
            let wvec = weights[c * groups + ty];
            #[unroll]
            for w in 0..dv {
                let vvec = vals[c * dl + tx + TILED_LANES * w];
                #[unroll]
                for s in 0..4usize {
                    acc[s * dv + w] += Vector::new(wvec[s]) * vvec;
                }
            }
        }
    }
}

/// The tile column of a lane's score slot `(u, e)`: entry `e` of the lane's column vector
/// `tx + 8u` ([`tile_scores`]).
#[cube]
fn lane_column(tx: usize, u: usize, e: usize) -> usize {
    4usize * (tx + TILED_LANES * u) + e
}

/// Where a unit keeps the product of its row `s` and its column `(u, e)` ([`lane_column`]) in
/// its `4 × 4·cv` block of scores.
#[cube]
fn score_slot(s: usize, u: usize, e: usize, #[comptime] cv: usize) -> usize {
    s * 4 * cv + u * 4 + e
}

/// Writes the 4 × 4 block `rows4` (four vectors of four entries) transposed and scaled: vector
/// `f` of the result holds entry `f` of each of the four, and goes to `dst[at + f·stride]`.
#[cube]
fn transpose_store<F: Float, N: Size>(
    rows4: &Array<Vector<F, N>>,
    dst: &mut SharedMemory<Vector<F, N>>,
    at: usize,
    stride: usize,
    scale: F,
) {
    #[unroll]
    for f in 0..4usize {
        let mut t = Vector::<F, N>::empty();
        #[unroll]
        for e in 0..4usize {
            t[e] = rows4[e][f] * scale;
        }
        dst[at + f * stride] = t;
    }
}

/// Shared memory of the tiled forward at head dimension `head_dim` and `bc` columns per tile, in
/// bytes (f32): the queries, the key tile or the probabilities, and the value tile.
pub fn shared_bytes(head_dim: usize, bc: usize) -> usize {
    let floats = TILED_ROWS * head_dim + (head_dim * bc).max(TILED_ROWS * bc) + bc * head_dim;
    floats * 4
}

/// Shared memory of the tiled dK/dV at head dimension `head_dim`, `bq` query rows per tile and
/// `groups` column groups, in bytes (f32): the cube's key and value columns, and two query-tile
/// buffers (the queries and output gradients transposed, then as they are, and P and dS).
pub fn dkdv_shared_bytes(head_dim: usize, bq: usize, groups: usize) -> usize {
    let cols = 4 * groups;
    let floats = 2 * cols * head_dim + head_dim * bq + (head_dim * bq).max(bq * cols);
    floats * 4
}

/// Shared memory of the tiled dQ at head dimension `head_dim`, `bc` columns per tile and
/// `groups` row groups, in bytes (f32): the queries and output gradients, the key tile or dS,
/// and the value tile or the key tile.
pub fn dq_shared_bytes(head_dim: usize, bc: usize, groups: usize) -> usize {
    let rows = 4 * groups;
    let floats = 2 * rows * head_dim + (head_dim * bc).max(rows * bc) + bc * head_dim;
    floats * 4
}
