//! The LM head's fused log-likelihood (`FrozenLinearBackend::frozen_log_probs`) against the
//! unfused one (the `[n, vocab]` logits, Burn's `log_softmax` and `gather`) under autodiff on
//! Flex: the values and the input gradients agree within 1e-5 relative in f32, with several
//! chunks and a partial last chunk, and the backward scales each row by its upstream gradient.
//! With bf16 weights the log-probabilities agree within 1e-5 too (the same bf16 logits on both
//! sides); the input gradients within 2⁻⁸ of the largest: the fused path rounds
//! `onehot − softmax` to bf16 for its product and scales the result by the upstream gradient,
//! the unfused path rounds the scaled values, and each rounding is within 2⁻⁹ relative.
#![cfg(feature = "flex")]

use burn::{
    backend::{Autodiff, Flex},
    tensor::{Int, Tensor, TensorData, activation::log_softmax},
};
use peft_kernels::{
    FrozenLinearBackend, WeightPrecision,
    linear::{
        cpu::CpuKernel,
        cross_entropy::{chunk_rows, host_row_passes, target_log_softmax_reference},
    },
};
use peft_testing::{Rng, assert_finite, max_rel_diff};

type Ad = Autodiff<Flex>;

fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.next_f32() * scale).collect()
}

fn floats<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().expect("f32")
}

/// Values and input gradients of `Σᵢ cᵢ·log p(targetᵢ)` for `x` `[n, h]`, a head of `vocab`
/// rows and per-row coefficients `c` (the upstream gradient), fused and unfused.
fn both(n: usize, h: usize, vocab: usize, precision: WeightPrecision) -> [(Vec<f32>, Vec<f32>); 2] {
    let device = Default::default();
    let x = values(1, n * h, 2.0);
    let w = Ad::frozen_weight(
        Tensor::from_data(
            TensorData::new(values(2, vocab * h, 0.5), [vocab, h]),
            &device,
        ),
        precision,
    );
    let ids: Vec<i64> = (0..n).map(|i| ((i * 7919 + 13) % vocab) as i64).collect();
    let coeff = Tensor::<Ad, 1>::from_data(TensorData::new(values(3, n, 1.0), [n]), &device);
    let run = |fused: bool| {
        let x =
            Tensor::<Ad, 2>::from_data(TensorData::new(x.clone(), [n, h]), &device).require_grad();
        let targets = Tensor::<Ad, 1, Int>::from_data(TensorData::new(ids.clone(), [n]), &device);
        let lp = if fused {
            Ad::frozen_log_probs(x.clone(), &w, targets)
        } else {
            let logits = Ad::frozen_forward(x.clone(), &w);
            log_softmax(logits, 1)
                .gather(1, targets.unsqueeze_dim::<2>(1))
                .reshape([n])
        };
        let grads = (lp.clone() * coeff.clone()).sum().backward();
        let dx = x.grad(&grads).expect("input gradient");
        (floats(lp.inner()), floats(dx))
    };
    [run(true), run(false)]
}

fn check(n: usize, h: usize, vocab: usize, precision: WeightPrecision) {
    let dx_bound = match precision {
        WeightPrecision::F32 => 1e-5,
        WeightPrecision::Bf16 => 1.0 / 256.0,
    };
    let passes = host_row_passes();
    let [(lp, dx), (lp_ref, dx_ref)] = both(n, h, vocab, precision);
    assert_eq!(
        host_row_passes() - passes,
        n.div_ceil(chunk_rows(vocab)) as u64,
        "not every chunk's row pass ran on the host kernel"
    );
    let what = format!("n {n}, h {h}, vocab {vocab}, {}", precision.name());
    assert_finite(&lp, &what);
    assert_finite(&dx, &what);
    let lp_err = max_rel_diff(&lp_ref, &lp, 1e-12);
    let dx_err = max_rel_diff(&dx_ref, &dx, 1e-12);
    eprintln!("{what}: log-probs {lp_err:e}, input gradient {dx_err:e} (relative to the largest)");
    assert!(
        lp_err <= 1e-5,
        "{what}: log-probs differ by {lp_err} of the largest"
    );
    assert!(
        dx_err <= dx_bound,
        "{what}: input gradients differ by {dx_err} of the largest"
    );
}

#[test]
fn fused_log_probs_equal_the_unfused_ones_in_f32() {
    check(1, 1, 5, WeightPrecision::F32);
    check(37, 24, 1000, WeightPrecision::F32);
    // Several chunks and a partial last one.
    let vocab = 50_000;
    let n = 3 * chunk_rows(vocab) + 5;
    check(n, 16, vocab, WeightPrecision::F32);
}

#[test]
fn fused_log_probs_equal_the_unfused_ones_with_bf16_weights() {
    let best = CpuKernel::best();
    let before = best.calls();
    let vocab = 50_000;
    check(2 * chunk_rows(vocab) + 3, 40, vocab, WeightPrecision::Bf16);
    assert!(best.calls() > before, "no product ran on {best}");
}

/// Flex's host row pass against the composition of Burn ops every other backend runs, on the
/// same logits: log-probabilities and the logits' gradient.
#[test]
fn host_row_pass_equals_the_composition() {
    let device = Default::default();
    let (rows, width) = (7, 3001);
    let logits = Tensor::<Flex, 2>::from_data(
        TensorData::new(values(4, rows * width, 12.0), [rows, width]),
        &device,
    );
    let ids: Vec<i64> = (0..rows).map(|i| ((i * 409 + 5) % width) as i64).collect();
    let targets = Tensor::<Flex, 1, Int>::from_data(TensorData::new(ids, [rows]), &device);
    let passes = host_row_passes();
    let (lp, g) = Flex::target_log_softmax(logits.clone(), targets.clone(), true);
    assert_eq!(host_row_passes() - passes, 1, "the host pass did not run");
    let (lp_ref, g_ref) = target_log_softmax_reference(logits, targets, true);
    let (lp, lp_ref) = (floats(lp), floats(lp_ref));
    let (g, g_ref) = (
        floats(g.expect("gradient")),
        floats(g_ref.expect("gradient")),
    );
    for (v, what) in [
        (&lp, "log-probs"),
        (&lp_ref, "reference log-probs"),
        (&g, "gradient"),
        (&g_ref, "reference gradient"),
    ] {
        assert_finite(v, what);
    }
    let lp_err = max_rel_diff(&lp_ref, &lp, 1e-12);
    let g_err = max_rel_diff(&g_ref, &g, 1e-12);
    eprintln!("host row pass vs composition: log-probs {lp_err:e}, gradient {g_err:e}");
    assert!(lp_err <= 1e-6, "log-probs differ by {lp_err}");
    assert!(g_err <= 1e-6, "gradients differ by {g_err}");
}
