//! GGUF files: the container reader, ggml dequantisation, and a [`TensorSource`] that serves a
//! checkpoint's weights in Hugging Face layout.

mod dequant;
mod reader;
mod types;

use std::{
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
    sync::Mutex,
};

pub use dequant::{DequantError, dequantize};
pub use reader::{GgufError, GgufHeader, MetaValue, TensorInfo};
pub use types::GgmlType;

use crate::{
    config::DecoderConfig,
    error::{ModelError, Result},
    source::{LayerWeight, LoadedTensor, TensorSource, WeightKey},
};

/// An open GGUF file: its parsed header and a handle to read tensor data on demand.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    header: GgufHeader,
    file: Mutex<BufReader<File>>,
}

impl GgufFile {
    /// Opens and parses the header of a GGUF file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
        let len = file.metadata().map_err(|e| ModelError::io(&path, e))?.len();
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let header = GgufHeader::read(&mut reader, len)
            .map_err(|e| ModelError::malformed(&path, e.to_string()))?;
        Ok(Self {
            path,
            header,
            file: Mutex::new(reader),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header (metadata and tensor table).
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.header.metadata.get(key)
    }

    /// `general.architecture`, e.g. `llama` or `gemma3`.
    pub fn architecture(&self) -> Result<&str> {
        self.meta("general.architecture")
            .and_then(MetaValue::as_str)
            .ok_or_else(|| {
                ModelError::config(
                    &self.path,
                    "general.architecture",
                    "missing or not a string",
                )
            })
    }

    /// Reads and dequantises the tensor `name`; returns its row-major shape and values.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self
            .header
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })?;
        let bytes = {
            let mut file = self
                .file
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            reader::read_tensor_bytes(&mut *file, info)
                .map_err(|e| ModelError::io(&self.path, e))?
        };
        let values = dequantize(info.ty, &bytes, info.num_elements() as usize).map_err(|e| {
            ModelError::Tensor {
                path: self.path.clone(),
                tensor: name.to_string(),
                what: e.to_string(),
            }
        })?;
        Ok((info.shape(), values))
    }
}

/// The name a weight has in llama.cpp's GGUF naming.
pub fn gguf_name(key: WeightKey) -> String {
    match key {
        WeightKey::Embedding => "token_embd.weight".into(),
        WeightKey::LmHead => "output.weight".into(),
        WeightKey::FinalNorm => "output_norm.weight".into(),
        WeightKey::Layer(i, w) => {
            let short = match w {
                LayerWeight::AttnNorm => "attn_norm.weight",
                LayerWeight::Query => "attn_q.weight",
                LayerWeight::Key => "attn_k.weight",
                LayerWeight::Value => "attn_v.weight",
                LayerWeight::Output => "attn_output.weight",
                LayerWeight::QueryBias => "attn_q.bias",
                LayerWeight::KeyBias => "attn_k.bias",
                LayerWeight::ValueBias => "attn_v.bias",
                LayerWeight::QueryNorm => "attn_q_norm.weight",
                LayerWeight::KeyNorm => "attn_k_norm.weight",
                LayerWeight::PostAttnNorm => "post_attention_norm.weight",
                LayerWeight::MlpNorm => "ffn_norm.weight",
                LayerWeight::PostMlpNorm => "post_ffw_norm.weight",
                LayerWeight::Gate => "ffn_gate.weight",
                LayerWeight::Up => "ffn_up.weight",
                LayerWeight::Down => "ffn_down.weight",
            };
            format!("blk.{i}.{short}")
        }
    }
}

/// Undoes llama.cpp's Q/K row permutation, which reorders each head's rows from Hugging Face's
/// rotate-half layout (`[first half ; second half]`) to interleaved pairs: GGUF row `2i + h` of
/// a head is Hugging Face row `h·(d/2) + i`. `rows` is `[heads·d, cols]` (`cols = 1` for a bias).
pub fn unpermute_rotary_rows(values: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let head_rows = values.len() / cols / heads;
    let half = head_rows / 2;
    let mut out = vec![0.0; values.len()];
    for head in 0..heads {
        for hf in 0..head_rows {
            let (h, i) = (hf / half, hf % half);
            let src = (head * head_rows + 2 * i + h) * cols;
            let dst = (head * head_rows + hf) * cols;
            out[dst..dst + cols].copy_from_slice(&values[src..src + cols]);
        }
    }
    out
}

/// Serves a GGUF checkpoint's weights in Hugging Face layout and values: Q/K rows un-permuted
/// for the families whose converter permutes them ([`Family::gguf_rotary_permuted`](crate::family::Family::gguf_rotary_permuted)), and
/// norm weights shifted back for those whose converter shifts them
/// ([`Family::gguf_norm_shift`](crate::family::Family::gguf_norm_shift)).
#[derive(Debug)]
pub struct GgufSource {
    file: GgufFile,
    heads: usize,
    kv_heads: usize,
    permuted: bool,
    norm_shift: f32,
}

impl GgufSource {
    /// Wraps an open file read with `config`.
    pub fn new(file: GgufFile, config: &DecoderConfig) -> Self {
        Self {
            file,
            heads: config.num_heads,
            kv_heads: config.num_kv_heads,
            permuted: config.family.gguf_rotary_permuted(),
            norm_shift: config.family.gguf_norm_shift(),
        }
    }

    /// The underlying file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }
}

impl TensorSource for GgufSource {
    fn path(&self) -> &Path {
        self.file.path()
    }

    fn name(&self, key: WeightKey) -> String {
        gguf_name(key)
    }

    fn contains(&self, key: WeightKey) -> bool {
        self.file.header().tensor(&gguf_name(key)).is_some()
    }

    fn load(&self, key: WeightKey) -> Result<LoadedTensor> {
        let name = gguf_name(key);
        let (shape, values) = self.file.read_f32(&name)?;
        let heads = match key {
            WeightKey::Layer(_, LayerWeight::Query | LayerWeight::QueryBias) => Some(self.heads),
            WeightKey::Layer(_, LayerWeight::Key | LayerWeight::KeyBias) => Some(self.kv_heads),
            _ => None,
        };
        let values = match heads {
            Some(heads) if self.permuted => {
                let rows = shape[0];
                if heads == 0 || rows % (2 * heads) != 0 {
                    return Err(ModelError::Tensor {
                        path: self.path().to_path_buf(),
                        tensor: name,
                        what: format!("{rows} rows cannot be split into {heads} rotary heads"),
                    });
                }
                unpermute_rotary_rows(&values, heads, shape.iter().skip(1).product())
            }
            _ if key.is_norm() && self.norm_shift != 0.0 => {
                values.into_iter().map(|v| v - self.norm_shift).collect()
            }
            _ => values,
        };
        Ok(LoadedTensor {
            name,
            shape,
            values,
        })
    }
}
