//! The reference implementation, composed of ordinary tensor ops; every backend can run it.
//!
//! Grouped-query attention is handled without repeating keys: queries `[B, H, L, d]` are viewed
//! as `[B, Hkv, g·L, d]` (query head `h = kv·g + j` reads key/value head `kv`, Hugging Face's
//! `repeat_kv` order), so one batched matmul against `[B, Hkv, P + S, d]` scores a whole group.
//! The prefix is concatenated in front of the sequence keys; that copy is `O(B·Hkv·(P+S)·d)`,
//! far smaller than the `[B, H, L, P + S]` scores this path materialises anyway.

use burn::tensor::{Bool, Int, Tensor, backend::Backend};

use crate::{
    counts::{Ran, record},
    op::{ArgTensors, AttentionGrads},
};

/// Keys and values with the prefix in front, `[B, Hkv, P + S, d]`.
fn full_kv<B: Backend>(a: &ArgTensors<B>) -> (Tensor<B, 4>, Tensor<B, 4>) {
    match &a.prefix {
        None => (a.key.clone(), a.value.clone()),
        Some((pk, pv)) => {
            let [b, hkv, _, d] = a.key.dims();
            let p = pk.dims()[2];
            (
                Tensor::cat(vec![pk.clone().expand([b, hkv, p, d]), a.key.clone()], 2),
                Tensor::cat(vec![pv.clone().expand([b, hkv, p, d]), a.value.clone()], 2),
            )
        }
    }
}

/// Number of prefix slots (0 without a prefix).
fn prefix_len<B: Backend>(a: &ArgTensors<B>) -> usize {
    a.prefix.as_ref().map_or(0, |(pk, _)| pk.dims()[2])
}

/// The mask over `[B, 1, 1, L, P + S]` (true = hidden), or `None` when nothing is hidden.
fn mask<B: Backend>(a: &ArgTensors<B>) -> Option<Tensor<B, 5, Bool>> {
    let [b, _, l, _] = a.query.dims();
    let s = a.key.dims()[2];
    let p = prefix_len(a);
    let device = a.query.device();
    let offset = (s - l) as i64;
    let needs_causal = l > 1;
    if !needs_causal && a.key_lengths.is_none() && a.prefix_lengths.is_none() && a.window.is_none()
    {
        return None;
    }
    let rows = Tensor::<B, 1, Int>::arange(0..l as i64, &device).reshape([1, l, 1]);
    let cols = Tensor::<B, 1, Int>::arange(0..s as i64, &device).reshape([1, 1, s]);
    // Key j is hidden from query i when j > i + (S - L).
    let mut seq = rows.clone().add_scalar(offset).lower(cols.clone()); // [1, L, S]
    if let Some(w) = a.window {
        // ... and when (i + S - L) - j >= window.
        let far = rows
            .clone()
            .add_scalar(offset - w as i64)
            .greater_equal(cols.clone());
        seq = seq.bool_or(far);
    }
    if let Some(len) = &a.key_lengths {
        let pad = cols.greater_equal(len.clone().reshape([b, 1, 1])); // [B, 1, S]
        seq = seq.expand([b, l, s]).bool_or(pad.expand([b, l, s]));
    }
    let full = if p == 0 {
        seq
    } else {
        let bm = seq.dims()[0];
        let slots = Tensor::<B, 1, Int>::arange(0..p as i64, &device).reshape([1, 1, p]);
        let mut pre = match &a.prefix_lengths {
            Some(len) => slots.clone().greater_equal(len.clone().reshape([b, 1, 1])),
            None => slots.clone().greater_equal_elem(p as i64),
        };
        if let Some(w) = a.window {
            // Slot p of a row with Pr slots sits Pr + (i + S - L) - p positions behind query i.
            let behind = rows.add_scalar(offset - w as i64); // [1, L, 1]
            let limit = match &a.prefix_lengths {
                Some(len) => behind.add(len.clone().reshape([b, 1, 1])), // [B, L, 1]
                None => behind.add_scalar(p as i64),
            };
            let [lb, _, _] = limit.dims();
            let far = slots
                .expand([lb, l, p])
                .lower_equal(limit.expand([lb, l, p]));
            let [pb, _, _] = pre.dims();
            let rows_b = pb.max(lb);
            pre = pre
                .expand([rows_b, l, p])
                .bool_or(far.expand([rows_b, l, p]));
        }
        let rows_b = bm.max(pre.dims()[0]);
        Tensor::cat(
            vec![pre.expand([rows_b, l, p]), seq.expand([rows_b, l, s])],
            2,
        )
    };
    let [bm, _, n] = full.dims();
    Some(full.reshape([bm, 1, 1, l, n]))
}

/// Scaled, masked scores `[B, Hkv, g, L, P + S]` (hidden entries are `-inf`).
fn scores<B: Backend>(a: &ArgTensors<B>, keys: &Tensor<B, 4>) -> Tensor<B, 5> {
    let [b, h, l, d] = a.query.dims();
    let hkv = a.key.dims()[1];
    let g = h / hkv;
    let n = keys.dims()[2];
    let q = a.query.clone().reshape([b, hkv, g * l, d]);
    let scores = q.matmul(keys.clone().swap_dims(2, 3)).mul_scalar(a.scale);
    match mask(a) {
        // One mask for the whole batch: add it as a flat `[1, L·n]` row of 0 / -inf, which CPU
        // backends broadcast on their fast path (a 5-D masked fill walks strided views).
        Some(m) if m.dims()[0] == 1 => {
            let bias = Tensor::<B, 5>::zeros(m.dims(), &scores.device())
                .mask_fill(m, f32::NEG_INFINITY)
                .reshape([1, l * n]);
            (scores.reshape([b * hkv * g, l * n]) + bias).reshape([b, hkv, g, l, n])
        }
        Some(m) => scores
            .reshape([b, hkv, g, l, n])
            .mask_fill(m.expand([b, hkv, g, l, n]), f32::NEG_INFINITY),
        None => scores.reshape([b, hkv, g, l, n]),
    }
}

