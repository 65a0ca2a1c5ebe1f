//! The fused CubeCL kernels on wgpu (CI: Mesa's lavapipe) against the f64 oracle, through the
//! fusion-wrapped `Wgpu` type and the bare `CubeBackend`.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::{
    Wgpu,
    wgpu::{CubeBackend, WgpuRuntime},
};
use common::*;
use peft_kernels::{AttentionPath, PrefixAttentionBackend};

type Bare = CubeBackend<WgpuRuntime, f32, i32, u32>;

fused_kernel_suite!(Wgpu, Bare);
