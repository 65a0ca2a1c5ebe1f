//! SmolLM2-135M against Hugging Face on wgpu (CI: Mesa's lavapipe, a CPU Vulkan driver).
//!
//! Tolerance: 1.5e-4 absolute, about twice the worst prompt seen (6.7e-5 on lavapipe on an
//! Intel Xeon, docs/measured/2026-12-05-test-figures.log): GPU-style reductions sum in another
//! order than PyTorch's CPU kernels, so it is looser than the CPU backends' 1e-4.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::Wgpu;

#[test]
fn wgpu_logits_and_greedy_tokens_match_hugging_face() {
    let Some(path) = common::model_path() else {
        return;
    };
    common::check_against_reference::<Wgpu>(&path, &Default::default(), 1.5e-4);
}
