//! A Llama-family decoder (Llama, SmolLM, Mistral, Qwen2), generic over the backend.

mod layer;
mod linear;
mod matmul;
mod rope;

use burn::{
    module::{Module, Param},
    nn::{Embedding, RmsNorm},
    tensor::{Int, Tensor, TensorData},
};
use peft_core::{CausalLm, DecoderInput, KvCache, ModelDims, Positions};
use peft_kernels::{AttentionPath, PrefixAttentionBackend, WeightPrecision};

pub use layer::{Attention, DecoderLayer, Mlp};
pub use linear::FrozenLinear;
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
    /// LM head `[vocab, hidden]`: its own weight, or the embedding table when tied (in f32 the
    /// same tensor, not a copy).
    pub lm_head: FrozenLinear<B>,
    /// RoPE tables (constants, not parameters).
    pub rope: Rope<B>,
    /// The configuration the weights were loaded with.
    #[module(skip)]
    pub config: LlamaConfig,
    /// The precision of the frozen linear weights.
    #[module(skip)]
    pub precision: WeightPrecision,
}

/// Reads weights from a [`TensorSource`], checking every shape against the configuration.
struct Loader<'a, B: PrefixAttentionBackend> {
    source: &'a dyn TensorSource,
    device: &'a B::Device,
    precision: WeightPrecision,
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

    /// A projection stored `[out, in]` (Hugging Face and GGUF order), kept in that order as a
    /// frozen weight in the loader's precision: each output's weights stay one contiguous row,
    /// which CPU backends stream in a few-row product (`matmul.rs`) and the bf16 kernels pack.
    fn linear(
        &self,
        key: WeightKey,
        rows: usize,
        bias: Option<WeightKey>,
        input: usize,
    ) -> Result<FrozenLinear<B>> {
        let t = self.read(key, &[rows, input])?;
        let bias = match bias {
            None => None,
            Some(key) => Some(self.vector(key, rows)?),
        };
        let stored =
            Tensor::<B, 2>::from_data(TensorData::new(t.values, [rows, input]), self.device);
        Ok(FrozenLinear::new(stored, bias, self.precision))
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
    /// Loads the weights described by `config` from `source` onto `device`, the linear layers in
    /// f32 (numerically the model as the files hold it).
    pub fn load(
        config: &LlamaConfig,
        source: &dyn TensorSource,
        device: &B::Device,
    ) -> Result<Self> {
        Self::load_with_precision(config, source, device, WeightPrecision::F32)
    }

    /// [`load`](Self::load) with the frozen linear weights (projections, MLP, LM head) stored and
    /// multiplied in `precision`. Embeddings and norms stay f32, and so do activations between
    /// the products.
    pub fn load_with_precision(
        config: &LlamaConfig,
        source: &dyn TensorSource,
        device: &B::Device,
        precision: WeightPrecision,
    ) -> Result<Self> {
        config.validate(source.path())?;
        if !B::supports_precision(device, precision) {
            return Err(ModelError::UnsupportedPrecision {
                backend: B::name(device),
                precision: precision.name(),
            });
        }
        let loader = Loader::<B> {
            source,
            device,
            precision,
        };
        let embed = loader.read(
            WeightKey::Embedding,
            &[config.vocab_size, config.hidden_size],
        )?;
        let embed_table: Tensor<B, 2> = Tensor::from_data(
            TensorData::new(embed.values, [config.vocab_size, config.hidden_size]),
            device,
        );
        let embed = Embedding {
            weight: Param::from_tensor(embed_table.clone()),
        };
        let layers = (0..config.num_layers)
            .map(|i| loader.layer(i, config))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if config.tie_word_embeddings {
            FrozenLinear::new(embed_table, None, precision)
        } else {
            loader.linear(
                WeightKey::LmHead,
                config.vocab_size,
                None,
                config.hidden_size,
            )?
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
            ),
            config: config.clone(),
            precision,
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
            &embeds.device(),
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
        layer::norm(&self.norm, x)
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
        linear::linear(&self.lm_head, hidden)
    }

    /// Through the frozen head in chunks of rows (`FrozenLinearBackend::frozen_log_probs`): no
    /// `[n, vocab]` tensor, forward or backward. (A head with a bias, which no supported file
    /// has, takes the logits.)
    fn target_log_probs(&self, hidden: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        if self.lm_head.bias.is_none() {
            return B::frozen_log_probs(hidden, &self.lm_head.weight, targets);
        }
        let [n, h] = hidden.dims();
        let logits = self.logits(hidden.reshape([1, n, h]));
        peft_core::loss::log_probs_of_logits(logits.reshape([n, self.config.vocab_size]), targets)
    }

    fn parameter_count(&self) -> usize {
        let frozen: usize = self
            .layers
            .iter()
            .map(|l| {
                let (a, m) = (&l.attn, &l.mlp);
                [&a.q, &a.k, &a.v, &a.out, &m.gate, &m.up, &m.down]
                    .iter()
                    .map(|x| x.weight_values())
                    .sum::<usize>()
            })
            .sum();
        let head = match self.config.tie_word_embeddings {
            true => 0,
            false => self.lm_head.weight_values(),
        };
        // The parameters Burn sees (embedding, norms, biases) plus the frozen weights; a tied
        // head is the embedding, counted once.
        self.num_params() + frozen + head
    }
}
