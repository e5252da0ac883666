//! Keeps the workers' shares of client connections even.
//!
//! With one `SO_REUSEPORT` listener per worker the kernel picks a listener by a hash of the
//! connection's addresses, so 100 connections split 44/56 as easily as 50/50. Each worker gets
//! about the same CPU time, so when the workers are busy a connection's throughput is inversely
//! proportional to how many its worker carries: on the load benchmark's 100 uploads a 44/56
//! split gave the tunnels of one worker 1.46 times what the other's got (Jain 0.963). So a
//! worker that accepts a connection while it carries more than one above the least loaded
//! worker hands it over, before any byte of it is read. The same counts steer the acceptor
//! thread where `SO_REUSEPORT` does not balance at all.

use std::{
    cell::RefCell,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use tokio::sync::mpsc;

/// Added to a stopped worker's count so that nothing is handed to it any more.
const STOPPED: usize = usize::MAX / 2;

/// A connection on its way to another worker, with its place already counted there.
pub(crate) struct Handoff {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) load: Load,
}

/// The workers' connection counts and the way to hand a connection to each.
pub(crate) struct Balance {
    loads: Box<[AtomicUsize]>,
    inboxes: Box<[mpsc::UnboundedSender<Handoff>]>,
}

impl Balance {
    /// A balance over `workers` workers, and each worker's end of it (in worker order).
    pub(crate) fn new(workers: usize) -> (Arc<Self>, Vec<WorkerShare>) {
        let workers = workers.max(1);
        let (inboxes, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let balance = Arc::new(Self {
            loads: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            inboxes: inboxes.into(),
        });
        let shares = receivers
            .into_iter()
            .enumerate()
            .map(|(worker, inbox)| WorkerShare {
                balance: Arc::clone(&balance),
                worker,
                inbox: RefCell::new(inbox),
            })
            .collect();
        (balance, shares)
    }

    fn least_loaded(&self) -> usize {
        (0..self.loads.len())
            .min_by_key(|&worker| self.loads[worker].load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    fn count(self: &Arc<Self>, worker: usize) -> Load {
        self.loads[worker].fetch_add(1, Ordering::Relaxed);
        Load {
            balance: Arc::clone(self),
            worker,
        }
    }

    /// Sends a connection to the least loaded worker that still runs. Gives the connection
    /// back when every worker has stopped.
    pub(crate) fn hand_to_least_loaded(
        self: &Arc<Self>,
        stream: std::net::TcpStream,
        peer: SocketAddr,
    ) -> Result<(), std::net::TcpStream> {
        let mut handoff = Handoff {
            stream,
            peer,
            load: self.count(self.least_loaded()),
        };
        for _ in 0..self.inboxes.len() {
            match self.inboxes[handoff.load.worker].send(handoff) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => handoff = back,
            }
            // That worker stopped between the choice and the send: try the next one.
            let next = (handoff.load.worker + 1) % self.inboxes.len();
            handoff.load = self.count(next);
        }
        Err(handoff.stream)
    }
}

/// One accepted client connection's place in its worker's count, released when the
/// connection's stream is dropped.
pub(crate) struct Load {
    balance: Arc<Balance>,
    worker: usize,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.balance.loads[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

/// One worker's end of the [`Balance`]: places what it accepts, and receives what others hand it.
pub(crate) struct WorkerShare {
    balance: Arc<Balance>,
    worker: usize,
    inbox: RefCell<mpsc::UnboundedReceiver<Handoff>>,
}

impl WorkerShare {
    /// Counts a connection this worker just accepted as its own, unless this worker carries
    /// more than one connection above the least loaded one: then `None`, and the connection
    /// goes to [`WorkerShare::hand_off`] before any byte of it is read.
    pub(crate) fn keep(&self) -> Option<Load> {
        let loads = &self.balance.loads;
        let least = self.balance.least_loaded();
        let mine = loads[self.worker].load(Ordering::Relaxed);
        let ahead = least != self.worker && mine > loads[least].load(Ordering::Relaxed) + 1;
        (!ahead).then(|| self.balance.count(self.worker))
    }

    /// Hands a connection [`WorkerShare::keep`] did not keep to the least loaded worker; gives
    /// it back, counted here, when no other worker takes it.
    pub(crate) fn hand_off(
        &self,
        stream: std::net::TcpStream,
        peer: SocketAddr,
    ) -> Option<(std::net::TcpStream, Load)> {
        match self.balance.hand_to_least_loaded(stream, peer) {
            Ok(()) => None,
            Err(stream) => Some((stream, self.balance.count(self.worker))),
        }
    }

    /// The next connection another worker (or the acceptor thread) handed here; `None` once
    /// this worker has stopped.
    pub(crate) fn poll_handoff(&self, cx: &mut Context<'_>) -> Poll<Option<Handoff>> {
        // Borrowed only within each poll, so `stop` can close the inbox meanwhile.
        self.inbox.borrow_mut().poll_recv(cx)
    }

    /// Takes no more handoffs: this worker stops accepting.
    pub(crate) fn stop(&self) {
        self.balance.loads[self.worker].fetch_add(STOPPED, Ordering::Relaxed);
        self.inbox.borrow_mut().close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> (std::net::TcpStream, SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let peer = client.local_addr().unwrap();
        (listener.accept().unwrap().0, peer)
    }

    fn received(share: &WorkerShare) -> Option<Handoff> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match share.poll_handoff(&mut cx) {
            Poll::Ready(handoff) => handoff,
            Poll::Pending => None,
        }
    }

    #[test]
    fn a_worker_hands_over_what_would_put_it_two_ahead() {
        let (balance, shares) = Balance::new(2);
        let kept: Vec<Load> = (0..2)
            .map(|_| shares[0].keep().expect("not ahead yet"))
            .collect();
        // Two here, none there: the third goes to worker 1, counted there at once.
        assert!(shares[0].keep().is_none());
        let (stream, peer) = connection();
        assert!(shares[0].hand_off(stream, peer).is_none());
        let handoff = received(&shares[1]).expect("worker 1 got the connection");
        assert_eq!(handoff.load.worker, 1);
        assert_eq!(handoff.peer, peer);
        // 2 against 1: worker 0 keeps the next one.
        assert!(shares[0].keep().is_some());
        // Closing connections frees their places.
        drop(kept);
        drop(handoff);
        assert_eq!(balance.loads[0].load(Ordering::Relaxed), 0);
        assert_eq!(balance.loads[1].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn nothing_is_handed_to_a_stopped_worker() {
        let (balance, shares) = Balance::new(2);
        shares[1].stop();
        let kept: Vec<Load> = (0..3).map(|_| shares[0].keep().expect("kept")).collect();
        let (stream, peer) = connection();
        assert!(shares[0].hand_off(stream, peer).is_none());
        assert!(received(&shares[1]).is_none());
        assert_eq!(
            received(&shares[0])
                .expect("came back to worker 0")
                .load
                .worker,
            0
        );
        drop(kept);
        shares[0].stop();
        let (stream, peer) = connection();
        assert!(balance.hand_to_least_loaded(stream, peer).is_err());
    }

    #[test]
    fn one_worker_keeps_everything() {
        let (_balance, shares) = Balance::new(1);
        let _kept: Vec<Load> = (0..3).map(|_| shares[0].keep().expect("kept")).collect();
    }
}
