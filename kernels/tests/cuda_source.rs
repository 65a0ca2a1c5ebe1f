//! The CUDA C++ of the fused kernels, generated without a GPU (`peft_kernels::cube::cuda_source`,
//! which `scripts/kernel_registers.py` compiles with NVRTC and ptxas).
#![cfg(all(feature = "cuda", feature = "wgpu"))]

use cubecl::wgpu::WgpuDevice;
use peft_kernels::cube::cuda_source::{SourceConfig, SourceError, cuda_sources, tiled_sources};

fn sources(head_dim: usize, rows_per_unit: usize, lanes: usize) -> Vec<(&'static str, String)> {
    let config = SourceConfig {
        head_dim,
        rows_per_unit,
        lanes,
        unroll: true,
    };
    cuda_sources(&WgpuDevice::Cpu, config)
        .expect("the kernels compile to CUDA C++")
        .into_iter()
        .map(|s| (s.name, s.source))
        .collect()
}

/// Sizes of the per-unit `float_4` register arrays a kernel declares (`float_4 l_arr_N[SIZE];`).
fn vector_arrays(source: &str) -> Vec<usize> {
    source
        .lines()
        .filter_map(|line| line.trim().strip_prefix("float_4 l_arr_"))
        .filter_map(|rest| rest.split_once('[')?.1.split_once(']')?.0.parse().ok())
        .collect()
}

#[test]
fn every_kernel_is_a_cuda_entry_point_for_float4_rows() {
    let all = sources(64, 1, 1);
    let names: Vec<_> = all.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["forward", "dq", "dkdv"]);
    for (name, source) in &all {
        let entry = format!("{name}_kernel_f_f32");
        assert!(
            source.contains("extern \"C\" __global__") && source.contains(&entry),
            "{name}: no global entry point `{entry}…` in the generated source"
        );
        // d = 64 is read as 4-float vectors.
        assert!(
            source.contains("float_4"),
            "{name}: rows are not vectorised"
        );
    }
}

#[test]
fn rows_lanes_and_head_dim_size_the_register_arrays() {
    // Units keep R rows (columns) of d/4 vectors, a W-th of each with W lanes: the forward its
    // query rows and output accumulators (2 arrays), dQ also its output-gradient rows (3), dK/dV
    // its key and value columns and their accumulators (4).
    for (head_dim, rows, lanes) in [
        (64, 1, 1),
        (64, 8, 1),
        (32, 2, 1),
        (64, 1, 4),
        (32, 1, 2),
        (128, 1, 8),
    ] {
        let all = sources(head_dim, rows, lanes);
        let expected = rows * head_dim / 4 / lanes;
        for (kernel, count) in [("forward", 2), ("dq", 3), ("dkdv", 4)] {
            let arrays = vector_arrays(&all.iter().find(|(n, _)| *n == kernel).unwrap().1);
            assert_eq!(
                arrays.iter().filter(|&&n| n == expected).count(),
                count,
                "{kernel}, d = {head_dim}, R = {rows}, W = {lanes}: expected {count} float_4 \
                 arrays of {expected}, found {arrays:?}"
            );
        }
    }
}

/// The xor masks of the kernel's warp shuffles (`__shfl_xor_sync(-1, VALUE, uint32(MASK))`).
fn shuffle_masks(source: &str) -> Vec<u32> {
    source
        .split("__shfl_xor_sync(-1, ")
        .skip(1)
        .filter_map(|rest| {
            let mask = rest.split_once("uint32(")?.1.split_once(')')?.0;
            mask.parse().ok()
        })
        .collect()
}

