//! One module per subcommand.

pub mod bench;
pub mod coordinator;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use peft_models::Checkpoint;

/// Opens the model checkpoint at `path` (GGUF file or Hugging Face directory), with the path in
/// the error.
pub fn open_model(path: &Path) -> Result<Checkpoint> {
    Checkpoint::open(path).with_context(|| format!("opening model {}", path.display()))
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
