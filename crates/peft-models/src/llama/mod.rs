//! A Llama-family decoder (Llama, SmolLM, Mistral, Qwen2), generic over the backend.

mod layer;
mod matmul;
mod rope;

use burn::{
    module::{Module, Param},
    nn::{Embedding, Linear, RmsNorm},
    tensor::{Int, Tensor, TensorData},
};
use peft_core::{CausalLm, DecoderInput, KvCache, ModelDims, Positions};
use peft_kernels::{AttentionPath, PrefixAttentionBackend};

pub use layer::{Attention, DecoderLayer, Mlp};
pub use rope::{Rope, RopeSlice};

use crate::{
    config::LlamaConfig,
    error::{ModelError, Result},
    source::{LayerWeight, LoadedTensor, TensorSource, WeightKey},
};
use layer::LayerContext;

/// A Llama-family decoder with its weights.
#[derive(Module, Debug)]
pub struct Llama<B: PrefixAttentionBackend> {
    /// Token embedding `[vocab, hidden]`.
    pub embed: Embedding<B>,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
    /// Untied LM head `[hidden, vocab]`; `None` when tied to the embedding.
    pub lm_head: Option<Linear<B>>,
    /// RoPE tables (constants, not parameters).
    pub rope: Rope<B>,
    /// The configuration the weights were loaded with.
    #[module(skip)]
    pub config: LlamaConfig,
}

/// Reads weights from a [`TensorSource`], checking every shape against the configuration.
struct Loader<'a, B: PrefixAttentionBackend> {
    source: &'a dyn TensorSource,
    device: &'a B::Device,
}

impl<B: PrefixAttentionBackend> Loader<'_, B> {
    fn read(&self, key: WeightKey, expected: &[usize]) -> Result<LoadedTensor> {
        if !self.source.contains(key) {
            return Err(ModelError::MissingTensor {
                path: self.source.path().to_path_buf(),
                tensor: self.source.name(key),
            });
        }
        let t = self.source.load(key)?;
        if t.shape != expected {
            return Err(ModelError::Shape {
                path: self.source.path().to_path_buf(),
                tensor: t.name,
                found: t.shape,
                expected: expected.to_vec(),
            });
        }
        Ok(t)
    }

    fn vector(&self, key: WeightKey, len: usize) -> Result<Tensor<B, 1>> {
        let t = self.read(key, &[len])?;
        Ok(Tensor::from_data(
            TensorData::new(t.values, [len]),
            self.device,
        ))
    }

    fn norm(&self, key: WeightKey, len: usize, eps: f64) -> Result<RmsNorm<B>> {
        Ok(RmsNorm {
            gamma: Param::from_tensor(self.vector(key, len)?),
            epsilon: eps,
        })
    }

    /// A projection stored `[out, in]` (Hugging Face and GGUF order) as Burn's `[in, out]`
    /// linear weight: a transposed view of the `[out, in]` tensor, as Burn's own
    /// `LinearLayout::Col` keeps it. Each output's weights stay one contiguous row, which CPU
    /// backends stream in a few-row product (`matmul.rs`); the matrix products of training take
    /// either order at the same speed on Flex.
    fn linear(
        &self,
        key: WeightKey,
        rows: usize,
        bias: Option<WeightKey>,
        input: usize,
    ) -> Result<Linear<B>> {
        let t = self.read(key, &[rows, input])?;
        let bias = match bias {
            None => None,
            Some(key) => Some(Param::from_tensor(self.vector(key, rows)?)),
        };
        let stored =
            Tensor::<B, 2>::from_data(TensorData::new(t.values, [rows, input]), self.device);
        Ok(Linear {
            weight: Param::from_tensor(stored.transpose()),
            bias,
        })
    }

    fn layer(&self, i: usize, c: &LlamaConfig) -> Result<DecoderLayer<B>> {
        let key = |w| WeightKey::Layer(i, w);
        let bias = |w| c.attention_bias.then(|| key(w));
        let (q, kv, h) = (
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.hidden_size,
        );
        Ok(DecoderLayer {
            attn_norm: self.norm(key(LayerWeight::AttnNorm), h, c.rms_norm_eps)?,
            attn: Attention {
                q: self.linear(key(LayerWeight::Query), q, bias(LayerWeight::QueryBias), h)?,
                k: self.linear(key(LayerWeight::Key), kv, bias(LayerWeight::KeyBias), h)?,
                v: self.linear(key(LayerWeight::Value), kv, bias(LayerWeight::ValueBias), h)?,
                out: self.linear(key(LayerWeight::Output), h, None, q)?,
                heads: c.num_heads,
                kv_heads: c.num_kv_heads,
                head_dim: c.head_dim,
                path: None,
            },
            mlp_norm: self.norm(key(LayerWeight::MlpNorm), h, c.rms_norm_eps)?,
            mlp: Mlp {
                gate: self.linear(key(LayerWeight::Gate), c.intermediate_size, None, h)?,
                up: self.linear(key(LayerWeight::Up), c.intermediate_size, None, h)?,
                down: self.linear(key(LayerWeight::Down), h, None, c.intermediate_size)?,
            },
        })
    }
}

