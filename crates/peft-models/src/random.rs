//! Random weights for any configuration: a [`TensorSource`] that needs no checkpoint, for
//! benchmarks and tests of model shapes that have no file (SmolLM2-sized layers without the
//! 49k-token vocabulary, say).

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{
    config::DecoderConfig,
    error::Result,
    source::{LayerWeight, LoadedTensor, TensorSource, WeightKey},
};

/// Seeded random weights shaped by a [`DecoderConfig`]: projections and embeddings uniform in
/// `±0.05`, RMSNorm scales 1 (after the family's weight offset). Each weight's values depend only on the seed and the weight, so a
/// model loads identically every time.
#[derive(Debug, Clone)]
pub struct RandomWeights {
    config: DecoderConfig,
    seed: u64,
    path: PathBuf,
}

impl RandomWeights {
    /// Random weights for `config`.
    pub fn new(config: &DecoderConfig, seed: u64) -> Self {
        Self {
            config: config.clone(),
            seed,
            path: PathBuf::from(format!("<random weights, seed {seed}>")),
        }
    }

    /// The Hugging Face shape of `key` under this configuration.
    fn shape(&self, key: WeightKey) -> Vec<usize> {
        let c = &self.config;
        let (h, q, kv) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
        );
        match key {
            WeightKey::Embedding | WeightKey::LmHead => vec![c.vocab_size, h],
            WeightKey::FinalNorm => vec![h],
            WeightKey::Layer(_, w) => match w {
                LayerWeight::AttnNorm
                | LayerWeight::MlpNorm
                | LayerWeight::PostAttnNorm
                | LayerWeight::PostMlpNorm => vec![h],
                LayerWeight::QueryNorm | LayerWeight::KeyNorm => vec![c.head_dim],
                LayerWeight::Query => vec![q, h],
                LayerWeight::Key | LayerWeight::Value => vec![kv, h],
                LayerWeight::Output => vec![h, q],
                LayerWeight::QueryBias => vec![q],
                LayerWeight::KeyBias | LayerWeight::ValueBias => vec![kv],
                LayerWeight::Gate | LayerWeight::Up => vec![c.intermediate_size, h],
                LayerWeight::Down => vec![h, c.intermediate_size],
            },
        }
    }
}

impl TensorSource for RandomWeights {
    fn path(&self) -> &Path {
        &self.path
    }

    fn name(&self, key: WeightKey) -> String {
        format!("{key:?}")
    }

    fn contains(&self, key: WeightKey) -> bool {
        match key {
            WeightKey::LmHead => !self.config.tie_word_embeddings,
            WeightKey::Layer(i, _) if i >= self.config.num_layers => false,
            WeightKey::Layer(
                _,
                LayerWeight::QueryBias | LayerWeight::KeyBias | LayerWeight::ValueBias,
            ) => self.config.attention_bias,
            WeightKey::Layer(_, LayerWeight::QueryNorm | LayerWeight::KeyNorm) => {
                self.config.features.qk_norm
            }
            WeightKey::Layer(_, LayerWeight::PostAttnNorm | LayerWeight::PostMlpNorm) => {
                self.config.features.sandwich_norms
            }
            _ => true,
        }
    }

    fn load(&self, key: WeightKey) -> Result<LoadedTensor> {
        let shape = self.shape(key);
        let len = shape.iter().product();
        let values = if key.is_norm() {
            // A scale of 1 once the family's offset is added.
            vec![1.0 - self.config.features.norm_weight_offset as f32; len]
        } else {
            let mut h = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&(self.seed, format!("{key:?}")), &mut h);
            let mut rng = StdRng::seed_from_u64(std::hash::Hasher::finish(&h));
            (0..len).map(|_| rng.random_range(-0.05..0.05)).collect()
        };
        Ok(LoadedTensor {
            name: self.name(key),
            shape,
            values,
        })
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::{
        backend::Flex,
        tensor::{Int, Tensor, TensorData},
    };
    use peft_core::{CausalLm, DecoderInput};

    use super::*;
    use crate::Decoder;

    fn config() -> DecoderConfig {
        DecoderConfig {
            architecture: "llama".into(),
            family: crate::Family::Llama,
            features: Default::default(),
            vocab_size: 50,
            hidden_size: 24,
            intermediate_size: 40,
            num_layers: 2,
            num_heads: 6,
            num_kv_heads: 2,
            head_dim: 4,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 32,
            tie_word_embeddings: false,
            attention_bias: true,
        }
    }

    #[test]
    fn loads_every_weight_of_the_config_deterministically() {
        let device = Default::default();
        let logits = |seed| {
            let model =
                Decoder::<Flex>::load(&config(), &RandomWeights::new(&config(), seed), &device)
                    .expect("random weights fit their own config");
            let ids = Tensor::<Flex, 2, Int>::from_data([[1, 2, 3]], &device);
            let hidden = model.forward_hidden(DecoderInput::new(model.embed(ids)));
            model.logits(hidden).into_data()
        };
        let (a, b, c): (TensorData, TensorData, TensorData) = (logits(1), logits(1), logits(2));
        assert_eq!(a.shape.dims::<3>(), [1, 3, 50]);
        assert_eq!(a, b, "same seed, same model");
        assert_ne!(a, c, "another seed, another model");
    }
}
