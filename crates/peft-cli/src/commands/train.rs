//! `peft train`: tune an adapter on a JSONL dataset, with progress, metrics, checkpoints and a
//! loss curve, and export it in Hugging Face PEFT's layout.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use burn::backend::{Autodiff, autodiff::checkpoint::strategy::BalancedCheckpointing};
use clap::{Args, FromArgMatches};
use indicatif::{ProgressBar, ProgressStyle};
use peft_core::{
    CausalLm, Method,
    adapter::SaveOptions,
    train::{
        EvalMetrics, Observer, Outcome, StepMetrics, TrainConfig, TrainResult, Trainer,
        metrics::{METRICS_FILE, read_series},
        parallel::{
            Collective, Solo,
            burn_collective::{DEFAULT_TIMEOUT, GlobalLayout, Layout},
            peer_devices,
            peers::run_local_peers,
        },
        schedule::Decay,
        setup::{RunSettings, SETTINGS_FILE, checkpoint_step},
    },
};
use peft_kernels::{
    PrefixAttentionAutodiffBackend, PrefixAttentionBackend, WeightPrecision,
    backends::{BackendKind, BackendVisitor, dispatch},
};
use peft_models::DEFAULT_MODEL_PATH;

use crate::{
    backend::parse_backend,
    validate::{at_least, non_negative, positive, seed},
};

