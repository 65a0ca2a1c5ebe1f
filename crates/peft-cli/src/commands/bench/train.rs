//! `peft bench train`: optimizer steps of an adapter on the real model.

use std::{path::PathBuf, time::Instant};

use anyhow::{Result, bail};
use burn::{
    backend::Autodiff,
    module::Module,
    optim::{GradientsParams, Optimizer},
    tensor::ElementConversion,
};
use clap::Args;
use peft_core::{
    Adapter, CausalLm, Method,
    loss::{Targets, nll_sum},
    peft_model::{Routing, forward},
    prefix::{Prefix, PrefixLayout},
    prompt::{PromptInit, SoftPrompt},
    train::optimizer,
};
use peft_kernels::{
    AttentionPath, PrefixAttentionAutodiffBackend, PrefixAttentionBackend, WeightPrecision,
    backends::{BackendKind, BackendVisitor},
};
use peft_models::DEFAULT_MODEL_PATH;
use serde_json::json;

use super::{median, peak_rss_mb};
use crate::{backend::parse_backend, validate::at_least};

/// Arguments of `peft bench train`.
#[derive(Debug, Args)]
pub struct TrainBench {
    /// Model path.
    #[arg(long, default_value = DEFAULT_MODEL_PATH)]
    pub model: PathBuf,
    /// Compute backend.
    #[arg(long, default_value = "flex", value_parser = parse_backend)]
    pub backend: BackendKind,
    /// Precision of the frozen linear weights: f32, or bf16 (products in bf16 with f32
    /// accumulation; on CPU backends AMX or AVX512-BF16 where the CPU has them).
    #[arg(long, default_value = "f32")]
    pub precision: WeightPrecision,
    /// prompt, prefix or prefix-mlp.
    #[arg(long, default_value = "prompt")]
    pub method: String,
    /// Rows per step.
    #[arg(long, default_value_t = 8, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub batch_size: usize,
    /// Tokens per row (at least 2: each token predicts the next).
    #[arg(long, default_value_t = 128, allow_hyphen_values = true, value_parser = at_least::<2>)]
    pub seq_len: usize,
    /// Virtual tokens / prefix slots.
    #[arg(long, default_value_t = 20, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub virtual_tokens: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1, allow_hyphen_values = true, value_parser = at_least::<0>)]
    pub warmup: usize,
    /// Attention implementation: auto, fused or unfused.
    #[arg(long, default_value = "auto")]
    pub attention: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn parse_path(s: &str) -> Result<AttentionPath> {
    Ok(match s {
        "auto" => AttentionPath::Auto,
        "fused" => AttentionPath::Fused,
        "unfused" => AttentionPath::Unfused,
        other => bail!("--attention {other}: expected auto, fused or unfused"),
    })
}

pub(super) struct Train(pub(super) TrainBench);

impl BackendVisitor for Train {
    type Output = Result<()>;
    fn visit<B: PrefixAttentionBackend>(self, device: B::Device) -> Result<()> {
        bench_train::<Autodiff<B>>(self.0, &device)
    }
}

fn bench_train<B: PrefixAttentionAutodiffBackend>(a: TrainBench, device: &B::Device) -> Result<()> {
    let method: Method = a.method.parse()?;
    peft_kernels::set_attention_path(parse_path(&a.attention)?);
    let ckpt = crate::commands::open_model(&a.model)?;
    let model = ckpt
        .load_with_precision::<B>(device, a.precision)?
        .no_grad();
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
    let mut last_loss = f64::NAN;
    for step in 0..a.warmup + a.steps {
        let start = Instant::now();
        let out = forward(&model, &rows, Routing::All(Some(&adapter)))?;
        let loss = nll_sum(&model, &out, &targets)?.div_scalar(targets.len() as f64);
        let grads = GradientsParams::from_grads(loss.clone().backward(), &adapter);
        adapter = optim.step(1e-3, adapter, grads);
        // Wait for the device so the time covers the whole step.
        let _ = B::sync(device);
        if step >= a.warmup {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        // Read after the timed step, so reading it adds no sync between forward and backward.
        last_loss = loss.into_scalar().elem::<f64>();
    }
    let step_ms = median(times);
    let tokens_per_s = (a.batch_size * a.seq_len) as f64 / (step_ms / 1e3);
    let rss = peak_rss_mb();
    if a.json {
        println!(
            "{}",
            json!({
                "backend": a.backend.name(), "precision": a.precision.name(), "method": method.name(), "batch_size": a.batch_size, "seq_len": a.seq_len,
                "virtual_tokens": a.virtual_tokens, "steps": a.steps, "step_ms_median": step_ms,
                "tokens_per_s": tokens_per_s, "peak_rss_mb": rss, "trainable_params": adapter.num_params(),
                "last_loss": last_loss, "cpu_kernel": model.lm_head.weight.cpu_kernel().map(|k| k.name()),
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
