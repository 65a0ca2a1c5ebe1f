//! An f64 oracle for prefix attention, written as plain loops, with its analytic backward and a
//! finite-difference check of that backward. Shared by the backend test files.
#![allow(dead_code)]

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

/// One test shape.
#[derive(Debug, Clone)]
pub struct Case {
    pub b: usize,
    pub h: usize,
    pub hkv: usize,
    pub l: usize,
    pub s: usize,
    pub d: usize,
    pub p: usize,
    /// 1 (shared prefix) or `b` (one per row).
    pub bp: usize,
    pub key_lengths: Option<Vec<usize>>,
    pub prefix_lengths: Option<Vec<usize>>,
    /// Sliding window (`PrefixAttention::with_window`).
    pub window: Option<usize>,
}

impl Case {
    pub fn new(b: usize, h: usize, hkv: usize, l: usize, d: usize, p: usize) -> Self {
        Self {
            b,
            h,
            hkv,
            l,
            s: l,
            d,
            p,
            bp: 1,
            key_lengths: None,
            prefix_lengths: None,
            window: None,
        }
    }
    pub fn window(mut self, w: usize) -> Self {
        self.window = Some(w);
        self
    }
    pub fn keys(mut self, s: usize) -> Self {
        self.s = s;
        self
    }
    pub fn key_lengths(mut self, lens: Vec<usize>) -> Self {
        self.key_lengths = Some(lens);
        self
    }
    pub fn per_row_prefix(mut self, lens: Vec<usize>) -> Self {
        self.bp = self.b;
        self.prefix_lengths = Some(lens);
        self
    }
    pub fn q_len(&self) -> usize {
        self.b * self.h * self.l * self.d
    }
    pub fn kv_len(&self) -> usize {
        self.b * self.hkv * self.s * self.d
    }
    pub fn p_len(&self) -> usize {
        self.bp * self.hkv * self.p * self.d
    }
    pub fn scale(&self) -> f64 {
        1.0 / (self.d as f64).sqrt()
    }
}

/// Inputs of one case, in f64, row-major.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub q: Vec<f64>,
    pub k: Vec<f64>,
    pub v: Vec<f64>,
    pub pk: Vec<f64>,
    pub pv: Vec<f64>,
}

/// The shared deterministic generator (SplitMix64), so the oracle needs no dependency.
pub use peft_testing::Rng;

impl Inputs {
    pub fn random(c: &Case, seed: u64) -> Self {
        let mut r = Rng::new(seed);
        Self {
            q: r.vec(c.q_len()),
            k: r.vec(c.kv_len()),
            v: r.vec(c.kv_len()),
            pk: r.vec(c.p_len()),
            pv: r.vec(c.p_len()),
        }
    }
}

/// Whether query `i` of row `bi` sees column `c` of `[prefix ; keys]`.
/// Whether query `i` of row `bi` sees column `col` (prefix slots first). With a window `w`, the
/// query sits at position `Pr + (S − L) + i` (`Pr` the row's prefix length), prefix slot `p` at
/// `p` and sequence key `j` at `Pr + j`; a key is visible while the distance is under `w`.
fn visible(c: &Case, bi: usize, i: usize, col: usize) -> bool {
    let plen = c.prefix_lengths.as_ref().map_or(c.p, |lens| lens[bi]);
    let query = plen + (c.s - c.l) + i;
    let near = |pos: usize| c.window.is_none_or(|w| query - pos < w);
    if col < c.p {
        col < plen && near(col)
    } else {
        let j = col - c.p;
        j <= i + (c.s - c.l)
            && c.key_lengths.as_ref().is_none_or(|lens| j < lens[bi])
            && near(plen + j)
    }
}

fn key_at<'a>(c: &Case, x: &'a Inputs, bi: usize, kv: usize, col: usize, value: bool) -> &'a [f64] {
    let d = c.d;
    if col < c.p {
        let pb = if c.bp == 1 { 0 } else { bi };
        let off = ((pb * c.hkv + kv) * c.p + col) * d;
        if value {
            &x.pv[off..off + d]
        } else {
            &x.pk[off..off + d]
        }
    } else {
        let off = ((bi * c.hkv + kv) * c.s + col - c.p) * d;
        if value {
            &x.v[off..off + d]
        } else {
            &x.k[off..off + d]
        }
    }
}

