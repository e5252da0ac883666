//! A connected socket on a worker's ring: data arrives through a multishot receive into
//! provided buffers, and leaves as ring writes, in the order the relay submits them.
//!
//! Bulk data the relay splices is the exception: the kernel never runs a ring splice inline
//! (every one goes to an io-wq thread, see [`crate::splice`]), and copying a bulk stream
//! through user memory twice costs more than the splice saves in calls (load benchmark: 0.37 of
//! a direct connection copying, against 0.77 splicing). So while the relay splices a stream,
//! its readiness comes from a ring poll and the splices are plain non-blocking calls; sockets
//! are non-blocking for that. Bulk chunks the relay copies for want of a pipe are read the
//! same way. The multishot receive is cancelled, and its last completion seen, before the first
//! such read, so that no byte can overtake another.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, RawFd},
    rc::Rc,
    task::{Poll, Waker},
};

use io_uring::{cqueue, opcode, types};

use super::{
    buffers::{Provided, UringBuffer, BULK_GROUP, SMALL_GROUP, SMALL_SIZE},
    submission::{errno, Hold},
    with_worker,
};
use crate::{balance::Load, pool::HeapBuffer, IoBuffer, Pipe};

/// Buffers a stream may hold received but not yet taken by the relay before its receive is
/// cancelled: the rest waits in the socket, where TCP's window holds the sender back.
pub(super) const READ_AHEAD: usize = 2;

/// Short receives in a row after which a bulk stream goes back to small buffers.
const SHORT_RUN: u8 = 4;

/// What a stream's multishot receive has delivered and how it stands.
pub(super) struct RecvState {
    fd: RawFd,
    pending: RefCell<VecDeque<Provided>>,
    /// How the stream ended: `Some(0)` at EOF, `Some(errno)` after an error.
    end: Cell<Option<i32>>,
    /// The receive in flight, by key.
    armed: Cell<Option<usize>>,
    /// A cancellation of it was asked for.
    cancelling: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    /// Its stream is gone: whatever still arrives goes straight back to the ring.
    dropped: Cell<bool>,
    /// Receive into bulk buffers (a small one came back full), or small ones (the start, and
    /// after [`SHORT_RUN`] short receives in a row).
    bulk: Cell<bool>,
    short_run: Cell<u8>,
    /// Reads are plain calls (the relay splices this stream, or copies bulk chunks it has no
    /// pipe for): readiness comes from a ring poll, and no receive is armed.
    direct_reads: Cell<bool>,
}

impl RecvState {
    /// A completion of this stream's receive (`key`); `more` when it stays armed.
    pub(super) fn on_completion(
        self: &Rc<Self>,
        key: usize,
        group: u16,
        result: i32,
        flags: u32,
        more: bool,
    ) {
        if !more && self.armed.get() == Some(key) {
            self.armed.set(None);
            self.cancelling.set(false);
        }
        let buffer = cqueue::buffer_select(flags);
        with_worker(|worker| {
            let buffers = worker.buffers(group);
            if result > 0 {
                let Some(bid) = buffer else {
                    self.end.set(Some(libc::EIO));
                    return;
                };
                let provided = buffers.claim(bid, result as u32);
                if self.dropped.get() {
                    return;
                }
                self.choose_buffers(group, result as usize);
                let mut pending = self.pending.borrow_mut();
                pending.push_back(provided);
                let switch = self.bulk.get() != (group == BULK_GROUP);
                if (switch || pending.len() >= READ_AHEAD) && !self.cancelling.get() {
                    if let Some(armed) = self.armed.get() {
                        self.cancelling.set(true);
                        worker.submission.cancel(armed);
                    }
                }
            } else {
                if let Some(bid) = buffer {
                    drop(buffers.claim(bid, 0));
                }
                match -result {
                    0 => self.end.set(Some(0)),
                    // Out of buffers: armed again once one comes back.
                    libc::ENOBUFS => buffers.wait_for_buffer(Rc::downgrade(self)),
                    libc::ECANCELED => {}
                    code => self.end.set(Some(code)),
                }
            }
        });
        self.wake();
    }

