//! Data-parallel training through the library API on the tiny Llama (Flex): peers that are
//! threads of one process (`burn-collective`) and nodes that meet at a coordinator end with the
//! adapter a single device trains, within 1e-5, for prompt tuning and for prefix tuning through
//! the MLP, with gradient accumulation, uneven shards and an empty shard; a failing peer stops
//! the others with its own error.
//!
//! `burn-collective` has one local server per process, so these tests run one at a time.

mod common;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use burn::{
    backend::{Autodiff, Flex},
    tensor::Tensor,
};
use common::{all_params, tiny};
use peft_core::{
    Adapter, CausalLm, PeftError,
    adapter::SaveOptions,
    prefix::{Prefix, PrefixLayout},
    prompt::{PromptInit, SoftPrompt},
    train::{
        TrainConfig, TrainResult, Trainer,
        data::{Dataset, Record, Truncation},
        metrics::read_series,
        parallel::{
            Collective, Solo, burn_collective::Layout, nodes::serve_coordinator, peer_devices,
            peers::run_local_peers,
        },
    },
};
use peft_models::Decoder;
use peft_testing::assert_finite;

type Ad = Autodiff<Flex>;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// 30 examples of varied lengths (pairs with the loss on the output, and documents).
fn dataset(name: &str) -> Dataset {
    let tok = peft_models::Checkpoint::open(
        common::model::repo_root().join("crates/peft-models/tests/fixtures/tiny-llama"),
    )
    .expect("open")
    .tokenizer;
    let records: Vec<(usize, Record)> = (0..30)
        .map(|i| {
            let r = if i % 4 == 0 {
                Record::Text(format!(
                    "The quick brown fox number {i} jumps{}.",
                    " over the lazy dog".repeat(i % 3)
                ))
            } else {
                Record::Pair {
                    input: format!(
                        "name = Blue Spice {i} | area = {}",
                        "riverside ".repeat(i % 5)
                    ),
                    output: format!(" food = Italian {}", i % 7),
                }
            };
            (i + 1, r)
        })
        .collect();
    Dataset::tokenize(Path::new(name), records, &tok, 64, Truncation::Left).expect("tokenize")
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Prompt,
    PrefixMlp,
}

fn adapter(kind: Kind, model: &Decoder<Ad>) -> Adapter<Ad> {
    match kind {
        Kind::Prompt => Adapter::Prompt(
            SoftPrompt::init(model, 5, &PromptInit::Random { seed: 3 }, |_| Ok(vec![]))
                .expect("prompt"),
        ),
        Kind::PrefixMlp => Adapter::Prefix(Prefix::mlp(
            4,
            8,
            16,
            5,
            PrefixLayout::of(&model.dims()),
            &Default::default(),
        )),
    }
}

/// Ten steps at the `peft train` default learning rate of the method.
fn config(kind: Kind, batch_size: usize, grad_accum: usize) -> TrainConfig {
    TrainConfig {
        steps: 10,
        batch_size,
        grad_accum,
        lr: match kind {
            Kind::Prompt => 3e-2,
            Kind::PrefixMlp => 1e-3,
        },
        warmup_steps: 2,
        eval_every: Some(5),
        checkpoint_every: None,
        ..Default::default()
    }
}

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("peft-parallel-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// Counts the all-reduce calls of a peer: proof that the data-parallel path ran.
struct Counting<'a> {
    inner: &'a mut dyn Collective<Flex>,
    calls: &'a AtomicUsize,
}

impl Collective<Flex> for Counting<'_> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world(&self) -> usize {
        self.inner.world()
    }
    fn all_reduce_sum(&mut self, values: Tensor<Flex, 1>) -> peft_core::Result<Tensor<Flex, 1>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.all_reduce_sum(values)
    }
}