/// Output `[B,H,L,d]` and log-sum-exp `[B,H,L]` (NaN-free: a hidden row gives zeros and -inf).
pub fn forward(c: &Case, x: &Inputs) -> (Vec<f64>, Vec<f64>) {
    let (g, d, n) = (c.h / c.hkv, c.d, c.p + c.s);
    let mut out = vec![0.0; c.q_len()];
    let mut lse = vec![f64::NEG_INFINITY; c.b * c.h * c.l];
    for bi in 0..c.b {
        for hi in 0..c.h {
            for i in 0..c.l {
                let row = (bi * c.h + hi) * c.l + i;
                let q = &x.q[row * d..row * d + d];
                let scores: Vec<Option<f64>> = (0..n)
                    .map(|col| {
                        visible(c, bi, i, col).then(|| {
                            let k = key_at(c, x, bi, hi / g, col, false);
                            q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() * c.scale()
                        })
                    })
                    .collect();
                let m = scores
                    .iter()
                    .flatten()
                    .fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                if m == f64::NEG_INFINITY {
                    continue;
                }
                let z: f64 = scores.iter().flatten().map(|s| (s - m).exp()).sum();
                lse[row] = m + z.ln();
                for (col, s) in scores.iter().enumerate() {
                    if let Some(s) = s {
                        let p = (s - lse[row]).exp();
                        let v = key_at(c, x, bi, hi / g, col, true);
                        for t in 0..d {
                            out[row * d + t] += p * v[t];
                        }
                    }
                }
            }
        }
    }
    (out, lse)
}

/// Gradients of `sum(out ∘ dout)` with respect to every input.
pub fn backward(c: &Case, x: &Inputs, dout: &[f64]) -> Inputs {
    let (g, d, n) = (c.h / c.hkv, c.d, c.p + c.s);
    let (out, lse) = forward(c, x);
    let mut gr = Inputs {
        q: vec![0.0; x.q.len()],
        k: vec![0.0; x.k.len()],
        v: vec![0.0; x.v.len()],
        pk: vec![0.0; x.pk.len()],
        pv: vec![0.0; x.pv.len()],
    };
    for bi in 0..c.b {
        for hi in 0..c.h {
            let kv = hi / g;
            for i in 0..c.l {
                let row = (bi * c.h + hi) * c.l + i;
                let q = x.q[row * d..row * d + d].to_vec();
                let dq_row = &dout[row * d..row * d + d];
                let delta: f64 = dq_row
                    .iter()
                    .zip(&out[row * d..row * d + d])
                    .map(|(a, b)| a * b)
                    .sum();
                for col in 0..n {
                    if !visible(c, bi, i, col) {
                        continue;
                    }
                    let k = key_at(c, x, bi, kv, col, false).to_vec();
                    let v = key_at(c, x, bi, kv, col, true).to_vec();
                    let s = q.iter().zip(&k).map(|(a, b)| a * b).sum::<f64>() * c.scale();
                    let p = (s - lse[row]).exp();
                    let dp: f64 = dq_row.iter().zip(&v).map(|(a, b)| a * b).sum();
                    let ds = p * (dp - delta) * c.scale();
                    let (gk, gv, off) = if col < c.p {
                        let pb = if c.bp == 1 { 0 } else { bi };
                        (&mut gr.pk, &mut gr.pv, ((pb * c.hkv + kv) * c.p + col) * d)
                    } else {
                        (
                            &mut gr.k,
                            &mut gr.v,
                            ((bi * c.hkv + kv) * c.s + col - c.p) * d,
                        )
                    };
                    for t in 0..d {
                        gr.q[row * d + t] += ds * k[t];
                        gk[off + t] += ds * q[t];
                        gv[off + t] += p * dq_row[t];
                    }
                }
            }
        }
    }
    gr
}

/// Checks the analytic f64 backward against central differences on a few coordinates of each
/// input; returns the worst relative error (and fails on any NaN or infinity).
pub fn finite_difference_error(c: &Case, x: &Inputs, dout: &[f64]) -> f64 {
    let g = backward(c, x, dout);
    let loss = |y: &Inputs| {
        forward(c, y)
            .0
            .iter()
            .zip(dout)
            .map(|(a, b)| a * b)
            .sum::<f64>()
    };
    let eps = 1e-6;
    let mut worst: f64 = 0.0;
    type Field = fn(&mut Inputs) -> &mut Vec<f64>;
    let fields: [(Field, &Vec<f64>); 5] = [
        (|y| &mut y.q, &g.q),
        (|y| &mut y.k, &g.k),
        (|y| &mut y.v, &g.v),
        (|y| &mut y.pk, &g.pk),
        (|y| &mut y.pv, &g.pv),
    ];
    for (field, grad) in fields {
        let len = grad.len();
        let (mut numeric, mut analytic) = (Vec::new(), Vec::new());
        for idx in (0..len).step_by((len / 7).max(1)) {
            let mut plus = x.clone();
            field(&mut plus)[idx] += eps;
            let mut minus = x.clone();
            field(&mut minus)[idx] -= eps;
            numeric.push((loss(&plus) - loss(&minus)) / (2.0 * eps));
            analytic.push(grad[idx]);
        }
        // Finite values only (max skips NaN): the comparison below checks both sides.
        peft_testing::assert_finite(grad, "analytic gradient");
        let scale = grad.iter().fold(1e-12_f64, |a, b| a.max(b.abs()));
        worst = worst.max(peft_testing::max_abs_diff(&numeric, &analytic) / scale);
    }
    worst
}

