//! `peft bench attention`: the fused prefix-attention kernels against the unfused paths.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::{
    backend::Autodiff,
    tensor::{Bool, Distribution, Tensor, backend::Backend},
};
use clap::Args;
use peft_kernels::{
    AttentionPath, KernelPass, KernelShape, PrefixAttention, PrefixAttentionAutodiffBackend,
    PrefixAttentionBackend,
    backends::{BackendKind, BackendVisitor},
    baseline,
};
use serde_json::json;

use super::median;
use crate::{backend::parse_backend, validate::at_least};

/// Arguments of `peft bench attention`.
#[derive(Debug, Args)]
pub struct AttentionBench {
    /// Compute backend.
    #[arg(long, default_value = "flex", value_parser = parse_backend)]
    pub backend: BackendKind,
    /// Batch size.
    #[arg(long, default_value_t = 8, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub batch: usize,
    /// Sequence length (queries = keys).
    #[arg(long, default_value_t = 512, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub seq: usize,
    /// Prefix slots (0: no prefix).
    #[arg(long, default_value_t = 64, allow_hyphen_values = true, value_parser = at_least::<0>)]
    pub prefix: usize,
    /// Query heads (a multiple of --kv-heads).
    #[arg(long, default_value_t = 9, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub heads: usize,
    /// Key/value heads.
    #[arg(long, default_value_t = 3, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub kv_heads: usize,
    /// Head dimension.
    #[arg(long, default_value_t = 64, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub head_dim: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 5, allow_hyphen_values = true, value_parser = at_least::<1>)]
    pub repeats: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also time the fused kernels with each of these lanes-per-row counts (comma-separated,
    /// from 1, 2, 4, 8: units sharing one query row or key column), side by side with the
    /// default layout in the same process. With `--rows`, every pair of the two lists is
    /// timed. CubeCL backends only.
    #[arg(long, value_delimiter = ',')]
    pub lanes: Vec<usize>,
    /// Also time the fused kernels with each of these rows-per-unit counts (comma-separated,
    /// from 1, 2, 4, 8, 16: query rows or key columns one unit owns), side by side with the
    /// default layout in the same process. With `--lanes`, every pair of the two lists is
    /// timed. CubeCL backends only.
    #[arg(long, value_delimiter = ',')]
    pub rows: Vec<usize>,
    /// Also time the fused kernels with each of these step blocks (comma-separated, from 1, 2,
    /// 4, 8: staged columns, or query rows in dK/dV, a unit takes per step), side by side with
    /// the default in the same process; combined with `--rows` and `--lanes` like them.
    /// CubeCL backends only.
    #[arg(long, value_delimiter = ',')]
    pub blocks: Vec<usize>,
    /// Also time the fused forward kernels named here (comma-separated: `rows`, one unit per
    /// query row or lane share of one; `tiles`, 4 × 4 register tiles of scores), side by side
    /// with the default in the same process; combined with the other layout lists. `tiles`
    /// needs a head dimension that is a multiple of 32 (others time the row kernel). CubeCL
    /// backends only.
    #[arg(long, value_delimiter = ',')]
    pub forward: Vec<KernelShape>,
    /// Also time the fused dQ kernels named here (comma-separated: `rows` or `tiles`, as for
    /// `--forward`), side by side with the default in the same process; combined with the
    /// other layout lists. `tiles` needs a head dimension that is a multiple of 32 and its
    /// shared memory within the device's (others time the row kernel). CubeCL backends only.
    #[arg(long, value_delimiter = ',')]
    pub dq: Vec<KernelShape>,
    /// Also time the fused dK/dV kernels named here (comma-separated: `rows` or `tiles`, as for
    /// `--dq`), side by side with the default in the same process; combined with the other
    /// layout lists. CubeCL backends only.
    #[arg(long, value_delimiter = ',')]
    pub dkdv: Vec<KernelShape>,
}

impl AttentionBench {
    /// The kernel-shape lists of `--forward`, `--dq` and `--dkdv`, in [`KernelPass::ALL`]'s
    /// order.
    fn shape_lists(&self) -> [&[KernelShape]; 3] {
        [&self.forward, &self.dq, &self.dkdv]
    }
}

pub(super) struct Attn(pub(super) AttentionBench);

impl BackendVisitor for Attn {
    type Output = Result<()>;
    fn visit<B: PrefixAttentionBackend>(self, device: B::Device) -> Result<()> {
        let a = self.0;
        // The parsers refuse 0 already; checked again here, as the kernels assert it.
        if a.kv_heads == 0 || !a.heads.is_multiple_of(a.kv_heads) {
            bail!(
                "--heads {} is not a multiple of --kv-heads {}",
                a.heads,
                a.kv_heads
            );
        }
        // The largest tensors are the queries `[batch, heads, seq, head_dim]` and Burn
        // attention's mask and scores `[batch, heads, seq, prefix + seq]`: a shape whose f32
        // bytes do not fit in memory's address range is refused before anything is built.
        let rows = [a.heads, a.seq]
            .into_iter()
            .try_fold(a.batch, usize::checked_mul);
        let largest = rows.and_then(|rows| {
            let scores = rows.checked_mul(a.prefix.checked_add(a.seq)?)?;
            Some(scores.max(rows.checked_mul(a.head_dim)?))
        });
        if largest.is_none_or(|n| n > isize::MAX as usize / 4) {
            bail!(
                "--batch {} × --heads {} × --seq {} × (--prefix {} + --seq, or --head-dim {}) is too many elements to allocate",
                a.batch,
                a.heads,
                a.seq,
                a.prefix,
                a.head_dim
            );
        }
        // Checked before the long timing runs, not when the layout is set. The layouts are the
        // CubeCL kernels' (wgpu, CUDA); Flex's host kernels have none.
        let layouts = matches!(a.backend, BackendKind::Wgpu | BackendKind::Cuda);
        for (flag, list, allowed) in [
            ("--lanes", &a.lanes, &peft_kernels::LANE_COUNTS[..]),
            ("--rows", &a.rows, &peft_kernels::ROW_COUNTS[..]),
            ("--blocks", &a.blocks, &peft_kernels::BLOCK_SIZES[..]),
        ] {
            if let Some(n) = list.iter().find(|n| !allowed.contains(n)) {
                bail!("{flag} {n}: the fused kernels take {allowed:?}");
            }
            if !list.is_empty() && !layouts {
                bail!("{flag}: {} has no CubeCL kernels to lay out", a.backend);
            }
        }
        for (pass, list) in KernelPass::ALL.into_iter().zip(a.shape_lists()) {
            if !list.is_empty() && !layouts {
                bail!(
                    "--{}: {} has no CubeCL kernels to lay out",
                    pass.name(),
                    a.backend
                );
            }
        }
        let mut report = serde_json::Map::new();
        for (pass, backward) in [("forward", false), ("forward_backward", true)] {
            let ms = Impl::ALL.map(|imp| {
                if backward {
                    time_backward::<Autodiff<B>>(&a, imp, &device)
                } else {
                    time_forward::<B>(&a, imp, &device)
                }
            });
            let [fused, unfused, reference] = ms;
            report.insert(
                pass.into(),
                json!({"fused_ms": fused.ms, "unfused_ms": unfused.ms,
                       "speedup": unfused.ms / fused.ms, "reference_ms": reference.ms,
                       "fused_enqueue_ms": fused.enqueue_ms,
                       "unfused_enqueue_ms": unfused.enqueue_ms,
                       "reference_enqueue_ms": reference.enqueue_ms}),
            );
        }
        let by_layout = time_layouts::<B>(&a, &device);
        peft_kernels::set_lanes_per_row(None)?;
        peft_kernels::set_rows_per_unit(None)?;
        peft_kernels::set_step_block(None)?;
        for pass in KernelPass::ALL {
            peft_kernels::set_kernel_shape(pass, None);
        }
        let by_layout = by_layout?;
        let fused_available = B::has_fused_prefix_attention();
        if a.json {
            let mut v = serde_json::Value::Object(report);
            v["backend"] = a.backend.name().into();
            v["fused_kernels"] = fused_available.into();
            v["shape"] = json!({"batch": a.batch, "seq": a.seq, "prefix": a.prefix, "heads": a.heads, "kv_heads": a.kv_heads, "head_dim": a.head_dim});
            if !by_layout.is_empty() {
                v["fused_by_layout"] = by_layout.into();
            }
            println!("{v}");
        } else {
            if !fused_available {
                println!(
                    "note: {} has no fused kernels; \"fused\" runs the reference op with its analytic backward",
                    a.backend
                );
            }
            for (pass, v) in report {
                let ms = |key: &str| v[key].as_f64().unwrap_or(f64::NAN);
                println!(
                    "{pass}: fused {:.2} ms, Burn attention {:.2} ms (speedup {:.2}×), our unfused reference {:.2} ms; \
                     the calls returned after {:.2}, {:.2} and {:.2} ms",
                    ms("fused_ms"),
                    ms("unfused_ms"),
                    ms("speedup"),
                    ms("reference_ms"),
                    ms("fused_enqueue_ms"),
                    ms("unfused_enqueue_ms"),
                    ms("reference_enqueue_ms"),
                );
            }
            for r in by_layout {
                let ms = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
                let count = |key: &str| match &r[key] {
                    serde_json::Value::Null => "default".to_string(),
                    n => n.to_string(),
                };
                let kernel = |key: &str| match &r[key] {
                    serde_json::Value::String(name) => name.clone(),
                    _ => "default".to_string(),
                };
                println!(
                    "fused, forward kernel {}, dQ kernel {}, dK/dV kernel {}, rows per unit {}, lanes per row {}, step block {}: forward {:.2} ms, forward_backward {:.2} ms",
                    kernel("forward"),
                    kernel("dq"),
                    kernel("dkdv"),
                    count("rows"),
                    count("lanes"),
                    count("block"),
                    ms("forward_ms"),
                    ms("forward_backward_ms"),
                );
            }
        }
        Ok(())
    }
}

/// Fused forward and forward + backward times at every (forward kernel, dQ kernel, dK/dV
/// kernel, rows per unit, lanes per row, step block) of `--forward` × `--dq` × `--dkdv` ×
/// `--rows` × `--lanes` × `--blocks` (a list left empty stays at the default, `null` in the
/// JSON). Leaves the last layout set.
fn time_layouts<B: PrefixAttentionBackend>(
    a: &AttentionBench,
    device: &B::Device,
) -> Result<Vec<serde_json::Value>> {
    let mut timed = Vec::new();
    let lists_empty = a.rows.is_empty()
        && a.lanes.is_empty()
        && a.blocks.is_empty()
        && a.shape_lists().iter().all(|l| l.is_empty());
    if lists_empty {
        return Ok(timed);
    }
    // Every combination of the three passes' shapes, the forward's varying slowest.
    let mut shapes = vec![Vec::new()];
    for list in a.shape_lists() {
        shapes = shapes
            .into_iter()
            .flat_map(|prefix| {
                or_default(list).into_iter().map(move |shape| {
                    let mut next = prefix.clone();
                    next.push(shape);
                    next
                })
            })
            .collect();
    }
    for pass_shapes in shapes {
        for rows in or_default(&a.rows) {
            for lanes in or_default(&a.lanes) {
                for block in or_default(&a.blocks) {
                    for (&pass, &shape) in KernelPass::ALL.iter().zip(&pass_shapes) {
                        peft_kernels::set_kernel_shape(pass, shape);
                    }
                    peft_kernels::set_rows_per_unit(rows)?;
                    peft_kernels::set_lanes_per_row(lanes)?;
                    peft_kernels::set_step_block(block)?;
                    let forward = time_forward::<B>(a, Impl::Fused, device);
                    let forward_backward = time_backward::<Autodiff<B>>(a, Impl::Fused, device);
                    let mut row = json!({"rows": rows, "lanes": lanes, "block": block,
                                  "forward_ms": forward.ms,
                                  "forward_backward_ms": forward_backward.ms,
                                  "forward_enqueue_ms": forward.enqueue_ms,
                                  "forward_backward_enqueue_ms": forward_backward.enqueue_ms});
                    for (pass, shape) in KernelPass::ALL.into_iter().zip(&pass_shapes) {
                        row[pass.name()] = shape.map(|k| k.to_string()).into();
                    }
                    timed.push(row);
                }
            }
        }
    }
    Ok(timed)
}

/// Each value of a layout list, or only the default (`None`) when the list is empty.
fn or_default<T: Copy>(list: &[T]) -> Vec<Option<T>> {
    if list.is_empty() {
        vec![None]
    } else {
        list.iter().copied().map(Some).collect()
    }
}

type Qkv<B> = [Tensor<B, 4>; 5];

fn attention_inputs<B: PrefixAttentionBackend>(a: &AttentionBench, device: &B::Device) -> Qkv<B> {
    let n = Distribution::Normal(0.0, 1.0);
    [
        Tensor::random([a.batch, a.heads, a.seq, a.head_dim], n, device),
        Tensor::random([a.batch, a.kv_heads, a.seq, a.head_dim], n, device),
        Tensor::random([a.batch, a.kv_heads, a.seq, a.head_dim], n, device),
        Tensor::random([1, a.kv_heads, a.prefix, a.head_dim], n, device),
        Tensor::random([1, a.kv_heads, a.prefix, a.head_dim], n, device),
    ]
}

/// Medians over the repetitions (after one untimed run) of the milliseconds from the start of
/// `enqueue` to the end of `finish` (which waits for the device), and of those to the return of
/// `enqueue` alone: how long the calls took to return before anything was waited for. On an
/// asynchronous device, an enqueue time close to the total says the pass is bound by host work
/// (op registration, launches), not by the device. With Burn's fusion backends some of the host
/// work can happen in `finish` instead, when the queued operations are flushed.
fn timed<B: PrefixAttentionBackend, T>(
    repeats: usize,
    device: &B::Device,
    mut enqueue: impl FnMut() -> T,
    mut finish: impl FnMut(T),
) -> Timing {
    let (mut total, mut host) = (Vec::new(), Vec::new());
    for rep in 0..repeats + 1 {
        let _ = B::sync(device);
        let start = Instant::now();
        let pending = enqueue();
        let enqueued = start.elapsed();
        finish(pending);
        let _ = B::sync(device);
        if rep > 0 {
            total.push(start.elapsed().as_secs_f64() * 1e3);
            host.push(enqueued.as_secs_f64() * 1e3);
        }
    }
    Timing {
        ms: median(total),
        enqueue_ms: median(host),
    }
}

/// One timed pass: the median time and the median time for its calls to return.
#[derive(Debug, Clone, Copy)]
struct Timing {
    ms: f64,
    enqueue_ms: f64,
}

/// The implementations compared.
#[derive(Clone, Copy)]
enum Impl {
    /// `PrefixAttention` on the fused path (the kernels where the backend has them).
    Fused,
    /// What a Burn user writes without this crate: the prefix broadcast over the batch and
    /// concatenated in front of the keys and values, key/value heads repeated for GQA, an
    /// explicit `[B, H, L, P + L]` causal mask, and `burn::tensor::module::attention`.
    BurnAttention,
    /// `PrefixAttention` on its unfused reference path (tensor ops, GQA without repeating).
    Reference,
}

impl Impl {
    const ALL: [Impl; 3] = [Impl::Fused, Impl::BurnAttention, Impl::Reference];

