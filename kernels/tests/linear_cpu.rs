//! The CPU bf16 products (`peft_kernels::linear::cpu`) against an f64 reference: every kernel
//! this machine runs, and the portable one, on odd shapes (sizes that are not multiples of the
//! 16-column panels, the 32-element contraction blocks or the 32- and 8-row blocks; `k = 1`) and
//! on SmolLM2-135M's shapes.
//!
//! Bounds, from bf16 rounding (unit roundoff `u = 2⁻⁸`) and f32 summation (`2⁻²⁴`), per output
//! element with `S = Σₖ |xₖ|·|wₖ|`:
//! * against the product of the bf16-rounded inputs in f64 (the kernels multiply those
//!   exactly): `|Δ| ≤ (k + 2)·2⁻²⁴·S` — only the order of the f32 sums differs;
//! * against the product of the unrounded inputs: `|Δ| ≤ (2·2⁻⁸ + 2⁻¹⁶ + (k + 2)·2⁻²⁴)·S`.
//!
//! Which kernel this machine must have is read from `/proc/cpuinfo` independently of the
//! crate's own detection: a CPU whose flags list AMX (or AVX512-BF16) fails the test if the
//! kernel is not available, so a broken probe cannot fall back to a slower path unnoticed.

use peft_kernels::linear::cpu::{
    CpuKernel, PackedWeight, bf16_bits, bf16_value, kernel_calls, portable_matvec_calls,
};
use peft_testing::{Rng, assert_finite, check_finite};

/// Inputs in [-1, 1), away from zero enough that no product is an f32 subnormal (the bf16
/// instructions flush those).
fn inputs(rng: &mut Rng, n: usize) -> Vec<f32> {
    rng.f32s(n, 1e-3)
}

fn rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16_value(bf16_bits(x))).collect()
}

/// Worst `|Δ| / bound` over the outputs of `kernel` on `m × k` times `[n, k]ᵀ`, against the
/// rounded-input and the unrounded-input references; asserts both are at most 1 and that the
/// product ran on `kernel` (the portable one: as matrix-vector products on the bf16 rows for at
/// most 8 rows, else by `gemm`).
fn check(kernel: CpuKernel, m: usize, n: usize, k: usize, seed: u64) -> (f64, f64) {
    let mut rng = Rng::new(seed);
    let (x, w) = (inputs(&mut rng, m * k), inputs(&mut rng, n * k));
    let packed = PackedWeight::pack(&w, n, k, kernel).expect("available");
    let (before, matvecs) = (kernel_calls(), portable_matvec_calls());
    let got = packed.matmul_wt(&x, m);
    let after = kernel_calls();
    let few_rows = kernel == CpuKernel::Portable && m <= 8;
    assert_eq!(
        portable_matvec_calls() - matvecs,
        u64::from(few_rows),
        "{kernel} {m}×{n}×{k}: matrix-vector path"
    );
    let ran: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let mut want = [0u64; 3];
    want[CpuKernel::ALL.iter().position(|&c| c == kernel).unwrap()] = 1;
    assert_eq!(ran, want, "{kernel}: other kernels ran");
    assert_eq!(got.len(), m * n);
    assert_finite(&got, &format!("{kernel} {m}×{n}×{k}"));
    let (xr, wr) = (rounded(&x), rounded(&w));
    let (mut worst_rounded, mut worst_exact) = (0.0f64, 0.0f64);
    for i in 0..m {
        for j in 0..n {
            let (mut exact, mut of_rounded, mut s) = (0.0f64, 0.0f64, 0.0f64);
            for kk in 0..k {
                let (a, b) = (f64::from(x[i * k + kk]), f64::from(w[j * k + kk]));
                let (ar, br) = (f64::from(xr[i * k + kk]), f64::from(wr[j * k + kk]));
                exact += a * b;
                of_rounded += ar * br;
                s += (a * b).abs();
            }
            let v = f64::from(got[i * n + j]);
            let acc = (k as f64 + 2.0) * 2f64.powi(-24);
            let r = (v - of_rounded).abs() / (acc * s);
            let e = (v - exact).abs() / ((2.0 * 2f64.powi(-8) + 2f64.powi(-16) + acc) * s);
            assert!(
                r <= 1.0 && e <= 1.0,
                "{kernel} {m}×{n}×{k} at ({i}, {j}): {v} against {of_rounded} (rounded inputs, \
                 {r:.3} of the bound) and {exact} ({e:.3} of the bound)"
            );
            (worst_rounded, worst_exact) = (worst_rounded.max(r), worst_exact.max(e));
        }
    }
    (worst_rounded, worst_exact)
}

