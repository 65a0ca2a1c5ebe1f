//! The training loop: AdamW on the adapter's parameters only, warmup then cosine or linear decay
//! stepped once per optimizer step, global-norm clipping, averaged gradient accumulation,
//! periodic evaluation, atomic checkpoints that resume bit-identically, a stop flag (Ctrl-C) that
//! checkpoints before returning, and a hard stop on a non-finite loss.
//!
//! Burn's `Learner` is not used: it sums accumulated gradients, steps the learning rate per
//! micro-batch and checkpoints the whole (frozen) model.

pub mod allocator;
pub mod batching;
pub mod checkpoint;
pub mod clip;
pub mod data;
pub mod metrics;
pub mod parallel;
pub mod schedule;
pub mod setup;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use burn::{
    module::Module,
    optim::{AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer},
    tensor::{ElementConversion, Tensor, backend::AutodiffBackend},
};

use crate::{
    adapter::{Adapter, SaveOptions, save_adapter},
    error::{PeftError, Result},
    loss::{Targets, nll_sum},
    model::CausalLm,
    peft_model::{Routing, forward},
};
use batching::BatchPlan;
use checkpoint::{AdapterOptimizer, AdapterShape, TrainState, load_checkpoint, stage_checkpoint};
use data::Dataset;
use metrics::MetricsLog;
use parallel::{Collective, Solo, all_reduce_grads, shard};
use schedule::{Decay, Schedule};

/// Settings of a run. The defaults follow Hugging Face's Trainer where it has one (AdamW
/// β = (0.9, 0.999), ε = 1e-8, no weight decay, clipping at norm 1.0) and PEFT's prompt-tuning
/// examples for the learning rate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (their gradients are averaged).
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    pub warmup_steps: usize,
    /// Decay after warmup.
    pub decay: Decay,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Evaluate every this many steps (and at the end) when an eval set is given.
    pub eval_every: Option<usize>,
    /// Checkpoint every this many steps (and always at the end).
    pub checkpoint_every: Option<usize>,
    /// Checkpoints to keep.
    pub keep_checkpoints: usize,
    /// Seed of the data order.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 100,
            batch_size: 8,
            grad_accum: 1,
            lr: 3e-2,
            warmup_steps: 0,
            decay: Decay::Cosine,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
            eval_every: None,
            checkpoint_every: None,
            keep_checkpoints: 2,
            seed: 42,
        }
    }
}

impl TrainConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(PeftError::Invalid(m.into()));
        if self.steps == 0 {
            return bad("steps must be at least 1");
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("batch size and gradient accumulation must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("the learning rate must be a positive number");
        }
        if self.max_grad_norm.is_some_and(|n| n.is_nan() || n <= 0.0) {
            return bad("max grad norm must be positive");
        }
        Ok(())
    }

    /// Optimizer steps in `epochs` passes over `examples` examples.
    pub fn steps_for_epochs(&self, epochs: f64, examples: usize) -> usize {
        let micro = examples.div_ceil(self.batch_size) as f64 * epochs;
        ((micro / self.grad_accum as f64).ceil() as usize).max(1)
    }
}

/// One optimizer step's numbers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepMetrics {
    /// Steps done (1-based).
    pub step: usize,
    /// Mean loss per target token over the step's micro-batches.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Real tokens processed in this step.
    pub tokens: u64,
    /// Wall-clock seconds of this step.
    pub seconds: f64,
    /// Seconds of the step spent in the data-parallel sum of the gradients, waiting for the
    /// other peers included (0 on one device).
    pub sync_seconds: f64,
}

/// An evaluation's numbers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EvalMetrics {
    /// Steps done when evaluated.
    pub step: usize,
    /// Mean loss per target token.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Target tokens scored.
    pub tokens: usize,
}

/// Receives progress (the CLI draws a progress bar with it).
pub trait Observer {
    /// After each optimizer step.
    fn on_step(&mut self, _m: &StepMetrics) {}
    /// After each evaluation.
    fn on_eval(&mut self, _m: &EvalMetrics) {}
    /// After a checkpoint is written.
    fn on_checkpoint(&mut self, _path: &Path) {}
}

impl Observer for () {}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All steps done.
    Finished,
    /// The stop flag was raised; a checkpoint holds the state.
    Interrupted,
}

/// The result of [`Trainer::run`].
#[derive(Debug)]
pub struct TrainResult<B: AutodiffBackend> {
    /// The trained adapter (with its MLP, if reparameterised).
    pub adapter: Adapter<B>,
    /// Finished or interrupted.
    pub outcome: Outcome,
    /// Steps done.
    pub steps: usize,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
}

