//! Training checkpoints: everything needed to continue a run exactly — the full adapter (the
//! MLP of a reparameterised prefix included), the optimizer state and the loop position.
//!
//! A checkpoint is a directory `checkpoints/step-NNNNNNNN/` written under a temporary name and
//! renamed into place once complete, so a crash mid-write leaves the previous checkpoints
//! untouched and the half-written one invisible. Only the newest `keep` are kept.

use std::path::{Path, PathBuf};

use burn::{
    module::Module,
    optim::{Optimizer, adaptor::OptimizerAdaptor},
    record::{BinBytesRecorder, FullPrecisionSettings, Recorder},
    tensor::backend::AutodiffBackend,
};
use serde::{Deserialize, Serialize};

use crate::{
    adapter::Adapter,
    error::{PeftError, Result},
    fs::write_atomic,
    prefix::{Prefix, PrefixLayout, PrefixParams},
    prompt::SoftPrompt,
};

/// Sub-directory of a run holding its checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
const ADAPTER_FILE: &str = "adapter.bin";
const OPTIMIZER_FILE: &str = "optimizer.bin";
/// The file of a checkpoint holding its [`TrainState`].
pub const STATE_FILE: &str = "state.json";

type Bytes = BinBytesRecorder<FullPrecisionSettings>;

/// The shape of an adapter, enough to rebuild an empty one to load values into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AdapterShape {
    /// A soft prompt `[n, hidden]`.
    Prompt {
        /// Virtual tokens.
        n: usize,
        /// Hidden size.
        hidden: usize,
    },
    /// A direct prefix.
    Prefix {
        /// Slots.
        n: usize,
        /// Layers.
        layers: usize,
        /// Key/value heads.
        kv_heads: usize,
        /// Head dimension.
        head_dim: usize,
    },
    /// A reparameterised prefix.
    PrefixMlp {
        /// Slots.
        n: usize,
        /// Layers.
        layers: usize,
        /// Key/value heads.
        kv_heads: usize,
        /// Head dimension.
        head_dim: usize,
        /// Width of `P'`.
        d_in: usize,
        /// MLP hidden width.
        d_hidden: usize,
    },
}

impl AdapterShape {
    /// The shape of `adapter`.
    pub fn of<B: burn::tensor::backend::Backend>(adapter: &Adapter<B>) -> Self {
        match adapter {
            Adapter::Prompt(p) => Self::Prompt {
                n: p.len(),
                hidden: p.embedding.dims()[1],
            },
            Adapter::Prefix(p) => {
                let PrefixLayout {
                    num_layers,
                    kv_heads,
                    head_dim,
                } = p.layout();
                match &p.params {
                    PrefixParams::Direct(_) => Self::Prefix {
                        n: p.len(),
                        layers: num_layers,
                        kv_heads,
                        head_dim,
                    },
                    PrefixParams::Mlp(m) => Self::PrefixMlp {
                        n: p.len(),
                        layers: num_layers,
                        kv_heads,
                        head_dim,
                        d_in: m.embedding.dims()[1],
                        d_hidden: m.hidden.weight.dims()[1],
                    },
                }
            }
        }
    }

    /// An adapter of this shape (zero-filled) to load recorded values into.
    pub fn skeleton<B: burn::tensor::backend::Backend>(&self, device: &B::Device) -> Adapter<B> {
        let zeros = |shape: [usize; 2]| burn::tensor::Tensor::<B, 2>::zeros(shape, device);
        match *self {
            Self::Prompt { n, hidden } => {
                Adapter::Prompt(SoftPrompt::from_tensor(zeros([n, hidden])))
            }
            Self::Prefix {
                n,
                layers,
                kv_heads,
                head_dim,
            } => {
                let layout = PrefixLayout {
                    num_layers: layers,
                    kv_heads,
                    head_dim,
                };
                Adapter::Prefix(Prefix::direct(zeros([n, layout.width()]), layout))
            }
            Self::PrefixMlp {
                n,
                layers,
                kv_heads,
                head_dim,
                d_in,
                d_hidden,
            } => {
                let layout = PrefixLayout {
                    num_layers: layers,
                    kv_heads,
                    head_dim,
                };
                Adapter::Prefix(Prefix::mlp(n, d_in, d_hidden, 0, layout, device))
            }
        }
    }
}

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    /// Micro-batches consumed (the data position).
    pub micro_batches: usize,
    /// Real tokens processed.
    pub tokens: u64,
    /// The adapter's shape.
    pub shape: AdapterShape,
    /// Loss of the last step.
    pub last_loss: f64,
}

