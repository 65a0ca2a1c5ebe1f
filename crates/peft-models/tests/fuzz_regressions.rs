//! Inputs the fuzzer (`fuzz/`) found that once panicked or over-allocated; each must now be a
//! clean error.

use std::path::PathBuf;

use peft_models::Tokenizer;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(name)
}

thread_local! {
    /// Panics raised on this thread since the hook below was installed.
    static PANICS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// An invalid UTF-8 byte inside a JSON key made the `tokenizers` crate panic while parsing.
/// The file is now refused before `tokenizers` sees it: a clean error naming the file and the
/// byte, and no panic at all (a caught one would still print the panic message).
#[test]
fn tokenizer_json_with_invalid_utf8_key_is_an_error() {
    let path = fixture("tokenizer-invalid-utf8-key.json");
    // Count panics on this thread (the hook runs on the panicking thread), passing every panic
    // on to the default hook so other tests still report theirs.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.with(|n| n.set(n.get() + 1));
        default_hook(info);
    }));
    let err = Tokenizer::from_file(&path).expect_err("a malformed tokenizer.json must be refused");
    assert_eq!(
        PANICS.with(|n| n.get()),
        0,
        "parsing panicked (and was caught)"
    );
    let msg = err.to_string();
    let bytes = std::fs::read(&path).unwrap();
    let bad = std::str::from_utf8(&bytes).unwrap_err().valid_up_to();
    assert!(
        msg.contains("tokenizer-invalid-utf8-key.json")
            && msg.contains(&format!("not UTF-8 at byte {bad}")),
        "{msg}"
    );
}
