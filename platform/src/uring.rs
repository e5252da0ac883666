//! The io_uring backend (Linux 5.11+): one tokio-uring runtime, ring and listener per worker.
//!
//! tokio-uring 0.5 has sharp edges this module works around (see DESIGN section 4):
//!
//! - Dropping an in-flight operation does not cancel it, so reads are only submitted once the
//!   socket is known to be readable ([`crate::Stream::readable`] waits for readiness with Tokio's
//!   `AsyncFd` and confirms it with a non-blocking `MSG_PEEK`, because epoll readiness is not
//!   cleared by reads made through the ring). A read submitted then completes at once, and an
//!   idle tunnel holds no buffer, only its readiness registration.
//! - Blocked operations are ended by `shutdown(2)` of the socket, never by dropping them.
//! - Runtimes are built with `Runtime::new` and errors are returned (`start` panics); listeners
//!   come bound from [`crate::socket`], with `SO_REUSEPORT` chosen there.
//! - Relayed data is spliced with plain non-blocking syscalls after readiness (see
//!   [`crate::splice`] for why not `IORING_OP_SPLICE`), so sockets are non-blocking, and a ring
//!   write that answers EAGAIN waits for room and carries on.
//! - Registered buffers are pinned memory counted against `RLIMIT_MEMLOCK`: each worker registers
//!   a small pool on first use and falls back to plain buffers (logged once) when registration
//!   fails or the pool is exhausted.

use std::{
    cell::{Cell, RefCell},
    future::Future,
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, BorrowedFd, RawFd},
    task::Poll,
};

use tokio::io::{unix::AsyncFd, Interest};
use tokio_uring::buf::{fixed::FixedBuf, fixed::FixedBufPool, BoundedBuf, IoBuf, IoBufMut};
use tracing::warn;

use crate::{
    balance::{Balance, Handoff, Load, WorkerShare},
    uring_flush::{create_runtime, submit_queued},
    Backend, BufferPool, HeapBuffer, HeapPool, IoBuffer, Pipe, SocketTuning, Worker,
};

/// Submission queue entries per ring: enough for every read and write a worker has in flight
/// at once between two submissions; tokio-uring submits early when it fills.
pub(crate) const RING_ENTRIES: u32 = 256;

/// Registered buffers per worker by default. They are pinned (resident) once registered, so the
/// pool is kept small, 16 x 64 KiB = 1 MiB per worker: enough for the bulk flows a worker moves
/// at once, while chunks beyond it use plain buffers.
pub const DEFAULT_FIXED_BUFFERS: usize = 16;

/// The io_uring backend.
#[derive(Clone, Copy, Debug)]
pub struct Uring {
    fixed_buffers: usize,
}

impl Uring {
    /// A backend registering up to `fixed_buffers` buffers per worker (0 = plain buffers only).
    pub fn new(fixed_buffers: usize) -> Self {
        Self { fixed_buffers }
    }
}

/// What the start-up probe found.
#[derive(Clone, Debug)]
pub struct ProbeReport {
    /// Buffer registration works (within `RLIMIT_MEMLOCK`).
    pub registered_buffers: bool,
    /// Why registration does not work, when it does not.
    pub registration_error: Option<String>,
}

/// Why io_uring cannot be used here.
#[derive(Clone, Debug)]
pub struct Unavailable {
    /// What failed, with the errno.
    pub cause: String,
    /// What the user can do about it.
    pub advice: &'static str,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.cause, self.advice)
    }
}

