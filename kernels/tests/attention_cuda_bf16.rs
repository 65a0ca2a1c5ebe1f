//! bf16 inputs on CUDA: the kernels compute in f32 between casts and the results come back in
//! bf16 (compiled in CI; run on a machine with an NVIDIA GPU). Its own test binary, one dtype per
//! process, for the reason given in `attention_cuda_f16.rs`.
#![cfg(feature = "cuda")]

mod common;

use burn::{backend::Cuda, tensor::bf16};
use common::*;

#[test]
fn bf16_runs_the_kernels_and_matches_the_oracle() {
    assert_half_precision_matches_the_oracle::<Cuda<bf16, i32>>(Precision::Bf16);
}
