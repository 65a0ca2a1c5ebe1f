//! Kernels that run on the host CPU over plain f32 slices, on the Rayon threads: prefix
//! attention (`attention`) and the checked strided products it is built from ([`gemm`]),
//! RMSNorm and SwiGLU (`elementwise`). `flex` and `flex_ops` connect them to Burn's Flex
//! backend, which runs everything else of a step.

#[cfg(feature = "flex")]
pub(crate) mod attention;
#[cfg(feature = "flex")]
pub(crate) mod elementwise;
#[cfg(feature = "flex")]
pub(crate) mod flex;
#[cfg(feature = "flex")]
mod flex_ops;
pub(crate) mod gemm;
