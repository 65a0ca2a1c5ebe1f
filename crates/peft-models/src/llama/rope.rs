//! Rotary position embedding in Hugging Face's rotate-half convention.
//!
//! Frequencies follow `transformers`' default RoPE: `inv_freq[i] = 1 / θ^(2i/d)` and angle
//! `pos · inv_freq[i]`, both in f32. A head `x = [x1 | x2]` becomes
//! `x·[cos | cos] + rotate_half(x)·[sin | sin]` with `rotate_half(x) = [−x2 | x1]`.
//!
//! The rotation is applied to the projection output while it is still a contiguous
//! `[B, L, heads·d]` tensor: the position tables are laid out flat, `[1 or B, L·heads·d]`, so every
//! element-wise product is between contiguous tensors or broadcasts one shared row, and
//! `rotate_half` is one product with a fixed `[d, d]` signed permutation. CPU backends run these
//! forms on their fast paths (no strided views), forward and backward.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use peft_core::Positions;

/// Precomputed cosine and sine tables `[max_positions, head_dim / 2]`, and the rotate-half
/// permutation.
#[derive(burn::module::Module, Debug)]
pub struct Rope<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    rotate_half: Tensor<B, 2>,
}

/// Flat tables for one head count: `[1 or B, L·heads·d]`.
#[derive(Debug, Clone)]
struct Flat<B: Backend> {
    heads: usize,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
}

/// The tables of one forward pass, for the query and key head counts.
#[derive(Debug, Clone)]
pub struct RopeSlice<B: Backend> {
    tables: Vec<Flat<B>>,
    rotate_half: Tensor<B, 2>,
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
        // x · R = rotate_half(x): column j < d/2 takes −x[j + d/2], column j ≥ d/2 takes x[j − d/2].
        let mut r = vec![0.0f32; head_dim * head_dim];
        for j in 0..half {
            r[(j + half) * head_dim + j] = -1.0;
            r[j * head_dim + j + half] = 1.0;
        }
        Self {
            cos: table(cos),
            sin: table(sin),
            rotate_half: Tensor::from_data(TensorData::new(r, [head_dim, head_dim]), device),
        }
    }

    /// Number of positions covered.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// The tables for `len` consecutive positions of each row, laid out for each of the given
    /// head counts.
    ///
    /// # Panics
    ///
    /// If a position is past the table; callers check lengths against the model's context first.
    pub fn slice(
        &self,
        positions: &Positions,
        batch: usize,
        len: usize,
        head_counts: &[usize],
    ) -> RopeSlice<B> {
        let max = self.max_positions();
        let half = self.cos.dims()[1];
        assert!(
            positions.max_start() + len <= max,
            "sequence of {} positions exceeds the model's context of {max}",
            positions.max_start() + len
        );
        // [rows, L, half] with rows = 1 (shared offset) or B (per-row offsets).
        let rows = match positions {
            Positions::Offset(_) => 1,
            Positions::PerRow(starts) => {
                assert_eq!(starts.len(), batch, "one starting position per row");
                batch
            }
        };
        let ids = match positions {
            Positions::Offset(_) => None,
            Positions::PerRow(starts) => {
                let ids: Vec<i64> = starts
                    .iter()
                    .flat_map(|&s| (s..s + len).map(|p| p as i64))
                    .collect();
                Some(Tensor::<B, 1, Int>::from_data(
                    TensorData::new(ids, [batch * len]),
                    &self.cos.device(),
                ))
            }
        };
        let pick = |t: &Tensor<B, 2>| -> Tensor<B, 3> {
            match (positions, &ids) {
                (Positions::Offset(start), _) => {
                    t.clone().narrow(0, *start, len).reshape([1, len, half])
                }
                (_, Some(ids)) => t.clone().select(0, ids.clone()).reshape([rows, len, half]),
                (Positions::PerRow(_), None) => unreachable!("per-row positions always have ids"),
            }
        };
        // [cos | cos] per position, repeated for every head, flattened.
        let flat = |t: &Tensor<B, 2>, heads: usize| -> Tensor<B, 2> {
            let t = pick(t);
            Tensor::cat(vec![t.clone(), t], 2)
                .unsqueeze_dim::<4>(2)
                .expand([rows, len, heads, 2 * half])
                .reshape([rows, len * heads * 2 * half])
        };
        let mut counts: Vec<usize> = head_counts.to_vec();
        counts.dedup();
        RopeSlice {
            tables: counts
                .iter()
                .map(|&h| Flat {
                    heads: h,
                    cos: flat(&self.cos, h),
                    sin: flat(&self.sin, h),
                })
                .collect(),
            rotate_half: self.rotate_half.clone(),
        }
    }
}

impl<B: Backend> RopeSlice<B> {
    /// Rotates the projection output `x` `[B, L, heads·d]` (heads must be one of the counts the
    /// slice was made for).
    ///
    /// # Panics
    ///
    /// If the slice has no tables for `heads`.
    pub fn apply(&self, x: Tensor<B, 3>, heads: usize) -> Tensor<B, 3> {
        let [b, l, width] = x.dims();
        let d = self.rotate_half.dims()[0];
        let t = self
            .tables
            .iter()
            .find(|t| t.heads == heads)
            .unwrap_or_else(|| panic!("RoPE tables were not prepared for {heads} heads"));
        let rotated = x
            .clone()
            .reshape([b * l * heads, d])
            .matmul(self.rotate_half.clone())
            .reshape([b, l * width]);
        let out = x.reshape([b, l * width]) * t.cos.clone() + rotated * t.sin.clone();
        out.reshape([b, l, width])
    }
}
