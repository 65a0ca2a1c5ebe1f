//! Frozen products through Burn (`peft_kernels::FrozenLinearBackend`) on Flex: bf16 weights take
//! the best CPU kernel forward and backward under autodiff (input gradient only), f32 weights
//! are Burn's matmul bit for bit, and the default path (Burn's bf16 matmul, what GPU backends
//! run) matches the same f64 reference.
#![cfg(feature = "flex")]

use burn::{
    backend::{Autodiff, Flex},
    tensor::{Tensor, TensorData},
};
use peft_kernels::{
    FrozenLinearBackend, FrozenWeight, WeightPrecision,
    linear::{
        burn_forward,
        cpu::{CpuKernel, bf16_bits, bf16_value, kernel_calls},
    },
};

/// Inputs in [-1, 1), at least 1e-3 from zero (no subnormal products, which bf16 flushes).
fn values(seed: u64, n: usize) -> Vec<f32> {
    peft_testing::Rng::new(seed).f32s(n, 1e-3)
}

fn tensor<B: burn::tensor::backend::Backend>(v: &[f32], shape: [usize; 2]) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

fn floats<B: burn::tensor::backend::Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

/// `a·bᵀ` in f64 of the bf16-rounded values (`a` `[m, k]`, `b` `[n, k]`), and `Σ |aₖ·bₖ|`.
fn reference(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let r = |v: f32| f64::from(bf16_value(bf16_bits(v)));
    let (mut y, mut s) = (vec![0.0; m * n], vec![0.0; m * n]);
    for i in 0..m {
        for j in 0..n {
            for kk in 0..k {
                let p = r(a[i * k + kk]) * r(b[j * k + kk]);
                y[i * n + j] += p;
                s[i * n + j] += p.abs();
            }
        }
    }
    (y, s)
}

/// Every value within the f32-summation bound `(k + 2)·2⁻²⁴·S` of the rounded-input reference
/// (bf16 products are exact in f32; only the order of the sums differs), finite.
fn assert_within(got: &[f32], want: &[f64], s: &[f64], k: usize, what: &str) {
    peft_testing::assert_finite(got, what);
    let tol = (k as f64 + 2.0) * 2f64.powi(-24);
    for (i, ((g, w), s)) in got.iter().zip(want).zip(s).enumerate() {
        let err = (f64::from(*g) - w).abs();
        assert!(
            err <= tol * s,
            "{what}[{i}]: {g} against {w} (bound {})",
            tol * s
        );
    }
}

#[test]
fn bf16_weights_run_the_best_cpu_kernel_forward_and_backward() {
    type Ad = Autodiff<Flex>;
    let (m, n, k) = (37, 50, 70);
    let (x, w, g) = (values(1, m * k), values(2, n * k), values(3, m * n));
    let weight =
        <Ad as FrozenLinearBackend>::frozen_weight(tensor(&w, [n, k]), WeightPrecision::Bf16);
    let best = CpuKernel::best();
    assert_eq!(weight.cpu_kernel(), Some(best));
    assert_eq!(weight.dims(), [n, k]);
    let xt = tensor::<Ad>(&x, [m, k]).require_grad();
    let before = kernel_calls();
    let forward_only = weight.bytes();
    let y = Ad::frozen_forward(xt.clone(), &weight);
    assert_eq!(
        weight.bytes(),
        forward_only,
        "Wᵀ is packed before any backward"
    );
    let loss = (y.clone() * tensor::<Ad>(&g, [m, n])).sum();
    let grads = loss.backward();
    if best == CpuKernel::Portable {
        assert_eq!(
            weight.bytes(),
            forward_only,
            "the portable Wᵀ shares W's bf16 rows"
        );
        assert_eq!(forward_only, n * k * 2, "W held in bf16");
    } else {
        assert!(
            weight.bytes() > forward_only,
            "the backward did not pack Wᵀ"
        );
    }
    let dx = xt.grad(&grads).expect("the input's gradient");
    let ran: Vec<u64> = kernel_calls()
        .iter()
        .zip(before)
        .map(|(a, b)| a - b)
        .collect();
    let mut want = [0u64; 3];
    want[best as usize] = 2;
    assert_eq!(ran, want, "forward and backward on {best}");

    let (yr, ys) = reference(&x, &w, m, n, k);
    assert_within(&floats(y.inner()), &yr, &ys, k, "y");
    // dx = g·W: the reference of g (as [m, n]) times Wᵀ (as [k, n]).
    let mut wt = vec![0.0f32; n * k];
    for r in 0..n {
        for c in 0..k {
            wt[c * n + r] = w[r * k + c];
        }
    }
    let (dxr, dxs) = reference(&g, &wt, m, k, n);
    assert_within(&floats(dx), &dxr, &dxs, n, "dx");
}

#[test]
fn f32_weights_are_burns_matmul_bit_for_bit() {
    let (m, n, k) = (9, 33, 65);
    let (x, w) = (values(4, m * k), values(5, n * k));
    let weight = Flex::frozen_weight(tensor(&w, [n, k]), WeightPrecision::F32);
    assert_eq!(weight.cpu_kernel(), None);
    let y = floats(Flex::frozen_forward(tensor(&x, [m, k]), &weight));
    let burn = floats(tensor::<Flex>(&x, [m, k]).matmul(tensor::<Flex>(&w, [n, k]).transpose()));
    assert!(y.iter().zip(&burn).all(|(a, b)| a.to_bits() == b.to_bits()));
    peft_testing::assert_finite(&y, "y");
}

/// The trait's default, Burn's matmul in bf16 (the GPU backends' path), here on Flex.
#[test]
fn default_bf16_path_matches_the_reference() {
    let (m, n, k) = (5, 24, 40);
    let (x, w) = (values(6, m * k), values(7, n * k));
    let weight = FrozenWeight::<Flex>::tensor(tensor(&w, [n, k]), WeightPrecision::Bf16);
    assert_eq!(weight.cpu_kernel(), None);
    let y = floats(burn_forward(tensor::<Flex>(&x, [m, k]), &weight));
    let (yr, ys) = reference(&x, &w, m, n, k);
    // Burn's bf16 matmul may round its output to bf16 before the cast back: allow that rounding.
    peft_testing::assert_finite(&y, "y");
    for (i, (g, want)) in y.iter().zip(&yr).enumerate() {
        let tol = 2f64.powi(-8) * want.abs() + (k as f64 + 2.0) * 2f64.powi(-24) * ys[i];
        assert!(
            (f64::from(*g) - want).abs() <= tol,
            "y[{i}]: {g} against {want}"
        );
    }
}
