//! A frozen base model with named adapters, and the forward pass that applies them — one
//! adapter for the whole batch, or a different adapter (or none) per row.

use std::collections::BTreeMap;

use burn::{
    module::{AutodiffModule, Module},
    tensor::{Int, Tensor, TensorData, backend::Backend},
};

use crate::{
    adapter::Adapter,
    error::{PeftError, Result},
    model::{CausalLm, DecoderInput, Positions, PrefixKv},
};

/// Which adapter each row of a batch uses.
#[derive(Debug, Clone, Copy)]
pub enum Routing<'a, B: Backend> {
    /// Every row uses this adapter (or none).
    All(Option<&'a Adapter<B>>),
    /// Row `r` uses `adapters[r]` (or none).
    PerRow(&'a [Option<&'a Adapter<B>>]),
}

/// Hidden states of a batch and where each row's real tokens are.
#[derive(Debug, Clone)]
pub struct PeftOutput<B: Backend> {
    /// Final-normalised hidden states `[B, L', hidden]`; soft-prompt positions included.
    pub hidden: Tensor<B, 3>,
    /// Index in `L'` of each row's first real token (its number of virtual tokens).
    pub starts: Vec<usize>,
    /// Number of real tokens of each row.
    pub lengths: Vec<usize>,
}

impl<B: Backend> PeftOutput<B> {
    /// Flat index into `[B·L', hidden]` of real token `t` of row `r`.
    pub fn flat_index(&self, row: usize, t: usize) -> usize {
        row * self.hidden.dims()[1] + self.starts[row] + t
    }

    /// Hidden states `[n, hidden]` at the given flat indices.
    pub fn gather(&self, flat: &[usize]) -> Tensor<B, 2> {
        let [b, l, h] = self.hidden.dims();
        let device = self.hidden.device();
        let idx: Vec<i64> = flat.iter().map(|&i| i as i64).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [flat.len()]), &device);
        self.hidden.clone().reshape([b * l, h]).select(0, idx)
    }

    /// Hidden state `[B, hidden]` of each row's last real token.
    pub fn last(&self) -> Tensor<B, 2> {
        let idx: Vec<usize> = (0..self.lengths.len())
            .map(|r| self.flat_index(r, self.lengths[r] - 1))
            .collect();
        self.gather(&idx)
    }
}

fn ids_tensor<B: Backend>(rows: &[Vec<u32>], pad: u32, device: &B::Device) -> Tensor<B, 2, Int> {
    let l = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut data = Vec::with_capacity(rows.len() * l);
    for r in rows {
        data.extend(r.iter().map(|&i| i64::from(i)));
        data.extend(std::iter::repeat_n(i64::from(pad), l - r.len()));
    }
    Tensor::from_data(TensorData::new(data, [rows.len(), l]), device)
}

/// Runs `base` on token rows with adapters applied.
///
/// Rows are right-padded. Padding needs no attention mask: under the causal mask a real token
/// never sees a later (padding) position, and padded positions are never read.
pub fn forward<B: Backend, M: CausalLm<B>>(
    base: &M,
    rows: &[Vec<u32>],
    routing: Routing<'_, B>,
) -> Result<PeftOutput<B>> {
    let dims = base.dims();
    if rows.is_empty() || rows.iter().any(Vec::is_empty) {
        return Err(PeftError::Invalid(
            "every row of a batch needs at least one token".into(),
        ));
    }
    if let Routing::PerRow(a) = routing
        && a.len() != rows.len()
    {
        return Err(PeftError::Invalid(format!(
            "{} rows but {} adapter choices",
            rows.len(),
            a.len()
        )));
    }
    if let Some(bad) = rows
        .iter()
        .flatten()
        .find(|&&id| id as usize >= dims.vocab_size)
    {
        return Err(PeftError::Invalid(format!(
            "token id {bad} is outside the vocabulary of {}",
            dims.vocab_size
        )));
    }
    let adapter_of = |r: usize| match routing {
        Routing::All(a) => a,
        Routing::PerRow(a) => a[r],
    };
    let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
    let b = rows.len();
    let needed = (0..b)
        .map(|r| lengths[r] + adapter_of(r).map_or(0, Adapter::num_virtual_tokens))
        .max()
        .unwrap_or(0);
    if needed > dims.max_positions {
        return Err(PeftError::Invalid(format!(
            "a row needs {needed} positions (virtual tokens included) but the model's context is {}",
            dims.max_positions
        )));
    }
    let device = base.embedding_table().device();
    let tokens = base.embed(ids_tensor::<B>(rows, 0, &device)); // [B, L, hidden]
    let input = match routing {
        Routing::All(adapter) => uniform(tokens, adapter),
        Routing::PerRow(adapters) => mixed(tokens, &lengths, adapters, &device),
    };
    let starts = match routing {
        Routing::All(a) => vec![
            a.and_then(Adapter::virtual_tokens)
                .map_or(0, |v| v.dims()[0]);
            b
        ],
        Routing::PerRow(a) => a
            .iter()
            .map(|a| {
                a.and_then(Adapter::virtual_tokens)
                    .map_or(0, |v| v.dims()[0])
            })
            .collect(),
    };
    Ok(PeftOutput {
        hidden: base.forward_hidden(input),
        starts,
        lengths,
    })
}

