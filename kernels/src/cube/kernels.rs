//! The CubeCL kernels of prefix attention.
//!
//! Layout and work split:
//! * Queries are viewed per key/value head: the `g = H / Hkv` query heads that share a key/value
//!   head form `g·L` query rows (row `r` is head `kv·g + r / L`, position `r % L`), so every
//!   key/value tile loaded into shared memory serves a whole group (GQA without repeating keys).
//! * Keys are the concatenation `[prefix ; sequence]` — never materialised: column `c < P` reads
//!   the shared prefix tensor (batch stride 0 when it is shared), column `c ≥ P` reads the
//!   sequence keys. Row `i` sees prefix slot `p < prefix_len[b]` and sequence key
//!   `j ≤ i + (S − L)`, `j < key_len[b]`.
//! * Forward and dQ: one unit per query row, `CUBE_DIM` rows per cube; key/value tiles of `BK`
//!   columns are staged in shared memory; sequence tiles above the cube's causal diagonal are
//!   skipped. The forward keeps an online softmax per row (running max and sum, rescaled once per
//!   tile) and writes the output and the log-sum-exp of the scaled scores.
//! * dK/dV: one unit per key column, query tiles staged in shared memory, so each column's
//!   gradient is accumulated by one unit: no atomics, deterministic. Prefix columns write
//!   per-batch partial gradients, summed over the batch afterwards when the prefix is shared.
//!
//! A score of a hidden pair is never used: hidden pairs are skipped, not masked with `-inf`
//! (WGSL has no `-inf` literal). A row with no visible column outputs zeros and its log-sum-exp
//! is `NEG_LARGE`.

use cubecl::{cube, prelude::*};

/// Stand-in for `-inf` (finite, so it compiles to WGSL).
pub const NEG_LARGE: f32 = -1.0e30;

/// Where a column's key or value row starts, and whether row `i` of batch `b` sees it.
#[cube]
#[allow(clippy::too_many_arguments)]
fn column_offset(
    c: usize,
    b: usize,
    kv: usize,
    kv_heads: usize,
    prefix: usize,
    prefix_shared: bool,
    seq: usize,
    #[comptime] d: usize,
) -> usize {
    let pb = select(prefix_shared, 0, b);
    select(
        c < prefix,
        ((pb * kv_heads + kv) * prefix + c) * d,
        ((b * kv_heads + kv) * seq + (c - prefix)) * d,
    )
}

#[cube]
fn visible(
    c: usize,
    i: usize,
    prefix: usize,
    prefix_len: usize,
    key_len: usize,
    causal_offset: usize,
) -> bool {
    // Sequence index of the column (0 for prefix columns, whose branch is not selected).
    let j = c - select(c < prefix, c, prefix);
    select(
        c < prefix,
        c < prefix_len,
        j <= i + causal_offset && j < key_len,
    )
}

/// Highest sequence key any row of this cube can see, plus one (the end of the useful columns).
#[cube]
fn cube_column_end(row_start: usize, rows: usize, l: usize, prefix: usize, seq: usize) -> usize {
    let cube_end = row_start + CUBE_DIM_X as usize;
    let last = select(cube_end < rows, cube_end, rows) - 1;
    // Rows of two heads in one cube: the later head restarts at position 0, the earlier one
    // reaches position L - 1.
    let mut max_i = last % l;
    if row_start / l != last / l {
        max_i = l - 1;
    }
    let reach = max_i + (seq - l) + 1;
    prefix + select(reach < seq, reach, seq)
}

