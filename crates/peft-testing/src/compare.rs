//! Comparisons of a result with a reference that fail on non-finite values.

use std::fmt;

/// A number the comparisons read, widened to `f64` without loss.
pub trait Number: Copy {
    /// The value as `f64`.
    fn to_f64(self) -> f64;
}

impl Number for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Number for f64 {
    fn to_f64(self) -> f64 {
        self
    }
}

/// A value that is NaN or infinite, or two sides of different lengths: a comparison that
/// cannot give a meaningful distance.
#[derive(Debug, Clone, PartialEq)]
pub enum NonFinite {
    /// `side[index]` is NaN or ±∞.
    Value {
        /// `"reference"` or `"actual"`.
        side: &'static str,
        /// Position of the first non-finite value.
        index: usize,
        /// The value.
        value: f64,
    },
    /// The two sides have different lengths.
    Length {
        /// Length of the reference.
        reference: usize,
        /// Length of the result.
        actual: usize,
    },
}

impl fmt::Display for NonFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value { side, index, value } => {
                write!(f, "{side}[{index}] is {value}: not a finite number")
            }
            Self::Length { reference, actual } => write!(
                f,
                "the reference has {reference} values and the result {actual}"
            ),
        }
    }
}

impl std::error::Error for NonFinite {}

/// How far a result is from its reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Diff {
    /// Largest `|reference − actual|`.
    pub max_abs: f64,
    /// Position of that largest difference (0 when both sides are empty).
    pub at: usize,
    /// Largest `|reference|`.
    pub reference_max: f64,
}

impl Diff {
    /// [`max_abs`](Self::max_abs) relative to the reference's largest magnitude, floored at
    /// `floor` (so a reference that is zero everywhere is compared in absolute terms instead of
    /// dividing rounding noise by zero).
    pub fn relative(&self, floor: f64) -> f64 {
        self.max_abs / self.reference_max.max(floor)
    }
}

/// The first non-finite value of `values`, if any.
pub fn check_finite<T: Number>(values: &[T], side: &'static str) -> Result<(), NonFinite> {
    match values.iter().position(|v| !v.to_f64().is_finite()) {
        Some(index) => Err(NonFinite::Value {
            side,
            index,
            value: values[index].to_f64(),
        }),
        None => Ok(()),
    }
}

/// Compares `actual` with `reference` value by value. Any NaN or infinity on either side, or
/// sides of different lengths, is an error, never a distance.
pub fn compare<R: Number, A: Number>(reference: &[R], actual: &[A]) -> Result<Diff, NonFinite> {
    if reference.len() != actual.len() {
        return Err(NonFinite::Length {
            reference: reference.len(),
            actual: actual.len(),
        });
    }
    check_finite(reference, "reference")?;
    check_finite(actual, "actual")?;
    let mut diff = Diff {
        max_abs: 0.0,
        at: 0,
        reference_max: 0.0,
    };
    for (i, (r, a)) in reference.iter().zip(actual).enumerate() {
        let (r, a) = (r.to_f64(), a.to_f64());
        let d = (r - a).abs();
        if d > diff.max_abs {
            diff.max_abs = d;
            diff.at = i;
        }
        diff.reference_max = diff.reference_max.max(r.abs());
    }
    Ok(diff)
}

/// Largest `|reference − actual|`.
///
/// # Panics
///
/// On any NaN or infinity on either side, or on sides of different lengths.
pub fn max_abs_diff<R: Number, A: Number>(reference: &[R], actual: &[A]) -> f64 {
    compare(reference, actual)
        .unwrap_or_else(|e| panic!("{e}"))
        .max_abs
}

/// Largest `|reference − actual|` relative to the reference's largest magnitude, floored at
/// `floor` (see [`Diff::relative`]).
///
/// # Panics
///
/// On any NaN or infinity on either side, or on sides of different lengths.
pub fn max_rel_diff<R: Number, A: Number>(reference: &[R], actual: &[A], floor: f64) -> f64 {
    compare(reference, actual)
        .unwrap_or_else(|e| panic!("{e}"))
        .relative(floor)
}

