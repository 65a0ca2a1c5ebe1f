//! Prefix tuning (Li & Liang 2021): per layer, `N` trainable key/value slots that every real
//! token attends to.
//!
//! The prefix is held flat, as PEFT saves it: `[N, layers·2·kv_heads·head_dim]`, where row `n`
//! holds, for each layer `l`, the key block then the value block, each head-major
//! `[kv_heads, head_dim]`. Two parameterisations produce it:
//!
//! * **direct** (P-tuning v2): the flat tensor is the parameter;
//! * **reparameterised**: `P = MLP(P')` with `P'` `[N, d']` and
//!   `Linear(d', h) → tanh → Linear(h, layers·2·kv_heads·head_dim)`, which trains more stably;
//!   [`Prefix::collapse`] evaluates the MLP once and keeps only `P` for inference.
//!
//! Semantics (those of PEFT): the keys and values enter attention as already-processed
//! positions — no RoPE is applied to them — and real tokens take positions `N..`.

use burn::{
    module::{Module, Param},
    nn::Linear,
    tensor::{Tensor, activation::tanh, backend::Backend},
};

use crate::{
    error::{PeftError, Result},
    init,
    model::{CausalLm, KvCache, ModelDims, PrefixKv},
};

/// The model sizes a prefix is laid out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixLayout {
    /// Decoder layers.
    pub num_layers: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

impl PrefixLayout {
    /// The layout for a model.
    pub fn of(dims: &ModelDims) -> Self {
        Self {
            num_layers: dims.num_layers,
            kv_heads: dims.num_kv_heads,
            head_dim: dims.head_dim,
        }
    }

    /// `kv_heads · head_dim`, PEFT's `token_dim` for prefix tuning.
    pub fn token_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Width of one flat prefix row: `layers · 2 · token_dim`.
    pub fn width(&self) -> usize {
        self.num_layers * 2 * self.token_dim()
    }
}

/// The reparameterisation `P = W₂·tanh(W₁·P' + b₁) + b₂`.
#[derive(Module, Debug)]
pub struct PrefixMlp<B: Backend> {
    /// `P'` `[N, d']`.
    pub embedding: Param<Tensor<B, 2>>,
    /// `d' → h`.
    pub hidden: Linear<B>,
    /// `h → layers·2·kv_heads·head_dim`.
    pub out: Linear<B>,
}

/// How the prefix is parameterised.
// One value per adapter: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum PrefixParams<B: Backend> {
    /// The flat prefix itself `[N, layers·2·kv_heads·head_dim]`.
    Direct(Param<Tensor<B, 2>>),
    /// Through an MLP.
    Mlp(PrefixMlp<B>),
}

/// A prefix adapter.
#[derive(Module, Debug)]
pub struct Prefix<B: Backend> {
    /// The trainable parameters.
    pub params: PrefixParams<B>,
    /// Decoder layers.
    #[module(skip)]
    pub num_layers: usize,
    /// Key/value heads.
    #[module(skip)]
    pub kv_heads: usize,
    /// Head dimension.
    #[module(skip)]
    pub head_dim: usize,
}

impl<B: Backend> Prefix<B> {
    /// A direct prefix from its flat values `[N, layers·2·kv_heads·head_dim]`.
    pub fn direct(flat: Tensor<B, 2>, layout: PrefixLayout) -> Self {
        Self::with_params(PrefixParams::Direct(Param::from_tensor(flat)), layout)
    }

    fn with_params(params: PrefixParams<B>, layout: PrefixLayout) -> Self {
        Self {
            params,
            num_layers: layout.num_layers,
            kv_heads: layout.kv_heads,
            head_dim: layout.head_dim,
        }
    }

