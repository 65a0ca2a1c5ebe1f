//! The register-tiled forward kernel (`set_forward_kernel(Some(ForwardKernel::Tiles))` or
//! `PEFT_KERNEL_FORWARD=tiles`) on wgpu (CI: lavapipe) against the f64 oracle. Its own test
//! binary: the setting is process-wide.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::Wgpu;
use cubecl::{
    Runtime,
    wgpu::{WgpuDevice, WgpuRuntime},
};

#[test]
fn tiled_forward_matches_the_oracle_and_is_the_kernel_taken() {
    let plane = WgpuRuntime::client(&WgpuDevice::default())
        .properties()
        .hardware
        .plane_size_min;
    if plane < 8 {
        // The kernel reduces its row maxima and sums over eight lanes; the launch takes the
        // row kernel on narrower planes.
        eprintln!("SKIPPED: the tiled forward needs planes of eight, this device's are {plane}");
        return;
    }
    common::check_tiled_forward::<Wgpu>();
}
