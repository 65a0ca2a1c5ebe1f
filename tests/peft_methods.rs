//! Prompt and prefix tuning on a tiny Llama (tests/fixtures of peft-models): training touches
//! only the adapter, batches can mix adapters per row, gradient checkpointing changes nothing,
//! adapters round-trip through PEFT-format files and refuse models they do not fit.

mod common;

use burn::{
    backend::{
        Autodiff, Flex,
        autodiff::checkpoint::strategy::{BalancedCheckpointing, CheckpointStrategy},
    },
    module::{AutodiffModule, Module},
    tensor::{Tensor, backend::AutodiffBackend},
};
use common::{adapters, loss, one_step_changes_only_the_adapter, rows, tiny, tiny_in, values};
use peft_core::{
    Adapter, CausalLm, PeftModel,
    adapter::{SaveOptions, load_adapter, save_adapter},
    loss::{Targets, nll_sum},
    peft_model::{Routing, forward},
    prefix::{Prefix, PrefixLayout},
    prompt::SoftPrompt,
};
use peft_kernels::{AttentionPath, WeightPrecision, linear::cpu::CpuKernel};
use peft_models::Decoder;
use peft_testing::{assert_close, max_rel_diff};

type Ad = Autodiff<Flex>;

#[test]
fn one_step_changes_the_adapter_and_nothing_else() {
    one_step_changes_only_the_adapter::<Ad>();
}

#[test]
fn trainable_parameter_report_counts_like_peft() {
    let mut model = PeftModel::new(tiny::<Flex>());
    let [prompt, prefix, _] = adapters(model.base());
    model.add_adapter("p", prompt).expect("add");
    model.add_adapter("x", prefix).expect("add");
    let base = model.base().parameter_count();
    let report = model.trainable_parameters("p").expect("report");
    assert_eq!(report.trainable, 4 * 32);
    assert_eq!(report.total, base + 4 * 32);
    let report = model.trainable_parameters("x").expect("report");
    assert_eq!(report.trainable, 5 * 2 * 2 * 2 * 8);
    assert!(
        report
            .to_string()
            .starts_with("trainable params: 320 || all params: "),
        "{report}"
    );
}

#[test]
fn mixed_batch_equals_separate_forwards() {
    let mut model = PeftModel::new(tiny::<Flex>());
    let [prompt, prefix, mlp] = adapters(model.base());
    model.add_adapter("a", prompt).expect("add");
    model.add_adapter("b", prefix).expect("add");
    model.add_adapter("c", mlp).expect("add");
    let rows = vec![
        vec![5, 17, 42, 99],
        vec![1, 2, 3, 4, 5, 6],
        vec![300, 12],
        vec![7, 8, 9],
    ];
    let choice = [Some("a"), Some("b"), None, Some("c")];
    let mixed = model.forward_mixed(&rows, &choice).expect("mixed");
    for (r, name) in choice.iter().enumerate() {
        let alone = model.forward(&rows[r..r + 1], *name).expect("single");
        for t in 0..rows[r].len() {
            let a = values(model.logits(mixed.gather(&[mixed.flat_index(r, t)])));
            let b = values(model.logits(alone.gather(&[alone.flat_index(0, t)])));
            assert_close(
                &b,
                &a,
                1e-5,
                &format!("row {r} ({name:?}) token {t}: mixed against separate logits"),
            );
        }
    }
}

/// The gradient of every float parameter of `adapter`, flattened in visiting order.
fn grads_of<B: AutodiffBackend>(adapter: &Adapter<B>, grads: &B::Gradients) -> Vec<f32> {
    struct Grads<'a, B: AutodiffBackend>(&'a B::Gradients, &'a mut Vec<f32>);
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for Grads<'_, B> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<B, D>>) {
            let g = p.val().grad(self.0).expect("adapter gradient");
            self.1.extend(
                g.into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .expect("f32"),
            );
        }
    }
    let mut flat = Vec::new();
    adapter.visit(&mut Grads::<B>(grads, &mut flat));
    flat
}

