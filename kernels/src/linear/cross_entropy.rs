//! Log-probabilities of target tokens through a frozen output layer (the LM head) without a
//! `[rows, vocab]` tensor, forward or backward.
//!
//! The rows are taken in chunks of [`chunk_rows`]. For each chunk the logits are computed, one
//! row pass ([`FrozenLinearBackend::target_log_softmax`]) gives each row's log-probability of
//! its target and, when a gradient is wanted, overwrites the logits with
//! `onehot(target) − softmax`, and that times `W` is the chunk's rows of the per-row input
//! gradient `G` (`G[i] = ∂ log p(targetᵢ) / ∂ xᵢ`; the weight is frozen). The chunk is then
//! dropped. So the largest tensor alive is one chunk's logits, whatever the number of rows, and
//! the head is multiplied twice per row in training (logits, input gradient), not three times:
//! the backward of `Σᵢ dlpᵢ·log pᵢ` is `G` with row `i` scaled by `dlpᵢ`, no recomputation.

use std::cell::Cell;

use burn::tensor::{Int, Tensor, activation::log_softmax};

use super::{FrozenLinearBackend, FrozenWeight};

/// Logit values one chunk holds at most (64 MiB of f32): SmolLM2's 49 152-token head takes
/// 341 rows at once, so the head's weight is streamed through the cache once per 341 rows.
pub const CHUNK_VALUES: usize = 1 << 24;

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

/// `log softmax(x·Wᵀ)[i, targets[i]]` `[n]` for every row `i` of `x` `[n, in]` and, when
/// `grad`, the per-row input gradient `G` `[n, in]` (`G[i] = (onehot(targetᵢ) − softmaxᵢ)·W`).
pub fn log_probs<B: FrozenLinearBackend>(
    x: Tensor<B, 2>,
    weight: &FrozenWeight<B>,
    targets: Tensor<B, 1, Int>,
    grad: bool,
) -> (Tensor<B, 1>, Option<Tensor<B, 2>>) {
    let [n, _] = x.dims();
    if n == 0 {
        let device = x.device();
        return (Tensor::zeros([0], &device), grad.then_some(x));
    }
    let (mut log_probs, mut grads) = (Vec::new(), Vec::new());
    for (start, rows) in chunks(n, weight.dims()[0]) {
        let logits = B::frozen_forward(x.clone().narrow(0, start, rows), weight);
        let ids = targets.clone().narrow(0, start, rows);
        let (lp, g) = B::target_log_softmax(logits, ids, grad);
        log_probs.push(lp);
        if let Some(g) = g {
            grads.push(B::frozen_backward(g, weight));
        }
    }
    (
        Tensor::cat(log_probs, 0),
        grad.then(|| Tensor::cat(grads, 0)),
    )
}

/// [`FrozenLinearBackend::target_log_softmax`] by Burn's tensor ops.
pub fn target_log_softmax_reference<B: FrozenLinearBackend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    grad: bool,
) -> (Tensor<B, 1>, Option<Tensor<B, 2>>) {
    let ids = targets.unsqueeze_dim::<2>(1);
    let log_p = log_softmax(logits, 1);
    let lp = log_p.clone().gather(1, ids.clone()).squeeze_dim::<1>(1);
    let g = grad.then(|| {
        let [rows, _] = log_p.dims();
        let ones = Tensor::ones([rows, 1], &log_p.device());
        log_p
            .exp()
            .neg()
            .scatter(1, ids, ones, burn::tensor::IndexingUpdateOp::Add)
    });
    (lp, g)
}

thread_local! {
    static HOST_PASSES: Cell<u64> = const { Cell::new(0) };
}

/// Chunks whose row pass ([`FrozenLinearBackend::target_log_softmax`]) the calling thread ran
/// on the host kernel (Flex) so far: tests assert that the fast path ran.
pub fn host_row_passes() -> u64 {
    HOST_PASSES.with(Cell::get)
}

/// Counts one chunk's row pass computed by the host kernel.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) fn record_host_pass() {
    HOST_PASSES.with(|c| c.set(c.get() + 1));
}
