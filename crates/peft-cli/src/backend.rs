//! Command-line backend selection.

use peft_kernels::backends::BackendKind;

/// Parses `--backend`, listing the compiled backends in the error.
pub fn parse_backend(s: &str) -> Result<BackendKind, String> {
    let kind: BackendKind = s
        .parse()
        .map_err(|e: peft_kernels::backends::BackendError| e.to_string())?;
    if !kind.is_compiled() {
        let compiled: Vec<_> = BackendKind::compiled().iter().map(|k| k.name()).collect();
        return Err(format!(
            "backend `{kind}` is not compiled into this binary (compiled: {}); rebuild with `--features {kind}`",
            compiled.join(", ")
        ));
    }
    Ok(kind)
}