/// Checks that this process may use io_uring the way the backend does: ring setup, the opcodes
/// used, a tokio-uring runtime, and (optionally) buffer registration.
pub fn probe() -> Result<ProbeReport, Unavailable> {
    if let Ok(setting) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if setting.trim() == "2" {
            return Err(Unavailable {
                cause: "io_uring is disabled by the sysctl kernel.io_uring_disabled=2".into(),
                advice: "set kernel.io_uring_disabled=0, or run with --backend tokio",
            });
        }
    }
    let ring = io_uring::IoUring::new(8).map_err(|error| classify("io_uring_setup", &error))?;
    let mut supported = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut supported)
        .map_err(|error| classify("IORING_REGISTER_PROBE", &error))?;
    use io_uring::opcode;
    for (name, code) in [
        ("READ", opcode::Read::CODE),
        ("WRITE", opcode::Write::CODE),
        ("READ_FIXED", opcode::ReadFixed::CODE),
        ("WRITE_FIXED", opcode::WriteFixed::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
    ] {
        if !supported.is_supported(code) {
            return Err(Unavailable {
                cause: format!("the kernel's io_uring lacks the {name} operation"),
                advice: "io_uring needs Linux 5.11 or later; run with --backend tokio",
            });
        }
    }
    let mut page = vec![0u8; 4096];
    let iovec = libc::iovec {
        iov_base: page.as_mut_ptr().cast(),
        iov_len: page.len(),
    };
    // Safety: the buffer outlives its registration, which ends when `ring` is dropped below.
    let registration = unsafe { ring.submitter().register_buffers(&[iovec]) };
    drop(ring);
    drop(page);
    // tokio-uring builds its own ring and reactor registration; make sure that works too.
    let mut builder = tokio_uring::builder();
    builder.entries(RING_ENTRIES);
    tokio_uring::Runtime::new(&builder).map_err(|error| classify("tokio-uring runtime", &error))?;
    Ok(ProbeReport {
        registered_buffers: registration.is_ok(),
        registration_error: registration
            .err()
            .map(|error| classify("IORING_REGISTER_BUFFERS", &error).to_string()),
    })
}

fn classify(step: &str, error: &io::Error) -> Unavailable {
    let (cause, advice) = match error.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => (
            "denied (a seccomp profile such as Docker's default, or kernel.io_uring_disabled)",
            "allow io_uring in the container's seccomp profile, or run with --backend tokio",
        ),
        Some(libc::ENOSYS) => (
            "not implemented by this kernel",
            "io_uring needs Linux 5.11 or later; run with --backend tokio",
        ),
        Some(libc::ENOMEM) => (
            "out of locked memory",
            "raise RLIMIT_MEMLOCK (ulimit -l), or run with --backend tokio",
        ),
        Some(libc::EINVAL) => (
            "rejected by this kernel",
            "io_uring needs Linux 5.11 or later; run with --backend tokio",
        ),
        _ => ("failed", "run with --backend tokio"),
    };
    Unavailable {
        cause: format!("{step} {cause}: {error}"),
        advice,
    }
}

/// A worker's listener. Connections are accepted with `accept4` when the listener is readable
/// (epoll, through Tokio's reactor), not through the ring: a ring accept hands out a blocking
/// socket, which then costs an `FIONBIO` call, and each completion one more trip through the
/// worker's event loop (a submission, then epoll); `accept4` takes every pending connection
/// on one wake-up and returns it non-blocking, with the listener's `TCP_NODELAY`. On the load
/// benchmark's churn (`strace -c -f` on fyntr) a ring accept costs 27.6 system calls per tunnel
/// where `accept4` costs 24.8 (`io_uring_enter` and `epoll_wait` 1.2 each against 0.3).
///
/// A connection accepted while this worker carries more than its share goes to another worker
/// before any byte of it is read ([`crate::balance`]).
pub struct UringListener {
    inner: AsyncFd<std::net::TcpListener>,
    /// See [`crate::socket::tunes_loopback_peers`].
    tunes_loopback_peers: bool,
    share: WorkerShare,
}

/// What a listener's wait ended with.
enum Arrival {
    /// A connection from this worker's socket.
    Accepted(io::Result<(std::net::TcpStream, SocketAddr)>),
    /// A connection another worker handed over.
    HandedOver(Handoff),
}

