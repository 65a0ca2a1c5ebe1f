//! The baseline the fused kernels are measured against: prefix attention as a Burn user writes
//! it without this crate. The prefix is broadcast over the batch and concatenated in front of the
//! keys and values, the key/value heads are repeated for GQA, an explicit `[B, H, L, P + L]`
//! causal mask is built, and Burn's own `burn::tensor::module::attention` does the rest (scores
//! materialised; under `Autodiff` the backward is the graph of its decomposition).

use burn::tensor::{
    Bool, Int, Tensor, backend::Backend, module::attention, ops::AttentionModuleOptions,
};

/// Prefix attention through Burn's `attention`. Shapes as [`crate::PrefixAttention`]: queries
/// `[B, H, L, d]`, keys/values `[B, Hkv, L, d]`, prefix `[1, Hkv, P, d]`; `mask` from
/// [`causal_prefix_mask`].
pub fn burn_prefix_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    prefix_key: Tensor<B, 4>,
    prefix_value: Tensor<B, 4>,
    mask: Tensor<B, 4, Bool>,
) -> Tensor<B, 4> {
    let [batch, heads, _, _] = q.dims();
    let [_, kv_heads, seq, dim] = k.dims();
    let prefix = prefix_key.dims()[2];
    let widen = |p: Tensor<B, 4>, x: Tensor<B, 4>| {
        let x = if prefix == 0 {
            x
        } else {
            Tensor::cat(vec![p.expand([batch, kv_heads, prefix, dim]), x], 2)
        };
        x.unsqueeze_dim::<5>(2)
            .expand([batch, kv_heads, heads / kv_heads, prefix + seq, dim])
            .reshape([batch, heads, prefix + seq, dim])
    };
    let (k, v) = (widen(prefix_key, k), widen(prefix_value, v));
    attention(q, k, v, Some(mask), None, AttentionModuleOptions::default())
}

/// `[batch, heads, seq, prefix + seq]`, `true` where query `i` must not see column `c` of
/// `[prefix ; sequence]` (`c > prefix + i`).
pub fn causal_prefix_mask<B: Backend>(
    batch: usize,
    heads: usize,
    seq: usize,
    prefix: usize,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let width = prefix + seq;
    let cols = Tensor::<B, 1, Int>::arange(0..width as i64, device)
        .reshape([1, width])
        .expand([seq, width]);
    let rows = Tensor::<B, 1, Int>::arange(prefix as i64..width as i64, device)
        .reshape([seq, 1])
        .expand([seq, width]);
    cols.greater(rows)
        .reshape([1, 1, seq, width])
        .expand([batch, heads, seq, width])
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::{
        backend::Flex,
        tensor::{Distribution, Tensor},
    };

    use super::*;
    use crate::{AttentionPath, PrefixAttention};

    /// The baseline computes what the op computes, so benchmarks compare equal work (odd
    /// sizes, GQA ratio 3, and no prefix).
    #[test]
    fn matches_prefix_attention() {
        let device = Default::default();
        for prefix in [0, 3] {
            let (b, h, kv, l, d) = (2, 6, 2, 7, 8);
            let n = Distribution::Normal(0.0, 1.0);
            let q = Tensor::<Flex, 4>::random([b, h, l, d], n, &device);
            let k = Tensor::random([b, kv, l, d], n, &device);
            let v = Tensor::random([b, kv, l, d], n, &device);
            let pk = Tensor::random([1, kv, prefix, d], n, &device);
            let pv = Tensor::random([1, kv, prefix, d], n, &device);
            let mask = causal_prefix_mask(b, h, l, prefix, &device);
            let burn = burn_prefix_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                pk.clone(),
                pv.clone(),
                mask,
            );
            let mut op = PrefixAttention::new(q, k, v).with_path(AttentionPath::Unfused);
            if prefix > 0 {
                op = op.with_prefix(pk, pv);
            }
            let values = |t: Tensor<Flex, 4>| t.into_data().to_vec::<f32>().expect("f32");
            peft_testing::assert_close(
                &values(burn),
                &values(op.forward()),
                1e-5,
                &format!("prefix {prefix}"),
            );
        }
    }
}
