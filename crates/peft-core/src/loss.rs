//! Causal language-modelling loss on the positions that have a target.

use burn::tensor::{Int, Tensor, TensorData, activation::log_softmax, backend::Backend};

use crate::{
    error::{PeftError, Result},
    model::CausalLm,
    peft_model::PeftOutput,
};

/// Which positions predict which tokens: position `t` of a row predicts token `t + 1` when that
/// token is a target (Hugging Face's shifted labels with `-100` elsewhere; virtual tokens never
/// have targets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    /// `(row, position)` of each prediction, in real-token coordinates.
    pub positions: Vec<(usize, usize)>,
    /// The token each of those positions must predict.
    pub tokens: Vec<u32>,
}

impl Targets {
    /// Targets for rows of ids where `is_target[r][t]` says whether token `t` of row `r` is
    /// learned (the output part of an input/output pair, or every token of plain text).
    pub fn from_rows(rows: &[Vec<u32>], is_target: &[Vec<bool>]) -> Self {
        let mut out = Self::default();
        for (r, (ids, mask)) in rows.iter().zip(is_target).enumerate() {
            for (t, &id) in ids.iter().enumerate().skip(1) {
                if mask.get(t).copied().unwrap_or(false) {
                    out.positions.push((r, t - 1));
                    out.tokens.push(id);
                }
            }
        }
        out
    }

    /// Number of predicted tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether nothing is predicted.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Summed negative log-likelihood `[1]` of the targets (divide by [`Targets::len`] for the mean).
pub fn nll_sum<B: Backend, M: CausalLm<B>>(
    base: &M,
    out: &PeftOutput<B>,
    targets: &Targets,
) -> Result<Tensor<B, 1>> {
    Ok(token_log_probs(base, out, targets)?.sum().neg())
}

/// Log-probability `[n]` of each target token (in the order of `targets`), e.g. to score the
/// label words of a classifier.
///
/// Only the target positions go through the LM head, which for short outputs after long inputs
/// saves most of the `[positions, vocab]` logits, and through [`CausalLm::target_log_probs`],
/// which a model can compute without any `[targets, vocab]` tensor.
pub fn token_log_probs<B: Backend, M: CausalLm<B>>(
    base: &M,
    out: &PeftOutput<B>,
    targets: &Targets,
) -> Result<Tensor<B, 1>> {
    if targets.is_empty() {
        return Err(PeftError::Invalid("the batch has no target tokens".into()));
    }
    let flat: Vec<usize> = targets
        .positions
        .iter()
        .map(|&(r, t)| out.flat_index(r, t))
        .collect();
    let hidden = out.gather(&flat);
    let n = hidden.dims()[0];
    let ids: Vec<i64> = targets.tokens.iter().map(|&t| i64::from(t)).collect();
    let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), &hidden.device());
    Ok(base.target_log_probs(hidden, ids))
}

/// `log softmax(logits)[i, targets[i]]` `[n]` of logits `[n, vocab]` and target ids `[n]`.
pub fn log_probs_of_logits<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let n = targets.dims()[0];
    log_softmax(logits, 1)
        .gather(1, targets.unsqueeze_dim::<2>(1))
        .reshape([n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_shifted_labels() {
        let rows = vec![vec![10, 11, 12, 13], vec![20, 21]];
        let mask = vec![vec![false, false, true, true], vec![true, true]];
        let t = Targets::from_rows(&rows, &mask);
        assert_eq!(t.positions, [(0, 1), (0, 2), (1, 0)]);
        assert_eq!(t.tokens, [12, 13, 21]);
    }
}
