//! On CUDA: the fused path adds far less device memory than the `[B, H, L, P + L]` score matrix
//! that the unfused path allocates (see `fused_forward_and_backward_allocate_no_score_matrix` in
//! `attention_wgpu.rs`; its own test binary so no other test's tensors count).
#![cfg(feature = "cuda")]

mod common;

use cubecl::{Runtime, cuda::CudaRuntime};

#[test]
fn fused_forward_and_backward_allocate_no_score_matrix() {
    common::assert_fused_path_allocates_no_score_matrix::<burn::backend::Cuda>(|dev| {
        CudaRuntime::client(dev)
            .memory_usage()
            .expect("memory usage")
            .bytes_reserved
    });
}
