//! Process-wide choice between the fused op and the unfused composition of tensor ops.

use std::sync::atomic::{AtomicU8, Ordering};

/// Which implementation [`PrefixAttention::forward`](crate::PrefixAttention::forward) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionPath {
    /// The fused kernels where the backend has them, the unfused path elsewhere.
    #[default]
    Auto,
    /// Always the backend's op: the fused kernels on CubeCL backends; elsewhere the reference op,
    /// whose backward is the analytic one that recomputes probabilities from the log-sum-exp.
    Fused,
    /// Always the composition of ordinary tensor ops, differentiated by Burn's autodiff graph.
    /// This is what Burn's own attention does; benchmarks use it as the baseline.
    Unfused,
}

static PATH: AtomicU8 = AtomicU8::new(0);

/// Sets the attention path for the whole process (benchmarks and tests use this).
pub fn set_attention_path(path: AttentionPath) {
    let code = match path {
        AttentionPath::Auto => 0,
        AttentionPath::Fused => 1,
        AttentionPath::Unfused => 2,
    };
    PATH.store(code, Ordering::Relaxed);
}

/// The attention path currently in force.
pub fn attention_path() -> AttentionPath {
    match PATH.load(Ordering::Relaxed) {
        1 => AttentionPath::Fused,
        2 => AttentionPath::Unfused,
        _ => AttentionPath::Auto,
    }
}
