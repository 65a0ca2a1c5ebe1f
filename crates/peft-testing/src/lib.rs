//! Test support shared by every test suite of the workspace.
//!
//! * [`compare`] and the helpers built on it ([`max_abs_diff`], [`max_rel_diff`],
//!   [`assert_close`]) compare a result with a reference and **fail on any NaN or infinity on
//!   either side**. `f32::max`/`f64::max` skip NaN, so a reduction written with them passes a
//!   result that is NaN everywhere; every numeric comparison of the tests goes through here
//!   instead.
//! * [`skip`] records a test that could not run (no model on disk, a device too narrow for a
//!   kernel layout). A skip is never silent: it is appended to the file named by
//!   `PEFT_SKIP_LOG`, which `scripts/test.sh` counts and prints, and with `PEFT_NO_SKIP=1` (set
//!   by CI) it fails the test instead.
//! * [`CountingAllocator`] counts heap bytes (live, peak, allocated, largest request) for tests
//!   that measure memory.
//! * [`Rng`] draws deterministic inputs for tests and benchmarks.
#![warn(missing_docs)]

mod alloc;
mod compare;
mod rng;
mod skip;

pub use alloc::{AllocStats, CountingAllocator};

pub use compare::{
    Diff, NonFinite, Number, assert_close, assert_finite, check_finite, compare, max_abs_diff,
    max_rel_diff,
};
pub use rng::Rng;
pub use skip::{NO_SKIP_ENV, SKIP_LOG_ENV, skip};
