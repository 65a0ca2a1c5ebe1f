//! f16 and bf16 inputs on CUDA: the kernels compute in f32 between casts and the results come
//! back in the input dtype (compiled in CI; run on a machine with an NVIDIA GPU). Its own test
//! binary: the allocation record it reads is process-wide.
#![cfg(feature = "cuda")]

mod common;

use burn::{
    backend::Cuda,
    tensor::{bf16, f16},
};
use common::*;

#[test]
fn f16_and_bf16_run_the_kernels_and_match_the_oracle() {
    assert_half_precision_matches_the_oracle::<Cuda<f16, i32>>(Precision::F16);
    assert_half_precision_matches_the_oracle::<Cuda<bf16, i32>>(Precision::Bf16);
}
