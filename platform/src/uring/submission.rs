//! A worker's ring: queued operations, one `io_uring_enter` per turn, and completions routed to
//! whoever waits for them.
//!
//! Every operation gets a slot whose key is its `user_data`. A one-shot operation's slot keeps
//! what the kernel reads or writes (a buffer, an address) until its completion arrives, even if
//! the future that waited for it was dropped (the operation is then cancelled, and its slot
//! freed when the cancellation completes). Multishot operations (receive, accept) feed the state
//! of the socket they serve, which outlives them the same way.

use std::{
    cell::RefCell,
    io,
    os::fd::RawFd,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::{
    buffers::UringBuffer, executor::Slots, listener::AcceptState, stream::RecvState, with_worker,
};

/// Submission queue entries per ring: enough for a turn's operations; a fuller queue is
/// submitted early.
pub(super) const SUBMISSION_ENTRIES: u32 = 256;

/// Completion queue entries: multishot receives can post many completions per turn.
pub(super) const COMPLETION_ENTRIES: u32 = 4096;

/// `IORING_ENTER_GETEVENTS`: wait for (or, with deferred task work, post) completions.
const ENTER_GETEVENTS: u32 = 1;

/// What an operation's slot keeps alive for the kernel until it completes.
pub(super) enum Hold {
    Nothing,
    Buffer(UringBuffer),
    Bytes(Box<[u8]>),
    // Read by the kernel only.
    #[allow(dead_code)]
    Address(Box<socket2::SockAddr>),
}

enum Slot {
    /// A one-shot operation a future waits for.
    Single {
        result: Option<i32>,
        waker: Option<Waker>,
        hold: Hold,
        /// Its future was dropped: the completion only frees the slot.
        abandoned: bool,
    },
    /// A multishot receive feeding a stream, from buffer group `.1`.
    Recv(Rc<RecvState>, u16),
    /// A multishot accept feeding a listener.
    Accept(Rc<AcceptState>),
    /// The read kept pending on the executor's eventfd.
    RemoteWake,
    /// A cancellation, whose own completion says nothing anyone waits for.
    Ignored,
}

/// The ring and its in-flight operations.
pub(super) struct Submission {
    ring: RefCell<IoUring>,
    slots: RefCell<Slots<Slot>>,
    /// The eventfd's counter is read into this; boxed for a stable address.
    wake_counter: RefCell<Box<u64>>,
    /// The kernel runs completion work only when asked (`DEFER_TASKRUN`).
    pub(super) deferred: bool,
}

/// How the ring was set up, for the start line and the probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingSetup {
    /// `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` (Linux 6.1+).
    SingleIssuerDeferred,
    /// `IORING_SETUP_SINGLE_ISSUER` alone (Linux 6.0).
    SingleIssuer,
    /// No setup flags.
    Plain,
}

impl RingSetup {
    /// Its name for logs.
    pub fn describe(self) -> &'static str {
        match self {
            Self::SingleIssuerDeferred => "single issuer, deferred task work",
            Self::SingleIssuer => "single issuer",
            Self::Plain => "default setup",
        }
    }
}

/// Builds a ring with the best setup this kernel takes.
pub(super) fn build_ring(entries: u32) -> io::Result<(IoUring, RingSetup)> {
    let mut last = None;
    for setup in [
        RingSetup::SingleIssuerDeferred,
        RingSetup::SingleIssuer,
        RingSetup::Plain,
    ] {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(COMPLETION_ENTRIES).setup_clamp();
        match setup {
            RingSetup::SingleIssuerDeferred => {
                builder.setup_single_issuer().setup_defer_taskrun();
            }
            RingSetup::SingleIssuer => {
                builder.setup_single_issuer();
            }
            RingSetup::Plain => {}
        }
        match builder.build(entries) {
            Ok(ring) => return Ok((ring, setup)),
            // An older kernel rejects flags it does not know; anything else is final.
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => last = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("io_uring setup failed")))
}

