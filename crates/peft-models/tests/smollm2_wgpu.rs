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
    common::check_against_reference::<Wgpu>(&path, &common::fixture(), &Default::default(), 1.5e-4);
}

/// `--precision bf16` on wgpu: where the device computes in bf16 the model loads with bf16
/// weights and its logits are finite; where it does not (WGSL has no bf16: lavapipe, and every
/// wgpu device today) loading is refused with an error naming the backend and the precision,
/// never a shader-compiler panic.
#[test]
fn wgpu_bf16_weights_load_or_are_refused_clearly() {
    use peft_kernels::{FrozenLinearBackend, WeightPrecision};
    let tiny = common::repo_root().join("crates/peft-models/tests/fixtures/tiny-llama");
    let ckpt = peft_models::Checkpoint::open(tiny).expect("open");
    let device = Default::default();
    let loaded = ckpt.load_with_precision::<Wgpu>(&device, WeightPrecision::Bf16);
    if <Wgpu as FrozenLinearBackend>::supports_precision(&device, WeightPrecision::Bf16) {
        use peft_core::CausalLm;
        let model = loaded.expect("bf16 model on a device that computes in bf16");
        let ids = burn::tensor::Tensor::<Wgpu, 2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(vec![5i64, 17, 42, 99], [1, 4]),
            &device,
        );
        let hidden = model.forward_hidden(peft_core::DecoderInput::new(model.embed(ids)));
        let logits = model
            .logits(hidden)
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32");
        peft_testing::assert_finite(&logits, "bf16 logits on wgpu");
    } else {
        let err = loaded.expect_err("bf16 refused").to_string();
        assert!(
            err.contains("bf16") && err.contains("--precision f32"),
            "unclear refusal: {err}"
        );
    }
}
