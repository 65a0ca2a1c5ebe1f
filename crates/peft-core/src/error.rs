//! Errors of the PEFT methods, adapter files and training.

use std::path::PathBuf;

/// Errors of this crate. Variants that come from a file name it, and the field or line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeftError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error (part of the message, not a separate cause).
        error: std::io::Error,
    },
    /// A file is malformed (invalid JSON or safetensors, wrong types).
    #[error("{path}: {what}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the field or line.
        what: String,
    },
    /// An adapter does not fit the model it is applied to.
    #[error(
        "adapter {adapter} does not fit the model: the adapter has {adapter_dims}, the model has {model_dims}"
    )]
    Incompatible {
        /// The adapter (directory or name).
        adapter: String,
        /// The adapter's sizes.
        adapter_dims: String,
        /// The model's sizes.
        model_dims: String,
    },
    /// The adapter uses a PEFT method or option this crate does not implement.
    #[error("{path}: {what}")]
    Unsupported {
        /// The adapter file.
        path: PathBuf,
        /// What is not supported.
        what: String,
    },
    /// A line of a dataset is invalid.
    #[error("{path}:{line}: {what}")]
    Data {
        /// The dataset file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// An invalid argument or setting.
    #[error("{0}")]
    Invalid(String),
    /// Training cannot continue.
    #[error("{0}")]
    Training(String),
}

/// Result alias of this crate.
pub type Result<T, E = PeftError> = std::result::Result<T, E>;

impl PeftError {
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
}