/// Arguments of `peft train`. Every option can also come from `--config FILE` (TOML or JSON,
/// same names with `-` or `_`, same range checks); the command line wins.
#[derive(Debug, Clone, Default, Args)]
pub struct TrainArgs {
    /// Model: a .gguf file or a Hugging Face directory. [default: models/SmolLM2-135M-Instruct.Q4_1.gguf]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// prompt (soft prompt), prefix (direct prefix, P-tuning v2) or prefix-mlp (prefix through an MLP). [default: prompt]
    #[arg(long)]
    pub method: Option<String>,
    /// Training data, JSONL: {"input": ..., "output": ...} (loss on the output) or {"text": ...}.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Evaluation data in the same format; evaluated every --eval-every steps and at the end.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Run directory: the adapter, metrics.jsonl, loss.png and checkpoints/ go here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Optimizer steps (or use --epochs). [default: 100]
    #[arg(long, conflicts_with = "epochs", allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub steps: Option<usize>,
    /// Passes over the training data instead of --steps (above 0; fractions allowed).
    #[arg(long, allow_hyphen_values = true, value_parser = positive::<f64>)]
    pub epochs: Option<f64>,
    /// Examples per micro-batch. [default: 8]
    #[arg(long, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step; gradients are averaged. [default: 1]
    #[arg(long, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub grad_accum: Option<usize>,
    /// Peak learning rate, above 0. [default: 3e-2 prompt, 5e-3 prefix, 1e-3 prefix-mlp]
    #[arg(long, allow_hyphen_values = true, value_parser = positive::<f64>)]
    pub lr: Option<f64>,
    /// Linear warmup steps. [default: 10% of the steps]
    #[arg(long, allow_hyphen_values = true, value_parser = at_least::<0>)]
    pub warmup: Option<usize>,
    /// Decay after warmup: cosine, linear or constant. [default: cosine]
    #[arg(long)]
    pub schedule: Option<String>,
    /// AdamW decoupled weight decay, 0 or more. [default: 0]
    #[arg(long, allow_hyphen_values = true, value_parser = non_negative::<f64>)]
    pub weight_decay: Option<f64>,
    /// Clip the global gradient norm (0 disables). [default: 1.0]
    #[arg(long, allow_hyphen_values = true, value_parser = non_negative::<f64>)]
    pub max_grad_norm: Option<f64>,
    /// Virtual tokens (prompt) or prefix slots (prefix). [default: 20]
    #[arg(long, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub virtual_tokens: Option<usize>,
    /// Initialisation: random, vocab (prompt), or text:"..." (prompt: its token embeddings;
    /// prefix: the keys/values the model computes for it). [default: vocab for prompt, random for prefix]
    #[arg(long)]
    pub init: Option<String>,
    /// prefix-mlp: hidden width of the MLP. [default: 512]
    #[arg(long, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub mlp_hidden: Option<usize>,
    /// Longest example in tokens, virtual tokens included. [default: 256]
    #[arg(long, allow_hyphen_values = true, value_parser = at_least::<2>)]
    pub max_len: Option<usize>,
    /// Longer examples: left (drop the start of the input), drop, or error. [default: left]
    #[arg(long)]
    pub truncation: Option<String>,
    /// Evaluate every N steps. [default: steps / 5]
    #[arg(long, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub eval_every: Option<usize>,
    /// Checkpoint every N steps (always at the end and on Ctrl-C). [default: steps / 5]
    #[arg(long, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub checkpoint_every: Option<usize>,
    /// Checkpoints to keep. [default: 2]
    #[arg(long, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub keep_checkpoints: Option<usize>,
    /// Seed of the initialisation and the data order. [default: 42]
    #[arg(long, allow_hyphen_values = true, value_parser = seed)]
    pub seed: Option<u64>,
    /// Recompute activations in the backward pass instead of storing them. Less memory where
    /// attention is composed of tensor ops (NdArray); on Flex, whose host kernels keep no score
    /// matrix, a step peaked higher with it than without in the tests.
    #[arg(long)]
    pub gradient_checkpointing: Option<bool>,
    /// Precision of the frozen linear weights: f32, or bf16 (products in bf16 with f32
    /// accumulation; on CPU backends AMX or AVX512-BF16 where the CPU has them). The adapter,
    /// its gradients and the optimizer state stay f32. [default: f32]
    #[arg(long)]
    pub precision: Option<WeightPrecision>,
    /// Compute backend. [default: flex]
    #[arg(long, value_parser = parse_backend)]
    pub backend: Option<BackendKind>,
    /// Read options from this TOML or JSON file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in this directory from its latest checkpoint (with its saved settings;
    /// --steps may extend it).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Where the peers of a data-parallel run are.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Data parallelism: several devices in this process, several processes (nodes) on one or
/// several machines. Command line only. Every node is started with the same settings.
#[derive(Debug, Clone, Default, Args)]
pub struct ClusterArgs {
    /// Data-parallel peers in this process, one thread and one model replica each: CUDA device
    /// indices 0..N; on the CPU backends N peers share the CPU. [default: 1]
    #[arg(long, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub devices: Option<usize>,
    /// Processes (nodes) in the run; start `peft coordinator` first, then every node with the
    /// same settings and its own --node-rank. [default: 1]
    #[arg(long, allow_hyphen_values = true, value_parser = at_least::<1>, requires_all = ["node_rank", "coordinator"])]
    pub nodes: Option<usize>,
    /// This node's rank, 0..nodes; node 0 writes the run directory.
    #[arg(long, requires = "nodes")]
    pub node_rank: Option<usize>,
    /// HOST:PORT of `peft coordinator`.
    #[arg(long, requires = "nodes")]
    pub coordinator: Option<String>,
    /// Seconds a peer waits for the others before giving up (a node whose process ends is
    /// reported by the coordinator at once). [default: 600]
    #[arg(long, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub peer_timeout: Option<usize>,
}

impl ClusterArgs {
    /// The layout these flags describe.
    fn layout(&self) -> Result<Layout> {
        let global = match self.nodes {
            None => None,
            Some(nodes) => {
                let coordinator = self
                    .coordinator
                    .clone()
                    .context("--nodes needs --coordinator HOST:PORT")?;
                let node_rank = self.node_rank.context("--nodes needs --node-rank")?;
                Some(GlobalLayout {
                    nodes,
                    node_rank,
                    coordinator,
                })
            }
        };
        let layout = Layout {
            devices: self.devices.unwrap_or(1),
            global,
            timeout: self
                .peer_timeout
                .map_or(DEFAULT_TIMEOUT, |s| Duration::from_secs(s as u64)),
            threads_per_peer: None,
        };
        layout.validate()?;
        Ok(layout)
    }
}

/// The options of a `--config` file (TOML, or JSON for a `.json` file), parsed by the command
/// line's own parsers: every range check applies as it does to the flag, and an error names the
/// file and the option.
fn read_config(path: &Path) -> Result<TrainArgs> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    type Entry = (String, Result<Option<String>, &'static str>);
    let entries: Vec<Entry> = if path.extension().is_some_and(|e| e == "json") {
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON config", path.display()))?;
        let serde_json::Value::Object(map) = value else {
            bail!(
                "{}: the config must be an object of options",
                path.display()
            )
        };
        map.into_iter()
            .map(|(key, v)| {
                let text = match v {
                    serde_json::Value::Null => Ok(None),
                    serde_json::Value::String(s) => Ok(Some(s)),
                    serde_json::Value::Number(n) => Ok(Some(n.to_string())),
                    serde_json::Value::Bool(b) => Ok(Some(b.to_string())),
                    serde_json::Value::Array(_) => Err("a list"),
                    serde_json::Value::Object(_) => Err("an object"),
                };
                (key, text)
            })
            .collect()
    } else {
        // Parsed as TOML values, not JSON ones, so `nan` and `inf` reach the range checks.
        let table: toml::Table = toml::from_str(&text)
            .with_context(|| format!("{}: invalid TOML config", path.display()))?;
        table
            .into_iter()
            .map(|(key, v)| {
                let text = match v {
                    toml::Value::String(s) => Ok(Some(s)),
                    toml::Value::Integer(n) => Ok(Some(n.to_string())),
                    toml::Value::Float(x) => Ok(Some(x.to_string())),
                    toml::Value::Boolean(b) => Ok(Some(b.to_string())),
                    toml::Value::Datetime(d) => Ok(Some(d.to_string())),
                    toml::Value::Array(_) => Err("a list"),
                    toml::Value::Table(_) => Err("a table"),
                };
                (key, text)
            })
            .collect()
    };
    let cmd =
        TrainArgs::augment_args(clap::Command::new("peft train --config")).no_binary_name(true);
    let mut argv = Vec::new();
    for (key, text) in entries {
        // Accept snake_case keys as well as the kebab-case of the command line.
        let key = key.replace('_', "-");
        if COMMAND_LINE_ONLY.contains(&key.as_str()) {
            bail!(
                "{}: `{key}` can only be given on the command line (--{key})",
                path.display()
            );
        }
        if !cmd.get_arguments().any(|a| a.get_long() == Some(&key)) {
            bail!("{}: unknown option `{key}`", path.display());
        }
        match text {
            Ok(Some(text)) => argv.push(format!("--{key}={text}")),
            Ok(None) => {}
            Err(kind) => bail!(
                "{}: option `{key}` takes one value, not {kind}",
                path.display()
            ),
        }
    }
    let clap_error = |e: clap::Error| {
        // clap's first line names the option and says what it expects; the rest is usage.
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        anyhow::anyhow!(
            "{}: {}",
            path.display(),
            first.strip_prefix("error: ").unwrap_or(first)
        )
    };
    let matches = cmd.try_get_matches_from(&argv).map_err(clap_error)?;
    TrainArgs::from_arg_matches(&matches).map_err(clap_error)
}

/// Refuses saved settings outside the range of the option they come from (a hand-edited
/// `train_config.json` of a resumed run), naming the file and the field.
fn check_settings(s: &RunSettings, file: &Path) -> Result<()> {
    use crate::validate::{Real, check_at_least};
    let t = &s.train;
    let counts = [
        ("virtual_tokens", Some(s.virtual_tokens), 1),
        ("mlp_hidden", Some(s.mlp_hidden), 1),
        ("max_len", Some(s.max_len), 2),
        ("train.steps", Some(t.steps), 1),
        ("train.batch_size", Some(t.batch_size), 1),
        ("train.grad_accum", Some(t.grad_accum), 1),
        ("train.eval_every", t.eval_every, 1),
        ("train.checkpoint_every", t.checkpoint_every, 1),
        ("train.keep_checkpoints", Some(t.keep_checkpoints), 1),
    ];
    for (field, value, min) in counts {
        if let Some(v) = value {
            check_at_least(v, min)
                .map_err(|e| anyhow::anyhow!("{}: {field} = {v}: {e}", file.display()))?;
        }
    }
    let reals = [
        ("epochs", s.epochs, Real::Positive),
        ("train.lr", Some(t.lr), Real::Positive),
        (
            "train.weight_decay",
            Some(t.weight_decay),
            Real::NonNegative,
        ),
        ("train.max_grad_norm", t.max_grad_norm, Real::Positive),
    ];
    for (field, value, range) in reals {
        if let Some(v) = value {
            range
                .check(v)
                .map_err(|e| anyhow::anyhow!("{}: {field} = {v}: {e}", file.display()))?;
        }
    }
    Ok(())
}

/// Options a config file cannot set: where the options come from, and the device.
const COMMAND_LINE_ONLY: [&str; 8] = [
    "config",
    "resume",
    "backend",
    "devices",
    "nodes",
    "node-rank",
    "coordinator",
    "peer-timeout",
];

fn merge(cli: TrainArgs) -> Result<TrainArgs> {
    let Some(path) = &cli.config else {
        return Ok(cli);
    };
    let file = read_config(path)?;
    macro_rules! pick {
        ($($f:ident),*) => { TrainArgs { $($f: cli.$f.or(file.$f),)* backend: cli.backend, config: cli.config.clone(), resume: cli.resume.clone(), cluster: cli.cluster.clone() } };
    }
    Ok(pick!(
        model,
        method,
        data,
        eval,
        out,
        steps,
        epochs,
        batch_size,
        grad_accum,
        lr,
        warmup,
        schedule,
        weight_decay,
        max_grad_norm,
        virtual_tokens,
        init,
        mlp_hidden,
        max_len,
        truncation,
        eval_every,
        checkpoint_every,
        keep_checkpoints,
        seed,
        gradient_checkpointing,
        precision
    ))
}

fn resolve(a: &TrainArgs) -> Result<RunSettings> {
    let method: Method = a.method.as_deref().unwrap_or("prompt").parse()?;
    let Some(data) = a.data.clone() else {
        bail!("--data is required (a JSONL file)")
    };
    let Some(out) = a.out.clone() else {
        bail!("--out is required (the run directory)")
    };
    let default_lr = RunSettings::default_lr(method);
    let steps = a.steps.unwrap_or(100);
    let default_init = RunSettings::default_init(method);
    let train = TrainConfig {
        steps,
        batch_size: a.batch_size.unwrap_or(8),
        grad_accum: a.grad_accum.unwrap_or(1),
        lr: a.lr.unwrap_or(default_lr),
        warmup_steps: a.warmup.unwrap_or(steps / 10),
        decay: a.schedule.as_deref().unwrap_or("cosine").parse::<Decay>()?,
        weight_decay: a.weight_decay.unwrap_or(0.0),
        max_grad_norm: Some(a.max_grad_norm.unwrap_or(1.0)).filter(|n| *n > 0.0),
        eval_every: Some(a.eval_every.unwrap_or((steps / 5).max(1))),
        checkpoint_every: Some(a.checkpoint_every.unwrap_or((steps / 5).max(1))),
        keep_checkpoints: a.keep_checkpoints.unwrap_or(2),
        seed: a.seed.unwrap_or(42),
    };
    Ok(RunSettings {
        model: a.model.clone().unwrap_or_else(|| DEFAULT_MODEL_PATH.into()),
        method: method.name().into(),
        data,
        eval: a.eval.clone(),
        out,
        virtual_tokens: a.virtual_tokens.unwrap_or(20),
        init: a.init.clone().unwrap_or_else(|| default_init.into()),
        mlp_hidden: a.mlp_hidden.unwrap_or(512),
        max_len: a.max_len.unwrap_or(256),
        truncation: a.truncation.as_deref().unwrap_or("left").parse()?,
        epochs: a.epochs,
        gradient_checkpointing: a.gradient_checkpointing.unwrap_or(false),
        precision: a.precision.unwrap_or_default().name().into(),
        train,
    })
}

/// Progress bar on a terminal, plain periodic lines otherwise (logs, CI).
struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    every: usize,
}

