//! Zero-copy relaying: `splice(2)` from one socket into a pipe, and from the pipe into the other.
//!
//! Why: a copying relay moves every byte across the user/kernel boundary twice (a read into a
//! buffer, a write out of it). With splice the kernel hands the received pages to the pipe and
//! from there to the sending socket by reference, so a relayed byte is never copied by the
//! proxy. On loopback bulk transfers this halves the proxy's CPU per byte (see the README's
//! performance section for the numbers).
//!
//! Why plain non-blocking syscalls after readiness, on the io_uring backend too: the kernel never
//! runs an `IORING_OP_SPLICE` inline; `io_splice` answers -EAGAIN to a non-blocking issue, so
//! every splice submitted to a ring is handed to an io-wq kernel thread, a thread switch per
//! chunk on a two-core machine. A readiness wait followed by a `splice(2)` that completes at once
//! costs one syscall per chunk and side.
//!
//! The pipe is the chunk: the relay splices at most one chunk into an empty pipe, asks the
//! scheduler for a grant of exactly that many bytes, then splices the pipe empty into the other
//! socket. Pipes come from a small per-worker [`PipePool`] and go back to it only when empty;
//! an idle tunnel holds none. Every pool draws its pipes' capacity from the process's one
//! [`PipeBudget`], so that fyntr never takes the user's whole allowance of pipe pages. Where pipes
//! cannot be had (not Linux, the pool or the budget is exhausted, or the process is out of
//! descriptors) the relay copies through a buffer instead.

use std::{
    cell::{Cell, RefCell},
    io,
    ops::{Deref, DerefMut},
    rc::Rc,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::PipeBudget;

#[cfg(target_os = "linux")]
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Pipes kept open for reuse per worker; beyond them a finished chunk closes its pipe.
const KEEP_FREE: usize = 16;

/// What a new pipe holds on Linux (16 pages).
const DEFAULT_PIPE_CAPACITY: usize = 64 * 1024;

/// A kernel pipe used as one relay chunk.
pub struct Pipe {
    #[cfg(target_os = "linux")]
    read_end: OwnedFd,
    #[cfg(target_os = "linux")]
    write_end: OwnedFd,
    /// Bytes spliced in and not yet spliced out.
    held: usize,
    /// How many bytes the pipe holds at most.
    capacity: usize,
    /// What the kernel sized the pipe to (at least `capacity`): what it counts against the
    /// user's pipe pages, and so what the pipe takes from the [`PipeBudget`].
    size: usize,
}

impl Pipe {
    /// Bytes the pipe holds now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// The most one chunk may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    #[cfg(target_os = "linux")]
    fn open(wanted_capacity: usize) -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // Safety: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A new pipe holds 64 KiB (16 pages); only bigger chunks need resizing. The kernel may
        // give less (a user over pipe-user-pages-soft gets two pages, and may not grow them):
        // the capacity bounds a chunk, and the pool decides whether so small a pipe is worth
        // splicing through (see `PipePool::new`).
        let fd = write_end.as_raw_fd();
        let mut reported = -1;
        if wanted_capacity > DEFAULT_PIPE_CAPACITY {
            let wanted = libc::c_int::try_from(wanted_capacity).unwrap_or(libc::c_int::MAX);
            // Safety: fcntl on an open descriptor. It fails when the kernel refuses a bigger
            // pipe (above pipe-max-size, or the user is over its pipe pages).
            reported = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, wanted) };
        }
        if reported < 0 {
            // Safety: fcntl on an open descriptor.
            reported = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
        }
        let size = usize::try_from(reported).unwrap_or(DEFAULT_PIPE_CAPACITY);
        Ok(Self {
            read_end,
            write_end,
            held: 0,
            capacity: size.min(wanted_capacity),
            size,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn open(_wanted_capacity: usize) -> io::Result<Self> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "splice is Linux-only",
        ))
    }

    /// One non-blocking `splice` of up to `max` bytes from `socket` into this (empty) pipe.
    /// `Ok(0)` is EOF; `WouldBlock` means the socket has nothing to read now.
    #[cfg(target_os = "linux")]
    pub(crate) fn fill_from(&mut self, socket: RawFd, max: usize) -> io::Result<usize> {
        debug_assert_eq!(self.held, 0, "a pipe carries one chunk at a time");
        let len = max.min(self.capacity).max(1);
        let moved = splice(socket, self.write_end.as_raw_fd(), len)?;
        self.held += moved;
        Ok(moved)
    }

    /// Copies a prefix of `bytes` into this pipe with one non-blocking `write`; returns how
    /// many went in. For bytes a backend already received into its own memory.
    #[cfg(target_os = "linux")]
    pub(crate) fn fill_with(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let room = self.capacity.saturating_sub(self.held).min(bytes.len());
        // Safety: `bytes` is valid for `room` bytes; the write end is open.
        let written =
            unsafe { libc::write(self.write_end.as_raw_fd(), bytes.as_ptr().cast(), room) };
        let written = usize::try_from(written).map_err(|_| io::Error::last_os_error())?;
        self.held += written;
        Ok(written)
    }

    /// One non-blocking `splice` of what the pipe holds into `socket`; returns the bytes moved.
    #[cfg(target_os = "linux")]
    pub(crate) fn drain_into(&mut self, socket: RawFd) -> io::Result<usize> {
        let moved = splice(self.read_end.as_raw_fd(), socket, self.held)?;
        if moved == 0 && self.held > 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "peer accepts no data",
            ));
        }
        self.held -= moved;
        Ok(moved)
    }
}

