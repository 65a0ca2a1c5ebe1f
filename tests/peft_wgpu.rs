//! Training on wgpu (CI: lavapipe): one optimizer step changes only the adapter.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::{Autodiff, Wgpu};

#[test]
fn wgpu_one_step_changes_the_adapter_and_nothing_else() {
    common::one_step_changes_only_the_adapter::<Autodiff<Wgpu>>();
}
