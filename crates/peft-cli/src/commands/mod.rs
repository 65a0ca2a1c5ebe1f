//! One module per subcommand.

pub mod bench;
pub mod coordinator;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use peft_kernels::{PrefixAttentionBackend, WeightPrecision};
use peft_models::{Checkpoint, Decoder};

/// Opens the model checkpoint at `path` (GGUF file or Hugging Face directory), with the path in
/// the error.
pub fn open_model(path: &Path) -> Result<Checkpoint> {
    Checkpoint::open(path).with_context(|| format!("opening model {}", path.display()))
}

/// Loads `ckpt`'s model in `precision` on `device`. Where bf16 weights run on the portable CPU
/// kernel (no AMX, no AVX512-BF16), says on stderr what that means here ([`CpuKernel::note`]:
/// decoding faster, training not).
///
/// [`CpuKernel::note`]: peft_kernels::linear::cpu::CpuKernel::note
pub fn load_model<B: PrefixAttentionBackend>(
    ckpt: &Checkpoint,
    device: &B::Device,
    precision: WeightPrecision,
) -> Result<Decoder<B>> {
    let model = ckpt.load_with_precision::<B>(device, precision)?;
    if let Some(kernel) = model
        .lm_head
        .weight
        .cpu_kernel()
        .filter(|k| !k.uses_bf16_unit())
    {
        eprintln!("{}", kernel.note());
    }
    Ok(model)
}

/// Training checkpoints kept next to an adapter (`DIR/checkpoints/step-*`), oldest first.
pub fn train_checkpoints(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir.join("checkpoints")) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .collect();
    found.sort();
    found
}
