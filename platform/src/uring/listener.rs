//! A worker's listening socket: one multishot accept on the ring, and the connections other
//! workers hand over ([`crate::balance`]).

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    rc::Rc,
    task::{Poll, Waker},
};

use super::{stream::UringStream, with_worker};
use crate::balance::{Handoff, Load, WorkerShare};

/// What a listener's multishot accept delivered.
pub(super) struct AcceptState {
    accepted: RefCell<VecDeque<io::Result<OwnedFd>>>,
    armed: Cell<Option<usize>>,
    waker: RefCell<Option<Waker>>,
}

impl AcceptState {
    /// A completion of the accept; `more` while it stays armed.
    pub(super) fn on_completion(&self, result: i32, more: bool) {
        if !more {
            self.armed.set(None);
        }
        if result >= 0 {
            // Safety: a successful accept's result is a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(result) };
            self.accepted.borrow_mut().push_back(Ok(fd));
        } else if -result != libc::ECANCELED {
            self.accepted
                .borrow_mut()
                .push_back(Err(io::Error::from_raw_os_error(-result)));
        }
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// A worker's listener.
pub struct UringListener {
    socket: std::net::TcpListener,
    state: Rc<AcceptState>,
    stopped: Cell<bool>,
    /// See [`crate::socket::tunes_loopback_peers`].
    tunes_loopback_peers: bool,
    share: WorkerShare,
}

/// What a listener's wait ended with.
enum Arrival {
    /// A connection from this worker's socket.
    Accepted(io::Result<OwnedFd>),
    /// A connection another worker handed over.
    HandedOver(Handoff),
}

impl UringListener {
    pub(super) fn new(socket: std::net::TcpListener, share: WorkerShare) -> Self {
        Self {
            tunes_loopback_peers: crate::socket::tunes_loopback_peers(socket.local_addr()),
            socket,
            state: Rc::new(AcceptState {
                accepted: RefCell::new(VecDeque::new()),
                armed: Cell::new(None),
                waker: RefCell::new(None),
            }),
            stopped: Cell::new(false),
            share,
        }
    }

    async fn next_arrival(&self) -> Arrival {
        std::future::poll_fn(|cx| {
            // `None` once stopped: then only the socket is left, and it fails.
            if let Poll::Ready(Some(handoff)) = self.share.poll_handoff(cx) {
                return Poll::Ready(Arrival::HandedOver(handoff));
            }
            if self.stopped.get() {
                return Poll::Ready(Arrival::Accepted(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the listener stopped",
                ))));
            }
            if let Some(accepted) = self.state.accepted.borrow_mut().pop_front() {
                return Poll::Ready(Arrival::Accepted(accepted));
            }
            if self.state.armed.get().is_none() {
                let key = with_worker(|worker| {
                    worker
                        .submission
                        .accept_multishot(&self.state, self.socket.as_raw_fd())
                });
                self.state.armed.set(Some(key));
            }
            *self.state.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn adopt(
        &self,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        load: Load,
    ) -> (UringStream, SocketAddr) {
        // TCP_NODELAY came with it from the listener (Linux: ACCEPTED_INHERIT_NODELAY).
        if self.tunes_loopback_peers {
            crate::socket::tune_accepted(&stream, peer);
        }
        let mut stream = UringStream::new(stream);
        stream.load = Some(load);
        (stream, peer)
    }
}

impl crate::Listener for UringListener {
    type Stream = UringStream;

    async fn accept(&self) -> io::Result<(UringStream, SocketAddr)> {
        loop {
            match self.next_arrival().await {
                Arrival::HandedOver(handoff) => {
                    return Ok(self.adopt(handoff.stream, handoff.peer, handoff.load))
                }
                Arrival::Accepted(accepted) => {
                    let stream = std::net::TcpStream::from(accepted?);
                    // A peer that already left has no address; its connection is dropped.
                    let Ok(peer) = stream.peer_addr() else {
                        continue;
                    };
                    let kept = match self.share.keep() {
                        Some(load) => Some((stream, load)),
                        None => self.share.hand_off(stream, peer),
                    };
                    if let Some((stream, load)) = kept {
                        return Ok(self.adopt(stream, peer, load));
                    }
                }
            }
        }
    }

    fn stop(&self) {
        self.share.stop();
        self.stopped.set(true);
        // The multishot accept ends with an error, and connections it took are closed.
        crate::socket::stop_listening(&self.socket);
        self.state.accepted.borrow_mut().clear();
        if let Some(waker) = self.state.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

impl Drop for UringListener {
    fn drop(&mut self) {
        if let Some(armed) = self.state.armed.get() {
            super::try_with_worker(|worker| worker.submission.cancel(armed));
        }
    }
}
