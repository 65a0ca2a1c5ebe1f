//! The fused path never materialises the `[B, H, L, P + L]` score matrix: the largest buffer
//! the kernels allocate during a forward and backward stays far below it (its own test binary,
//! so that no other test's kernels run in between).
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::Wgpu;
use common::*;
use peft_kernels::{
    AttentionPath,
    cube::{largest_allocation, reset_largest_allocation},
};

#[test]
fn fused_forward_and_backward_allocate_no_score_matrix() {
    let dev = Default::default();
    let c = Case::new(2, 6, 2, 113, 32, 64).key_lengths(vec![113, 50]);
    reset_largest_allocation();
    let r = check::<Wgpu>(&c, 11, &dev, AttentionPath::Fused);
    assert!(
        !r.non_finite && r.out < OUT_TOL && r.grad < GRAD_TOL,
        "{r:?}"
    );
    let scores = c.b * c.h * c.l * (c.p + c.l) * 4;
    let largest = largest_allocation();
    // The kernels' buffers: the output and dQ [B, H, L, d], the log-sum-exp and D rows
    // [2, B·H·L], dK/dV [B, Hkv, L, d] and the per-row prefix partials [B, Hkv, P, d].
    let expected = c.b * c.h * c.l * c.d * 4;
    assert!(largest > 0, "the fused kernels did not run");
    assert!(
        largest <= expected && largest * 4 < scores,
        "largest kernel buffer {largest} bytes; the score matrix would be {scores}"
    );
}
