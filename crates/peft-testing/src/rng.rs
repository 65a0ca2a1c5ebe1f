//! A small deterministic generator (SplitMix64) for test and benchmark inputs, so that reference
//! computations need no dependency and every suite draws its values the same way.

/// SplitMix64: the same seed gives the same values on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator started at `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `[-1, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    /// `n` values of [`next_f64`](Self::next_f64).
    pub fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next_f64()).collect()
    }

    /// A value in `[-1, 1)` with 24 random bits (exact in f32).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// `n` values of [`next_f32`](Self::next_f32), each at least `min_abs` away from zero (a
    /// value closer is moved to `±min_abs`, keeping its sign): with `1e-3`, no product of two of
    /// them is an f32 subnormal, which bf16 instructions flush to zero.
    pub fn f32s(&mut self, n: usize, min_abs: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let v = self.next_f32();
                if v.abs() < min_abs {
                    min_abs.copysign(v)
                } else {
                    v
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_in_range_and_away_from_zero() {
        let mut r = Rng::new(7);
        let v = r.f32s(10_000, 1e-3);
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x) && x.abs() >= 1e-3));
        assert!(v.iter().any(|&x| x < -0.5) && v.iter().any(|&x| x > 0.5));
        let w = Rng::new(7).vec(1000);
        assert!(w.iter().all(|x| (-1.0..1.0).contains(x)));
        assert_eq!(Rng::new(3).vec(4), Rng::new(3).vec(4), "deterministic");
    }
}
