//! Long-run memory check (not part of CI; `scripts/long-run.sh` runs it).
//!
//! Trains a prefix adapter on the tiny test model for 1000 optimizer steps, then runs 10 000
//! generation steps (500 generations of 20 tokens with a prefix-filled KV cache), sampling the
//! process's resident memory as it goes. After a warm-up the resident memory must stay flat: the
//! least-squares slope over the remaining samples is reported in KiB per 100 steps and the run
//! fails if memory grows by more than 5% (with a 4 MiB floor for allocator noise) from the end
//! of the warm-up to the end of the run.

use std::sync::atomic::AtomicBool;

use anyhow::{Result, bail};
use burn::{
    backend::{Autodiff, Flex},
    module::{AutodiffModule, Module},
};
use burn_peft::{
    core::{
        Adapter, CausalLm,
        adapter::SaveOptions,
        prefix::{Prefix, PrefixLayout},
        train::{
            Observer, StepMetrics, TrainConfig, Trainer,
            data::{Dataset, Record, Truncation},
        },
    },
    models::{
        Checkpoint,
        generate::{Conditioning, GenerationConfig, generate},
    },
};

fn rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// Least-squares slope of `(x, y)` pairs.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let cov: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    cov / var
}

struct Sampler(Vec<(f64, f64)>);
impl Observer for Sampler {
    fn on_step(&mut self, m: &StepMetrics) {
        if m.step.is_multiple_of(25) {
            self.0.push((m.step as f64, rss_kib()));
        }
    }
}

fn report(what: &str, samples: &[(f64, f64)], warmup: f64) -> Result<()> {
    let after: Vec<(f64, f64)> = samples
        .iter()
        .copied()
        .filter(|(x, _)| *x >= warmup)
        .collect();
    let (first, last) = (
        after.first().map_or(f64::NAN, |p| p.1),
        after.last().map_or(f64::NAN, |p| p.1),
    );
    let per_100 = slope(&after) * 100.0;
    println!(
        "{what}: RSS {:.1} MiB after warm-up (step {warmup}), {:.1} MiB at the end; slope {per_100:+.1} KiB per 100 steps over {} samples",
        first / 1024.0,
        last / 1024.0,
        after.len()
    );
    if last - first > (first * 0.05).max(4096.0) {
        bail!("{what}: resident memory grew from {first:.0} KiB to {last:.0} KiB");
    }
    Ok(())
}

fn main() -> Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/peft-models/tests/fixtures/tiny-llama");
    let ckpt = Checkpoint::open(&dir)?;
    let device = Default::default();
    let model = ckpt.load::<Autodiff<Flex>>(&device)?.no_grad();
    let records: Vec<(usize, Record)> = (0..64)
        .map(|i| {
            (
                i + 1,
                Record::Pair {
                    input: format!("name = Blue Spice {i} |"),
                    output: format!(" food = Italian {}", i % 7),
                },
            )
        })
        .collect();
    let data = Dataset::tokenize(
        std::path::Path::new("long-run"),
        records,
        &ckpt.tokenizer,
        64,
        Truncation::Left,
    )?;
    let layout = PrefixLayout::of(&model.dims());
    let adapter = Adapter::Prefix(Prefix::mlp(4, 16, 32, 1, layout, &device));
    let out = std::env::temp_dir().join(format!("peft-long-run-{}", std::process::id()));
    let config = TrainConfig {
        steps: 1000,
        batch_size: 8,
        lr: 1e-3,
        checkpoint_every: Some(250),
        ..TrainConfig::default()
    };
    let trainer = Trainer::new(
        &model,
        &data,
        None,
        config,
        out.clone(),
        SaveOptions::default(),
    );
    let mut sampler = Sampler(Vec::new());
    let trained = trainer.run(adapter, None, &mut sampler, &AtomicBool::new(false))?;
    report("training (1000 steps)", &sampler.0, 200.0)?;

    let inner = model.valid();
    let adapter = trained.adapter.valid().collapse();
    let cond = Conditioning {
        virtual_tokens: None,
        prefix: adapter.prefix(),
    };
    let prompt = ckpt.tokenizer.encode("name = Blue Spice |")?;
    let config = GenerationConfig {
        max_new_tokens: 20,
        stop_at_eos: false,
        ..Default::default()
    };
    let mut samples = Vec::new();
    for i in 0..500usize {
        generate(&inner, &ckpt.tokenizer, &prompt, &cond, &config, |_| {})?;
        if i.is_multiple_of(10) {
            samples.push(((i * 20) as f64, rss_kib()));
        }
    }
    report("generation (10 000 steps)", &samples, 2000.0)?;
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}
