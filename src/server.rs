//! Workers: the accept loop, admission, and graceful shutdown.
//!
//! [`run`] takes bound listeners and a shutdown signal, so tests and the binary start a server
//! the same way.

use std::{
    cell::{Cell, RefCell},
    io,
    rc::Rc,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use fyntr_platform::{Backend, Listener, PipeBudget, PipePool, Worker};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::{
    config::{Config, Pacing},
    dial::SocketTuning,
    gate::Gate,
    policy::Policy,
    proto::Status,
    sched::pacer::{on_the_wire, Pacer, Rate},
    tunnel,
};

/// Connections being refused with 503 at once, per worker; beyond this they are closed at once,
/// so a flood past the cap cannot pile up descriptors.
const MAX_REFUSING: usize = 256;
/// Pause after an accept error such as EMFILE, doubling up to [`MAX_ACCEPT_BACKOFF`].
const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The connection cap, shared by all workers. Counts every accepted client connection, pending
/// CONNECTs included.
#[derive(Debug)]
pub struct Admission {
    cap: usize,
    active: AtomicUsize,
}

impl Admission {
    /// A cap of `cap` concurrent connections.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            active: AtomicUsize::new(0),
        }
    }

    /// Admits one connection if the cap allows; the ticket gives the place back when dropped.
    pub fn try_admit(self: &Arc<Self>) -> Option<Ticket> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |active| {
                (active < self.cap).then_some(active + 1)
            })
            .ok()?;
        Some(Ticket(Arc::clone(self)))
    }

    /// Connections admitted now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

