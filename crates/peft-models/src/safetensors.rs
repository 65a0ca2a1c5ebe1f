//! Hugging Face checkpoints: `config.json` with `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Mutex,
};

use safetensors::{Dtype, SafeTensors};

use crate::{
    error::{ModelError, Result},
    family::Family,
    source::{LoadedTensor, TensorSource, WeightKey},
};

/// The Hugging Face name of a weight of a `family` checkpoint.
pub fn hf_name(family: Family, key: WeightKey) -> String {
    match key {
        WeightKey::Embedding => "model.embed_tokens.weight".into(),
        WeightKey::LmHead => "lm_head.weight".into(),
        WeightKey::FinalNorm => "model.norm.weight".into(),
        WeightKey::Layer(i, w) => format!("model.layers.{i}.{}", family.hf_layer_name(w)),
    }
}

/// Converts a safetensors tensor to f32 values.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> std::result::Result<Vec<f32>, String> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        other => return Err(format!("dtype {other:?} is not a float type")),
    })
}

/// A (possibly sharded) Hugging Face safetensors checkpoint.
#[derive(Debug)]
pub struct SafetensorsSource {
    dir: PathBuf,
    /// The family whose names the checkpoint uses.
    family: Family,
    /// Tensor name → shard file name.
    index: BTreeMap<String, String>,
    /// The shard read last, kept because consecutive weights live in the same shard.
    cache: Mutex<Option<(String, Vec<u8>)>>,
}

impl SafetensorsSource {
    /// Opens the checkpoint of a `family` model in `dir` (`model.safetensors` or
    /// `model.safetensors.index.json`).
    pub fn open(dir: &Path, family: Family) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let index = if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                ModelError::malformed(
                    &index_path,
                    format!(
                        "invalid JSON at line {}, column {}: {e}",
                        e.line(),
                        e.column()
                    ),
                )
            })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    ModelError::malformed(
                        &index_path,
                        "field `weight_map` is missing or not an object",
                    )
                })?;
            map.iter()
                .map(|(k, v)| {
                    let file = v
                        .as_str()
                        .filter(|f| !f.contains(['/', '\\']) && !f.starts_with('.'));
                    file.map(|f| (k.clone(), f.to_string())).ok_or_else(|| {
                        ModelError::malformed(
                            &index_path,
                            format!("weight_map[`{k}`] is not a shard file name"),
                        )
                    })
                })
                .collect::<Result<_>>()?
        } else {
            let single = dir.join("model.safetensors");
            let bytes = std::fs::read(&single).map_err(|e| ModelError::io(&single, e))?;
            let names = SafeTensors::deserialize(&bytes)
                .map_err(|e| ModelError::malformed(&single, format!("invalid safetensors: {e}")))?
                .names()
                .into_iter()
                .map(|n| (n.to_string(), "model.safetensors".to_string()))
                .collect();
            let source = Self {
                dir: dir.to_path_buf(),
                family,
                index: names,
                cache: Mutex::new(None),
            };
            *source.lock_cache() = Some(("model.safetensors".into(), bytes));
            return Ok(source);
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            family,
            index,
            cache: Mutex::new(None),
        })
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Option<(String, Vec<u8>)>> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl TensorSource for SafetensorsSource {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn name(&self, key: WeightKey) -> String {
        hf_name(self.family, key)
    }

    fn contains(&self, key: WeightKey) -> bool {
        self.index.contains_key(&hf_name(self.family, key))
    }

    fn load(&self, key: WeightKey) -> Result<LoadedTensor> {
        let name = hf_name(self.family, key);
        let shard = self
            .index
            .get(&name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.dir.clone(),
                tensor: name.clone(),
            })?;
        let path = self.dir.join(shard);
        let mut cache = self.lock_cache();
        if cache.as_ref().is_none_or(|(f, _)| f != shard) {
            let bytes = std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?;
            *cache = Some((shard.clone(), bytes));
        }
        let bytes = cache
            .as_ref()
            .map(|(_, b)| b.as_slice())
            .unwrap_or_default();
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| ModelError::malformed(&path, format!("invalid safetensors: {e}")))?;
        let view = st.tensor(&name).map_err(|_| ModelError::MissingTensor {
            path: path.clone(),
            tensor: name.clone(),
        })?;
        let values = to_f32(view.dtype(), view.data()).map_err(|what| ModelError::Tensor {
            path: path.clone(),
            tensor: name.clone(),
            what,
        })?;
        Ok(LoadedTensor {
            name,
            shape: view.shape().to_vec(),
            values,
        })
    }
}
