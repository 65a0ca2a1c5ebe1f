//! Learning-rate schedule: linear warmup, then cosine or linear decay, stepped once per
//! optimizer step (not per micro-batch).

/// Shape of the decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Half a cosine down to zero.
    #[default]
    Cosine,
    /// Straight line down to zero.
    Linear,
    /// No decay.
    Constant,
}

impl std::str::FromStr for Decay {
    type Err = crate::PeftError;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "cosine" => Ok(Self::Cosine),
            "linear" => Ok(Self::Linear),
            "constant" => Ok(Self::Constant),
            other => Err(crate::PeftError::Invalid(format!(
                "unknown schedule `{other}`; expected cosine, linear or constant"
            ))),
        }
    }
}

/// The learning rate of every optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps (linear from `lr / warmup` to `lr`).
    pub warmup: usize,
    /// Total optimizer steps.
    pub total: usize,
    /// Decay after warmup.
    pub decay: Decay,
}

impl Schedule {
    /// Learning rate of optimizer step `step` (0-based), as Hugging Face's schedulers compute it.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        self.lr
            * match self.decay {
                Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
                Decay::Linear => 1.0 - progress,
                Decay::Constant => 1.0,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = Schedule {
            lr: 1.0,
            warmup: 4,
            total: 14,
            decay: Decay::Linear,
        };
        assert_eq!(s.lr(0), 0.25);
        assert_eq!(s.lr(3), 1.0);
        assert_eq!(s.lr(4), 1.0);
        assert!((s.lr(9) - 0.5).abs() < 1e-12);
        let c = Schedule {
            decay: Decay::Cosine,
            ..s
        };
        assert!((c.lr(9) - 0.5).abs() < 1e-12);
        assert!(c.lr(13) > 0.0 && c.lr(13) < 0.05);
    }
}
