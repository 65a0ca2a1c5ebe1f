//! Prefix attention on the host CPU, forward and backward, over f32 slices.
//!
//! The work is split by (batch row, key/value head): one task owns that head's keys, values and
//! key gradients and the query heads of its group, so tasks write disjoint parts of every output
//! and run on the Rayon threads without locks; the prefix gradients of a shared prefix are
//! summed over the batch afterwards, in a fixed order. A call as small as a decoding step's
//! (under [`super::MIN_PARALLEL_MACS`]) runs its tasks on the calling thread. Inside a task, queries go in blocks of
//! [`ROWS`] rows: a block's scores `[rows, P + S']` (`S'` the last key any of its rows sees) live
//! in the task's own buffer, so nothing of size `[B, H, L, P + S]` is allocated. The products
//! are the `gemm` crate's ([`super::gemm`]); the softmax is computed in f32 row by row, with the
//! maximum subtracted; hidden scores are skipped, never computed as `-inf`.
//!
//! The backward recomputes each block's probabilities from the saved log-sum-exp (FlashAttention's
//! scheme): `D = rowsum(dO∘O)`, `dS = P∘(dO·Vᵀ − D)`, `dQ = scale·dS·K`, `dK = scale·dSᵀ·Q`,
//! `dV = Pᵀ·dO`.
//!
//! A row that sees no key at all (every prefix slot and sequence key masked) outputs zeros and
//! passes no gradient, as the reference path does; its log-sum-exp is `f32::MIN`.

use rayon::prelude::*;

use super::{
    MIN_PARALLEL_MACS,
    exp::exp,
    gemm::{MatMut, MatRef, Parallelism, matmul},
};
use crate::op::AttentionDims;

/// Query rows per block.
pub(crate) const ROWS: usize = 64;

/// A 4-D f32 tensor held in a slice: element `(i0, i1, i2, i3)` at
/// `offset + Σ ik·strides[k]` (any layout with non-negative strides, such as a view with swapped
/// dimensions).
#[derive(Debug, Clone, Copy)]
pub(crate) struct View4<'a> {
    /// The storage.
    pub data: &'a [f32],
    /// Offset of element `(0, 0, 0, 0)`.
    pub offset: usize,
    /// Strides of the four dimensions, in elements.
    pub strides: [usize; 4],
}

impl<'a> View4<'a> {
    /// Rows `start..start + rows` of the `[dim 2, dim 3]` matrix at `(i0, i1)`, `cols` wide.
    fn rows(&self, i0: usize, i1: usize, start: usize, rows: usize, cols: usize) -> MatRef<'a> {
        let [s0, s1, s2, s3] = self.strides;
        MatRef::new(
            self.data,
            self.offset + i0 * s0 + i1 * s1 + start * s2,
            [rows, cols],
            [s2, s3],
        )
    }

    /// Element `(i0, i1, i2, i3)`.
    fn at(&self, i0: usize, i1: usize, i2: usize, i3: usize) -> f32 {
        let [s0, s1, s2, s3] = self.strides;
        self.data[self.offset + i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3]
    }

    /// Copies the `rows × cols` matrix at `(i0, i1)` into `out` (row-major).
    fn copy_to(&self, i0: usize, i1: usize, rows: usize, cols: usize, out: &mut [f32]) {
        for (i, row) in out.chunks_exact_mut(cols).take(rows).enumerate() {
            for (t, x) in row.iter_mut().enumerate() {
                *x = self.at(i0, i1, i, t);
            }
        }
    }
}

/// The arguments of one call: queries `[B, H, L, d]`, keys and values `[B, Hkv, S, d]`, prefix
/// keys and values `[Bp, Hkv, P, d]`, and the valid prefix slots and sequence keys of each row.
#[derive(Debug, Clone)]
pub(crate) struct HostArgs<'a> {
    /// The sizes.
    pub dims: AttentionDims,
    /// Queries.
    pub query: View4<'a>,
    /// Sequence keys.
    pub key: View4<'a>,
    /// Sequence values.
    pub value: View4<'a>,
    /// Prefix keys and values (when `dims.prefix > 0`).
    pub prefix: Option<(View4<'a>, View4<'a>)>,
    /// Valid prefix slots per row (all `P` when `None`).
    pub prefix_lengths: Option<Vec<usize>>,
    /// Valid sequence keys per row (all `S` when `None`).
    pub key_lengths: Option<Vec<usize>>,
    /// Multiplier of `q·k`.
    pub scale: f32,
}

