//! RMSNorm, SwiGLU and the rotary embedding: Flex's host kernels and the compositions of tensor
//! ops (every other backend) against f64 references, forward and input gradients, on odd shapes (one column,
//! rows shorter and longer than a vector, SmolLM2's 576 and 1536; heads of 2 to 64, shared and
//! per-row rotary tables; sizes on the calling thread and on the Rayon threads), each asserting
//! which path ran.
#![cfg(feature = "flex")]

use burn::{
    backend::{Autodiff, Flex},
    tensor::{Tensor, TensorData},
};
use peft_kernels::{host_layer_op_calls, layer_ops::reference, rms_norm, swiglu};
use peft_testing::{Rng, assert_close};

type Ad = Autodiff<Flex>;

/// Prints each comparison's largest difference (what the bounds below were set from).
fn worst(diff: f64) {
    eprintln!("max |Δ| {diff:.1e}");
}

/// Up to 19 K elements the host kernels run on the calling thread; 61 K go to the Rayon threads.
const SHAPES: [[usize; 2]; 6] = [[1, 1], [3, 7], [5, 17], [33, 576], [9, 1536], [40, 1536]];

fn tensor<const D: usize>(v: &[f32], shape: [usize; D]) -> Tensor<Ad, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

fn values<const D: usize>(t: Tensor<Ad, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32 values")
}

/// f64 RMSNorm of each row and the input gradient for the loss `Σ y∘dy`.
fn rms_reference(x: &[f32], w: &[f32], eps: f64, dy: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let n = w.len();
    let (mut y, mut dx) = (Vec::new(), Vec::new());
    for (x, dy) in x.chunks(n).zip(dy.chunks(n)) {
        let x: Vec<f64> = x.iter().map(|&v| v.into()).collect();
        let ms = x.iter().map(|v| v * v).sum::<f64>() / n as f64;
        let r = 1.0 / (ms + eps).sqrt();
        let g: Vec<f64> = dy
            .iter()
            .zip(w)
            .map(|(&d, &w)| f64::from(d) * f64::from(w))
            .collect();
        let m = g.iter().zip(&x).map(|(g, x)| g * x).sum::<f64>() / n as f64;
        y.extend(x.iter().zip(w).map(|(x, &w)| x * r * f64::from(w)));
        dx.extend(g.iter().zip(&x).map(|(g, x)| r * g - x * r * r * r * m));
    }
    (y, dx)
}

/// f64 `silu(g)·u` and its gradients for the loss `Σ y∘dy`.
fn swiglu_reference(g: &[f32], u: &[f32], dy: &[f32]) -> [Vec<f64>; 3] {
    let mut out = [Vec::new(), Vec::new(), Vec::new()];
    for ((&g, &u), &dy) in g.iter().zip(u).zip(dy) {
        let (g, u, dy) = (f64::from(g), f64::from(u), f64::from(dy));
        let s = 1.0 / (1.0 + (-g).exp());
        out[0].push(g * s * u);
        out[1].push(dy * u * s * (1.0 + g * (1.0 - s)));
        out[2].push(dy * g * s);
    }
    out
}

/// Runs RMSNorm forward and backward, the weight tracked or not; returns the output, the input
/// gradient and the host calls counted.
fn run_rms(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    shape: [usize; 2],
    track_weight: bool,
) -> [Vec<f32>; 3] {
    let before = host_layer_op_calls();
    let xt = tensor(x, shape).require_grad();
    let mut wt = tensor(w, [shape[1]]);
    if track_weight {
        wt = wt.require_grad();
    }
    let y = rms_norm(xt.clone(), wt.clone(), 1e-5);
    let grads = (y.clone() * tensor(dy, shape)).sum().backward();
    let dx = xt.grad(&grads).expect("dx");
    if track_weight {
        let dw = wt
            .grad(&grads)
            .expect("a tracked weight receives a gradient");
        peft_testing::assert_finite(&dw.into_data().to_vec::<f32>().unwrap(), "dw");
    }
    let calls = host_layer_op_calls() - before;
    [
        values(y),
        dx.into_data().to_vec().unwrap(),
        vec![calls as f32],
    ]
}