/// Summed loss of `rows` (every token a target) under `routing`.
fn summed_loss(model: &Decoder<Ad>, rows: &[Vec<u32>], routing: Routing<'_, Ad>) -> Tensor<Ad, 1> {
    let mask: Vec<Vec<bool>> = rows.iter().map(|r| vec![true; r.len()]).collect();
    let out = forward(model, rows, routing).expect("forward");
    nll_sum(model, &out, &Targets::from_rows(rows, &mask)).expect("loss")
}

/// The backward of a mixed batch: each adapter's gradient from the summed loss of a batch whose
/// rows use different adapters (one of them in two rows, one row none) equals the sum of its
/// gradients from its rows run alone.
#[test]
fn mixed_batch_gradients_equal_separate_runs() {
    let model = tiny::<Ad>().no_grad();
    let rows = [rows(), vec![vec![7, 8, 9, 10], vec![11, 12, 13]]].concat();
    let adapters = adapters(&model);
    // The soft prompt, the prefix (rows 1 and 3), the prefix MLP, and no adapter.
    let choice: [Option<&Adapter<Ad>>; 5] = [
        Some(&adapters[0]),
        Some(&adapters[1]),
        Some(&adapters[2]),
        Some(&adapters[1]),
        None,
    ];
    let mixed = summed_loss(&model, &rows, Routing::PerRow(&choice)).backward();
    for (a, adapter) in adapters.iter().enumerate() {
        let got = grads_of(adapter, &mixed);
        let mut want = vec![0.0f32; got.len()];
        for (r, row) in rows.iter().enumerate() {
            if choice[r].is_some_and(|c| std::ptr::eq(c, adapter)) {
                let alone = summed_loss(
                    &model,
                    std::slice::from_ref(row),
                    Routing::All(Some(adapter)),
                )
                .backward();
                for (w, g) in want.iter_mut().zip(grads_of(adapter, &alone)) {
                    *w += g;
                }
            }
        }
        let err = max_rel_diff(&want, &got, 1e-12);
        assert!(
            err < 1e-5,
            "adapter {a}: mixed-batch gradient differs from the separate runs' by {err} of \
             their largest"
        );
    }
}

fn adapter_grads<C: CheckpointStrategy>(path: AttentionPath) -> Vec<Vec<f32>> {
    let model = tiny::<Autodiff<Flex, C>>()
        .no_grad()
        .with_attention_path(path);
    adapters(&model)
        .iter()
        .map(|adapter| grads_of(adapter, &loss(&model, adapter).backward()))
        .collect()
}

#[test]
fn checkpointed_gradients_equal_plain_ones() {
    for path in [AttentionPath::Unfused, AttentionPath::Fused] {
        let plain =
            adapter_grads::<burn::backend::autodiff::checkpoint::strategy::NoCheckpointing>(path);
        let ckpt = adapter_grads::<BalancedCheckpointing>(path);
        for (a, b) in plain.iter().zip(&ckpt) {
            let err = max_rel_diff(a, b, 1e-12);
            assert!(
                err < 1e-5,
                "{path:?}: checkpointed gradients differ by {err} of their largest"
            );
        }
    }
}

/// `--precision bf16`: the adapters' gradients through a model whose frozen linear weights are
/// bf16 (products on this CPU's fastest bf16 kernel, forward and backward) stay within
/// `BF16_GRAD_TOL` of the f32 model's, relative to the largest. The bound comes from bf16
/// rounding (2⁻⁹ relative on weights and product inputs, a few products deep): about twice the
/// worst adapter seen (docs/measured/2026-12-05-test-figures.log).
#[test]
fn bf16_weights_give_gradients_close_to_f32() {
    const BF16_GRAD_TOL: f64 = 0.05;
    let f32_model = tiny::<Ad>().no_grad();
    let bf16_model = tiny_in::<Ad>(WeightPrecision::Bf16).no_grad();
    let best = CpuKernel::best();
    for (a, (adapter32, adapter16)) in adapters(&f32_model)
        .iter()
        .zip(adapters(&bf16_model).iter())
        .enumerate()
    {
        let want = grads_of(adapter32, &loss(&f32_model, adapter32).backward());
        let forward_calls = best.calls();
        let loss16 = loss(&bf16_model, adapter16);
        let backward_calls = best.calls();
        assert!(
            backward_calls > forward_calls,
            "no forward product on {best}"
        );
        let got = grads_of(adapter16, &loss16.backward());
        assert!(
            best.calls() > backward_calls,
            "no backward product on {best}"
        );
        let err = max_rel_diff(&want, &got, 1e-12);
        eprintln!("adapter {a}: bf16 gradients differ by {err:e} of the largest");
        assert!(
            err < BF16_GRAD_TOL,
            "adapter {a}: bf16 gradients differ from f32's by {err} of their largest"
        );
    }
}