/// Largest absolute difference; fails on any NaN or infinity on either side
/// (`peft_testing::max_abs_diff`).
pub use peft_testing::max_abs_diff;

/// Largest absolute difference relative to the reference's largest magnitude, floored at 0.01
/// so that a gradient that is exactly zero, such as dQ of a single visible key, is compared in
/// absolute terms instead of dividing rounding noise by zero. Fails on any NaN or infinity on
/// either side.
pub fn max_rel_diff(reference: &[f64], actual: &[f32]) -> f64 {
    peft_testing::max_rel_diff(reference, actual, 1e-2)
}

/// An f32 tensor of the given shape from f64 values.
pub fn tensor<B: Backend, const D: usize>(
    v: &[f64],
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    let data: Vec<f32> = v.iter().map(|x| *x as f32).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// An int tensor of per-row lengths.
pub fn lengths<B: Backend>(v: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let data: Vec<i64> = v.iter().map(|x| *x as i64).collect();
    Tensor::from_data(TensorData::new(data, [v.len()]), device)
}

/// The values of a tensor as f32.
pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 data")
}

use burn::backend::Autodiff;

/// f32 tolerance of the output against the f64 oracle (absolute).
pub const OUT_TOL: f64 = 1e-4;
/// f32 tolerance of every gradient, relative to that gradient's largest magnitude.
pub const GRAD_TOL: f64 = 1e-3;

/// The sweep of the issue: P ∈ {0, 1, 7, 20, 64}, L ∈ {1, 17, 113}, GQA ratios 1 and 3 and a
/// single key/value head, d ∈ {32, 64}; plus padded rows, a fully padded row, per-row prefixes
/// (alone and with key lengths) and a KV-cache shape (S > L).
pub fn sweep() -> Vec<Case> {
    let mut cases = Vec::new();
    for &p in &[0, 1, 7, 20, 64] {
        for &l in &[1, 17, 113] {
            for &(h, hkv) in &[(2, 2), (6, 2), (3, 1)] {
                for &d in &[32, 64] {
                    if l == 113 && (d == 64 || h == 6) {
                        continue; // keep the f64 oracle fast; large L is covered at d = 32
                    }
                    cases.push(Case::new(2, h, hkv, l, d, p));
                }
            }
        }
    }
    cases.push(Case::new(3, 6, 2, 17, 32, 7).key_lengths(vec![17, 5, 0]));
    cases.push(Case::new(3, 3, 1, 9, 32, 0).key_lengths(vec![9, 0, 4]));
    cases.push(Case::new(3, 6, 2, 11, 32, 8).per_row_prefix(vec![8, 3, 0]));
    // Both lengths at once: the kernels read the key lengths after the prefix lengths.
    cases.push(
        Case::new(3, 6, 2, 11, 32, 8)
            .per_row_prefix(vec![2, 8, 0])
            .key_lengths(vec![11, 4, 0]),
    );
    cases.push(Case::new(2, 6, 3, 4, 32, 5).keys(13));
    cases
}

/// Every `step`-th case of [`sweep`] from `skip` on, plus a padded and fully padded batch at
/// d = 32 and per-row prefixes at L = 113, d = 64: the cases the layout variants of the kernels
/// are checked on.
pub fn sweep_sample(skip: usize, step: usize) -> Vec<Case> {
    let mut cases: Vec<Case> = sweep().into_iter().skip(skip).step_by(step).collect();
    cases.push(Case::new(3, 6, 2, 17, 32, 7).key_lengths(vec![17, 5, 0]));
    cases.push(Case::new(2, 6, 2, 113, 64, 64).per_row_prefix(vec![64, 20]));
    cases
}

use peft_kernels::{
    AttentionPath, PathCounts, PrefixAttention, PrefixAttentionBackend, path_counts,
};

/// Errors of one backend run against the f64 oracle. A NaN or an infinity anywhere fails the
/// check that builds the report, before any report exists.
#[derive(Debug)]
pub struct Report {
    /// Max |out − ref|.
    pub out: f64,
    /// Worst gradient error relative to that gradient's largest magnitude, over dQ, dK, dV,
    /// dP_k, dP_v.
    pub grad: f64,
    /// The storage precision the run was checked at (its tolerances).
    pub precision: Precision,
    /// The prefix-attention calls the run computed, by path.
    pub ran: PathCounts,
}

impl Report {
    /// Within the precision's output and gradient tolerances.
    pub fn passes(&self) -> bool {
        self.out < self.precision.out_tol() && self.grad < self.precision.grad_tol()
    }
}