#[test]
fn lanes_reduce_dot_products_with_warp_shuffles() {
    // One lane: no shuffles at all.
    for (name, source) in sources(64, 1, 1) {
        assert!(
            !source.contains("__shfl") && !source.contains("__any_sync"),
            "{name}: plane operations with one lane"
        );
    }
    // W lanes: a butterfly of log2(W) steps (xor 1, 2, …) per dot product — one dot product in
    // the forward, two (scores and dP) in dQ and dK/dV, and in dQ before those the row's
    // `D = dO · O` — and the skip is a warp vote.
    for (lanes, steps) in [(2, vec![1]), (4, vec![1, 2]), (8, vec![1, 2, 4])] {
        for (name, source) in sources(64, 1, lanes) {
            let dots = match name {
                "forward" => 1,
                "dq" => 3,
                _ => 2,
            };
            let expected: Vec<u32> = (0..dots).flat_map(|_| steps.clone()).collect();
            assert_eq!(shuffle_masks(&source), expected, "{name}, W = {lanes}");
            assert!(
                source.contains("__any_sync(-1"),
                "{name}, W = {lanes}: the skip must be a warp vote"
            );
        }
    }
}

#[test]
fn configurations_the_kernels_do_not_take_are_errors() {
    let config = |head_dim, rows_per_unit| SourceConfig {
        head_dim,
        rows_per_unit,
        lanes: 1,
        unroll: true,
    };
    for head_dim in [0, 129] {
        assert!(matches!(
            cuda_sources(&WgpuDevice::Cpu, config(head_dim, 1)),
            Err(SourceError::HeadDim(d)) if d == head_dim
        ));
    }
    for rows in [0, 3, 32] {
        assert!(matches!(
            cuda_sources(&WgpuDevice::Cpu, config(64, rows)),
            Err(SourceError::RowsPerUnit(r)) if r == rows
        ));
    }
    // d = 6 is three 2-float vectors: two lanes cannot split them; 3 and 16 are not lane counts.
    for (head_dim, lanes) in [(6, 2), (64, 3), (64, 16)] {
        let config = SourceConfig {
            lanes,
            ..config(head_dim, 1)
        };
        assert!(matches!(
            cuda_sources(&WgpuDevice::Cpu, config),
            Err(SourceError::Lanes { lanes: w, .. }) if w == lanes
        ));
    }
}

#[test]
fn the_tiled_kernels_reduce_rows_over_eight_lanes_and_hold_row_blocks() {
    for head_dim in [32, 64, 128] {
        let tiled = tiled_sources(&WgpuDevice::Cpu, head_dim)
            .expect("the tiled kernels compile to CUDA C++");
        let names: Vec<_> = tiled.iter().map(|s| s.name).collect();
        assert_eq!(names, ["forward_tiled", "dq_tiled", "dkdv_tiled"]);
        for kernel in &tiled {
            let name = kernel.name;
            assert!(kernel.source.contains(&format!("{name}_kernel_f_f32")));
            // Forward: per tile, each of a unit's four rows takes its maximum over the row's
            // eight lanes, at the end each row's sum: eight butterflies of xor 1, 2, 4. dQ:
            // each row's `D = dO · O` once, four butterflies. dK/dV: none (each score is one
            // unit's, and the log-sum-exp and D come from the dQ kernel).
            let butterflies = match name {
                "forward_tiled" => 8,
                "dq_tiled" => 4,
                _ => 0,
            };
            let expected: Vec<u32> = (0..butterflies).flat_map(|_| [1, 2, 4]).collect();
            assert_eq!(
                shuffle_masks(&kernel.source),
                expected,
                "{name}, d = {head_dim}"
            );
            // The accumulator (output, dQ, or each of dK and dV): four rows or columns of the
            // lane's d/32 vectors — not whole rows.
            let arrays = vector_arrays(&kernel.source);
            assert!(
                arrays.contains(&(head_dim / 8)),
                "{name}, d = {head_dim}: no float_4 accumulator of {} in {arrays:?}",
                head_dim / 8
            );
            assert!(
                !arrays.contains(&(head_dim / 4)),
                "{name}, d = {head_dim}: a whole row in registers ({arrays:?})"
            );
        }
    }
    for head_dim in [0, 48, 160] {
        assert!(matches!(
            tiled_sources(&WgpuDevice::Cpu, head_dim),
            Err(SourceError::TiledHeadDim(d)) if d == head_dim
        ));
    }
}