/// Row-wise maximum and `exp(s - max)` with a NaN-safe guard for fully hidden rows.
fn stable_exp<B: Backend>(scores: Tensor<B, 5>) -> (Tensor<B, 5>, Tensor<B, 5>) {
    let max = scores.clone().max_dim(4).clamp_min(f32::MIN);
    let exp = scores.sub(max.clone()).exp();
    (max, exp)
}

/// Attention output `[B, H, L, d]`, composed of tensor ops and differentiated by the autodiff
/// graph like any other composition.
pub(crate) fn forward<B: Backend>(a: &ArgTensors<B>) -> Tensor<B, 4> {
    record(Ran::ReferenceForward);
    let [b, h, l, d] = a.query.dims();
    let hkv = a.key.dims()[1];
    let (keys, values) = full_kv(a);
    let n = keys.dims()[2];
    let (_, exp) = stable_exp(scores(a, &keys));
    let sum = exp.clone().sum_dim(4).clamp_min(f32::MIN_POSITIVE);
    let probs = exp.div(sum).reshape([b, hkv, (h / hkv) * l, n]);
    probs.matmul(values).reshape([b, h, l, d])
}

/// Attention output `[B, H, L, d]` and log-sum-exp `[B, H, L]` of the scaled scores.
pub(crate) fn forward_with_lse<B: Backend>(a: &ArgTensors<B>) -> (Tensor<B, 4>, Tensor<B, 3>) {
    record(Ran::ReferenceForward);
    let [b, h, l, d] = a.query.dims();
    let hkv = a.key.dims()[1];
    let (keys, values) = full_kv(a);
    let n = keys.dims()[2];
    let (max, exp) = stable_exp(scores(a, &keys));
    let sum = exp.clone().sum_dim(4).clamp_min(f32::MIN_POSITIVE);
    let lse = max.add(sum.clone().log()).reshape([b, h, l]);
    let probs = exp.div(sum).reshape([b, hkv, (h / hkv) * l, n]);
    (probs.matmul(values).reshape([b, h, l, d]), lse)
}

/// Analytic backward: probabilities are recomputed from the saved log-sum-exp, then
/// `D = rowsum(dO∘O)`, `dS = P∘(dO·Vᵀ − D)`, `dQ = scale·dS·K`, `dK = scale·dSᵀ·Q`, `dV = Pᵀ·dO`.
/// Prefix gradients are the first `P` key rows, summed over the batch when the prefix is shared.
pub(crate) fn backward<B: Backend>(
    a: &ArgTensors<B>,
    out: Tensor<B, 4>,
    lse: Tensor<B, 3>,
    grad_out: Tensor<B, 4>,
) -> AttentionGrads<B> {
    record(Ran::ReferenceBackward);
    let [b, h, l, d] = a.query.dims();
    let [_, hkv, s, _] = a.key.dims();
    let g = h / hkv;
    let p = prefix_len(a);
    let (keys, values) = full_kv(a);
    let n = p + s;
    let lse = lse.reshape([b, hkv, g, l, 1]);
    let probs = scores(a, &keys).sub(lse).exp().reshape([b, hkv, g * l, n]);
    let d_out = grad_out.reshape([b, hkv, g * l, d]);
    let delta = d_out
        .clone()
        .mul(out.reshape([b, hkv, g * l, d]))
        .sum_dim(3); // [B, Hkv, gL, 1]
    let d_values = probs.clone().swap_dims(2, 3).matmul(d_out.clone()); // [B, Hkv, n, d]
    let d_probs = d_out.matmul(values.swap_dims(2, 3)); // [B, Hkv, gL, n]
    let d_scores = probs.mul(d_probs.sub(delta)).mul_scalar(a.scale);
    let q = a.query.clone().reshape([b, hkv, g * l, d]);
    let d_query = d_scores.clone().matmul(keys).reshape([b, h, l, d]);
    let d_keys = d_scores.swap_dims(2, 3).matmul(q); // [B, Hkv, n, d]

    let split = |t: Tensor<B, 4>| -> (Option<Tensor<B, 4>>, Tensor<B, 4>) {
        if p == 0 {
            return (None, t);
        }
        let pre = t.clone().narrow(2, 0, p);
        let shared = a.prefix.as_ref().is_some_and(|(pk, _)| pk.dims()[0] == 1);
        let pre = if shared && b > 1 { pre.sum_dim(0) } else { pre };
        (Some(pre), t.narrow(2, p, s))
    };
    let (d_prefix_key, d_key) = split(d_keys);
    let (d_prefix_value, d_value) = split(d_values);
    let prim = |t: Tensor<B, 4>| t.into_primitive().tensor();
    AttentionGrads {
        query: prim(d_query),
        key: prim(d_key),
        value: prim(d_value),
        prefix_key: d_prefix_key.map(prim),
        prefix_value: d_prefix_value.map(prim),
    }
}
