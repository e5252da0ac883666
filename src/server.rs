//! Workers: the accept loop, admission, and graceful shutdown.
//!
//! [`run`] takes bound listeners and a shutdown signal, so tests and the binary start a server
//! the same way.

use std::{
    io,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use fyntr_platform::{Backend, Listener, Worker};
use tokio::sync::watch;
use tracing::{debug, info, warn};

pub use crate::admission::{Admission, Ticket};
use crate::{
    metrics::{Ending, Protocol, Refusal},
    proto::Status,
    tunnel::{self, Answer},
    worker::{Shared, WorkerContext},
};

/// Connections being refused with 503 at once, per worker; beyond this they are closed at once,
/// so a flood past the cap cannot pile up descriptors.
const MAX_REFUSING: usize = 256;
/// Pause after an accept error such as EMFILE, doubling up to [`MAX_ACCEPT_BACKOFF`].
const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// How long tunnels get to close after the shutdown grace period: a relay told to close
/// aborts its sockets, so its pending operations complete at once.
const CLOSE_AFTER_GRACE: Duration = Duration::from_secs(1);

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

/// The protocol a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontEnd {
    /// HTTP CONNECT (the proxy port).
    Connect,
    /// SOCKS5 CONNECT (`--socks5-port`).
    Socks5,
}

impl FrontEnd {
    /// The name logs use.
    pub fn name(self) -> &'static str {
        self.protocol().name()
    }

    /// What its clients speak (until a CONNECT port's client turns out to speak plain HTTP).
    pub fn protocol(self) -> Protocol {
        match self {
            Self::Connect => Protocol::Connect,
            Self::Socks5 => Protocol::Socks5,
        }
    }
}

/// The bound listening sockets of a server, each from
/// [`fyntr_platform::socket::bind_listeners`].
pub struct Listeners {
    /// The proxy port's.
    pub proxy: Vec<std::net::TcpListener>,
    /// The SOCKS5 port's, if it is on.
    pub socks5: Option<Vec<std::net::TcpListener>>,
}

impl Listeners {
    /// Only the proxy port.
    pub fn proxy(proxy: Vec<std::net::TcpListener>) -> Self {
        Self {
            proxy,
            socks5: None,
        }
    }
}

/// Runs the proxy on `backend` until `shutdown` fires and the tunnels have drained (or the grace
/// period passed).
pub(crate) fn run<B: Backend>(
    backend: B,
    shared: Arc<Shared>,
    listeners: Listeners,
    shutdown: ShutdownSignal,
) -> io::Result<()> {
    let workers = shared.config.workers.max(1);
    let mut front_ends = vec![FrontEnd::Connect];
    let mut groups = vec![listeners.proxy];
    if let Some(socks5) = listeners.socks5 {
        front_ends.push(FrontEnd::Socks5);
        groups.push(socks5);
    }
    backend.run_workers(workers, groups, move |worker| {
        run_worker(
            backend,
            worker,
            front_ends.clone(),
            Arc::clone(&shared),
            shutdown.clone(),
        )
    })
}

async fn run_worker<B: Backend>(
    backend: B,
    worker: Worker<B::Listener>,
    front_ends: Vec<FrontEnd>,
    shared: Arc<Shared>,
    mut shutdown: ShutdownSignal,
) {
    let config = &shared.config;
    let ctx = Rc::new(WorkerContext::new(
        backend,
        Arc::clone(&shared),
        worker.index,
    ));
    B::spawn(Rc::clone(ctx.gate()).run_timer());
    B::spawn(close_pipes_when_idle(Rc::clone(&ctx)));
    let listeners: Vec<_> = worker.listeners.into_iter().map(Rc::new).collect();
    for (listener, &front_end) in listeners.iter().zip(&front_ends) {
        B::spawn(accept_loop(Rc::clone(&ctx), Rc::clone(listener), front_end));
    }

    // A dropped sender counts as a request to stop.
    let _ = shutdown.wait_for(|stop| *stop).await;
    ctx.stopping.set(true);
    for listener in &listeners {
        listener.stop();
    }
    let grace = config.shutdown_grace;
    info!(
        worker = worker.index,
        open = ctx.tunnels.get(),
        grace_ms = grace.as_millis() as u64,
        "worker stopped accepting; draining its tunnels"
    );
    if !all_closed_within(&ctx, grace).await {
        warn!(
            worker = worker.index,
            open = ctx.tunnels.get(),
            "grace period over, closing remaining tunnels"
        );
        // Relaying tunnels close their sockets at once and log how they ended; connections
        // still being established, or forwarding plain HTTP, end with the worker (each logs a
        // line, see `Unserved`).
        ctx.grace_over.announce();
        if !all_closed_within(&ctx, CLOSE_AFTER_GRACE).await {
            warn!(
                worker = worker.index,
                open = ctx.tunnels.get(),
                "connections not relaying a tunnel (being established, or forwarding plain HTTP) dropped at shutdown"
            );
        }
    }
}

