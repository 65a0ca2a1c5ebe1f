//! An `exp` the compiler vectorises in loops: the C library's `expf` is one call per
//! value, which made it the hottest function of a bf16 training step after the products
//! (7.5% of the samples, `docs/measured/2026-12-05-profile-train-host-kernels.log`).
//!
//! The classic reduction: `x = n·ln 2 + r` with `n` the nearest integer to `x·log₂e` and
//! `|r| ≤ ln 2 / 2`, `exp(r)` by its degree-7 Taylor-like polynomial with minimax coefficients
//! (Cephes' `expf`), and `2ⁿ` built in the exponent bits. Branch-free, so a loop over it
//! becomes vector code. Relative error at most about 2 ulp (tested against f64).

/// `log₂ e`.
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split in two so that `n·LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Arguments are clamped to `MIN_ARG..=MAX_ARG`, where `2ⁿ` is a normal f32: below, the result
/// is `exp(MIN_ARG)` (about 1.6e-38, not 0; the callers add it to, or divide it by, sums of at
/// least 1, or add 1 to it), above, `exp(MAX_ARG)` (about 1.7e38, not infinity).
const MIN_ARG: f32 = -87.0;
const MAX_ARG: f32 = 88.0;
/// `1.5·2²³`: adding it rounds an f32 of magnitude below 2²² to an integer held in the low
/// mantissa bits.
const ROUND: f32 = 12_582_912.0;

/// `exp(x)` for `x` in `−87..=88` (clamped there, see `MIN_ARG`); NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Comparisons, not `max` / `min`, so that NaN passes through.
    let x = if x < MIN_ARG { MIN_ARG } else { x };
    let x = if x > MAX_ARG { MAX_ARG } else { x };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * (r * r) + r + 1.0;
    // `n` is in −126..=127, so `n + 127` is a valid biased exponent. The low mantissa bits of
    // `t` hold `n` plus 2²² (from ROUND's 1.5·2²³).
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    e * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_f64_exp_to_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = 88.0f32;
        while x > -87.0 {
            let got = f64::from(exp(x));
            let want = f64::from(x).exp();
            assert!(got.is_finite(), "exp({x}) = {got}");
            worst = worst.max((got - want).abs() / want);
            x -= 0.000_731;
        }
        // 2 ulp of f32 is 2.4e-7 relative.
        assert!(worst <= 2.4e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(f32::NEG_INFINITY) > 0.0);
        assert!(exp(-1000.0) < 2e-38);
        assert!(exp(f32::INFINITY).is_finite() && exp(1000.0) > 1e38);
    }
}
