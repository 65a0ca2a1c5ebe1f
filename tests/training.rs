//! The training loop on the tiny Llama: resuming after an interruption gives the same adapter
//! bytes and loss curve as an uninterrupted run; a non-finite loss stops the run and keeps the
//! last good checkpoint; a checkpoint write that dies before its rename changes nothing.

mod common;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use burn::backend::{Autodiff, Flex};
use common::tiny;
use peft_core::{
    Adapter, CausalLm,
    adapter::SaveOptions,
    prefix::{Prefix, PrefixLayout},
    prompt::{PromptInit, SoftPrompt},
    train::{
        Observer, Outcome, StepMetrics, TrainConfig, Trainer,
        checkpoint::{self, TrainState, latest_checkpoint, list_checkpoints, stage_checkpoint},
        data::{Dataset, Record, Truncation},
        metrics::read_series,
    },
};
use peft_models::Decoder;

type Ad = Autodiff<Flex>;

fn dataset() -> Dataset {
    let tok = peft_models::Checkpoint::open(
        common::model::repo_root().join("crates/peft-models/tests/fixtures/tiny-llama"),
    )
    .expect("open")
    .tokenizer;
    let records: Vec<(usize, Record)> = (0..24)
        .map(|i| {
            let r = if i % 3 == 0 {
                Record::Text(format!("The quick brown fox number {i} jumps."))
            } else {
                Record::Pair {
                    input: format!("name = Blue Spice {i} |"),
                    output: format!(" food = Italian {}", i % 5),
                }
            };
            (i + 1, r)
        })
        .collect();
    Dataset::tokenize(Path::new("mem.jsonl"), records, &tok, 64, Truncation::Left)
        .expect("tokenize")
}

fn adapter(model: &Decoder<Ad>) -> Adapter<Ad> {
    Adapter::Prefix(Prefix::mlp(
        4,
        8,
        16,
        5,
        PrefixLayout::of(&model.dims()),
        &Default::default(),
    ))
}

fn config() -> TrainConfig {
    TrainConfig {
        steps: 6,
        batch_size: 4,
        grad_accum: 2,
        lr: 5e-3,
        warmup_steps: 2,
        checkpoint_every: Some(2),
        keep_checkpoints: 2,
        ..Default::default()
    }
}

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("peft-training-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// Raises the stop flag after a given step, as Ctrl-C would.
struct StopAfter<'a>(usize, &'a AtomicBool);
impl Observer for StopAfter<'_> {
    fn on_step(&mut self, m: &StepMetrics) {
        if m.step == self.0 {
            self.1.store(true, Ordering::Relaxed);
        }
    }
}