/// Gradients, each row-major in its input's shape.
#[derive(Debug)]
pub(crate) struct HostGrads {
    pub query: Vec<f32>,
    pub key: Vec<f32>,
    pub value: Vec<f32>,
    /// Prefix keys' and values' gradients (when there is a prefix).
    pub prefix: Option<(Vec<f32>, Vec<f32>)>,
}

/// What one task (batch row `bi`, key/value head `kv`) reads: its keys and values with the
/// prefix in front, `[P + S, d]` each, and which of them each query row sees.
struct Task {
    bi: usize,
    kv: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
    /// Valid prefix slots of this row.
    prefix: usize,
    /// Valid sequence keys of this row.
    seq: usize,
}

impl HostArgs<'_> {
    fn task(&self, index: usize) -> Task {
        let AttentionDims {
            kv_heads,
            keys: s,
            head_dim: d,
            prefix: p,
            prefix_batch,
            ..
        } = self.dims;
        let (bi, kv) = (index / kv_heads, index % kv_heads);
        let n = p + s;
        let mut keys = vec![0.0f32; n * d];
        let mut values = vec![0.0f32; n * d];
        if let Some((pk, pv)) = &self.prefix {
            let pb = if prefix_batch == 1 { 0 } else { bi };
            pk.copy_to(pb, kv, p, d, &mut keys[..p * d]);
            pv.copy_to(pb, kv, p, d, &mut values[..p * d]);
        }
        self.key.copy_to(bi, kv, s, d, &mut keys[p * d..]);
        self.value.copy_to(bi, kv, s, d, &mut values[p * d..]);
        let limit = |lengths: &Option<Vec<usize>>, all: usize| {
            lengths.as_ref().map_or(all, |l| l[bi].min(all))
        };
        Task {
            bi,
            kv,
            keys,
            values,
            prefix: limit(&self.prefix_lengths, p),
            seq: limit(&self.key_lengths, s),
        }
    }

    /// Multiply-adds of the scores of a call, `B·H·L·(P + S)·d`: what decides whether its tasks
    /// go to the Rayon threads.
    fn work(&self) -> usize {
        let d = self.dims;
        d.batch * d.heads * d.queries * (d.prefix + d.keys) * d.head_dim
    }

    /// Sequence keys query row `i` sees (causal, then the row's length).
    fn visible_keys(&self, task: &Task, i: usize) -> usize {
        (i + self.dims.keys - self.dims.queries + 1).min(task.seq)
    }

    /// Columns `[0, P + S')` of a block starting at query `r0` with `rows` rows: every column
    /// that one of its rows sees lies before this bound.
    fn block_columns(&self, task: &Task, r0: usize, rows: usize) -> usize {
        self.dims.prefix + self.visible_keys(task, r0 + rows - 1)
    }
}

