//! The decoder of every supported family (Llama, SmolLM, Mistral, Qwen 2/3, Gemma 3), generic over
//! the backend. It reads only a [`DecoderConfig`] and its [`Features`](crate::config::Features),
//! never the family.

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
    config::{AttentionKind, DecoderConfig, RopeScaling},
    error::{ModelError, Result},
    source::{LayerWeight, LoadedTensor, TensorSource, WeightKey},
};
use layer::LayerContext;

/// A decoder with its weights.
#[derive(Module, Debug)]
pub struct Decoder<B: PrefixAttentionBackend> {
    /// Token embedding `[vocab, hidden]`.
    pub embed: Embedding<B>,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
    /// LM head `[vocab, hidden]`: its own weight, or the embedding table when tied (in f32 the
    /// same tensor, not a copy).
    pub lm_head: FrozenLinear<B>,
    /// RoPE tables (constants, not parameters) of the global layers.
    pub rope: Rope<B>,
    /// RoPE of the sliding-window layers when their base differs (Gemma 3).
    pub local_rope: Option<Rope<B>>,
    /// The configuration the weights were loaded with.
    #[module(skip)]
    pub config: DecoderConfig,
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

    /// An RMSNorm whose scale is the stored weight plus `offset` (Gemma's `1 + w`, added in f32
    /// as transformers does).
    fn norm(&self, key: WeightKey, len: usize, c: &DecoderConfig) -> Result<RmsNorm<B>> {
        let offset = c.features.norm_weight_offset as f32;
        let mut t = self.read(key, &[len])?;
        if offset != 0.0 {
            t.values.iter_mut().for_each(|v| *v += offset);
        }
        Ok(RmsNorm {
            gamma: Param::from_tensor(Tensor::from_data(
                TensorData::new(t.values, [len]),
                self.device,
            )),
            epsilon: c.rms_norm_eps,
        })
    }

    fn optional_norm(
        &self,
        present: bool,
        key: WeightKey,
        len: usize,
        c: &DecoderConfig,
    ) -> Result<Option<RmsNorm<B>>> {
        present.then(|| self.norm(key, len, c)).transpose()
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

    fn layer(&self, i: usize, c: &DecoderConfig) -> Result<DecoderLayer<B>> {
        let key = |w| WeightKey::Layer(i, w);
        let bias = |w| c.attention_bias.then(|| key(w));
        let (q, kv, h) = (
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.hidden_size,
        );
        let f = &c.features;
        let d = c.head_dim;
        Ok(DecoderLayer {
            attn_norm: self.norm(key(LayerWeight::AttnNorm), h, c)?,
            attn: Attention {
                q: self.linear(key(LayerWeight::Query), q, bias(LayerWeight::QueryBias), h)?,
                k: self.linear(key(LayerWeight::Key), kv, bias(LayerWeight::KeyBias), h)?,
                v: self.linear(key(LayerWeight::Value), kv, bias(LayerWeight::ValueBias), h)?,
                out: self.linear(key(LayerWeight::Output), h, None, q)?,
                q_norm: self.optional_norm(f.qk_norm, key(LayerWeight::QueryNorm), d, c)?,
                k_norm: self.optional_norm(f.qk_norm, key(LayerWeight::KeyNorm), d, c)?,
                heads: c.num_heads,
                kv_heads: c.num_kv_heads,
                head_dim: d,
                scale: f.attention_scale,
                window: c.window(i),
                path: None,
            },
            post_attn_norm: self.optional_norm(
                f.sandwich_norms,
                key(LayerWeight::PostAttnNorm),
                h,
                c,
            )?,
            mlp_norm: self.norm(key(LayerWeight::MlpNorm), h, c)?,
            mlp: Mlp {
                activation: f.activation,
                gate: self.linear(key(LayerWeight::Gate), c.intermediate_size, None, h)?,
                up: self.linear(key(LayerWeight::Up), c.intermediate_size, None, h)?,
                down: self.linear(key(LayerWeight::Down), h, None, c.intermediate_size)?,
            },
            post_mlp_norm: self.optional_norm(
                f.sandwich_norms,
                key(LayerWeight::PostMlpNorm),
                h,
                c,
            )?,
            // Sliding layers take their own tables whenever the family gives them a base (even
            // one equal to the global base: the global tables may be scaled, theirs are not).
            local_rope: c.layer_kind(i) == AttentionKind::Sliding && f.local_rope_theta.is_some(),
        })
    }
}

impl<B: PrefixAttentionBackend> Decoder<B> {
    /// Loads the weights described by `config` from `source` onto `device`, the linear layers in
    /// f32 (numerically the model as the files hold it).
    pub fn load(
        config: &DecoderConfig,
        source: &dyn TensorSource,
        device: &B::Device,
    ) -> Result<Self> {
        Self::load_with_precision(config, source, device, WeightPrecision::F32)
    }

    /// [`load`](Self::load) with the frozen linear weights (projections, MLP, LM head) stored and
    /// multiplied in `precision`. Embeddings and norms stay f32, and so do activations between
    /// the products.
    pub fn load_with_precision(
        config: &DecoderConfig,
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
        let local_rope = layers.iter().any(|l| l.local_rope).then(|| {
            Rope::new(
                config.head_dim,
                config.max_position_embeddings,
                config
                    .features
                    .local_rope_theta
                    .unwrap_or(config.rope_theta),
                &RopeScaling::None,
            )
        });
        Ok(Self {
            embed,
            layers,
            norm: loader.norm(WeightKey::FinalNorm, config.hidden_size, config)?,
            lm_head,
            rope: Rope::new(
                config.head_dim,
                config.max_position_embeddings,
                config.rope_theta,
                &config.features.rope_scaling,
            ),
            local_rope,
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
        let (heads, kv_heads) = (self.config.num_heads, self.config.num_kv_heads);
        let device = embeds.device();
        let rope = self.rope.slice(positions, b, l, heads, kv_heads, &device);
        let local_rope = self
            .local_rope
            .as_ref()
            .map(|r| r.slice(positions, b, l, heads, kv_heads, &device));
        let cache_lengths = cache.as_ref().and_then(|c| c.prefix_lengths().cloned());
        let prefix_lengths = prefix
            .and_then(|p| p.lengths.as_ref())
            .or(cache_lengths.as_ref());
        let mut x = embeds;
        for (i, layer) in self.layers.iter().enumerate() {
            let cached_prefix = cache.as_ref().and_then(|c| c.prefix(i).cloned());
            let ctx = LayerContext {
                rope: match (&local_rope, layer.local_rope) {
                    (Some(local), true) => local,
                    _ => &rope,
                },
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

impl<B: PrefixAttentionBackend> CausalLm<B> for Decoder<B> {
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
        let x = self.embed.forward(ids);
        match self.config.features.embedding_scale {
            // transformers multiplies by the scale cast to the weights' dtype (f32 here).
            Some(scale) => x.mul_scalar(scale as f32),
            None => x,
        }
    }

    fn embedding_scale(&self) -> f64 {
        self.config
            .features
            .embedding_scale
            .map_or(1.0, |s| f64::from(s as f32))
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