#[test]
fn attention_paths_give_the_same_gradients() {
    let unfused = adapter_grads::<burn::backend::autodiff::checkpoint::strategy::NoCheckpointing>(
        AttentionPath::Unfused,
    );
    let fused = adapter_grads::<burn::backend::autodiff::checkpoint::strategy::NoCheckpointing>(
        AttentionPath::Fused,
    );
    for (a, b) in unfused.iter().zip(&fused) {
        let err = max_rel_diff(a, b, 1e-12);
        assert!(
            err < 1e-4,
            "op-path gradients differ from the composed path by {err} of their largest"
        );
    }
}

#[test]
fn adapters_round_trip_through_peft_files_and_mlp_collapses() {
    let model = tiny::<Flex>();
    let dims = model.dims();
    let dir = std::env::temp_dir().join(format!("peft-methods-rt-{}", std::process::id()));
    for (i, adapter) in adapters(&model).into_iter().enumerate() {
        let path = dir.join(i.to_string());
        save_adapter(&path, &adapter, &dims, &SaveOptions::default()).expect("save");
        let (loaded, config) =
            load_adapter::<Flex>(&path, &dims, &Default::default()).expect("load");
        assert_eq!(
            config.prefix_projection,
            matches!(adapter, Adapter::Prefix(_))
                .then_some(adapter.method() == peft_core::Method::PrefixMlp)
        );
        let rows = rows();
        let a = forward(&model, &rows, Routing::All(Some(&adapter))).expect("fwd");
        let b = forward(&model, &rows, Routing::All(Some(&loaded))).expect("fwd");
        assert_close(
            &values(a.hidden),
            &values(b.hidden),
            1e-6,
            &format!("adapter {i}: the reloaded (collapsed) adapter's output"),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn adapter_for_another_model_is_refused_naming_both() {
    let model = tiny::<Flex>();
    let mut dims = model.dims();
    let prefix = Adapter::Prefix(Prefix::<Flex>::random(
        2,
        1.0,
        0,
        PrefixLayout::of(&dims),
        &Default::default(),
    ));
    let dir = std::env::temp_dir().join(format!("peft-methods-fit-{}", std::process::id()));
    save_adapter(&dir, &prefix, &dims, &SaveOptions::default()).expect("save");
    dims.num_layers = 3;
    let err = load_adapter::<Flex>(&dir, &dims, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("num_layers 2") && err.contains("3 layers"),
        "{err}"
    );
    let mut model = PeftModel::new(model);
    let wide = Adapter::Prompt(SoftPrompt::from_tensor(Tensor::<Flex, 2>::zeros(
        [2, 48],
        &Default::default(),
    )));
    let err = model.add_adapter("wide", wide).unwrap_err().to_string();
    assert!(
        err.contains("width 48") && err.contains("hidden size 32"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn valid_model_evaluates_like_the_autodiff_one() {
    let train = PeftModel::new(tiny::<Ad>());
    let eval: PeftModel<Flex, Decoder<Flex>> = train.valid();
    let a = values(train.forward(&rows(), None).expect("fwd").hidden.inner());
    let b = values(eval.forward(&rows(), None).expect("fwd").hidden);
    assert_eq!(a, b);
    let _ = AutodiffModule::<Ad>::valid(train.base());
}
