//! `peft bench`: training-step, generation and attention benchmarks, one file each.

mod attention;
mod generate;
mod train;

use anyhow::Result;
use clap::Subcommand;
use peft_kernels::backends::dispatch;

pub use attention::AttentionBench;
pub use generate::GenerateBench;
pub use train::TrainBench;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Training steps (forward, backward, AdamW) on random tokens with labels = inputs.
    Train(TrainBench),
    /// Incremental decoding tokens/s with the KV cache.
    Generate(GenerateBench),
    /// Fused prefix attention against Burn's unfused attention, forward and forward+backward.
    Attention(AttentionBench),
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Median of timings in milliseconds.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs `peft bench`.
pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Train(a) => dispatch(a.backend, train::Train(a))?,
        BenchCommand::Generate(a) => dispatch(a.backend, generate::Gen(a))?,
        BenchCommand::Attention(a) => dispatch(a.backend, attention::Attn(a))?,
    }
}