#[test]
fn interrupted_and_resumed_run_equals_uninterrupted_run() {
    let model = tiny::<Ad>();
    let data = dataset();
    let (full, split) = (tmp("full"), tmp("split"));
    let never = AtomicBool::new(false);
    let t = Trainer::new(
        &model,
        &data,
        None,
        config(),
        full.clone(),
        SaveOptions::default(),
    );
    let r = t
        .run(adapter(&model), None, &mut (), &never)
        .expect("train");
    assert_eq!((r.outcome, r.steps), (Outcome::Finished, 6));

    let stop = AtomicBool::new(false);
    let t = Trainer::new(
        &model,
        &data,
        None,
        config(),
        split.clone(),
        SaveOptions::default(),
    );
    let r = t
        .run(adapter(&model), None, &mut StopAfter(3, &stop), &stop)
        .expect("train");
    assert_eq!((r.outcome, r.steps), (Outcome::Interrupted, 3));
    let ckpt = r.checkpoint.expect("interruption writes a checkpoint");
    assert!(ckpt.ends_with("step-00000003"), "{}", ckpt.display());
    assert!(
        !split.join("adapter_model.safetensors").exists(),
        "no final adapter before the run ends"
    );

    let resume = latest_checkpoint(&split).expect("checkpoint");
    let never = AtomicBool::new(false);
    // The adapter argument is ignored when resuming: pass a different one to prove it.
    let other = Adapter::Prefix(Prefix::mlp(
        4,
        8,
        16,
        99,
        PrefixLayout::of(&model.dims()),
        &Default::default(),
    ));
    let r = t
        .run(other, Some(&resume), &mut (), &never)
        .expect("resume");
    assert_eq!((r.outcome, r.steps), (Outcome::Finished, 6));

    for file in ["adapter_model.safetensors", "adapter_config.json"] {
        let a = std::fs::read(full.join(file)).expect("full");
        let b = std::fs::read(split.join(file)).expect("split");
        assert!(
            a == b,
            "{file} differs between the uninterrupted and the resumed run"
        );
    }
    let la = read_series(&full.join("metrics.jsonl"), "train").expect("log");
    let lb = read_series(&split.join("metrics.jsonl"), "train").expect("log");
    assert_eq!(la.len(), 6);
    assert_eq!(la, lb, "loss curves differ");
    assert!(la.iter().all(|(_, l)| l.is_finite()));
    // keep_checkpoints = 2
    let kept: Vec<usize> = list_checkpoints(&split).iter().map(|c| c.0).collect();
    assert_eq!(kept, [4, 6]);
    let _ = std::fs::remove_dir_all(&full);
    let _ = std::fs::remove_dir_all(&split);
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let model = tiny::<Ad>();
    let data = dataset();
    let out = tmp("nan");
    // An absurd learning rate pushes the soft prompt past f32's range within two steps.
    let cfg = TrainConfig {
        lr: 3e38,
        max_grad_norm: None,
        warmup_steps: 0,
        checkpoint_every: Some(1),
        steps: 5,
        ..config()
    };
    let never = AtomicBool::new(false);
    let t = Trainer::new(
        &model,
        &data,
        None,
        cfg,
        out.clone(),
        SaveOptions::default(),
    );
    let prompt = Adapter::Prompt(
        SoftPrompt::init(
            &model,
            3,
            &PromptInit::Random { seed: 1 },
            |_| unreachable!(),
        )
        .expect("init"),
    );
    let err = t
        .run(prompt, None, &mut (), &never)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the loss became") && err.contains("last good checkpoint"),
        "{err}"
    );
    let last = latest_checkpoint(&out).expect("a good checkpoint remains");
    let state: TrainState =
        serde_json::from_slice(&std::fs::read(last.join("state.json")).expect("state"))
            .expect("json");
    assert!(
        state.last_loss.is_finite(),
        "the kept checkpoint holds a finite state"
    );
    assert!(err.contains(&format!("step {}", state.step + 1)), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn checkpoint_write_interrupted_before_rename_leaves_previous_intact() {
    let model = tiny::<Ad>();
    let out = tmp("crash");
    let a = adapter(&model);
    let optim = peft_core::train::optimizer::<Ad>(0.0);
    let state = |step| TrainState {
        step,
        micro_batches: step,
        tokens: 0,
        shape: checkpoint::AdapterShape::of(&a),
        last_loss: 1.0,
    };
    let first = stage_checkpoint(&out, &a, &optim, &state(1))
        .expect("stage")
        .commit(2)
        .expect("commit");
    let before: Vec<(String, Vec<u8>)> = files(&first);
    // Stage step 2 but "crash" before the rename: the staged directory is never committed.
    let staged = stage_checkpoint(&out, &a, &optim, &state(2)).expect("stage");
    drop(staged);
    assert_eq!(
        latest_checkpoint(&out),
        Some(first.clone()),
        "a partial checkpoint must not be picked"
    );
    assert_eq!(files(&first), before, "the previous checkpoint changed");
    // The next complete checkpoint cleans up the partial one.
    stage_checkpoint(&out, &a, &optim, &state(3))
        .expect("stage")
        .commit(2)
        .expect("commit");
    let leftovers: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    let _ = std::fs::remove_dir_all(&out);
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    v.sort();
    v
}