/// Largest absolute differences achieved over the shapes (Intel Xeon; inputs in [-1, 1), gates
/// in [-6, 6)): RMSNorm output 2.6e-7 and dx 3.1e-7, SwiGLU output 4.9e-7 and gradients 8.0e-7,
/// host kernels and compositions alike. The bounds are about 4× those.
#[test]
fn rms_norm_matches_the_f64_reference_on_the_host_path() {
    let mut rng = Rng::new(3);
    for shape in SHAPES {
        let len = shape[0] * shape[1];
        let (x, w, dy) = (
            rng.f32s(len, 0.0),
            rng.f32s(shape[1], 0.0),
            rng.f32s(len, 0.0),
        );
        let (want_y, want_dx) = rms_reference(&x, &w, 1e-5, &dy);
        let [y, dx, calls] = run_rms(&x, &w, &dy, shape, false);
        assert_eq!(
            calls,
            [2.0],
            "{shape:?}: forward and backward on the host kernels"
        );
        worst(assert_close(
            &want_y,
            &y,
            1e-6,
            &format!("{shape:?} output"),
        ));
        worst(assert_close(
            &want_dx,
            &dx,
            1.2e-6,
            &format!("{shape:?} dx"),
        ));
        // A weight that needs a gradient takes the composition, which gives it one.
        let [y, dx, calls] = run_rms(&x, &w, &dy, shape, true);
        assert_eq!(
            calls,
            [0.0],
            "{shape:?}: a tracked weight takes the composition"
        );
        worst(assert_close(
            &want_y,
            &y,
            1e-6,
            &format!("{shape:?} composed output"),
        ));
        worst(assert_close(
            &want_dx,
            &dx,
            1.2e-6,
            &format!("{shape:?} composed dx"),
        ));
    }
}

#[test]
fn swiglu_matches_the_f64_reference_on_the_host_path() {
    let mut rng = Rng::new(4);
    for shape in SHAPES {
        let len = shape[0] * shape[1];
        let scale = |v: Vec<f32>| v.into_iter().map(|x| 6.0 * x).collect::<Vec<_>>();
        let (g, u, dy) = (
            scale(rng.f32s(len, 0.0)),
            rng.f32s(len, 0.0),
            rng.f32s(len, 0.0),
        );
        let [want_y, want_dg, want_du] = swiglu_reference(&g, &u, &dy);
        let before = host_layer_op_calls();
        let (gt, ut) = (
            tensor(&g, shape).require_grad(),
            tensor(&u, shape).require_grad(),
        );
        let y = swiglu(gt.clone(), ut.clone());
        let grads = (y.clone() * tensor(&dy, shape)).sum().backward();
        assert_eq!(host_layer_op_calls() - before, 2, "{shape:?}");
        worst(assert_close(
            &want_y,
            &values(y),
            2e-6,
            &format!("{shape:?} output"),
        ));
        let dg = gt
            .grad(&grads)
            .expect("d_gate")
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let du = ut
            .grad(&grads)
            .expect("d_up")
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        worst(assert_close(
            &want_dg,
            &dg,
            3e-6,
            &format!("{shape:?} d_gate"),
        ));
        worst(assert_close(
            &want_du,
            &du,
            3e-6,
            &format!("{shape:?} d_up"),
        ));
    }
}

/// The compositions (what every backend without host kernels runs) against the same
/// references, through their analytic backward functions.
#[test]
fn the_compositions_match_the_f64_references() {
    let mut rng = Rng::new(5);
    let shape = [5, 17];
    let dev = Default::default();
    let t = |v: &[f32], s: [usize; 2]| {
        Tensor::<Flex, 2>::from_data(TensorData::new(v.to_vec(), s), &dev)
    };
    let vals = |t: Tensor<Flex, 2>| t.into_data().to_vec::<f32>().unwrap();
    let (x, w, dy) = (rng.f32s(85, 0.0), rng.f32s(17, 0.0), rng.f32s(85, 0.0));
    let (want_y, want_dx) = rms_reference(&x, &w, 1e-5, &dy);
    let wt = Tensor::<Flex, 1>::from_data(TensorData::new(w.clone(), [17]), &dev);
    let before = host_layer_op_calls();
    let y = reference::rms_norm(t(&x, shape), wt.clone(), 1e-5);
    let dx = reference::rms_norm_backward(t(&x, shape), wt, 1e-5, t(&dy, shape));
    worst(assert_close(&want_y, &vals(y), 1e-6, "composed RMSNorm"));
    worst(assert_close(
        &want_dx,
        &vals(dx),
        1.2e-6,
        "composed RMSNorm dx",
    ));
    let g: Vec<f32> = rng.f32s(85, 0.0).into_iter().map(|v| 6.0 * v).collect();
    let [want_y, want_dg, want_du] = swiglu_reference(&g, &x, &dy);
    let y = reference::swiglu(t(&g, shape), t(&x, shape));
    let (dg, du) = reference::swiglu_backward(t(&g, shape), t(&x, shape), t(&dy, shape));
    worst(assert_close(&want_y, &vals(y), 2e-6, "composed SwiGLU"));
    worst(assert_close(&want_dg, &vals(dg), 3e-6, "composed d_gate"));
    worst(assert_close(&want_du, &vals(du), 3e-6, "composed d_up"));
    assert_eq!(
        host_layer_op_calls(),
        before,
        "the compositions ran no host kernel"
    );
}

