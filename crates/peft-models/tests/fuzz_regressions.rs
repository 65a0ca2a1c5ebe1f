//! Inputs the fuzzer (`fuzz/`) found that once panicked or over-allocated; each must now be a
//! clean error.

use std::path::PathBuf;

use peft_models::Tokenizer;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(name)
}

/// An invalid UTF-8 byte inside a JSON key made the `tokenizers` crate panic while parsing.
#[test]
fn tokenizer_json_with_invalid_utf8_key_is_an_error() {
    let path = fixture("tokenizer-invalid-utf8-key.json");
    let err = Tokenizer::from_file(&path).expect_err("a malformed tokenizer.json must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains("tokenizer-invalid-utf8-key.json") && msg.contains("invalid"),
        "{msg}"
    );
}