/// Waits until the worker has no connection left, for `limit` at most; returns whether none is.
async fn all_closed_within<B: Backend>(ctx: &WorkerContext<B>, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        while ctx.tunnels.get() > 0 {
            ctx.all_closed.notified().await;
        }
    })
    .await
    .is_ok()
}

async fn accept_loop<B: Backend>(
    ctx: Rc<WorkerContext<B>>,
    listener: Rc<B::Listener>,
    front_end: FrontEnd,
) {
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
                        // Moved into the task in place of the client's address and front end,
                        // so that it costs an idle tunnel no memory.
                        let unserved = Unserved {
                            client: peer,
                            front_end,
                        };
                        B::spawn(async move {
                            let (client, front_end) = (unserved.client, unserved.front_end);
                            tunnel::serve(
                                Rc::clone(&tunnel_ctx),
                                stream,
                                client,
                                front_end,
                                ticket,
                            )
                            .await;
                            unserved.served();
                            let left = tunnel_ctx.tunnels.get() - 1;
                            tunnel_ctx.tunnels.set(left);
                            if left == 0 {
                                tunnel_ctx.all_closed.notify_waiters();
                            }
                        });
                    }
                    None => refuse_over_cap(&ctx, stream, peer, front_end),
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
            // A connection that failed between the handshake and accept (ECONNABORTED), or
            // anything else: never a reason to stop serving.
            Err(error) => debug!(error = %error, "accept failed"),
        }
    }
}

/// A connection's task until it is served. Relaying tunnels log how they end, also at
/// shutdown; a connection still being established, or forwarding plain HTTP, when its worker
/// ends is dropped with the worker's tasks, and this says so, one line each.
struct Unserved {
    client: std::net::SocketAddr,
    front_end: FrontEnd,
}

impl Unserved {
    /// The connection was served (and logged how it ended): nothing to say.
    fn served(self) {
        std::mem::forget(self);
    }
}

impl Drop for Unserved {
    fn drop(&mut self) {
        let protocol = self.front_end.name();
        if std::thread::panicking() {
            warn!(client = %self.client, protocol, "connection dropped: its task panicked");
        } else {
            info!(client = %self.client, protocol, "connection dropped at shutdown");
        }
    }
}

fn refuse_over_cap<B: Backend>(
    ctx: &Rc<WorkerContext<B>>,
    stream: B::Stream,
    peer: std::net::SocketAddr,
    front_end: FrontEnd,
) {
    let cap = ctx.shared.admission.cap();
    let stats = ctx.stats();
    stats.count_ending(front_end.protocol(), Ending::Refused);
    if front_end == FrontEnd::Socks5 {
        stats.count_refusal(front_end.protocol(), Refusal::Closed);
        // Nothing a SOCKS5 client could read says "busy" before its greeting (as in fyntr
        // 0.4.8): the connection closes at once.
        info!(client = %peer, protocol = front_end.name(), cap, "connection closed: connection cap reached");
        return;
    }
    if ctx.refusing.get() >= MAX_REFUSING {
        stats.count_refusal(front_end.protocol(), Refusal::Closed);
        warn!(client = %peer, cap, "connection cap reached; closed without a response");
        return;
    }
    stats.count_refusal(front_end.protocol(), Refusal::Status(503));
    info!(client = %peer, status = 503, cap, "request refused: connection cap reached");
    ctx.refusing.set(ctx.refusing.get() + 1);
    let ctx = Rc::clone(ctx);
    B::spawn(async move {
        tunnel::respond_and_close(&ctx, &stream, Answer::Status(Status::ServiceUnavailable)).await;
        ctx.refusing.set(ctx.refusing.get() - 1);
    });
}
