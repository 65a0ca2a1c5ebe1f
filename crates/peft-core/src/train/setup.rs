//! What a run needs before its first step, shared by the CLI, the examples and every peer of a
//! data-parallel run: the run's settings with every default filled in (saved in the run
//! directory as `train_config.json`), the adapter its method and init give, the datasets with
//! their length limits, and the state a resumed run starts from.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::{
    adapter::{Adapter, Method},
    error::{PeftError, Result},
    model::CausalLm,
    prefix::{Prefix, PrefixLayout},
    prompt::{PromptInit, SoftPrompt, text_init_ids},
    train::{
        TrainConfig,
        checkpoint::{TrainState, latest_checkpoint},
        data::{Dataset, Tokenize, Truncation, read_jsonl},
    },
};

/// The file of a run directory holding its [`RunSettings`].
pub const SETTINGS_FILE: &str = "train_config.json";

/// A run's settings with every default filled in; saved as [`SETTINGS_FILE`] in the run
/// directory so that `--resume` continues with exactly these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// Model path (a `.gguf` file or a Hugging Face directory).
    pub model: PathBuf,
    /// Method name: `prompt`, `prefix` or `prefix-mlp`.
    pub method: String,
    /// Training data (JSONL).
    pub data: PathBuf,
    /// Evaluation data (JSONL).
    pub eval: Option<PathBuf>,
    /// Run directory.
    pub out: PathBuf,
    /// Virtual tokens (prompt) or prefix slots (prefix).
    pub virtual_tokens: usize,
    /// Initialisation: `random`, `vocab` or `text:"..."`.
    pub init: String,
    /// Hidden width of the prefix MLP.
    pub mlp_hidden: usize,
    /// Longest example in tokens, virtual tokens included.
    pub max_len: usize,
    /// What happens to longer examples.
    pub truncation: Truncation,
    /// Epochs requested (resolved into `train.steps` by [`RunSettings::load_data`]).
    pub epochs: Option<f64>,
    /// Gradient checkpointing.
    pub gradient_checkpointing: bool,
    /// Precision of the frozen linear weights (`f32` in runs saved before it existed).
    #[serde(default = "f32_name")]
    pub precision: String,
    /// Loop settings.
    pub train: TrainConfig,
}

fn f32_name() -> String {
    "f32".into()
}

/// The datasets of a run.
#[derive(Debug, Clone)]
pub struct RunData {
    /// Training examples.
    pub train: Dataset,
    /// Evaluation examples.
    pub eval: Option<Dataset>,
}

impl RunSettings {
    /// The method.
    pub fn method(&self) -> Result<Method> {
        self.method.parse()
    }

    /// The default learning rate of a method: PEFT's examples' for the prompt, lower for the
    /// prefix and lower still through its MLP.
    pub fn default_lr(method: Method) -> f64 {
        match method {
            Method::Prompt => 3e-2,
            Method::Prefix => 5e-3,
            Method::PrefixMlp => 1e-3,
        }
    }

