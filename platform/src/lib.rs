//! # fyntr-platform: how bytes move on this OS, and nothing else
//!
//! This leaf crate knows nothing of CONNECT, policy or scheduling. It offers what the proxy core in
//! `fyntr` needs from an I/O backend, as one small trait family that each backend implements:
//!
//! - [`Backend`]: starts N workers (one OS thread each, single-threaded runtime, `!Send` tasks
//!   allowed), spawns tasks on the current worker, and dials upstream connections.
//! - [`Listener`] and [`Stream`]: sockets with an owned-buffer API
//!   (`read(buf) -> (io::Result<usize>, buf)`), the shape io_uring needs, which a readiness-based
//!   backend adapts easily.
//! - [`BufferPool`] and [`IoBuffer`]: bounded per-worker pools of data buffers.
//! - [`splice`]: zero-copy relaying through kernel pipes ([`PipePool`], Linux), which both
//!   backends offer through [`Stream::try_splice_in`] and [`Stream::splice_out`], within one
//!   process-wide [`PipeBudget`] ([`pipe_budget`]).
//! - [`cpu_share`]: letting the threads a worker relays for run after a bounded burst of work.
//! - [`socket`]: binding the listening sockets (one per worker with `SO_REUSEPORT` on Linux).
//!
//! Backends: [`portable`] (Tokio current-thread runtime per worker, epoll/kqueue) runs everywhere;
//! `uring` (Linux) drives an io_uring ring per worker with its own executor.
//!
//! Cancellation rule shared by all backends: futures returned by [`Stream::read`] and
//! [`Stream::write_all`] must be driven to completion, never dropped mid-flight (an io_uring
//! operation keeps running after its future is dropped). To end a blocked operation, call
//! [`Stream::abort`], which makes it complete with EOF or an error. [`Stream::readable`] and
//! [`Stream::splice_out`] may be raced against a timer (they leave no operation in flight); a
//! `read` after `readable` completes promptly (see [`Stream::read`]).

use std::{future::Future, io, net::SocketAddr};

mod balance;
pub mod cpu_share;
pub mod pipe_budget;
mod pool;
pub mod portable;
pub mod socket;
pub mod splice;
pub mod tcp_info;
#[cfg(target_os = "linux")]
pub mod uring;

pub use pipe_budget::PipeBudget;
pub use pool::{HeapBuffer, HeapPool};
pub use socket::SocketTuning;
pub use splice::{Pipe, PipePool, PooledPipe};
pub use tcp_info::TcpStats;

/// An owned data buffer that crosses the backend boundary.
///
/// The filled part is what the last read produced (or what [`IoBuffer::fill_from`] copied in);
/// writes send exactly the filled part.
pub trait IoBuffer: 'static {
    /// The bytes currently held.
    fn filled(&self) -> &[u8];
    /// How many bytes the buffer can hold.
    fn capacity(&self) -> usize;
    /// Replaces the contents with a prefix of `bytes`; returns how many bytes were copied.
    fn fill_from(&mut self, bytes: &[u8]) -> usize;
}

/// A bounded pool of buffers owned by one worker.
///
/// Buffers go back to the pool when dropped. When every buffer is in use, [`BufferPool::take`]
/// waits: that is backpressure, never an allocation failure.
pub trait BufferPool: 'static {
    /// The buffer type this pool hands out.
    type Buffer: IoBuffer;
    /// Takes a buffer, waiting while the pool is exhausted.
    fn take(&self) -> impl Future<Output = Self::Buffer>;
    /// Buffers currently allocated (in use or kept free for reuse).
    fn allocated(&self) -> usize;
}