    /// The layout this prefix was built for.
    pub fn layout(&self) -> PrefixLayout {
        PrefixLayout {
            num_layers: self.num_layers,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// A randomly initialised direct prefix of `n` slots.
    pub fn random(n: usize, std: f64, seed: u64, layout: PrefixLayout, device: &B::Device) -> Self {
        Self::direct(init::normal([n, layout.width()], std, seed, device), layout)
    }

    /// A reparameterised prefix of `n` slots with `P'` of width `d_in` and MLP width `d_hidden`.
    pub fn mlp(
        n: usize,
        d_in: usize,
        d_hidden: usize,
        seed: u64,
        layout: PrefixLayout,
        device: &B::Device,
    ) -> Self {
        let mlp = PrefixMlp {
            embedding: Param::from_tensor(init::normal([n, d_in], 1.0, seed, device)),
            hidden: init::linear(d_in, d_hidden, seed.wrapping_add(1), device),
            out: init::linear(d_hidden, layout.width(), seed.wrapping_add(3), device),
        };
        Self::with_params(PrefixParams::Mlp(mlp), layout)
    }

    /// A direct prefix holding the keys and values `model` computes for `ids`.
    pub fn from_text<M: CausalLm<B>>(model: &M, ids: &[u32]) -> Result<Self> {
        if ids.is_empty() {
            return Err(PeftError::Invalid(
                "the prefix init text has no tokens".into(),
            ));
        }
        let dims = model.dims();
        let device = model.embedding_table().device();
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let n = ids.len();
        let ids = Tensor::<B, 2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(ids, [1, n]),
            &device,
        );
        let mut cache = KvCache::<B>::new(dims.num_layers);
        model.forward_cached(model.embed(ids), &mut cache);
        let layout = PrefixLayout::of(&dims);
        let layers = (0..dims.num_layers)
            .map(|l| {
                let (k, v) = cache
                    .layer(l)
                    .ok_or_else(|| PeftError::Invalid("the model filled no KV cache".into()))?;
                Ok((k.clone().detach(), v.clone().detach()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::direct(
            flatten(
                &PrefixKv {
                    layers,
                    lengths: None,
                },
                layout,
            ),
            layout,
        ))
    }

    /// Number of slots `N`.
    pub fn len(&self) -> usize {
        match &self.params {
            PrefixParams::Direct(p) => p.dims()[0],
            PrefixParams::Mlp(m) => m.embedding.dims()[0],
        }
    }

    /// Whether the prefix has no slots (never true for an initialised prefix).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the prefix is trained through the MLP.
    pub fn is_reparameterised(&self) -> bool {
        matches!(self.params, PrefixParams::Mlp(_))
    }

    /// The flat prefix `[N, layers·2·kv_heads·head_dim]` (evaluating the MLP if there is one).
    pub fn flat(&self) -> Tensor<B, 2> {
        match &self.params {
            PrefixParams::Direct(p) => p.val(),
            PrefixParams::Mlp(m) => m.out.forward(tanh(m.hidden.forward(m.embedding.val()))),
        }
    }

    /// Per-layer keys and values `[1, kv_heads, N, head_dim]`.
    pub fn key_values(&self) -> PrefixKv<B> {
        unflatten(self.flat(), self.layout())
    }

    /// The inference form: a direct prefix holding the MLP's output (a no-op for a direct
    /// prefix). The result is detached from any autodiff graph.
    pub fn collapse(self) -> Self {
        let layout = self.layout();
        match self.params {
            PrefixParams::Direct(_) => self,
            PrefixParams::Mlp(_) => Self::direct(self.flat().detach(), layout),
        }
    }
}

/// Splits a flat prefix `[N, layers·2·kv_heads·head_dim]` into per-layer keys and values
/// `[1, kv_heads, N, head_dim]`.
pub fn unflatten<B: Backend>(flat: Tensor<B, 2>, layout: PrefixLayout) -> PrefixKv<B> {
    let [n, _] = flat.dims();
    let PrefixLayout {
        num_layers,
        kv_heads,
        head_dim,
    } = layout;
    // [N, 2L, Hkv, d] -> [2L, Hkv, N, d]
    let all = flat
        .reshape([n, 2 * num_layers, kv_heads, head_dim])
        .permute([1, 2, 0, 3]);
    let layers = (0..num_layers)
        .map(|l| {
            let pick = |i: usize| all.clone().narrow(0, i, 1);
            (pick(2 * l), pick(2 * l + 1))
        })
        .collect();
    PrefixKv {
        layers,
        lengths: None,
    }
}

/// The inverse of [`unflatten`] for a shared (batch 1) prefix.
pub fn flatten<B: Backend>(kv: &PrefixKv<B>, layout: PrefixLayout) -> Tensor<B, 2> {
    let parts: Vec<Tensor<B, 4>> = kv
        .layers
        .iter()
        .flat_map(|(k, v)| [k.clone(), v.clone()])
        .collect();
    let n = kv.len();
    // [2L, Hkv, N, d] -> [N, 2L, Hkv, d]
    Tensor::cat(parts, 0)
        .permute([2, 0, 1, 3])
        .reshape([n, layout.width()])
}