/// One admitted connection's place under the cap.
#[derive(Debug)]
pub struct Ticket(Arc<Admission>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What all workers share (read-only but for atomics).
struct Shared {
    config: Config,
    policy: Policy,
    admission: Arc<Admission>,
    upload_pacer: Option<Arc<Pacer>>,
    download_pacer: Option<Arc<Pacer>>,
    connect_pacer: Option<Arc<Pacer>>,
    /// What every worker's pipe pool draws from.
    pipe_budget: PipeBudget,
}

impl Shared {
    fn new(config: Config) -> Shared {
        let epoch = Instant::now();
        // A byte pacer's burst is one whole chunk plus 2 ms of the rate: room for a timer that
        // fires late (Tokio's resolution is 1 ms) without losing the rate, no more. With 2 ms
        // in all, late timers cost a fifth of a 19 Mbit/s rate on loopback.
        let byte_pacer = |rate: Option<Rate>| {
            rate.map(|rate| {
                let slack = (rate.bytes_per_second() * 0.002) as u64;
                let chunk = on_the_wire(config.buffer_size as u64);
                Arc::new(Pacer::new(rate, chunk + slack, epoch))
            })
        };
        // Connections: a burst of a tenth of a second's worth, at least one.
        let connect_pacer = config.pacing.connects_per_second.map(|per_second| {
            let burst = (per_second / 10.0).floor().max(1.0) as u64;
            Arc::new(Pacer::new(Rate(per_second), burst, epoch))
        });
        Shared {
            policy: Policy::new(&config.policy),
            admission: Arc::new(Admission::new(config.connection_cap)),
            upload_pacer: byte_pacer(config.pacing.upload),
            download_pacer: byte_pacer(config.pacing.download),
            connect_pacer,
            pipe_budget: config
                .pipe_budget
                .map_or_else(PipeBudget::unlimited, PipeBudget::new),
            config,
        }
    }
}

/// What one worker's tasks share. Single-threaded.
pub(crate) struct WorkerContext<B: Backend> {
    shared: Arc<Shared>,
    pool: B::Pool,
    pipes: PipePool,
    /// Where interactive messages and request heads land first (see `relay` and `tunnel`);
    /// only ever borrowed without an await in between.
    scratch: RefCell<Box<[u8]>>,
    gate: Rc<Gate>,
    bulk_flows: crate::send_queue::BulkFlows,
    tunnels: Cell<usize>,
    refusing: Cell<usize>,
    stopping: Cell<bool>,
    all_closed: Notify,
}

impl<B: Backend> WorkerContext<B> {
    pub(crate) fn config(&self) -> &Config {
        &self.shared.config
    }

    pub(crate) fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    pub(crate) fn pool(&self) -> &B::Pool {
        &self.pool
    }

    /// The worker's pipes for zero-copy relaying; empty-handed off Linux or when disabled.
    pub(crate) fn pipes(&self) -> &PipePool {
        &self.pipes
    }

    /// The worker's scratch buffer for interactive reads and request heads.
    pub(crate) fn scratch(&self) -> &RefCell<Box<[u8]>> {
        &self.scratch
    }

    pub(crate) fn gate(&self) -> &Rc<Gate> {
        &self.gate
    }

    /// The worker's bulk flows, among which kernel send queues are shared out.
    pub(crate) fn bulk_flows(&self) -> &crate::send_queue::BulkFlows {
        &self.bulk_flows
    }

    /// The shared pacer of new upstream connections, if `--connect-rate` is set.
    pub(crate) fn connect_pacer(&self) -> Option<&Pacer> {
        self.shared.connect_pacer.as_deref()
    }

    /// Socket options for a new upstream connection: with `--download-rate`, a first receive
    /// window of the new tunnel's share (see [`Pacing::first_window_clamp`]).
    pub(crate) fn socket_tuning(&self) -> SocketTuning {
        let tunnels = self.shared.admission.active();
        SocketTuning {
            window_clamp: self
                .shared
                .config
                .pacing
                .download
                .map(|rate| Pacing::first_window_clamp(rate, tunnels)),
        }
    }

    /// The receive window a paced download may offer now: its share of the rate over
    /// [`Pacing::BUFFER_TIME`] among the tunnels open now.
    pub(crate) fn download_window(&self) -> Option<usize> {
        let tunnels = self.shared.admission.active();
        self.shared
            .config
            .pacing
            .download
            .map(|rate| Pacing::socket_buffer(rate, tunnels))
    }
}

/// How long a worker without tunnels keeps its spare relay pipes: long enough that back-to-back
/// short tunnels (a Terraform run) reuse them, short enough that an idle proxy holds no
/// descriptors beyond its listeners.
const PIPE_LINGER: Duration = Duration::from_secs(1);

/// Closes the worker's spare pipes once it has had no tunnel for [`PIPE_LINGER`].
async fn close_pipes_when_idle<B: Backend>(ctx: Rc<WorkerContext<B>>) {
    loop {
        ctx.all_closed.notified().await;
        tokio::time::sleep(PIPE_LINGER).await;
        if ctx.tunnels.get() == 0 {
            ctx.pipes.close_free();
        }
    }
}

/// A way to ask a running server to stop: send `true`, or drop the sender.
pub type ShutdownSignal = watch::Receiver<bool>;

/// Runs the proxy on `backend` until `shutdown` fires and the tunnels have drained (or the grace
/// period passed). `listeners` come from [`fyntr_platform::socket::bind_listeners`].
pub fn run<B: Backend>(
    backend: B,
    config: Config,
    listeners: Vec<std::net::TcpListener>,
    shutdown: ShutdownSignal,
) -> io::Result<()> {
    let config = config.resolve();
    let workers = config.workers.max(1);
    let shared = Arc::new(Shared::new(config));
    backend.run_workers(workers, listeners, move |worker| {
        run_worker(backend, worker, Arc::clone(&shared), shutdown.clone())
    })
}

async fn run_worker<B: Backend>(
    backend: B,
    worker: Worker<B::Listener>,
    shared: Arc<Shared>,
    mut shutdown: ShutdownSignal,
) {
    let config = &shared.config;
    let ctx = Rc::new(WorkerContext::<B> {
        pool: backend.new_pool(config.buffer_size, config.max_buffers_per_worker),
        pipes: PipePool::new(
            config.splice_chunk,
            config.buffer_size,
            config.pipes_per_worker,
            shared.pipe_budget.clone(),
        ),
        scratch: RefCell::new(vec![0; crate::relay::INTERACTIVE_READ].into_boxed_slice()),
        gate: Gate::new(
            config.scheduler,
            shared.upload_pacer.clone(),
            shared.download_pacer.clone(),
        ),
        bulk_flows: Default::default(),
        tunnels: Cell::new(0),
        refusing: Cell::new(0),
        stopping: Cell::new(false),
        all_closed: Notify::new(),
        shared: Arc::clone(&shared),
    });
    B::spawn(Rc::clone(ctx.gate()).run_timer());
    B::spawn(close_pipes_when_idle(Rc::clone(&ctx)));
    let listener = Rc::new(worker.listener);
    B::spawn(accept_loop(Rc::clone(&ctx), Rc::clone(&listener)));

    // A dropped sender counts as a request to stop.
    let _ = shutdown.wait_for(|stop| *stop).await;
    ctx.stopping.set(true);
    listener.stop();
    let grace = config.shutdown_grace;
    info!(
        worker = worker.index,
        open = ctx.tunnels.get(),
        grace_ms = grace.as_millis() as u64,
        "worker stopped accepting; draining its tunnels"
    );
    let drained = tokio::time::timeout(grace, async {
        while ctx.tunnels.get() > 0 {
            ctx.all_closed.notified().await;
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            worker = worker.index,
            open = ctx.tunnels.get(),
            "grace period over, closing remaining tunnels"
        );
    }
}

async fn accept_loop<B: Backend>(ctx: Rc<WorkerContext<B>>, listener: Rc<B::Listener>) {
    let mut backoff = FIRST_ACCEPT_BACKOFF;
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = listener.accept().await;
        if ctx.stopping.get() {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                backoff = FIRST_ACCEPT_BACKOFF;
                match ctx.shared.admission.try_admit() {
                    Some(ticket) => {
                        ctx.tunnels.set(ctx.tunnels.get() + 1);
                        let tunnel_ctx = Rc::clone(&ctx);
                        B::spawn(async move {
                            tunnel::serve(Rc::clone(&tunnel_ctx), stream, peer, ticket).await;
                            let left = tunnel_ctx.tunnels.get() - 1;
                            tunnel_ctx.tunnels.set(left);
                            if left == 0 {
                                tunnel_ctx.all_closed.notify_waiters();
                            }
                        });
                    }
                    None => refuse_over_cap(&ctx, stream, peer),
                }
            }
            Err(error) if fyntr_platform::socket::is_resource_exhaustion(&error) => {
                // Out of descriptors or memory: accepting again at once would spin. Back off
                // while tunnels close; warn at most once a second.
                if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    warn!(error = %error, backoff_ms = backoff.as_millis() as u64, "accept failed, backing off");
                    last_warning = Some(Instant::now());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
            Err(error) => debug!(error = %error, "accept failed"),
        }
    }
}

fn refuse_over_cap<B: Backend>(
    ctx: &Rc<WorkerContext<B>>,
    stream: B::Stream,
    peer: std::net::SocketAddr,
) {
    let cap = ctx.shared.admission.cap;
    if ctx.refusing.get() >= MAX_REFUSING {
        warn!(client = %peer, cap, "connection cap reached; closed without a response");
        return;
    }
    info!(client = %peer, status = 503, cap, "request refused: connection cap reached");
    ctx.refusing.set(ctx.refusing.get() + 1);
    let ctx = Rc::clone(ctx);
    B::spawn(async move {
        tunnel::respond_and_close(&ctx, &stream, Status::ServiceUnavailable).await;
        ctx.refusing.set(ctx.refusing.get() - 1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_holds_the_cap_and_tickets_give_places_back() {
        let admission = Arc::new(Admission::new(2));
        let a = admission.try_admit().unwrap();
        let _b = admission.try_admit().unwrap();
        assert!(admission.try_admit().is_none());
        drop(a);
        assert!(admission.try_admit().is_some());
    }
}
