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

/// Keeps freed blocks in glibc's heap, for the next step to reuse, instead of returning them to
/// the OS: every training step allocates and frees the same few GiB of activations, and each
/// block the OS takes back comes back as fresh pages the kernel must fault in and zero.
///
/// * No trimming of the heap's top (`M_TRIM_THRESHOLD`), and a 256 MiB pad when it grows.
/// * No `mmap` for large blocks (`M_MMAP_MAX = 0`): glibc's mmap threshold tops out at 32 MiB,
///   and the LM head's `[tokens, vocab]` logits and their softmax and gradient buffers are about
///   200 MiB each at batch 8 × 128, so with the threshold alone each of them was still mapped
///   and unmapped every step.
/// * One arena (`M_ARENA_MAX = 1`): a block too large for a worker thread's arena would
///   otherwise be served by a fallback that made the above take effect in some runs only.
///
/// Measured (`peft bench train --steps 3 --warmup 1`, SmolLM2-135M, Flex, 2 cores; with the
/// equivalent `GLIBC_TUNABLES` against the threshold alone): page faults 2.34 M → 0.80 M and
/// step 8.0 → 6.2–7.0 s for prompt tuning, 2.28 M → 0.70–0.75 M and 7.05 → 5.85–6.01 s for
/// prefix tuning, peak RSS up 0–7% (docs/benchmarks.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; it is called before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_MAX, 0);
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
