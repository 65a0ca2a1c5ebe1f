//! The kernels with rows split over lanes (`PEFT_KERNEL_LANES` or `set_lanes_per_row`: several
//! units share a query row or key column and reduce their dot products with plane shuffles), the
//! layout GPUs use for the backward, on wgpu, so CI (lavapipe, where one lane is the default)
//! checks it against the f64 oracle; each layout with another step block (`PEFT_KERNEL_BLOCK` or
//! `set_step_block`: staged columns, or query rows in dK/dV, a unit takes per step), so blocks
//! of 1, 2, 4 and 8 all run. Its own test binary: the settings are process-wide.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::Wgpu;
use common::*;
use cubecl::{
    Runtime,
    wgpu::{WgpuDevice, WgpuRuntime},
};
use peft_kernels::AttentionPath;

fn assert_matches_the_oracle(cases: &[Case], layout: &str) {
    let dev = Default::default();
    for c in cases {
        let r = check::<Wgpu>(c, 13, &dev, AttentionPath::Fused);
        assert!(r.passes(), "{layout}, {c:?}: {r:?}");
    }
}

#[test]
fn rows_split_over_lanes_match_the_oracle() {
    let cases = sweep_sample(1, 3);
    // Four lanes with one row per unit (the GPU default for dQ and dK/dV at d = 128), blocks of
    // eight columns, set through the environment.
    // SAFETY: this binary's only test sets the variables; the kernels read them at launch, on
    // this thread.
    unsafe {
        std::env::set_var("PEFT_KERNEL_ROWS", "1");
        std::env::set_var("PEFT_KERNEL_LANES", "4");
        std::env::set_var("PEFT_KERNEL_BLOCK", "8");
    }
    assert_matches_the_oracle(&cases, "R = 1, W = 4, C = 8");
    // Two lanes with two rows per unit (both splits at once), blocks of four, through the
    // process-wide settings, which take precedence over the environment (still R = 1, W = 4,
    // C = 8).
    peft_kernels::set_rows_per_unit(Some(2)).unwrap();
    peft_kernels::set_lanes_per_row(Some(2)).unwrap();
    peft_kernels::set_step_block(Some(4)).unwrap();
    assert_matches_the_oracle(&cases, "R = 2, W = 2, C = 4");
    // Eight lanes (the most a row takes) need planes of eight or more:
    // lavapipe's are as wide as the CPU's vector unit (eight f32 lanes with AVX2).
    let plane = WgpuRuntime::client(&WgpuDevice::default())
        .properties()
        .hardware
        .plane_size_min;
    if plane >= 8 {
        peft_kernels::set_rows_per_unit(None).unwrap();
        peft_kernels::set_lanes_per_row(Some(8)).unwrap();
        peft_kernels::set_step_block(Some(2)).unwrap();
        assert_matches_the_oracle(&cases, "R = 1, W = 8, C = 2");
        // Two rows of eight lanes: about the registers of R = 1, W = 4 on a GPU, with half the
        // shared-memory reads per row (docs/kernels.md, *Registers per thread*).
        peft_kernels::set_rows_per_unit(Some(2)).unwrap();
        peft_kernels::set_step_block(Some(1)).unwrap();
        assert_matches_the_oracle(&cases, "R = 2, W = 8, C = 1");
    } else {
        eprintln!("SKIPPED: eight lanes per row, this device's planes are {plane} wide");
        // Blocks of two still run.
        peft_kernels::set_step_block(Some(2)).unwrap();
        assert_matches_the_oracle(&cases, "R = 2, W = 2, C = 2");
    }
}
