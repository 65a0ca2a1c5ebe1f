//! The fused path never materialises the `[B, H, L, P + L]` score matrix: the largest buffer
//! the kernels allocate during a forward and backward stays far below it (its own test binary,
//! so that no other test's kernels run in between).
#![cfg(feature = "wgpu")]

mod common;

#[test]
fn fused_forward_and_backward_allocate_no_score_matrix() {
    common::assert_fused_path_allocates_no_score_matrix::<burn::backend::Wgpu>();
}
