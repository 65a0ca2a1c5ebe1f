//! The reference path (every backend's fallback) against the f64 oracle: the unfused composition
//! of tensor ops on Flex, and the reference op with its analytic backward (the trait's default
//! methods) on NdArray, which has no kernels (feature `ndarray`; scripts/test.sh runs it).
//! Flex's own host kernels are checked in `attention_cpu.rs`.
#![cfg(feature = "flex")]

mod common;

use burn::backend::Flex;
use common::*;
use peft_kernels::AttentionPath;
#[cfg(feature = "ndarray")]
use peft_kernels::PrefixAttentionBackend;

#[test]
fn oracle_backward_matches_finite_differences() {
    for c in [
        Case::new(2, 6, 2, 5, 8, 3),
        Case::new(2, 3, 1, 4, 8, 2).key_lengths(vec![4, 1]),
        Case::new(2, 4, 2, 3, 8, 4).per_row_prefix(vec![4, 1]),
    ] {
        let x = Inputs::random(&c, 7);
        let dout = Rng::new(11).vec(c.q_len());
        let err = finite_difference_error(&c, &x, &dout);
        assert!(err < 1e-6, "{c:?}: analytic vs central differences {err:e}");
    }
}

#[test]
fn unfused_path_matches_oracle() {
    let dev = Default::default();
    for c in sweep() {
        let r = check::<Flex>(&c, 1, &dev, AttentionPath::Unfused);
        assert!(r.passes(), "{c:?}: {r:?}");
    }
}

/// `check` asserts that the reference op computed both passes (`assert_ran`).
#[cfg(feature = "ndarray")]
#[test]
fn reference_op_with_analytic_backward_matches_oracle() {
    use burn::backend::NdArray;
    assert!(!NdArray::has_fused_prefix_attention());
    let dev = Default::default();
    for c in sweep() {
        let r = check::<NdArray>(&c, 2, &dev, AttentionPath::Fused);
        assert!(r.passes(), "{c:?}: {r:?}");
    }
}

/// Sliding windows (Gemma 3's layers) on the reference path against the oracle: shorter than
/// the prefix, than the sequence, with per-row prefixes, padded keys and a KV cache; the output
/// and every gradient (prefix ones included) through autodiff of the composition.
#[test]
fn sliding_windows_match_the_oracle() {
    let dev = Default::default();
    let cases = [
        Case::new(2, 4, 1, 12, 16, 6).window(4),
        Case::new(2, 6, 2, 17, 32, 7)
            .window(9)
            .key_lengths(vec![17, 5]),
        Case::new(3, 6, 2, 11, 32, 8)
            .per_row_prefix(vec![8, 3, 0])
            .window(6),
        Case::new(2, 6, 3, 4, 32, 5).keys(13).window(7),
        Case::new(2, 3, 1, 9, 8, 0).window(1),
    ];
    for c in cases {
        let r = check::<Flex>(&c, 5, &dev, AttentionPath::Unfused);
        assert!(r.passes(), "{c:?}: {r:?}");
    }
}

/// A window that hides keys runs the reference path even when the fused one is asked for (the
/// kernels take no window); one that hides nothing (`P + S ≤ window`) is dropped and the call
/// runs fused.
#[test]
fn a_window_that_hides_keys_takes_the_reference_path() {
    let dev = Default::default();
    let hides = Case::new(2, 4, 1, 12, 16, 6).window(4);
    let x = Inputs::random(&hides, 1);
    let before = peft_kernels::path_counts();
    let out = values(
        op::<Flex>(
            &hides,
            &inputs::<Flex>(&hides, &x, &dev),
            &dev,
            AttentionPath::Fused,
        )
        .forward(),
    );
    let ran = peft_kernels::path_counts().since(before);
    assert_eq!(
        (ran.reference_forward, ran.fused_forward),
        (1, 0),
        "{ran:?}"
    );
    let (want, _) = forward(&hides, &x);
    let err = peft_testing::max_abs_diff(&want, &out);
    assert!(err < 1e-6, "windowed output off by {err:e}");

    let wide = Case::new(2, 4, 1, 12, 16, 6).window(18);
    let before = peft_kernels::path_counts();
    let _ = op::<Flex>(
        &wide,
        &inputs::<Flex>(&wide, &x, &dev),
        &dev,
        AttentionPath::Fused,
    )
    .forward();
    let ran = peft_kernels::path_counts().since(before);
    assert_eq!(
        (ran.reference_forward, ran.fused_forward),
        (0, 1),
        "{ran:?}"
    );
}

#[test]
fn empty_prefix_is_plain_causal_attention() {
    let dev = Default::default();
    let c = Case::new(2, 6, 2, 17, 32, 0);
    let x = Inputs::random(&c, 3);
    let with = run_forward::<Flex>(&c, &x, &dev, AttentionPath::Fused);
    let plain = {
        use burn::tensor::{module::attention, ops::AttentionModuleOptions};
        let q = tensor::<Flex, 4>(&x.q, [2, 6, 17, 32], &dev);
        let k = tensor::<Flex, 4>(&x.k, [2, 2, 17, 32], &dev).repeat_dim(1, 1);
        let v = tensor::<Flex, 4>(&x.v, [2, 2, 17, 32], &dev);
        // Hugging Face's repeat_kv order: head h reads kv head h / g.
        let rep = |t: burn::tensor::Tensor<Flex, 4>| {
            t.unsqueeze_dim::<5>(2)
                .repeat_dim(2, 3)
                .reshape([2, 6, 17, 32])
        };
        let opts = AttentionModuleOptions {
            is_causal: true,
            ..Default::default()
        };
        values(attention(q, rep(k), rep(v), None, None, opts))
    };
    peft_testing::assert_close(&plain, &with, 1e-5, "P = 0 against burn's causal attention");
}

#[test]
fn runs_are_bitwise_identical() {
    let dev = Default::default();
    let c = Case::new(2, 6, 2, 17, 32, 7).key_lengths(vec![17, 9]);
    let x = Inputs::random(&c, 5);
    for path in [AttentionPath::Fused, AttentionPath::Unfused] {
        let a = run_forward::<Flex>(&c, &x, &dev, path);
        let b = run_forward::<Flex>(&c, &x, &dev, path);
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{path:?}"
        );
    }
}