/// Directory name of the checkpoint after `step` optimizer steps.
pub fn checkpoint_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// Complete checkpoints under `run_dir`, oldest first.
pub fn list_checkpoints(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(run_dir.join(CHECKPOINTS_DIR)) else {
        return Vec::new();
    };
    let mut found: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            let path = e.path();
            path.join(STATE_FILE).is_file().then_some((step, path))
        })
        .collect();
    found.sort();
    found
}

/// The newest complete checkpoint under `run_dir`.
pub fn latest_checkpoint(run_dir: &Path) -> Option<PathBuf> {
    list_checkpoints(run_dir).pop().map(|(_, p)| p)
}

/// A checkpoint staged on disk under a temporary name, not yet visible.
#[derive(Debug)]
pub struct StagedCheckpoint {
    staging: PathBuf,
    target: PathBuf,
}

/// Writes the files of a checkpoint into a temporary directory next to its final place.
pub fn stage_checkpoint<B: AutodiffBackend, O: Optimizer<Adapter<B>, B>>(
    run_dir: &Path,
    adapter: &Adapter<B>,
    optim: &O,
    state: &TrainState,
) -> Result<StagedCheckpoint> {
    let root = run_dir.join(CHECKPOINTS_DIR);
    let target = root.join(checkpoint_name(state.step));
    let staging = root.join(format!(
        ".{}.partial-{}",
        checkpoint_name(state.step),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| PeftError::io(&staging, e))?;
    let recorder = Bytes::default();
    let adapter_bytes = Recorder::<B>::record(&recorder, adapter.clone().into_record(), ())
        .map_err(|e| PeftError::Training(format!("serialising the adapter: {e}")))?;
    let optim_bytes = Recorder::<B>::record(&recorder, optim.to_record(), ())
        .map_err(|e| PeftError::Training(format!("serialising the optimizer state: {e}")))?;
    write_atomic(&staging.join(ADAPTER_FILE), &adapter_bytes)?;
    write_atomic(&staging.join(OPTIMIZER_FILE), &optim_bytes)?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| PeftError::Training(e.to_string()))?;
    write_atomic(&staging.join(STATE_FILE), &json)?;
    Ok(StagedCheckpoint { staging, target })
}

impl StagedCheckpoint {
    /// Makes the checkpoint visible (one rename), then deletes all but the newest `keep`
    /// checkpoints and any leftover partial directories.
    pub fn commit(self, keep: usize) -> Result<PathBuf> {
        if self.target.exists() {
            std::fs::remove_dir_all(&self.target).map_err(|e| PeftError::io(&self.target, e))?;
        }
        std::fs::rename(&self.staging, &self.target).map_err(|e| PeftError::io(&self.target, e))?;
        let root = self
            .target
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        if let Some(run_dir) = root.parent() {
            let all = list_checkpoints(run_dir);
            for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
                let _ = std::fs::remove_dir_all(old);
            }
        }
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.filter_map(|e| e.ok()) {
                if e.file_name().to_string_lossy().starts_with('.') {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(self.target)
    }
}

/// Reads a checkpoint directory: the adapter, the optimizer state (loaded into `optim`) and the
/// loop position.
pub fn load_checkpoint<B: AutodiffBackend, O: Optimizer<Adapter<B>, B>>(
    dir: &Path,
    optim: O,
    device: &B::Device,
) -> Result<(Adapter<B>, O, TrainState)> {
    let read =
        |name: &str| std::fs::read(dir.join(name)).map_err(|e| PeftError::io(dir.join(name), e));
    let state: TrainState = serde_json::from_slice(&read(STATE_FILE)?).map_err(|e| {
        PeftError::malformed(
            dir.join(STATE_FILE),
            format!("invalid checkpoint state: {e}"),
        )
    })?;
    let recorder = Bytes::default();
    let adapter_record =
        Recorder::<B>::load(&recorder, read(ADAPTER_FILE)?, device).map_err(|e| {
            PeftError::malformed(
                dir.join(ADAPTER_FILE),
                format!("invalid adapter record: {e}"),
            )
        })?;
    let adapter = state
        .shape
        .skeleton::<B>(device)
        .load_record(adapter_record);
    let optim_record =
        Recorder::<B>::load(&recorder, read(OPTIMIZER_FILE)?, device).map_err(|e| {
            PeftError::malformed(
                dir.join(OPTIMIZER_FILE),
                format!("invalid optimizer record: {e}"),
            )
        })?;
    Ok((adapter, optim.load_record(optim_record), state))
}

/// The optimizer type the trainer uses.
pub type AdapterOptimizer<B> = OptimizerAdaptor<burn::optim::AdamW, Adapter<B>, B>;