/// Every row uses the same adapter: broadcast the prompt, share the prefix.
fn uniform<B: Backend>(tokens: Tensor<B, 3>, adapter: Option<&Adapter<B>>) -> DecoderInput<B> {
    let [b, _, hidden] = tokens.dims();
    let mut input = DecoderInput::new(tokens.clone());
    match adapter {
        None => {}
        Some(a @ Adapter::Prompt(_)) => {
            if let Some(virt) = a.virtual_tokens() {
                let n = virt.dims()[0];
                input.embeds = Tensor::cat(
                    vec![virt.unsqueeze::<3>().expand([b, n, hidden]), tokens],
                    1,
                );
            }
        }
        Some(a @ Adapter::Prefix(_)) => {
            let prefix = a.prefix();
            input.positions = Positions::Offset(prefix.as_ref().map_or(0, PrefixKv::len));
            input.prefix = prefix;
        }
    }
    input
}

/// Rows use different adapters: left-align `[virtual ; tokens]` per row, and stack per-row
/// prefixes padded to the longest, with their lengths so the padding slots are masked.
fn mixed<B: Backend>(
    tokens: Tensor<B, 3>,
    lengths: &[usize],
    adapters: &[Option<&Adapter<B>>],
    device: &B::Device,
) -> DecoderInput<B> {
    let [b, _, hidden] = tokens.dims();
    let virt: Vec<Option<Tensor<B, 2>>> = adapters
        .iter()
        .map(|a| a.and_then(Adapter::virtual_tokens))
        .collect();
    let total: Vec<usize> = (0..b)
        .map(|r| lengths[r] + virt[r].as_ref().map_or(0, |v| v.dims()[0]))
        .collect();
    let width = total.iter().copied().max().unwrap_or(0);
    let embeds = (0..b)
        .map(|r| {
            let mut parts = Vec::with_capacity(3);
            if let Some(v) = &virt[r] {
                parts.push(v.clone().unsqueeze::<3>());
            }
            parts.push(tokens.clone().narrow(0, r, 1).narrow(1, 0, lengths[r]));
            if total[r] < width {
                parts.push(Tensor::zeros([1, width - total[r], hidden], device));
            }
            Tensor::cat(parts, 1)
        })
        .collect();
    let mut input = DecoderInput::new(Tensor::cat(embeds, 0));
    let prefixes: Vec<Option<PrefixKv<B>>> = adapters
        .iter()
        .map(|a| a.and_then(Adapter::prefix))
        .collect();
    let slots: Vec<usize> = prefixes
        .iter()
        .map(|p| p.as_ref().map_or(0, PrefixKv::len))
        .collect();
    let max_slots = slots.iter().copied().max().unwrap_or(0);
    if max_slots > 0 {
        let layers = prefixes
            .iter()
            .flatten()
            .next()
            .map_or(0, |p| p.layers.len());
        let (kv_heads, head_dim) = prefixes.iter().flatten().next().map_or((0, 0), |p| {
            (p.layers[0].0.dims()[1], p.layers[0].0.dims()[3])
        });
        let padded = |t: Option<&Tensor<B, 4>>, n: usize| -> Tensor<B, 4> {
            match t {
                Some(t) if n == max_slots => t.clone(),
                Some(t) => Tensor::cat(
                    vec![
                        t.clone(),
                        Tensor::zeros([1, kv_heads, max_slots - n, head_dim], device),
                    ],
                    2,
                ),
                None => Tensor::zeros([1, kv_heads, max_slots, head_dim], device),
            }
        };
        let layer_kv = (0..layers)
            .map(|l| {
                let pick = |which: usize| {
                    let rows = (0..b)
                        .map(|r| {
                            let t = prefixes[r].as_ref().map(|p| {
                                if which == 0 {
                                    &p.layers[l].0
                                } else {
                                    &p.layers[l].1
                                }
                            });
                            padded(t, slots[r])
                        })
                        .collect();
                    Tensor::cat(rows, 0)
                };
                (pick(0), pick(1))
            })
            .collect();
        let lens: Vec<i64> = slots.iter().map(|&s| s as i64).collect();
        input.prefix = Some(PrefixKv {
            layers: layer_kv,
            lengths: Some(Tensor::from_data(TensorData::new(lens, [b]), device)),
        });
        input.positions = Positions::PerRow(slots);
    }
    input
}

