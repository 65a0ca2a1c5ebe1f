//! Tuning of the process's memory allocator for training on the CPU.

/// Makes glibc keep freed blocks in its heap, for the next training step to reuse, instead of
/// returning them to the OS. Every step allocates and frees the same few GiB of activations,
/// and each block the OS takes back comes back as fresh pages that the kernel must fault in and
/// zero: before this, a sixth of a SmolLM2 training step on the CPU went to clearing pages.
///
/// Call it first thing in `main`, before any thread (Rayon's included) exists. It sets:
/// * no trimming of the heap's top (`M_TRIM_THRESHOLD`), and a 256 MiB pad when it grows. The
///   threshold is `mallopt`'s `int` −1, which glibc stores as a `size_t`: the largest size, so
///   never. The largest positive `int`, 2 GiB, was used before and was not enough: after a
///   step freed its activations, the free top of the heap sometimes exceeded 2 GiB, glibc handed
///   it back (one `brk` shrink of 2.2 GiB, seen with `strace -e brk`), and growing the heap
///   back faulted and zeroed all of it again (about 580 k page faults);
/// * no `mmap` for large blocks (`M_MMAP_MAX = 0`): glibc's mmap threshold tops out at 32 MiB,
///   and the LM head's `[tokens, vocab]` logits and their softmax and gradient buffers are about
///   200 MiB each at batch 8 × 128, so with the threshold alone each was still mapped and
///   unmapped every step;
/// * one arena (`M_ARENA_MAX = 1`): without it, a block too large for a worker thread's arena
///   took a fallback that left the setting above without effect in some runs.
///
/// Measured (`peft bench train --steps 3 --warmup 1`, SmolLM2-135M, Flex, 2 cores; release
/// builds before and after, alternated): prompt tuning 8.1–8.6 s → 6.0–6.5 s a step, page faults
/// 2.34 M → 0.80 M, peak RSS 2856 → 3022 MiB (dated records without a raw log:
/// `docs/measured/history-benchmarks-2026-11-28-page-faults.md` and
/// `docs/measured/history-benchmarks-2026-12-03-heap-trim.md`). The cost is memory that
/// is never handed back to the OS while the process runs.
///
/// Does nothing outside Linux with glibc.
pub fn tune_allocator_for_training() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters; glibc takes its own lock.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}
