//! The wgpu backend (on a machine without a GPU: Mesa's lavapipe) against the f64 oracle.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::Wgpu;
use common::*;
use peft_kernels::AttentionPath;

#[test]
fn wgpu_smoke() {
    let dev = Default::default();
    let c = Case::new(2, 6, 2, 17, 32, 7).key_lengths(vec![17, 5]);
    for path in [AttentionPath::Fused, AttentionPath::Unfused] {
        let r = check::<Wgpu>(&c, 1, &dev, path);
        assert!(
            !r.non_finite && r.out < 1e-4 && r.grad < 1e-3,
            "{path:?} {c:?}: {r:?}"
        );
    }
}