/// Asserts that `ran` is what backend `B` computes on `path` for `forwards` forwards and
/// `backwards` backwards: its fused kernels where it has them and the path asks for the op, the
/// reference implementation otherwise, and never the other one (a fused kernel that fell back to
/// the reference path fails here).
pub fn assert_ran<B: PrefixAttentionBackend>(
    ran: PathCounts,
    path: AttentionPath,
    forwards: u64,
    backwards: u64,
    what: &str,
) {
    let fused = path != AttentionPath::Unfused && B::has_fused_prefix_attention();
    let want = match (fused, path) {
        (true, _) => PathCounts {
            fused_forward: forwards,
            fused_backward: backwards,
            ..Default::default()
        },
        // The unfused composition is differentiated by Burn's autodiff graph: no backward op.
        (false, AttentionPath::Unfused) => PathCounts {
            reference_forward: forwards,
            ..Default::default()
        },
        (false, _) => PathCounts {
            reference_forward: forwards,
            reference_backward: backwards,
            ..Default::default()
        },
    };
    assert_eq!(
        ran, want,
        "{what}: {path:?} ran other implementations than expected"
    );
}

pub fn inputs<B: PrefixAttentionBackend>(
    c: &Case,
    x: &Inputs,
    dev: &B::Device,
) -> [Tensor<B, 4>; 5] {
    // Without a prefix the prefix tensors are never passed to the op; they get one zero slot
    // because CUDA cannot upload a zero-sized tensor (its strides are 0).
    let prefix = |data: &[f64]| {
        if c.p == 0 {
            Tensor::<B, 4>::zeros([c.bp, c.hkv, 1, c.d], dev)
        } else {
            tensor::<B, 4>(data, [c.bp, c.hkv, c.p, c.d], dev)
        }
    };
    [
        tensor::<B, 4>(&x.q, [c.b, c.h, c.l, c.d], dev),
        tensor::<B, 4>(&x.k, [c.b, c.hkv, c.s, c.d], dev),
        tensor::<B, 4>(&x.v, [c.b, c.hkv, c.s, c.d], dev),
        prefix(&x.pk),
        prefix(&x.pv),
    ]
}

pub fn op<B: PrefixAttentionBackend>(
    c: &Case,
    t: &[Tensor<B, 4>; 5],
    dev: &B::Device,
    path: AttentionPath,
) -> PrefixAttention<B> {
    let [q, k, v, pk, pv] = t.clone();
    let mut op = PrefixAttention::new(q, k, v).with_path(path);
    if c.p > 0 {
        op = op.with_prefix(pk, pv);
    }
    if let Some(lens) = &c.key_lengths {
        op = op.with_key_lengths(lengths::<B>(lens, dev));
    }
    if let Some(lens) = &c.prefix_lengths {
        op = op.with_prefix_lengths(lengths::<B>(lens, dev));
    }
    if let Some(w) = c.window {
        op = op.with_window(w);
    }
    op
}

/// Output of backend `B` on the given path, as f32.
/// Asserts that the call ran on `path`'s implementation ([`assert_ran`]).
pub fn run_forward<B: PrefixAttentionBackend>(
    c: &Case,
    x: &Inputs,
    dev: &B::Device,
    path: AttentionPath,
) -> Vec<f32> {
    let before = path_counts();
    let out = values(op::<B>(c, &inputs::<B>(c, x, dev), dev, path).forward());
    assert_ran::<B>(path_counts().since(before), path, 1, 0, &format!("{c:?}"));
    out
}

/// Runs forward and backward of backend `B` on `path` for the loss `Σ out ∘ dout`: the output,
/// and the gradients of the query, keys, values, prefix keys and prefix values (`None` for one
/// the graph did not reach), as f32. Asserts that the forward and the backward ran on `path`'s
/// implementation ([`assert_ran`]).
pub fn run_backward<B: PrefixAttentionBackend>(
    c: &Case,
    x: &Inputs,
    dout: &[f64],
    dev: &B::Device,
    path: AttentionPath,
) -> (Vec<f32>, [Option<Vec<f32>>; 5], PathCounts) {
    let before = path_counts();
    let tracked = inputs::<Autodiff<B>>(c, x, dev).map(|t| t.require_grad());
    let out = op::<Autodiff<B>>(c, &tracked, dev, path).forward();
    let dout_t = tensor::<Autodiff<B>, 4>(dout, [c.b, c.h, c.l, c.d], dev);
    let grads = out.clone().mul(dout_t).sum().backward();
    let out_v = values(out.inner());
    let grads = tracked.map(|t| t.grad(&grads).map(values));
    let ran = path_counts().since(before);
    assert_ran::<B>(ran, path, 1, 1, &format!("{c:?}"));
    (out_v, grads, ran)
}

/// Runs forward and backward of backend `B` on `path` and compares with the oracle (f32 inputs).
pub fn check<B: PrefixAttentionBackend>(
    c: &Case,
    seed: u64,
    dev: &B::Device,
    path: AttentionPath,
) -> Report {
    check_at::<B>(c, seed, dev, path, Precision::F32)
}

