//! A global allocator that counts: heap bytes live, their peak, bytes allocated in all, and the
//! largest single request. A test binary (or a tool) installs it with
//! `#[global_allocator] static A: CountingAllocator = CountingAllocator;` and reads
//! [`AllocStats`] around the code it measures. The counts are process-wide: measure with one
//! thing running.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
};

/// The system allocator, with counters. The only `unsafe` of the test support.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static TOTAL: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
    TOTAL.fetch_add(bytes, Ordering::Relaxed);
    LARGEST.fetch_max(bytes, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    LIVE.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every method forwards its arguments unchanged to the system allocator and returns
// what it returned; the counters are updated beside it and never touch the memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `layout` is the system allocator's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller guarantees `new_size`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

/// A reading of the counters of [`CountingAllocator`] (all zero when it is not installed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocStats {
    /// Bytes allocated and not yet freed.
    pub live: usize,
    /// Most bytes live at once since the last [`AllocStats::reset_peak`].
    pub peak: usize,
    /// Bytes allocated in all (a reallocation counts its new size).
    pub total: usize,
    /// Largest single request since the last [`AllocStats::reset_peak`].
    pub largest: usize,
}

impl AllocStats {
    /// The counters now.
    pub fn now() -> Self {
        Self {
            live: LIVE.load(Ordering::Relaxed),
            peak: PEAK.load(Ordering::Relaxed),
            total: TOTAL.load(Ordering::Relaxed),
            largest: LARGEST.load(Ordering::Relaxed),
        }
    }

    /// Starts a new peak (at the bytes live now) and a new largest request; returns the
    /// counters after the reset.
    pub fn reset_peak() -> Self {
        PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
        LARGEST.store(0, Ordering::Relaxed);
        Self::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOC: CountingAllocator = CountingAllocator;

    #[test]
    fn counts_live_peak_total_and_largest_bytes() {
        // Other tests of this binary may allocate meanwhile: assert lower bounds only, on a
        // block far larger than anything they allocate.
        const MB: usize = 1 << 20;
        let start = AllocStats::reset_peak();
        let mut v = vec![0u8; 8 * MB];
        let held = AllocStats::now();
        assert!(
            held.live >= start.live + 8 * MB - MB,
            "{start:?} -> {held:?}"
        );
        assert!(held.largest >= 8 * MB);
        v.resize(16 * MB, 1);
        let grown = AllocStats::now();
        assert!(
            grown.total >= start.total + 24 * MB,
            "{start:?} -> {grown:?}"
        );
        assert!(grown.peak >= start.live + 16 * MB - MB);
        drop(v);
        let freed = AllocStats::now();
        assert!(freed.live + 15 * MB <= grown.live, "{grown:?} -> {freed:?}");
        assert!(freed.peak >= grown.peak, "the peak stays");
    }
}
