//! f16 inputs on CUDA: the kernels compute in f32 between casts and the results come back in
//! f16 (compiled in CI; run on a machine with an NVIDIA GPU).
//!
//! Its own test binary, one dtype per process: Burn fixes a device's default float dtype at the
//! first tensor made on it, for the whole process and every backend type over that device, so a
//! `Cuda<bf16>` run after a `Cuda<f16>` one in the same process gets f16 tensors (seen on an
//! H200: the bf16 case ran in f16). The allocation record the test reads is process-wide too.
#![cfg(feature = "cuda")]

mod common;

use burn::{backend::Cuda, tensor::f16};
use common::*;

#[test]
fn f16_runs_the_kernels_and_matches_the_oracle() {
    assert_half_precision_matches_the_oracle::<Cuda<f16, i32>>(Precision::F16);
}
