//! The CUDA C++ that the CUDA runtime would compile for each kernel, generated without a GPU.
//!
//! CubeCL expands a kernel into its intermediate representation on the host, and the CUDA
//! runtime hands that to its C++ compiler before NVRTC turns the result into PTX. Only the
//! expansion needs a compute client, and only for the device properties, which these kernels do
//! not consult. So a wgpu client (lavapipe on a machine without a GPU) expands the kernels and
//! CubeCL's CUDA compiler prints the source a CUDA device would get. `scripts/kernel_registers.py`
//! feeds that source to NVRTC and `ptxas -v` to read each kernel's register count and spills for
//! a given GPU architecture: the resource figures that bound occupancy, checked where no GPU is
//! available.

use cubecl::{
    CubeTask,
    cuda::CudaCompiler,
    prelude::*,
    wgpu::{WgpuDevice, WgpuRuntime},
};

use super::{
    TILE, kernels,
    launch::{RowLaunch, TILED_COLUMNS, step_block, vector_size},
};

/// Units per plane (warp) on NVIDIA GPUs, for the cube sizes the launches choose.
const CUDA_PLANE: usize = 32;

/// One kernel's generated CUDA C++.
#[derive(Debug, Clone)]
pub struct KernelSource {
    /// Kernel name (`forward`, `dq`, `dkdv`, `forward_tiled`, `dq_tiled`, `dkdv_tiled`).
    pub name: &'static str,
    /// The C++ source, as the CUDA runtime would pass it to NVRTC.
    pub source: String,
}

/// The launch configuration of the generated kernels.
#[derive(Debug, Clone, Copy)]
pub struct SourceConfig {
    /// Head dimension `d`.
    pub head_dim: usize,
    /// Rows (forward, dQ) or columns (dK/dV) per unit, as `PEFT_KERNEL_ROWS` sets them.
    pub rows_per_unit: usize,
    /// Units sharing one row or column, as `PEFT_KERNEL_LANES` sets them (1, 2, 4 or 8; must
    /// divide the row's vectors).
    pub lanes: usize,
    /// Whether the head-dimension loops are unrolled (`PEFT_KERNEL_UNROLL`).
    pub unroll: bool,
}

/// Errors of [`cuda_sources`].
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// CubeCL's CUDA compiler rejected a kernel.
    #[error("CUDA compilation of the {kernel} kernel failed: {reason}")]
    Compile {
        /// Kernel name.
        kernel: &'static str,
        /// The compiler's message.
        reason: String,
    },
    /// The configuration is outside what the kernels take.
    #[error("head dimension {0} is outside 1..={max}", max = super::MAX_HEAD_DIM)]
    HeadDim(usize),
    /// A head dimension the tiled kernels do not take (they need a multiple of 32).
    #[error("head dimension {0}: the tiled kernels take multiples of 32 up to {max}", max = super::MAX_HEAD_DIM)]
    TiledHeadDim(usize),
    /// Rows per unit other than 1, 2, 4, 8 or 16.
    #[error("{0} rows per unit: the kernels take 1, 2, 4, 8 or 16")]
    RowsPerUnit(usize),
    /// Lanes per row other than 1, 2, 4 or 8, or not dividing the row's vectors.
    #[error(
        "{lanes} lanes per row: the kernels take 1, 2, 4 or 8 dividing the {vectors} vectors of a row"
    )]
    Lanes {
        /// The lanes asked for.
        lanes: usize,
        /// Vectors in one row at this head dimension.
        vectors: usize,
    },
}

