//! Dequantisation of every supported ggml type equals gguf-py's (the library transformers uses),
//! bit for bit. Fixture: quants.gguf from scripts/reference/tiny_fixture.py.

use std::path::PathBuf;

use peft_models::gguf::{GgmlType, GgufFile};

#[test]
fn every_supported_type_dequantises_like_gguf_py() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quants.gguf");
    let file = GgufFile::open(&path).expect("open");
    let mut checked = Vec::new();
    for info in file
        .header()
        .tensors
        .iter()
        .filter(|t| t.name.starts_with("x."))
    {
        let ty = &info.name[2..];
        let (shape, got) = file.read_f32(&info.name).expect("dequantise");
        let (want_shape, want) = file.read_f32(&format!("expected.{ty}")).expect("expected");
        assert_eq!(shape, want_shape, "{ty}");
        let mismatches = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            mismatches,
            0,
            "{ty}: {mismatches} of {} values differ from gguf-py",
            got.len()
        );
        checked.push(info.ty);
    }
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        assert!(
            checked.contains(&ty),
            "{ty:?} is not covered by the fixture"
        );
    }
}
