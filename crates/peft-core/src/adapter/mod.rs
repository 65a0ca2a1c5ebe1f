//! Adapters: what a PEFT method adds to a frozen model, and their files.

mod config;
mod io;

pub use config::{AdapterConfig, PeftType};
pub use io::{
    AdapterSummary, CONFIG_FILE, SaveOptions, WEIGHTS_FILE, inspect_adapter, load_adapter,
    save_adapter,
};

use burn::{
    module::Module,
    tensor::{Tensor, backend::Backend},
};

use crate::{
    error::{PeftError, Result},
    model::{ModelDims, PrefixKv},
    prefix::{Prefix, PrefixLayout},
    prompt::SoftPrompt,
};

/// One adapter: a soft prompt or a prefix.
// One value per adapter: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Adapter<B: Backend> {
    /// Virtual tokens prepended to the input embeddings.
    Prompt(SoftPrompt<B>),
    /// Key/value slots in every layer.
    Prefix(Prefix<B>),
}

/// The method of an adapter, as the CLI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Soft prompt tuning.
    Prompt,
    /// Direct prefix tuning (P-tuning v2).
    Prefix,
    /// Prefix tuning through the MLP reparameterisation.
    PrefixMlp,
}

impl Method {
    /// The CLI name: `prompt`, `prefix` or `prefix-mlp`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Prompt => "prompt",
            Self::Prefix => "prefix",
            Self::PrefixMlp => "prefix-mlp",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = PeftError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "prompt" => Ok(Self::Prompt),
            "prefix" => Ok(Self::Prefix),
            "prefix-mlp" => Ok(Self::PrefixMlp),
            other => Err(PeftError::Invalid(format!(
                "unknown method `{other}`; expected prompt, prefix or prefix-mlp"
            ))),
        }
    }
}

impl<B: Backend> Adapter<B> {
    /// The method.
    pub fn method(&self) -> Method {
        match self {
            Self::Prompt(_) => Method::Prompt,
            Self::Prefix(p) if p.is_reparameterised() => Method::PrefixMlp,
            Self::Prefix(_) => Method::Prefix,
        }
    }

    /// Number of virtual tokens (prompt) or prefix slots (prefix).
    pub fn num_virtual_tokens(&self) -> usize {
        match self {
            Self::Prompt(p) => p.len(),
            Self::Prefix(p) => p.len(),
        }
    }

    /// The soft prompt `[N, hidden]`, for a prompt adapter.
    pub fn virtual_tokens(&self) -> Option<Tensor<B, 2>> {
        match self {
            Self::Prompt(p) => Some(p.embeddings()),
            Self::Prefix(_) => None,
        }
    }

    /// The per-layer keys and values, for a prefix adapter.
    pub fn prefix(&self) -> Option<PrefixKv<B>> {
        match self {
            Self::Prompt(_) => None,
            Self::Prefix(p) => Some(p.key_values()),
        }
    }

    /// The inference form (a reparameterised prefix becomes a direct one).
    pub fn collapse(self) -> Self {
        match self {
            Self::Prefix(p) => Self::Prefix(p.collapse()),
            other => other,
        }
    }

    /// Checks that the adapter was built for a model of these sizes; the error names both.
    pub fn check_fits(&self, name: &str, dims: &ModelDims) -> Result<()> {
        let fits = match self {
            Self::Prompt(p) => p.embedding.dims()[1] == dims.hidden_size,
            Self::Prefix(p) => p.layout() == PrefixLayout::of(dims),
        };
        if fits {
            return Ok(());
        }
        Err(PeftError::Incompatible {
            adapter: name.to_string(),
            adapter_dims: self.describe(),
            model_dims: describe_model(dims),
        })
    }

    /// The adapter's sizes in words.
    pub fn describe(&self) -> String {
        match self {
            Self::Prompt(p) => format!(
                "{} virtual tokens of width {}",
                p.len(),
                p.embedding.dims()[1]
            ),
            Self::Prefix(p) => {
                let l = p.layout();
                format!(
                    "{} prefix slots for {} layers × {} kv heads × head dim {}",
                    p.len(),
                    l.num_layers,
                    l.kv_heads,
                    l.head_dim
                )
            }
        }
    }
}

/// A model's sizes in words, for error messages.
pub fn describe_model(d: &ModelDims) -> String {
    format!(
        "hidden size {}, {} layers, {} kv heads × head dim {} (kv width {})",
        d.hidden_size,
        d.num_layers,
        d.num_kv_heads,
        d.head_dim,
        d.kv_width()
    )
}