/// The storage precision of a backend's float tensors: the oracle sees the inputs and the output
/// gradient rounded to it (what the backend holds), and the tolerances allow for the outputs and
/// gradients being rounded to it once more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    /// `x` as the backend stores it.
    pub fn round(self, x: f64) -> f64 {
        match self {
            Precision::F32 => x as f32 as f64,
            Precision::F16 => burn::tensor::f16::from_f64(x).to_f64(),
            Precision::Bf16 => burn::tensor::bf16::from_f64(x).to_f64(),
        }
    }

    /// Output tolerance (absolute; outputs are averages of values in [-1, 1]): f32 as stated
    /// by the issue; f16 and bf16 twice their unit roundoff at 1 (2^-11 and 2^-8), the
    /// rounding of the output itself, the kernels computing in f32.
    pub fn out_tol(self) -> f64 {
        match self {
            Precision::F32 => OUT_TOL,
            Precision::F16 => 2.0 * 2f64.powi(-11),
            Precision::Bf16 => 2.0 * 2f64.powi(-8),
        }
    }

    /// Gradient tolerance relative to each gradient's largest magnitude, as [`Self::out_tol`].
    pub fn grad_tol(self) -> f64 {
        match self {
            Precision::F32 => GRAD_TOL,
            Precision::F16 => 2.0 * 2f64.powi(-11),
            Precision::Bf16 => 2.0 * 2f64.powi(-8),
        }
    }
}

/// [`check`] for a backend storing floats at `precision`.
pub fn check_at<B: PrefixAttentionBackend>(
    c: &Case,
    seed: u64,
    dev: &B::Device,
    path: AttentionPath,
    precision: Precision,
) -> Report {
    let round = |v: Vec<f64>| -> Vec<f64> { v.into_iter().map(|x| precision.round(x)).collect() };
    let x = Inputs::random(c, seed);
    let x = Inputs {
        q: round(x.q),
        k: round(x.k),
        v: round(x.v),
        pk: round(x.pk),
        pv: round(x.pv),
    };
    let dout = round(Rng::new(seed ^ 0xD0D0).vec(c.q_len()));
    let (ref_out, _) = forward(c, &x);
    let ref_grad = backward(c, &x, &dout);

    let (out_v, grads, ran) = run_backward::<B>(c, &x, &dout, dev, path);
    let out = peft_testing::compare(&ref_out, &out_v)
        .unwrap_or_else(|e| panic!("{c:?}, {path:?}, output: {e}"))
        .max_abs;
    let mut grad_err = 0.0f64;
    let refs = [
        &ref_grad.q,
        &ref_grad.k,
        &ref_grad.v,
        &ref_grad.pk,
        &ref_grad.pv,
    ];
    for (i, (g, r)) in grads.into_iter().zip(refs).enumerate() {
        if i >= 3 && c.p == 0 {
            continue;
        }
        let g = g.unwrap_or_else(|| vec![0.0; r.len()]);
        let err = peft_testing::compare(r, &g)
            .unwrap_or_else(|e| panic!("{c:?}, {path:?}, gradient {i}: {e}"))
            .relative(1e-2);
        grad_err = grad_err.max(err);
    }
    Report {
        out,
        grad: grad_err,
        precision,
        ran,
    }
}

/// Runs the fused path on a backend whose floats are f16 or bf16 (`precision`) over a part of
/// the sweep plus padded cases, and asserts that the kernels ran (they compute in f32 between
/// casts; [`check_at`] asserts the path of every case), that the output and the gradients come back in the backend's dtype, and that they
/// match the oracle within the precision's tolerances. One precision per process (see the
/// first assertion).
#[cfg(feature = "cube")]
pub fn assert_half_precision_matches_the_oracle<B: PrefixAttentionBackend>(precision: Precision) {
    use burn::tensor::DType;
    let dev = Default::default();
    let dtype = match precision {
        Precision::F16 => DType::F16,
        Precision::Bf16 => DType::BF16,
        Precision::F32 => DType::F32,
    };
    // Burn fixes a device's default float dtype at its first tensor, for the whole process:
    // a second precision in the same process would silently run in the first one's.
    let probe = burn::tensor::Tensor::<B, 1>::zeros([1], &dev).dtype();
    assert_eq!(
        probe, dtype,
        "{precision:?}: the device's float dtype is {probe:?}; run one precision per test binary"
    );
    let cases = sweep_sample(0, 4);
    let (mut worst_out, mut worst_grad) = (0.0f64, 0.0f64);
    for c in &cases {
        let r = check_at::<B>(c, 17, &dev, AttentionPath::Fused, precision);
        assert!(r.passes(), "{c:?}: {r:?}");
        (worst_out, worst_grad) = (worst_out.max(r.out), worst_grad.max(r.grad));
    }
    eprintln!(
        "{precision:?}: worst output error {worst_out:.2e} (tolerance {:.2e}), worst gradient \
         error {worst_grad:.2e} (tolerance {:.2e})",
        precision.out_tol(),
        precision.grad_tol()
    );
    // The output and the gradients are in the backend's dtype.
    let c = &cases[0];
    let tracked = inputs::<Autodiff<B>>(c, &Inputs::random(c, 1), &dev).map(|t| t.require_grad());
    let out = op::<Autodiff<B>>(c, &tracked, &dev, AttentionPath::Fused).forward();
    assert_eq!(out.dtype(), dtype);
    let grads = out.sum().backward();
    let dq = tracked[0].grad(&grads).expect("dQ");
    assert_eq!(dq.dtype(), dtype);
}