    fn run<B: PrefixAttentionBackend>(
        self,
        [q, k, v, pk, pv]: Qkv<B>,
        mask: &Tensor<B, 4, Bool>,
    ) -> Tensor<B, 4> {
        let path = match self {
            Impl::Fused => AttentionPath::Fused,
            Impl::Reference => AttentionPath::Unfused,
            Impl::BurnAttention => {
                return baseline::burn_prefix_attention(q, k, v, pk, pv, mask.clone());
            }
        };
        PrefixAttention::new(q, k, v)
            .with_prefix(pk, pv)
            .with_path(path)
            .forward()
    }
}

fn causal_prefix_mask<B: Backend>(a: &AttentionBench, device: &B::Device) -> Tensor<B, 4, Bool> {
    baseline::causal_prefix_mask(a.batch, a.heads, a.seq, a.prefix, device)
}

fn time_forward<B: PrefixAttentionBackend>(
    a: &AttentionBench,
    imp: Impl,
    device: &B::Device,
) -> Timing {
    let inputs = attention_inputs::<B>(a, device);
    let mask = causal_prefix_mask::<B>(a, device);
    timed::<B, _>(
        a.repeats,
        device,
        || imp.run(inputs.clone(), &mask).sum(),
        |sum| {
            let _ = sum.into_data();
        },
    )
}

fn time_backward<B: PrefixAttentionAutodiffBackend>(
    a: &AttentionBench,
    imp: Impl,
    device: &B::Device,
) -> Timing {
    let inputs = attention_inputs::<B>(a, device);
    let mask = causal_prefix_mask::<B>(a, device);
    timed::<B, _>(
        a.repeats,
        device,
        || {
            let out = imp.run(inputs.clone().map(|t| t.require_grad()), &mask);
            out.sum().backward()
        },
        drop,
    )
}
