//! `peft`: train, run, evaluate, benchmark and inspect prompt- and prefix-tuning adapters.

mod backend;
mod commands;
mod plot;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Parameter-efficient fine-tuning (soft prompts, prefix tuning) of decoder-only LLMs on Burn.
#[derive(Debug, Parser)]
#[command(name = "peft", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a soft prompt or prefix adapter on a JSONL dataset.
    Train(Box<commands::train::TrainArgs>),
    /// Loss, perplexity and exact match of a model, with or without an adapter.
    Eval(commands::eval::EvalArgs),
    /// Generate text with a model (and optionally an adapter).
    Generate(commands::generate::GenerateArgs),
    /// Describe an adapter directory: method, sizes, trainable count, compatible models.
    Inspect(commands::inspect::InspectArgs),
    /// Benchmarks: training steps, generation, attention kernels.
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
    /// Serve the orchestrator that the nodes of a multi-machine `peft train --nodes` join.
    Coordinator(commands::coordinator::CoordinatorArgs),
}

impl Command {
    /// The backend named on the command line, if the command takes one and it was given.
    fn backend(&self) -> Option<peft_kernels::backends::BackendKind> {
        use commands::bench::BenchCommand as B;
        match self {
            Command::Train(a) => a.backend,
            Command::Eval(a) => Some(a.backend),
            Command::Generate(a) => Some(a.backend),
            Command::Inspect(_) | Command::Coordinator(_) => None,
            Command::Bench(B::Train(a)) => Some(a.backend),
            Command::Bench(B::Generate(a)) => Some(a.backend),
            Command::Bench(B::Attention(a)) => Some(a.backend),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread exists (parsing starts none). On the CPU backends it took 15–25% off a
    // training step; on wgpu over lavapipe it made Burn's unfused attention about 15% slower
    // and left the fused kernels unchanged, so it is not applied where a GPU backend is named
    // on the command line (docs/measured/history-benchmarks-2026-11-28-page-faults.md).
    use peft_kernels::backends::BackendKind;
    if !matches!(
        cli.command.backend(),
        Some(BackendKind::Wgpu | BackendKind::Cuda)
    ) {
        peft_core::train::allocator::tune_allocator_for_training();
    }
    // On a worker of a Rayon pool, so that the CPU backends' parallel operations do not put
    // `main` to sleep and wake it each time (bf16 decoding ~1.2x on an AMD EPYC Zen 3).
    let result = peft_core::threads::run_on_worker_pool(None, move || match cli.command {
        Command::Train(args) => commands::train::run(*args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Bench(cmd) => commands::bench::run(cmd),
        Command::Coordinator(args) => commands::coordinator::run(args),
    })
    .map_err(anyhow::Error::from)
    .and_then(|result| result);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed stdout (`peft generate | head`) is not an error worth reporting.
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