    /// The default initialisation of a method: `vocab` for the prompt, `random` for a prefix.
    pub fn default_init(method: Method) -> &'static str {
        match method {
            Method::Prompt => "vocab",
            Method::Prefix | Method::PrefixMlp => "random",
        }
    }

    /// The settings saved in run directory `dir`, for resuming it: the directory becomes the
    /// output, and the returned path is its latest complete checkpoint.
    pub fn for_resume(dir: &Path) -> Result<(Self, PathBuf)> {
        let file = dir.join(SETTINGS_FILE);
        let text = std::fs::read_to_string(&file).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                PeftError::Invalid(format!(
                    "{} is not a run directory (no {SETTINGS_FILE})",
                    dir.display()
                ))
            } else {
                PeftError::io(&file, e)
            }
        })?;
        let mut settings: Self = serde_json::from_str(&text).map_err(|e| PeftError::Malformed {
            path: file.clone(),
            what: format!("invalid {SETTINGS_FILE}: {e}"),
        })?;
        settings.out = dir.to_path_buf();
        let checkpoint = latest_checkpoint(dir).ok_or_else(|| {
            PeftError::Invalid(format!(
                "{} has no complete checkpoint to resume",
                dir.display()
            ))
        })?;
        Ok((settings, checkpoint))
    }

    /// Writes these settings into the run directory (atomically), creating it.
    pub fn save(&self) -> Result<()> {
        std::fs::create_dir_all(&self.out).map_err(|e| PeftError::io(&self.out, e))?;
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| PeftError::Invalid(format!("serialising the settings: {e}")))?;
        crate::fs::write_atomic(&self.out.join(SETTINGS_FILE), json.as_bytes())
    }

    /// The number of real tokens an example may have: `max_len` (at most the model's
    /// `context`) minus the virtual tokens; an error when fewer than two remain.
    pub fn example_limit(&self, context: usize) -> Result<usize> {
        self.max_len
            .min(context)
            .checked_sub(self.virtual_tokens)
            .filter(|l| *l >= 2)
            .ok_or_else(|| {
                PeftError::Invalid(format!(
                    "max_len {} leaves no room for tokens after {} virtual tokens",
                    self.max_len, self.virtual_tokens
                ))
            })
    }

    /// Reads and tokenises the training and evaluation data with the run's length limits, for a
    /// model of `context` positions. A fresh run (`resuming` false) that asked for epochs gets
    /// its step count from the training set's size here; the loop settings are then checked.
    pub fn load_data(
        &mut self,
        tok: &dyn Tokenize,
        context: usize,
        resuming: bool,
    ) -> Result<RunData> {
        let limit = self.example_limit(context)?;
        let read = |path: &Path| -> Result<Dataset> {
            Dataset::tokenize(path, read_jsonl(path)?, tok, limit, self.truncation)
        };
        let train = read(&self.data)?;
        let eval = self.eval.as_deref().map(read).transpose()?;
        if let Some(epochs) = self.epochs.filter(|_| !resuming) {
            self.train.steps = self.train.steps_for_epochs(epochs, train.len());
        }
        self.train.validate()?;
        Ok(RunData { train, eval })
    }

    /// The adapter a fresh run starts from, with the prompt initialisation to record in its
    /// config. Every peer of a data-parallel run builds the same adapter from the same settings:
    /// random initialisations are seeded with `train.seed`.
    pub fn init_adapter<B: Backend, M: CausalLm<B>>(
        &self,
        model: &M,
        tok: &dyn Tokenize,
    ) -> Result<(Adapter<B>, Option<PromptInit>)> {
        let method = self.method()?;
        let n = self.virtual_tokens;
        let seed = self.train.seed;
        let text = self
            .init
            .strip_prefix("text:")
            .map(|t| t.trim_matches('"').to_string());
        let encode = |t: &str| tok.encode(t).map_err(PeftError::Invalid);
        let layout = PrefixLayout::of(&model.dims());
        let device = model.embedding_table().device();
        let prompt = |init: PromptInit| -> Result<(Adapter<B>, Option<PromptInit>)> {
            Ok((
                Adapter::Prompt(SoftPrompt::init(model, n, &init, encode)?),
                Some(init),
            ))
        };
        Ok(match (method, self.init.as_str(), text) {
            (Method::Prompt, _, Some(t)) => prompt(PromptInit::Text(t))?,
            (Method::Prompt, "vocab", None) => prompt(PromptInit::SampleVocab { seed })?,
            (Method::Prompt, "random", None) => prompt(PromptInit::Random { seed })?,
            (Method::Prefix, "random", None) => (
                Adapter::Prefix(Prefix::random(n, 1.0, seed, layout, &device)),
                None,
            ),
            (Method::Prefix, _, Some(t)) => {
                let ids = text_init_ids(&encode(&t)?, n);
                (Adapter::Prefix(Prefix::from_text(model, &ids)?), None)
            }
            (Method::PrefixMlp, "random", None) => (
                Adapter::Prefix(Prefix::mlp(
                    n,
                    layout.token_dim(),
                    self.mlp_hidden,
                    seed,
                    layout,
                    &device,
                )),
                None,
            ),
            (m, init, _) => {
                return Err(PeftError::Invalid(format!(
                    "--init {init} does not apply to --method {}: use {}",
                    m.name(),
                    match m {
                        Method::Prompt => "random, vocab or text:\"...\"",
                        Method::Prefix => "random or text:\"...\"",
                        Method::PrefixMlp => "random",
                    }
                )));
            }
        })
    }
}

impl RunSettings {
    /// What every peer of a data-parallel run must agree on, as (name, value) pairs: the model
    /// (its size on disk), the method and its sizes, the loop settings, the tokenised data and
    /// the step resumed from. Paths are not compared (each machine has its own).
    pub fn agreement(&self, data: &RunData, resume_step: usize) -> Vec<(&'static str, String)> {
        let t = &self.train;
        // FNV-1a over the ids and target flags: the same on every machine and build.
        let tokens = |d: &Dataset| {
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            let mut eat = |b: u8| h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            for e in &d.examples {
                for id in &e.ids {
                    id.to_le_bytes().into_iter().for_each(&mut eat);
                }
                e.is_target.iter().for_each(|&t| eat(u8::from(t)));
                eat(0xff);
            }
            format!("{h:016x}")
        };
        vec![
            ("model (size on disk)", model_size(&self.model).to_string()),
            ("method", self.method.clone()),
            ("virtual tokens", self.virtual_tokens.to_string()),
            ("init", self.init.clone()),
            ("mlp hidden", self.mlp_hidden.to_string()),
            ("precision", self.precision.clone()),
            ("seed", t.seed.to_string()),
            ("batch size", t.batch_size.to_string()),
            ("gradient accumulation", t.grad_accum.to_string()),
            ("steps", t.steps.to_string()),
            ("learning rate", t.lr.to_string()),
            ("warmup", t.warmup_steps.to_string()),
            ("schedule", format!("{:?}", t.decay)),
            ("weight decay", t.weight_decay.to_string()),
            ("max grad norm", format!("{:?}", t.max_grad_norm)),
            ("eval every", format!("{:?}", t.eval_every)),
            ("training data (tokenised)", tokens(&data.train)),
            (
                "eval data (tokenised)",
                data.eval.as_ref().map_or("none".into(), tokens),
            ),
            ("step resumed from", resume_step.to_string()),
        ]
    }
}

/// Bytes of a model file, or of the files of a model directory (0 when unreadable).
fn model_size(path: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    if path.is_dir() {
        std::fs::read_dir(path).map_or(0, |entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .map(|e| size(&e.path()))
                .sum()
        })
    } else {
        size(path)
    }
}

/// The step a checkpoint directory was written at (0 when its state cannot be read; loading
/// the checkpoint reports that error).
pub fn checkpoint_step(checkpoint: &Path) -> usize {
    std::fs::read(checkpoint.join(crate::train::checkpoint::STATE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<TrainState>(&b).ok())
        .map_or(0, |s| s.step)
}