impl Submission {
    pub(super) fn new(ring: IoUring, setup: RingSetup) -> Self {
        Self {
            ring: RefCell::new(ring),
            slots: RefCell::new(Slots::default()),
            wake_counter: RefCell::new(Box::new(0)),
            deferred: setup == RingSetup::SingleIssuerDeferred,
        }
    }

    /// Runs `f` with the ring's submitter (registrations).
    pub(super) fn with_submitter<T>(&self, f: impl FnOnce(io_uring::Submitter<'_>) -> T) -> T {
        f(self.ring.borrow().submitter())
    }

    /// Queues `entry` (its `user_data` is set here) for the next turn's submission.
    fn push(&self, entry: squeue::Entry, key: usize) {
        let entry = entry.user_data(key as u64);
        let mut ring = self.ring.borrow_mut();
        loop {
            // Safety: every buffer or address `entry` points at is kept alive by its slot (or
            // by the stream or listener state a multishot slot holds) until its completion.
            if unsafe { ring.submission().push(&entry) }.is_ok() {
                return;
            }
            // Full: submit what is queued, without waiting, and try again.
            if let Err(error) = ring.submit() {
                if !is_transient(&error) {
                    tracing::error!(%error, "io_uring submission failed");
                    return;
                }
            }
        }
    }

    /// Queues a one-shot operation; the future completes with its result.
    pub(super) fn single(&self, entry: squeue::Entry, hold: Hold) -> Completion {
        let key = self.slots.borrow_mut().insert(Slot::Single {
            result: None,
            waker: None,
            hold,
            abandoned: false,
        });
        self.push(entry, key);
        Completion { key: Some(key) }
    }

    /// Queues a multishot receive for `state`; returns its key (to cancel it).
    pub(super) fn recv_multishot(&self, state: &Rc<RecvState>, fd: RawFd, group: u16) -> usize {
        let key = self
            .slots
            .borrow_mut()
            .insert(Slot::Recv(Rc::clone(state), group));
        self.push(opcode::RecvMulti::new(types::Fd(fd), group).build(), key);
        key
    }

    /// Queues a multishot accept for `state`; returns its key.
    pub(super) fn accept_multishot(&self, state: &Rc<AcceptState>, fd: RawFd) -> usize {
        let key = self
            .slots
            .borrow_mut()
            .insert(Slot::Accept(Rc::clone(state)));
        let entry = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
            .build();
        self.push(entry, key);
        key
    }

    /// Asks the kernel to cancel the operation `key`; its own completion reports how.
    pub(super) fn cancel(&self, key: usize) {
        let cancel = self.slots.borrow_mut().insert(Slot::Ignored);
        self.push(opcode::AsyncCancel::new(key as u64).build(), cancel);
    }

    /// Keeps a read pending on the executor's eventfd, which remote wakes write to.
    pub(super) fn arm_remote_wake(&self, eventfd: RawFd) {
        let key = self.slots.borrow_mut().insert(Slot::RemoteWake);
        let counter: *mut u64 = &mut **self.wake_counter.borrow_mut();
        self.push(
            opcode::Read::new(types::Fd(eventfd), counter.cast(), 8).build(),
            key,
        );
    }

    /// One turn: submits what is queued and, when `wait`, blocks until something completes
    /// (one `io_uring_enter` either way); then routes every completion. Returns whether the
    /// eventfd fired (remote wakes are waiting).
    pub(super) fn turn(&self, wait: bool) -> io::Result<bool> {
        {
            let mut ring = self.ring.borrow_mut();
            let queued = ring.submission().len();
            // Without deferred task work, completions may already be posted: a busy turn with
            // nothing to submit then costs no system call at all.
            let skip = !wait && queued == 0 && !self.deferred;
            if !skip {
                // Safety: no argument is passed; the count is the queue's own.
                let entered = unsafe {
                    ring.submitter().enter::<libc::sigset_t>(
                        queued as u32,
                        u32::from(wait),
                        ENTER_GETEVENTS,
                        None,
                    )
                };
                match entered {
                    Ok(_) => {}
                    Err(error) if is_transient(&error) => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(self.reap())
    }

    /// Routes every posted completion.
    fn reap(&self) -> bool {
        let mut remote = false;
        loop {
            let batch: Vec<(usize, i32, u32)> = {
                let mut ring = self.ring.borrow_mut();
                ring.completion()
                    .take(256)
                    .map(|cqe| (cqe.user_data() as usize, cqe.result(), cqe.flags()))
                    .collect()
            };
            if batch.is_empty() {
                return remote;
            }
            for (key, result, flags) in batch {
                remote |= self.complete(key, result, flags);
            }
        }
    }

    fn complete(&self, key: usize, result: i32, flags: u32) -> bool {
        let mut slots = self.slots.borrow_mut();
        let more = cqueue::more(flags);
        let Some(slot) = slots.get_mut(key) else {
            return false;
        };
        match slot {
            Slot::Single {
                result: done,
                waker,
                abandoned,
                ..
            } => {
                if *abandoned {
                    slots.remove(key);
                } else {
                    *done = Some(result);
                    let waker = waker.take();
                    drop(slots);
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                }
                false
            }
            Slot::Recv(state, group) => {
                let (state, group) = (Rc::clone(state), *group);
                if !more {
                    slots.remove(key);
                }
                drop(slots);
                state.on_completion(key, group, result, flags, more);
                false
            }
            Slot::Accept(state) => {
                let state = Rc::clone(state);
                if !more {
                    slots.remove(key);
                }
                drop(slots);
                state.on_completion(result, more);
                false
            }
            Slot::RemoteWake => {
                slots.remove(key);
                true
            }
            Slot::Ignored => {
                slots.remove(key);
                false
            }
        }
    }

    /// Operations in flight (for the tests that check everything is returned).
    #[cfg(test)]
    pub(super) fn in_flight(&self) -> usize {
        self.slots.borrow().len()
    }

    /// Frees the slots after the ring is closed (the kernel then holds none of their memory).
    pub(super) fn close(self) {
        let Self { ring, slots, .. } = self;
        drop(ring);
        drop(slots);
    }
}

fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
    )
}

/// The completion of a one-shot operation: its result (a count, or `-errno`) and what its
/// slot held.
pub(super) struct Completion {
    key: Option<usize>,
}

impl std::future::Future for Completion {
    type Output = (i32, Hold);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(i32, Hold)> {
        let Some(key) = self.key else {
            panic!("a ring completion polled after it completed");
        };
        let ready = with_worker(|worker| {
            let mut slots = worker.submission.slots.borrow_mut();
            let Some(Slot::Single { result, waker, .. }) = slots.get_mut(key) else {
                unreachable!("a one-shot operation's slot outlives its future");
            };
            if result.is_none() {
                match waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                return None;
            }
            let Some(Slot::Single { result, hold, .. }) = slots.remove(key) else {
                unreachable!()
            };
            result.map(|result| (result, hold))
        });
        match ready {
            Some(done) => {
                self.key = None;
                Poll::Ready(done)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let Some(key) = self.key else {
            return;
        };
        // Dropped in flight: the slot keeps its memory until the operation ends, which the
        // cancellation hastens.
        with_worker(|worker| {
            let cancel = {
                let mut slots = worker.submission.slots.borrow_mut();
                match slots.get_mut(key) {
                    Some(Slot::Single {
                        result: Some(_), ..
                    }) => {
                        slots.remove(key);
                        false
                    }
                    Some(Slot::Single {
                        abandoned, waker, ..
                    }) => {
                        *abandoned = true;
                        *waker = None;
                        true
                    }
                    _ => false,
                }
            };
            if cancel {
                worker.submission.cancel(key);
            }
        });
    }
}

/// `-errno` from a completion as an error.
pub(super) fn errno(result: i32) -> io::Error {
    io::Error::from_raw_os_error(-result)
}
