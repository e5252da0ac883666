//! Submitting a worker's queued ring operations at once, even while the worker is busy.
//!
//! tokio-uring 0.5 pushes each operation onto the submission queue and submits the queue only
//! when its thread parks (Tokio's `on_thread_park` hook) or when the queue is full. A worker that
//! is relaying bulk data never parks: its tasks yield to each other after every chunk, and a
//! yield polls epoll without parking. So while bulk tunnels run, a new tunnel's accept, request
//! head read and 200 would wait in the queue until the worker next went idle: up to 370 ms for
//! a tunnel beside four bulk tunnels (tests/fairness.rs), where with [`submit_queued`] it takes
//! about 2 ms.
//!
//! tokio-uring does not expose its ring's descriptor or a way to submit, so each worker finds
//! its ring's descriptor when it creates the runtime (the one `anon_inode:[io_uring]` descriptor
//! that appeared), and [`submit_queued`] calls `io_uring_enter` on it whenever a busy task yields
//! to the others (`Backend::yield_to_others`, once per full relay chunk). Queued operations then
//! wait at most one chunk, and an idle worker still submits in one batch when it parks. Calling
//! it is safe alongside tokio-uring: the queue's tail is published in shared memory on every
//! push, the kernel consumes only what is published, and it all happens on the worker's own
//! thread. (Submitting after every operation instead cost one more syscall per operation on the
//! handshake path, with no gain when the worker is not busy.)

use std::{cell::Cell, collections::HashSet, io, os::fd::RawFd, sync::Mutex};

thread_local! {
    /// This worker's ring, once found.
    static RING: Cell<Option<RawFd>> = const { Cell::new(None) };
    /// When [`submit_queued`] last submitted.
    static LAST_SUBMIT: Cell<Option<std::time::Instant>> = const { Cell::new(None) };
}

/// Submitting at most this often keeps the operations queued by a round of yielding tasks
/// together in one submission, as a park would: submitting on every yield let the copying relay's
/// ring reads and writes complete in an order that favoured some flows (Jain's index of 100
/// uploads fell from 0.996 to 0.88-0.97). Short next to a tunnel's set-up time.
const SUBMIT_INTERVAL: std::time::Duration = std::time::Duration::from_micros(200);

/// Serialises runtime creation, so that each worker sees only its own new ring.
static CREATING: Mutex<()> = Mutex::new(());

/// Creates a runtime with `create` and remembers its ring for this thread.
pub(crate) fn create_runtime<R>(create: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
    let _creating = CREATING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let before = rings();
    let runtime = create()?;
    let new: Vec<RawFd> = rings().difference(&before).copied().collect();
    match new.as_slice() {
        [ring] => RING.with(|cell| cell.set(Some(*ring))),
        _ => tracing::debug!(
            "io_uring: could not tell this worker's ring apart ({} new); operations are \
             submitted when the worker parks",
            new.len()
        ),
    }
    Ok(runtime)
}

/// The io_uring descriptors open in this process.
fn rings() -> HashSet<RawFd> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:[io_uring]")
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// Submits whatever this worker's ring has queued.
pub(crate) fn submit_queued() {
    let Some(ring) = RING.with(Cell::get) else {
        return;
    };
    let now = std::time::Instant::now();
    if LAST_SUBMIT
        .with(Cell::get)
        .is_some_and(|last| now - last < SUBMIT_INTERVAL)
    {
        return;
    }
    LAST_SUBMIT.with(|cell| cell.set(Some(now)));
    // Safety: io_uring_enter on this thread's own ring with no wait and no signal mask; the
    // kernel submits at most the entries published in the queue (at most its size).
    unsafe {
        libc::syscall(
            libc::SYS_io_uring_enter,
            ring,
            crate::uring::RING_ENTRIES,
            0u32,
            0u32,
            std::ptr::null::<libc::c_void>(),
            0usize,
        );
    }
}
