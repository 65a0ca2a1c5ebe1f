//! `peft bench`: training-step, generation and attention benchmarks.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context, Result, bail};
use burn::{
    backend::Autodiff,
    module::Module,
    optim::{GradientsParams, Optimizer},
    tensor::{Distribution, Tensor},
};
use clap::{Args, Subcommand};
use peft_core::{
    Adapter, CausalLm, Method,
    adapter::load_adapter,
    loss::{Targets, nll_sum},
    peft_model::{Routing, forward},
    prefix::{Prefix, PrefixLayout},
    prompt::{PromptInit, SoftPrompt},
    train::optimizer,
};
use peft_kernels::{
    AttentionPath, PrefixAttention, PrefixAttentionAutodiffBackend, PrefixAttentionBackend,
    backends::{BackendKind, BackendVisitor, dispatch},
};
use peft_models::{
    Checkpoint, DEFAULT_MODEL_PATH,
    generate::{Conditioning, GenerationConfig, generate},
};
use serde_json::json;

use crate::backend::parse_backend;

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

/// Arguments of `peft bench train`.
#[derive(Debug, Args)]
pub struct TrainBench {
    /// Model path.
    #[arg(long, default_value = DEFAULT_MODEL_PATH)]
    pub model: PathBuf,
    /// Compute backend.
    #[arg(long, default_value = "flex", value_parser = parse_backend)]
    pub backend: BackendKind,
    /// prompt, prefix or prefix-mlp.
    #[arg(long, default_value = "prompt")]
    pub method: String,
    /// Rows per step.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Virtual tokens / prefix slots.
    #[arg(long, default_value_t = 20)]
    pub virtual_tokens: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Attention implementation: auto, fused or unfused.
    #[arg(long, default_value = "auto")]
    pub attention: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `peft bench generate`.
#[derive(Debug, Args)]
pub struct GenerateBench {
    /// Model path.
    #[arg(long, default_value = DEFAULT_MODEL_PATH)]
    pub model: PathBuf,
    /// Compute backend.
    #[arg(long, default_value = "flex", value_parser = parse_backend)]
    pub backend: BackendKind,
    /// Adapter directory (a prefix adapter pre-fills the cache).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    /// Tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `peft bench attention`.
#[derive(Debug, Args)]
pub struct AttentionBench {
    /// Compute backend.
    #[arg(long, default_value = "flex", value_parser = parse_backend)]
    pub backend: BackendKind,
    /// Batch size.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Sequence length (queries = keys).
    #[arg(long, default_value_t = 512)]
    pub seq: usize,
    /// Prefix slots.
    #[arg(long, default_value_t = 64)]
    pub prefix: usize,
    /// Query heads.
    #[arg(long, default_value_t = 9)]
    pub heads: usize,
    /// Key/value heads.
    #[arg(long, default_value_t = 3)]
    pub kv_heads: usize,
    /// Head dimension.
    #[arg(long, default_value_t = 64)]
    pub head_dim: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
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

fn parse_path(s: &str) -> Result<AttentionPath> {
    Ok(match s {
        "auto" => AttentionPath::Auto,
        "fused" => AttentionPath::Fused,
        "unfused" => AttentionPath::Unfused,
        other => bail!("--attention {other}: expected auto, fused or unfused"),
    })
}

struct Train(TrainBench);

impl BackendVisitor for Train {
    type Output = Result<()>;
    fn visit<B: PrefixAttentionBackend>(self, device: B::Device) -> Result<()> {
        bench_train::<Autodiff<B>>(self.0, &device)
    }
}

fn bench_train<B: PrefixAttentionAutodiffBackend>(a: TrainBench, device: &B::Device) -> Result<()> {
    let method: Method = a.method.parse()?;
    peft_kernels::set_attention_path(parse_path(&a.attention)?);
    let ckpt = Checkpoint::open(&a.model)
        .with_context(|| format!("opening model {}", a.model.display()))?;
    let model = ckpt.load::<B>(device)?.no_grad();
    let dims = model.dims();
    let layout = PrefixLayout::of(&dims);
    let mut adapter = match method {
        Method::Prompt => Adapter::Prompt(SoftPrompt::init(
            &model,
            a.virtual_tokens,
            &PromptInit::SampleVocab { seed: 0 },
            |_| Ok(vec![]),
        )?),
        Method::Prefix => Adapter::Prefix(Prefix::random(a.virtual_tokens, 1.0, 0, layout, device)),
        Method::PrefixMlp => Adapter::Prefix(Prefix::mlp(
            a.virtual_tokens,
            layout.token_dim(),
            512,
            0,
            layout,
            device,
        )),
    };
    let mut optim = optimizer::<B>(0.0);
    let rows: Vec<Vec<u32>> = (0..a.batch_size)
        .map(|r| {
            (0..a.seq_len)
                .map(|t| ((r * 7919 + t * 104_729) % dims.vocab_size) as u32)
                .collect()
        })
        .collect();
    let targets = Targets::from_rows(&rows, &vec![vec![true; a.seq_len]; a.batch_size]);
    let mut times = Vec::new();
    for step in 0..a.warmup + a.steps {
        let start = Instant::now();
        let out = forward(&model, &rows, Routing::All(Some(&adapter)))?;
        let loss = nll_sum(&model, &out, &targets)?.div_scalar(targets.len() as f64);
        let grads = GradientsParams::from_grads(loss.backward(), &adapter);
        adapter = optim.step(1e-3, adapter, grads);
        // Wait for the device so the time covers the whole step.
        let _ = B::sync(device);
        if step >= a.warmup {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let step_ms = median(times);
    let tokens_per_s = (a.batch_size * a.seq_len) as f64 / (step_ms / 1e3);
    let rss = peak_rss_mb();
    if a.json {
        println!(
            "{}",
            json!({
                "backend": a.backend.name(), "method": method.name(), "batch_size": a.batch_size, "seq_len": a.seq_len,
                "virtual_tokens": a.virtual_tokens, "steps": a.steps, "step_ms_median": step_ms,
                "tokens_per_s": tokens_per_s, "peak_rss_mb": rss, "trainable_params": adapter.num_params(),
            })
        );
    } else {
        println!(
            "{} {} batch {}×{}: median step {step_ms:.1} ms, {tokens_per_s:.1} tokens/s, peak RSS {:.0} MiB",
            a.backend,
            method.name(),
            a.batch_size,
            a.seq_len,
            rss.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

struct Gen(GenerateBench);

impl BackendVisitor for Gen {
    type Output = Result<()>;
    fn visit<B: PrefixAttentionBackend>(self, device: B::Device) -> Result<()> {
        let a = self.0;
        let ckpt = Checkpoint::open(&a.model)
            .with_context(|| format!("opening model {}", a.model.display()))?;
        let model = ckpt.load::<B>(&device)?;
        let cond = match &a.adapter {
            Some(dir) => {
                let (adapter, _) = load_adapter::<B>(dir, &model.dims(), &device)?;
                Conditioning {
                    virtual_tokens: adapter.virtual_tokens(),
                    prefix: adapter.prefix(),
                }
            }
            None => Conditioning::default(),
        };
        let vocab = model.dims().vocab_size;
        let prompt: Vec<u32> = (0..a.prompt_len)
            .map(|t| (100 + t * 7919 % (vocab - 200)) as u32)
            .collect();
        let config = GenerationConfig {
            max_new_tokens: a.new_tokens,
            stop_at_eos: false,
            ..Default::default()
        };
        let mut times = Vec::new();
        for rep in 0..a.repeats + 1 {
            let start = Instant::now();
            let out = generate(&model, &ckpt.tokenizer, &prompt, &cond, &config, |_| {})?;
            if rep > 0 {
                times.push(start.elapsed().as_secs_f64() * 1e3 / out.ids.len().max(1) as f64);
            }
        }
        let ms_per_token = median(times);
        let tokens_per_s = 1e3 / ms_per_token;
        if a.json {
            println!(
                "{}",
                json!({"backend": a.backend.name(), "prompt_len": a.prompt_len, "new_tokens": a.new_tokens,
                       "adapter": a.adapter.as_ref().map(|p| p.display().to_string()),
                       "ms_per_token_median": ms_per_token, "tokens_per_s": tokens_per_s, "peak_rss_mb": peak_rss_mb()})
            );
        } else {
            println!(
                "{}: {tokens_per_s:.1} tokens/s ({ms_per_token:.2} ms/token, prompt {}, {} new)",
                a.backend, a.prompt_len, a.new_tokens
            );
        }
        Ok(())
    }
}

struct Attn(AttentionBench);

impl BackendVisitor for Attn {
    type Output = Result<()>;
    fn visit<B: PrefixAttentionBackend>(self, device: B::Device) -> Result<()> {
        let a = self.0;
        if !a.heads.is_multiple_of(a.kv_heads) {
            bail!(
                "--heads {} is not a multiple of --kv-heads {}",
                a.heads,
                a.kv_heads
            );
        }
        let mut report = serde_json::Map::new();
        for (pass, backward) in [("forward", false), ("forward_backward", true)] {
            let mut ms = [0.0; 2];
            for (slot, path) in [(0, AttentionPath::Fused), (1, AttentionPath::Unfused)] {
                ms[slot] = if backward {
                    time_backward::<Autodiff<B>>(&a, path, &device)
                } else {
                    time_forward::<B>(&a, path, &device)
                };
            }
            report.insert(
                pass.into(),
                json!({"fused_ms": ms[0], "unfused_ms": ms[1], "speedup": ms[1] / ms[0]}),
            );
        }
        let fused_available = B::has_fused_prefix_attention();
        if a.json {
            let mut v = serde_json::Value::Object(report);
            v["backend"] = a.backend.name().into();
            v["fused_kernels"] = fused_available.into();
            v["shape"] = json!({"batch": a.batch, "seq": a.seq, "prefix": a.prefix, "heads": a.heads, "kv_heads": a.kv_heads, "head_dim": a.head_dim});
            println!("{v}");
        } else {
            if !fused_available {
                println!(
                    "note: {} has no fused kernels; \"fused\" runs the reference op with its analytic backward",
                    a.backend
                );
            }
            for (pass, v) in report {
                println!(
                    "{pass}: fused {:.2} ms, unfused {:.2} ms, speedup {:.2}×",
                    v["fused_ms"],
                    v["unfused_ms"],
                    v["speedup"].as_f64().unwrap_or(f64::NAN)
                );
            }
        }
        Ok(())
    }
}

type Qkv<B> = [Tensor<B, 4>; 5];

fn attention_inputs<B: PrefixAttentionBackend>(a: &AttentionBench, device: &B::Device) -> Qkv<B> {
    let n = Distribution::Normal(0.0, 1.0);
    [
        Tensor::random([a.batch, a.heads, a.seq, a.head_dim], n, device),
        Tensor::random([a.batch, a.kv_heads, a.seq, a.head_dim], n, device),
        Tensor::random([a.batch, a.kv_heads, a.seq, a.head_dim], n, device),
        Tensor::random([1, a.kv_heads, a.prefix, a.head_dim], n, device),
        Tensor::random([1, a.kv_heads, a.prefix, a.head_dim], n, device),
    ]
}

/// Median milliseconds of `run` over the repetitions (after one untimed run).
fn timed<B: PrefixAttentionBackend>(
    repeats: usize,
    device: &B::Device,
    mut run: impl FnMut(),
) -> f64 {
    let mut times = Vec::new();
    for rep in 0..repeats + 1 {
        let _ = B::sync(device);
        let start = Instant::now();
        run();
        let _ = B::sync(device);
        if rep > 0 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    median(times)
}

fn time_forward<B: PrefixAttentionBackend>(
    a: &AttentionBench,
    path: AttentionPath,
    device: &B::Device,
) -> f64 {
    let [q, k, v, pk, pv] = attention_inputs::<B>(a, device);
    timed::<B>(a.repeats, device, || {
        let out = PrefixAttention::new(q.clone(), k.clone(), v.clone())
            .with_prefix(pk.clone(), pv.clone())
            .with_path(path)
            .forward();
        let _ = out.sum().into_data();
    })
}

fn time_backward<B: PrefixAttentionAutodiffBackend>(
    a: &AttentionBench,
    path: AttentionPath,
    device: &B::Device,
) -> f64 {
    let inputs = attention_inputs::<B>(a, device);
    timed::<B>(a.repeats, device, || {
        let [q, k, v, pk, pv] = inputs.clone().map(|t| t.require_grad());
        let out = PrefixAttention::new(q, k, v)
            .with_prefix(pk, pv)
            .with_path(path)
            .forward();
        let _ = out.sum().backward();
    })
}

/// Runs `peft bench`.
pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Train(a) => dispatch(a.backend, Train(a))?,
        BenchCommand::Generate(a) => dispatch(a.backend, Gen(a))?,
        BenchCommand::Attention(a) => dispatch(a.backend, Attn(a))?,
    }
}
