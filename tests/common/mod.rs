//! Helpers of the end-to-end tests (shared with peft-models' tests).
#![allow(dead_code)]

#[path = "../../crates/peft-models/tests/common/mod.rs"]
pub mod model;

use burn::{
    module::Module,
    optim::{AdamWConfig, GradientsParams, Optimizer},
    tensor::{
        Tensor,
        backend::{AutodiffBackend, Backend},
    },
};
use peft_core::{
    Adapter, CausalLm, PeftModel,
    loss::{Targets, nll_sum},
    peft_model::{Routing, forward},
    prefix::{Prefix, PrefixLayout},
    prompt::{PromptInit, SoftPrompt},
};
use peft_kernels::{PrefixAttentionAutodiffBackend, PrefixAttentionBackend};
use peft_models::{Checkpoint, Decoder, generate::Conditioning};

/// What generation needs from an adapter.
pub fn conditioning<B: Backend>(adapter: &Adapter<B>) -> Conditioning<B> {
    Conditioning {
        virtual_tokens: adapter.virtual_tokens(),
        prefix: adapter.prefix(),
    }
}

pub fn tiny<B: PrefixAttentionBackend>() -> Decoder<B> {
    tiny_in(peft_kernels::WeightPrecision::F32)
}

/// The tiny model with its frozen linear weights in `precision`.
pub fn tiny_in<B: PrefixAttentionBackend>(precision: peft_kernels::WeightPrecision) -> Decoder<B> {
    let dir = model::repo_root().join("crates/peft-models/tests/fixtures/tiny-llama");
    Checkpoint::open(dir)
        .expect("open")
        .load_with_precision::<B>(&Default::default(), precision)
        .expect("load")
}

pub fn rows() -> Vec<Vec<u32>> {
    vec![
        vec![5, 17, 42, 99, 3, 250, 7],
        vec![1, 2, 3],
        vec![300, 12, 45, 45, 8],
    ]
}

pub fn adapters<B: PrefixAttentionBackend>(model: &Decoder<B>) -> [Adapter<B>; 3] {
    let device = Default::default();
    let layout = PrefixLayout::of(&model.dims());
    let prompt = SoftPrompt::init(
        model,
        4,
        &PromptInit::SampleVocab { seed: 3 },
        |_| unreachable!(),
    )
    .expect("prompt");
    [
        Adapter::Prompt(prompt),
        Adapter::Prefix(Prefix::random(5, 0.5, 11, layout, &device)),
        Adapter::Prefix(Prefix::mlp(3, 16, 24, 12, layout, &device)),
    ]
}

pub fn values<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().expect("f32")
}

pub fn all_params<B: burn::tensor::backend::Backend, M: Module<B>>(m: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl<B: burn::tensor::backend::Backend> burn::module::ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<B, D>>) {
            self.0.extend(
                p.val()
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .expect("f32"),
            );
        }
    }
    let mut c = Collect(Vec::new());
    m.visit(&mut c);
    c.0
}

pub fn loss<B: AutodiffBackend + PrefixAttentionBackend>(
    model: &Decoder<B>,
    adapter: &Adapter<B>,
) -> Tensor<B, 1> {
    let rows = rows();
    let mask: Vec<Vec<bool>> = rows.iter().map(|r| vec![true; r.len()]).collect();
    let targets = Targets::from_rows(&rows, &mask);
    let out = forward(model, &rows, Routing::All(Some(adapter))).expect("forward");
    nll_sum(model, &out, &targets)
        .expect("loss")
        .div_scalar(targets.len() as f32)
}

/// One AdamW step on each kind of adapter: the loss is finite, the frozen base gets no gradient
/// and keeps its exact bits, most adapter values move and stay finite.
pub fn one_step_changes_only_the_adapter<B: PrefixAttentionAutodiffBackend>() {
    let base = PeftModel::new(tiny::<B>());
    let before = all_params(base.base());
    for adapter in adapters(base.base()) {
        let method = adapter.method();
        let adapter_before = all_params(&adapter);
        let objective = loss(base.base(), &adapter);
        peft_testing::assert_finite(&values(objective.clone()), "loss");
        let mut grads = objective.backward();
        let base_grads = GradientsParams::from_module(&mut grads, base.base());
        assert_eq!(
            base_grads.len(),
            0,
            "{method:?}: the frozen base received gradients"
        );
        let grads = GradientsParams::from_grads(grads, &adapter);
        assert!(
            !grads.is_empty(),
            "{method:?}: the adapter received no gradient"
        );
        let mut optim = AdamWConfig::new().init::<B, Adapter<B>>();
        let adapter = optim.step(1e-2, adapter, grads);
        let after = all_params(&adapter);
        // A NaN differs from every value: without this a NaN step would count as movement.
        peft_testing::assert_finite(&after, &format!("{method:?}: adapter after one step"));
        let changed = adapter_before
            .iter()
            .zip(&after)
            .filter(|(a, b)| a != b)
            .count();
        assert!(
            changed * 2 > after.len(),
            "{method:?}: only {changed} of {} adapter values moved",
            after.len()
        );
        let base_after = all_params(base.base());
        assert!(
            before
                .iter()
                .zip(&base_after)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{method:?}: base weights changed"
        );
    }
}
