//! The kernels in their GPU configuration (one query row or key column per unit, as on CUDA and
//! wgpu GPUs, one column a step) on wgpu, so CI (lavapipe, where eight per unit is the default) checks that layout
//! against the f64 oracle too. Its own test binary: the setting is process-wide.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::Wgpu;
use common::*;
use peft_kernels::AttentionPath;

#[test]
fn one_row_per_unit_matches_the_oracle() {
    // SAFETY: this binary's only test sets the variable before any other thread reads it.
    unsafe { std::env::set_var("PEFT_KERNEL_ROWS", "1") };
    let dev = Default::default();
    for c in sweep_sample(0, 3) {
        let r = check::<Wgpu>(&c, 13, &dev, AttentionPath::Fused);
        assert!(r.passes(), "{c:?}: {r:?}");
    }
}