impl Progress {
    fn new(start: usize, total: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_position(start as u64);
            bar
        });
        Self {
            bar,
            total,
            every: (total / 20).max(1),
        }
    }

    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }
}

impl Observer for Progress {
    fn on_step(&mut self, m: &StepMetrics) {
        let msg = format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s",
            m.loss,
            m.lr,
            m.tokens as f64 / m.seconds.max(1e-9)
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(m.step as u64);
                bar.set_message(msg);
            }
            None if m.step.is_multiple_of(self.every) || m.step == self.total || m.step == 1 => {
                eprintln!("step {}/{}: {msg}", m.step, self.total)
            }
            None => {}
        }
    }

    fn on_eval(&mut self, m: &EvalMetrics) {
        self.line(format!(
            "step {}: eval loss {:.4}, perplexity {:.3} ({} tokens)",
            m.step, m.loss, m.perplexity, m.tokens
        ));
    }

    fn on_checkpoint(&mut self, path: &Path) {
        if self.bar.is_none() {
            eprintln!("checkpoint: {}", path.display());
        }
    }
}

struct Run {
    settings: RunSettings,
    resume: Option<PathBuf>,
    layout: Layout,
}

impl BackendVisitor for Run {
    type Output = Result<()>;

    fn visit<B: PrefixAttentionBackend>(self, device: B::Device) -> Result<()> {
        if self.settings.gradient_checkpointing {
            train::<Autodiff<B, BalancedCheckpointing>>(self, &device)
        } else {
            train::<Autodiff<B>>(self, &device)
        }
    }
}

