//! The concrete backends this project is built for, and how a binary picks one at run time.
//!
//! Library code is generic over `B: PrefixAttentionBackend`; only binaries and examples name a
//! concrete backend. They do it through [`dispatch`], which turns a [`BackendKind`] (parsed from
//! `--backend`) into a call of a [`BackendVisitor`]'s generic method, or a clear error when that
//! backend was not compiled in.

use std::{fmt, str::FromStr};

use crate::PrefixAttentionBackend;

#[cfg(feature = "flex")]
impl PrefixAttentionBackend for burn::backend::Flex {
    /// The host kernels of `crate::host` (f32 tensors; others take the reference path).
    fn has_fused_prefix_attention() -> bool {
        true
    }

    fn prefix_attention_forward(
        args: crate::PrefixAttentionArgs<Self>,
    ) -> (
        burn::tensor::ops::FloatTensor<Self>,
        burn::tensor::ops::FloatTensor<Self>,
    ) {
        crate::host::flex::forward(args)
    }

    fn prefix_attention_backward(
        args: crate::PrefixAttentionArgs<Self>,
        out: burn::tensor::ops::FloatTensor<Self>,
        lse: burn::tensor::ops::FloatTensor<Self>,
        grad_out: burn::tensor::ops::FloatTensor<Self>,
    ) -> crate::AttentionGrads<Self> {
        crate::host::flex::backward(args, out, lse, grad_out)
    }

    fn runs_on_host_thread() -> bool {
        true
    }

    fn single_threaded_matvec() -> bool {
        true
    }
}

/// NdArray with its default element types (f32 floats); other element types can implement the
/// trait the same way.
#[cfg(feature = "ndarray")]
impl PrefixAttentionBackend for burn::backend::NdArray {
    fn runs_on_host_thread() -> bool {
        true
    }
}

/// NdArray multiplies frozen weights with its own matmul (the trait's defaults).
#[cfg(feature = "ndarray")]
impl crate::FrozenLinearBackend for burn::backend::NdArray {}

/// NdArray runs the layer operations as compositions of its tensor ops (the trait's defaults).
#[cfg(feature = "ndarray")]
impl crate::LayerOpsBackend for burn::backend::NdArray {}

/// A backend selectable at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Burn's Flex CPU backend (the default).
    Flex,
    /// Burn's NdArray CPU backend.
    Ndarray,
    /// wgpu (Vulkan, Metal, DX12; on a machine without a GPU, Mesa's lavapipe CPU driver).
    Wgpu,
    /// CUDA on an NVIDIA GPU.
    Cuda,
}

impl BackendKind {
    /// Every backend, in the order `--help` lists them.
    pub const ALL: [BackendKind; 4] = [Self::Flex, Self::Ndarray, Self::Wgpu, Self::Cuda];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        }
    }

    /// Whether this binary was compiled with the backend's cargo feature.
    pub fn is_compiled(self) -> bool {
        match self {
            Self::Flex => cfg!(feature = "flex"),
            Self::Ndarray => cfg!(feature = "ndarray"),
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The backends compiled into this binary.
    pub fn compiled() -> Vec<BackendKind> {
        Self::ALL.into_iter().filter(|k| k.is_compiled()).collect()
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors of backend selection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    /// The name is not one of the known backends.
    #[error("unknown backend `{0}`; expected one of flex, ndarray, wgpu, cuda")]
    Unknown(String),
    /// The backend exists but this binary was built without its cargo feature.
    #[error(
        "backend `{kind}` is not compiled into this binary (compiled: {compiled}); rebuild with `--features {kind}`"
    )]
    NotCompiled {
        /// The requested backend.
        kind: BackendKind,
        /// The backends that are available, comma-separated.
        compiled: String,
    },
}

impl FromStr for BackendKind {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| BackendError::Unknown(s.to_string()))
    }
}

/// Code to run on whichever backend the user picked.
pub trait BackendVisitor {
    /// What the visit returns.
    type Output;

    /// Runs on backend `B` with its default device. `Autodiff<B>` is available for training.
    fn visit<B: PrefixAttentionBackend>(self, device: B::Device) -> Self::Output;
}

/// Runs `visitor` on the backend `kind`, or explains why that backend is unavailable.
pub fn dispatch<V: BackendVisitor>(
    kind: BackendKind,
    visitor: V,
) -> Result<V::Output, BackendError> {
    match kind {
        #[cfg(feature = "flex")]
        BackendKind::Flex => Ok(visitor.visit::<burn::backend::Flex>(Default::default())),
        #[cfg(feature = "ndarray")]
        BackendKind::Ndarray => Ok(visitor.visit::<burn::backend::NdArray>(Default::default())),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(visitor.visit::<burn::backend::Wgpu>(Default::default())),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => Ok(visitor.visit::<burn::backend::Cuda>(Default::default())),
        #[allow(unreachable_patterns)]
        other => {
            // Unused when no backend feature is enabled.
            drop(visitor);
            Err(BackendError::NotCompiled {
                kind: other,
                compiled: BackendKind::compiled()
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_case_insensitively() {
        assert_eq!("FLEX".parse::<BackendKind>(), Ok(BackendKind::Flex));
        assert_eq!("wgpu".parse::<BackendKind>(), Ok(BackendKind::Wgpu));
        assert_eq!(
            "tpu".parse::<BackendKind>(),
            Err(BackendError::Unknown("tpu".into()))
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn missing_backend_is_a_clear_error() {
        struct Name;
        impl BackendVisitor for Name {
            type Output = ();
            fn visit<B: PrefixAttentionBackend>(self, _: B::Device) {}
        }
        let err = dispatch(BackendKind::Cuda, Name).unwrap_err();
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }
}
