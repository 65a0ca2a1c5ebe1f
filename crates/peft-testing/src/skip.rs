//! Skips that are counted, never silent.

use std::{fmt::Display, io::Write};

/// The environment variable naming the file [`skip`] appends one line to per skipped test
/// (`scripts/test.sh` sets it, then counts and prints the lines).
pub const SKIP_LOG_ENV: &str = "PEFT_SKIP_LOG";

/// The environment variable that turns every [`skip`] into a failure when it is `1` (CI sets
/// it: a CI run must run every test).
pub const NO_SKIP_ENV: &str = "PEFT_NO_SKIP";

/// Records that the calling test cannot run here, and why; the test then returns.
///
/// The line `test-name: reason` goes to standard error and is appended to the file named by
/// [`SKIP_LOG_ENV`] when it is set, so that a run can report how many tests were skipped
/// (cargo hides the output of passing tests).
///
/// # Panics
///
/// When [`NO_SKIP_ENV`] is `1`: the skip fails the test instead. Also when the skip log cannot
/// be written, since a skip that is not counted would be silent.
pub fn skip(reason: impl Display) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_owned();
    if std::env::var(NO_SKIP_ENV).is_ok_and(|v| v == "1") {
        panic!("{test} would be skipped ({reason}), and {NO_SKIP_ENV}=1 allows no skip");
    }
    let line = format!("{test}: {reason}\n");
    eprint!("SKIPPED {line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        // One write of one short line in append mode: lines of tests running side by side do
        // not interleave.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .unwrap_or_else(|e| {
                panic!("{test}: cannot record the skip in {}: {e}", path.display())
            });
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// Runs this test binary's `child` test in a child process with the given environment.
    fn run_child(envs: &[(&str, &std::ffi::OsStr)]) -> std::process::Output {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "skip::tests::child", "--nocapture"])
            .env("PEFT_TESTING_CHILD", "1")
            .env_remove(NO_SKIP_ENV)
            .env_remove(SKIP_LOG_ENV);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// The body run in a child process: one skip.
    #[test]
    fn child() {
        if std::env::var_os("PEFT_TESTING_CHILD").is_some() {
            skip("no model here");
        }
    }

    #[test]
    fn a_skip_is_appended_to_the_log_with_the_test_name() {
        let log = std::env::temp_dir().join(format!("peft-testing-skips-{}", std::process::id()));
        let _ = std::fs::remove_file(&log);
        for _ in 0..2 {
            let out = run_child(&[(SKIP_LOG_ENV, log.as_os_str())]);
            assert!(out.status.success(), "{out:?}");
        }
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::remove_file(&log).unwrap();
        assert_eq!(
            text,
            "skip::tests::child: no model here\nskip::tests::child: no model here\n"
        );
    }

    #[test]
    fn no_skip_turns_a_skip_into_a_failure() {
        let out = run_child(&[(NO_SKIP_ENV, "1".as_ref())]);
        assert!(!out.status.success());
        let stdout = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("skip::tests::child would be skipped (no model here)"),
            "{stdout}"
        );
    }
}
