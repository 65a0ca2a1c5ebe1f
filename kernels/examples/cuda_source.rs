//! Writes the CUDA C++ of the fused kernels to a folder, without a GPU (a wgpu client expands
//! them; lavapipe is enough), and the tiled forward's, dQ's and dK/dV's where the head
//! dimension is a multiple of 32. `scripts/kernel_registers.py` compiles the files with NVRTC
//! and `ptxas -v` to report registers and spills.
//!
//! ```sh
//! cargo run -p peft-kernels --features wgpu,cuda --example cuda_source -- OUT_DIR [HEAD_DIM ROWS_PER_UNIT UNROLL LANES]
//! ```

use std::{path::PathBuf, process::ExitCode};

use cubecl::wgpu::WgpuDevice;
use peft_kernels::cube::cuda_source::{SourceConfig, cuda_sources, tiled_sources};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: cuda_source OUT_DIR [HEAD_DIM=64 ROWS_PER_UNIT=1 UNROLL=1 LANES=1]";
    let Some(out) = args.first().map(PathBuf::from) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let num = |i: usize, default: usize| -> Result<usize, String> {
        args.get(i).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| format!("argument {i}: `{v}` is not a number\n{usage}"))
        })
    };
    let config = match (num(1, 64), num(2, 1), num(3, 1), num(4, 1)) {
        (Ok(head_dim), Ok(rows_per_unit), Ok(unroll), Ok(lanes)) => SourceConfig {
            head_dim,
            rows_per_unit,
            lanes,
            unroll: unroll != 0,
        },
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let result = cuda_sources(&WgpuDevice::Cpu, config)
        .map(|mut sources| {
            // The tiled forward, dQ and dK/dV, where the head dimension fits them.
            if let Ok(tiled) = tiled_sources(&WgpuDevice::Cpu, config.head_dim) {
                sources.extend(tiled);
            }
            sources
        })
        .map_err(|e| e.to_string())
        .and_then(|sources| {
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            for s in sources {
                let path = out.join(format!("{}.cu", s.name));
                std::fs::write(&path, s.source).map_err(|e| format!("{}: {e}", path.display()))?;
                println!("{}", path.display());
            }
            Ok(())
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
