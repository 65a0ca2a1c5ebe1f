//! The fuzz harness's watchdog: a call that outlives the limit has its input saved and ends the
//! process with [`HANG_EXIT_CODE`]; a call that returns in time leaves nothing behind.
//!
//! The firing case has to end a process, so it runs in a child: this test binary started again
//! on the ignored test `hung_call_child`, which arms the watchdog and then sleeps far past the
//! limit.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use peft_fuzz::watchdog::{HANG_EXIT_CODE, Watchdog, hash};

/// Tells the child which folder to save the hung input under.
const CHILD_ENV: &str = "PEFT_FUZZ_WATCHDOG_CHILD_DIR";
const INPUT: &[u8] = b"an input that hangs \x00\xff";
const LIMIT: Duration = Duration::from_millis(100);
/// How long the child's call sleeps: it exits normally (status 0) after this unless the
/// watchdog ends it first.
const SLEEP: Duration = Duration::from_secs(20);

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peft-fuzz-watchdog-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a scratch folder");
    dir
}

/// Not a test on its own: the process the firing test starts (`--ignored`, with [`CHILD_ENV`]).
#[test]
#[ignore = "run by watchdog_saves_a_hung_input_and_exits_non_zero in a child process"]
fn hung_call_child() {
    let dir = std::env::var_os(CHILD_ENV).expect("started by the firing test with the folder");
    let watchdog = Watchdog::start(PathBuf::from(dir), LIMIT).expect("watchdog thread");
    let _armed = watchdog.arm("slow_target", INPUT);
    std::thread::sleep(SLEEP);
    // Reaching here means the watchdog did not fire: the child exits with status 0, which the
    // parent test reports.
}

#[test]
fn watchdog_saves_a_hung_input_and_exits_non_zero() {
    let dir = scratch("fire");
    let start = Instant::now();
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["hung_call_child", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_ENV, &dir)
        .output()
        .expect("starting the child");
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(HANG_EXIT_CODE),
        "the child should be ended by the watchdog; stderr:\n{stderr}"
    );
    assert!(
        took < SLEEP / 2,
        "the watchdog fired only after {took:?} (limit {LIMIT:?})"
    );
    let saved = dir
        .join("slow_target")
        .join(format!("hang-slow_target-{:016x}", hash(INPUT)));
    assert_eq!(
        std::fs::read(&saved).ok().as_deref(),
        Some(INPUT),
        "the hung input should be saved as {}; stderr:\n{stderr}",
        saved.display()
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("slow_target"))
        .expect("the target's folder")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    assert!(
        stderr.contains("slow_target")
            && stderr.contains("hang")
            && stderr.contains(&saved.display().to_string()),
        "the message should name the target, the hang and the saved file:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn calls_within_the_limit_do_not_fire() {
    let dir = scratch("quiet");
    let watchdog = Watchdog::start(dir.clone(), LIMIT).expect("watchdog thread");
    for i in 0..50u8 {
        let armed = watchdog.arm("quick_target", &[i]);
        let ran = armed.finish();
        assert!(ran < LIMIT, "a call that returned at once ran {ran:?}");
    }
    // Disarmed: waiting well past the limit must not end this process or write anything.
    std::thread::sleep(LIMIT * 4);
    // A guard dropped without `finish` (a call that unwound) disarms too.
    drop(watchdog.arm("quick_target", b"unwound"));
    std::thread::sleep(LIMIT * 4);
    drop(watchdog);
    assert!(
        !dir.join("quick_target").exists(),
        "the watchdog wrote an input for calls that returned in time"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