    /// Moves to bulk buffers when a small one came back full, and back after a run of short
    /// receives.
    fn choose_buffers(&self, group: u16, received: usize) {
        if group == SMALL_GROUP {
            if received >= SMALL_SIZE {
                self.bulk.set(true);
                self.short_run.set(0);
            }
        } else if received < SMALL_SIZE {
            let run = self.short_run.get() + 1;
            if run >= SHORT_RUN {
                self.bulk.set(false);
                self.short_run.set(0);
            } else {
                self.short_run.set(run);
            }
        } else {
            self.short_run.set(0);
        }
    }

    /// A buffer came back to the ring after this stream's receive ran out of them.
    pub(super) fn buffer_returned(&self) {
        self.wake();
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Whether a read would complete now.
    fn ready(&self) -> bool {
        !self.pending.borrow().is_empty() || self.end.get().is_some()
    }

    /// Makes sure a receive is armed (or waits for a buffer to arm one).
    fn arm(self: &Rc<Self>) {
        if self.armed.get().is_some()
            || self.end.get().is_some()
            || self.dropped.get()
            || self.direct_reads.get()
        {
            return;
        }
        with_worker(|worker| {
            let group = if self.bulk.get() {
                BULK_GROUP
            } else {
                SMALL_GROUP
            };
            let buffers = worker.buffers(group);
            if buffers.available() == 0 {
                buffers.wait_for_buffer(Rc::downgrade(self));
                return;
            }
            let key = worker.submission.recv_multishot(self, self.fd, group);
            self.armed.set(Some(key));
        });
    }

    /// The end as a read's result, once everything before it was read.
    fn end_result(&self) -> Option<io::Result<usize>> {
        match self.end.get()? {
            0 => Some(Ok(0)),
            code => Some(Err(io::Error::from_raw_os_error(code))),
        }
    }
}

/// Waits until the kernel reports `events` on `fd` (a one-shot ring poll). Dropping the future
/// cancels the poll.
async fn ring_poll(fd: RawFd, events: i16) -> io::Result<()> {
    let entry = opcode::PollAdd::new(types::Fd(fd), events as u32).build();
    let completion = with_worker(|worker| worker.submission.single(entry, Hold::Nothing));
    match completion.await.0 {
        result if result >= 0 => Ok(()),
        result => Err(errno(result)),
    }
}

/// One non-blocking read from `socket` into `buf` (a heap buffer; a provided one is swapped
/// for a heap buffer of the same size, which the relay never asks for).
fn read_into(socket: &std::net::TcpStream, buf: &mut UringBuffer) -> io::Result<usize> {
    if let UringBuffer::Provided(_) = buf {
        let capacity = crate::IoBuffer::capacity(buf);
        *buf = UringBuffer::Heap(HeapBuffer::detached(capacity));
    }
    let UringBuffer::Heap(heap) = buf else {
        unreachable!("made a heap buffer above")
    };
    let read = std::io::Read::read(&mut &*socket, heap.spare_mut())?;
    heap.set_len(read);
    Ok(read)
}

/// A connected stream on a worker's ring.
pub struct UringStream {
    state: Rc<RecvState>,
    // Declared after `state`'s users; closed last.
    socket: std::net::TcpStream,
    /// A client connection's place in its worker's count ([`crate::balance`]).
    pub(super) load: Option<Load>,
}

impl UringStream {
    /// Adopts a connected, blocking socket.
    pub(super) fn new(socket: std::net::TcpStream) -> Self {
        Self {
            state: Rc::new(RecvState {
                fd: socket.as_raw_fd(),
                pending: RefCell::new(VecDeque::new()),
                end: Cell::new(None),
                armed: Cell::new(None),
                cancelling: Cell::new(false),
                waker: RefCell::new(None),
                dropped: Cell::new(false),
                bulk: Cell::new(false),
                short_run: Cell::new(0),
                direct_reads: Cell::new(false),
            }),
            socket,
            load: None,
        }
    }

