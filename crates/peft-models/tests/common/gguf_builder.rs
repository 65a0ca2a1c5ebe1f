//! A minimal GGUF writer for crafting valid and broken files in tests.
#![allow(dead_code)]

/// Builds a GGUF v3 file in memory.
#[derive(Default, Clone)]
pub struct GgufBuilder {
    pub version: u32,
    meta: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

pub fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend(s.as_bytes());
    v
}

impl GgufBuilder {
    pub fn new() -> Self {
        Self {
            version: 3,
            ..Default::default()
        }
    }
    pub fn raw_meta(mut self, key: &str, ty: u32, payload: Vec<u8>) -> Self {
        self.meta.push((key.into(), ty, payload));
        self
    }
    pub fn u32(self, key: &str, v: u32) -> Self {
        self.raw_meta(key, 4, v.to_le_bytes().to_vec())
    }
    pub fn f32(self, key: &str, v: f32) -> Self {
        self.raw_meta(key, 6, v.to_le_bytes().to_vec())
    }
    pub fn str(self, key: &str, v: &str) -> Self {
        self.raw_meta(key, 8, string(v))
    }
    pub fn strs(self, key: &str, v: &[&str]) -> Self {
        let mut p = 8u32.to_le_bytes().to_vec();
        p.extend((v.len() as u64).to_le_bytes());
        for s in v {
            p.extend(string(s));
        }
        self.raw_meta(key, 9, p)
    }
    pub fn tensor_raw(mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> Self {
        self.tensors.push((name.into(), dims.to_vec(), ty, data));
        self
    }
    pub fn tensor_f32(self, name: &str, dims: &[u64], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor_raw(name, dims, 0, data)
    }
    pub fn without_tensor(mut self, name: &str) -> Self {
        self.tensors.retain(|t| t.0 != name);
        self
    }
    pub fn without_meta(mut self, key: &str) -> Self {
        self.meta.retain(|m| m.0 != key);
        self
    }
    pub fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.meta.len() as u64).to_le_bytes());
        for (k, ty, p) in &self.meta {
            out.extend(string(k));
            out.extend(ty.to_le_bytes());
            out.extend(p);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in &self.tensors {
            out.extend(string(name));
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() as u64).next_multiple_of(32);
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        let base = out.len();
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(base + off as usize, 0);
            out.extend(data);
        }
        out
    }
}

/// A complete, valid 1-layer `llama` GGUF (hidden 8, 2 heads, 1 kv head, vocab 4, F32).
pub fn tiny_llama() -> GgufBuilder {
    let (h, ff, v, kv) = (8u64, 16u64, 4u64, 4u64);
    let vals =
        |n: u64| -> Vec<f32> { (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 10.0).collect() };
    GgufBuilder::new()
        .str("general.architecture", "llama")
        .u32("llama.block_count", 1)
        .u32("llama.context_length", 64)
        .u32("llama.embedding_length", h as u32)
        .u32("llama.feed_forward_length", ff as u32)
        .u32("llama.attention.head_count", 2)
        .u32("llama.attention.head_count_kv", 1)
        .f32("llama.rope.freq_base", 10000.0)
        .f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .str("tokenizer.ggml.model", "gpt2")
        .str("tokenizer.ggml.pre", "smollm")
        .strs("tokenizer.ggml.tokens", &["a", "b", "ab", "Ġ"])
        .strs("tokenizer.ggml.merges", &["a b"])
        .tensor_f32("token_embd.weight", &[h, v], &vals(h * v))
        .tensor_f32("output_norm.weight", &[h], &vals(h))
        .tensor_f32("blk.0.attn_norm.weight", &[h], &vals(h))
        .tensor_f32("blk.0.attn_q.weight", &[h, h], &vals(h * h))
        .tensor_f32("blk.0.attn_k.weight", &[h, kv], &vals(h * kv))
        .tensor_f32("blk.0.attn_v.weight", &[h, kv], &vals(h * kv))
        .tensor_f32("blk.0.attn_output.weight", &[h, h], &vals(h * h))
        .tensor_f32("blk.0.ffn_norm.weight", &[h], &vals(h))
        .tensor_f32("blk.0.ffn_gate.weight", &[h, ff], &vals(h * ff))
        .tensor_f32("blk.0.ffn_up.weight", &[h, ff], &vals(h * ff))
        .tensor_f32("blk.0.ffn_down.weight", &[ff, h], &vals(h * ff))
}
