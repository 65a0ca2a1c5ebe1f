//! Seeded parameter initialisation on the host.
//!
//! Values are drawn with a seeded `StdRng` and uploaded, rather than drawn by the backend's
//! global generator, so an initialisation depends only on its seed: the same on every backend,
//! and unaffected by other threads drawing random numbers at the same time.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// `N(0, std²)` values of the given shape (Box–Muller on a seeded generator).
pub fn normal<B: Backend, const D: usize>(
    shape: [usize; D],
    std: f64,
    seed: u64,
    device: &B::Device,
) -> Tensor<B, D> {
    let n: usize = shape.iter().product();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(n + 1);
    while values.len() < n {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let theta = std::f64::consts::TAU * u2;
        values.push((r * theta.cos()) as f32);
        values.push((r * theta.sin()) as f32);
    }
    values.truncate(n);
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// `U(-bound, bound)` values of the given shape.
pub fn uniform<B: Backend, const D: usize>(
    shape: [usize; D],
    bound: f64,
    seed: u64,
    device: &B::Device,
) -> Tensor<B, D> {
    let n: usize = shape.iter().product();
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..n)
        .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A linear layer `d_in → d_out` initialised like PyTorch's `nn.Linear`: weight and bias
/// `U(-1/√d_in, 1/√d_in)`.
pub fn linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    seed: u64,
    device: &B::Device,
) -> burn::nn::Linear<B> {
    let bound = 1.0 / (d_in as f64).sqrt();
    burn::nn::Linear {
        weight: burn::module::Param::from_tensor(uniform([d_in, d_out], bound, seed, device)),
        bias: Some(burn::module::Param::from_tensor(uniform(
            [d_out],
            bound,
            seed.wrapping_add(1),
            device,
        ))),
    }
}