/// Attention output `[B, H, L, d]` and the log-sum-exp `[B, H, L]` of the scaled scores.
pub(crate) fn forward(a: &HostArgs<'_>) -> (Vec<f32>, Vec<f32>) {
    let AttentionDims {
        batch,
        heads,
        kv_heads,
        queries: l,
        head_dim: d,
        prefix: p,
        keys: s,
        ..
    } = a.dims;
    let g = heads / kv_heads;
    let mut out = vec![0.0f32; batch * heads * l * d];
    let mut lse = vec![0.0f32; batch * heads * l];
    if out.is_empty() || batch * kv_heads == 0 {
        return (out, lse);
    }
    let body = |(index, (out, lse)): (usize, (&mut [f32], &mut [f32]))| {
        let task = a.task(index);
        let mut scores = vec![0.0f32; ROWS.min(l) * (p + s)];
        for j in 0..g {
            let h = task.kv * g + j;
            for r0 in (0..l).step_by(ROWS) {
                let rows = ROWS.min(l - r0);
                let n = a.block_columns(&task, r0, rows);
                if n == 0 {
                    // No row of the block sees a key: zero output (as allocated).
                    lse[j * l + r0..j * l + r0 + rows].fill(f32::MIN);
                    continue;
                }
                let sc = &mut scores[..rows * n];
                matmul(
                    MatMut::row_major(sc, rows, n),
                    a.query.rows(task.bi, h, r0, rows, d),
                    MatRef::row_major(&task.keys, n, d).t(),
                    false,
                    a.scale,
                    Parallelism::None,
                );
                for (i, row) in sc.chunks_exact_mut(n).enumerate() {
                    lse[j * l + r0 + i] =
                        softmax(row, task.prefix, p, a.visible_keys(&task, r0 + i));
                }
                let at = (j * l + r0) * d;
                matmul(
                    MatMut::row_major(&mut out[at..at + rows * d], rows, d),
                    MatRef::row_major(sc, rows, n),
                    MatRef::row_major(&task.values, n, d),
                    false,
                    1.0,
                    Parallelism::None,
                );
            }
        }
    };
    if a.work() >= MIN_PARALLEL_MACS {
        out.par_chunks_mut(g * l * d)
            .zip(lse.par_chunks_mut(g * l))
            .enumerate()
            .for_each(body);
    } else {
        out.chunks_mut(g * l * d)
            .zip(lse.chunks_mut(g * l))
            .enumerate()
            .for_each(body);
    }
    (out, lse)
}

