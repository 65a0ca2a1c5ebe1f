//! `peft inspect DIR`: what an adapter is and which models it fits, without loading a model.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use peft_core::adapter::{PeftType, inspect_adapter};

/// Arguments of `peft inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Adapter directory.
    pub dir: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs `peft inspect`.
pub fn run(args: InspectArgs) -> Result<()> {
    let s =
        inspect_adapter(&args.dir).with_context(|| format!("inspecting {}", args.dir.display()))?;
    let c = &s.config;
    let method = match (c.peft_type, c.prefix_projection) {
        (PeftType::PromptTuning, _) => "prompt tuning (soft prompt)",
        (PeftType::PrefixTuning, Some(true)) => {
            "prefix tuning, trained through the MLP (stored collapsed)"
        }
        (PeftType::PrefixTuning, _) => "prefix tuning (direct, P-tuning v2)",
    };
    let checkpoints = crate::commands::train_checkpoints(&args.dir);
    if args.json {
        let mut v = serde_json::to_value(&s)?;
        v["method"] = method.into();
        v["compatible_models"] = s.compatible_models().into();
        v["training_checkpoints"] = checkpoints
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        println!("{v}");
        return Ok(());
    }
    println!("adapter:            {}", args.dir.display());
    println!("method:             {method}");
    println!("peft_type:          {:?}", c.peft_type);
    println!("virtual tokens:     {}", c.num_virtual_tokens);
    println!(
        "tensor:             prompt_embeddings {:?} {}",
        s.tensor_shape, s.dtype
    );
    println!(
        "trainable values:   {} ({} bytes on disk)",
        s.parameters, s.file_bytes
    );
    if let Some(hidden) = c
        .encoder_hidden_size
        .filter(|_| c.prefix_projection == Some(true))
    {
        println!("MLP hidden size:    {hidden} (kept only in training checkpoints)");
    }
    if let Some(init) = &c.prompt_tuning_init {
        let text = c
            .prompt_tuning_init_text
            .as_deref()
            .map(|t| format!(" {t:?}"))
            .unwrap_or_default();
        println!("init:               {init}{text}");
    }
    if let Some(base) = &c.base_model_name_or_path {
        println!("trained on:         {base}");
    }
    println!("compatible models:  {}", s.compatible_models());
    if !checkpoints.is_empty() {
        println!("training checkpoints (resumable with --resume):");
        for p in checkpoints {
            println!("  {}", p.display());
        }
    }
    Ok(())
}