/// The fused-kernel test suite, instantiated once per CubeCL runtime: `$fused` is the
/// fusion-wrapped alias (`Wgpu`, `Cuda`), `$bare` the plain `CubeBackend`. Each test holds
/// [`shared`], so a binary may hold tests that change the settings as well.
#[macro_export]
macro_rules! fused_kernel_suite {
    ($fused:ty, $bare:ty) => {
        /// The kernels run on both backend types by default (`AttentionPath::Auto`), and a
        /// head dimension over their limit takes the reference path, counted as such.
        #[test]
        fn fused_kernels_are_used() {
            let _settings = shared();
            let dev = Default::default();
            let c = Case::new(2, 6, 2, 9, 32, 3);
            let x = Inputs::random(&c, 2);
            let dout = Rng::new(3).vec(c.q_len());
            for ran in [
                run_backward::<$fused>(&c, &x, &dout, &dev, AttentionPath::Auto).2,
                run_backward::<$bare>(&c, &x, &dout, &dev, AttentionPath::Auto).2,
            ] {
                assert_eq!((ran.fused_forward, ran.fused_backward), (1, 1), "{ran:?}");
                assert_eq!((ran.reference_forward, ran.reference_backward), (0, 0));
            }
            let wide = Case::new(1, 2, 1, 3, peft_kernels::cube::MAX_HEAD_DIM + 8, 2);
            let x = Inputs::random(&wide, 4);
            let before = peft_kernels::path_counts();
            let tracked = inputs::<burn::backend::Autodiff<$fused>>(&wide, &x, &dev)
                .map(|t| t.require_grad());
            let out =
                op::<burn::backend::Autodiff<$fused>>(&wide, &tracked, &dev, AttentionPath::Fused)
                    .forward();
            let grads = out.clone().sum().backward();
            peft_testing::assert_finite(&values(out.inner()), "output");
            peft_testing::assert_finite(&values(tracked[0].grad(&grads).expect("dQ")), "dQ");
            let ran = peft_kernels::path_counts().since(before);
            assert_eq!(
                ran,
                peft_kernels::PathCounts {
                    reference_forward: 1,
                    reference_backward: 1,
                    ..Default::default()
                },
                "d = {} is over the kernels' limit: the reference path must run",
                wide.d
            );
        }

        #[test]
        fn fused_kernels_match_the_oracle_on_the_sweep() {
            let _settings = shared();
            let dev = Default::default();
            for c in sweep() {
                let r = check::<$fused>(&c, 3, &dev, AttentionPath::Fused);
                assert!(r.passes(), "{c:?}: {r:?}");
            }
        }

        #[test]
        fn bare_cube_backend_matches_the_oracle() {
            let _settings = shared();
            let dev = Default::default();
            for c in [
                Case::new(2, 6, 2, 17, 32, 7).key_lengths(vec![17, 0]),
                Case::new(3, 6, 2, 11, 64, 8).per_row_prefix(vec![8, 3, 0]),
            ] {
                let r = check::<$bare>(&c, 4, &dev, AttentionPath::Fused);
                assert!(r.passes(), "{c:?}: {r:?}");
            }
        }

        #[test]
        fn fused_runs_are_bitwise_identical_and_p0_is_plain_causal() {
            let _settings = shared();
            let dev = Default::default();
            let c = Case::new(2, 6, 2, 17, 32, 7).key_lengths(vec![17, 9]);
            let x = Inputs::random(&c, 5);
            let a = run_forward::<$fused>(&c, &x, &dev, AttentionPath::Fused);
            let b = run_forward::<$fused>(&c, &x, &dev, AttentionPath::Fused);
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
            // With no prefix the oracle is plain causal attention. (Not compared with this
            // crate's unfused path: on an H100 that path was 3.6e-4 away from the kernels,
            // which matched this oracle; Burn's CUDA matmuls are likely TF32 there.)
            let c0 = Case::new(2, 6, 2, 17, 32, 0);
            let x0 = Inputs::random(&c0, 6);
            let fused = run_forward::<$fused>(&c0, &x0, &dev, AttentionPath::Fused);
            let (causal, _) = forward(&c0, &x0);
            let diff = max_abs_diff(&causal, &fused);
            assert!(
                diff < OUT_TOL,
                "P = 0 fused differs from plain causal attention by {diff}"
            );
        }
    };
}

