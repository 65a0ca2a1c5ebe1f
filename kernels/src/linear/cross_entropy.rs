//! Log-probabilities of target tokens through a frozen output layer (the LM head) without a
//! `[rows, vocab]` tensor, forward or backward.
//!
//! The rows are taken in chunks of [`chunk_rows`]: a chunk's logits, their log-sum-exp and the
//! target's logit are computed and dropped before the next chunk. The forward keeps the
//! log-sum-exp of every row (`[n]`); the backward recomputes each chunk's logits from the input
//! and the weight, forms `(onehot(target) − softmax)·dlp` and multiplies it by `W` (the input
//! gradient; the weight is frozen). So the largest tensor alive is one chunk's logits, whatever
//! the number of rows.

use burn::tensor::{IndexingUpdateOp, Int, Tensor};

use super::{FrozenLinearBackend, FrozenWeight};

/// Logit values one chunk holds at most (16 MiB of f32).
pub const CHUNK_VALUES: usize = 1 << 22;

/// Rows per chunk for an output layer of `outputs` columns: as many as fit [`CHUNK_VALUES`], at
/// least one.
pub fn chunk_rows(outputs: usize) -> usize {
    (CHUNK_VALUES / outputs.max(1)).max(1)
}

/// The chunks `(first row, rows)` of `n` rows.
fn chunks(n: usize, outputs: usize) -> impl Iterator<Item = (usize, usize)> {
    let rows = chunk_rows(outputs);
    (0..n)
        .step_by(rows)
        .map(move |start| (start, rows.min(n - start)))
}

/// `log softmax(x·Wᵀ)[i, targets[i]]` for every row `i` of `x` `[n, in]`, and the log-sum-exp
/// of every row's logits (what the backward needs), both `[n]`.
pub fn log_probs_forward<B: FrozenLinearBackend>(
    x: Tensor<B, 2>,
    weight: &FrozenWeight<B>,
    targets: Tensor<B, 1, Int>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [n, _] = x.dims();
    if n == 0 {
        let device = x.device();
        return (Tensor::zeros([0], &device), Tensor::zeros([0], &device));
    }
    let (mut log_probs, mut lses) = (Vec::new(), Vec::new());
    for (start, rows) in chunks(n, weight.dims()[0]) {
        let logits = B::frozen_forward(x.clone().narrow(0, start, rows), weight);
        let max = logits.clone().max_dim(1);
        let lse = (logits.clone() - max.clone()).exp().sum_dim(1).log() + max;
        let ids = targets.clone().narrow(0, start, rows).unsqueeze_dim::<2>(1);
        log_probs.push((logits.gather(1, ids) - lse.clone()).squeeze_dim::<1>(1));
        lses.push(lse.squeeze_dim::<1>(1));
    }
    (Tensor::cat(log_probs, 0), Tensor::cat(lses, 0))
}

/// The input gradient `[n, in]` of `Σᵢ dlp[i]·log_probs[i]` ([`log_probs_forward`]), from the
/// saved log-sum-exp `lse` `[n]`.
pub fn log_probs_backward<B: FrozenLinearBackend>(
    x: Tensor<B, 2>,
    weight: &FrozenWeight<B>,
    targets: Tensor<B, 1, Int>,
    lse: Tensor<B, 1>,
    dlp: Tensor<B, 1>,
) -> Tensor<B, 2> {
    let [n, _] = x.dims();
    let outputs = weight.dims()[0];
    if n == 0 {
        return x;
    }
    let dx = chunks(n, outputs)
        .map(|(start, rows)| {
            let logits = B::frozen_forward(x.clone().narrow(0, start, rows), weight);
            let lse = lse.clone().narrow(0, start, rows).unsqueeze_dim::<2>(1);
            let softmax = (logits - lse).exp();
            let ids = targets.clone().narrow(0, start, rows).unsqueeze_dim::<2>(1);
            let dlp = dlp.clone().narrow(0, start, rows).unsqueeze_dim::<2>(1);
            // `(onehot(target) − softmax)·dlp`: the target's column gets `dlp` added.
            let g = (softmax * dlp.clone())
                .neg()
                .scatter(1, ids, dlp, IndexingUpdateOp::Add);
            B::frozen_backward(g, weight)
        })
        .collect();
    Tensor::cat(dx, 0)
}
