//! `peft coordinator`: the orchestrator that the nodes of a multi-machine run join.

use anyhow::{Context, Result};
use clap::Args;

/// Arguments of `peft coordinator`.
#[derive(Debug, Clone, Args)]
pub struct CoordinatorArgs {
    /// Port to listen on (all interfaces); the nodes get `--coordinator HOST:PORT`.
    #[arg(long)]
    pub port: u16,
    /// Exit after serving this many runs (a run ends when its nodes finish or one is lost).
    /// [default: serve until stopped]
    #[arg(long)]
    pub runs: Option<usize>,
}

/// Runs `peft coordinator` until Ctrl-C or SIGTERM.
pub fn run(args: CoordinatorArgs) -> Result<()> {
    let listener = std::net::TcpListener::bind(("0.0.0.0", args.port))
        .with_context(|| format!("coordinator: listening on port {}", args.port))?;
    eprintln!(
        "coordinator: listening on 0.0.0.0:{} (Ctrl-C to stop); start each node with --nodes N --node-rank R --coordinator HOST:{}",
        args.port, args.port
    );
    peft_core::train::parallel::nodes::serve_coordinator(listener, args.runs)?;
    Ok(())
}
