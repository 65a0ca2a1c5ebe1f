//! Prefix attention for burn-peft.
//!
//! Prefix tuning makes every decoder layer attend over `[P_k ; K]` and `[P_v ; V]`: `P` trained
//! key/value slots shared by the whole batch, followed by the sequence's own keys under a causal
//! mask. This crate owns that one operation:
//!
//! * [`PrefixAttentionBackend`] is a Burn backend extension trait. Its default methods are the
//!   **reference implementation**, written with ordinary tensor ops, so every backend (Flex,
//!   NdArray, and any backend a user brings) gets a correct path with one empty `impl`.
//! * The CubeCL backends (wgpu and CUDA, bare or fusion-wrapped) override the trait with **fused
//!   kernels** (feature `wgpu` / `cuda`): flash-style forward with an online softmax that never
//!   materialises the concatenation or the `[B, H, L, P + L]` score matrix, and an atomics-free
//!   backward.
//! * [`Autodiff`](burn::backend::Autodiff) wraps the op with a custom backward that recomputes the
//!   probabilities from the saved log-sum-exp, so training gets the fused backward too.
//!
//! # Semantics
//!
//! Queries `[B, H, L, d]`, keys and values `[B, Hkv, S, d]` with `H = g·Hkv` (grouped-query
//! attention: query head `h` reads key/value head `h / g`), an optional prefix `[Bp, Hkv, P, d]`
//! with `Bp = 1` (shared by the batch, never copied per row) or `Bp = B` (one prefix per row).
//! Query `i` sees every valid prefix slot and the sequence keys `j ≤ i + (S − L)` (causal,
//! aligned bottom-right, so a KV cache with `S > L` works unchanged). Optional per-row lengths
//! mask the tail of the prefix (`prefix_lengths`) and of the sequence keys (`key_lengths`).
//! A query row with no visible key at all outputs zeros, never NaN.
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::{Distribution, Tensor};
//! use peft_kernels::PrefixAttention;
//!
//! let device = Default::default();
//! let q = Tensor::<Flex, 4>::random([2, 6, 5, 8], Distribution::Default, &device);
//! let k = Tensor::<Flex, 4>::random([2, 2, 5, 8], Distribution::Default, &device);
//! let v = Tensor::<Flex, 4>::random([2, 2, 5, 8], Distribution::Default, &device);
//! let pk = Tensor::<Flex, 4>::random([1, 2, 3, 8], Distribution::Default, &device);
//! let pv = Tensor::<Flex, 4>::random([1, 2, 3, 8], Distribution::Default, &device);
//! let out = PrefixAttention::new(q, k, v).with_prefix(pk, pv).forward();
//! assert_eq!(out.dims(), [2, 6, 5, 8]);
//! ```
#![warn(missing_docs)]

mod autodiff;
pub mod backends;
pub mod baseline;
mod counts;
mod host;
pub mod layer_ops;
mod layout;
pub mod linear;
mod op;
mod path;
mod reference;

#[cfg(feature = "cube")]
pub mod cube;

/// Largest head dimension the CubeCL (wgpu, CUDA) prefix-attention kernels take; a call with a
/// larger one runs the reference path on those backends (`cube::MAX_HEAD_DIM`, tested in
/// `tests/common`'s wide-head case). Flex's host kernels take any head dimension.
pub const CUBE_MAX_HEAD_DIM: usize = 128;

pub use counts::{PathCounts, path_counts};
pub use layer_ops::{LayerOpsBackend, host_layer_op_calls, rms_norm, swiglu};
pub use layout::{
    BLOCK_SIZES, KernelPass, KernelShape, LANE_COUNTS, LayoutError, ROW_COUNTS,
    kernel_shape_override, lanes_per_row_override, rows_per_unit_override, set_kernel_shape,
    set_lanes_per_row, set_rows_per_unit, set_step_block, step_block_override,
};
pub use linear::{FrozenLinearBackend, FrozenWeight, WeightPrecision};
pub use op::{
    AttentionGrads, PrefixAttention, PrefixAttentionArgs, PrefixAttentionAutodiffBackend,
    PrefixAttentionBackend,
};
pub use path::{AttentionPath, attention_path, set_attention_path};
