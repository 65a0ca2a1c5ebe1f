//! The register-tiled forward kernel: the cube's query block and each key/value tile in shared
//! memory, and every unit computing a 4 × 4 block of scores and a 4-row block of the output
//! from them, instead of one whole row per unit.
//!
//! Why: the row kernel of [`super::kernels`] keeps a unit's query row and output accumulator in
//! registers (`2·d` floats, 164 registers at `d = 64` on sm_90a), so the compiler has room for
//! only three or four vector loads in flight, each of its dot products is one chain of
//! dependent additions, and an H200 ran it with about two warps per scheduler, issuing an
//! instruction every 4.3 cycles per warp (docs/kernels.md). Here a unit holds 16 independent
//! score sums and `4·d/8` output sums: each step of the head-dimension walk loads two vectors
//! from shared memory for 16 multiply-adds, and each step of the column walk three for 32.
//!
//! Layout (`N = 4`, head dimension a multiple of 32; the launch falls back to the row kernel
//! otherwise):
//! * A cube owns 64 query rows of the per-key/value-head view ([`QueryBlock`]) and has 128
//!   units: 16 row groups (`ty`) of 8 lanes (`tx`). Unit `(ty, tx)` owns rows
//!   `ty, ty + 16, ty + 32, ty + 48` of the block — one vector of four rows.
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

use cubecl::{cube, prelude::*};

use super::kernels::{ColumnLayout, NEG_LARGE, QueryBlock, Visibility, lane_max, lane_sum};

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
    scale: f32,
    prefix: u32,
    prefix_shared: u32,
    lengths_given: u32,
    #[comptime] dl: usize,
    #[comptime] bc: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let batch = q.shape(0);
    let kv_heads = k.shape(1);
    let seq = k.shape(2);
    let prefix = prefix as usize;
    // 16 row groups of 8 lanes; slot `s` of unit (ty, tx) is row `16·s + ty` of the block.
    let block = QueryBlock::of_cube::<F, N>(q, kv_heads, 4usize, TILED_LANES);
    let (b, kv, rows) = (block.b, block.kv, block.rows);
    let tx = block.lanes.lane;
    let ty = block.lanes.first;
    let vis = Visibility::of_row(lengths, lengths_given, b, batch, block.l, prefix, seq);
    let layout = ColumnLayout::of_head(b, kv, kv_heads, prefix, prefix_shared != 0, seq);
    let d = comptime!(dl * 4);
    // Column vectors of a tile, those a lane owns, and output vectors a lane owns per row.
    let bc4 = comptime!(bc / 4);
    let cv = comptime!(bc / (4 * TILED_LANES));
    let dv = comptime!(dl / TILED_LANES);
    let zero = Vector::new(F::new(0.0));

    // The block's queries, scaled and transposed, in four-by-four blocks (four rows of one
    // group, four head-dimension entries): four vector loads, four vector stores.
    let mut qs = SharedMemory::<Vector<F, N>>::new(d * TILED_GROUPS);
    let scale_f = F::cast_from(scale);
    let mut idx = UNIT_POS_X as usize;
    while idx < dl * TILED_GROUPS {
        let group = idx % TILED_GROUPS;
        let kvec = idx / TILED_GROUPS;
        let mut rows4 = Array::<Vector<F, N>>::new(4usize);
        #[unroll]
        for e in 0..4usize {
            let row = block.row(e) - ty + group;
            rows4[e] = zero;
            if row < rows {
                rows4[e] = q[block.index(row) * dl + kvec];
            }
        }
        transpose_store::<F, N>(
            &rows4,
            &mut qs,
            kvec * 4usize * TILED_GROUPS + group,
            TILED_GROUPS,
            scale_f,
        );
        idx += CUBE_DIM_X as usize;
    }

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
    let mut kps = SharedMemory::<Vector<F, N>>::new(comptime!(if d * bc4 > bc * TILED_GROUPS {
        d * bc4
    } else {
        bc * TILED_GROUPS
    }));
    let mut vs = SharedMemory::<Vector<F, N>>::new(bc * dl);
    let end = block.column_end(prefix, seq);
    let one = F::new(1.0);
    let mut tile = 0;
    while tile < end {
        // Keys transposed in four-by-four blocks (four columns, four entries), values as they
        // are; zeros past `end`.
        let mut idx = UNIT_POS_X as usize;
        while idx < dl * bc4 {
            let c4 = idx % bc4;
            let kvec = idx / bc4;
            let mut cols4 = Array::<Vector<F, N>>::new(4usize);
            #[unroll]
            for e in 0..4usize {
                let c = tile + 4usize * c4 + e;
                cols4[e] = layout.vector::<F, N>(k, pk, c, kvec, end, dl);
            }
            transpose_store::<F, N>(&cols4, &mut kps, kvec * 4usize * bc4 + c4, bc4, one);
            idx += CUBE_DIM_X as usize;
        }
        let mut idx = UNIT_POS_X as usize;
        while idx < bc * dl {
            let c = tile + idx / dl;
            vs[idx] = layout.vector::<F, N>(v, pv, c, idx % dl, end, dl);
            idx += CUBE_DIM_X as usize;
        }
        sync_cube();

        // Scores of the unit's four rows and `4·cv` columns: outer products over `k`.
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
                let qv = qs[kk * TILED_GROUPS + ty];
                #[unroll]
                for u in 0..cv {
                    let kvec = kps[kk * bc4 + tx + TILED_LANES * u];
                    #[unroll]
                    for s in 0..4usize {
                        #[unroll]
                        for e in 0..4usize {
                            score[s * 4 * cv + u * 4 + e] += qv[s] * kvec[e];
                        }
                    }
                }
            }
        }

        // Online softmax: the row maximum over the row's lanes, so that they all rescale by
        // the same factor; hidden pairs add nothing (p = 0).
        #[unroll]
        for s in 0..4usize {
            let mut top = F::new(NEG_LARGE);
            #[unroll]
            for u in 0..cv {
                #[unroll]
                for e in 0..4usize {
                    let c = tile + 4usize * (tx + TILED_LANES * u) + e;
                    let sc = score[s * 4 * cv + u * 4 + e];
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
                    let c = tile + 4usize * (tx + TILED_LANES * u) + e;
                    let x = s * 4 * cv + u * 4 + e;
                    let p = select(vis.sees(c, pos[s]), F::exp(score[x] - m[s]), F::new(0.0));
                    den[s] += p;
                    score[x] = p;
                }
            }
        }
        // The probabilities, one vector of the four rows per column, in place of the keys
        // once every unit has taken its scores.
        sync_cube();
        #[unroll]
        for u in 0..cv {
            #[unroll]
            for e in 0..4usize {
                let mut pvec = Vector::<F, N>::empty();
                #[unroll]
                for s in 0..4usize {
                    pvec[s] = score[s * 4 * cv + u * 4 + e];
                }
                kps[(4usize * (tx + TILED_LANES * u) + e) * TILED_GROUPS + ty] = pvec;
            }
        }
        sync_cube();

        // Output: outer products over the tile's columns.
        for c0 in 0..comptime!(bc / STEP) {
            #[unroll]
            for cf in 0..STEP {
                let c = c0 * STEP + cf;
                let pvec = kps[c * TILED_GROUPS + ty];
                #[unroll]
                for w in 0..dv {
                    let vvec = vs[c * dl + tx + TILED_LANES * w];
                    #[unroll]
                    for s in 0..4usize {
                        acc[s * dv + w] += Vector::new(pvec[s]) * vvec;
                    }
                }
            }
        }
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
