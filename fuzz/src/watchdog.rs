//! A watchdog thread for the fuzz harness: a call that runs past its time limit saves its input
//! and ends the process, so a real hang (a call that never returns) is reported and reproducible
//! instead of stalling the run with nothing written.
//!
//! Before each call the harness arms the watchdog with the target's name and the input
//! ([`Watchdog::arm`]); the returned guard disarms it when the call returns (or unwinds). When
//! the limit passes while a call is armed, the watchdog thread writes the input to
//! `CRASH_ROOT/<target>/hang-<target>-<hash>` (a temporary sibling, then a rename), prints
//! what happened on stderr and exits the process with [`HANG_EXIT_CODE`].

use std::{
    hash::{Hash, Hasher},
    io::Write,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// Exit status of a run ended by the watchdog (other failures exit with 1).
pub const HANG_EXIT_CODE: i32 = 3;

/// How long one input may run before the watchdog calls it a hang.
pub const HANG_LIMIT: Duration = Duration::from_secs(10);

/// The call being watched.
struct Slot {
    armed: bool,
    target: &'static str,
    /// The input of the current call (the buffer is reused between calls).
    input: Vec<u8>,
    started: Instant,
    deadline: Instant,
}

struct Shared {
    slot: Mutex<Slot>,
    stop: AtomicBool,
    crash_root: PathBuf,
    limit: Duration,
}

impl Shared {
    /// The slot, also after a panic elsewhere poisoned the lock (the slot stays consistent:
    /// every write to it is a plain field store).
    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A thread that ends the process when an armed call outlives the time limit.
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Disarms the watchdog when dropped: when the call returns, or when it unwinds.
pub struct Armed<'a> {
    watchdog: &'a Watchdog,
}

impl Armed<'_> {
    /// Disarms the watchdog and returns how long the call ran.
    pub fn finish(self) -> Duration {
        let elapsed = self.watchdog.shared.slot().started.elapsed();
        drop(self);
        elapsed
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.watchdog.shared.slot().armed = false;
    }
}

impl Watchdog {
    /// Starts the watchdog thread. A hung call's input goes to `crash_root/<target>/`.
    pub fn start(crash_root: PathBuf, limit: Duration) -> std::io::Result<Self> {
        let now = Instant::now();
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                armed: false,
                target: "",
                input: Vec::new(),
                started: now,
                deadline: now,
            }),
            stop: AtomicBool::new(false),
            crash_root,
            limit,
        });
        let watched = shared.clone();
        let thread = thread::Builder::new()
            .name("peft-fuzz-watchdog".into())
            .spawn(move || watch(&watched))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// The time limit of one call.
    pub fn limit(&self) -> Duration {
        self.shared.limit
    }

    /// Records `input` as the call of `target` about to start, with a deadline of now plus
    /// the limit. The call is watched until the returned guard is dropped or finished.
    pub fn arm(&self, target: &'static str, input: &[u8]) -> Armed<'_> {
        let mut slot = self.shared.slot();
        slot.target = target;
        slot.input.clear();
        slot.input.extend_from_slice(input);
        slot.started = Instant::now();
        slot.deadline = slot.started + self.shared.limit;
        slot.armed = true;
        Armed { watchdog: self }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// The watchdog thread. It never sleeps past the deadline of an armed call: while nothing is
/// armed it sleeps one limit at most, and a call armed meanwhile has a deadline at least one
/// limit away, so arming needs no wake-up (no system call per fuzz input).
fn watch(shared: &Shared) {
    while !shared.stop.load(Ordering::Acquire) {
        let wait = {
            let slot = shared.slot();
            let now = Instant::now();
            if slot.armed && now >= slot.deadline {
                // Holding the lock: the call cannot disarm (or re-arm with another input) while
                // its input is written.
                fire(shared, &slot);
            }
            if slot.armed {
                slot.deadline - now
            } else {
                shared.limit.max(Duration::from_millis(1))
            }
        };
        thread::park_timeout(wait);
    }
}

/// Saves the hung call's input, reports it and ends the process.
fn fire(shared: &Shared, slot: &Slot) -> ! {
    let ran = slot.started.elapsed().as_secs_f64();
    let limit = shared.limit.as_secs_f64();
    let saved = save_input(&shared.crash_root, slot.target, "hang", &slot.input);
    let target = slot.target;
    match saved {
        Ok(path) => eprintln!(
            "{target:18} FAILED: hang: one call has run {ran:.1} s, past the {limit:.1} s limit \
             (input saved to {})",
            path.display()
        ),
        Err(e) => eprintln!(
            "{target:18} FAILED: hang: one call has run {ran:.1} s, past the {limit:.1} s limit; \
             the input could not be saved under {}: {e}",
            shared.crash_root.join(target).display()
        ),
    }
    std::process::exit(HANG_EXIT_CODE)
}

/// A stable-within-a-build hash of an input, for file names and corpus deduplication.
pub fn hash(data: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

/// Writes a failing input to `crash_root/<target>/<kind>-<target>-<hash>` through a temporary
/// sibling and a rename, so the file is either whole or absent. Returns its path.
pub fn save_input(
    crash_root: &Path,
    target: &str,
    kind: &str,
    input: &[u8],
) -> std::io::Result<PathBuf> {
    let dir = crash_root.join(target);
    std::fs::create_dir_all(&dir)?;
    let name = format!("{kind}-{target}-{:016x}", hash(input));
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(input)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}