#[cfg(target_os = "linux")]
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // Safety: both descriptors are open for the duration of the call; null offsets are required
    // for sockets and pipes.
    let moved = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(moved).map_err(|_| io::Error::last_os_error())
}

/// How long a pool copies before it tries a new pipe again, after the kernel gave it one smaller
/// than a copy buffer.
const SMALL_PIPE_BACKOFF: Duration = Duration::from_secs(1);

/// Whether this process has said that its pipes come back too small (once is enough).
static TOLD_PIPES_TOO_SMALL: AtomicBool = AtomicBool::new(false);

struct PoolInner {
    capacity: usize,
    /// A pipe smaller than this (one copy buffer) moves less per system call than a copy does.
    smallest_useful: usize,
    max_pipes: usize,
    budget: PipeBudget,
    /// Until then, the kernel's new pipes were too small: copy.
    too_small_until: Cell<Option<Instant>>,
    open: Cell<usize>,
    free: RefCell<Vec<Pipe>>,
    /// Pipes could not be created at all (not Linux); stop trying.
    unsupported: Cell<bool>,
}

impl PoolInner {
    /// Closes `pipe`, then gives its size back: in that order, so that the workers' pipes never
    /// hold more than the budget, even for a moment.
    fn close(&self, pipe: Pipe) {
        let size = pipe.size;
        drop(pipe);
        self.open.set(self.open.get() - 1);
        self.budget.give_back(size);
    }
}

/// What the kernel makes of a pipe of `capacity` bytes: at least the default, rounded up to a
/// power of two of pages (`round_pipe_size`).
fn kernel_pipe_size(capacity: usize) -> usize {
    capacity.max(DEFAULT_PIPE_CAPACITY).next_power_of_two()
}

/// One worker's pipes. Never waits: when no pipe can be had, the caller copies instead.
#[derive(Clone)]
pub struct PipePool {
    inner: Rc<PoolInner>,
}

impl PipePool {
    /// A pool of at most `max_pipes` open pipes (two descriptors each) of `capacity` bytes,
    /// whose sizes are taken from `budget`. `max_pipes == 0` disables splicing.
    ///
    /// Where the kernel gives a new pipe less than `smallest_useful` bytes (the copy buffer's
    /// size), the pipe is closed and the pool copies for [`SMALL_PIPE_BACKOFF`]: Linux gives an
    /// unprivileged user that is over `fs.pipe-user-pages-soft` pipes of two pages, and
    /// splicing 8 KiB at a time cost four times the CPU of copying 64 KiB (load benchmark as
    /// user `nobody` over the limit: bulk 0.22 of direct at 1.16 s per GB).
    pub fn new(
        capacity: usize,
        smallest_useful: usize,
        max_pipes: usize,
        budget: PipeBudget,
    ) -> Self {
        Self {
            inner: Rc::new(PoolInner {
                capacity: capacity.max(1),
                smallest_useful,
                max_pipes,
                budget,
                too_small_until: Cell::new(None),
                open: Cell::new(0),
                free: RefCell::new(Vec::new()),
                unsupported: Cell::new(!cfg!(target_os = "linux")),
            }),
        }
    }