/// What the device reserved for a fused forward and backward, against the unfused path on the
/// same shape: the unfused path's `[B, H, L, P + L]` score matrix shows in the device's memory
/// (so the measurement sees such a buffer), the fused path's growth stays under half of it.
///
/// `reserved` reads the bytes the device's memory pools hold (`MemoryUsage::bytes_reserved` of
/// the runtime's client): pages allocated, whether in use or free. Each path starts after
/// `memory_cleanup`, which returns every free page, so its growth is the pages it had to add:
/// at least the most it held at once, rounded up to pages. Hold [`exclusive`] (or run it in a
/// test binary of its own): another test's tensors would count.
#[cfg(feature = "cube")]
pub fn assert_fused_path_allocates_no_score_matrix<B: PrefixAttentionBackend>(
    reserved: impl Fn(&B::Device) -> u64,
) {
    let dev = Default::default();
    // A score matrix of 53 MB against 1.6 MB of queries (and of output and dQ).
    let c = Case::new(2, 6, 2, 1024, 32, 64).key_lengths(vec![1024, 500]);
    let x = Inputs::random(&c, 11);
    let dout = Rng::new(12).vec(c.q_len());
    let scores = (c.b * c.h * c.l * (c.p + c.l) * 4) as u64;
    let growth = |path| {
        B::memory_cleanup(&dev);
        let before = reserved(&dev);
        let (out, grads, _) = run_backward::<B>(&c, &x, &dout, &dev, path);
        let after = reserved(&dev);
        peft_testing::assert_finite(&out, "output");
        for g in grads.iter().flatten() {
            peft_testing::assert_finite(g, "gradient");
        }
        after.saturating_sub(before)
    };
    let fused = growth(AttentionPath::Fused);
    let unfused = growth(AttentionPath::Unfused);
    eprintln!(
        "device memory added: fused {fused} bytes, unfused {unfused} bytes; score matrix {scores} bytes"
    );
    assert!(
        unfused >= scores,
        "the unfused path added {unfused} bytes, less than its {scores}-byte score matrix: \
         the measurement does not see it"
    );
    // The pools reserve whole pages (16 MiB on lavapipe): the fused path's own buffers (the
    // output, dQ, the per-head dK/dV partials, 1.6 MB each) fit in one, a score matrix in
    // none.
    assert!(
        fused * 2 < scores,
        "the fused path added {fused} bytes of device memory; the score matrix is {scores}"
    );
}

/// The gradients of backend `B`'s fused path for the loss `Σ out ∘ dout`, as f32: query,
/// keys, values, prefix keys, prefix values (every input is tracked).
pub fn run_grads<B: PrefixAttentionBackend>(
    c: &Case,
    x: &Inputs,
    dout: &[f64],
    dev: &B::Device,
) -> [Vec<f32>; 5] {
    run_backward::<B>(c, x, dout, dev, AttentionPath::Fused)
        .1
        .map(|g| g.expect("every input is tracked"))
}

/// Asserts that `a` and `b` differ in at least one bit (the switch between two kernels that sum
/// in different orders took effect) and that `b` is `again` bit for bit (two runs agree).
fn assert_other_bits_and_deterministic(a: &[f32], b: &[f32], again: &[f32], what: &str) {
    assert!(
        a.iter().zip(b).any(|(x, y)| x.to_bits() != y.to_bits()),
        "{what}: the tiled kernel gave the row kernel's bits: it was not taken"
    );
    assert!(
        b.iter().zip(again).all(|(x, y)| x.to_bits() == y.to_bits()),
        "{what}: two runs differ"
    );
}

