//! The row pass of the LM head's loss over one chunk of logits: each row's log-probability of
//! its target and, for training, the logits' gradient `onehot(target) − softmax` written over
//! the logits. Rows go to the Rayon threads; within a row, lane-wise maxima and sums (16
//! partial values) and the vectorisable [`exp`] keep it at memory speed.

use rayon::prelude::*;

use super::exp::exp;

/// Lanes of the partial maxima and sums.
const LANES: usize = 16;

/// The largest value of `row` (NaN if it holds one; −∞ if empty).
fn row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut nan = false;
    let chunks = row.chunks_exact(LANES);
    for &v in chunks.remainder() {
        nan |= v.is_nan();
        acc[0] = acc[0].max(v);
    }
    for c in chunks {
        for k in 0..LANES {
            nan |= c[k].is_nan();
            acc[k] = acc[k].max(c[k]);
        }
    }
    if nan {
        f32::NAN
    } else {
        acc.into_iter().fold(f32::NEG_INFINITY, f32::max)
    }
}

/// Replaces each value `v` of `row` by `exp(v − max)` and returns their sum.
fn exp_in_place(row: &mut [f32], max: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for k in 0..LANES {
            c[k] = exp(c[k] - max);
            acc[k] += c[k];
        }
    }
    let mut tail = 0.0;
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        tail += *v;
    }
    acc.iter().sum::<f32>() + tail
}

/// The sum of `exp(v − max)` over `row`.
fn exp_sum(row: &[f32], max: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| exp(v - max)).sum();
    for c in chunks {
        for k in 0..LANES {
            acc[k] += exp(c[k] - max);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// For each row `i` of `logits` (rows of `width`): `log softmax(row)[targets[i]]`; when `grad`,
/// the row is overwritten with `onehot(targets[i]) − softmax(row)`.
///
/// # Panics
///
/// If `logits` is not `targets.len()` rows of `width`, or a target is not below `width`.
pub(crate) fn target_log_softmax(
    logits: &mut [f32],
    width: usize,
    targets: &[usize],
    grad: bool,
) -> Vec<f32> {
    assert_eq!(
        logits.len(),
        targets.len() * width,
        "{} targets for logits of {} values in rows of {width}",
        targets.len(),
        logits.len()
    );
    assert!(
        targets.iter().all(|&t| t < width),
        "a target is not below the width {width}"
    );
    let mut out = vec![0.0f32; targets.len()];
    if width == 0 {
        return out;
    }
    out.par_iter_mut()
        .zip(logits.par_chunks_mut(width))
        .zip(targets.par_iter())
        .for_each(|((lp, row), &t)| {
            let max = row_max(row);
            let target = row[t];
            if grad {
                let sum = exp_in_place(row, max);
                let scale = -1.0 / sum;
                for v in row.iter_mut() {
                    *v *= scale;
                }
                row[t] += 1.0;
                *lp = target - max - sum.ln();
            } else {
                *lp = target - max - exp_sum(row, max).ln();
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f64 log-softmax of a row at `t`, and the row's gradient.
    fn reference(row: &[f32], t: usize) -> (f64, Vec<f64>) {
        let max = row.iter().map(|&v| f64::from(v)).fold(f64::MIN, f64::max);
        let sum: f64 = row.iter().map(|&v| (f64::from(v) - max).exp()).sum();
        let lse = max + sum.ln();
        let g = row
            .iter()
            .enumerate()
            .map(|(j, &v)| f64::from(u8::from(j == t)) - (f64::from(v) - lse).exp())
            .collect();
        (f64::from(row[t]) - lse, g)
    }

    #[test]
    fn matches_f64_on_odd_widths() {
        for width in [1, 3, 16, 17, 1000, 49_157] {
            let rows = 5;
            let logits: Vec<f32> = (0..rows * width)
                .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 30.0)
                .collect();
            let targets: Vec<usize> = (0..rows).map(|r| (r * 31 + 2) % width).collect();
            let mut plain = logits.clone();
            let lp_only = target_log_softmax(&mut plain, width, &targets, false);
            assert_eq!(plain, logits, "the forward-only pass changed the logits");
            let mut g = logits.clone();
            let lp = target_log_softmax(&mut g, width, &targets, true);
            for r in 0..rows {
                let (want, want_g) = reference(&logits[r * width..][..width], targets[r]);
                for got in [lp[r], lp_only[r]] {
                    assert!(got.is_finite(), "width {width} row {r}: {got}");
                    let err = (f64::from(got) - want).abs() / want.abs().max(1.0);
                    assert!(
                        err <= 2e-6,
                        "width {width} row {r}: {got} vs {want} ({err:e})"
                    );
                }
                for (j, (&got, want)) in g[r * width..][..width].iter().zip(want_g).enumerate() {
                    assert!(got.is_finite(), "width {width} row {r} col {j}: {got}");
                    assert!(
                        (f64::from(got) - want).abs() <= 1e-6,
                        "width {width} row {r} col {j}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn nan_and_infinity_propagate() {
        let mut row = vec![0.0, f32::NAN, 1.0];
        assert!(target_log_softmax(&mut row, 3, &[0], true)[0].is_nan());
        let mut row = vec![0.0, f32::INFINITY, 1.0];
        assert!(target_log_softmax(&mut row, 3, &[0], false)[0].is_nan());
    }
}