impl<B: PrefixAttentionBackend> Llama<B> {
    /// Loads the weights described by `config` from `source` onto `device`.
    pub fn load(
        config: &LlamaConfig,
        source: &dyn TensorSource,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate(source.path())?;
        let loader = Loader::<B> { source, device };
        let embed = loader.read(
            WeightKey::Embedding,
            &[config.vocab_size, config.hidden_size],
        )?;
        let embed = Embedding {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(embed.values, [config.vocab_size, config.hidden_size]),
                device,
            )),
        };
        let layers = (0..config.num_layers)
            .map(|i| loader.layer(i, config))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(loader.linear(
                WeightKey::LmHead,
                config.vocab_size,
                None,
                config.hidden_size,
            )?)
        };
        Ok(Self {
            embed,
            layers,
            norm: loader.norm(
                WeightKey::FinalNorm,
                config.hidden_size,
                config.rms_norm_eps,
            )?,
            lm_head,
            rope: Rope::new(
                config.head_dim,
                config.max_position_embeddings,
                config.rope_theta,
                device,
            ),
            config: config.clone(),
        })
    }

    /// Pins the attention implementation of every layer (benchmarks and tests compare paths
    /// within one process this way).
    pub fn with_attention_path(mut self, path: AttentionPath) -> Self {
        for layer in &mut self.layers {
            layer.attn.path = Some(path);
        }
        self
    }

    /// Checks that `len` positions fit the model's context.
    pub fn check_length(&self, len: usize) -> Result<()> {
        let max = self.config.max_position_embeddings;
        if len > max {
            return Err(ModelError::TooLong { len, max });
        }
        Ok(())
    }

    fn run(
        &self,
        embeds: Tensor<B, 3>,
        positions: &Positions,
        prefix: Option<&peft_core::PrefixKv<B>>,
        key_lengths: Option<&Tensor<B, 1, Int>>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let [b, l, _] = embeds.dims();
        let rope = self.rope.slice(
            positions,
            b,
            l,
            self.config.num_heads,
            self.config.num_kv_heads,
        );
        let cache_lengths = cache.as_ref().and_then(|c| c.prefix_lengths().cloned());
        let prefix_lengths = prefix
            .and_then(|p| p.lengths.as_ref())
            .or(cache_lengths.as_ref());
        let mut x = embeds;
        for (i, layer) in self.layers.iter().enumerate() {
            let cached_prefix = cache.as_ref().and_then(|c| c.prefix(i).cloned());
            let ctx = LayerContext {
                rope: &rope,
                prefix: prefix.map(|p| &p.layers[i]).or(cached_prefix.as_ref()),
                prefix_lengths,
                key_lengths,
            };
            x = layer.forward(x, &ctx, cache.as_deref_mut().map(|c| (c, i)));
        }
        if let Some(cache) = cache {
            cache.advance(l);
        }
        self.norm.forward(x)
    }
}

impl<B: PrefixAttentionBackend> CausalLm<B> for Llama<B> {
    fn dims(&self) -> ModelDims {
        let c = &self.config;
        ModelDims {
            num_layers: c.num_layers,
            hidden_size: c.hidden_size,
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            vocab_size: c.vocab_size,
            max_positions: c.max_position_embeddings,
        }
    }

    fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.embed.forward(ids)
    }

    fn embedding_table(&self) -> Tensor<B, 2> {
        self.embed.weight.val()
    }

    fn forward_hidden(&self, input: DecoderInput<B>) -> Tensor<B, 3> {
        let DecoderInput {
            embeds,
            positions,
            prefix,
            key_lengths,
        } = input;
        if let Some(p) = &prefix {
            assert_eq!(
                p.layers.len(),
                self.layers.len(),
                "prefix must have one key/value pair per layer"
            );
        }
        self.run(
            embeds,
            &positions,
            prefix.as_ref(),
            key_lengths.as_ref(),
            None,
        )
    }

    fn forward_cached(&self, embeds: Tensor<B, 3>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        let positions = Positions::Offset(cache.position());
        self.run(embeds, &positions, None, None, Some(cache))
    }

    fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => layer::linear(head, hidden),
            None => {
                let [b, l, h] = hidden.dims();
                let vocab = self.config.vocab_size;
                matmul::matmul_wt(hidden.reshape([b * l, h]), self.embed.weight.val())
                    .reshape([b, l, vocab])
            }
        }
    }
}
