//! `peft bench generate`: incremental decoding speed with the KV cache.

use std::{path::PathBuf, time::Instant};

use anyhow::Result;
use clap::Args;
use peft_core::{CausalLm, adapter::load_adapter};
use peft_kernels::{
    PrefixAttentionBackend, WeightPrecision,
    backends::{BackendKind, BackendVisitor},
};
use peft_models::{
    DEFAULT_MODEL_PATH,
    generate::{Conditioning, GenerationConfig, generate},
};
use serde_json::json;

use super::{median, peak_rss_mb};
use crate::{backend::parse_backend, validate::at_least};

/// Arguments of `peft bench generate`.
#[derive(Debug, Args)]
pub struct GenerateBench {
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
    /// Adapter directory (a prefix adapter pre-fills the cache).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 32, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub prompt_len: usize,
    /// Tokens to generate.
    #[arg(long, default_value_t = 64, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub new_tokens: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub repeats: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub(super) struct Gen(pub(super) GenerateBench);

impl BackendVisitor for Gen {
    type Output = Result<()>;
    fn visit<B: PrefixAttentionBackend>(self, device: B::Device) -> Result<()> {
        let a = self.0;
        let ckpt = crate::commands::open_model(&a.model)?;
        let model = ckpt.load_with_precision::<B>(&device, a.precision)?;
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
        // Ids spread over the vocabulary, away from the special tokens at its ends (on a
        // vocabulary of 200 or fewer, anywhere in it).
        let vocab = model.dims().vocab_size;
        let (first, span) = match vocab.checked_sub(200) {
            Some(span) if span > 0 => (100, span),
            _ => (0, vocab.max(1)),
        };
        let prompt: Vec<u32> = (0..a.prompt_len)
            .map(|t| (first + t * 7919 % span) as u32)
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
                json!({"backend": a.backend.name(), "precision": a.precision.name(), "prompt_len": a.prompt_len, "new_tokens": a.new_tokens,
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
