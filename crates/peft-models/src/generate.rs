//! Text generation with a KV cache: greedy or seeded sampling (temperature, top-k, top-p),
//! stopping at an end-of-sequence id or a stop string, streaming text as it is decoded.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use peft_core::{CausalLm, KvCache, PrefixKv};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{
    error::{ModelError, Result},
    tokenizer::Tokenizer,
};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    /// The most likely token (first one on ties).
    Greedy,
    /// A seeded draw from the distribution shaped by temperature, then top-k, then top-p (the
    /// order of Hugging Face's logits warpers).
    Sample {
        /// Logits are divided by this (> 0).
        temperature: f32,
        /// Keep only the `k` most likely tokens.
        top_k: Option<usize>,
        /// Keep the smallest set of most likely tokens whose probability reaches `p`.
        top_p: Option<f32>,
        /// Random seed.
        seed: u64,
    },
}

/// Generation settings.
#[derive(Debug, Clone)]
pub struct GenerationConfig {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: Sampling,
    /// Stop when one of these strings appears in the generated text (it is cut off).
    pub stop_strings: Vec<String>,
    /// Stop at the tokenizer's end-of-sequence ids.
    pub stop_at_eos: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            sampling: Sampling::Greedy,
            stop_strings: Vec::new(),
            stop_at_eos: true,
        }
    }
}

impl GenerationConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if let Sampling::Sample {
            temperature,
            top_k,
            top_p,
            ..
        } = &self.sampling
        {
            if !(*temperature > 0.0 && temperature.is_finite()) {
                return Err(ModelError::Generation(format!(
                    "temperature must be positive, got {temperature}"
                )));
            }
            if *top_k == Some(0) {
                return Err(ModelError::Generation("top-k must be at least 1".into()));
            }
            if let Some(p) = top_p
                && !(*p > 0.0 && *p <= 1.0)
            {
                return Err(ModelError::Generation(format!(
                    "top-p must be in (0, 1], got {p}"
                )));
            }
        }
        Ok(())
    }
}

/// What conditions generation besides the prompt ids: an adapter's virtual token embeddings
/// (prepended before the prompt) and/or its prefix (pre-filled in the KV cache).
#[derive(Debug, Clone)]
pub struct Conditioning<B: Backend> {
    /// Soft prompt `[N, hidden]`.
    pub virtual_tokens: Option<Tensor<B, 2>>,
    /// Per-layer prefix keys/values.
    pub prefix: Option<PrefixKv<B>>,
}