/// The kernels this machine must run, from /proc/cpuinfo's flags (Linux), besides the portable.
fn required() -> Vec<CpuKernel> {
    let flags: Vec<String> = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("flags"))
                .map(|l| l.split_whitespace().map(str::to_owned).collect())
        })
        .unwrap_or_default();
    let has = |f: &str| flags.iter().any(|x| x == f);
    let mut v = vec![CpuKernel::Portable];
    if has("avx512f") && has("avx512_bf16") {
        v.push(CpuKernel::Avx512Bf16);
    }
    if has("amx_tile") && has("amx_bf16") {
        v.push(CpuKernel::Amx);
    }
    v
}

const ODD_SHAPES: [(usize, usize, usize); 9] = [
    (1, 1, 1),
    (3, 5, 1),
    (2, 17, 2),
    (17, 33, 31),
    (33, 47, 65),
    (31, 16, 32),
    (40, 31, 97),
    (64, 64, 64),
    (9, 50, 33),
];

/// SmolLM2-135M's frozen products `(n, k)` forward (q/o, k/v, gate/up, down) and their backward
/// `dx = dy·W` (the same shapes transposed), at 64 rows.
const SMOLLM2: [(usize, usize); 6] = [
    (576, 576),
    (192, 576),
    (1536, 576),
    (576, 1536),
    (576, 192),
    (576, 1536),
];

#[test]
fn every_available_kernel_matches_the_f64_reference() {
    let required = required();
    let mut ran = Vec::new();
    for kernel in CpuKernel::ALL {
        if !kernel.is_available() {
            assert!(
                !required.contains(&kernel),
                "this CPU lists the flags of the {kernel} kernel, but it is not available"
            );
            eprintln!("{kernel}: not available on this CPU (its flags are not listed)");
            continue;
        }
        let mut worst = (0.0f64, 0.0f64);
        for (i, &(m, n, k)) in ODD_SHAPES.iter().enumerate() {
            let w = check(kernel, m, n, k, 100 + i as u64);
            worst = (worst.0.max(w.0), worst.1.max(w.1));
        }
        for (i, &(n, k)) in SMOLLM2.iter().enumerate() {
            let w = check(kernel, 64, n, k, 200 + i as u64);
            worst = (worst.0.max(w.0), worst.1.max(w.1));
        }
        eprintln!(
            "{kernel}: worst error {:.3} of the rounded-input bound, {:.3} of the bf16 bound",
            worst.0, worst.1
        );
        ran.push(kernel);
    }
    for kernel in required {
        assert!(ran.contains(&kernel), "{kernel} did not run");
    }
}

/// The LM head's shape (49 152 × 576) at a few rows, and a row count that leaves a partial
/// block on every kernel.
#[test]
fn lm_head_shape_matches_the_f64_reference() {
    for kernel in CpuKernel::ALL.into_iter().filter(|k| k.is_available()) {
        check(kernel, 3, 49_152, 576, 7);
        check(kernel, 45, 1_000, 576, 8);
    }
}

/// A NaN in the input comes out as NaN in its row (never hidden), on every kernel.
#[test]
fn nan_in_the_input_reaches_the_output() {
    for kernel in CpuKernel::ALL.into_iter().filter(|k| k.is_available()) {
        let (m, n, k) = (3, 20, 40);
        let mut x = inputs(&mut Rng::new(1), m * k);
        x[k + 5] = f32::NAN;
        let w = inputs(&mut Rng::new(2), n * k);
        let y = PackedWeight::pack(&w, n, k, kernel)
            .unwrap()
            .matmul_wt(&x, m);
        assert!(check_finite(&y[..n], "row 0").is_ok(), "{kernel}");
        assert!(
            y[n..2 * n].iter().all(|v| v.is_nan()),
            "{kernel}: {:?}",
            &y[n..2 * n]
        );
        assert!(check_finite(&y[2 * n..], "row 2").is_ok(), "{kernel}");
    }
}

#[test]
fn bf16_rounding_is_to_nearest_even() {
    for v in [
        1.0f32,
        -2.5,
        3.140625 + 2f32.powi(-12),
        1e-20,
        65504.0,
        f32::MAX,
        f32::MIN_POSITIVE,
        0.0,
        -0.0,
    ] {
        assert_eq!(bf16_bits(v), half::bf16::from_f32(v).to_bits(), "{v}");
    }
    // Ties: 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷ and goes to the even 1.
    assert_eq!(bf16_value(bf16_bits(1.0 + 2f32.powi(-8))), 1.0);
    assert_eq!(
        bf16_value(bf16_bits(1.0 + 3.0 * 2f32.powi(-8))),
        1.0 + 2f32.powi(-6)
    );
    assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
    assert_eq!(bf16_value(bf16_bits(f32::INFINITY)), f32::INFINITY);
}

