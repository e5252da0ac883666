//! One client connection: handshake, policy, dial, then the relay.

use std::{
    net::SocketAddr,
    rc::Rc,
    time::{Duration, Instant},
};

use fyntr_platform::{Backend, Stream};
use tracing::info;

pub(crate) use crate::establish::{connect_upstream, Answer, PortRule};
use crate::{
    metrics::{Ending, Protocol, WorkerStats},
    proto::{
        self, http,
        response::ESTABLISHED,
        socks5::{self, GreetingError, Reply},
        Parse, Status, Target,
    },
    relay::{self, RelayEnd, Traffic},
    server::{FrontEnd, Ticket},
    worker::WorkerContext,
};

/// After an error response, how long to keep reading what the client still sends, so that
/// closing with unread data does not turn into a reset that destroys the response in flight.
const LINGER: Duration = Duration::from_secs(2);
/// At most this much is read and discarded while lingering.
const LINGER_BYTES: usize = 256 * 1024;

/// How a connection ended, for its log line.
pub(crate) enum Outcome {
    /// It carried plain HTTP requests, each logged on its own.
    Forwarded,
    /// Refused, with what the client was told.
    Refused(Answer, String),
    /// The client left (or failed) before a tunnel was established.
    ClientGone(String),
    /// The tunnel ran and ended.
    Relayed(RelayEnd),
}

/// What is known about a connection when it ends.
pub(crate) struct Report {
    pub(crate) front_end: FrontEnd,
    pub(crate) client: SocketAddr,
    pub(crate) target: Option<Target>,
    pub(crate) upstream: Option<SocketAddr>,
    traffic: Traffic,
    /// Time waited for a `--connect-rate` slot.
    pub(crate) connect_wait: Duration,
    pub(crate) outcome: Outcome,
}

