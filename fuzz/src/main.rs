//! `peft-fuzz`: a mutation fuzzer for burn-peft's parsers that runs on the stable toolchain.
//!
//! ```text
//! peft-fuzz [--seconds N] [--seed S] [TARGET ...]     (no target: all of them)
//! ```
//!
//! Inputs start from the committed seeds (`fuzz/seeds/<target>/`: real files and truncated
//! ones) and are mutated: bit flips, interesting bytes and little-endian integers (0, 1, -1,
//! 2³², 10¹², ...) written over fields, insertions, deletions, truncations, chunk duplication
//! and splices between seeds. An input whose outcome (the shape of its error message) was not
//! seen before joins the corpus, so mutation digs into every branch of error handling it reaches.
//!
//! A run fails when a target panics, allocates more than the input can justify
//! (`256 MiB + 64 × input size` in one allocation) or takes more than 10 s on one input; the
//! input is written to `fuzz/crashes/<target>/` and the process exits non-zero. The time limit
//! is enforced by a watchdog thread while the call runs (`peft_fuzz::watchdog`), so a call that
//! never returns still saves its input (`hang-<target>-<hash>`) and ends the run with exit
//! status 3.

use std::{
    collections::{HashMap, HashSet},
    panic::AssertUnwindSafe,
    path::PathBuf,
    time::{Duration, Instant},
};

use peft_fuzz::{
    TARGETS, Target, seed_dir,
    watchdog::{HANG_LIMIT, Watchdog, hash, save_input},
};
use peft_testing::{AllocStats, CountingAllocator};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Counts allocations; the harness reads the largest single request of each call.
#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

/// Most inputs kept per target.
const MAX_CORPUS: usize = 4096;

const INTERESTING_U64: [u64; 12] = [
    0,
    1,
    2,
    7,
    32,
    255,
    256,
    0xFFFF,
    0xFFFF_FFFF,
    1 << 32,
    1_000_000_000_000,
    u64::MAX,
];
const INTERESTING_U8: [u8; 8] = [0, 1, 0x7F, 0x80, 0xFF, b'{', b'"', b'\n'];

fn mutate(rng: &mut StdRng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    let rounds = 1 + rng.random_range(0..4);
    for _ in 0..rounds {
        let len = v.len();
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = INTERESTING_U8[rng.random_range(0..INTERESTING_U8.len())];
            }
            2 if len >= 8 => {
                let i = rng.random_range(0..=len - 8);
                let x = INTERESTING_U64[rng.random_range(0..INTERESTING_U64.len())];
                v[i..i + 8].copy_from_slice(&x.to_le_bytes());
            }
            3 if len >= 4 => {
                let i = rng.random_range(0..=len - 4);
                let x = INTERESTING_U64[rng.random_range(0..INTERESTING_U64.len())] as u32;
                v[i..i + 4].copy_from_slice(&x.to_le_bytes());
            }
            4 if len > 0 => {
                v.truncate(rng.random_range(0..len));
            }
            5 if len > 1 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=16.min(len - a))).min(len);
                v.drain(a..b);
            }
            6 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..=8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                v.splice(i..i, bytes);
            }
            7 if len > 1 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=64.min(len - a))).min(len);
                let chunk = v[a..b].to_vec();
                let at = rng.random_range(0..=len);
                v.splice(at..at, chunk);
            }
            _ if !corpus.is_empty() => {
                let other = &corpus[rng.random_range(0..corpus.len())];
                let cut = rng.random_range(0..=v.len());
                let from = rng.random_range(0..=other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    v
}

struct Failure {
    what: String,
    /// The failing input and the kind of finding its file is named after (`crash`, `hang`);
    /// `None` for a failure of the harness itself, which no input reproduces.
    input: Option<(&'static str, Vec<u8>)>,
}

impl Failure {
    fn harness(what: String) -> Self {
        Self { what, input: None }
    }
}

fn run_one(
    target: &Target,
    input: &[u8],
    scratch: &std::path::Path,
    watchdog: &Watchdog,
) -> Result<String, Failure> {
    let budget = (256usize << 20) + 64 * input.len();
    AllocStats::reset_peak();
    let armed = watchdog.arm(target.name, input);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input, scratch)));
    // A call that never returns is caught by the watchdog thread; one that returns after the
    // limit but before the watchdog noticed is caught here.
    let elapsed = armed.finish();
    let largest = AllocStats::now().largest;
    let fail = |kind: &'static str, what: String| Failure {
        what,
        input: Some((kind, input.to_vec())),
    };
    match result {
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".into());
            Err(fail("crash", format!("panic: {msg}")))
        }
        Ok(Err(e)) => Err(Failure::harness(format!("harness: {e}"))),
        Ok(_) if largest > budget => Err(fail(
            "crash",
            format!(
                "allocation of {largest} bytes from a {}-byte input",
                input.len()
            ),
        )),
        Ok(_) if elapsed > watchdog.limit() => Err(fail(
            "hang",
            format!(
                "hang: {:.1} s on one input, past the {:.1} s limit",
                elapsed.as_secs_f64(),
                watchdog.limit().as_secs_f64()
            ),
        )),
        Ok(Ok(outcome)) => Ok(outcome),
    }
}