/// Trainable and total parameter counts, printed like PEFT's `print_trainable_parameters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ParameterCount {
    /// Parameters that receive gradients.
    pub trainable: usize,
    /// All parameters (base and adapter).
    pub total: usize,
}

impl std::fmt::Display for ParameterCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = 100.0 * self.trainable as f64 / self.total.max(1) as f64;
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {pct:.4}",
            group_digits(self.trainable),
            group_digits(self.total)
        )
    }
}

fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A frozen base model with named adapters.
///
/// The base's parameters are marked as not requiring gradients when it is wrapped, so on an
/// autodiff backend they get no gradients and no optimizer state; only adapters are trained.
#[derive(Debug)]
pub struct PeftModel<B: Backend, M: CausalLm<B>> {
    base: M,
    adapters: BTreeMap<String, Adapter<B>>,
}

impl<B: Backend, M: CausalLm<B>> PeftModel<B, M> {
    /// Wraps (and freezes) a base model.
    pub fn new(base: M) -> Self {
        Self {
            base: base.no_grad(),
            adapters: BTreeMap::new(),
        }
    }

    /// The frozen base model.
    pub fn base(&self) -> &M {
        &self.base
    }

    /// Adds (or replaces) the adapter `name`, after checking it fits the base.
    pub fn add_adapter(&mut self, name: impl Into<String>, adapter: Adapter<B>) -> Result<()> {
        let name = name.into();
        adapter.check_fits(&name, &self.base.dims())?;
        self.adapters.insert(name, adapter);
        Ok(())
    }

    /// Removes and returns the adapter `name`.
    pub fn remove_adapter(&mut self, name: &str) -> Option<Adapter<B>> {
        self.adapters.remove(name)
    }

    /// The adapter `name`.
    pub fn adapter(&self, name: &str) -> Option<&Adapter<B>> {
        self.adapters.get(name)
    }

    /// Names of the loaded adapters.
    pub fn adapter_names(&self) -> impl Iterator<Item = &str> {
        self.adapters.keys().map(String::as_str)
    }

    fn lookup(&self, name: &str) -> Result<&Adapter<B>> {
        self.adapters.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.adapter_names().collect();
            PeftError::Invalid(format!(
                "no adapter named `{name}` (loaded: {})",
                known.join(", ")
            ))
        })
    }

    /// Forward pass of token rows, all through adapter `adapter` (or the bare base).
    pub fn forward(&self, rows: &[Vec<u32>], adapter: Option<&str>) -> Result<PeftOutput<B>> {
        let a = adapter.map(|n| self.lookup(n)).transpose()?;
        forward(&self.base, rows, Routing::All(a))
    }

    /// Forward pass of a batch whose row `r` uses adapter `adapters[r]` (or none), in one pass.
    pub fn forward_mixed(
        &self,
        rows: &[Vec<u32>],
        adapters: &[Option<&str>],
    ) -> Result<PeftOutput<B>> {
        let resolved = adapters
            .iter()
            .map(|a| a.map(|n| self.lookup(n)).transpose())
            .collect::<Result<Vec<_>>>()?;
        forward(&self.base, rows, Routing::PerRow(&resolved))
    }

    /// Vocabulary logits `[n, vocab]` of hidden states `[n, hidden]`.
    pub fn logits(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        let [n, h] = hidden.dims();
        let v = self.base.dims().vocab_size;
        self.base.logits(hidden.reshape([1, n, h])).reshape([n, v])
    }

    /// Parameter counts with adapter `name` trainable, like PEFT's `print_trainable_parameters`.
    pub fn trainable_parameters(&self, name: &str) -> Result<ParameterCount> {
        let adapter = self.lookup(name)?.num_params();
        Ok(ParameterCount {
            trainable: adapter,
            total: self.base.parameter_count() + adapter,
        })
    }
}

impl<B: burn::tensor::backend::AutodiffBackend, M: CausalLm<B> + AutodiffModule<B>>
    PeftModel<B, M>
{
    /// Drops the autodiff wrapper (for evaluation on the inner backend).
    pub fn valid(&self) -> PeftModel<B::InnerBackend, M::InnerModule>
    where
        M::InnerModule: CausalLm<B::InnerBackend>,
    {
        PeftModel {
            base: self.base.valid(),
            adapters: self
                .adapters
                .iter()
                .map(|(k, v)| (k.clone(), v.valid()))
                .collect(),
        }
    }
}
