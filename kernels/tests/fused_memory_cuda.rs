//! On CUDA: the fused path allocates no `[B, H, L, P + L]` score matrix (see
//! `fused_forward_and_backward_allocate_no_score_matrix` in `attention_wgpu.rs`; its own test
//! binary so no other test's kernels run in between).
#![cfg(feature = "cuda")]

mod common;

#[test]
fn fused_forward_and_backward_allocate_no_score_matrix() {
    common::assert_fused_path_allocates_no_score_matrix::<burn::backend::Cuda>();
}