    /// Writes `hold` (a buffer or bytes) whole, in ring writes from its start; gives it back.
    async fn write_held(&self, mut hold: Hold) -> (io::Result<()>, Hold) {
        let fd = types::Fd(self.socket.as_raw_fd());
        let mut written = 0;
        loop {
            let (address, len, fixed) = match &hold {
                Hold::Buffer(buffer) => {
                    let fixed = match buffer {
                        UringBuffer::Provided(provided) => {
                            with_worker(|worker| worker.fixed_index(provided))
                        }
                        UringBuffer::Heap(_) => None,
                    };
                    let bytes = buffer.filled();
                    (bytes.as_ptr(), bytes.len(), fixed)
                }
                Hold::Bytes(bytes) => (bytes.as_ptr(), bytes.len(), None),
                Hold::Nothing | Hold::Address(_) => (std::ptr::null(), 0, None),
            };
            if written >= len {
                return (Ok(()), hold);
            }
            // Safety (of the pointer arithmetic): `written` < `len`, within the held bytes.
            let from = unsafe { address.add(written) };
            let rest = u32::try_from(len - written).unwrap_or(u32::MAX);
            let entry = if let Some(index) = fixed {
                // An rw operation: on a non-blocking socket it answers EAGAIN when full.
                opcode::WriteFixed::new(fd, from, rest, index).build()
            } else {
                opcode::Send::new(fd, from, rest)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            };
            let completion = with_worker(|worker| worker.submission.single(entry, hold));
            let result;
            (result, hold) = completion.await;
            match result {
                n if n > 0 => written += n as usize,
                0 => {
                    let error = io::Error::new(io::ErrorKind::WriteZero, "peer accepts no data");
                    return (Err(error), hold);
                }
                n if -n == libc::EINTR => {}
                n if -n == libc::EAGAIN => {
                    if let Err(error) = ring_poll(fd.0, libc::POLLOUT).await {
                        return (Err(error), hold);
                    }
                }
                n => return (Err(errno(n)), hold),
            }
        }
    }
}

impl Drop for UringStream {
    fn drop(&mut self) {
        let state = &self.state;
        state.dropped.set(true);
        state.pending.borrow_mut().clear();
        state.waker.borrow_mut().take();
        if let Some(armed) = state.armed.get() {
            if !state.cancelling.get() {
                state.cancelling.set(true);
                // The receive holds its own reference to the socket: the descriptor closes
                // now, the connection once the cancellation completes.
                super::try_with_worker(|worker| worker.submission.cancel(armed));
            }
        }
    }
}

impl crate::Stream for UringStream {
    type Buffer = UringBuffer;

    async fn readable(&self) -> io::Result<()> {
        loop {
            if self.state.ready() {
                return Ok(());
            }
            if self.state.direct_reads.get() && self.state.armed.get().is_none() {
                // Readable, hung up or failed: the splice that follows tells which.
                return ring_poll(self.socket.as_raw_fd(), libc::POLLIN).await;
            }
            // Receiving (or waiting for the cancelled receive's last completion).
            let mut woken = false;
            std::future::poll_fn(|cx| {
                if woken || self.state.ready() {
                    return Poll::Ready(());
                }
                woken = true;
                self.state.arm();
                let mut waker = self.state.waker.borrow_mut();
                match &*waker {
                    Some(current) if current.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            })
            .await;
        }
    }

    async fn read(&self, mut buf: UringBuffer) -> (io::Result<usize>, UringBuffer) {
        let state = &self.state;
        // The relay reads this way only for bulk chunks it has no pipe to splice through. They
        // are read like spliced ones: plain reads after a ring poll, into the relay's buffer.
        // Through the provided buffers, the tunnels without a pipe would compete for them with
        // every armed receive of the worker, and lose (one worker, 100 uploads: a third of
        // them delivered nothing).
        state.direct_reads.set(true);
        loop {
            if let Some(provided) = state.pending.borrow_mut().pop_front() {
                let buffer = UringBuffer::Provided(provided);
                return (Ok(buffer.filled().len()), buffer);
            }
            if let Some(end) = state.end_result() {
                return (end, buf);
            }
            if let Some(armed) = state.armed.get() {
                // Its last completion is awaited below, as for a splice.
                if !state.cancelling.get() {
                    state.cancelling.set(true);
                    with_worker(|worker| worker.submission.cancel(armed));
                }
            } else {
                match read_into(&self.socket, &mut buf) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    read => return (read, buf),
                }
            }
            if let Err(error) = self.readable().await {
                return (Err(error), buf);
            }
        }
    }

    fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.state.direct_reads.set(false);
        let mut copied = 0;
        let mut pending = self.state.pending.borrow_mut();
        while copied < buf.len() {
            let Some(front) = pending.front_mut() else {
                break;
            };
            let bytes = front.filled_bytes();
            let n = bytes.len().min(buf.len() - copied);
            buf[copied..copied + n].copy_from_slice(&bytes[..n]);
            copied += n;
            front.consume(n);
            if front.filled_bytes().is_empty() {
                pending.pop_front();
            }
        }
        drop(pending);
        if let Some(end) = self.state.end_result() {
            return if copied > 0 { Ok(copied) } else { end };
        }
        // With no receive armed (the relay spliced until now, or the receive stopped at its
        // read-ahead), the socket is read at once for the rest, as a plain read would: bytes
        // that came in since are there. Waiting for a receive instead takes them a page or
        // two at a time, short reads that keep a busy bulk stream copying (one worker, 100
        // uploads: the slowest tunnel at 0.1 of the mean).
        if copied < buf.len() && self.state.armed.get().is_none() {
            match std::io::Read::read(&mut &self.socket, &mut buf[copied..]) {
                Ok(n) => return Ok(copied + n),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) if copied == 0 => return Err(error),
                // Reported by the next read.
                Err(_) => {}
            }
        }
        if copied > 0 {
            Ok(copied)
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    async fn send_all(&self, bytes: &[u8]) -> io::Result<()> {
        self.write_held(Hold::Bytes(Box::from(bytes))).await.0
    }

    async fn write_all(&self, buf: UringBuffer) -> (io::Result<()>, UringBuffer) {
        let (result, hold) = self.write_held(Hold::Buffer(buf)).await;
        let Hold::Buffer(buf) = hold else {
            unreachable!("a write gives back what it held")
        };
        (result, buf)
    }

    fn try_splice_in(&self, pipe: &mut Pipe, max: usize) -> io::Result<usize> {
        let state = &self.state;
        state.direct_reads.set(true);
        // Should the relay go back to small reads, the receive starts on small buffers again:
        // what it takes ahead of the relay is then a page or two, not bulk buffers to copy.
        state.bulk.set(false);
        // What the receive already took goes first, copied into the pipe.
        {
            let mut pending = state.pending.borrow_mut();
            let mut copied = 0;
            while let Some(front) = pending.front_mut() {
                let offered = front.filled_bytes().len().min(max - copied);
                let n = match pipe.fill_with(&front.filled_bytes()[..offered]) {
                    Ok(n) => n,
                    Err(error) if copied == 0 => return Err(error),
                    Err(_) => break,
                };
                front.consume(n);
                copied += n;
                if front.filled_bytes().is_empty() {
                    pending.pop_front();
                }
                if n < offered || copied == max {
                    break;
                }
            }
            if copied > 0 {
                return Ok(copied);
            }
        }
        if let Some(armed) = state.armed.get() {
            // Not a byte is spliced before the receive's last completion is in.
            if !state.cancelling.get() {
                state.cancelling.set(true);
                with_worker(|worker| worker.submission.cancel(armed));
            }
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if let Some(end) = state.end_result() {
            return end;
        }
        pipe.fill_from(self.socket.as_raw_fd(), max)
    }

    async fn splice_out(&self, pipe: &mut Pipe) -> io::Result<()> {
        let fd = self.socket.as_raw_fd();
        while pipe.held() > 0 {
            match pipe.drain_into(fd) {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    ring_poll(fd, libc::POLLOUT).await?;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn shutdown_write(&self) -> io::Result<()> {
        crate::socket::shutdown_write(&self.socket)
    }

    fn abort(&self) {
        // The receive then completes with EOF, and writes in flight with an error.
        crate::socket::shutdown_both(&self.socket);
    }

    fn queued_to_read(&self) -> io::Result<usize> {
        let held: usize = self
            .state
            .pending
            .borrow()
            .iter()
            .map(|provided| provided.filled_bytes().len())
            .sum();
        Ok(held + crate::socket::queued_to_read(&self.socket)?)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        crate::socket::local_addr(&self.socket.as_fd())
    }

    fn descriptor(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }

    fn fix_receive_buffer(&self, bytes: usize) -> io::Result<()> {
        crate::socket::fix_receive_buffer(&self.socket, bytes)
    }

    fn set_window_clamp(&self, bytes: usize) -> io::Result<()> {
        crate::socket::set_window_clamp(&self.socket, bytes)
    }

    fn bound_send_queue(&self, unsent: usize, buffer: Option<usize>) -> io::Result<()> {
        crate::socket::bound_send_queue(&self.socket, unsent, buffer)
    }
}
