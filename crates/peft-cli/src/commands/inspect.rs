//! `peft inspect PATH`: what an adapter is and which models it fits, or what a model is (family,
//! sizes) and which methods fit it; nothing is loaded beyond headers and configuration.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use peft_core::adapter::{PeftType, inspect_adapter};

/// Arguments of `peft inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Adapter directory, or a model: a GGUF file or a Hugging Face directory (`config.json`).
    pub dir: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Virtual tokens the model's method sizes are given for.
    #[arg(long, default_value_t = 20)]
    pub virtual_tokens: usize,
}

/// Whether `path` is a model rather than an adapter directory.
fn is_model(path: &std::path::Path) -> bool {
    path.is_file()
        || (path.join("config.json").is_file() && !path.join("adapter_config.json").is_file())
}

/// Prints a model's summary.
fn model(args: &InspectArgs) -> Result<()> {
    let ckpt = peft_models::Checkpoint::open(&args.dir)
        .with_context(|| format!("inspecting {}", args.dir.display()))?;
    let s = peft_models::summary::ModelSummary::of(&ckpt, args.virtual_tokens);
    if args.json {
        println!("{}", serde_json::to_value(&s)?);
        return Ok(());
    }
    println!("model:              {}", s.path);
    println!(
        "family:             {} (architecture `{}`)",
        s.family, s.architecture
    );
    println!(
        "sizes:              {} layers, hidden {}, MLP {}, {} heads / {} key-value heads of dim {}",
        s.layers, s.hidden_size, s.intermediate_size, s.heads, s.kv_heads, s.head_dim
    );
    println!("vocabulary:         {}", s.vocab_size);
    println!("context:            {} positions", s.max_positions);
    println!("parameters:         {}", s.parameters);
    match s.sliding_window {
        Some(w) => println!(
            "attention:          {} global, {} sliding-window ({w}) layers",
            s.global_layers, s.sliding_layers
        ),
        None => println!("attention:          {} global layers", s.global_layers),
    }
    println!(
        "LM head:            {}",
        if s.tied_head {
            "tied to the embeddings"
        } else {
            "its own"
        }
    );
    println!(
        "methods (--method, {} virtual tokens):",
        args.virtual_tokens
    );
    for m in &s.methods {
        println!(
            "  {:<11} {} trainable values saved",
            m.method, m.saved_values
        );
        for note in &m.notes {
            println!("              {note}");
        }
    }
    Ok(())
}

/// Runs `peft inspect`.
pub fn run(args: InspectArgs) -> Result<()> {
    if is_model(&args.dir) {
        return model(&args);
    }
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
