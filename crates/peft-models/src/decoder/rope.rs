//! Rotary position embedding in Hugging Face's rotate-half convention.
//!
//! Frequencies follow `transformers`' default RoPE: `inv_freq[i] = 1 / θ^(2i/d)` and angle
//! `pos · inv_freq[i]`, both in f32. A head `x = [x1 | x2]` becomes
//! `x·[cos | cos] + rotate_half(x)·[sin | sin]` with `rotate_half(x) = [−x2 | x1]`.
//!
//! The rotation is applied to the projection output while it is still a contiguous
//! `[B, L, heads·d]` tensor: the position tables of a forward pass are computed on the host for
//! exactly the positions it uses and laid out flat, `[1 or B, L·heads·d]`, and the rotation is
//! [`peft_kernels::layer_ops::rotary`] over rows of `L·heads·d` (one multi-threaded pass on Flex;
//! elsewhere element-wise products between contiguous tensors, or broadcasting one shared row,
//! and `rotate_half` as one product with a fixed `[d, d]` signed permutation). Nothing is
//! allocated for positions a pass does not use, however long the model's context.

use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::config::RopeScaling;
use peft_core::Positions;
use peft_kernels::LayerOpsBackend;

/// Rotary embedding of one model: its frequencies and the rotate-half permutation.
#[derive(burn::module::Module, Debug)]
pub struct Rope<B: Backend> {
    /// No tensor: the tables are made per pass, on the inputs' device.
    backend: std::marker::PhantomData<B>,
    /// `1 / θ^(2i/d)`, `d/2` values.
    #[module(skip)]
    inv_freq: Vec<f32>,
    /// Positions the model supports.
    #[module(skip)]
    max_positions: usize,
}

/// Flat tables for one head count: `[1 or B, L·heads·d]`.
#[derive(Debug, Clone)]
struct Flat<B: Backend> {
    heads: usize,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
}

/// The tables of one forward pass, laid out for the query heads and for the key heads.
#[derive(Debug, Clone)]
pub struct RopeSlice<B: Backend> {
    query: Flat<B>,
    key: Flat<B>,
    head_dim: usize,
}

impl<B: Backend> Rope<B> {
    /// The embedding of a model with heads of `head_dim` and a context of `max_positions`,
    /// base `theta` and frequency `scaling`.
    pub fn new(head_dim: usize, max_positions: usize, theta: f64, scaling: &RopeScaling) -> Self {
        let half = head_dim / 2;
        let theta = theta as f32;
        let inv_freq = (0..half)
            .map(|i| {
                let f = 1.0 / theta.powf((2 * i) as f32 / head_dim as f32);
                scale_frequency(f, i, scaling)
            })
            .collect();
        Self {
            backend: std::marker::PhantomData,
            inv_freq,
            max_positions,
        }
    }

    /// Number of positions covered.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The tables for `len` consecutive positions of each row, laid out for `heads` query heads
    /// and `kv_heads` key heads, on `device`.
    ///
    /// # Panics
    ///
    /// If a position is past the model's context (callers check lengths first), or if
    /// per-row positions do not have one entry per row of the batch.
    pub fn slice(
        &self,
        positions: &Positions,
        batch: usize,
        len: usize,
        heads: usize,
        kv_heads: usize,
        device: &B::Device,
    ) -> RopeSlice<B> {
        let max = self.max_positions;
        assert!(
            positions.max_start() + len <= max,
            "sequence of {} positions exceeds the model's context of {max}",
            positions.max_start() + len
        );
        let starts: Vec<usize> = match positions {
            Positions::Offset(start) => vec![*start],
            Positions::PerRow(starts) => {
                assert_eq!(starts.len(), batch, "one starting position per row");
                starts.clone()
            }
        };
        let half = self.inv_freq.len();
        let table = |heads: usize| {
            let width = len * heads * 2 * half;
            let mut cos = Vec::with_capacity(starts.len() * width);
            let mut sin = Vec::with_capacity(starts.len() * width);
            for &start in &starts {
                for pos in start..start + len {
                    let (c, s): (Vec<f32>, Vec<f32>) = self
                        .inv_freq
                        .iter()
                        .map(|f| {
                            let angle = pos as f32 * f;
                            (angle.cos(), angle.sin())
                        })
                        .unzip();
                    for _ in 0..heads {
                        for _ in 0..2 {
                            cos.extend_from_slice(&c);
                            sin.extend_from_slice(&s);
                        }
                    }
                }
            }
            let shape = [starts.len(), width];
            Flat {
                heads,
                cos: Tensor::from_data(TensorData::new(cos, shape), device),
                sin: Tensor::from_data(TensorData::new(sin, shape), device),
            }
        };
        let query = table(heads);
        let key = if kv_heads == heads {
            query.clone()
        } else {
            table(kv_heads)
        };
        RopeSlice {
            query,
            key,
            head_dim: 2 * half,
        }
    }
}

/// Frequency `f` (the `i`-th) after `scaling`, in f32 as transformers computes it
/// (`_compute_linear_scaling_rope_parameters`, `_compute_llama3_parameters`).
fn scale_frequency(f: f32, i: usize, scaling: &RopeScaling) -> f32 {
    match scaling {
        RopeScaling::None => f,
        RopeScaling::Linear { factor } => f / *factor as f32,
        RopeScaling::Factors(factors) => f / factors[i],
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: original,
        } => {
            let (factor, low, high, original) = (
                *factor as f32,
                *low_freq_factor as f32,
                *high_freq_factor as f32,
                *original as f32,
            );
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen > original / low {
                f / factor
            } else if wavelen < original / high {
                f
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        }
    }
}

impl<B: LayerOpsBackend> RopeSlice<B> {
    /// Rotates the query projection `x` `[B, L, heads·d]`.
    pub fn rotate_queries(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.rotate(&self.query, x)
    }

    /// Rotates the key projection `x` `[B, L, kv_heads·d]`.
    pub fn rotate_keys(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.rotate(&self.key, x)
    }

    fn rotate(&self, t: &Flat<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, l, width] = x.dims();
        debug_assert_eq!(width, t.heads * self.head_dim);
        peft_kernels::layer_ops::rotary(
            x.reshape([b, l * width]),
            t.cos.clone(),
            t.sin.clone(),
            self.head_dim,
        )
        .reshape([b, l, width])
    }
}
