//! Where a program's CPU work runs: on a worker of a Rayon pool rather than on `main`.
//!
//! The CPU backends (Burn's Flex, this project's frozen-linear and host kernels, the `gemm`
//! crate) split each operation into Rayon tasks. Called from a thread outside any pool, such as
//! `main`, every one of those operations hands its tasks to the global pool, puts the calling
//! thread to sleep and wakes it when they are done: two thread switches per operation, and a
//! decoded token is a few hundred operations. Called from a worker of the pool, the worker runs
//! one part itself while the pool's other workers steal the rest, and no thread sleeps between
//! operations. [`run_on_worker_pool`] puts a whole program (a training run, a generation, a
//! benchmark) there.

use crate::{PeftError, Result};

/// Stack of each worker: what Linux gives a process's main thread by default (`ulimit -s`),
/// since the work that ran on `main` runs on a worker instead. Rayon's own default is Rust's
/// 2 MiB for spawned threads.
const WORKER_STACK_BYTES: usize = 8 << 20;

/// Runs `f` on a worker thread of a new Rayon pool and returns its result; every Rayon
/// operation inside `f` (the CPU backends' included) runs on that pool.
///
/// `threads` is the pool's size; `None` (or `Some(0)`) takes Rayon's choice:
/// `RAYON_NUM_THREADS` if set, otherwise one thread per core. The pool ends when `f` returns.
///
/// Measured with `peft bench generate` (batch 1, prompt 32, 64 new tokens, SmolLM2-135M, Flex,
/// 2 threads) on an AMD EPYC Zen 3, alternated with the same code running on `main`, two
/// rounds: bf16 decoding 1.19× and 1.30× faster, f32 1.04×; training steps, whose operations
/// are large, unchanged within the noise (`docs/measured/2026-12-06-worker-pool-ab-zen3.log`).
///
/// # Errors
/// [`PeftError::Invalid`] when the operating system refuses to start the pool's threads.
pub fn run_on_worker_pool<T: Send>(
    threads: Option<usize>,
    f: impl FnOnce() -> T + Send,
) -> Result<T> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .stack_size(WORKER_STACK_BYTES)
        .thread_name(|i| format!("peft-worker-{i}"))
        .build()
        .map_err(|e| PeftError::Invalid(format!("starting the worker thread pool: {e}")))?;
    Ok(pool.install(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;
    use std::collections::BTreeSet;

    /// `f` runs on a worker of a pool of the requested size, and a parallel operation inside it
    /// runs on that pool's workers only.
    #[test]
    fn work_runs_on_the_pools_workers() {
        let caller = std::thread::current().id();
        let (index, threads, thread, workers) = run_on_worker_pool(Some(3), || {
            let workers: BTreeSet<usize> = (0..256)
                .into_par_iter()
                .map(|_| rayon::current_thread_index().expect("a worker of the pool"))
                .collect();
            let thread = std::thread::current();
            (
                rayon::current_thread_index(),
                rayon::current_num_threads(),
                (thread.id(), thread.name().map(str::to_owned)),
                workers,
            )
        })
        .unwrap();
        assert!(index.is_some_and(|i| i < 3), "{index:?}");
        assert_eq!(threads, 3);
        assert_ne!(thread.0, caller);
        assert!(thread.1.is_some_and(|n| n.starts_with("peft-worker-")));
        assert!(workers.iter().all(|&i| i < 3), "{workers:?}");
    }

    /// Uses at least `frames` KiB of stack.
    fn deep(frames: u64) -> u64 {
        let frame = std::hint::black_box([frames as u8; 1024]);
        if frames == 0 {
            0
        } else {
            deep(frames - 1) + u64::from(frame[1023] == frames as u8)
        }
    }

    /// A worker has the stack of a main thread: 3 MiB of frames, which Rayon's default 2 MiB
    /// stack would overflow, fit.
    #[test]
    fn workers_have_a_main_threads_stack() {
        let frames = 3 * 1024;
        assert_eq!(
            run_on_worker_pool(Some(1), move || deep(frames)).unwrap(),
            frames
        );
    }
}
