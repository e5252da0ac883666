//! The Tokio runtime that keeps time and resolves names for every io_uring worker.
//!
//! The core sleeps, times out and resolves names through Tokio. A worker's thread enters this
//! runtime's handle: its timers live on the wheel this runtime's one thread drives, and its
//! resolutions run on this runtime's blocking pool. Both wake the worker through its waker,
//! which from another thread means one eventfd write (see [`super::executor`]). The runtime is
//! made once per process, on first use, and lives as long as the process.

use std::{io, sync::OnceLock};

static HANDLE: OnceLock<tokio::runtime::Handle> = OnceLock::new();

/// The shared runtime's handle, starting it on first use.
pub(super) fn handle() -> io::Result<tokio::runtime::Handle> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .thread_name("fyntr-timers")
        .build()?;
    let handle = runtime.handle().clone();
    if HANDLE.set(handle.clone()).is_err() {
        // Another worker set started one first; this one was never driven.
        return Ok(HANDLE.get().cloned().unwrap_or(handle));
    }
    std::thread::Builder::new()
        .name("fyntr-timers".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}
