//! The fused CubeCL kernels on wgpu (CI: Mesa's lavapipe) against the f64 oracle: through the
//! fusion-wrapped `Wgpu` type and the bare `CubeBackend`, in each layout the kernels take (rows
//! per unit, rows split over lanes, step blocks, the tiled forward), at `d = 128`, in f16, and
//! with no score matrix allocated.
//!
//! One test binary: each wgpu test binary cost about 210 s of one core to compile in CI's build
//! (it instantiates Burn's fusion, autodiff and CubeCL stacks), seven of them half of the wgpu
//! step. The kernels' settings and the allocation record are process-wide, so a test that
//! changes or reads them holds [`common::exclusive`], and the others hold [`common::shared`];
//! the two that need a process of their own (the settings read from the environment, and f16,
//! since Burn fixes a device's float dtype at its first tensor) run in a child process of this
//! binary ([`common::in_own_process`]).
#![cfg(feature = "wgpu")]

mod common;

use burn::{
    backend::{
        Wgpu,
        wgpu::{CubeBackend, WgpuRuntime},
    },
    tensor::f16,
};
use common::*;
use cubecl::{Runtime, wgpu::WgpuDevice};
use peft_kernels::{AttentionPath, set_lanes_per_row, set_rows_per_unit, set_step_block};

type Bare = CubeBackend<WgpuRuntime, f32, i32, u32>;

fused_kernel_suite!(Wgpu, Bare);

/// The narrowest plane (subgroup) of the default device.
fn plane_size() -> u32 {
    WgpuRuntime::client(&WgpuDevice::default())
        .properties()
        .hardware
        .plane_size_min
}

fn assert_matches_the_oracle(cases: &[Case], layout: &str) {
    let dev = Default::default();
    for c in cases {
        let r = check::<Wgpu>(c, 13, &dev, AttentionPath::Fused);
        assert!(r.passes(), "{layout}, {c:?}: {r:?}");
    }
}

/// The kernels in their GPU configuration (one query row or key column per unit, as on CUDA and
/// wgpu GPUs, one column a step), which lavapipe (eight per unit by default) does not use.
#[test]
fn one_row_per_unit_matches_the_oracle() {
    let _settings = exclusive();
    set_rows_per_unit(Some(1)).unwrap();
    assert_matches_the_oracle(&sweep_sample(0, 3), "R = 1");
}

/// Rows split over lanes (several units share a query row or key column and reduce their dot
/// products with plane shuffles: the layout GPUs use for the backward), each layout with another
/// step block (staged columns, or query rows in dK/dV, a unit takes per step), so blocks of 1, 2,
/// 4 and 8 all run. The first layout comes from the environment (`PEFT_KERNEL_ROWS`,
/// `PEFT_KERNEL_LANES`, `PEFT_KERNEL_BLOCK`, set for the child process this runs in), the others
/// from the process-wide settings, which take precedence over it.
#[test]
fn rows_split_over_lanes_match_the_oracle() {
    let env = [
        ("PEFT_KERNEL_ROWS", "1"),
        ("PEFT_KERNEL_LANES", "4"),
        ("PEFT_KERNEL_BLOCK", "8"),
    ];
    if !in_own_process("rows_split_over_lanes_match_the_oracle", &env) {
        return;
    }
    let cases = sweep_sample(1, 3);
    // Four lanes with one row per unit (the GPU default for dQ and dK/dV at d = 128), blocks of
    // eight columns, from the environment.
    assert_matches_the_oracle(&cases, "R = 1, W = 4, C = 8");
    // Two lanes with two rows per unit (both splits at once), blocks of four: the settings win
    // over the environment (still R = 1, W = 4, C = 8).
    set_rows_per_unit(Some(2)).unwrap();
    set_lanes_per_row(Some(2)).unwrap();
    set_step_block(Some(4)).unwrap();
    assert_matches_the_oracle(&cases, "R = 2, W = 2, C = 4");
    // Eight lanes (the most a row takes) need planes of eight or more: lavapipe's are as wide
    // as the CPU's vector unit (eight f32 lanes with AVX2).
    let plane = plane_size();
    if plane >= 8 {
        set_rows_per_unit(None).unwrap();
        set_lanes_per_row(Some(8)).unwrap();
        set_step_block(Some(2)).unwrap();
        assert_matches_the_oracle(&cases, "R = 1, W = 8, C = 2");
        // Two rows of eight lanes: about the registers of R = 1, W = 4 on a GPU, with half the
        // shared-memory reads per row (docs/measured/kernels-2026-11-27-registers.md).
        set_rows_per_unit(Some(2)).unwrap();
        set_step_block(Some(1)).unwrap();
        assert_matches_the_oracle(&cases, "R = 2, W = 8, C = 1");
    } else {
        peft_testing::skip(format!(
            "eight lanes per row not checked: this device's planes are {plane} wide"
        ));
        // Blocks of two still run.
        set_step_block(Some(2)).unwrap();
        assert_matches_the_oracle(&cases, "R = 2, W = 2, C = 2");
    }
}