impl<B: Backend> Default for Conditioning<B> {
    fn default() -> Self {
        Self {
            virtual_tokens: None,
            prefix: None,
        }
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-sequence id was generated.
    Eos,
    /// A stop string appeared.
    StopString,
    /// `max_new_tokens` were generated.
    MaxTokens,
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids (an end-of-sequence id that stopped generation included, as Hugging Face
    /// returns it).
    pub ids: Vec<u32>,
    /// Generated text (without the end-of-sequence token, cut at a stop string).
    pub text: String,
    /// Vocabulary logits at the last prompt position.
    pub prompt_logits: Vec<f32>,
    /// Why generation stopped.
    pub stop: StopReason,
}

/// Picks the next token from `logits` (one row of the vocabulary).
pub fn choose(logits: &[f32], sampling: &Sampling, rng: &mut StdRng) -> u32 {
    match sampling {
        Sampling::Greedy => argmax(logits),
        Sampling::Sample {
            temperature,
            top_k,
            top_p,
            ..
        } => {
            let mut order: Vec<u32> = (0..logits.len() as u32).collect();
            order.sort_by(|&a, &b| {
                logits[b as usize]
                    .total_cmp(&logits[a as usize])
                    .then(a.cmp(&b))
            });
            if let Some(k) = top_k {
                order.truncate((*k).max(1));
            }
            let max = logits[order[0] as usize] / temperature;
            let mut probs: Vec<f64> = order
                .iter()
                .map(|&i| ((logits[i as usize] / temperature - max) as f64).exp())
                .collect();
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
            if let Some(p) = top_p {
                let mut cum = 0.0;
                let keep = probs
                    .iter()
                    .position(|q| {
                        cum += q;
                        cum >= *p as f64
                    })
                    .map_or(probs.len(), |i| i + 1);
                probs.truncate(keep);
                order.truncate(keep);
                let total: f64 = probs.iter().sum();
                probs.iter_mut().for_each(|p| *p /= total);
            }
            let mut draw: f64 = rng.random();
            for (i, p) in probs.iter().enumerate() {
                if draw < *p {
                    return order[i];
                }
                draw -= p;
            }
            order[probs.len() - 1]
        }
    }
}

/// Index of the largest value (the first one on ties, as `torch.argmax`).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

fn last_logits<B: Backend, M: CausalLm<B>>(model: &M, hidden: Tensor<B, 3>) -> Vec<f32> {
    let [b, l, h] = hidden.dims();
    let last = hidden.narrow(1, l - 1, 1).reshape([b, 1, h]);
    model
        .logits(last)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()
}

/// Generates text after `prompt_ids`, calling `on_text` with each newly decoded piece.
///
/// The prompt (with the adapter's virtual tokens, if any) is processed in one forward pass that
/// fills the KV cache; each new token then costs one single-position forward.
pub fn generate<B: Backend, M: CausalLm<B>>(
    model: &M,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    conditioning: &Conditioning<B>,
    config: &GenerationConfig,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    config.validate()?;
    if prompt_ids.is_empty() {
        return Err(ModelError::Generation("the prompt has no tokens".into()));
    }
    let dims = model.dims();
    let device = model.embedding_table().device();
    let virtual_len = conditioning
        .virtual_tokens
        .as_ref()
        .map_or(0, |t| t.dims()[0]);
    let prefix_len = conditioning.prefix.as_ref().map_or(0, PrefixKv::len);
    let total = prefix_len + virtual_len + prompt_ids.len() + config.max_new_tokens;
    if total > dims.max_positions {
        return Err(ModelError::TooLong {
            len: total,
            max: dims.max_positions,
        });
    }
    if let Some(&bad) = prompt_ids
        .iter()
        .find(|&&id| id as usize >= dims.vocab_size)
    {
        return Err(ModelError::Generation(format!(
            "token id {bad} is outside the vocabulary of {}",
            dims.vocab_size
        )));
    }
    let mut cache = match &conditioning.prefix {
        Some(prefix) => KvCache::with_prefix(dims.num_layers, prefix.clone()),
        None => model.new_cache(),
    };
    let ids = |ids: &[u32]| {
        let data: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(data, [1, ids.len()]), &device)
    };
    let mut embeds = model.embed(ids(prompt_ids));
    if let Some(virt) = &conditioning.virtual_tokens {
        embeds = Tensor::cat(vec![virt.clone().unsqueeze::<3>(), embeds], 1);
    }
    let prompt_logits = last_logits(model, model.forward_cached(embeds, &mut cache));
    let mut rng = StdRng::seed_from_u64(match config.sampling {
        Sampling::Sample { seed, .. } => seed,
        Sampling::Greedy => 0,
    });
    let mut logits = prompt_logits.clone();
    let mut generated = Vec::new();
    let mut printed = 0;
    let mut text = String::new();
    let mut stop = StopReason::MaxTokens;
    while generated.len() < config.max_new_tokens {
        let next = choose(&logits, &config.sampling, &mut rng);
        generated.push(next);
        if config.stop_at_eos && tokenizer.eos_ids().contains(&next) {
            stop = StopReason::Eos;
            break;
        }
        text = tokenizer.decode(&generated)?;
        if let Some(cut) = config
            .stop_strings
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            text.truncate(cut);
            if text.len() > printed {
                on_text(&text[printed..]);
            }
            printed = text.len();
            stop = StopReason::StopString;
            break;
        }
        // Hold back an incomplete UTF-8 sequence (decoded as U+FFFD) until its last byte arrives.
        if !text.ends_with('\u{FFFD}') && text.len() > printed && text.is_char_boundary(printed) {
            on_text(&text[printed..]);
            printed = text.len();
        }
        if generated.len() == config.max_new_tokens {
            break;
        }
        logits = last_logits(
            model,
            model.forward_cached(model.embed(ids(&[next])), &mut cache),
        );
    }
    if stop != StopReason::StopString {
        let body: Vec<u32> = generated
            .iter()
            .copied()
            .filter(|id| !(stop == StopReason::Eos && tokenizer.eos_ids().contains(id)))
            .collect();
        text = tokenizer.decode(&body)?;
        if text.len() > printed && text.is_char_boundary(printed) {
            on_text(&text[printed..]);
        }
    }
    Ok(Generation {
        ids: generated,
        text,
        prompt_logits,
        stop,
    })
}