    /// An empty pipe, or `None` when splicing is unavailable right now.
    pub fn take(&self) -> Option<PooledPipe> {
        let inner = &self.inner;
        if let Some(pipe) = inner.free.borrow_mut().pop() {
            return Some(self.wrap(pipe));
        }
        if inner.unsupported.get() || inner.open.get() >= inner.max_pipes {
            return None;
        }
        if let Some(until) = inner.too_small_until.get() {
            if Instant::now() < until {
                return None;
            }
            inner.too_small_until.set(None);
        }
        // Taken before the pipe exists, for the size asked; what the kernel did not give back
        // is returned once the pipe is open.
        let reserved = kernel_pipe_size(inner.capacity);
        if !inner.budget.take(reserved) {
            return None;
        }
        match Pipe::open(inner.capacity) {
            Ok(pipe) => {
                inner.open.set(inner.open.get() + 1);
                // Settle the reservation on the size the kernel gave.
                let settled = match pipe.size.checked_sub(reserved) {
                    None | Some(0) => {
                        inner.budget.give_back(reserved - pipe.size);
                        true
                    }
                    // Bigger than asked (pages larger than 4 KiB make bigger default pipes).
                    Some(extra) => inner.budget.take(extra),
                };
                if !settled {
                    // Beyond the budget: close it, giving back exactly what was taken.
                    let mut pipe = pipe;
                    pipe.size = reserved;
                    inner.close(pipe);
                    return None;
                }
                if pipe.capacity < inner.smallest_useful {
                    let capacity = pipe.capacity;
                    inner.close(pipe);
                    inner
                        .too_small_until
                        .set(Some(Instant::now() + SMALL_PIPE_BACKOFF));
                    if !TOLD_PIPES_TOO_SMALL.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            pipe_bytes = capacity,
                            "new pipes come with only {capacity} bytes (is this user over \
                             fs.pipe-user-pages-soft?): copying chunks instead of splicing \
                             them, and trying a new pipe again every second"
                        );
                    }
                    return None;
                }
                Some(self.wrap(pipe))
            }
            Err(error) => {
                inner.budget.give_back(reserved);
                if error.kind() == io::ErrorKind::Unsupported {
                    inner.unsupported.set(true);
                }
                // Out of descriptors: copy this chunk; the next one tries again.
                None
            }
        }
    }

    /// Closes the pipes kept for reuse (say, when the worker has no tunnels left).
    pub fn close_free(&self) {
        let closed = std::mem::take(&mut *self.inner.free.borrow_mut());
        for pipe in closed {
            self.inner.close(pipe);
        }
    }

    /// Pipes open now (in use or kept free).
    pub fn open(&self) -> usize {
        self.inner.open.get()
    }

    fn wrap(&self, pipe: Pipe) -> PooledPipe {
        PooledPipe {
            pipe: Some(pipe),
            pool: Rc::clone(&self.inner),
        }
    }
}

/// A pipe on loan from a [`PipePool`]: back to the pool when dropped empty, closed otherwise
/// (bytes left in it belong to a tunnel that failed).
pub struct PooledPipe {
    pipe: Option<Pipe>,
    pool: Rc<PoolInner>,
}

impl Deref for PooledPipe {
    type Target = Pipe;

    fn deref(&self) -> &Pipe {
        self.pipe.as_ref().expect("present until dropped")
    }
}

impl DerefMut for PooledPipe {
    fn deref_mut(&mut self) -> &mut Pipe {
        self.pipe.as_mut().expect("present until dropped")
    }
}

impl Drop for PooledPipe {
    fn drop(&mut self) {
        let Some(pipe) = self.pipe.take() else { return };
        let mut free = self.pool.free.borrow_mut();
        // Spares are kept only while the budget is plentiful: otherwise they would hold the
        // capacity that other workers' flows need.
        if pipe.held == 0 && free.len() < KEEP_FREE && !self.pool.budget.is_scarce() {
            free.push(pipe);
        } else {
            drop(free);
            self.pool.close(pipe);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
        os::fd::AsRawFd,
    };

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.set_nonblocking(true).unwrap();
        server.set_nonblocking(true).unwrap();
        (client, server)
    }

    #[test]
    fn a_chunk_moves_from_one_socket_to_another_unchanged() {
        let (mut a_client, a_server) = pair();
        let (b_client, mut b_server) = pair();
        let pool = PipePool::new(64 * 1024, 4096, 4, PipeBudget::unlimited());
        let mut pipe = pool.take().expect("pipes work on Linux");
        assert!(matches!(
            pipe.fill_from(a_server.as_raw_fd(), 1024),
            Err(ref e) if e.kind() == io::ErrorKind::WouldBlock
        ));
        let message: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        a_client.write_all(&message).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let moved = pipe.fill_from(a_server.as_raw_fd(), 4096).unwrap();
        assert_eq!(moved, 4096);
        assert_eq!(pipe.held(), 4096);
        while pipe.held() > 0 {
            pipe.drain_into(b_client.as_raw_fd()).unwrap();
        }
        let mut received = vec![0u8; 4096];
        b_server.set_nonblocking(false).unwrap();
        b_server.read_exact(&mut received).unwrap();
        assert_eq!(received, message[..4096]);
        drop(a_client);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(pipe.fill_from(a_server.as_raw_fd(), 4096).unwrap(), 904);
        pipe.drain_into(b_client.as_raw_fd()).unwrap();
        assert_eq!(
            pipe.fill_from(a_server.as_raw_fd(), 4096).unwrap(),
            0,
            "EOF"
        );
    }

