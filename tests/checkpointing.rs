//! Gradient checkpointing with prefix tuning (Burn's `BalancedCheckpointing`, what
//! `peft train --gradient-checkpointing true` uses) on the tiny Llama: with attention composed
//! of tensor ops, the backward recomputes activations that the forward did not keep and the
//! step's peak heap drops; Flex's host attention kernels peak lower still without it. The
//! gradients are the same either way (`peft_methods.rs` compares them).
//!
//! Measured with a counting global allocator, which is why this is a test binary of its own
//! and runs its measurements one after the other in one test.

mod common;

use burn::{
    backend::{
        Autodiff, Flex,
        autodiff::checkpoint::strategy::{
            BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
        },
    },
    module::Module,
    optim::GradientsParams,
};
use common::tiny;
use peft_core::{
    Adapter, CausalLm,
    loss::{Targets, nll_sum},
    peft_model::{Routing, forward},
    prefix::{Prefix, PrefixLayout},
};
use peft_testing::{AllocStats, CountingAllocator};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

/// Heap bytes of one training step's forward and backward under strategy `C`.
#[derive(Debug, Clone, Copy)]
struct StepMemory {
    /// Most bytes live at once during the forward and the backward, over those live before.
    peak: usize,
    /// Bytes the backward allocated (recomputed activations and gradients).
    backward: usize,
    /// Bytes live after the forward, over those live before: what the graph keeps.
    kept: usize,
}

fn step_memory<C: CheckpointStrategy>() -> StepMemory {
    let model = tiny::<Autodiff<Flex, C>>().no_grad();
    let layout = PrefixLayout::of(&model.dims());
    let adapter = Adapter::Prefix(Prefix::mlp(8, 16, 32, 3, layout, &Default::default()));
    // 8 rows of 96 tokens: the activations dwarf the tiny model's weights.
    let rows: Vec<Vec<u32>> = (0..8)
        .map(|r| {
            (0..96)
                .map(|t| ((r * 131 + t * 7) % 317 + 3) as u32)
                .collect()
        })
        .collect();
    let mask: Vec<Vec<bool>> = rows.iter().map(|r| vec![true; r.len()]).collect();
    let targets = Targets::from_rows(&rows, &mask);
    let start = AllocStats::reset_peak();
    let out = forward(&model, &rows, Routing::All(Some(&adapter))).expect("forward");
    let loss = nll_sum(&model, &out, &targets).expect("loss");
    drop(out);
    let after_forward = AllocStats::now();
    let grads = loss.backward();
    let end = AllocStats::now();
    assert!(
        !GradientsParams::from_grads(grads, &adapter).is_empty(),
        "the adapter received no gradient"
    );
    StepMemory {
        peak: end.peak - start.live,
        backward: end.total - after_forward.total,
        kept: after_forward.live.saturating_sub(start.live),
    }
}

/// Attention as a composition of tensor ops (what a backend without kernels runs): balanced
/// checkpointing drops the score matrices and other memory-bound activations, recomputes them in
/// the backward, and lowers the step's peak. Flex's host kernels never hold a score matrix, so
/// their step without checkpointing peaks below even that (4.1 MB against 10.6 MB measured
/// here), and with checkpointing it peaks higher (5.3 MB: what is kept for recomputation
/// outweighs what is dropped; `docs/measured/2026-12-05-host-kernel-test-figures.log`).
#[test]
fn checkpointing_recomputes_in_the_backward_and_lowers_the_peak() {
    use peft_kernels::{AttentionPath, set_attention_path};
    set_attention_path(AttentionPath::Unfused);
    // A first step of each warms up whatever is allocated once per process.
    step_memory::<NoCheckpointing>();
    step_memory::<BalancedCheckpointing>();
    let plain = step_memory::<NoCheckpointing>();
    let ckpt = step_memory::<BalancedCheckpointing>();
    set_attention_path(AttentionPath::Auto);
    let kernels = step_memory::<NoCheckpointing>();
    let kernels_ckpt = step_memory::<BalancedCheckpointing>();
    eprintln!(
        "unfused attention: no checkpointing {plain:?}\nbalanced checkpointing {ckpt:?}\n\
         host kernels: no checkpointing {kernels:?}\nbalanced checkpointing {kernels_ckpt:?}"
    );
    assert!(
        ckpt.kept < plain.kept,
        "the checkpointed graph keeps {} bytes after the forward, the plain one {}",
        ckpt.kept,
        plain.kept
    );
    assert!(
        ckpt.backward > plain.backward,
        "the checkpointed backward allocated {} bytes, the plain one {}: nothing was recomputed",
        ckpt.backward,
        plain.backward
    );
    assert!(
        ckpt.peak < plain.peak,
        "peak heap of the step: checkpointed {} bytes, plain {}",
        ckpt.peak,
        plain.peak
    );
    assert!(
        kernels.peak < ckpt.peak,
        "with the host kernels the step peaks at {} bytes, over the checkpointed unfused step's {}",
        kernels.peak,
        ckpt.peak
    );
}
