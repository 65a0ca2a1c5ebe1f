//! Kernels that run on the host CPU over plain f32 slices, on the Rayon threads: prefix
//! attention (`attention`) and the checked strided products it is built from ([`gemm`]),
//! RMSNorm and SwiGLU (`elementwise`), the LM head loss's row pass (`log_softmax`) and the
//! vectorisable `exp` they share (`exp`). `flex` and `flex_ops` connect them to Burn's Flex
//! backend, which runs everything else of a step.

#[cfg(feature = "flex")]
pub(crate) mod attention;
#[cfg(feature = "flex")]
pub(crate) mod elementwise;
#[cfg(feature = "flex")]
pub(crate) mod exp;
#[cfg(feature = "flex")]
pub(crate) mod flex;
#[cfg(feature = "flex")]
mod flex_ops;
#[cfg(feature = "flex")]
pub(crate) mod flex_tensor;
pub(crate) mod gemm;
#[cfg(feature = "flex")]
pub(crate) mod log_softmax;

/// Element operations below which a call stays on the calling thread. A call from outside the
/// Rayon pool hands its work to a worker and waits, which costs tens of microseconds: more than
/// a decoding step's few thousand elements take where they are (measured: with every layer
/// operation handed over, bf16 decoding ran at 27 instead of 35 tokens/s).
const MIN_PARALLEL_OPS: usize = 1 << 15;

/// Multiply-adds of attention scores below which a call stays on the calling thread: the
/// products run at tens of GFLOP/s, so a million take about as long as [`MIN_PARALLEL_OPS`]
/// element operations.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) const MIN_PARALLEL_MACS: usize = 1 << 20;

/// Whether `ops` element operations go to the Rayon threads.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) fn parallel(ops: usize) -> bool {
    ops >= MIN_PARALLEL_OPS
}
