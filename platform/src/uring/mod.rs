//! The io_uring backend (Linux 6.0+): each worker is one thread that drives its own ring.
//!
//! A worker's thread runs an executor of its own ([`executor`]) whose only wait is
//! `io_uring_enter`: each turn runs the ready tasks, then submits everything they queued and,
//! when nothing is left to run, waits for completions in the same call ([`submission`]).
//! Sockets receive through a multishot receive into a provided buffer ring ([`buffers`]), so an
//! idle tunnel holds no buffer and no operation is submitted per message; the relay writes the
//! very buffer a receive filled, from the ring's registered region, in the order the DRR grants
//! chunks. Listeners accept through a multishot accept ([`listener`]). Nothing on the data path
//! calls `recv`, `send` or `epoll`.
//!
//! Timers and name resolution stay Tokio's: each worker enters the handle of one small shared
//! Tokio runtime ([`timers`]), whose thread runs the timer wheel and whose blocking pool
//! resolves names. A timer that fires, or a resolution that completes, wakes the worker through
//! its eventfd (one completion on its ring). The core above the [`crate::Backend`] trait is the
//! same for both backends.
//!
//! Cancellation: dropping a future that waits for a ring operation cancels the operation; the
//! memory it uses stays with the ring until its completion arrives.

mod buffers;
mod executor;
mod listener;
mod probe;
mod stream;
mod submission;
#[cfg(test)]
mod tests;
mod timers;

use std::{cell::RefCell, future::Future, io, net::SocketAddr, os::fd::AsRawFd, rc::Rc};

pub use buffers::{UringBuffer, UringPool, RING_BUFFERS};
pub use listener::UringListener;
pub use probe::{probe, ProbeReport, Unavailable};
pub use stream::UringStream;
pub use submission::RingSetup;

use crate::{balance::Balance, Backend, SocketTuning, Worker};

/// The io_uring backend.
#[derive(Clone, Copy, Debug)]
pub struct Uring {
    buffer_size: usize,
    register_buffers: bool,
    /// Buffers in each provided ring (small, bulk).
    ring_buffers: (u16, u16),
}

impl Uring {
    /// A backend whose workers relay through buffers of `buffer_size` bytes, registered with
    /// the ring when `register_buffers` (which pins them, see [`buffers`]).
    pub fn new(buffer_size: usize, register_buffers: bool) -> Self {
        Self {
            buffer_size,
            register_buffers,
            ring_buffers: (buffers::SMALL_BUFFERS, RING_BUFFERS),
        }
    }

    /// The same with `small` and `bulk` buffers (powers of two) in its provided rings.
    #[cfg(test)]
    fn with_ring_buffers(mut self, small: u16, bulk: u16) -> Self {
        self.ring_buffers = (small, bulk);
        self
    }
}

/// One worker: its ring, its relay buffers and its tasks.
pub(super) struct RingWorker {
    // Field order is teardown order: the ring closes before the buffers it uses are unmapped.
    submission: submission::Submission,
    small: Rc<buffers::ProvidedBuffers>,
    bulk: Rc<buffers::ProvidedBuffers>,
    /// Whether both regions are registered as fixed buffers: `None` until the first write
    /// from one (registration pins them).
    registered: std::cell::Cell<Option<bool>>,
    may_register: bool,
    executor: executor::Executor,
}