/// The CUDA C++ of the forward, dQ and dK/dV kernels for `config` (f32 data, u32
/// lengths), expanded with a wgpu client on `device` (`WgpuDevice::Cpu` for lavapipe).
pub fn cuda_sources(
    device: &WgpuDevice,
    config: SourceConfig,
) -> Result<Vec<KernelSource>, SourceError> {
    if config.head_dim == 0 || config.head_dim > super::MAX_HEAD_DIM {
        return Err(SourceError::HeadDim(config.head_dim));
    }
    if !crate::ROW_COUNTS.contains(&config.rows_per_unit) {
        return Err(SourceError::RowsPerUnit(config.rows_per_unit));
    }
    let n = vector_size(config.head_dim);
    let dl = config.head_dim / n;
    let (rows, lanes, unroll) = (config.rows_per_unit, config.lanes, config.unroll);
    if !crate::LANE_COUNTS.contains(&lanes) || !dl.is_multiple_of(lanes) {
        return Err(SourceError::Lanes { lanes, vectors: dl });
    }
    let client = WgpuRuntime::client(device);
    // The cubes the CUDA launches use (the cube size bounds the registers a kernel may take):
    // the row-walking kernels' cube for this layout.
    let row_cube = RowLaunch::new(0, rows, lanes, CUDA_PLANE).dim(lanes);
    let block = step_block();
    let settings = |dim: CubeDim| KernelSettings::default().cube_dim(dim);
    let t = || TensorCompilationArg { inplace: None };
    let f32_ty = f32::as_type_native_unchecked().storage_type();
    let u32_ty = u32::as_type_native_unchecked().storage_type();
    let dtypes = [f32_ty, u32_ty];

    let forward = kernels::forward_kernel::ForwardKernel::<WgpuRuntime>::new(
        settings(row_cube),
        client.clone(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        scalars(),
        n,
        dl,
        TILE,
        rows,
        lanes,
        block,
        unroll,
        dtypes,
    );
    let dq = kernels::dq_kernel::DqKernel::<WgpuRuntime>::new(
        settings(row_cube),
        client.clone(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        scalars(),
        n,
        dl,
        TILE,
        rows,
        lanes,
        block,
        unroll,
        dtypes,
    );
    let dkdv = kernels::dkdv_kernel::DkdvKernel::<WgpuRuntime>::new(
        settings(row_cube),
        client,
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        scalars(),
        n,
        dl,
        TILE,
        rows,
        lanes,
        block,
        unroll,
        dtypes,
    );
    Ok(vec![
        compile("forward", forward)?,
        compile("dq", dq)?,
        compile("dkdv", dkdv)?,
    ])
}

/// The CUDA C++ of the register-tiled forward, dQ and dK/dV (`kernels/src/cube/tiled.rs`; named
/// `forward_tiled`, `dq_tiled` and `dkdv_tiled`) at head dimension `head_dim` (a multiple of 32,
/// the kernels' requirement), each with its launch's cube on a GPU: 128 units (dQ and dK/dV
/// with 16 row or column groups, taken wherever the device's shared memory allows them: on
/// Hopper at every head dimension). Their loops are unrolled by four steps whatever
/// `PEFT_KERNEL_UNROLL` says.
pub fn tiled_sources(
    device: &WgpuDevice,
    head_dim: usize,
) -> Result<Vec<KernelSource>, SourceError> {
    if head_dim == 0 || head_dim > super::MAX_HEAD_DIM || !head_dim.is_multiple_of(32) {
        return Err(SourceError::TiledHeadDim(head_dim));
    }
    let client = WgpuRuntime::client(device);
    let t = || TensorCompilationArg { inplace: None };
    let f32_ty = f32::as_type_native_unchecked().storage_type();
    let u32_ty = u32::as_type_native_unchecked().storage_type();
    let groups = super::tiled::TILED_GROUPS;
    let settings = || {
        KernelSettings::default()
            .cube_dim(CubeDim::new_1d((groups * super::tiled::TILED_LANES) as u32))
    };
    let forward = super::tiled::forward_tiled_kernel::ForwardTiledKernel::<WgpuRuntime>::new(
        settings(),
        client.clone(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        scalars(),
        4,
        head_dim / 4,
        TILED_COLUMNS,
        [f32_ty, u32_ty],
    );
    let dq = super::tiled::dq_tiled_kernel::DqTiledKernel::<WgpuRuntime>::new(
        settings(),
        client.clone(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        scalars(),
        4,
        head_dim / 4,
        TILED_COLUMNS,
        groups,
        [f32_ty, u32_ty],
    );
    let dkdv = super::tiled::dkdv_tiled_kernel::DkdvTiledKernel::<WgpuRuntime>::new(
        settings(),
        client,
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        scalars(),
        4,
        head_dim / 4,
        TILED_COLUMNS,
        groups,
        [f32_ty, u32_ty],
    );
    Ok(vec![
        compile("forward_tiled", forward)?,
        compile("dq_tiled", dq)?,
        compile("dkdv_tiled", dkdv)?,
    ])
}

/// The compilation argument of [`kernels::AttentionScalars`] (runtime scalars: nothing to
/// compile in).
fn scalars() -> kernels::AttentionScalarsCompilationArg {
    kernels::AttentionScalarsCompilationArg {
        scale: (),
        prefix: (),
        prefix_shared: (),
        lengths_given: (),
    }
}

fn compile<K: CubeKernel>(name: &'static str, kernel: K) -> Result<KernelSource, SourceError> {
    let task = KernelTask::<CudaCompiler, K>::new(kernel);
    let address = u32::as_type_native_unchecked().storage_type();
    task.compile(
        &mut Default::default(),
        &Default::default(),
        ExecutionMode::Checked,
        address,
    )
    .map(|compiled| KernelSource {
        name,
        source: compiled.source,
    })
    .map_err(|e| SourceError::Compile {
        kernel: name,
        reason: e.to_string(),
    })
}
