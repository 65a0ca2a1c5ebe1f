//! Gradient checkpointing with prefix tuning (Burn's `BalancedCheckpointing`, what
//! `peft train --gradient-checkpointing true` uses) on the tiny Llama: the backward recomputes
//! activations that the forward did not keep, and the step's peak heap drops, with the same
//! gradients (`peft_methods.rs` compares them).
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

#[test]
fn checkpointing_recomputes_in_the_backward_and_lowers_the_peak() {
    // A first step of each warms up whatever is allocated once per process.
    step_memory::<NoCheckpointing>();
    step_memory::<BalancedCheckpointing>();
    let plain = step_memory::<NoCheckpointing>();
    let ckpt = step_memory::<BalancedCheckpointing>();
    eprintln!("no checkpointing: {plain:?}\nbalanced checkpointing: {ckpt:?}");
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
}