impl UringListener {
    fn new(listener: std::net::TcpListener, share: WorkerShare) -> io::Result<Self> {
        Ok(Self {
            share,
            tunes_loopback_peers: crate::socket::tunes_loopback_peers(listener.local_addr()),
            // Safety: the AsyncFd owns the listener, whose descriptor stays open and the same
            // until the AsyncFd is dropped.
            inner: unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
                .map_err(io::Error::from)?,
        })
    }
}

impl crate::Listener for UringListener {
    type Stream = UringStream;

    async fn accept(&self) -> io::Result<(UringStream, SocketAddr)> {
        loop {
            match self.next_arrival().await {
                Arrival::HandedOver(handoff) => {
                    return self.adopt(handoff.stream, handoff.peer, handoff.load)
                }
                Arrival::Accepted(accepted) => {
                    let (stream, peer) = accepted?;
                    let kept = match self.share.keep() {
                        Some(load) => Some((stream, load)),
                        None => self.share.hand_off(stream, peer),
                    };
                    if let Some((stream, load)) = kept {
                        return self.adopt(stream, peer, load);
                    }
                }
            }
        }
    }

    fn stop(&self) {
        self.share.stop();
        // The listener becomes readable (hung up) and every accept fails with EINVAL.
        crate::socket::stop_listening(self.inner.get_ref());
    }
}

impl UringListener {
    /// Waits for a connection on this worker's socket or one handed over by another worker.
    async fn next_arrival(&self) -> Arrival {
        std::future::poll_fn(|cx| {
            // `None` once stopped: then only the socket is left, and it fails.
            if let Poll::Ready(Some(handoff)) = self.share.poll_handoff(cx) {
                return Poll::Ready(Arrival::HandedOver(handoff));
            }
            loop {
                let mut guard = match self.inner.poll_read_ready(cx) {
                    Poll::Ready(Ok(guard)) => guard,
                    Poll::Ready(Err(error)) => return Poll::Ready(Arrival::Accepted(Err(error))),
                    Poll::Pending => return Poll::Pending,
                };
                // WouldBlock clears the readiness this guard saw; polling again registers for
                // the next connection.
                if let Ok(accepted) =
                    guard.try_io(|listener| crate::socket::accept_non_blocking(listener.get_ref()))
                {
                    return Poll::Ready(Arrival::Accepted(accepted));
                }
            }
        })
        .await
    }

    /// Makes an accepted connection this worker's stream.
    fn adopt(
        &self,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        load: Load,
    ) -> io::Result<(UringStream, SocketAddr)> {
        // TCP_NODELAY came with it from the listener (Linux: ACCEPTED_INHERIT_NODELAY).
        let mut stream = UringStream::register(tokio_uring::net::TcpStream::from_std(stream))?;
        stream.load = Some(load);
        if self.tunes_loopback_peers {
            crate::socket::tune_accepted(&stream.fd(), peer);
        }
        Ok((stream, peer))
    }
}

/// A borrowed descriptor for the readiness registration; the stream owns and closes it.
struct Readiness(RawFd);

impl AsRawFd for Readiness {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A connected stream on a worker's ring.
pub struct UringStream {
    // Declared first so it is dropped (deregistered) before `inner` closes the descriptor.
    ready: AsyncFd<Readiness>,
    inner: tokio_uring::net::TcpStream,
    /// An error the readiness peek consumed (the kernel reports a socket error once); the next
    /// read returns it instead of reading EOF from the dead socket.
    pending_error: Cell<Option<io::Error>>,
    /// A ring read happened since the last splice: ring reads do not clear Tokio's readiness,
    /// so `readable` must confirm it with a peek.
    ring_reads: Cell<bool>,
    /// A client connection's place in its worker's count ([`crate::balance`]).
    load: Option<Load>,
}

impl UringStream {
    /// Registers a non-blocking socket for readiness. Non-blocking, so that a splice after
    /// stale readiness returns EAGAIN instead of blocking the worker (splice follows the
    /// socket's own flag, not SPLICE_F_NONBLOCK). Ring writes then may answer EAGAIN too;
    /// `write_all` waits for room and carries on.
    fn register(inner: tokio_uring::net::TcpStream) -> io::Result<Self> {
        // Safety: the descriptor stays open and the same for the registration's whole life:
        // `ready` is dropped before `inner`, which alone closes it.
        let ready = unsafe {
            AsyncFd::register_with_interest(
                Readiness(inner.as_raw_fd()),
                Interest::READABLE | Interest::WRITABLE,
            )
        }
        .map_err(io::Error::from)?;
        Ok(Self {
            ready,
            inner,
            pending_error: Cell::new(None),
            ring_reads: Cell::new(false),
            load: None,
        })
    }

