//! The fused CubeCL kernels on wgpu (CI: Mesa's lavapipe) against the f64 oracle, through the
//! fusion-wrapped `Wgpu` type and the bare `CubeBackend`.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::{
    Wgpu,
    wgpu::{CubeBackend, WgpuRuntime},
};
use common::*;
use peft_kernels::{AttentionPath, PrefixAttentionBackend};

type Bare = CubeBackend<WgpuRuntime, f32, i32, u32>;

#[test]
fn fused_kernels_are_used() {
    assert!(<Wgpu as PrefixAttentionBackend>::has_fused_prefix_attention());
    assert!(<Bare as PrefixAttentionBackend>::has_fused_prefix_attention());
}

#[test]
fn fused_kernels_match_the_oracle_on_the_sweep() {
    let dev = Default::default();
    for c in sweep() {
        let r = check::<Wgpu>(&c, 3, &dev, AttentionPath::Fused);
        assert!(
            !r.non_finite && r.out < OUT_TOL && r.grad < GRAD_TOL,
            "{c:?}: {r:?}"
        );
    }
}

#[test]
fn bare_cube_backend_matches_the_oracle() {
    let dev = Default::default();
    for c in [
        Case::new(2, 6, 2, 17, 32, 7).key_lengths(vec![17, 0]),
        Case::new(3, 6, 2, 11, 64, 8).per_row_prefix(vec![8, 3, 0]),
    ] {
        let r = check::<Bare>(&c, 4, &dev, AttentionPath::Fused);
        assert!(
            !r.non_finite && r.out < OUT_TOL && r.grad < GRAD_TOL,
            "{c:?}: {r:?}"
        );
    }
}

#[test]
fn fused_runs_are_bitwise_identical_and_p0_is_plain_causal() {
    let dev = Default::default();
    let c = Case::new(2, 6, 2, 17, 32, 7).key_lengths(vec![17, 9]);
    let x = Inputs::random(&c, 5);
    let a = run_forward::<Wgpu>(&c, &x, &dev, AttentionPath::Fused);
    let b = run_forward::<Wgpu>(&c, &x, &dev, AttentionPath::Fused);
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    let c0 = Case::new(2, 6, 2, 17, 32, 0);
    let x0 = Inputs::random(&c0, 6);
    let fused = run_forward::<Wgpu>(&c0, &x0, &dev, AttentionPath::Fused);
    let unfused = run_forward::<Wgpu>(&c0, &x0, &dev, AttentionPath::Unfused);
    let diff = fused
        .iter()
        .zip(&unfused)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff < 1e-5,
        "P = 0 fused differs from plain causal attention by {diff}"
    );
}