/// Asserts that every value of `values` is finite, naming `what` and the first bad value.
///
/// # Panics
///
/// On the first NaN or infinity.
pub fn assert_finite<T: Number>(values: &[T], what: &str) {
    if let Err(e) = check_finite(values, "value") {
        panic!("{what}: {e}");
    }
}

/// Asserts `max |reference − actual| ≤ tol` and returns that largest difference, so a test can
/// print what it achieved next to what it asserts.
///
/// # Panics
///
/// When the difference is over `tol`, on any NaN or infinity on either side, or on sides of
/// different lengths; the message names `what`.
pub fn assert_close<R: Number, A: Number>(
    reference: &[R],
    actual: &[A],
    tol: f64,
    what: &str,
) -> f64 {
    let diff = compare(reference, actual).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        diff.max_abs <= tol,
        "{what}: max |Δ| = {:e} at {} (tolerance {tol:e})",
        diff.max_abs,
        diff.at
    );
    diff.max_abs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finite_sides_give_the_largest_difference_and_where() {
        let d = compare(&[1.0f64, -4.0, 2.0], &[1.5f32, -4.0, 2.25]).unwrap();
        assert_eq!(d.max_abs, 0.5);
        assert_eq!(d.at, 0);
        assert_eq!(d.reference_max, 4.0);
        assert_eq!(d.relative(1e-2), 0.125);
        assert_eq!(d.relative(8.0), 0.0625);
        assert_eq!(assert_close(&[1.0f32], &[1.0f32], 0.0, "equal"), 0.0);
    }

    #[test]
    fn nan_or_infinity_on_either_side_is_an_error_not_a_distance() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let err = compare(&[0.0f32, 1.0], &[0.0f32, bad]).unwrap_err();
            assert!(
                matches!(
                    err,
                    NonFinite::Value {
                        side: "actual",
                        index: 1,
                        ..
                    }
                ),
                "{err}"
            );
            let err = compare(&[bad, 1.0], &[0.0f32, 1.0]).unwrap_err();
            assert!(
                matches!(
                    err,
                    NonFinite::Value {
                        side: "reference",
                        index: 0,
                        ..
                    }
                ),
                "{err}"
            );
        }
        // NaN everywhere: `fold(0.0, f32::max)` over the differences would give 0.
        let nan = [f64::NAN; 4];
        assert!(compare(&nan, &nan).is_err());
        assert!(check_finite(&[1.0f64, f64::NAN], "x").is_err());
    }

    #[test]
    fn sides_of_different_lengths_are_an_error() {
        assert_eq!(
            compare(&[1.0f32], &[1.0f32, 2.0]),
            Err(NonFinite::Length {
                reference: 1,
                actual: 2
            })
        );
    }

    #[test]
    #[should_panic(expected = "logits: actual[2] is NaN")]
    fn assert_close_fails_on_nan() {
        assert_close(&[0.0f32; 3], &[0.0, 0.0, f32::NAN], 1.0, "logits");
    }

    #[test]
    #[should_panic(expected = "max |Δ| = 2e0 at 1 (tolerance 1e0)")]
    fn assert_close_fails_over_the_tolerance() {
        assert_close(&[0.0f64, 0.0], &[0.5f32, 2.0], 1.0, "x");
    }

    #[test]
    #[should_panic(expected = "not a finite number")]
    fn max_abs_diff_panics_on_infinity() {
        max_abs_diff(&[f64::INFINITY], &[0.0f32]);
    }

    #[test]
    #[should_panic(expected = "grads: value[1] is inf")]
    fn assert_finite_names_the_first_bad_value() {
        assert_finite(&[0.0f32, f32::INFINITY, f32::NAN], "grads");
    }
}
