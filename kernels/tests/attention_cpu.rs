//! Flex's host attention kernels (`peft_kernels`'s `host` module: per-(row, kv head) tasks on
//! the Rayon threads, products by the `gemm` crate) against the f64 oracle: they run by default,
//! on the whole sweep (GQA ratios, prefixes, padded and fully padded rows, per-row
//! prefixes, a KV cache, query blocks split at 64 rows; calls under a million score
//! multiply-adds on the calling thread, the L = 113 cases on the Rayon threads), on strided views
//! as the model passes them, and bit for bit the same from run to run.
#![cfg(feature = "flex")]

mod common;

use burn::{
    backend::{Autodiff, Flex},
    tensor::{Tensor, TensorData},
};
use common::*;
use peft_kernels::{AttentionPath, PathCounts, PrefixAttentionBackend};

/// Errors of the output and gradients against the f64 oracle over the sweep, the worst of
/// each. Achieved on the development machine (Intel Xeon, AVX-512): output 1.4e-7 absolute,
/// gradients 1.9e-5 relative to each gradient's largest magnitude; the bounds leave 5–7×
/// headroom for other CPUs' `gemm` kernels.
#[test]
fn host_kernels_run_by_default_and_match_the_oracle_on_the_sweep() {
    assert!(Flex::has_fused_prefix_attention());
    let dev = Default::default();
    let (mut out, mut grad) = (0.0f64, 0.0f64);
    for (i, c) in sweep().into_iter().enumerate() {
        // `check` asserts that the host kernels computed both passes (`assert_ran`).
        let r = check::<Flex>(&c, 100 + i as u64, &dev, AttentionPath::Auto);
        assert!(r.out < 1e-6 && r.grad < 1e-4, "{c:?}: {r:?}");
        out = out.max(r.out);
        grad = grad.max(r.grad);
    }
    eprintln!("worst over the sweep: output {out:.1e} (abs), gradients {grad:.1e} (rel)");
}

/// Gemma 3's attention shape: one key/value head shared by four query heads of dimension 256
/// (over the CubeCL kernels' limit, `CUBE_MAX_HEAD_DIM`; the host kernels take it), with a
/// prefix, padding and a KV cache.
#[test]
fn host_kernels_take_gemma3_heads() {
    const { assert!(peft_kernels::CUBE_MAX_HEAD_DIM < 256) };
    let dev = Default::default();
    for c in [
        Case::new(2, 4, 1, 17, 256, 20).key_lengths(vec![17, 6]),
        Case::new(2, 4, 1, 1, 256, 20).keys(9),
    ] {
        let r = check::<Flex>(&c, 31, &dev, AttentionPath::Auto);
        assert!(r.out < 1e-6 && r.grad < 1e-4, "{c:?}: {r:?}");
    }
}

/// The model passes queries, keys and values as `[B, L, H, d]` projections viewed as
/// `[B, H, L, d]` (swapped dimensions, not copied): the kernels read those strides in place and
/// give the same bits as on contiguous inputs.
#[test]
fn strided_views_give_the_contiguous_result() {
    let dev = Default::default();
    let c = Case::new(2, 6, 2, 70, 32, 5).key_lengths(vec![70, 33]);
    let x = Inputs::random(&c, 9);
    let dout = Rng::new(10).vec(c.q_len());
    let contiguous = inputs::<Autodiff<Flex>>(&c, &x, &dev);
    // Same values, stored `[B, L, H, d]`: materialise the swapped view, swap it back.
    let swapped = contiguous.clone().map(|t| {
        let t = t.swap_dims(1, 2);
        let dims = t.dims();
        Tensor::<Autodiff<Flex>, 4>::from_data(TensorData::new(values(t), dims), &dev)
            .swap_dims(1, 2)
    });
    let run = |t: [Tensor<Autodiff<Flex>, 4>; 5]| {
        let t = t.map(|t| t.require_grad());
        let before = peft_kernels::path_counts();
        let out = op::<Autodiff<Flex>>(&c, &t, &dev, AttentionPath::Auto).forward();
        let d_out = tensor::<Autodiff<Flex>, 4>(&dout, [c.b, c.h, c.l, c.d], &dev);
        let grads = out.clone().mul(d_out).sum().backward();
        let ran = peft_kernels::path_counts().since(before);
        assert_eq!(
            ran,
            PathCounts {
                fused_forward: 1,
                fused_backward: 1,
                ..Default::default()
            }
        );
        let mut all = vec![values(out.inner())];
        all.extend(
            t.iter()
                .take(3)
                .map(|t| values(t.grad(&grads).expect("gradient"))),
        );
        all
    };
    let a = run(contiguous);
    let b = run(swapped);
    for (x, y) in a.iter().zip(&b) {
        peft_testing::assert_finite(x, "contiguous");
        assert!(x.iter().zip(y).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

#[test]
fn runs_are_bitwise_identical() {
    let dev = Default::default();
    let c = Case::new(3, 6, 2, 130, 64, 20).per_row_prefix(vec![20, 7, 0]);
    let x = Inputs::random(&c, 21);
    let dout = Rng::new(22).vec(c.q_len());
    let (out_a, grads_a, _) = run_backward::<Flex>(&c, &x, &dout, &dev, AttentionPath::Fused);
    let (out_b, grads_b, _) = run_backward::<Flex>(&c, &x, &dout, &dev, AttentionPath::Fused);
    peft_testing::assert_finite(&out_a, "output");
    assert!(
        out_a
            .iter()
            .zip(&out_b)
            .all(|(x, y)| x.to_bits() == y.to_bits())
    );
    for (a, b) in grads_a.iter().zip(&grads_b) {
        let (a, b) = (a.as_ref().expect("gradient"), b.as_ref().expect("gradient"));
        peft_testing::assert_finite(a, "gradient");
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}
