//! `peft`: train, run, evaluate, benchmark and inspect prompt- and prefix-tuning adapters.

mod backend;
mod commands;
mod plot;

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
}

/// Keeps large freed blocks in glibc's heap instead of returning them to the OS: every training
/// step allocates and frees the same few hundred MiB of activations, and with the default
/// thresholds each allocation maps fresh pages the kernel must zero (measured: ~12% of a
/// SmolLM2 training step on 2 cores).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; it is called before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => commands::train::run(*args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Bench(cmd) => commands::bench::run(cmd),
    };
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
