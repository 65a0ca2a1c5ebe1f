//! Fused prefix-attention kernels for Burn's CubeCL backends (wgpu and CUDA).

mod fusion;

use burn_cubecl::{CubeBackend, CubeRuntime, FloatElement, IntElement, element::BoolElement};

use crate::PrefixAttentionBackend;

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> PrefixAttentionBackend
    for CubeBackend<R, F, I, BT>
{
}