/// A connected TCP stream on the current worker.
///
/// All methods take `&self` so that the two relay directions of a tunnel can share one stream.
pub trait Stream: Sized + 'static {
    /// The buffer type reads and writes move.
    type Buffer: IoBuffer;
    /// Waits until a read would not block (data, EOF or an error is pending).
    ///
    /// Unlike `read`, this future may be dropped at any time, so it is the place for deadlines.
    fn readable(&self) -> impl Future<Output = io::Result<()>>;
    /// Reads once into `buf`, replacing its contents; `Ok(0)` means EOF.
    ///
    /// Call it after [`Stream::readable`]. A readiness-based backend may report readiness that
    /// is already stale; `read` then completes at once with [`io::ErrorKind::WouldBlock`] rather
    /// than blocking outside the caller's deadline, and the caller waits for `readable` again.
    fn read(&self, buf: Self::Buffer) -> impl Future<Output = (io::Result<usize>, Self::Buffer)>;
    /// One non-blocking read into `buf`, made for small interactive messages. `Ok(0)` is EOF;
    /// [`io::ErrorKind::WouldBlock`] means nothing is pending: wait for [`Stream::readable`].
    ///
    /// On Linux a read that does not fill `buf` has emptied the socket's receive queue (TCP
    /// copies until the request is met or the queue is empty), so it also clears the readiness
    /// and the next [`Stream::readable`] waits for new data. A splice cannot tell that (it also
    /// stops when its pipe runs out of slots) and pays one more call that finds the socket empty.
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes all of `bytes` with plain non-blocking sends, waiting for room as needed.
    fn send_all(&self, bytes: &[u8]) -> impl Future<Output = io::Result<()>>;
    /// Writes the whole filled part of `buf`.
    fn write_all(&self, buf: Self::Buffer) -> impl Future<Output = (io::Result<()>, Self::Buffer)>;
    /// One non-blocking attempt to move up to `max` bytes from the socket into the empty `pipe`
    /// without copying them (see [`splice`]). `Ok(0)` is EOF; [`io::ErrorKind::WouldBlock`]
    /// means nothing is pending: wait for [`Stream::readable`]. `Unsupported` off Linux.
    fn try_splice_in(&self, pipe: &mut Pipe, max: usize) -> io::Result<usize>;
    /// Moves everything `pipe` holds into the socket, waiting for room as needed. Unlike
    /// `write_all` this future may be dropped at any time; bytes not yet moved stay in the pipe.
    fn splice_out(&self, pipe: &mut Pipe) -> impl Future<Output = io::Result<()>>;
    /// What the kernel knows of this connection's path (Linux; `Unsupported` elsewhere).
    fn tcp_stats(&self) -> io::Result<TcpStats> {
        tcp_info::read(&self.descriptor())
    }
    /// The socket's descriptor: for reading its [`TcpStats`], here or from another thread
    /// while the stream lives (see [`tcp_info::WatchedSocket`]).
    fn descriptor(&self) -> std::os::fd::BorrowedFd<'_>;
    /// The local address of this socket (`getsockname`).
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// Bounds the receive window this socket offers (see [`socket::set_window_clamp`]).
    fn set_window_clamp(&self, bytes: usize) -> io::Result<()>;
    /// Fixes the receive buffer, ending its autotuning (see [`socket::fix_receive_buffer`]).
    fn fix_receive_buffer(&self, bytes: usize) -> io::Result<()>;
    /// Bounds what the kernel queues for sending (see [`socket::bound_send_queue`]).
    fn bound_send_queue(&self, unsent: usize, buffer: Option<usize>) -> io::Result<()>;
    /// Sends FIN: the peer reads EOF, while reading from it continues.
    fn shutdown_write(&self) -> io::Result<()>;
    /// Shuts the socket down both ways so that any pending read or write completes promptly.
    fn abort(&self);
    /// Bytes the kernel holds ready to read now (`FIONREAD`); 0 at EOF or with nothing pending.
    fn queued_to_read(&self) -> io::Result<usize>;
}

/// A listening socket on the current worker.
pub trait Listener: 'static {
    /// The stream type accepted connections become.
    type Stream: Stream;
    /// Accepts one connection.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>>;
    /// Stops accepting: a pending `accept` completes with an error and later ones fail.
    fn stop(&self);
}

/// What a worker is given when it starts.
pub struct Worker<L> {
    /// Zero-based index of this worker.
    pub index: usize,
    /// The listeners this worker accepts on: one per listening address, in the order of the
    /// groups given to [`Backend::run_workers`].
    pub listeners: Vec<L>,
}

