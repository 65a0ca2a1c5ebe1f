//! SmolLM2-135M against Hugging Face on wgpu (CI: Mesa's lavapipe, a CPU Vulkan driver).
//!
//! Tolerance: 1e-3 absolute, the same as on the CPU backends; measured differences are ~1e-4
//! (GPU-style reductions sum in a different order than PyTorch's CPU kernels).
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::Wgpu;

#[test]
fn wgpu_logits_and_greedy_tokens_match_hugging_face() {
    let Some(path) = common::model_path() else {
        return;
    };
    common::check_against_reference::<Wgpu>(&path, &Default::default(), 1e-3);
}
