//! Runs this process's peers of a data-parallel run: one thread per device, each joined to the
//! collective, each running the caller's work with its [`Collective`].

use std::sync::Arc;

use burn::tensor::backend::Backend;

use super::{
    Collective,
    burn_collective::{Abort, BurnCollective, Layout},
};
use crate::error::{PeftError, Result};

/// Runs `work(local, device, collective)` for each of this process's `layout.devices` peers on
/// its own thread (peer `local` on `devices[local]`) and returns the first peer's result — the
/// run's writer on node 0. Every peer first joins the collective and checks that all peers
/// agree on `settings`. When one peer fails, the others stop at their next collective call and
/// the error returned is the first failure's, naming its peer.
///
/// `B` is the backend the collective moves tensors on (the inner backend of an autodiff one).
/// `burn-collective` keeps one local server per process and backend, so a process runs one
/// data-parallel run at a time.
pub fn run_local_peers<B, T, F>(
    layout: &Layout,
    devices: &[B::Device],
    settings: &[(&str, String)],
    work: F,
) -> Result<T>
where
    B: Backend,
    T: Send,
    F: Fn(usize, &B::Device, &mut dyn Collective<B>) -> Result<T> + Sync,
{
    layout.validate()?;
    if devices.len() != layout.devices {
        return Err(PeftError::Invalid(format!(
            "{} devices given for {} peers",
            devices.len(),
            layout.devices
        )));
    }
    if layout.devices > 1 {
        // The local collective server is one per process and backend: start from a clean one
        // (a failed run may have left peers registered).
        burn::collective::reset_collective::<B>();
    }
    let abort = Arc::new(Abort::default());
    let results: Vec<Result<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(local, device)| {
                let abort = abort.clone();
                let outer = abort.clone();
                let work = &work;
                let rank = layout.rank(local);
                let thread = std::thread::Builder::new()
                    .name(format!("peer-{rank}"))
                    .spawn_scoped(scope, move || {
                        let run = || {
                            let mut collective = BurnCollective::<B>::join(
                                layout,
                                local,
                                device.clone(),
                                abort.clone(),
                                settings,
                            )?;
                            let out = match layout.threads_per_peer {
                                Some(threads) => rayon::ThreadPoolBuilder::new()
                                    .num_threads(threads.max(1))
                                    .thread_name(move |i| format!("peer-{rank}-worker-{i}"))
                                    .build()
                                    .map_err(|e| {
                                        PeftError::Training(format!(
                                            "peer {rank}: starting its thread pool: {e}"
                                        ))
                                    })?
                                    .install(|| work(local, device, &mut collective))?,
                                None => work(local, device, &mut collective)?,
                            };
                            collective.finish()?;
                            Ok(out)
                        };
                        // A panicking peer must stop the others now, not when it is joined.
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
                            .unwrap_or_else(|panic| {
                                Err(PeftError::Training(format!(
                                    "peer {rank} panicked: {}",
                                    panic_text(panic.as_ref())
                                )))
                            });
                        if let Err(e) = &result {
                            abort.raise(rank, format!("peer {rank} failed: {e}"));
                        }
                        result
                    });
                if let Err(e) = &thread {
                    outer.raise(rank, format!("starting peer {rank}: {e}"));
                }
                (rank, thread)
            })
            .collect();
        handles
            .into_iter()
            .map(|(rank, thread)| match thread {
                Ok(handle) => handle.join().unwrap_or_else(|panic| {
                    Err(PeftError::Training(format!(
                        "peer {rank} panicked: {}",
                        panic_text(panic.as_ref())
                    )))
                }),
                Err(e) => Err(PeftError::Training(format!("starting peer {rank}: {e}"))),
            })
            .collect()
    });
    let first_failure = abort.first().map(|(rank, _)| rank);
    let mut first = None;
    let mut failed = None;
    for (local, result) in results.into_iter().enumerate() {
        match result {
            Ok(out) if local == 0 => first = Some(out),
            Ok(_) => {}
            Err(e) if Some(layout.rank(local)) == first_failure => return Err(e),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    match (failed, first) {
        (Some(e), _) => Err(e),
        (None, Some(out)) => Ok(out),
        (None, None) => Err(PeftError::Training("no peer ran".into())),
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}
