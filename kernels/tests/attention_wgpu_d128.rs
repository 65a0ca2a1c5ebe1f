//! The kernels at the largest head dimension they take (`d = 128`) on wgpu (CI: lavapipe),
//! against the f64 oracle. There the dK/dV kernel's query tile of 32 rows would need 32.25 KiB of
//! shared memory, over lavapipe's 32 KiB: the launch was refused without an error and the
//! gradients were whatever the reused buffers held (worst gradient error 5.4 on
//! `Case::new(1, 2, 2, 17, 128, 7)`, found 2026-12-02);
//! it now stages 16 rows where 32 do not fit.
//!
//! One query row or key column per unit (the GPU layout): lavapipe took 20 minutes of a CI run
//! (1193 s) to compile the `d = 128` kernels with its default of eight rows per unit, 32 vectors
//! each, unrolled; with one row it takes about 10 s. The row count changes what a unit keeps in
//! registers, not the shared memory a cube's tiles take, which is what this guards. Its own
//! test binary: the setting is process-wide.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::Wgpu;
use common::*;
use peft_kernels::{AttentionPath, set_rows_per_unit};

#[test]
fn head_dim_128_matches_the_oracle() {
    set_rows_per_unit(Some(1)).unwrap();
    let dev = Default::default();
    // GQA 3, a prefix, a padded row: every gradient, prefix ones included.
    let c = Case::new(2, 6, 2, 17, 128, 7).key_lengths(vec![17, 9]);
    let r = check::<Wgpu>(&c, 3, &dev, AttentionPath::Fused);
    assert!(r.passes(), "{c:?}: {r:?}");
}
