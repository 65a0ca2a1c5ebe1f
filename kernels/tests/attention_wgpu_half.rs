//! f16 inputs on wgpu (lavapipe in CI): the kernels compute in f32 between casts and the results
//! come back in f16. (WGSL has no bf16; bf16 is checked on CUDA.) Its own test binary: the
//! allocation record it reads is process-wide.
#![cfg(feature = "wgpu")]

mod common;

use burn::{backend::Wgpu, tensor::f16};
use common::*;

#[test]
fn f16_runs_the_kernels_and_matches_the_oracle() {
    assert_half_precision_matches_the_oracle::<Wgpu<f16, i32>>(Precision::F16);
}
