//! The fused CubeCL kernels on CUDA against the f64 oracle, through the fusion-wrapped `Cuda`
//! type and the bare `CubeBackend` (compiled in CI; run on a machine with an NVIDIA GPU).
#![cfg(feature = "cuda")]

mod common;

use burn::backend::Cuda;
use burn_cubecl::CubeBackend;
use common::*;
use cubecl::cuda::CudaRuntime;
use peft_kernels::AttentionPath;

type Bare = CubeBackend<CudaRuntime, f32, i32, u8>;

fused_kernel_suite!(Cuda, Bare);
