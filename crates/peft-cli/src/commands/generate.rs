//! `peft generate`: stream a completion, or print it as JSON with the top logits.

use std::{io::Write, path::PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use peft_core::{Adapter, CausalLm, adapter::load_adapter};
use peft_kernels::{
    PrefixAttentionBackend, WeightPrecision,
    backends::{BackendKind, BackendVisitor, dispatch},
};
use peft_models::{
    DEFAULT_MODEL_PATH,
    generate::{Conditioning, GenerationConfig, Sampling, generate},
};
use serde_json::json;

use crate::{
    backend::parse_backend,
    validate::{at_least, fraction, positive, seed},
};

/// Arguments of `peft generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model: a .gguf file or a Hugging Face directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, default_value = DEFAULT_MODEL_PATH)]
    pub model: PathBuf,
    /// Prompt text (special tokens such as <|im_start|> are recognised).
    #[arg(long)]
    pub prompt: String,
    /// Most tokens to generate (0: only the prompt's logits, with --json --top-logits).
    #[arg(long, default_value_t = 64, allow_hyphen_values = true, value_parser = at_least::<0>)]
    pub max_new_tokens: usize,
    /// Sample with this temperature (above 0) instead of decoding greedily.
    #[arg(long, allow_hyphen_values = true, value_parser = positive::<f32>)]
    pub temperature: Option<f32>,
    /// Nucleus sampling: keep the most likely tokens up to this total probability, above 0 and
    /// at most 1 (implies sampling).
    #[arg(long, allow_hyphen_values = true, value_parser = fraction::<f32>)]
    pub top_p: Option<f32>,
    /// Keep only the K most likely tokens (implies sampling).
    #[arg(long, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub top_k: Option<usize>,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true, value_parser = seed)]
    pub seed: u64,
    /// Stop when this string appears (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Compute backend.
    #[arg(long, default_value = "flex", value_parser = parse_backend)]
    pub backend: BackendKind,
    /// Precision of the frozen linear weights: f32, or bf16 (products in bf16 with f32
    /// accumulation; on CPU backends AMX or AVX512-BF16 where the CPU has them).
    #[arg(long, default_value = "f32")]
    pub precision: WeightPrecision,
    /// Print one JSON object (prompt_ids, generated_ids, generated_text, ...) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// With --json: include the K largest logits at the last prompt position (with an adapter,
    /// also the base model's, so its effect is visible).
    #[arg(long, value_name = "K", allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub top_logits: Option<usize>,
    /// Adapter directory (adapter_config.json + adapter_model.safetensors, PEFT layout).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

struct Run(GenerateArgs);

impl BackendVisitor for Run {
    type Output = Result<()>;

    fn visit<B: PrefixAttentionBackend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let ckpt = crate::commands::open_model(&args.model)?;
        let model = crate::commands::load_model::<B>(&ckpt, &device, args.precision)?;
        let prompt_ids = ckpt.tokenizer.encode(&args.prompt)?;
        let sampling = if args.temperature.is_some() || args.top_p.is_some() || args.top_k.is_some()
        {
            Sampling::Sample {
                temperature: args.temperature.unwrap_or(1.0),
                top_k: args.top_k,
                top_p: args.top_p,
                seed: args.seed,
            }
        } else {
            Sampling::Greedy
        };
        let config = GenerationConfig {
            max_new_tokens: args.max_new_tokens,
            sampling,
            stop_strings: args.stop.clone(),
            stop_at_eos: true,
        };
        let adapter = match &args.adapter {
            Some(dir) => Some(
                load_adapter::<B>(dir, &model.dims(), &device)
                    .with_context(|| format!("loading adapter {}", dir.display()))?
                    .0,
            ),
            None => None,
        };
        let conditioning = Conditioning {
            virtual_tokens: adapter.as_ref().and_then(Adapter::virtual_tokens),
            prefix: adapter.as_ref().and_then(Adapter::prefix),
        };
        let mut stdout = std::io::stdout().lock();
        let mut write_err = None;
        let out = generate(
            &model,
            &ckpt.tokenizer,
            &prompt_ids,
            &conditioning,
            &config,
            |piece| {
                if !args.json && write_err.is_none() {
                    write_err = stdout
                        .write_all(piece.as_bytes())
                        .and_then(|_| stdout.flush())
                        .err();
                }
            },
        )?;
        if let Some(e) = write_err {
            return Err(e.into());
        }
        if args.json {
            let mut obj = json!({
                "backend": args.backend.name(),
                "prompt_ids": prompt_ids,
                "generated_ids": out.ids,
                "generated_text": out.text,
                "stop_reason": out.stop,
            });
            if let Some(k) = args.top_logits {
                obj["top_logits"] = json!(top_k(&out.prompt_logits, k));
                if let Some(dir) = &args.adapter {
                    let plain = GenerationConfig {
                        max_new_tokens: 0,
                        ..config.clone()
                    };
                    let base = generate(
                        &model,
                        &ckpt.tokenizer,
                        &prompt_ids,
                        &Conditioning::default(),
                        &plain,
                        |_| {},
                    )?;
                    obj["base_top_logits"] = json!(top_k(&base.prompt_logits, k));
                    obj["adapter"] = json!(dir.display().to_string());
                }
            }
            writeln!(stdout, "{obj}")?;
        } else {
            writeln!(stdout)?;
        }
        Ok(())
    }
}

/// The `k` largest logits as `[id, logit]`, highest first (lower id first on ties).
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    order
        .into_iter()
        .take(k)
        .map(|i| (i, logits[i as usize]))
        .collect()
}

/// Runs `peft generate`.
pub fn run(args: GenerateArgs) -> Result<()> {
    dispatch(args.backend, Run(args))?
}
