//! Soft prompt tuning (Lester et al. 2021): `N` trainable virtual-token embeddings placed before
//! the input embeddings of a frozen model.
//!
//! Forward semantics (those of Hugging Face PEFT): the `[N, hidden]` prompt is concatenated
//! before the token embeddings, the attention mask gains `N` leading ones, labels gain `N`
//! ignored positions, and real tokens take positions `N..`.

use burn::{
    module::{Module, Param},
    tensor::{ElementConversion, Int, Tensor, TensorData, backend::Backend},
};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{
    error::{PeftError, Result},
    model::CausalLm,
};

/// How the virtual tokens start.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInit {
    /// Gaussian values with the standard deviation of the model's own embedding table (PEFT's
    /// `RANDOM` draws N(0, 1), far off the scale of real embeddings).
    Random {
        /// Seed of the draw.
        seed: u64,
    },
    /// Embeddings of vocabulary entries drawn uniformly with a seed (PEFT's `SAMPLE_VOCAB`).
    SampleVocab {
        /// Seed of the draw.
        seed: u64,
    },
    /// Embeddings of the tokens of a text, repeated or truncated to `N` (PEFT's `TEXT`).
    Text(String),
}

impl PromptInit {
    /// The name PEFT writes in `prompt_tuning_init`.
    pub fn peft_name(&self) -> &'static str {
        match self {
            Self::Random { .. } => "RANDOM",
            Self::SampleVocab { .. } => "SAMPLE_VOCAB",
            Self::Text(_) => "TEXT",
        }
    }
}

/// `N` virtual-token embeddings `[N, hidden]`.
#[derive(Module, Debug)]
pub struct SoftPrompt<B: Backend> {
    /// The trainable embeddings `[N, hidden]`.
    pub embedding: Param<Tensor<B, 2>>,
}

/// PEFT's TEXT rule: the ids of the text, truncated to `n` or repeated until `n` are filled.
pub fn text_init_ids(ids: &[u32], n: usize) -> Vec<u32> {
    ids.iter()
        .copied()
        .cycle()
        .take(if ids.is_empty() { 0 } else { n })
        .collect()
}

impl<B: Backend> SoftPrompt<B> {
    /// A prompt holding the given embeddings `[N, hidden]`.
    pub fn from_tensor(embedding: Tensor<B, 2>) -> Self {
        Self {
            embedding: Param::from_tensor(embedding),
        }
    }

    /// Initialises `n` virtual tokens for `model`; `tokenize` turns the init text into ids.
    pub fn init<M: CausalLm<B>>(
        model: &M,
        n: usize,
        init: &PromptInit,
        tokenize: impl Fn(&str) -> Result<Vec<u32>>,
    ) -> Result<Self> {
        if n == 0 {
            return Err(PeftError::Invalid(
                "a soft prompt needs at least one virtual token".into(),
            ));
        }
        let table = model.embedding_table().detach();
        let [vocab, hidden] = table.dims();
        let device = table.device();
        // The embeddings of `ids` as the model feeds them (scaled where the model scales them:
        // PEFT initialises from the embedding module's output).
        let rows = |ids: Vec<u32>| {
            let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
            let len = ids.len();
            let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, len]), &device);
            model.embed(ids).detach().reshape([len, hidden])
        };
        let embedding = match init {
            PromptInit::Random { seed } => {
                let std: f64 = table.clone().var(0).mean().sqrt().into_scalar().elem();
                let std = std * model.embedding_scale();
                crate::init::normal([n, hidden], std, *seed, &device)
            }
            PromptInit::SampleVocab { seed } => {
                let mut rng = StdRng::seed_from_u64(*seed);
                rows((0..n).map(|_| rng.random_range(0..vocab as u32)).collect())
            }
            PromptInit::Text(text) => {
                let ids = tokenize(text)?;
                if ids.is_empty() {
                    return Err(PeftError::Invalid(format!(
                        "the init text {text:?} has no tokens"
                    )));
                }
                if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
                    return Err(PeftError::Invalid(format!(
                        "init token id {bad} is outside the vocabulary of {vocab}"
                    )));
                }
                rows(text_init_ids(&ids, n))
            }
        };
        Ok(Self::from_tensor(embedding.detach()))
    }

    /// Number of virtual tokens.
    pub fn len(&self) -> usize {
        self.embedding.dims()[0]
    }

    /// Whether there are no virtual tokens (never true for an initialised prompt).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The embeddings `[N, hidden]`.
    pub fn embeddings(&self) -> Tensor<B, 2> {
        self.embedding.val()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_ids_repeat_or_truncate_like_peft() {
        assert_eq!(text_init_ids(&[5, 6, 7], 8), [5, 6, 7, 5, 6, 7, 5, 6]);
        assert_eq!(text_init_ids(&[1, 2, 3, 4, 5], 3), [1, 2, 3]);
        assert_eq!(text_init_ids(&[9, 8], 2), [9, 8]);
    }
}