/// AdamW with Hugging Face's defaults (β = (0.9, 0.999), ε = 1e-8) and the given decoupled
/// weight decay, over an adapter's parameters.
pub fn optimizer<B: AutodiffBackend>(weight_decay: f64) -> AdapterOptimizer<B> {
    AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(weight_decay as f32)
        .init::<B, Adapter<B>>()
}

/// Mean target-token loss of `adapter` (or the bare base) over a dataset, without gradients.
pub fn evaluate_loss<B: burn::tensor::backend::Backend, M: CausalLm<B>>(
    base: &M,
    adapter: Option<&Adapter<B>>,
    data: &Dataset,
    batch_size: usize,
) -> Result<(f64, usize)> {
    let (sum, count) = evaluate_sums(base, adapter, data, batch_size, 0, 1)?;
    mean_loss(data, sum, count)
}

/// The summed target-token loss and the number of target tokens of the batches `rank`,
/// `rank + world`, … of a dataset (a data-parallel peer's share of an evaluation).
fn evaluate_sums<B: burn::tensor::backend::Backend, M: CausalLm<B>>(
    base: &M,
    adapter: Option<&Adapter<B>>,
    data: &Dataset,
    batch_size: usize,
    rank: usize,
    world: usize,
) -> Result<(f64, usize)> {
    let mut sum = 0.0f64;
    let mut count = 0usize;
    for chunk in data
        .examples
        .chunks(batch_size.max(1))
        .skip(rank)
        .step_by(world.max(1))
    {
        let rows: Vec<Vec<u32>> = chunk.iter().map(|e| e.ids.clone()).collect();
        let masks: Vec<Vec<bool>> = chunk.iter().map(|e| e.is_target.clone()).collect();
        let targets = Targets::from_rows(&rows, &masks);
        if targets.is_empty() {
            continue;
        }
        let out = forward(base, &rows, Routing::All(adapter))?;
        let nll: f64 = nll_sum(base, &out, &targets)?.into_scalar().elem();
        sum += nll;
        count += targets.len();
    }
    Ok((sum, count))
}

fn mean_loss(data: &Dataset, sum: f64, count: usize) -> Result<(f64, usize)> {
    if count == 0 {
        return Err(PeftError::Invalid(format!(
            "{}: no target tokens to evaluate",
            data.path.display()
        )));
    }
    Ok((sum / count as f64, count))
}

/// An f64 as two f32 values whose sum is it to about 1e-14 relative, so that an f32 all-reduce
/// of the pairs sums f64 values without losing their precision.
fn split_f64(x: f64) -> [f32; 2] {
    let hi = x as f32;
    [hi, (x - f64::from(hi)) as f32]
}

/// A training run over a frozen base.
pub struct Trainer<'a, B: AutodiffBackend, M: CausalLm<B>> {
    /// The frozen base model.
    pub base: &'a M,
    /// Training data.
    pub train: &'a Dataset,
    /// Optional evaluation data.
    pub eval: Option<&'a Dataset>,
    /// Settings.
    pub config: TrainConfig,
    /// Run directory: final adapter, `metrics.jsonl`, `checkpoints/`.
    pub out: PathBuf,
    /// Recorded in the exported adapter's config.
    pub save: SaveOptions,
    _b: std::marker::PhantomData<B>,
}

impl<'a, B: AutodiffBackend, M: CausalLm<B>> Trainer<'a, B, M> {
    /// A run of `config` on `train` (and `eval`) writing into `out`.
    pub fn new(
        base: &'a M,
        train: &'a Dataset,
        eval: Option<&'a Dataset>,
        config: TrainConfig,
        out: PathBuf,
        save: SaveOptions,
    ) -> Self {
        Self {
            base,
            train,
            eval,
            config,
            out,
            save,
            _b: std::marker::PhantomData,
        }
    }

    fn optimizer(&self) -> AdapterOptimizer<B> {
        optimizer(self.config.weight_decay)
    }

    /// Trains `adapter`, or — with `resume` — continues from a checkpoint directory (the
    /// adapter argument is then ignored). Returns when all steps are done, when `stop` is raised
    /// (after writing a checkpoint), or with an error when the loss stops being finite (the last
    /// good checkpoint stays).
    pub fn run(
        &self,
        adapter: Adapter<B>,
        resume: Option<&Path>,
        observer: &mut dyn Observer,
        stop: &AtomicBool,
    ) -> Result<TrainResult<B>> {
        self.run_with(adapter, resume, observer, stop, &mut Solo)
    }

