//! The CUDA C++ of the fused kernels, generated without a GPU (`peft_kernels::cube::cuda_source`,
//! which `scripts/kernel_registers.py` compiles with NVRTC and ptxas).
#![cfg(all(feature = "cuda", feature = "wgpu"))]

use cubecl::wgpu::WgpuDevice;
use peft_kernels::cube::cuda_source::{SourceConfig, SourceError, cuda_sources};

fn sources(head_dim: usize, rows_per_unit: usize) -> Vec<(&'static str, String)> {
    let config = SourceConfig {
        head_dim,
        rows_per_unit,
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
    let all = sources(64, 1);
    let names: Vec<_> = all.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["forward", "delta", "dq", "dkdv"]);
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
fn rows_per_unit_and_head_dim_size_the_register_arrays() {
    // The forward keeps the unit's query rows and output accumulators: R · d/4 vectors each.
    for (head_dim, rows) in [(64, 1), (64, 8), (32, 2)] {
        let all = sources(head_dim, rows);
        let forward = &all.iter().find(|(n, _)| *n == "forward").unwrap().1;
        let arrays = vector_arrays(forward);
        let expected = rows * head_dim / 4;
        assert_eq!(
            arrays.iter().filter(|&&n| n == expected).count(),
            2,
            "d = {head_dim}, R = {rows}: expected two float_4 arrays of {expected}, found {arrays:?}"
        );
    }
}

#[test]
fn configurations_the_kernels_do_not_take_are_errors() {
    let config = |head_dim, rows_per_unit| SourceConfig {
        head_dim,
        rows_per_unit,
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
}
