//! `peft eval`: loss, perplexity and exact match of a model (with or without an adapter).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use peft_core::{
    Adapter, CausalLm,
    adapter::load_adapter,
    train::{
        data::{Dataset, Truncation, read_jsonl},
        evaluate_loss,
    },
};
use peft_kernels::{
    PrefixAttentionBackend, WeightPrecision,
    backends::{BackendKind, BackendVisitor, dispatch},
};
use peft_models::{
    DEFAULT_MODEL_PATH,
    evaluate::{complete, exact_match},
    generate::Conditioning,
};
use serde_json::json;

use crate::{backend::parse_backend, validate::at_least};

/// Arguments of `peft eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model: a .gguf file or a Hugging Face directory.
    #[arg(long, default_value = DEFAULT_MODEL_PATH)]
    pub model: PathBuf,
    /// Adapter directory; without it the base model is evaluated, so the gain is visible.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// JSONL data ({"input","output"} pairs also get exact-match accuracy of greedy completions).
    #[arg(long)]
    pub data: PathBuf,
    /// Examples per forward pass for the loss.
    #[arg(long, default_value_t = 8, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub batch_size: usize,
    /// Longest example in tokens, virtual tokens included (longer inputs lose their start).
    #[arg(long, default_value_t = 512, allow_hyphen_values = true, value_parser = at_least::<2>)]
    pub max_len: usize,
    /// Skip the greedy completions (loss and perplexity only).
    #[arg(long)]
    pub no_generate: bool,
    /// Print one JSON object {"loss", "perplexity", "exact_match", ...}.
    #[arg(long)]
    pub json: bool,
    /// Compute backend.
    #[arg(long, default_value = "flex", value_parser = parse_backend)]
    pub backend: BackendKind,
    /// Precision of the frozen linear weights: f32, or bf16 (products in bf16 with f32
    /// accumulation; on CPU backends AMX or AVX512-BF16 where the CPU has them).
    #[arg(long, default_value = "f32")]
    pub precision: WeightPrecision,
}

struct Run(EvalArgs);

impl BackendVisitor for Run {
    type Output = Result<()>;

    fn visit<B: PrefixAttentionBackend>(self, device: B::Device) -> Result<()> {
        let a = self.0;
        let ckpt = crate::commands::open_model(&a.model)?;
        let model = crate::commands::load_model::<B>(&ckpt, &device, a.precision)?;
        let adapter: Option<Adapter<B>> = match &a.adapter {
            Some(dir) => Some(
                load_adapter(dir, &model.dims(), &device)
                    .with_context(|| format!("loading adapter {}", dir.display()))?
                    .0,
            ),
            None => None,
        };
        let virtual_tokens = adapter.as_ref().map_or(0, Adapter::num_virtual_tokens);
        let limit = a
            .max_len
            .min(ckpt.config.max_position_embeddings)
            .checked_sub(virtual_tokens)
            .filter(|l| *l >= 2)
            .with_context(|| {
                format!(
                    "--max-len {} leaves no room for tokens after the adapter's {virtual_tokens} virtual tokens",
                    a.max_len
                )
            })?;
        let data = Dataset::tokenize(
            &a.data,
            read_jsonl(&a.data)?,
            &ckpt.tokenizer,
            limit,
            Truncation::Left,
        )?;
        let (loss, tokens) = evaluate_loss(&model, adapter.as_ref(), &data, a.batch_size)?;
        let (em, completions) = if data.is_pairs() && !a.no_generate {
            let cond = Conditioning {
                virtual_tokens: adapter.as_ref().and_then(Adapter::virtual_tokens),
                prefix: adapter.as_ref().and_then(Adapter::prefix),
            };
            let c = complete(&model, &ckpt.tokenizer, &cond, &data.examples)?;
            (exact_match(&c), c.len())
        } else {
            (None, 0)
        };
        if a.json {
            println!(
                "{}",
                json!({
                    "loss": loss, "perplexity": loss.exp(), "exact_match": em,
                    "examples": data.len(), "target_tokens": tokens, "completions": completions,
                    "adapter": a.adapter.as_ref().map(|p| p.display().to_string()),
                })
            );
        } else {
            println!(
                "{}: {} examples, {tokens} target tokens",
                a.adapter
                    .as_ref()
                    .map_or("base model".to_string(), |p| format!(
                        "adapter {}",
                        p.display()
                    )),
                data.len()
            );
            println!("loss {loss:.4}  perplexity {:.3}", loss.exp());
            if let Some(em) = em {
                println!(
                    "exact match {:.1}% ({completions} greedy completions)",
                    100.0 * em
                );
            }
        }
        Ok(())
    }
}

/// Runs `peft eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    dispatch(args.backend, Run(args))?
}