/// An I/O backend: a way to run workers and move bytes.
///
/// The proxy core is generic over this trait and monomorphised per backend, so the data path has
/// no dynamic dispatch.
pub trait Backend: Copy + Send + Sync + 'static {
    /// Data buffer type.
    type Buffer: IoBuffer;
    /// Connected stream type.
    type Stream: Stream<Buffer = Self::Buffer>;
    /// Listener type.
    type Listener: Listener<Stream = Self::Stream>;
    /// Per-worker buffer pool type.
    type Pool: BufferPool<Buffer = Self::Buffer>;

    /// Short name for logs: `tokio` or `io-uring`.
    fn name(&self) -> &'static str;

    /// Runs `workers` workers, each on its own thread with its own single-threaded runtime, and
    /// blocks until all of them return.
    ///
    /// `listeners` holds one group per listening address (the proxy port, the SOCKS5 port).
    /// A group holds either one listener per worker (each worker accepts on its own) or a
    /// single listener, in which case one acceptor thread hands that address's connections to
    /// the workers in turn (for systems where `SO_REUSEPORT` does not balance).
    fn run_workers<F, Fut>(
        self,
        workers: usize,
        listeners: Vec<Vec<std::net::TcpListener>>,
        worker: F,
    ) -> io::Result<()>
    where
        F: Fn(Worker<Self::Listener>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static;

    /// Spawns a task on the current worker. Must be called from inside a worker.
    fn spawn<F: Future<Output = ()> + 'static>(future: F);

    /// Lets the worker's other tasks run before the caller continues. A task that always has
    /// work (a bulk relay) calls it after each chunk; on io_uring it also submits the ring
    /// operations other tasks queued meanwhile, which would otherwise wait until the worker
    /// parks.
    fn yield_to_others() -> impl Future<Output = ()>;

    /// Connects to `addr` from a new socket with `tuning` applied before `connect`, on the
    /// current worker. The socket is registered for readiness once, for its whole life
    /// (dialling with Tokio and adopting the result cost two more `epoll_ctl` per tunnel).
    /// Dropping the future abandons the attempt and closes the socket.
    fn connect(
        addr: SocketAddr,
        tuning: SocketTuning,
    ) -> impl Future<Output = io::Result<Self::Stream>>;

    /// Creates the current worker's buffer pool: buffers of `buffer_size` bytes, at most
    /// `max_buffers` of them allocated at once.
    fn new_pool(&self, buffer_size: usize, max_buffers: usize) -> Self::Pool;
}

/// Regroups per-address lists of per-worker items into per-worker lists (one item of each
/// address each).
pub(crate) fn per_worker<T>(workers: usize, groups: Vec<Vec<T>>) -> Vec<Vec<T>> {
    let mut regrouped: Vec<Vec<T>> = (0..workers).map(|_| Vec::new()).collect();
    for group in groups {
        for (worker, item) in regrouped.iter_mut().zip(group) {
            worker.push(item);
        }
    }
    regrouped
}

/// Runs `body(index, source)` on one named thread per source and waits for all of them.
///
/// Returns the first error, counting a panicking thread as one. Each backend's `run_workers`
/// builds its runtime inside `body`.
pub(crate) fn run_worker_threads<S: Send + 'static>(
    name: &str,
    sources: Vec<S>,
    body: impl Fn(usize, S) -> io::Result<()> + Send + Sync + 'static,
) -> io::Result<()> {
    let body = std::sync::Arc::new(body);
    let mut threads = Vec::with_capacity(sources.len());
    for (index, source) in sources.into_iter().enumerate() {
        let body = std::sync::Arc::clone(&body);
        let thread = std::thread::Builder::new()
            .name(format!("{name}-{index}"))
            .spawn(move || body(index, source))?;
        threads.push(thread);
    }
    let mut result = Ok(());
    for thread in threads {
        let outcome = thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("worker thread panicked")));
        if result.is_ok() {
            result = outcome;
        }
    }
    result
}