/// One peer's run: its own replica of the model, the same adapter and settings.
fn peer_run(
    kind: Kind,
    cfg: &TrainConfig,
    out: &Path,
    collective: &mut dyn Collective<Flex>,
) -> peft_core::Result<TrainResult<Ad>> {
    let model = tiny::<Ad>();
    let (train, eval) = (dataset("train.jsonl"), dataset("eval.jsonl"));
    let never = AtomicBool::new(false);
    Trainer::new(
        &model,
        &train,
        Some(&eval),
        cfg.clone(),
        out.to_path_buf(),
        SaveOptions::default(),
    )
    .run_with(adapter(kind, &model), None, &mut (), &never, collective)
}

fn single(kind: Kind, cfg: &TrainConfig, tag: &str) -> (Vec<f32>, PathBuf) {
    let out = tmp(tag);
    let r = peer_run(kind, cfg, &out, &mut Solo).expect("single-device run");
    (all_params(&r.adapter), out)
}

fn local_peers(kind: Kind, cfg: &TrainConfig, peers: usize, tag: &str) -> (Vec<f32>, PathBuf) {
    local_peers_in(Layout::local(peers), kind, cfg, tag)
}

fn local_peers_in(layout: Layout, kind: Kind, cfg: &TrainConfig, tag: &str) -> (Vec<f32>, PathBuf) {
    let peers = layout.devices;
    let out = tmp(tag);
    let calls = AtomicUsize::new(0);
    let r = run_local_peers::<Flex, _, _>(
        &layout,
        &peer_devices::<Flex>(peers),
        &[],
        |_, _, collective| {
            assert_eq!(collective.world(), peers);
            peer_run(
                kind,
                cfg,
                &out,
                &mut Counting {
                    inner: collective,
                    calls: &calls,
                },
            )
        },
    )
    .expect("data-parallel run");
    // One sum per step and one per evaluation (steps 5 and 10), on every peer.
    assert_eq!(calls.load(Ordering::SeqCst), peers * (cfg.steps + 2));
    (all_params(&r.adapter), out)
}

/// Max abs difference, failing on a non-finite value on either side.
fn assert_same(reference: &[f32], actual: &[f32], what: &str) {
    assert_finite(reference, "single device");
    assert_finite(actual, what);
    assert_eq!(reference.len(), actual.len());
    let worst = reference
        .iter()
        .zip(actual)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("{what}: max |Δ| = {worst:.2e}");
    assert!(worst <= 1e-5, "{what}: max |Δ| = {worst:e} > 1e-5");
}

/// The logged train losses and eval losses of two runs agree (the eval over sharded batches).
fn assert_same_curves(a: &Path, b: &Path) {
    for event in ["train", "eval"] {
        let (x, y) = (
            read_series(&a.join("metrics.jsonl"), event).expect("metrics"),
            read_series(&b.join("metrics.jsonl"), event).expect("metrics"),
        );
        assert_eq!(x.len(), y.len(), "{event} entries");
        assert!(!x.is_empty());
        for ((s1, l1), (s2, l2)) in x.iter().zip(&y) {
            assert_eq!(s1, s2);
            assert!(
                l1.is_finite() && l2.is_finite(),
                "{event} loss at step {s1}"
            );
            assert!(
                (l1 - l2).abs() <= 1e-5 * l1.abs(),
                "{event} loss at step {s1}: {l1} vs {l2}"
            );
        }
    }
}

#[test]
fn two_local_peers_equal_one_device_prompt() {
    let _one = serial();
    let cfg = config(Kind::Prompt, 8, 1);
    let (reference, a) = single(Kind::Prompt, &cfg, "prompt-1");
    let (parallel, b) = local_peers(Kind::Prompt, &cfg, 2, "prompt-2");
    assert_same(&reference, &parallel, "prompt, 2 peers");
    assert_same_curves(&a, &b);
    // As `peft train --devices 2` runs them on a CPU backend: each peer on its own Rayon pool.
    let layout = Layout::local(2).split_cpu_threads();
    assert!(layout.threads_per_peer.is_some());
    let (parallel, _) = local_peers_in(layout, Kind::Prompt, &cfg, "prompt-2-pools");
    assert_same(
        &reference,
        &parallel,
        "prompt, 2 peers with their own thread pools",
    );
}