/// The register-tiled forward, dQ and dK/dV kernels (`set_kernel_shape(pass,
/// Some(KernelShape::Tiles))`) on backend `B` against the f64 oracle, forward and gradients, on
/// the whole sweep; and that each switch takes effect: a tiled kernel sums in another order than
/// the row kernel, so on a case it takes its results differ in their last bits while both match
/// the oracle, and two runs agree bit for bit. The device's planes must be at least 8 wide
/// (narrower ones take the row kernels). Hold [`exclusive`] (or run it in a test binary of its
/// own): the settings are process-wide.
pub fn check_tiled_kernels<B: PrefixAttentionBackend>() {
    use peft_kernels::{KernelPass, KernelShape, set_kernel_shape};
    let dev = Default::default();
    // d = 64, prefix, GQA, a second head in the last cube of 64 rows.
    let c = Case::new(2, 6, 2, 113, 64, 20);
    let x = Inputs::random(&c, 21);
    set_kernel_shape(KernelPass::Forward, Some(KernelShape::Rows));
    let rows = run_forward::<B>(&c, &x, &dev, AttentionPath::Fused);
    set_kernel_shape(KernelPass::Forward, Some(KernelShape::Tiles));
    let tiles = run_forward::<B>(&c, &x, &dev, AttentionPath::Fused);
    let again = run_forward::<B>(&c, &x, &dev, AttentionPath::Fused);
    let (oracle, _) = forward(&c, &x);
    assert!(max_abs_diff(&oracle, &rows) < OUT_TOL);
    assert!(max_abs_diff(&oracle, &tiles) < OUT_TOL);
    assert_other_bits_and_deterministic(&rows, &tiles, &again, "forward");

    // Each backward kernel on its own, after the row forward (the same output and log-sum-exp
    // for both of its shapes) and with the other backward kernel by rows: dQ (the query's
    // gradient), then dK/dV (the keys', values' and prefix's).
    set_kernel_shape(KernelPass::Forward, Some(KernelShape::Rows));
    let dout = Rng::new(22).vec(c.q_len());
    let oracle = backward(&c, &x, &dout);
    let oracle = [oracle.q, oracle.k, oracle.v, oracle.pk, oracle.pv];
    for (pass, range) in [(KernelPass::Dq, 0..1), (KernelPass::Dkdv, 1..5)] {
        let grads = |shape| {
            set_kernel_shape(pass, Some(shape));
            run_grads::<B>(&c, &x, &dout, &dev)[range.clone()].concat()
        };
        let (rows, tiles, again) = (
            grads(KernelShape::Rows),
            grads(KernelShape::Tiles),
            grads(KernelShape::Tiles),
        );
        let mut at = 0;
        for want in &oracle[range.clone()] {
            let span = at..at + want.len();
            assert!(max_rel_diff(want, &rows[span.clone()]) < GRAD_TOL);
            let err = max_rel_diff(want, &tiles[span]);
            assert!(err < GRAD_TOL, "tiled {}: error {err}", pass.name());
            at += want.len();
        }
        assert_other_bits_and_deterministic(&rows, &tiles, &again, pass.name());
        set_kernel_shape(pass, Some(KernelShape::Rows));
    }

    // All three tiled: P ∈ {0, 1, 7, 20, 64}, L ∈ {1, 17, 113}, GQA 1 and 3, Hkv = 1,
    // d ∈ {32, 64} (dQ and dK/dV in cubes of 64 rows or columns at d = 32 and of 32 at d = 64
    // on lavapipe), padded and fully padded rows, per-row prefixes, more keys than queries
    // (head dimensions that are not multiples of 32 take the row kernels).
    for pass in KernelPass::ALL {
        set_kernel_shape(pass, Some(KernelShape::Tiles));
    }
    for c in sweep() {
        let r = check::<B>(&c, 3, &dev, AttentionPath::Fused);
        assert!(r.passes(), "tiled kernels, {c:?}: {r:?}");
    }
    // Rows of several heads in one cube and a partial last cube: g·L = 3·50 rows in cubes of 64
    // (and of 32 where 64 do not fit); 9 + 50 columns in a cube of 64 (or two of 32).
    for d in [32, 64] {
        let c = Case::new(2, 3, 1, 50, d, 9).key_lengths(vec![50, 23]);
        let r = check::<B>(&c, 8, &dev, AttentionPath::Fused);
        assert!(r.passes(), "tiled kernels, {c:?}: {r:?}");
    }
    for pass in KernelPass::ALL {
        set_kernel_shape(pass, None);
    }
}

/// The lock behind [`exclusive`] and [`shared`].
static SETTINGS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held by a test that changes the kernels' process-wide settings (lanes, rows, step block,
/// kernel shapes) or reads the process-wide allocation record: no other test of the
/// binary runs while it is held, and every setting is back at its default when it is dropped (a
/// panic included).
pub struct Exclusive(std::sync::RwLockWriteGuard<'static, ()>);

impl Drop for Exclusive {
    fn drop(&mut self) {
        // The guard (the field) is released after this body: nobody sees the settings half
        // reset.
        peft_kernels::set_lanes_per_row(None).expect("None is accepted");
        peft_kernels::set_rows_per_unit(None).expect("None is accepted");
        peft_kernels::set_step_block(None).expect("None is accepted");
        for pass in peft_kernels::KernelPass::ALL {
            peft_kernels::set_kernel_shape(pass, None);
        }
    }
}

/// Waits until no other test holds the settings, then holds them (see [`Exclusive`]).
pub fn exclusive() -> Exclusive {
    Exclusive(
        SETTINGS
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// Held by a test that runs the kernels with the default settings: such tests run side by side,
/// never beside an [`exclusive`] one.
pub fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    SETTINGS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether this process is test `name`'s own. When it is not, runs the test in a child process
/// of this test binary, with `envs` set and `PEFT_TEST_CHILD=name`, asserts that it ran and
/// passed, prints its output, and returns false; in that child it returns true and the caller
/// runs the test's body.
/// For tests that need a process to themselves: the kernels' environment variables, which a
/// process cannot safely set once other threads (Mesa's included) may read its environment, and
/// a device's float dtype, which Burn fixes for the whole process at its first tensor.
pub fn in_own_process(name: &str, envs: &[(&str, &str)]) -> bool {
    if std::env::var("PEFT_TEST_CHILD").as_deref() == Ok(name) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("PEFT_TEST_CHILD", name)
        .envs(envs.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("could not run {} for {name}: {e}", exe.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("test result: ok. 1 passed"),
        "{name} in a child process ({}):\n{text}",
        out.status
    );
    // What the child printed, shown as the test's own output (with `--nocapture`).
    eprint!("{text}");
    false
}
