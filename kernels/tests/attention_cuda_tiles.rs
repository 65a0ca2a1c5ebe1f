//! The register-tiled forward, dQ and dK/dV kernels on CUDA against the f64 oracle (compiled in
//! CI; run on a machine with an NVIDIA GPU). Its own test binary: the settings are
//! process-wide.
#![cfg(feature = "cuda")]

mod common;

#[test]
fn tiled_kernels_match_the_oracle_and_are_the_kernels_taken() {
    common::check_tiled_kernels::<burn::backend::Cuda>();
}
