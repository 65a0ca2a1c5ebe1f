//! Opening a checkpoint from a path: a `.gguf` file, or a Hugging Face directory with
//! `config.json`, `model.safetensors` (or shards) and `tokenizer.json`.

use std::path::{Path, PathBuf};

use peft_kernels::{PrefixAttentionBackend, WeightPrecision};

use crate::{
    config::DecoderConfig,
    decoder::Decoder,
    error::{ModelError, Result},
    gguf::{GgufFile, GgufSource},
    safetensors::SafetensorsSource,
    source::TensorSource,
    tokenizer::Tokenizer,
};

/// Where the model lands after `scripts/fetch-model.sh`, relative to the repository root.
pub const DEFAULT_MODEL_PATH: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// A checkpoint whose configuration and tokenizer are read; weights load on demand.
pub struct Checkpoint {
    path: PathBuf,
    /// The model configuration.
    pub config: DecoderConfig,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    source: Box<dyn TensorSource + Send + Sync>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// Opens `path`: a GGUF file, or a directory in Hugging Face layout.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if path.is_dir() {
            let config = DecoderConfig::from_hf_json(&path.join("config.json"))?;
            let tokenizer = Tokenizer::from_file(&path.join("tokenizer.json"))?;
            let source = SafetensorsSource::open(&path, config.family)?;
            return Ok(Self {
                path,
                config,
                tokenizer,
                source: Box::new(source),
            });
        }
        if !path.exists() {
            return Err(ModelError::io(
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such model file (run scripts/fetch-model.sh to download SmolLM2-135M)",
                ),
            ));
        }
        let file = GgufFile::open(&path)?;
        let config = DecoderConfig::from_gguf(&file)?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let source = GgufSource::new(file, &config);
        Ok(Self {
            path,
            config,
            tokenizer,
            source: Box::new(source),
        })
    }

    /// The checkpoint's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the weights onto `device`, the linear layers in f32.
    pub fn load<B: PrefixAttentionBackend>(&self, device: &B::Device) -> Result<Decoder<B>> {
        self.load_with_precision(device, WeightPrecision::F32)
    }

    /// Loads the weights onto `device`, the frozen linear weights in `precision`
    /// ([`Decoder::load_with_precision`]).
    pub fn load_with_precision<B: PrefixAttentionBackend>(
        &self,
        device: &B::Device,
        precision: WeightPrecision,
    ) -> Result<Decoder<B>> {
        Decoder::load_with_precision(&self.config, self.source.as_ref(), device, precision)
    }
}