    /// [`Trainer::run`] as one peer of a data-parallel run: this peer trains on its shard of
    /// every global batch ([`parallel::shard`]) and `collective` sums the peers' gradients, so
    /// every peer applies the single-device update of the whole batch. Every peer must start
    /// from the same adapter (or checkpoint) and settings. Only peer 0 writes files and reports
    /// to its observer; a stop raised on any peer stops all of them after the same step.
    pub fn run_with(
        &self,
        adapter: Adapter<B>,
        resume: Option<&Path>,
        observer: &mut dyn Observer,
        stop: &AtomicBool,
        collective: &mut dyn Collective<B::InnerBackend>,
    ) -> Result<TrainResult<B>> {
        let cfg = &self.config;
        cfg.validate()?;
        let (rank, world) = (collective.rank(), collective.world());
        let writer = rank == 0;
        let mut silent = ();
        let observer: &mut dyn Observer = if writer { observer } else { &mut silent };
        let device = self.base.embedding_table().device();
        let (mut adapter, mut optim, mut state) = match resume {
            Some(dir) => load_checkpoint(dir, self.optimizer(), &device)?,
            None => {
                let shape = AdapterShape::of(&adapter);
                (
                    adapter,
                    self.optimizer(),
                    TrainState {
                        step: 0,
                        micro_batches: 0,
                        tokens: 0,
                        shape,
                        last_loss: f64::NAN,
                    },
                )
            }
        };
        adapter.check_fits("the trained adapter", &self.base.dims())?;
        let mut log = if writer {
            std::fs::create_dir_all(&self.out).map_err(|e| PeftError::io(&self.out, e))?;
            Some(MetricsLog::open(
                &self.out.join(metrics::METRICS_FILE),
                state.step,
            )?)
        } else {
            None
        };
        let plan = BatchPlan::new(
            self.train.examples.iter().map(|e| e.ids.len()).collect(),
            cfg.batch_size,
            cfg.seed,
        );
        let schedule = Schedule {
            lr: cfg.lr,
            warmup: cfg.warmup_steps,
            total: cfg.steps,
            decay: cfg.decay,
        };
        let mut checkpoint = None;
        while state.step < cfg.steps {
            if world == 1 && stop.load(Ordering::Relaxed) {
                return self.interrupted(adapter, &optim, &state, observer, writer);
            }
            let started = Instant::now();
            let mut accum = GradientsAccumulator::<Adapter<B>>::new();
            let mut loss_total: Option<Tensor<B::InnerBackend, 1>> = None;
            let mut tokens = 0u64;
            for _ in 0..cfg.grad_accum {
                let batch = plan.batch(state.micro_batches);
                state.micro_batches += 1;
                let rows: Vec<Vec<u32>> = batch
                    .iter()
                    .map(|&i| self.train.examples[i].ids.clone())
                    .collect();
                let masks: Vec<Vec<bool>> = batch
                    .iter()
                    .map(|&i| self.train.examples[i].is_target.clone())
                    .collect();
                tokens += rows.iter().map(|r| r.len() as u64).sum::<u64>();
                // The mean is over the whole global batch's target tokens, whichever peer
                // holds them.
                let global_targets = Targets::from_rows(&rows, &masks).len();
                let mine = shard(rows.len(), rank, world);
                let targets = Targets::from_rows(&rows[mine.clone()], &masks[mine.clone()]);
                if targets.is_empty() {
                    continue;
                }
                let out = forward(self.base, &rows[mine], Routing::All(Some(&adapter)))?;
                let loss = nll_sum(self.base, &out, &targets)?
                    .div_scalar((global_targets * cfg.grad_accum) as f64);
                let value = loss.clone().inner();
                loss_total = Some(match loss_total.take() {
                    Some(t) => t + value,
                    None => value,
                });
                accum.accumulate(
                    &adapter,
                    GradientsParams::from_grads(loss.backward(), &adapter),
                );
            }
            let mut grads = accum.grads();
            let stopping = f32::from(u8::from(stop.load(Ordering::Relaxed)));
            let local = Tensor::<B::InnerBackend, 1>::from_floats([0.0, stopping], &device);
            let local = match loss_total {
                Some(loss) => local + Tensor::cat(vec![loss, Tensor::zeros([1], &device)], 0),
                // One device with no target token in the step: a NaN loss stops the run, as it
                // always has; a peer's empty shard adds nothing.
                None if world == 1 => local.add_scalar(f32::NAN),
                None => local,
            };
            let sync_started = Instant::now();
            let summed: Vec<f32> = all_reduce_grads(&adapter, &mut grads, local, collective)?
                .into_data()
                .convert::<f32>()
                .into_vec()
                .map_err(|e| PeftError::Training(format!("reading the step's loss: {e:?}")))?;
            let sync_seconds = if world > 1 {
                sync_started.elapsed().as_secs_f64()
            } else {
                0.0
            };
            let (loss, stop_any) = (f64::from(summed[0]), summed[1] > 0.0);
            let norm = clip::clip_global_norm(&adapter, &mut grads, cfg.max_grad_norm);
            let grad_norm: f64 = norm.map_or(0.0, |n| n.into_scalar().elem());
            if !loss.is_finite() || !grad_norm.is_finite() {
                let kept = checkpoint::latest_checkpoint(&self.out)
                    .map_or("no checkpoint had been written yet".to_string(), |p| {
                        format!("the last good checkpoint is {}", p.display())
                    });
                return Err(PeftError::Training(format!(
                    "the loss became {} at step {} (gradient norm {grad_norm}); stopped without applying it — {kept}. Lower the learning rate or enable clipping.",
                    if loss.is_nan() {
                        "NaN".to_string()
                    } else {
                        loss.to_string()
                    },
                    state.step + 1
                )));
            }
            let lr = schedule.lr(state.step);
            adapter = optim.step(lr, adapter, grads);
            state.step += 1;
            state.tokens += tokens;
            state.last_loss = loss;
            let m = StepMetrics {
                step: state.step,
                loss,
                lr,
                grad_norm,
                tokens,
                seconds: started.elapsed().as_secs_f64(),
                sync_seconds,
            };
            if let Some(log) = &mut log {
                log.step(&m)?;
            }
            observer.on_step(&m);
            let last = state.step == cfg.steps;
            if let (Some(eval), Some(every)) = (self.eval, cfg.eval_every)
                && (state.step % every == 0 || last)
            {
                let frozen = adapter.clone().no_grad();
                let (sum, count) =
                    evaluate_sums(self.base, Some(&frozen), eval, cfg.batch_size, rank, world)?;
                let (sum, count) = if world == 1 {
                    (sum, count)
                } else {
                    let [hi, lo] = split_f64(sum);
                    let local =
                        Tensor::<B::InnerBackend, 1>::from_floats([hi, lo, count as f32], &device);
                    let all: Vec<f32> = collective
                        .all_reduce_sum(local)?
                        .into_data()
                        .convert::<f32>()
                        .into_vec()
                        .map_err(|e| {
                            PeftError::Training(format!("reading the eval loss: {e:?}"))
                        })?;
                    (f64::from(all[0]) + f64::from(all[1]), all[2] as usize)
                };
                let (loss, count) = mean_loss(eval, sum, count)?;
                let m = EvalMetrics {
                    step: state.step,
                    loss,
                    perplexity: loss.exp(),
                    tokens: count,
                };
                if let Some(log) = &mut log {
                    log.eval(&m)?;
                }
                observer.on_eval(&m);
            }
            if stop_any && world > 1 && !last {
                return self.interrupted(adapter, &optim, &state, observer, writer);
            }
            if last
                || cfg
                    .checkpoint_every
                    .is_some_and(|every| state.step % every == 0)
            {
                checkpoint = self.checkpoint(&adapter, &optim, &state, observer, writer)?;
            }
        }
        if writer {
            save_adapter(&self.out, &adapter, &self.base.dims(), &self.save)?;
        }
        Ok(TrainResult {
            adapter,
            outcome: Outcome::Finished,
            steps: state.step,
            checkpoint,
        })
    }

    /// Checkpoints (peer 0) and ends the run as interrupted.
    fn interrupted(
        &self,
        adapter: Adapter<B>,
        optim: &AdapterOptimizer<B>,
        state: &TrainState,
        observer: &mut dyn Observer,
        writer: bool,
    ) -> Result<TrainResult<B>> {
        let checkpoint = self.checkpoint(&adapter, optim, state, observer, writer)?;
        Ok(TrainResult {
            adapter,
            outcome: Outcome::Interrupted,
            steps: state.step,
            checkpoint,
        })
    }

    fn checkpoint(
        &self,
        adapter: &Adapter<B>,
        optim: &AdapterOptimizer<B>,
        state: &TrainState,
        observer: &mut dyn Observer,
        writer: bool,
    ) -> Result<Option<PathBuf>> {
        if !writer {
            return Ok(None);
        }
        let path = stage_checkpoint(&self.out, adapter, optim, state)?
            .commit(self.config.keep_checkpoints)?;
        observer.on_checkpoint(&path);
        Ok(Some(path))
    }
}
