//! Errors of model loading, tokenisation and generation. Every variant that comes from a file
//! names the file, and the tensor or field where that applies.

use std::path::PathBuf;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The file could not be opened or read.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error (part of the message, not a separate cause).
        error: std::io::Error,
    },
    /// The file is not a valid GGUF, safetensors or JSON file.
    #[error("{path}: {what}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field, tensor or line.
        what: String,
    },
    /// A tensor the model needs is absent.
    #[error("{path}: missing tensor `{tensor}`")]
    MissingTensor {
        /// The file (or index) searched.
        path: PathBuf,
        /// The tensor name in the file's own naming.
        tensor: String,
    },
    /// A tensor has the wrong shape for the configuration.
    #[error(
        "{path}: tensor `{tensor}` has shape {found:?}, the model configuration expects {expected:?}"
    )]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor name in the file's own naming.
        tensor: String,
        /// Shape in the file (row-major).
        found: Vec<usize>,
        /// Shape the configuration implies.
        expected: Vec<usize>,
    },
    /// A tensor's storage type cannot be read.
    #[error("{path}: tensor `{tensor}`: {what}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor name in the file's own naming.
        tensor: String,
        /// What is wrong.
        what: String,
    },
    /// A configuration field is missing or invalid.
    #[error("{path}: config field `{field}`: {what}")]
    Config {
        /// The file the configuration came from.
        path: PathBuf,
        /// The field (GGUF metadata key or `config.json` key).
        field: String,
        /// What is wrong.
        what: String,
    },
    /// The tokenizer could not be built or used.
    #[error("tokenizer ({source_name}): {what}")]
    Tokenizer {
        /// Where the tokenizer came from.
        source_name: String,
        /// What is wrong.
        what: String,
    },
    /// A sequence does not fit the model's context.
    #[error("sequence of {len} positions exceeds the model's context of {max}")]
    TooLong {
        /// Positions needed (virtual tokens included).
        len: usize,
        /// `max_position_embeddings`.
        max: usize,
    },
    /// The backend cannot hold the frozen weights in the precision asked for.
    #[error(
        "the {backend} backend cannot multiply frozen weights in {precision} on this device \
         (use --precision f32, or a CPU or CUDA backend for bf16)"
    )]
    UnsupportedPrecision {
        /// The backend and device, as Burn names them.
        backend: String,
        /// The precision asked for.
        precision: &'static str,
    },
    /// Invalid generation settings.
    #[error("invalid generation settings: {0}")]
    Generation(String),
}

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            error: source,
        }
    }

    pub(crate) fn malformed(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Self::Malformed {
            path: path.into(),
            what: what.into(),
        }
    }

    pub(crate) fn config(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        what: impl Into<String>,
    ) -> Self {
        Self::Config {
            path: path.into(),
            field: field.into(),
            what: what.into(),
        }
    }
}