    #[test]
    fn the_pool_is_bounded_and_keeps_only_empty_pipes() {
        let pool = PipePool::new(64 * 1024, 4096, 2, PipeBudget::unlimited());
        let first = pool.take().unwrap();
        let second = pool.take().unwrap();
        assert!(pool.take().is_none(), "bounded: the caller copies instead");
        drop(first);
        assert_eq!(pool.open(), 2);
        let mut reused = pool.take().unwrap();
        reused.held = 10; // as if a failed tunnel left bytes behind
        drop(reused);
        assert_eq!(
            pool.open(),
            1,
            "a pipe with bytes in it is closed, not reused"
        );
        drop(second);
        assert!(pool.take().is_some());
        pool.close_free();
        assert_eq!(pool.open(), 0);
    }

    #[test]
    fn the_pools_share_one_budget_and_copy_beyond_it() {
        // Room for three pipes of 256 KiB between two workers' pools.
        let budget = PipeBudget::new(3 * 256 * 1024);
        let first_worker = PipePool::new(256 * 1024, 64 * 1024, 32, budget.clone());
        let second_worker = PipePool::new(256 * 1024, 64 * 1024, 32, budget.clone());
        let a = first_worker.take().expect("within the budget");
        assert_eq!(a.capacity(), 256 * 1024);
        let b = first_worker.take().expect("within the budget");
        let c = second_worker.take().expect("within the budget");
        assert!(
            second_worker.take().is_none() && first_worker.take().is_none(),
            "the budget is spent: both workers copy"
        );
        // The budget is scarce, so a returned pipe is closed rather than kept spare, and its
        // capacity is there for the other worker.
        drop(a);
        assert_eq!(first_worker.open(), 1, "closed, not kept");
        let d = second_worker.take().expect("the closed pipe's capacity");
        drop((b, c, d));
        first_worker.close_free();
        second_worker.close_free();
        assert_eq!(first_worker.open() + second_worker.open(), 0);
        assert!(
            budget.take(3 * 256 * 1024),
            "every pipe closed gave its size back"
        );
    }

    #[test]
    fn a_small_pipe_takes_the_kernels_default_size_from_the_budget() {
        // A 4 KiB chunk still costs the kernel's default 64 KiB pipe.
        let budget = PipeBudget::new(128 * 1024);
        let pool = PipePool::new(4096, 4096, 32, budget.clone());
        let first = pool.take().expect("within the budget");
        assert_eq!(first.capacity(), 4096);
        let _second = pool.take().expect("within the budget");
        assert!(
            pool.take().is_none(),
            "two default-sized pipes spend 128 KiB"
        );
        drop(first);
        assert!(pool.take().is_some());
    }

    #[test]
    fn a_pipe_smaller_than_a_copy_buffer_is_closed_and_the_pool_copies_for_a_while() {
        // Root always gets the pipes it asks for, so a copy buffer bigger than the chunk stands
        // in for a kernel that hands out small ones.
        let budget = PipeBudget::new(1 << 20);
        let pool = PipePool::new(64 * 1024, 128 * 1024, 4, budget.clone());
        assert!(
            pool.take().is_none(),
            "a 64 KiB pipe is less than a 128 KiB copy"
        );
        assert_eq!(pool.open(), 0, "and is closed at once");
        assert!(budget.take(1 << 20), "its size went back to the budget");
        budget.give_back(1 << 20);
        let until = pool.inner.too_small_until.get().expect("backing off");
        assert!(until > Instant::now() + SMALL_PIPE_BACKOFF / 2);
        // Once the back-off has passed, the pool tries a new pipe again.
        pool.inner.too_small_until.set(Some(Instant::now()));
        assert!(pool.take().is_none());
        let again = pool.inner.too_small_until.get().expect("backing off again");
        assert!(again > until, "a second small pipe starts a new back-off");
    }
}