/// Forward pass. Outputs `out` `[B, H, L, d]` and `lse` `[B, H, L]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn forward_kernel<F: Float, I: Int>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    pk: &Tensor<F>,
    pv: &Tensor<F>,
    lengths: &Tensor<I>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<F>,
    scale: f32,
    prefix: u32,
    prefix_shared: u32,
    #[comptime] d: usize,
    #[comptime] bk: usize,
    #[comptime] unroll: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let batch = q.shape(0);
    let heads = q.shape(1);
    let l = q.shape(2);
    let kv_heads = k.shape(1);
    let seq = k.shape(2);
    let g = heads / kv_heads;
    let rows = g * l;
    let prefix = prefix as usize;
    let shared = prefix_shared != 0;
    let bkv = CUBE_POS_Y as usize;
    let b = bkv / kv_heads;
    let kv = bkv % kv_heads;
    let row_start = CUBE_POS_X as usize * CUBE_DIM_X as usize;
    let row = row_start + UNIT_POS_X as usize;
    let active = row < rows;
    let head = kv * g + row / l;
    let i = row % l;
    let given = u32::cast_from(lengths[b]) as usize;
    let prefix_len = select(given < prefix, given, prefix);
    let key_len = u32::cast_from(lengths[batch + b]) as usize;
    let causal_offset = seq - l;
    let q_off = ((b * heads + head) * l + i) * d;

    let mut qr = Array::<F>::new(d);
    let mut acc = Array::<F>::new(d);
    let scale_f = F::cast_from(scale);
    #[unroll(unroll)]
    for t in 0..d {
        acc[t] = F::new(0.0);
        qr[t] = F::new(0.0);
    }
    if active {
        #[unroll(unroll)]
        for t in 0..d {
            qr[t] = q[q_off + t] * scale_f;
        }
    }
    let mut m = F::new(NEG_LARGE);
    let mut den = F::new(0.0);

    let mut ks = SharedMemory::<F>::new(bk * d);
    let mut vs = SharedMemory::<F>::new(bk * d);
    let end = cube_column_end(row_start, rows, l, prefix, seq);
    let mut tile = 0;
    while tile < end {
        // Stage columns [tile, tile + bk) of K and V.
        let mut idx = UNIT_POS_X as usize;
        while idx < bk * d {
            let c = tile + idx / d;
            let mut kval = F::new(0.0);
            let mut vval = F::new(0.0);
            if c < end {
                let off = column_offset(c, b, kv, kv_heads, prefix, shared, seq, d) + idx % d;
                if c < prefix {
                    kval = pk[off];
                    vval = pv[off];
                } else {
                    kval = k[off];
                    vval = v[off];
                }
            }
            ks[idx] = kval;
            vs[idx] = vval;
            idx += CUBE_DIM_X as usize;
        }
        sync_cube();
        if active {
            for j in 0..bk {
                let c = tile + j;
                if c < end && visible(c, i, prefix, prefix_len, key_len, causal_offset) {
                    let mut score = F::new(0.0);
                    #[unroll(unroll)]
                    for t in 0..d {
                        score += qr[t] * ks[j * d + t];
                    }
                    // Online softmax: rescale only when the running maximum grows.
                    if score > m {
                        let correction = F::exp(m - score);
                        den *= correction;
                        #[unroll(unroll)]
                        for t in 0..d {
                            acc[t] *= correction;
                        }
                        m = score;
                    }
                    let p = F::exp(score - m);
                    den += p;
                    #[unroll(unroll)]
                    for t in 0..d {
                        acc[t] += p * vs[j * d + t];
                    }
                }
            }
        }
        sync_cube();
        tile += bk;
    }
    if active {
        let out_off = ((b * heads + head) * l + i) * d;
        let mut inv = F::new(0.0);
        let mut row_lse = F::new(NEG_LARGE);
        if den > F::new(0.0) {
            inv = F::new(1.0) / den;
            row_lse = m + F::ln(den);
        }
        #[unroll(unroll)]
        for t in 0..d {
            out[out_off + t] = acc[t] * inv;
        }
        lse[(b * heads + head) * l + i] = row_lse;
    }
}

/// `delta[r] = Σ_t dO[r, t] · O[r, t]`, one unit per row `[B·H·L]`.
#[cube(launch)]
pub fn delta_kernel<F: Float>(
    out: &Tensor<F>,
    grad_out: &Tensor<F>,
    delta: &mut Tensor<F>,
    #[comptime] d: usize,
    #[comptime] unroll: bool,
    #[define(F)] _dtype: StorageType,
) {
    let row = ABSOLUTE_POS;
    if row >= delta.len() {
        terminate!();
    }
    let mut sum = F::new(0.0);
    #[unroll(unroll)]
    for t in 0..d {
        sum += out[row * d + t] * grad_out[row * d + t];
    }
    delta[row] = sum;
}