#[test]
fn two_local_peers_equal_one_device_prefix_mlp_with_accumulation() {
    let _one = serial();
    let cfg = config(Kind::PrefixMlp, 8, 2);
    let (reference, a) = single(Kind::PrefixMlp, &cfg, "mlp-1");
    let (parallel, b) = local_peers(Kind::PrefixMlp, &cfg, 2, "mlp-2");
    assert_same(
        &reference,
        &parallel,
        "prefix-mlp, 2 peers, 2 micro-batches",
    );
    assert_same_curves(&a, &b);
}

#[test]
fn uneven_and_empty_shards_equal_one_device() {
    let _one = serial();
    // 8 rows on 3 peers: 3, 3 and 2 rows, each shard padded to its own longest row.
    let cfg = config(Kind::PrefixMlp, 8, 1);
    let (reference, _) = single(Kind::PrefixMlp, &cfg, "uneven-1");
    let (parallel, _) = local_peers(Kind::PrefixMlp, &cfg, 3, "uneven-3");
    assert_same(&reference, &parallel, "prefix-mlp, 8 rows on 3 peers");
    // 2 rows on 3 peers: the third peer has no rows and adds zero gradients.
    let cfg = config(Kind::Prompt, 2, 1);
    let (reference, _) = single(Kind::Prompt, &cfg, "empty-1");
    let (parallel, _) = local_peers(Kind::Prompt, &cfg, 3, "empty-3");
    assert_same(&reference, &parallel, "prompt, 2 rows on 3 peers");
}

#[test]
fn a_failing_peer_stops_the_others_with_its_error() {
    let _one = serial();
    let cfg = config(Kind::Prompt, 8, 1);
    let out = tmp("failing");
    let started = Instant::now();
    let err = run_local_peers::<Flex, _, _>(
        &Layout::local(2),
        &peer_devices::<Flex>(2),
        &[],
        |local, _, collective| {
            if local == 1 {
                return Err(PeftError::Invalid("peer 1's data is unreadable".into()));
            }
            peer_run(Kind::Prompt, &cfg, &out, collective)
        },
    )
    .expect_err("a failing peer fails the run");
    let text = err.to_string();
    assert!(text.contains("peer 1's data is unreadable"), "{text}");
    // Peer 0 was waiting for peer 1 in its first sum; it stopped long before the 600 s timeout.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn two_nodes_through_a_coordinator_equal_one_device() {
    let _one = serial();
    let cfg = config(Kind::Prompt, 8, 1);
    let (reference, a) = single(Kind::Prompt, &cfg, "nodes-1");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let coordinator = std::thread::spawn(move || serve_coordinator(listener, Some(1)));
    let out = tmp("nodes-2");
    let node = |rank: usize| {
        let layout = Layout::nodes(2, rank, address.clone(), 1);
        let settings = [("seed", cfg.seed.to_string())];
        run_local_peers::<Flex, _, _>(&layout, &peer_devices::<Flex>(1), &settings, |_, _, c| {
            assert_eq!((c.world(), c.rank()), (2, rank));
            peer_run(Kind::Prompt, &cfg, &out, c)
        })
    };
    let (r0, r1) = std::thread::scope(|s| {
        let n1 = s.spawn(|| node(1));
        let r0 = node(0);
        (r0, n1.join().expect("node 1"))
    });
    let (r0, r1) = (r0.expect("node 0"), r1.expect("node 1"));
    coordinator.join().expect("coordinator").expect("served");
    let parallel = all_params(&r0.adapter);
    assert_same(&reference, &parallel, "prompt, 2 nodes");
    // Both nodes applied the same updates.
    assert_same(&parallel, &all_params(&r1.adapter), "node 1 against node 0");
    assert_same_curves(&a, &out);
    assert!(
        r0.checkpoint.is_some() && r1.checkpoint.is_none(),
        "only node 0 writes"
    );
}