    fn fd(&self) -> BorrowedFd<'_> {
        // Safety: the descriptor is owned by `self.inner` and open while `self` lives.
        unsafe { BorrowedFd::borrow_raw(self.inner.as_raw_fd()) }
    }

    /// One ring write of `buf[from..to]`.
    async fn write_once(
        &self,
        buf: UringBuffer,
        from: usize,
        to: usize,
    ) -> (io::Result<usize>, UringBuffer) {
        match buf {
            UringBuffer::Fixed { buf, len } => {
                let (result, slice) = self.inner.write_fixed(buf.slice(from..to)).await;
                let buf = slice.into_inner();
                (result, UringBuffer::Fixed { buf, len })
            }
            UringBuffer::Heap(buf) => {
                let (result, slice) = self.inner.write(buf.slice(from..to)).submit().await;
                (result, UringBuffer::Heap(slice.into_inner()))
            }
        }
    }

    /// Waits until the socket has room again after a write answered EAGAIN.
    async fn wait_writable(&self) -> io::Result<()> {
        loop {
            let mut guard = self.ready.writable().await?;
            // Checked after taking the guard, so only readiness seen before the check is
            // cleared and a fresh edge is never lost.
            if guard.try_io(|_| self.has_room()).is_ok() {
                return Ok(());
            }
        }
    }

