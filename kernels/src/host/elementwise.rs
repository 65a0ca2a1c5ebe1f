//! RMSNorm, SwiGLU and the rotary embedding on f32 slices, forward and backward, split over the
//! Rayon threads in blocks of whole rows (RMSNorm, rotary) or of [`CHUNK`] elements (SwiGLU), or
//! on the calling thread when the tensor is small ([`super::parallel`]). Each output element is
//! computed in one pass from its inputs; row sums use eight partial sums (vectorisable, and
//! no less accurate than one running sum).

use rayon::prelude::*;

use super::{exp::exp, parallel};

/// Elements per Rayon task.
const CHUNK: usize = 1 << 14;

/// `Σ a[i]·b[i]` with eight partial sums.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Rows of `n` per task.
fn rows_per_task(n: usize) -> usize {
    (CHUNK / n.max(1)).max(1) * n.max(1)
}

/// `x / sqrt(mean(x²) + eps) · w` for each row of `x` (rows of `w.len()`).
pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let n = w.len();
    let mut out = vec![0.0f32; x.len()];
    if n == 0 {
        return out;
    }
    let block = rows_per_task(n);
    let body = |(out, x): (&mut [f32], &[f32])| {
        for (o, x) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
            let rms = (dot(x, x) / n as f32 + eps).sqrt();
            for ((o, x), w) in o.iter_mut().zip(x).zip(w) {
                *o = x / rms * w;
            }
        }
    };
    if parallel(x.len()) {
        out.par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .for_each(body);
    } else {
        body((&mut out, x));
    }
    out
}

/// `dx = r·g − x·r³·mean(g∘x)` with `g = dy∘w`, `r = 1 / sqrt(mean(x²) + eps)`, per row.
pub(crate) fn rms_norm_backward(x: &[f32], w: &[f32], eps: f32, dy: &[f32]) -> Vec<f32> {
    let n = w.len();
    let mut dx = vec![0.0f32; x.len()];
    if n == 0 {
        return dx;
    }
    let block = rows_per_task(n);
    let body = |(dx, (x, dy)): (&mut [f32], (&[f32], &[f32]))| {
        let mut g = vec![0.0f32; n];
        for ((dx, x), dy) in dx
            .chunks_exact_mut(n)
            .zip(x.chunks_exact(n))
            .zip(dy.chunks_exact(n))
        {
            for ((g, dy), w) in g.iter_mut().zip(dy).zip(w) {
                *g = dy * w;
            }
            let r = 1.0 / (dot(x, x) / n as f32 + eps).sqrt();
            let c = r * r * r * dot(&g, x) / n as f32;
            for ((dx, g), x) in dx.iter_mut().zip(&g).zip(x) {
                *dx = r * g - x * c;
            }
        }
    };
    if parallel(x.len()) {
        dx.par_chunks_mut(block)
            .zip(x.par_chunks(block).zip(dy.par_chunks(block)))
            .for_each(body);
    } else {
        body((&mut dx, (x, dy)));
    }
    dx
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `gate·σ(gate)·up`, element-wise.
pub(crate) fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; gate.len()];
    let body = |(out, (gate, up)): (&mut [f32], (&[f32], &[f32]))| {
        for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
            *o = g * sigmoid(*g) * u;
        }
    };
    if parallel(gate.len()) {
        out.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
            .for_each(body);
    } else {
        body((&mut out, (gate, up)));
    }
    out
}

/// `(d_gate, d_up)`: `d_gate = dy·up·σ·(1 + gate·(1 − σ))`, `d_up = dy·gate·σ`, with
/// `σ = σ(gate)`.
pub(crate) fn swiglu_backward(gate: &[f32], up: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut d_gate = vec![0.0f32; gate.len()];
    let mut d_up = vec![0.0f32; gate.len()];
    type Slices<'a> = (
        (&'a mut [f32], &'a mut [f32]),
        ((&'a [f32], &'a [f32]), &'a [f32]),
    );
    let body = |((d_gate, d_up), ((gate, up), dy)): Slices<'_>| {
        for ((((dg, du), g), u), dy) in d_gate.iter_mut().zip(d_up).zip(gate).zip(up).zip(dy) {
            let s = sigmoid(*g);
            *du = dy * g * s;
            *dg = dy * u * s * (1.0 + g * (1.0 - s));
        }
    };
    if parallel(gate.len()) {
        d_gate
            .par_chunks_mut(CHUNK)
            .zip(d_up.par_chunks_mut(CHUNK))
            .zip(
                gate.par_chunks(CHUNK)
                    .zip(up.par_chunks(CHUNK))
                    .zip(dy.par_chunks(CHUNK)),
            )
            .for_each(body);
    } else {
        body(((&mut d_gate, &mut d_up), ((gate, up), dy)));
    }
    (d_gate, d_up)
}

/// The rotary embedding of each head of `d` in rows of `n` (`x·cos + [−x2 | x1]·sin`), or with
/// `backward` its input gradient for an output gradient `x` (`x·cos + [v2 | −v1]`, with
/// `[v1 | v2] = x·sin`). `cos` and `sin` hold one row of `n` shared by every row, or one per row.
pub(crate) fn rotary(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    n: usize,
    d: usize,
    backward: bool,
) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    if n == 0 || d == 0 {
        return out;
    }
    let half = d / 2;
    let shared = cos.len() == n;
    let block = rows_per_task(n);
    let body = |(task, (out, x)): (usize, (&mut [f32], &[f32]))| {
        let first_row = task * block / n;
        for (r, (o, x)) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)).enumerate() {
            let t = if shared { 0 } else { (first_row + r) * n };
            let (c, s) = (&cos[t..t + n], &sin[t..t + n]);
            for (((o, x), c), s) in o
                .chunks_exact_mut(d)
                .zip(x.chunks_exact(d))
                .zip(c.chunks_exact(d))
                .zip(s.chunks_exact(d))
            {
                let (o1, o2) = o.split_at_mut(half);
                let (x1, x2) = x.split_at(half);
                let (c1, c2) = c.split_at(half);
                let (s1, s2) = s.split_at(half);
                for j in 0..half {
                    if backward {
                        o1[j] = x1[j] * c1[j] + x2[j] * s2[j];
                        o2[j] = x2[j] * c2[j] - x1[j] * s1[j];
                    } else {
                        o1[j] = x1[j] * c1[j] - x2[j] * s1[j];
                        o2[j] = x2[j] * c2[j] + x1[j] * s2[j];
                    }
                }
            }
        }
    };
    if parallel(x.len()) {
        out.par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .enumerate()
            .for_each(body);
    } else {
        body((0, (&mut out, x)));
    }
    out
}