/// Turns a row of scaled scores into probabilities in place: the first `prefix` columns and the
/// `seq` columns from `p` on are visible, every other column becomes 0. Returns the log-sum-exp
/// of the visible scores (`f32::MIN` when none is visible).
fn softmax(row: &mut [f32], prefix: usize, p: usize, seq: usize) -> f32 {
    row[prefix..p].fill(0.0);
    row[p + seq..].fill(0.0);
    let (pre, rest) = row.split_at_mut(p);
    let (pre, seqs) = (&mut pre[..prefix], &mut rest[..seq]);
    let max = pre
        .iter()
        .chain(seqs.iter())
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    if max == f32::NEG_INFINITY {
        return f32::MIN;
    }
    let mut sum = 0.0f32;
    for x in pre.iter_mut().chain(seqs.iter_mut()) {
        *x = exp(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in pre.iter_mut().chain(seqs.iter_mut()) {
        *x *= inv;
    }
    max + sum.ln()
}

/// Gradients of the inputs given the output `out` `[B, H, L, d]`, its log-sum-exp `lse`
/// `[B, H, L]` (row-major) and the output gradient `d_out`.
pub(crate) fn backward(
    a: &HostArgs<'_>,
    out: View4<'_>,
    lse: &[f32],
    d_out: View4<'_>,
) -> HostGrads {
    let AttentionDims {
        batch,
        heads,
        kv_heads,
        queries: l,
        keys: s,
        head_dim: d,
        prefix: p,
        prefix_batch,
    } = a.dims;
    let g = heads / kv_heads;
    let n_all = p + s;
    let mut dq = vec![0.0f32; batch * heads * l * d];
    let mut dk = vec![0.0f32; batch * kv_heads * s * d];
    let mut dv = vec![0.0f32; batch * kv_heads * s * d];
    if batch * kv_heads * l * d == 0 {
        let prefix = (p > 0).then(|| {
            let n = prefix_batch * kv_heads * p * d;
            (vec![0.0; n], vec![0.0; n])
        });
        return HostGrads {
            query: dq,
            key: dk,
            value: dv,
            prefix,
        };
    }
    type Slices<'a> = (usize, (&'a mut [f32], (&'a mut [f32], &'a mut [f32])));
    let body = |(index, (dq, (dk, dv))): Slices<'_>| {
        let task = a.task(index);
        let mut dkf = vec![0.0f32; n_all * d];
        let mut dvf = vec![0.0f32; n_all * d];
        let mut probs = vec![0.0f32; ROWS.min(l) * n_all];
        let mut dp = vec![0.0f32; ROWS.min(l) * n_all];
        for j in 0..g {
            let h = task.kv * g + j;
            for r0 in (0..l).step_by(ROWS) {
                let rows = ROWS.min(l - r0);
                let n = a.block_columns(&task, r0, rows);
                if n == 0 {
                    continue;
                }
                let (pr, dp) = (&mut probs[..rows * n], &mut dp[..rows * n]);
                let q = a.query.rows(task.bi, h, r0, rows, d);
                let d_o = d_out.rows(task.bi, h, r0, rows, d);
                matmul(
                    MatMut::row_major(pr, rows, n),
                    q,
                    MatRef::row_major(&task.keys, n, d).t(),
                    false,
                    a.scale,
                    Parallelism::None,
                );
                matmul(
                    MatMut::row_major(dp, rows, n),
                    d_o,
                    MatRef::row_major(&task.values, n, d).t(),
                    false,
                    1.0,
                    Parallelism::None,
                );
                for (i, (prow, dprow)) in pr
                    .chunks_exact_mut(n)
                    .zip(dp.chunks_exact_mut(n))
                    .enumerate()
                {
                    let r = r0 + i;
                    let row_lse = lse[((task.bi * heads) + h) * l + r];
                    let seq = a.visible_keys(&task, r);
                    let delta: f32 = (0..d)
                        .map(|t| d_out.at(task.bi, h, r, t) * out.at(task.bi, h, r, t))
                        .sum();
                    for (c, (x, y)) in prow.iter_mut().zip(dprow.iter_mut()).enumerate() {
                        let seen = if c < p { c < task.prefix } else { c - p < seq };
                        if seen {
                            *x = exp(*x - row_lse);
                            *y = *x * (*y - delta);
                        } else {
                            *x = 0.0;
                            *y = 0.0;
                        }
                    }
                }
                // dp now holds dS / scale.
                let at = (j * l + r0) * d;
                matmul(
                    MatMut::row_major(&mut dq[at..at + rows * d], rows, d),
                    MatRef::row_major(dp, rows, n),
                    MatRef::row_major(&task.keys, n, d),
                    false,
                    a.scale,
                    Parallelism::None,
                );
                matmul(
                    MatMut::row_major(&mut dkf[..n * d], n, d),
                    MatRef::row_major(dp, rows, n).t(),
                    q,
                    true,
                    a.scale,
                    Parallelism::None,
                );
                matmul(
                    MatMut::row_major(&mut dvf[..n * d], n, d),
                    MatRef::row_major(pr, rows, n).t(),
                    d_o,
                    true,
                    1.0,
                    Parallelism::None,
                );
            }
        }
        dk.copy_from_slice(&dkf[p * d..]);
        dv.copy_from_slice(&dvf[p * d..]);
        dkf.truncate(p * d);
        dvf.truncate(p * d);
        (dkf, dvf)
    };
    let prefix_parts: Vec<(Vec<f32>, Vec<f32>)> = if a.work() >= MIN_PARALLEL_MACS {
        dq.par_chunks_mut(g * l * d)
            .zip(dk.par_chunks_mut(s * d).zip(dv.par_chunks_mut(s * d)))
            .enumerate()
            .map(body)
            .collect()
    } else {
        dq.chunks_mut(g * l * d)
            .zip(dk.chunks_mut(s * d).zip(dv.chunks_mut(s * d)))
            .enumerate()
            .map(body)
            .collect()
    };
    let prefix = (p > 0).then(|| {
        let size = p * d;
        let mut dpk = vec![0.0f32; prefix_batch * kv_heads * size];
        let mut dpv = vec![0.0f32; prefix_batch * kv_heads * size];
        // Task `bi·Hkv + kv` holds row `bi`'s part for head `kv`: a per-row prefix takes it
        // as is, a shared one sums it over the rows in order.
        for (index, (pk, pv)) in prefix_parts.iter().enumerate() {
            let (bi, kv) = (index / kv_heads, index % kv_heads);
            let at = (if prefix_batch == 1 {
                kv
            } else {
                bi * kv_heads + kv
            }) * size;
            for (o, x) in dpk[at..at + size].iter_mut().zip(pk) {
                *o += x;
            }
            for (o, x) in dpv[at..at + size].iter_mut().zip(pv) {
                *o += x;
            }
        }
        (dpk, dpv)
    });
    HostGrads {
        query: dq,
        key: dk,
        value: dv,
        prefix,
    }
}