impl Report {
    pub(crate) fn new(front_end: FrontEnd, client: SocketAddr) -> Self {
        Self {
            front_end,
            client,
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
    front_end: FrontEnd,
    ticket: Ticket,
) {
    let started = Instant::now();
    let mut report = Report::new(front_end, peer);
    run(&ctx, &client, started, &mut report).await;
    drop(ticket);
    count(ctx.stats(), &report);
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
    let (upstream, pipelined) = match Box::pin(establish(ctx, client, started, report)).await {
        None => return,
        Some(Established::Tunnel(upstream, pipelined)) => (upstream, pipelined),
        Some(Established::Forward(request, rest)) => {
            ctx.stats().opened(Protocol::Http);
            Box::pin(crate::forward::serve(ctx, client, request, rest, report)).await;
            ctx.stats().closed(Protocol::Http);
            report.outcome = Outcome::Forwarded;
            return;
        }
    };
    let observed_peer = report
        .upstream
        .map(|reached| reached.ip())
        .filter(|ip| !ip.is_loopback());
    let protocol = report.front_end.protocol();
    let live = ctx.live();
    ctx.stats().opened(protocol);
    let (traffic, end) = relay::relay(
        &ctx.relay_context(protocol, live.idle_timeout),
        client,
        &upstream,
        &pipelined,
        observed_peer,
    )
    .await;
    ctx.stats().closed(protocol);
    ctx.stats().observe_tunnel(started.elapsed());
    report.traffic = traffic;
    report.outcome = Outcome::Relayed(end);
}

/// Handshake, policy, dial and the success answer (200, or SOCKS5 reply 00). Returns the
/// upstream and the bytes the client pipelined after its request, or `None` when the
/// connection ended here (the report says how).
async fn establish<B: Backend>(
    ctx: &WorkerContext<B>,
    client: &B::Stream,
    started: Instant,
    report: &mut Report,
) -> Option<Established<B::Stream>> {
    let front_end = report.front_end;
    let handshake_timeout = ctx.live().handshake_timeout;
    let deadline = started + handshake_timeout;
    let request = match front_end {
        FrontEnd::Connect => read_head(ctx, client, deadline).await,
        FrontEnd::Socks5 => read_socks5_request(ctx, client, deadline).await,
    };
    let (request, mut head, consumed) = match request {
        Ok(parsed) => parsed,
        Err(HeadFailure::Refuse(answer, reason)) => {
            refuse(ctx, client, answer, reason, report).await;
            return None;
        }
        Err(HeadFailure::Gone(reason)) => {
            report.outcome = Outcome::ClientGone(reason);
            return None;
        }
    };
    let (target, mut head, consumed) = match request {
        Parsed::Tunnel(target) => (target, head, consumed),
        Parsed::Forward(request) => {
            head.drain(..consumed);
            return Some(Established::Forward(request, head));
        }
    };
    report.target = Some(target.clone());
    let (upstream, reached) =
        match connect_upstream(ctx, &target, PortRule::Tunnel, deadline, report).await {
            Ok(connected) => connected,
            Err((answer, reason)) => {
                refuse(ctx, client, answer, reason, report).await;
                return None;
            }
        };
    report.upstream = Some(reached);
    let success = match front_end {
        FrontEnd::Connect => ESTABLISHED.to_vec(),
        // BND.ADDR and BND.PORT: the upstream socket's local address (RFC 1928 section 6).
        FrontEnd::Socks5 => Reply::Succeeded.encode(upstream.local_addr().ok()),
    };
    if let Err(error) = client.send_all(&success).await {
        report.outcome = Outcome::ClientGone(format!("writing the success reply failed: {error}"));
        upstream.abort();
        return None;
    }
    head.drain(..consumed);
    head.shrink_to_fit();
    Some(Established::Tunnel(upstream, head))
}

/// What a client's first request led to.
enum Established<S> {
    /// A tunnel to this upstream, with the bytes the client pipelined after its request.
    Tunnel(S, Vec<u8>),
    /// A plain HTTP request to forward, with the bytes after its head.
    Forward(http::Request, Vec<u8>),
}

enum HeadFailure {
    Refuse(Answer, String),
    Gone(String),
}

/// What a client asked for.
enum Parsed {
    /// A tunnel to this target (CONNECT, SOCKS5).
    Tunnel(Target),
    /// A plain HTTP request (absolute-form, on the proxy port).
    Forward(http::Request),
}

/// A request: what it asks for, everything read, and how much of it the request's head used.
type Request = (Parsed, Vec<u8>, usize);

/// Reads a CONNECT head until it is complete (or refused), by `deadline`.
async fn read_head<B: Backend>(
    ctx: &WorkerContext<B>,
    client: &B::Stream,
    deadline: Instant,
) -> Result<Request, HeadFailure> {
    let mut received = Vec::new();
    let parse = |received: &[u8]| match proto::parse(received) {
        Ok(Parse::Complete { request, consumed }) => {
            Ok(Some((Parsed::Tunnel(request.target), consumed)))
        }
        Ok(Parse::Partial) => Ok(None),
        // Another method: a plain HTTP request to forward, if it has an absolute http:// URL.
        Err(error @ proto::RequestError::NotConnect(_)) => match http::parse_request(received) {
            Ok(http::Parse::Complete { value, consumed }) => {
                Ok(Some((Parsed::Forward(value), consumed)))
            }
            Ok(http::Parse::Partial) => Ok(None),
            Err(http::HttpError::NotAbsolute(_)) => Err(HeadFailure::Refuse(
                Answer::Status(error.status()),
                error.to_string(),
            )),
            Err(error) => Err(HeadFailure::Refuse(
                Answer::Status(error.status()),
                error.to_string(),
            )),
        },
        Err(error) => Err(HeadFailure::Refuse(
            Answer::Status(error.status()),
            error.to_string(),
        )),
    };
    let timed_out = Answer::Status(Status::RequestTimeout);
    let (target, consumed) =
        read_until(ctx, client, deadline, &mut received, 0, timed_out, parse).await?;
    Ok((target, received, consumed))
}

/// Reads a SOCKS5 greeting, answers it, then reads the request, by `deadline`.
async fn read_socks5_request<B: Backend>(
    ctx: &WorkerContext<B>,
    client: &B::Stream,
    deadline: Instant,
) -> Result<Request, HeadFailure> {
    let mut received = Vec::new();
    let greeting = |received: &[u8]| match socks5::parse_greeting(received) {
        Ok(socks5::Parse::Complete { consumed, .. }) => Ok(Some(consumed)),
        Ok(socks5::Parse::Partial) => Ok(None),
        Err(error @ GreetingError::NotSocks5(_)) => {
            Err(HeadFailure::Refuse(Answer::Nothing, error.to_string()))
        }
        Err(error @ GreetingError::NoAcceptableMethod) => Err(HeadFailure::Refuse(
            Answer::NoSocks5Method,
            error.to_string(),
        )),
    };
    let greeted = read_until(
        ctx,
        client,
        deadline,
        &mut received,
        0,
        Answer::Nothing,
        greeting,
    )
    .await?;
    if let Err(error) = client.send_all(&socks5::NO_AUTHENTICATION_SELECTED).await {
        return Err(HeadFailure::Gone(format!(
            "writing the method reply failed: {error}"
        )));
    }
    let request = |received: &[u8]| match socks5::parse_request(received) {
        Ok(socks5::Parse::Complete { value, consumed }) => Ok(Some((value, consumed))),
        Ok(socks5::Parse::Partial) => Ok(None),
        Err(error) => Err(HeadFailure::Refuse(
            Answer::Socks5(error.reply()),
            error.to_string(),
        )),
    };
    let timed_out = Answer::Socks5(Reply::GeneralFailure);
    let (target, consumed) = read_until(
        ctx,
        client,
        deadline,
        &mut received,
        greeted,
        timed_out,
        request,
    )
    .await?;
    Ok((Parsed::Tunnel(target), received, greeted + consumed))
}

/// Reads into `received` until `parse`, given what arrived after its first `from` bytes, says
/// the message is complete (or refuses it), by `deadline`; a client still sending then is
/// refused with `timed_out`.
async fn read_until<B: Backend, T>(
    ctx: &WorkerContext<B>,
    client: &B::Stream,
    deadline: Instant,
    received: &mut Vec<u8>,
    from: usize,
    timed_out: Answer,
    parse: impl Fn(&[u8]) -> Result<Option<T>, HeadFailure>,
) -> Result<T, HeadFailure> {
    loop {
        if let Some(parsed) = parse(&received[from..])? {
            return Ok(parsed);
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
                    "request incomplete after {:?} ({} bytes received)",
                    ctx.live().handshake_timeout,
                    received.len()
                );
                return Err(HeadFailure::Refuse(timed_out, reason));
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
pub(crate) fn recv_with_scratch<B: Backend>(
    ctx: &WorkerContext<B>,
    stream: &B::Stream,
    keep: impl FnOnce(&[u8]),
) -> std::io::Result<usize> {
    let mut scratch = ctx.scratch().borrow_mut();
    let read = stream.try_recv(&mut scratch)?;
    keep(&scratch[..read]);
    Ok(read)
}

/// Answers a refused request and closes cleanly.
async fn refuse<B: Backend>(
    ctx: &WorkerContext<B>,
    client: &B::Stream,
    answer: Answer,
    reason: String,
    report: &mut Report,
) {
    report.outcome = Outcome::Refused(answer, reason);
    respond_and_close(ctx, client, answer).await;
}

/// Sends `answer`, half-closes, and reads the client's leftovers for a moment before closing,
/// so that the answer is not destroyed by a reset.
pub(crate) async fn respond_and_close<B: Backend>(
    ctx: &WorkerContext<B>,
    client: &B::Stream,
    answer: Answer,
) {
    let bytes = answer.bytes();
    if (!bytes.is_empty() && client.send_all(&bytes).await.is_err())
        || client.shutdown_write().is_err()
    {
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

/// Counts how a connection ended (and what a refused one was told).
fn count(stats: &WorkerStats, report: &Report) {
    let protocol = report.front_end.protocol();
    let ending = match &report.outcome {
        Outcome::Forwarded => {
            stats.count_ending(Protocol::Http, Ending::Forwarded);
            return;
        }
        Outcome::Refused(answer, _) => {
            stats.count_refusal(protocol, answer.refusal());
            Ending::Refused
        }
        Outcome::ClientGone(_) => Ending::ClientGone,
        Outcome::Relayed(RelayEnd::IdleTimeout) => Ending::IdleTimeout,
        Outcome::Relayed(RelayEnd::Failed(..)) => Ending::Error,
        Outcome::Relayed(_) => Ending::Closed,
    };
    stats.count_ending(protocol, ending);
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
    let protocol = report.front_end.name();
    match &report.outcome {
        Outcome::Forwarded => {}
        Outcome::Relayed(end) => info!(
            client = %peer,
            protocol,
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
        Outcome::Refused(Answer::Status(status), reason) => info!(
            client = %peer,
            protocol,
            target = %target,
            upstream = %upstream,
            status = status.code(),
            duration_ms,
            reason = %reason,
            "request refused"
        ),
        Outcome::Refused(answer, reason) => info!(
            client = %peer,
            protocol,
            target = %target,
            upstream = %upstream,
            reply = %match answer {
                Answer::Socks5(reply) => format!("{:#04x}", reply.code()),
                Answer::NoSocks5Method => "no acceptable method".to_string(),
                _ => "none".to_string(),
            },
            duration_ms,
            reason = %reason,
            "request refused"
        ),
        Outcome::ClientGone(reason) => info!(
            client = %peer,
            protocol,
            target = %target,
            duration_ms,
            reason = %reason,
            "client left before the tunnel was established"
        ),
    }
}
