//! Which implementation ran: counts of prefix-attention calls by path, kept per calling thread.
//!
//! A fused kernel that quietly falls back to the reference path gives correct numbers, so a test
//! comparing numbers alone cannot tell the two apart. Every forward and backward records here
//! which implementation computed it, and tests assert the path they meant to test.
//!
//! The counts belong to the thread that issued the call. The fusion-wrapped CubeCL backends
//! compute a call later, on their device's own thread; the queued operation carries its
//! issuer's [`Caller`] and computes on its behalf, so the count lands with the issuer.

use std::{
    cell::RefCell,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

/// Prefix-attention calls issued by the calling thread and computed so far, by implementation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathCounts {
    /// Forwards computed by fused kernels.
    pub fused_forward: u64,
    /// Backwards computed by fused kernels.
    pub fused_backward: u64,
    /// Forwards computed by the reference implementation: the unfused composition of tensor
    /// ops, the reference op of backends without kernels, or the fallback of the CubeCL
    /// backends for calls their kernels do not take.
    pub reference_forward: u64,
    /// Backwards computed by the reference op's analytic backward (the unfused path's backward
    /// is Burn's autodiff graph and is not counted).
    pub reference_backward: u64,
}

impl PathCounts {
    /// The calls counted since `earlier` (an earlier reading on the same thread).
    pub fn since(self, earlier: PathCounts) -> PathCounts {
        PathCounts {
            fused_forward: self.fused_forward - earlier.fused_forward,
            fused_backward: self.fused_backward - earlier.fused_backward,
            reference_forward: self.reference_forward - earlier.reference_forward,
            reference_backward: self.reference_backward - earlier.reference_backward,
        }
    }
}

/// One thread's counters (shared with the operations it queued).
#[derive(Debug, Default)]
struct Counters([AtomicU64; 4]);

/// The thread that issued a call, for an operation computed elsewhere to count it there.
#[derive(Debug, Clone)]
pub(crate) struct Caller(Arc<Counters>);

thread_local! {
    static OWN: Arc<Counters> = Arc::default();
    /// Set while a queued operation computes on behalf of its issuer.
    static ON_BEHALF: RefCell<Option<Arc<Counters>>> = const { RefCell::new(None) };
}

/// The calls issued by the calling thread and computed so far (see [`PathCounts`]).
pub fn path_counts() -> PathCounts {
    OWN.with(|c| {
        let n = |i: usize| c.0[i].load(Ordering::Relaxed);
        PathCounts {
            fused_forward: n(0),
            fused_backward: n(1),
            reference_forward: n(2),
            reference_backward: n(3),
        }
    })
}

/// What one call ran.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ran {
    #[cfg_attr(not(any(feature = "cube", feature = "flex")), allow(dead_code))]
    FusedForward = 0,
    #[cfg_attr(not(any(feature = "cube", feature = "flex")), allow(dead_code))]
    FusedBackward = 1,
    ReferenceForward = 2,
    ReferenceBackward = 3,
}

/// Counts one call for the thread it is computed for.
pub(crate) fn record(ran: Ran) {
    let add = |c: &Counters| c.0[ran as usize].fetch_add(1, Ordering::Relaxed);
    let redirected = ON_BEHALF.with(|b| b.borrow().as_deref().map(add).is_some());
    if !redirected {
        OWN.with(|c| add(c));
    }
}

impl Caller {
    /// The calling thread.
    #[cfg_attr(not(feature = "cube"), allow(dead_code))]
    pub(crate) fn current() -> Self {
        Self(OWN.with(Arc::clone))
    }

    /// Runs `f`, counting the calls it computes for this caller.
    #[cfg_attr(not(feature = "cube"), allow(dead_code))]
    pub(crate) fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        /// Restores the previous redirection, also when `f` panics.
        struct Restore(Option<Arc<Counters>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                ON_BEHALF.with(|b| *b.borrow_mut() = previous);
            }
        }
        let previous = ON_BEHALF.with(|b| b.borrow_mut().replace(Arc::clone(&self.0)));
        let _restore = Restore(previous);
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_computed_on_another_thread_count_for_their_caller() {
        let before = path_counts();
        record(Ran::ReferenceForward);
        let caller = Caller::current();
        std::thread::spawn(move || {
            let own = path_counts();
            caller.run(|| {
                record(Ran::FusedForward);
                record(Ran::FusedBackward);
            });
            record(Ran::ReferenceBackward);
            assert_eq!(
                path_counts().since(own),
                PathCounts {
                    reference_backward: 1,
                    ..Default::default()
                }
            );
        })
        .join()
        .unwrap();
        assert_eq!(
            path_counts().since(before),
            PathCounts {
                fused_forward: 1,
                fused_backward: 1,
                reference_forward: 1,
                reference_backward: 0,
            }
        );
    }
}