/// The register-tiled forward, dQ and dK/dV kernels (`set_kernel_shape` with
/// `KernelShape::Tiles`, or `PEFT_KERNEL_FORWARD`, `PEFT_KERNEL_DQ`, `PEFT_KERNEL_DKDV=tiles`).
#[test]
fn tiled_kernels_match_the_oracle_and_are_the_kernels_taken() {
    let _settings = exclusive();
    let plane = plane_size();
    if plane < 8 {
        // The kernels reduce their row maxima and sums over eight lanes; the launch takes the
        // row kernels on narrower planes.
        peft_testing::skip(format!(
            "the tiled kernels need planes of eight, this device's are {plane}"
        ));
        return;
    }
    check_tiled_kernels::<Wgpu>();
}

/// The largest head dimension the kernels take. There the dK/dV kernel's query tile of 32 rows
/// would need 32.25 KiB of shared memory, over lavapipe's 32 KiB: the launch was refused without
/// an error and the gradients were whatever the reused buffers held (worst gradient error 5.4
/// on `Case::new(1, 2, 2, 17, 128, 7)`, found 2026-12-02); it now stages 16 rows where 32 do
/// not fit.
///
/// One row per unit (the GPU layout): with lavapipe's default of eight rows, 32 vectors each
/// and unrolled, Mesa took 1193 s of a CI run to compile the `d = 128` kernels; with one row
/// about 10 s. The row count changes what a unit keeps in registers, not the shared memory a
/// cube's tiles take, which is what this guards (with the 32-row tile put back it fails with a
/// gradient error of 9.3).
#[test]
fn head_dim_128_matches_the_oracle() {
    let _settings = exclusive();
    set_rows_per_unit(Some(1)).unwrap();
    let dev = Default::default();
    // GQA 3, a prefix, a padded row: every gradient, prefix ones included.
    let c = Case::new(2, 6, 2, 17, 128, 7).key_lengths(vec![17, 9]);
    let r = check::<Wgpu>(&c, 3, &dev, AttentionPath::Fused);
    assert!(r.passes(), "{c:?}: {r:?}");
}

/// f16 inputs: the kernels compute in f32 between casts and the results come back in f16.
/// (WGSL has no bf16; bf16 is checked on CUDA.)
#[test]
fn f16_runs_the_kernels_and_matches_the_oracle() {
    if in_own_process("f16_runs_the_kernels_and_matches_the_oracle", &[]) {
        assert_half_precision_matches_the_oracle::<Wgpu<f16, i32>>(Precision::F16);
    }
}

/// The fused path never materialises the `[B, H, L, P + L]` score matrix: the largest buffer
/// the kernels allocate during a forward and backward stays far below it.
#[test]
fn fused_forward_and_backward_allocate_no_score_matrix() {
    let _settings = exclusive();
    assert_fused_path_allocates_no_score_matrix::<Wgpu>(|dev| {
        WgpuRuntime::client(dev)
            .memory_usage()
            .expect("memory usage")
            .bytes_reserved
    });
}
