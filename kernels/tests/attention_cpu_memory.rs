//! Flex's host attention kernels allocate no `[B, H, L, P + S]` score matrix, forward or
//! backward: their largest single allocation is an input-sized tensor, while the unfused
//! path's is at least the score matrix (which shows that the measurement sees one). One test,
//! so that nothing else allocates in this process while it measures.
#![cfg(feature = "flex")]

mod common;

use burn::backend::Flex;
use common::*;
use peft_kernels::AttentionPath;
use peft_testing::{AllocStats, CountingAllocator};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

#[test]
fn no_score_matrix_is_allocated() {
    let dev = Default::default();
    // Scores `[2, 6, 1024, 1088]`: 53 MB; queries, output and dQ 1.6 MB each.
    let c = Case::new(2, 6, 2, 1024, 32, 64).key_lengths(vec![1024, 500]);
    let x = Inputs::random(&c, 11);
    let dout = Rng::new(12).vec(c.q_len());
    let scores = c.b * c.h * c.l * (c.p + c.l) * 4;
    let largest = |path| {
        let start = AllocStats::reset_peak();
        let (out, grads, _) = run_backward::<Flex>(&c, &x, &dout, &dev, path);
        let end = AllocStats::now();
        assert!(
            end.total > start.total,
            "the counting allocator is not installed"
        );
        peft_testing::assert_finite(&out, "output");
        for g in grads.iter().flatten() {
            peft_testing::assert_finite(g, "gradient");
        }
        end.largest
    };
    let unfused = largest(AttentionPath::Unfused);
    let fused = largest(AttentionPath::Fused);
    eprintln!("largest allocation: host kernels {fused} B, unfused {unfused} B; scores {scores} B");
    assert!(
        unfused >= scores,
        "the unfused path's scores were not seen ({unfused} B)"
    );
    let queries = c.q_len() * 4;
    assert!(
        fused <= 2 * queries,
        "the host kernels allocated {fused} B at once; the queries are {queries} B"
    );
}
