//! Range checks of the commands' numeric options.
//!
//! Every numeric flag's clap value parser is one of the parsers here, so a value out of range
//! is refused before anything is loaded or run, and clap's error names the flag (`invalid value
//! '0' for '--heads <HEADS>': expected a whole number, at least 1`). The options of a
//! `peft train --config` file go through the same parsers (`commands::train`), and the saved
//! settings of a resumed run through the same `check_*` functions.

use std::str::FromStr;

/// A whole number of at least `MIN` (`MIN = 0`: any whole number).
pub fn at_least<const MIN: usize>(s: &str) -> Result<usize, String> {
    let v = s.trim().parse::<usize>().map_err(|_| whole_number(MIN))?;
    check_at_least(v, MIN)
}

/// `v`, if it is at least `min`.
pub fn check_at_least(v: usize, min: usize) -> Result<usize, String> {
    if v < min {
        return Err(whole_number(min));
    }
    Ok(v)
}

fn whole_number(min: usize) -> String {
    match min {
        0 => "expected a whole number, 0 or more".into(),
        _ => format!("expected a whole number, at least {min}"),
    }
}

/// A seed: any whole number that fits in 64 bits.
pub fn seed(s: &str) -> Result<u64, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("expected a whole number from 0 to {}", u64::MAX))
}

/// What a real-valued option accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Real {
    /// A finite number above 0 (learning rate, temperature, epochs).
    Positive,
    /// A finite number, 0 or more (weight decay, gradient norm limit).
    NonNegative,
    /// Above 0 and at most 1 (top-p).
    Fraction,
}

impl Real {
    fn expected(self) -> &'static str {
        match self {
            Real::Positive => "expected a finite number above 0",
            Real::NonNegative => "expected a finite number, 0 or more",
            Real::Fraction => "expected a number above 0 and at most 1",
        }
    }

    /// `v`, if it is in this range (NaN and infinities never are).
    pub fn check(self, v: f64) -> Result<f64, String> {
        let ok = v.is_finite()
            && match self {
                Real::Positive => v > 0.0,
                Real::NonNegative => v >= 0.0,
                Real::Fraction => v > 0.0 && v <= 1.0,
            };
        if ok {
            Ok(v)
        } else {
            Err(self.expected().into())
        }
    }

    fn parse<T: FromStr + Copy + Into<f64>>(self, s: &str) -> Result<T, String> {
        let v: T = s.trim().parse().map_err(|_| self.expected().to_string())?;
        self.check(v.into())?;
        Ok(v)
    }
}

/// A finite number above 0 (as `f32` or `f64`).
pub fn positive<T: FromStr + Copy + Into<f64>>(s: &str) -> Result<T, String> {
    Real::Positive.parse(s)
}

/// A finite number, 0 or more.
pub fn non_negative<T: FromStr + Copy + Into<f64>>(s: &str) -> Result<T, String> {
    Real::NonNegative.parse(s)
}

/// A number above 0 and at most 1.
pub fn fraction<T: FromStr + Copy + Into<f64>>(s: &str) -> Result<T, String> {
    Real::Fraction.parse(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_below_the_minimum_or_malformed_are_refused() {
        assert_eq!(at_least::<1>("3"), Ok(3));
        assert_eq!(at_least::<0>("0"), Ok(0));
        for bad in ["0", "-1", "1.5", "", "x", "99999999999999999999999"] {
            assert_eq!(
                at_least::<1>(bad),
                Err("expected a whole number, at least 1".into()),
                "{bad:?}"
            );
        }
        assert_eq!(
            at_least::<2>("1"),
            Err("expected a whole number, at least 2".into())
        );
        assert_eq!(seed("18446744073709551615"), Ok(u64::MAX));
        assert!(seed("-1").is_err());
    }

    #[test]
    fn reals_outside_their_range_nan_and_infinity_are_refused() {
        assert_eq!(positive::<f64>("1e-3"), Ok(1e-3));
        assert_eq!(non_negative::<f64>("0"), Ok(0.0));
        assert_eq!(fraction::<f32>("1"), Ok(1.0));
        for bad in ["0", "-1", "nan", "NaN", "inf", "-inf", "1e400", "x"] {
            assert!(positive::<f64>(bad).is_err(), "positive {bad}");
        }
        for bad in ["-0.1", "nan", "inf"] {
            assert!(non_negative::<f64>(bad).is_err(), "non-negative {bad}");
        }
        for bad in ["0", "1.01", "-0.5", "nan", "inf"] {
            assert!(fraction::<f32>(bad).is_err(), "fraction {bad}");
        }
        // An f32 overflow is infinite, so refused.
        assert!(positive::<f32>("1e39").is_err());
    }
}
