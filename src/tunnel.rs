//! One client connection: handshake, policy, dial, then the relay.

use std::{
    net::SocketAddr,
    rc::Rc,
    time::{Duration, Instant},
};

use fyntr_platform::{Backend, Stream};
use tracing::info;

use crate::{
    dial,
    proto::{self, response::ESTABLISHED, Parse, Status, Target},
    relay::{self, RelayEnd, Traffic},
    server::Ticket,
    worker::WorkerContext,
};

/// After an error response, how long to keep reading what the client still sends, so that
/// closing with unread data does not turn into a reset that destroys the response in flight.
const LINGER: Duration = Duration::from_secs(2);
/// At most this much is read and discarded while lingering.
const LINGER_BYTES: usize = 256 * 1024;

/// How a connection ended, for its log line.
enum Outcome {
    /// Refused with an error status.
    Refused(Status, String),
    /// The client left (or failed) before a tunnel was established.
    ClientGone(String),
    /// The tunnel ran and ended.
    Relayed(RelayEnd),
}

/// What is known about a connection when it ends.
struct Report {
    target: Option<Target>,
    upstream: Option<SocketAddr>,
    traffic: Traffic,
    /// Time waited for a `--connect-rate` slot.
    connect_wait: Duration,
    outcome: Outcome,
}

impl Report {
    fn new() -> Self {
        Self {
            target: None,
            upstream: None,
            traffic: Traffic::default(),
            connect_wait: Duration::ZERO,
            outcome: Outcome::ClientGone(String::new()),
        }
    }
}

/// Serves one accepted client until its connection ends, then logs one line about it.
pub(crate) async fn serve<B: Backend>(
    ctx: Rc<WorkerContext<B>>,
    client: B::Stream,
    peer: SocketAddr,
    ticket: Ticket,
) {
    let started = Instant::now();
    let mut report = Report::new();
    run(&ctx, &client, started, &mut report).await;
    drop(ticket);
    log(peer, started.elapsed(), &report);
}

async fn run<B: Backend>(
    ctx: &WorkerContext<B>,
    client: &B::Stream,
    started: Instant,
    report: &mut Report,
) {
    // The handshake's state (head buffer, timers, resolver and dial futures) lives in its own
    // allocation, freed once the tunnel is up: an established idle tunnel then costs only the
    // relay's waiting state.
    let Some((upstream, pipelined)) = Box::pin(establish(ctx, client, started, report)).await
    else {
        return;
    };
    let observed_peer = report
        .upstream
        .map(|reached| reached.ip())
        .filter(|ip| !ip.is_loopback());
    let (traffic, end) = relay::relay(
        &ctx.relay_context(),
        client,
        &upstream,
        &pipelined,
        observed_peer,
    )
    .await;
    report.traffic = traffic;
    report.outcome = Outcome::Relayed(end);
}

/// Handshake, policy, dial and the 200. Returns the upstream and the bytes the client pipelined
/// after its head, or `None` when the connection ended here (the report says how).
async fn establish<B: Backend>(
    ctx: &WorkerContext<B>,
    client: &B::Stream,
    started: Instant,
    report: &mut Report,
) -> Option<(B::Stream, Vec<u8>)> {
    let (target, mut head, consumed) = match read_head(ctx, client, started).await {
        Ok(parsed) => parsed,
        Err(HeadFailure::Refuse(status, reason)) => {
            refuse(ctx, client, status, reason, report).await;
            return None;
        }
        Err(HeadFailure::Gone(reason)) => {
            report.outcome = Outcome::ClientGone(reason);
            return None;
        }
    };
    report.target = Some(target.clone());
    if let Some(pacer) = ctx.connect_pacer() {
        // Connection storms wait their turn in arrival order, within the handshake deadline.
        let now = Instant::now();
        let deadline = started + ctx.config().handshake_timeout;
        match pacer.reserve(1, now, deadline) {
            Some(turn) => {
                tokio::time::sleep_until(turn.into()).await;
                report.connect_wait = turn.saturating_duration_since(now);
            }
            None => {
                let reason = "--connect-rate: no connection slot before the handshake deadline";
                refuse(
                    ctx,
                    client,
                    Status::ServiceUnavailable,
                    reason.into(),
                    report,
                )
                .await;
                return None;
            }
        }
    }
    let policy = ctx.policy();
    let plan = ctx.config().dial;
    let connected = match policy.check_port(target.port) {
        Err(denied) => Err((Status::Forbidden, denied.to_string())),
        Ok(()) => match dial::resolve(&target.host, target.port, &plan).await {
            Err(error) => Err((error.status(), error.to_string())),
            Ok(addresses) => match policy.filter_addresses(&target.host, addresses) {
                Err(denied) => Err((Status::Forbidden, denied.to_string())),
                Ok(addresses) => dial::connect::<B>(&addresses, &plan, &ctx.socket_tuning())
                    .await
                    .map_err(|error| (error.status(), error.to_string())),
            },
        },
    };
    let (upstream, reached) = match connected {
        Ok(connected) => connected,
        Err((status, reason)) => {
            refuse(ctx, client, status, reason, report).await;
            return None;
        }
    };
    report.upstream = Some(reached);
    if let Err(error) = client.send_all(ESTABLISHED).await {
        report.outcome = Outcome::ClientGone(format!("writing 200 failed: {error}"));
        upstream.abort();
        return None;
    }
    head.drain(..consumed);
    head.shrink_to_fit();
    Some((upstream, head))
}