thread_local! {
    static WORKER: RefCell<Option<Rc<RingWorker>>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's worker.
///
/// # Panics
/// Outside an io_uring worker.
pub(super) fn with_worker<T>(f: impl FnOnce(&RingWorker) -> T) -> T {
    try_with_worker(f).expect("io_uring operation outside an io_uring worker")
}

/// Runs `f` with this thread's worker, if it has one (not while it is torn down).
pub(super) fn try_with_worker<T>(f: impl FnOnce(&RingWorker) -> T) -> Option<T> {
    let worker = WORKER
        .try_with(|worker| worker.borrow().clone())
        .ok()
        .flatten()?;
    Some(f(&worker))
}

impl RingWorker {
    fn new(
        buffer_size: usize,
        register_buffers: bool,
        (small_count, bulk_count): (u16, u16),
    ) -> io::Result<Rc<Self>> {
        let (ring, setup) = submission::build_ring(submission::SUBMISSION_ENTRIES)?;
        let submission = submission::Submission::new(ring, setup);
        let small = buffers::ProvidedBuffers::new(
            buffers::SMALL_SIZE,
            small_count,
            buffers::SMALL_GROUP,
            &submission,
        )?;
        let bulk = buffers::ProvidedBuffers::new(
            buffer_size,
            bulk_count,
            buffers::BULK_GROUP,
            &submission,
        )?;
        let executor = executor::Executor::new()?;
        submission.arm_remote_wake(executor.eventfd());
        Ok(Rc::new(Self {
            submission,
            small,
            bulk,
            registered: std::cell::Cell::new(None),
            may_register: register_buffers,
            executor,
        }))
    }

    /// Operations in flight and buffers on the rings (small, bulk), for tests that check
    /// everything comes back.
    #[cfg(test)]
    fn outstanding() -> (usize, usize, usize) {
        with_worker(|worker| {
            (
                worker.submission.in_flight(),
                worker.small.available(),
                worker.bulk.available(),
            )
        })
    }

    /// The ring of buffer group `group`.
    fn buffers(&self, group: u16) -> &Rc<buffers::ProvidedBuffers> {
        if group == buffers::SMALL_GROUP {
            &self.small
        } else {
            &self.bulk
        }
    }

    /// The fixed-buffer index writes from `provided` may use, registering both regions on
    /// first use; `None` where registration is refused.
    fn fixed_index(&self, provided: &buffers::Provided) -> Option<u16> {
        let registered = self.registered.get().unwrap_or_else(|| {
            let outcome = if self.may_register {
                let regions = [self.small.region(), self.bulk.region()];
                // Safety: both regions stay mapped until after the ring is closed.
                self.submission
                    .with_submitter(|submitter| unsafe { submitter.register_buffers(&regions) })
            } else {
                Err(io::Error::other("RLIMIT_MEMLOCK leaves no room"))
            };
            if let Err(error) = &outcome {
                tracing::debug!(%error, "io_uring: relay buffers not registered; writes are plain sends");
            }
            self.registered.set(Some(outcome.is_ok()));
            outcome.is_ok()
        });
        // The regions are registered in group order.
        registered.then(|| provided.group())
    }

    /// Runs `future` on this thread until it completes, then drops every task it left.
    fn run<T>(self: Rc<Self>, future: impl Future<Output = T>) -> io::Result<T> {
        WORKER.with(|worker| *worker.borrow_mut() = Some(Rc::clone(&self)));
        let result = self.executor.block_on(future, |idle| {
            if self.submission.turn(idle)? {
                self.executor.take_remote_wakes();
                self.submission.arm_remote_wake(self.executor.eventfd());
            }
            Ok(())
        });
        self.executor.drop_tasks();
        WORKER.with(|worker| worker.borrow_mut().take());
        match Rc::try_unwrap(self) {
            Ok(worker) => {
                let RingWorker {
                    submission,
                    small,
                    bulk,
                    executor,
                    ..
                } = worker;
                submission.close();
                drop((small, bulk));
                drop(executor);
            }
            Err(_) => tracing::debug!("io_uring worker state still referenced at exit"),
        }
        result
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
        let timers = timers::handle()?;
        let buffer_size = self.buffer_size;
        let register = self.register_buffers;
        let ring_buffers = self.ring_buffers;
        crate::run_worker_threads("fyntr-uring", sources, move |index, sources| {
            let _timers = timers.enter();
            let ring = RingWorker::new(buffer_size, register, ring_buffers)?;
            let listeners = sources
                .into_iter()
                .map(|(listener, share)| UringListener::new(listener, share))
                .collect();
            ring.run(worker(Worker { index, listeners }))
        })
    }

    fn spawn<F: Future<Output = ()> + 'static>(future: F) {
        executor::spawn_local(Box::pin(future));
    }

    async fn yield_to_others() {
        executor::YieldNow::new().await;
    }

    async fn connect(addr: SocketAddr, tuning: SocketTuning) -> io::Result<UringStream> {
        let socket = crate::socket::socket_for(addr, tuning)?;
        // Connected through the ring as a blocking socket (one completion, no EINPROGRESS),
        // then non-blocking for the splices (see `stream`).
        socket.set_nonblocking(false)?;
        socket.set_nodelay(true)?;
        let address = Box::new(socket2::SockAddr::from(addr));
        let entry = io_uring::opcode::Connect::new(
            io_uring::types::Fd(socket.as_raw_fd()),
            address.as_ptr(),
            address.len(),
        )
        .build();
        let completion = with_worker(|worker| {
            worker
                .submission
                .single(entry, submission::Hold::Address(address))
        });
        let (result, _address) = completion.await;
        if result < 0 {
            return Err(submission::errno(result));
        }
        socket.set_nonblocking(true)?;
        Ok(UringStream::new(socket.into()))
    }

    fn new_pool(&self, buffer_size: usize, max_buffers: usize) -> UringPool {
        UringPool::new(buffer_size, max_buffers)
    }
}