fn fuzz(
    target: &Target,
    seconds: f64,
    seed: u64,
    watchdog: &Watchdog,
) -> Result<(u64, usize, usize), Failure> {
    let scratch =
        std::env::temp_dir().join(format!("peft-fuzz-{}-{}", target.name, std::process::id()));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| Failure::harness(format!("scratch dir {}: {e}", scratch.display())))?;
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(seed_dir(target.name))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let seeds = corpus.len();
    let mut outcomes: HashSet<String> = HashSet::new();
    for input in corpus.clone() {
        outcomes.insert(run_one(target, &input, &scratch, watchdog)?);
    }
    let mut rng = StdRng::seed_from_u64(seed ^ hash(target.name.as_bytes()));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut execs = 0u64;
    let mut seen: HashMap<u64, ()> = HashMap::new();
    while Instant::now() < deadline {
        let base = &corpus[rng.random_range(0..corpus.len())];
        let input = mutate(&mut rng, base, &corpus);
        execs += 1;
        let outcome = run_one(target, &input, &scratch, watchdog)?;
        if outcomes.insert(outcome) && seen.insert(hash(&input), ()).is_none() {
            // Bounded corpus: past the cap a new input replaces a random mutated one.
            if corpus.len() < MAX_CORPUS {
                corpus.push(input);
            } else {
                let i = rng.random_range(seeds..corpus.len());
                corpus[i] = input;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok((execs, outcomes.len(), corpus.len() - seeds))
}

/// The value after `flag`, or exit status 2 with a message naming the flag.
fn flag_value<T>(
    flag: &str,
    value: Option<String>,
    expected: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> T {
    match value.as_deref().map(|v| (v, parse(v))) {
        Some((_, Some(v))) => v,
        Some((v, None)) => {
            eprintln!("{flag} {v}: expected {expected}");
            std::process::exit(2)
        }
        None => {
            eprintln!("{flag} needs a value: {expected}");
            std::process::exit(2)
        }
    }
}

fn main() {
    let mut seconds = 10.0;
    let mut seed = 1u64;
    let mut names = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = flag_value(&a, args.next(), "a number of seconds, 0 or more", |s| {
                    s.parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite() && *v >= 0.0 && *v <= 1e9)
                })
            }
            "--seed" => {
                seed = flag_value(&a, args.next(), "a whole number, 0 or more", |s| {
                    s.parse().ok()
                })
            }
            "--list" => {
                for t in TARGETS {
                    println!("{:18} {}", t.name, t.about);
                }
                return;
            }
            name => names.push(name.to_string()),
        }
    }
    let selected: Vec<&Target> = if names.is_empty() {
        TARGETS.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                TARGETS.iter().find(|t| t.name == n).unwrap_or_else(|| {
                    eprintln!("unknown target {n}; see --list");
                    std::process::exit(2)
                })
            })
            .collect()
    };
    // Panics are the findings; report them ourselves instead of on stderr.
    std::panic::set_hook(Box::new(|_| {}));
    let crashes = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crashes");
    let watchdog = Watchdog::start(crashes.clone(), HANG_LIMIT).unwrap_or_else(|e| {
        eprintln!("cannot start the watchdog thread: {e}");
        std::process::exit(2)
    });
    let mut failed = false;
    for target in selected {
        match fuzz(target, seconds, seed, &watchdog) {
            Ok((execs, outcomes, added)) => println!(
                "{:18} {execs:>9} executions in {seconds:.0} s, {outcomes} distinct outcomes, corpus +{added}: ok",
                target.name
            ),
            Err(f) => {
                failed = true;
                let saved = match &f.input {
                    Some((kind, input)) => match save_input(&crashes, target.name, kind, input) {
                        Ok(path) => format!(" (input saved to {})", path.display()),
                        Err(e) => format!(
                            " (the input could not be saved under {}: {e})",
                            crashes.join(target.name).display()
                        ),
                    },
                    None => String::new(),
                };
                println!("{:18} FAILED: {}{saved}", target.name, f.what);
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
