//! `metrics.jsonl`: one JSON line per optimizer step (`"event": "train"`) and per evaluation
//! (`"event": "eval"`). Resuming drops the lines after the checkpoint's step first, so a resumed
//! run's log reads like an uninterrupted one.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

use super::{EvalMetrics, StepMetrics};
use crate::{
    error::{PeftError, Result},
    fs::write_atomic,
};

/// File name of the log in a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// An append-only metrics log.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `path`, keeping only the entries of steps `<= keep_until` (all entries are dropped
    /// for a fresh run, `keep_until = 0`).
    pub fn open(path: &Path, keep_until: usize) -> Result<Self> {
        let kept: Vec<String> = match File::open(path) {
            Ok(f) if keep_until > 0 => BufReader::new(f)
                .lines()
                .map_while(std::result::Result::ok)
                .filter(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(Value::as_u64))
                        .is_some_and(|s| s as usize <= keep_until)
                })
                .collect(),
            _ => Vec::new(),
        };
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        write_atomic(path, text.as_bytes())?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| PeftError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    fn write(&mut self, v: Value) -> Result<()> {
        writeln!(self.file, "{v}")
            .and_then(|_| self.file.flush())
            .map_err(|e| PeftError::io(&self.path, e))
    }

    /// Logs a training step.
    pub fn step(&mut self, m: &StepMetrics) -> Result<()> {
        self.write(json!({
            "event": "train", "step": m.step, "loss": m.loss, "lr": m.lr, "grad_norm": m.grad_norm,
            "tokens": m.tokens, "seconds": m.seconds, "tokens_per_s": m.tokens as f64 / m.seconds.max(1e-9),
            "sync_seconds": m.sync_seconds,
        }))
    }

    /// Logs an evaluation.
    pub fn eval(&mut self, m: &EvalMetrics) -> Result<()> {
        self.write(json!({"event": "eval", "step": m.step, "loss": m.loss, "perplexity": m.perplexity, "tokens": m.tokens}))
    }
}

/// The `(step, loss)` pairs of one event kind in a metrics log.
pub fn read_series(path: &Path, event: &str) -> Result<Vec<(usize, f64)>> {
    let text = std::fs::read_to_string(path).map_err(|e| PeftError::io(path, e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("event").and_then(Value::as_str) == Some(event))
        .filter_map(|v| Some((v.get("step")?.as_u64()? as usize, v.get("loss")?.as_f64()?)))
        .collect())
}