/// Query gradient `dq` `[B, H, L, d]`, recomputing probabilities from the log-sum-exp.
/// `stats` is `[2, B, H, L]`: the log-sum-exp then `delta`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn dq_kernel<F: Float, I: Int>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    pk: &Tensor<F>,
    pv: &Tensor<F>,
    lengths: &Tensor<I>,
    grad_out: &Tensor<F>,
    stats: &Tensor<F>,
    dq: &mut Tensor<F>,
    scale: f32,
    prefix: u32,
    prefix_shared: u32,
    #[comptime] d: usize,
    #[comptime] bk: usize,
    #[comptime] unroll: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let batch = q.shape(0);
    let heads = q.shape(1);
    let l = q.shape(2);
    let kv_heads = k.shape(1);
    let seq = k.shape(2);
    let g = heads / kv_heads;
    let rows = g * l;
    let prefix = prefix as usize;
    let shared = prefix_shared != 0;
    let bkv = CUBE_POS_Y as usize;
    let b = bkv / kv_heads;
    let kv = bkv % kv_heads;
    let row_start = CUBE_POS_X as usize * CUBE_DIM_X as usize;
    let row = row_start + UNIT_POS_X as usize;
    let active = row < rows;
    let head = kv * g + row / l;
    let i = row % l;
    let given = u32::cast_from(lengths[b]) as usize;
    let prefix_len = select(given < prefix, given, prefix);
    let key_len = u32::cast_from(lengths[batch + b]) as usize;
    let causal_offset = seq - l;
    let r = (b * heads + head) * l + i;
    let n_rows = batch * heads * l;
    let scale_f = F::cast_from(scale);

    let mut qr = Array::<F>::new(d);
    let mut dor = Array::<F>::new(d);
    let mut acc = Array::<F>::new(d);
    let mut row_lse = F::new(0.0);
    let mut row_delta = F::new(0.0);
    #[unroll(unroll)]
    for t in 0..d {
        qr[t] = F::new(0.0);
        dor[t] = F::new(0.0);
        acc[t] = F::new(0.0);
    }
    if active {
        #[unroll(unroll)]
        for t in 0..d {
            qr[t] = q[r * d + t] * scale_f;
            dor[t] = grad_out[r * d + t];
        }
        row_lse = stats[r];
        row_delta = stats[n_rows + r];
    }
    let mut ks = SharedMemory::<F>::new(bk * d);
    let mut vs = SharedMemory::<F>::new(bk * d);
    let end = cube_column_end(row_start, rows, l, prefix, seq);
    let mut tile = 0;
    while tile < end {
        let mut idx = UNIT_POS_X as usize;
        while idx < bk * d {
            let c = tile + idx / d;
            let mut kval = F::new(0.0);
            let mut vval = F::new(0.0);
            if c < end {
                let off = column_offset(c, b, kv, kv_heads, prefix, shared, seq, d) + idx % d;
                if c < prefix {
                    kval = pk[off];
                    vval = pv[off];
                } else {
                    kval = k[off];
                    vval = v[off];
                }
            }
            ks[idx] = kval;
            vs[idx] = vval;
            idx += CUBE_DIM_X as usize;
        }
        sync_cube();
        if active {
            for j in 0..bk {
                let c = tile + j;
                if c < end && visible(c, i, prefix, prefix_len, key_len, causal_offset) {
                    let mut s = F::new(0.0);
                    let mut dp = F::new(0.0);
                    #[unroll(unroll)]
                    for t in 0..d {
                        s += qr[t] * ks[j * d + t];
                        dp += dor[t] * vs[j * d + t];
                    }
                    let ds = F::exp(s - row_lse) * (dp - row_delta);
                    #[unroll(unroll)]
                    for t in 0..d {
                        acc[t] += ds * ks[j * d + t];
                    }
                }
            }
        }
        sync_cube();
        tile += bk;
    }
    if active {
        #[unroll(unroll)]
        for t in 0..d {
            dq[r * d + t] = acc[t] * scale_f;
        }
    }
}