    /// Whether the send buffer has room now (`WouldBlock` if not).
    fn has_room(&self) -> io::Result<()> {
        if crate::socket::writable_now(&self.inner)? {
            Ok(())
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    /// One non-blocking read `attempt` outside the ring. Tokio's readiness guard is taken before
    /// it, so that when the attempt proves the socket empty (WouldBlock, or a read for which
    /// `emptied` says so) exactly the readiness the guard saw is cleared, and an edge arriving
    /// meanwhile is kept. Without readiness recorded the attempt is made all the same: ring
    /// reads do not feed Tokio's readiness. Afterwards the readiness is exact again, whatever
    /// ring reads left stale.
    fn attempt_read(
        &self,
        attempt: impl FnOnce() -> io::Result<usize>,
        emptied: impl FnOnce(usize) -> bool,
    ) -> io::Result<usize> {
        if let Some(error) = self.pending_error.take() {
            return Err(error);
        }
        self.ring_reads.set(false);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let guard = match self.ready.poll_read_ready(&mut cx) {
            std::task::Poll::Ready(Ok(guard)) => Some(guard),
            std::task::Poll::Ready(Err(error)) => return Err(error),
            std::task::Poll::Pending => None,
        };
        let result = attempt();
        let empty = match &result {
            Ok(n) => emptied(*n),
            Err(error) => error.kind() == io::ErrorKind::WouldBlock,
        };
        if let (true, Some(mut guard)) = (empty, guard) {
            guard.clear_ready();
        }
        result
    }

    /// One non-blocking `recv` of up to `len` bytes into `ptr`, outside the ring; a short read
    /// emptied the socket (see `Stream::try_recv`).
    ///
    /// # Safety
    /// `ptr` must be writable for `len` bytes.
    unsafe fn recv_now(&self, ptr: *mut u8, len: usize) -> io::Result<usize> {
        self.attempt_read(
            // Safety: the caller's guarantee.
            || unsafe { crate::socket::recv_into(&self.inner, ptr, len) },
            |n| n > 0 && n < len,
        )
    }

    /// [`UringStream::recv_now`] into a pool buffer (see `read`).
    fn read_now(&self, buf: &mut UringBuffer) -> io::Result<usize> {
        match buf {
            UringBuffer::Fixed { buf, len } => {
                let capacity = IoBuf::bytes_total(buf);
                // Safety: the registered buffer is writable for its whole capacity.
                let read = unsafe { self.recv_now(buf.stable_mut_ptr(), capacity) };
                if let Ok(n) = read {
                    // Safety: `recv` initialised the first `n` bytes.
                    unsafe { buf.set_init(n) };
                    *len = n;
                }
                read
            }
            UringBuffer::Heap(buf) => {
                let spare = buf.spare_mut();
                // Safety: `spare` is writable for its length.
                let read = unsafe { self.recv_now(spare.as_mut_ptr(), spare.len()) };
                buf.set_len(*read.as_ref().unwrap_or(&0));
                read
            }
        }
    }

    /// Whether a read would complete now: data, EOF or an error pending (kept for `read`).
    fn has_input(&self) -> bool {
        let mut byte = 0u8;
        // Safety: a one-byte peek into a valid local buffer on an open descriptor.
        let peeked = unsafe {
            libc::recv(
                self.inner.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if peeked >= 0 {
            return true;
        }
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::WouldBlock {
            return false;
        }
        self.pending_error.set(Some(error));
        true
    }
}

impl crate::Stream for UringStream {
    type Buffer = UringBuffer;

    async fn readable(&self) -> io::Result<()> {
        if !self.ring_reads.get() {
            // Only splices read this socket, and they keep Tokio's readiness true (a splice
            // that would block clears it), so readiness needs no confirming peek.
            drop(self.ready.readable().await?);
            return Ok(());
        }
        loop {
            let mut guard = self.ready.readable().await?;
            if self.has_input() {
                return Ok(());
            }
            guard.clear_ready();
        }
    }

    async fn read(&self, mut buf: UringBuffer) -> (io::Result<usize>, UringBuffer) {
        // One direct non-blocking read first, into the same (registered) memory: the relay
        // reads after readiness, so the socket almost always has data, and a ring read would
        // complete only after the worker's next submission and one more trip through epoll
        // for its completion. In the copying relay that detour costs a third of the 100-upload
        // throughput against the Tokio backend (0.25 of direct against 0.43, load benchmark
        // with --zero-copy off). Only a read that would block goes through the ring (an error
        // a readiness check kept for this read comes back from the direct one).
        match self.read_now(&mut buf) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            done => return (done, buf),
        }
        self.ring_reads.set(true);
        match buf {
            UringBuffer::Fixed { buf, .. } => {
                let (result, buf) = self.inner.read_fixed(buf).await;
                let len = *result.as_ref().unwrap_or(&0);
                (result, UringBuffer::Fixed { buf, len })
            }
            UringBuffer::Heap(mut buf) => {
                buf.set_len(0);
                let (result, buf) = self.inner.read(buf).await;
                (result, UringBuffer::Heap(buf))
            }
        }
    }

    async fn write_all(&self, buf: UringBuffer) -> (io::Result<()>, UringBuffer) {
        let len = buf.filled().len();
        let mut buf = buf;
        // One direct non-blocking send first: the socket usually has room, and a ring write
        // would complete only after the worker's next submission and one more trip through
        // epoll for its completion (a relayed small message would pay that twice per round
        // trip). Whatever it does not take goes through the ring.
        let mut written = match crate::socket::send_now(&self.inner, buf.filled()) {
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
            Err(error) => return (Err(error), buf),
        };
        while written < len {
            let result;
            (result, buf) = self.write_once(buf, written, len).await;
            match result {
                Ok(0) => {
                    let error = io::Error::new(io::ErrorKind::WriteZero, "peer accepts no data");
                    return (Err(error), buf);
                }
                Ok(n) => written += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(error) = self.wait_writable().await {
                        return (Err(error), buf);
                    }
                }
                Err(error) => return (Err(error), buf),
            }
        }
        (Ok(()), buf)
    }

    fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // Safety: `buf` is a live, writable slice of its length.
        unsafe { self.recv_now(buf.as_mut_ptr(), buf.len()) }
    }

    async fn send_all(&self, bytes: &[u8]) -> io::Result<()> {
        crate::socket::send_all_with(
            bytes,
            |rest| crate::socket::send_now(&self.inner, rest),
            || self.wait_writable(),
        )
        .await
    }

    fn try_splice_in(&self, pipe: &mut Pipe, max: usize) -> io::Result<usize> {
        let fd = self.inner.as_raw_fd();
        // A short splice proves nothing (the pipe may have run out of slots): only WouldBlock
        // clears the readiness.
        self.attempt_read(|| pipe.fill_from(fd, max), |_| false)
    }

    async fn splice_out(&self, pipe: &mut Pipe) -> io::Result<()> {
        let fd = self.inner.as_raw_fd();
        while pipe.held() > 0 {
            let mut guard = self.ready.writable().await?;
            match guard.try_io(|_| pipe.drain_into(fd)) {
                Ok(result) => {
                    result?;
                }
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    fn shutdown_write(&self) -> io::Result<()> {
        crate::socket::shutdown_write(&self.fd())
    }

    fn abort(&self) {
        crate::socket::shutdown_both(&self.fd());
    }

    fn queued_to_read(&self) -> io::Result<usize> {
        crate::socket::queued_to_read(&self.fd())
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        crate::socket::local_addr(&self.fd())
    }

    fn tcp_stats(&self) -> io::Result<crate::TcpStats> {
        crate::tcp_info::read(&self.fd())
    }

    fn fix_receive_buffer(&self, bytes: usize) -> io::Result<()> {
        crate::socket::fix_receive_buffer(&self.fd(), bytes)
    }

    fn set_window_clamp(&self, bytes: usize) -> io::Result<()> {
        crate::socket::set_window_clamp(&self.fd(), bytes)
    }

    fn bound_send_queue(&self, unsent: usize, buffer: Option<usize>) -> io::Result<()> {
        crate::socket::bound_send_queue(&self.fd(), unsent, buffer)
    }
}

/// A buffer of the io_uring backend: registered when one is free, plain otherwise.
pub enum UringBuffer {
    /// A registered buffer, read and written with READ_FIXED / WRITE_FIXED.
    Fixed {
        /// The registered buffer.
        buf: FixedBuf,
        /// Bytes filled (the buffer's own initialised length only ever grows).
        len: usize,
    },
    /// A plain heap buffer.
    Heap(HeapBuffer),
}

impl IoBuffer for UringBuffer {
    fn filled(&self) -> &[u8] {
        match self {
            Self::Fixed { buf, len } => &buf[..*len],
            Self::Heap(buf) => buf.filled(),
        }
    }

    fn capacity(&self) -> usize {
        match self {
            Self::Fixed { buf, .. } => IoBuf::bytes_total(buf),
            Self::Heap(buf) => buf.capacity(),
        }
    }

    fn fill_from(&mut self, bytes: &[u8]) -> usize {
        match self {
            Self::Fixed { buf, len } => {
                let n = bytes.len().min(IoBuf::bytes_total(buf));
                // Safety: `n` is within the buffer's capacity, the source is a distinct slice,
                // and the bytes written are then marked initialised.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.stable_mut_ptr(), n);
                    buf.set_init(n);
                }
                *len = n;
                n
            }
            Self::Heap(buf) => buf.fill_from(bytes),
        }
    }
}

enum FixedState {
    /// Not registered yet: registration pins memory, so it waits until data first moves.
    Pending,
    Registered(FixedBufPool<Vec<u8>>, usize),
    Unavailable,
}

/// A worker's buffers: registered ones first, plain ones beyond.
pub struct UringPool {
    fixed: RefCell<FixedState>,
    fixed_count: usize,
    buffer_size: usize,
    heap: HeapPool,
}

impl UringPool {
    fn fixed(&self) -> Option<FixedBuf> {
        let mut state = self.fixed.borrow_mut();
        if let FixedState::Pending = *state {
            *state = self.register();
        }
        match &*state {
            FixedState::Registered(pool, capacity) => pool.try_next(*capacity),
            _ => None,
        }
    }

    fn register(&self) -> FixedState {
        if self.fixed_count == 0 {
            return FixedState::Unavailable;
        }
        let buffers: Vec<Vec<u8>> = (0..self.fixed_count)
            .map(|_| Vec::with_capacity(self.buffer_size))
            .collect();
        let capacity = buffers[0].capacity();
        let pool = FixedBufPool::new(buffers);
        match pool.register() {
            Ok(()) => FixedState::Registered(pool, capacity),
            Err(error) => {
                warn!(
                    %error,
                    buffers = self.fixed_count,
                    buffer_size = self.buffer_size,
                    "registering io_uring buffers failed; this worker uses plain buffers (raise RLIMIT_MEMLOCK with `ulimit -l` to register them)"
                );
                FixedState::Unavailable
            }
        }
    }
}

impl BufferPool for UringPool {
    type Buffer = UringBuffer;

    async fn take(&self) -> UringBuffer {
        match self.fixed() {
            Some(buf) => UringBuffer::Fixed { buf, len: 0 },
            None => UringBuffer::Heap(self.heap.take().await),
        }
    }

    fn allocated(&self) -> usize {
        let fixed = match &*self.fixed.borrow() {
            FixedState::Registered(..) => self.fixed_count,
            _ => 0,
        };
        fixed + self.heap.allocated()
    }
}

impl Backend for Uring {
    type Buffer = UringBuffer;
    type Stream = UringStream;
    type Listener = UringListener;
    type Pool = UringPool;

    fn name(&self) -> &'static str {
        "io-uring"
    }

    fn run_workers<F, Fut>(
        self,
        workers: usize,
        listeners: Vec<Vec<std::net::TcpListener>>,
        worker: F,
    ) -> io::Result<()>
    where
        F: Fn(Worker<UringListener>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let workers = workers.max(1);
        let mut groups = Vec::with_capacity(listeners.len());
        for mut group in listeners {
            if group.len() < workers {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the io_uring backend needs one SO_REUSEPORT listener per worker",
                ));
            }
            group.truncate(workers);
            let (_balance, shares) = Balance::new(workers);
            groups.push(group.into_iter().zip(shares).collect::<Vec<_>>());
        }
        let sources = crate::per_worker(workers, groups);
        crate::run_worker_threads("fyntr-uring", sources, move |index, sources| {
            let mut builder = tokio_uring::builder();
            builder.entries(RING_ENTRIES);
            let runtime = create_runtime(|| tokio_uring::Runtime::new(&builder))?;
            runtime.block_on(async {
                let listeners = sources
                    .into_iter()
                    .map(|(listener, share)| UringListener::new(listener, share))
                    .collect::<io::Result<Vec<_>>>()?;
                worker(Worker { index, listeners }).await;
                Ok(())
            })
        })
    }

