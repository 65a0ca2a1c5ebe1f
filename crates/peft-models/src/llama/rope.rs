//! Rotary position embedding in Hugging Face's rotate-half convention.
//!
//! Frequencies follow `transformers`' default RoPE: `inv_freq[i] = 1 / θ^(2i/d)` and angle
//! `pos · inv_freq[i]`, both in f32, with the table `[cos | cos]`, `[sin | sin]` over the two
//! halves of a head. A head `x = [x1 | x2]` becomes `[x1·c − x2·s | x2·c + x1·s]`.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use peft_core::Positions;

/// Precomputed cosine and sine tables `[max_positions, head_dim / 2]`.
#[derive(burn::module::Module, Debug)]
pub struct Rope<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
}

/// Cosines and sines for one forward pass, `[B or 1, 1, L, head_dim / 2]`.
#[derive(Debug, Clone)]
pub struct RopeSlice<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
}

impl<B: Backend> Rope<B> {
    /// Tables for positions `0..max_positions`.
    pub fn new(head_dim: usize, max_positions: usize, theta: f64, device: &B::Device) -> Self {
        let half = head_dim / 2;
        let theta = theta as f32;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for pos in 0..max_positions {
            for f in &inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let table =
            |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [max_positions, half]), device);
        Self {
            cos: table(cos),
            sin: table(sin),
        }
    }

    /// Number of positions covered.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// The tables for `len` consecutive positions of each row.
    ///
    /// # Panics
    ///
    /// If a position is past the table; callers check lengths against the model's context first.
    pub fn slice(&self, positions: &Positions, batch: usize, len: usize) -> RopeSlice<B> {
        let max = self.max_positions();
        let half = self.cos.dims()[1];
        assert!(
            positions.max_start() + len <= max,
            "sequence of {} positions exceeds the model's context of {max}",
            positions.max_start() + len
        );
        match positions {
            Positions::Offset(start) => {
                let pick =
                    |t: &Tensor<B, 2>| t.clone().narrow(0, *start, len).reshape([1, 1, len, half]);
                RopeSlice {
                    cos: pick(&self.cos),
                    sin: pick(&self.sin),
                }
            }
            Positions::PerRow(starts) => {
                assert_eq!(starts.len(), batch, "one starting position per row");
                let ids: Vec<i64> = starts
                    .iter()
                    .flat_map(|&s| (s..s + len).map(|p| p as i64))
                    .collect();
                let ids = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(ids, [batch * len]),
                    &self.cos.device(),
                );
                let pick = |t: &Tensor<B, 2>| {
                    t.clone()
                        .select(0, ids.clone())
                        .reshape([batch, 1, len, half])
                };
                RopeSlice {
                    cos: pick(&self.cos),
                    sin: pick(&self.sin),
                }
            }
        }
    }
}

impl<B: Backend> RopeSlice<B> {
    /// Rotates `x` `[B, heads, L, head_dim]`.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let half = x.dims()[3] / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.narrow(3, half, half);
        let out1 = x1.clone() * self.cos.clone() - x2.clone() * self.sin.clone();
        let out2 = x2 * self.cos.clone() + x1 * self.sin.clone();
        Tensor::cat(vec![out1, out2], 3)
    }
}
