//! The fusion-wrapped CubeCL backends (what `burn::backend::Wgpu` and `Cuda` resolve to).

use burn_fusion::{Fusion, FusionBackend};

use crate::PrefixAttentionBackend;

impl<B: FusionBackend + PrefixAttentionBackend> PrefixAttentionBackend for Fusion<B> {}
