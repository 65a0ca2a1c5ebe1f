//! Shared pieces of the example programs: command-line options, how a program runs, and data
//! loading.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn_peft::core::train::{
    Observer, StepMetrics,
    data::{Dataset, Truncation, read_jsonl},
};
use burn_peft::kernels::backends::{BackendKind, BackendVisitor, dispatch};
use burn_peft::models::Tokenizer;

/// Options every example takes.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// Compute backend: flex, ndarray, wgpu or cuda (compiled in with the cargo feature).
    #[arg(long, default_value = "flex")]
    pub backend: BackendKind,
    /// The model (scripts/fetch-model.sh puts SmolLM2 here).
    #[arg(long, default_value = burn_peft::models::DEFAULT_MODEL_PATH)]
    pub model: PathBuf,
    /// Where the trained adapter and its metrics go.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `visitor` on `backend` as a training program should: the allocator tuned for training
/// (call this before anything starts a thread) and the work on a worker of a Rayon pool, so
/// that each parallel CPU operation does not put `main` to sleep and wake it
/// (`burn_peft::core::threads`).
pub fn run<V>(backend: BackendKind, visitor: V) -> Result<()>
where
    V: BackendVisitor<Output = Result<()>> + Send,
{
    // Reuse freed activation buffers instead of faulting in fresh pages every step.
    burn_peft::core::train::allocator::tune_allocator_for_training();
    burn_peft::core::threads::run_on_worker_pool(None, move || dispatch(backend, visitor))???;
    Ok(())
}

/// A dataset under `examples/data/`.
pub fn data_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/data")
        .join(relative)
}

/// Reads and tokenises a JSONL file of the examples.
pub fn load(path: &Path, tok: &Tokenizer, max_len: usize) -> Result<Dataset> {
    let records = read_jsonl(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Dataset::tokenize(
        path,
        records,
        tok,
        max_len,
        Truncation::Left,
    )?)
}

/// Prints the loss and throughput every 10 steps.
pub struct Progress;

impl Observer for Progress {
    fn on_step(&mut self, m: &StepMetrics) {
        if m.step.is_multiple_of(10) {
            eprintln!(
                "step {:>3}: loss {:.4} ({:.0} tokens/s)",
                m.step,
                m.loss,
                m.tokens as f64 / m.seconds
            );
        }
    }
}