fn train<B: PrefixAttentionAutodiffBackend>(run: Run, device: &B::Device) -> Result<()> {
    let Run {
        settings: mut s,
        resume,
        layout,
    } = run;
    let ckpt = crate::commands::open_model(&s.model)?;
    let context = ckpt.config.max_position_embeddings;
    let data = s.load_data(&ckpt.tokenizer, context, resume.is_some())?;
    eprintln!(
        "data: {} examples from {} ({} truncated, {} dropped){}",
        data.train.len(),
        s.data.display(),
        data.train.truncated,
        data.train.skipped,
        data.eval
            .as_ref()
            .map(|e| format!("; eval: {} examples", e.len()))
            .unwrap_or_default()
    );
    let precision: WeightPrecision = s
        .precision
        .parse()
        .map_err(|e| anyhow::anyhow!("{SETTINGS_FILE}: precision: {e}"))?;
    let world = layout.world();
    let writer_node = layout.rank(0) == 0;
    if writer_node {
        s.save()?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // A second Ctrl-C exits at once; the first asks for a checkpoint at the end of the step.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: finishing the current step and writing a checkpoint (Ctrl-C again to abort)"
        );
    });
    let start_step = resume.as_deref().map_or(0, checkpoint_step);
    let progress = Mutex::new(Progress::new(start_step, s.train.steps));
    // One peer's whole run: its model replica, its adapter, its share of every batch.
    let peer = |_local: usize,
                device: &B::Device,
                collective: &mut dyn Collective<B::InnerBackend>|
     -> peft_core::Result<TrainResult<B>> {
        // Every peer loads its own replica, on its own device, from the one opened file.
        let model = ckpt
            .load_with_precision::<B>(device, precision)
            .map_err(|e| peft_core::PeftError::Invalid(e.to_string()))?;
        let (adapter, prompt_init) = s.init_adapter(&model, &ckpt.tokenizer)?;
        if collective.rank() == 0 {
            let params = peft_core::ParameterCount {
                trainable: burn::module::Module::num_params(&adapter),
                total: CausalLm::parameter_count(&model)
                    + burn::module::Module::num_params(&adapter),
            };
            let peers = if world > 1 {
                format!(", {world} data-parallel peers")
            } else {
                String::new()
            };
            eprintln!(
                "{} on {} — {params}{peers}",
                s.method, ckpt.config.architecture
            );
            if let Some(kernel) = model.lm_head.weight.cpu_kernel() {
                eprintln!("{}", kernel.note());
            }
        }
        let save = SaveOptions {
            base_model: Some(s.model.display().to_string()),
            prompt_init,
            tokenizer: None,
        };
        let trainer = Trainer::new(
            &model,
            &data.train,
            data.eval.as_ref(),
            s.train.clone(),
            s.out.clone(),
            save,
        );
        if collective.rank() == 0 {
            let mut progress = progress.lock().unwrap_or_else(|p| p.into_inner());
            trainer.run_with(
                adapter,
                resume.as_deref(),
                &mut *progress,
                &stop,
                collective,
            )
        } else {
            trainer.run_with(adapter, resume.as_deref(), &mut (), &stop, collective)
        }
    };
    let result = if world == 1 {
        peer(0, device, &mut Solo)?
    } else {
        let devices = peer_devices::<B>(layout.devices);
        let agreement = s.agreement(&data, start_step);
        let agreement: Vec<(&str, String)> =
            agreement.iter().map(|(k, v)| (*k, v.clone())).collect();
        run_local_peers::<B::InnerBackend, _, _>(&layout, &devices, &agreement, peer)?
    };
    let progress = progress.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(bar) = &progress.bar {
        bar.finish_and_clear();
    }
    if !writer_node {
        let rank = layout.global.as_ref().map_or(0, |g| g.node_rank);
        if result.outcome == Outcome::Interrupted {
            eprintln!(
                "node {rank}: interrupted after step {}; node 0 wrote the checkpoint",
                result.steps
            );
            std::process::exit(130);
        }
        eprintln!(
            "node {rank}: {} steps done; node 0 wrote the run directory",
            result.steps
        );
        return Ok(());
    }
    let metrics = s.out.join(METRICS_FILE);
    let png = s.out.join("loss.png");
    let title = format!(
        "{} on {} ({} steps)",
        s.method,
        s.data
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        result.steps
    );
    crate::plot::loss_curve(
        &read_series(&metrics, "train")?,
        &read_series(&metrics, "eval")?,
        &title,
        &png,
    )?;
    match result.outcome {
        Outcome::Interrupted => {
            eprintln!(
                "interrupted after step {}: checkpoint {}\nresume with: peft train --resume {}",
                result.steps,
                result
                    .checkpoint
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                s.out.display()
            );
            std::process::exit(130);
        }
        Outcome::Finished => {
            println!("adapter: {} (Hugging Face PEFT format)", s.out.display());
            println!(
                "metrics: {}  loss curve: {}",
                metrics.display(),
                png.display()
            );
            println!(
                "try it:  peft generate --model {} --adapter {} --prompt \"...\"",
                s.model.display(),
                s.out.display()
            );
        }
    }
    Ok(())
}

/// Runs `peft train`.
pub fn run(args: TrainArgs) -> Result<()> {
    let backend = args.backend.unwrap_or(BackendKind::Flex);
    let layout = args.cluster.layout()?;
    // CPU peers share the cores: each gets its own share of the threads.
    let layout = match backend {
        BackendKind::Flex | BackendKind::Ndarray => layout.split_cpu_threads(),
        _ => layout,
    };
    let (settings, resume) = match &args.resume {
        Some(dir) => {
            let (mut s, ckpt) = RunSettings::for_resume(dir)?;
            if let Some(steps) = args.steps {
                s.train.steps = steps;
            }
            check_settings(&s, &dir.join(SETTINGS_FILE))?;
            eprintln!("resuming from {}", ckpt.display());
            (s, Some(ckpt))
        }
        None => (resolve(&merge(args)?)?, None),
    };
    dispatch(
        backend,
        Run {
            settings,
            resume,
            layout,
        },
    )?
}