enum HeadFailure {
    Refuse(Status, String),
    Gone(String),
}

/// Reads until a complete head (or an error), within the handshake timeout.
///
/// Returns the target, everything read, and how much of it the head used.
async fn read_head<B: Backend>(
    ctx: &WorkerContext<B>,
    client: &B::Stream,
    started: Instant,
) -> Result<(Target, Vec<u8>, usize), HeadFailure> {
    let deadline = started + ctx.config().handshake_timeout;
    let mut received = Vec::new();
    loop {
        match proto::parse(&received) {
            Ok(Parse::Complete { request, consumed }) => {
                return Ok((request.target, received, consumed))
            }
            Ok(Parse::Partial) => {}
            Err(error) => return Err(HeadFailure::Refuse(error.status(), error.to_string())),
        }
        // Read before waiting: a client sends its head right after connecting, so it has
        // usually arrived by the time the connection is accepted, and a readiness wait first
        // would cost a trip through the worker's event loop.
        match recv_with_scratch(ctx, client, |bytes| received.extend_from_slice(bytes)) {
            Ok(0) => {
                let reason = if received.is_empty() {
                    "closed without a request".to_string()
                } else {
                    format!(
                        "closed after {} bytes of an incomplete head",
                        received.len()
                    )
                };
                return Err(HeadFailure::Gone(reason));
            }
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(HeadFailure::Gone(format!("read failed: {error}"))),
        }
        // Only readiness is raced against the deadline; the read itself is never cancelled.
        match tokio::time::timeout_at(deadline.into(), client.readable()).await {
            Err(_) => {
                let reason = format!(
                    "request head incomplete after {:?} ({} bytes received)",
                    ctx.config().handshake_timeout,
                    received.len()
                );
                return Err(HeadFailure::Refuse(Status::RequestTimeout, reason));
            }
            Ok(Err(error)) => return Err(HeadFailure::Gone(format!("read failed: {error}"))),
            Ok(Ok(())) => {}
        }
    }
}

/// One non-blocking read (`recv`) into the worker's scratch buffer, handing what it got to
/// `keep`. Handshakes are read and answered with plain syscalls, like the relay's small
/// messages, rather than through pool buffers: on io_uring a ring read costs a
/// submission and a completion, and taking a pool buffer would register the worker's buffers,
/// pinning them for a handshake of a few hundred bytes.
fn recv_with_scratch<B: Backend>(
    ctx: &WorkerContext<B>,
    stream: &B::Stream,
    keep: impl FnOnce(&[u8]),
) -> std::io::Result<usize> {
    let mut scratch = ctx.scratch().borrow_mut();
    let read = stream.try_recv(&mut scratch)?;
    keep(&scratch[..read]);
    Ok(read)
}

/// Answers with an error status and closes cleanly.
async fn refuse<B: Backend>(
    ctx: &WorkerContext<B>,
    client: &B::Stream,
    status: Status,
    reason: String,
    report: &mut Report,
) {
    report.outcome = Outcome::Refused(status, reason);
    respond_and_close(ctx, client, status).await;
}

/// Sends `status`, half-closes, and reads the client's leftovers for a moment before closing,
/// so that the response is not destroyed by a reset.
pub(crate) async fn respond_and_close<B: Backend>(
    ctx: &WorkerContext<B>,
    client: &B::Stream,
    status: Status,
) {
    if client.send_all(status.response()).await.is_err() || client.shutdown_write().is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline.into(), client.readable()).await {
            Ok(Ok(())) => {}
            _ => break,
        }
        match recv_with_scratch(ctx, client, |_| {}) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
}

fn log(peer: SocketAddr, duration: Duration, report: &Report) {
    let target = report
        .target
        .as_ref()
        .map_or_else(|| "-".to_string(), ToString::to_string);
    let upstream = report
        .upstream
        .map_or_else(|| "-".to_string(), |address| address.to_string());
    let duration_ms = duration.as_millis() as u64;
    match &report.outcome {
        Outcome::Relayed(end) => info!(
            client = %peer,
            target = %target,
            upstream = %upstream,
            up_bytes = report.traffic.upload,
            down_bytes = report.traffic.download,
            duration_ms,
            up_wait_ms = report.traffic.upload_wait.as_millis() as u64,
            down_wait_ms = report.traffic.download_wait.as_millis() as u64,
            connect_wait_ms = report.connect_wait.as_millis() as u64,
            outcome = %end,
            "tunnel closed"
        ),
        Outcome::Refused(status, reason) => info!(
            client = %peer,
            target = %target,
            upstream = %upstream,
            status = status.code(),
            duration_ms,
            reason = %reason,
            "request refused"
        ),
        Outcome::ClientGone(reason) => info!(
            client = %peer,
            target = %target,
            duration_ms,
            reason = %reason,
            "client left before the tunnel was established"
        ),
    }
}
