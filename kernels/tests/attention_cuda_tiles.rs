//! The register-tiled forward kernel on CUDA against the f64 oracle (compiled in CI; run on a
//! machine with an NVIDIA GPU). Its own test binary: the setting is process-wide.
#![cfg(feature = "cuda")]

mod common;

#[test]
fn tiled_forward_matches_the_oracle_and_is_the_kernel_taken() {
    common::check_tiled_forward::<burn::backend::Cuda>();
}