    fn spawn<F: Future<Output = ()> + 'static>(future: F) {
        tokio_uring::spawn(future);
    }

    async fn yield_to_others() {
        // A busy worker never parks, and tokio-uring submits only when it parks.
        submit_queued();
        tokio::task::yield_now().await;
    }

    async fn connect(addr: SocketAddr, tuning: SocketTuning) -> io::Result<UringStream> {
        let socket = crate::socket::socket_for(addr, tuning)?;
        crate::socket::start_connect(&socket, addr)?;
        let std: std::net::TcpStream = socket.into();
        let stream = tokio_uring::net::TcpStream::from_std(std);
        stream.set_nodelay(true)?;
        let stream = UringStream::register(stream)?;
        // The first write readiness of a connecting socket means connected, or failed (then
        // SO_ERROR says why). The readiness is kept: the socket is writable. On loopback the
        // handshake is usually over when `connect` returns, and a look first saves a trip
        // through the worker's event loop.
        if stream.has_room().is_err() {
            drop(stream.ready.writable().await?);
        }
        if let Some(error) = socket2::SockRef::from(&stream.fd()).take_error()? {
            return Err(error);
        }
        Ok(stream)
    }

    fn new_pool(&self, buffer_size: usize, max_buffers: usize) -> UringPool {
        UringPool {
            fixed: RefCell::new(FixedState::Pending),
            fixed_count: self.fixed_buffers.min(max_buffers),
            buffer_size,
            heap: HeapPool::new(
                buffer_size,
                max_buffers.saturating_sub(self.fixed_buffers).max(1),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        thread,
    };

    use super::*;
    use crate::{Listener, Stream};

    /// Whether io_uring works here; says why the test is skipped when it does not.
    fn io_uring_here() -> bool {
        match probe() {
            Ok(_) => true,
            Err(unavailable) => {
                eprintln!("skipped: io_uring unavailable here: {unavailable}");
                false
            }
        }
    }

    /// Runs one worker with `fixed` registered buffers that accepts one connection and hands it,
    /// with a pool of 1 KiB buffers, to `serve`, then stops its listener. Returns the address to
    /// connect to and the worker's thread.
    fn serve_one<F, Fut>(fixed: usize, serve: F) -> (std::net::SocketAddr, thread::JoinHandle<()>)
    where
        F: Fn(UringStream, UringPool) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let listeners = crate::socket::bind_listeners("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let server = thread::spawn(move || {
            Uring::new(fixed)
                .run_workers(1, vec![listeners], move |worker| {
                    let serve = serve.clone();
                    async move {
                        let pool = Uring::new(fixed).new_pool(1024, 8);
                        let listener = &worker.listeners[0];
                        let (stream, _) = listener.accept().await.unwrap();
                        serve(stream, pool).await;
                        listener.stop();
                        assert!(listener.accept().await.is_err());
                    }
                })
                .unwrap();
        });
        (addr, server)
    }

    #[test]
    fn echo_over_the_ring_with_registered_and_plain_buffers() {
        if !io_uring_here() {
            return;
        }
        for fixed in [4, 0] {
            let (addr, server) = serve_one(fixed, |stream, pool| async move {
                loop {
                    stream.readable().await.unwrap();
                    let (read, buffer) = stream.read(pool.take().await).await;
                    if read.unwrap() == 0 {
                        break;
                    }
                    let (written, _) = stream.write_all(buffer).await;
                    written.unwrap();
                }
                stream.shutdown_write().unwrap();
            });
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            client.write_all(&data).unwrap();
            client.shutdown(std::net::Shutdown::Write).unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "fixed buffers: {fixed}");
            server.join().unwrap();
        }
    }

    /// A read finds the socket empty (no readiness wait before it): the direct `recv` would
    /// block, so the read goes through the ring and completes when the data arrives.
    #[test]
    fn a_read_of_an_empty_socket_waits_on_the_ring() {
        if !io_uring_here() {
            return;
        }
        for fixed in [4, 0] {
            let (addr, server) = serve_one(fixed, |stream, pool| async move {
                let (read, buffer) = stream.read(pool.take().await).await;
                assert_eq!(read.unwrap(), 5);
                let (written, _) = stream.write_all(buffer).await;
                written.unwrap();
            });
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            thread::sleep(std::time::Duration::from_millis(100));
            client.write_all(b"late!").unwrap();
            let mut back = [0u8; 5];
            client.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"late!", "fixed buffers: {fixed}");
            server.join().unwrap();
        }
    }
}