/// f64 rotary embedding per head of `d` and the input gradient for the loss `Σ y∘dy`; the
/// tables have one row (shared) or one per row.
fn rotary_reference(
    x: &[f32],
    c: &[f32],
    s: &[f32],
    n: usize,
    d: usize,
    dy: &[f32],
) -> [Vec<f64>; 2] {
    let half = d / 2;
    let (mut y, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    for i in 0..x.len() {
        let col = i % n;
        let t = if c.len() == n { col } else { i };
        let j = col % d;
        let f = |v: &[f32], k: usize| f64::from(v[k]);
        // rotate_half(x)[j] = −x[j + half] for j < half, x[j − half] otherwise.
        let (partner, sign) = if j < half {
            (i + half, -1.0)
        } else {
            (i - half, 1.0)
        };
        y[i] = f(x, i) * f(c, t) + sign * f(x, partner) * f(s, t);
        // ∂y[i]/∂x[i] = c[i]; x[i] also enters y[partner] with sign −sign times s[partner].
        let tp = if c.len() == n { partner % n } else { partner };
        dx[i] = f(dy, i) * f(c, t) - sign * f(dy, partner) * f(s, tp);
    }
    [y, dx]
}

/// Largest absolute differences achieved: 1.1e-7 (outputs and dx, host and composed); bound
/// about 4× that.
#[test]
fn rotary_matches_the_f64_reference_on_the_host_path_and_the_composition() {
    let mut rng = Rng::new(6);
    let dev = Default::default();
    // (rows, heads, head_dim, per-row tables)
    for (rows, heads, d, per_row) in [
        (1, 1, 2, false),
        (3, 2, 8, true),
        (4, 9, 64, false),
        (2, 3, 64, true),
    ] {
        let n = heads * d;
        let table_rows = if per_row { rows } else { 1 };
        let x = rng.f32s(rows * n, 0.0);
        let dy = rng.f32s(rows * n, 0.0);
        let c = rng.f32s(table_rows * n, 0.0);
        let s = rng.f32s(table_rows * n, 0.0);
        let [want_y, want_dx] = rotary_reference(&x, &c, &s, n, d, &dy);
        let what = format!("rows {rows}, heads {heads}, d {d}, per-row tables {per_row}");
        let before = host_layer_op_calls();
        let xt = tensor(&x, [rows, n]).require_grad();
        let y = peft_kernels::layer_ops::rotary(
            xt.clone(),
            tensor(&c, [table_rows, n]),
            tensor(&s, [table_rows, n]),
            d,
        );
        let grads = (y.clone() * tensor(&dy, [rows, n])).sum().backward();
        assert_eq!(host_layer_op_calls() - before, 2, "{what}");
        worst(assert_close(
            &want_y,
            &values(y),
            1e-6,
            &format!("{what} output"),
        ));
        let dx = xt
            .grad(&grads)
            .expect("dx")
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        worst(assert_close(&want_dx, &dx, 4e-7, &format!("{what} dx")));
        // The composition, through its analytic backward.
        let t = |v: &[f32], r: usize| {
            Tensor::<Flex, 2>::from_data(TensorData::new(v.to_vec(), [r, n]), &dev)
        };
        let y = reference::rotary(t(&x, rows), t(&c, table_rows), t(&s, table_rows), d);
        let dx = reference::rotary_backward(t(&dy, rows), t(&c, table_rows), t(&s, table_rows), d);
        worst(assert_close(
            &want_y,
            &y.into_data().to_vec::<f32>().unwrap(),
            1e-6,
            &format!("{what} composed"),
        ));
        worst(assert_close(
            &want_dx,
            &dx.into_data().to_vec::<f32>().unwrap(),
            1e-6,
            &format!("{what} composed dx"),
        ));
    }
}