/// `PackedWeight::unpack` gives the bf16-rounded values, and `transposed` (how the backward's
/// `Wᵀ` is packed, on the first backward product) is bit for bit the packing of the transposed
/// values: its products equal those of a weight packed from `Wᵀ` directly (bit for bit on the
/// panel kernels; on the portable one, whose `Wᵀ` shares `W`'s rows and multiplies them with
/// `gemm` where a direct packing of few rows takes the matrix-vector path, within the bound of
/// the order of f32 sums).
#[test]
fn transposed_packing_equals_packing_the_transpose() {
    for kernel in CpuKernel::ALL.into_iter().filter(|k| k.is_available()) {
        for (seed, &(m, n, k)) in ODD_SHAPES.iter().enumerate() {
            let mut rng = Rng::new(500 + seed as u64);
            let w = inputs(&mut rng, n * k);
            let packed = PackedWeight::pack(&w, n, k, kernel).expect("available");
            let unpacked = packed.unpack();
            assert_eq!(
                unpacked.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                rounded(&w).iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{kernel} {n}×{k}: unpack"
            );
            let mut wt = vec![0.0f32; n * k];
            for r in 0..n {
                for c in 0..k {
                    wt[c * n + r] = w[r * k + c];
                }
            }
            let direct = PackedWeight::pack(&wt, k, n, kernel).expect("available");
            let derived = packed.transposed();
            assert_eq!((derived.outputs(), derived.inputs()), (k, n));
            assert_eq!(derived.kernel(), kernel);
            assert_eq!(
                derived
                    .unpack()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
                rounded(&wt).iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{kernel} {n}×{k}: unpack of the transposed packing"
            );
            let dy = inputs(&mut rng, m * n);
            let (a, b) = (direct.matmul_wt(&dy, m), derived.matmul_wt(&dy, m));
            assert_finite(&a, "direct");
            assert_finite(&b, "derived");
            if kernel != CpuKernel::Portable {
                assert_eq!(
                    a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{kernel} {m}×{n}×{k}: products with the transposed packing"
                );
                continue;
            }
            assert_eq!(derived.bytes(), 0, "the portable Wᵀ shares W's rows");
            let dyr = rounded(&dy);
            let wtr = rounded(&wt);
            for i in 0..m {
                for j in 0..k {
                    let s: f64 = (0..n)
                        .map(|c| f64::from(dyr[i * n + c]).abs() * f64::from(wtr[j * n + c]).abs())
                        .sum();
                    let bound = 2.0 * (n as f64 + 2.0) * 2f64.powi(-24) * s;
                    let (va, vb) = (a[i * k + j], b[i * k + j]);
                    assert!(
                        (f64::from(va) - f64::from(vb)).abs() <= bound,
                        "{m}×{n}×{k} at ({i}, {j}): {va} direct, {vb} through the shared rows"
                    );
                }
            }
        }
    }
}

/// The vector rounding every product's input goes through equals the scalar rounding on every
/// length (whole 32-value blocks and masked tails), on ties, NaN, infinities and the largest
/// values; subnormal inputs, which `VCVTNE2PS2BF16` treats as zero, give zero of their sign
/// there or their scalar rounding. On a CPU without AVX512-BF16 both sides are the scalar
/// rounding.
#[test]
fn vector_bf16_rounding_equals_the_scalar_one() {
    // The vector rounding runs where AVX512-BF16 does: a CPU that lists it must have it on.
    if required().contains(&CpuKernel::Avx512Bf16) {
        assert!(
            CpuKernel::Avx512Bf16.is_available(),
            "the CPU lists AVX512-BF16 but the crate does not detect it"
        );
    }
    let mut rng = Rng::new(17);
    let mut special = vec![
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        -f32::MAX,
        0.0,
        -0.0,
        f32::from_bits(0x3F80_8000), // a tie, rounds to even (down)
        f32::from_bits(0x3F81_8000), // a tie, rounds to even (up)
        f32::from_bits(0x3F80_8001),
        f32::from_bits(0x7F7F_FFFF),
    ];
    special.extend(rng.f32s(200, 0.0).iter().map(|v| v * 1e4));
    for len in (0..70).chain([special.len()]) {
        let src: Vec<f32> = special.iter().cycle().take(len).copied().collect();
        let mut dst = vec![0u16; len];
        peft_kernels::linear::cpu::round_to_bf16(&src, &mut dst);
        for (i, (&s, &d)) in src.iter().zip(&dst).enumerate() {
            if s.is_nan() {
                assert!(
                    bf16_value(d).is_nan(),
                    "length {len}, value {i}: NaN became {d:#06x}"
                );
            } else {
                assert_eq!(d, bf16_bits(s), "length {len}, value {i}: {s:e}");
            }
        }
    }
    let sub = [f32::from_bits(1), -f32::from_bits(0x007F_FFFF)];
    let mut dst = [0u16; 2];
    peft_kernels::linear::cpu::round_to_bf16(&sub, &mut dst);
    for (s, d) in sub.iter().zip(dst) {
        let zero = if s.is_sign_negative() { 0x8000 } else { 0 };
        assert!(
            d == zero || d == bf16_bits(*s),
            "subnormal {s:e} became {d:#06x}"
        );
    }
}