/// Key and value gradients, one unit per column of `[prefix ; sequence]`: sequence columns
/// write `dk`/`dv` `[B, Hkv, S, d]`; prefix columns write per-batch partials `dpk`/`dpv`
/// `[B, Hkv, P, d]`. `stats` is `[2, B, H, L]` (log-sum-exp, then delta).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn dkdv_kernel<F: Float, I: Int>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    pk: &Tensor<F>,
    pv: &Tensor<F>,
    lengths: &Tensor<I>,
    grad_out: &Tensor<F>,
    stats: &Tensor<F>,
    dk: &mut Tensor<F>,
    dv: &mut Tensor<F>,
    dpk: &mut Tensor<F>,
    dpv: &mut Tensor<F>,
    scale: f32,
    prefix: u32,
    prefix_shared: u32,
    #[comptime] d: usize,
    #[comptime] bq: usize,
    #[comptime] unroll: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let batch = q.shape(0);
    let heads = q.shape(1);
    let l = q.shape(2);
    let kv_heads = k.shape(1);
    let seq = k.shape(2);
    let g = heads / kv_heads;
    let prefix = prefix as usize;
    let shared = prefix_shared != 0;
    let bkv = CUBE_POS_Y as usize;
    let b = bkv / kv_heads;
    let kv = bkv % kv_heads;
    let c = CUBE_POS_X as usize * CUBE_DIM_X as usize + UNIT_POS_X as usize;
    let columns = prefix + seq;
    let active = c < columns;
    let given = u32::cast_from(lengths[b]) as usize;
    let prefix_len = select(given < prefix, given, prefix);
    let key_len = u32::cast_from(lengths[batch + b]) as usize;
    let causal_offset = seq - l;
    let n_rows = batch * heads * l;
    let scale_f = F::cast_from(scale);

    let mut kr = Array::<F>::new(d);
    let mut vr = Array::<F>::new(d);
    let mut dk_acc = Array::<F>::new(d);
    let mut dv_acc = Array::<F>::new(d);
    #[unroll(unroll)]
    for t in 0..d {
        kr[t] = F::new(0.0);
        vr[t] = F::new(0.0);
        dk_acc[t] = F::new(0.0);
        dv_acc[t] = F::new(0.0);
    }
    if active {
        let off = column_offset(c, b, kv, kv_heads, prefix, shared, seq, d);
        #[unroll(unroll)]
        for t in 0..d {
            if c < prefix {
                kr[t] = pk[off + t] * scale_f;
                vr[t] = pv[off + t];
            } else {
                kr[t] = k[off + t] * scale_f;
                vr[t] = v[off + t];
            }
        }
    }
    // The first query position that can see a sequence column of this cube: rows whose
    // position is below it see none of the cube's sequence columns (prefix columns are seen
    // by every row).
    let first_col = CUBE_POS_X as usize * CUBE_DIM_X as usize;
    let mut first_i = 0;
    if first_col >= prefix && first_col - prefix > causal_offset {
        first_i = first_col - prefix - causal_offset;
    }

    let mut qs = SharedMemory::<F>::new(bq * d);
    let mut dos = SharedMemory::<F>::new(bq * d);
    let mut lses = SharedMemory::<F>::new(bq);
    let mut deltas = SharedMemory::<F>::new(bq);
    for h in 0..g {
        let head = kv * g + h;
        let base = (b * heads + head) * l;
        let mut tile = first_i - first_i % bq;
        while tile < l {
            let mut idx = UNIT_POS_X as usize;
            while idx < bq * d {
                let i = tile + idx / d;
                let mut qv = F::new(0.0);
                let mut dov = F::new(0.0);
                if i < l {
                    qv = q[(base + i) * d + idx % d];
                    dov = grad_out[(base + i) * d + idx % d];
                }
                qs[idx] = qv;
                dos[idx] = dov;
                idx += CUBE_DIM_X as usize;
            }
            let mut idx = UNIT_POS_X as usize;
            while idx < bq {
                let i = tile + idx;
                let mut lv = F::new(0.0);
                let mut dv_ = F::new(0.0);
                if i < l {
                    lv = stats[base + i];
                    dv_ = stats[n_rows + base + i];
                }
                lses[idx] = lv;
                deltas[idx] = dv_;
                idx += CUBE_DIM_X as usize;
            }
            sync_cube();
            if active {
                for j in 0..bq {
                    let i = tile + j;
                    if i < l && visible(c, i, prefix, prefix_len, key_len, causal_offset) {
                        let mut s = F::new(0.0);
                        let mut dp = F::new(0.0);
                        #[unroll(unroll)]
                        for t in 0..d {
                            s += qs[j * d + t] * kr[t];
                            dp += dos[j * d + t] * vr[t];
                        }
                        let p = F::exp(s - lses[j]);
                        let ds = p * (dp - deltas[j]);
                        #[unroll(unroll)]
                        for t in 0..d {
                            dv_acc[t] += p * dos[j * d + t];
                            dk_acc[t] += ds * qs[j * d + t];
                        }
                    }
                }
            }
            sync_cube();
            tile += bq;
        }
    }
    if active {
        if c < prefix {
            let poff = ((b * kv_heads + kv) * prefix + c) * d;
            #[unroll(unroll)]
            for t in 0..d {
                dpk[poff + t] = dk_acc[t] * scale_f;
                dpv[poff + t] = dv_acc[t];
            }
        } else {
            let soff = ((b * kv_heads + kv) * seq + (c - prefix)) * d;
            #[unroll(unroll)]
            for t in 0..d {
                dk[soff + t] = dk_acc[t] * scale_f;
                dv[soff + t] = dv_acc[t];
            }
        }
    }
}
