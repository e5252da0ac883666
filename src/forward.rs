//! Plain HTTP forwarding on the proxy port: a client that sends `GET http://host/path` gets
//! the origin's response, and may send more requests on the same connection (to one origin or
//! several), answered in order.
//!
//! Each exchange goes through the same establish path as a tunnel (threat feeds, connect
//! pacing, destination policy, dial), and its bodies move in chunks granted by the worker's
//! scheduler and pacers, like tunnel bytes; nothing is buffered whole. The request body and the
//! response run side by side, so that `Expect: 100-continue` (the origin's interim response
//! reaches the client while it waits to send) and early responses work. One connection to the
//! origin is kept while consecutive requests go to it. Framing is decided by
//! [`crate::proto::http`]; a message that could be read two ways is refused and the connection
//! closes.

use std::{
    cell::Cell,
    net::SocketAddr,
    pin::pin,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use fyntr_platform::{Backend, Stream};
use tracing::info;

use crate::{
    gate::{Direction, FlowHandle},
    metrics::{Protocol, Refusal, WorkerStats},
    proto::{
        http::{self, Body, ChunkedBody, HttpError},
        Status, Target,
    },
    tunnel::{self, connect_upstream, Answer, PortRule, Report},
    worker::WorkerContext,
};

/// How long an origin may take to start its response, when `--idle-timeout` is off.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);

/// The connection to the origin of the last request, kept for the next one.
struct Origin<S> {
    target: Target,
    stream: S,
    address: SocketAddr,
}

/// How one exchange ended.
struct Exchange {
    status: Option<u16>,
    up_bytes: u64,
    down_bytes: u64,
    outcome: String,
    /// Whether the client connection may carry another request.
    keep_open: bool,
    /// Whether the origin connection may carry another request.
    origin_reusable: bool,
    /// Whether the client connection was already answered and closed (or cut).
    closed: bool,
}

impl Exchange {
    fn failed(outcome: impl Into<String>) -> Self {
        Self {
            status: None,
            up_bytes: 0,
            down_bytes: 0,
            outcome: outcome.into(),
            keep_open: false,
            origin_reusable: false,
            closed: true,
        }
    }
}

/// Serves `first` and whatever requests follow it on `client`; `rest` holds the bytes that came
/// after the first head.
pub(crate) async fn serve<B: Backend>(
    ctx: &WorkerContext<B>,
    client: &B::Stream,
    first: http::Request,
    rest: Vec<u8>,
    report: &mut Report,
) {
    let upload = ctx.gate().open_flow(Direction::Upload);
    let download = ctx.gate().open_flow(Direction::Download);
    let mut pending = rest;
    let mut request = first;
    let mut origin: Option<Origin<B::Stream>> = None;
    loop {
        let started = Instant::now();
        report.target = Some(request.target.clone());
        let exchange = exchange(
            ctx,
            client,
            &request,
            &mut pending,
            &mut origin,
            [&upload, &download],
            report,
        )
        .await;
        log(report, &request, &origin, &exchange, started.elapsed());
        count(ctx.stats(), &exchange);
        if !exchange.origin_reusable {
            origin = None;
        }
        if !exchange.keep_open {
            if !exchange.closed {
                // Half-close and read what the client still sends for a moment, so that bytes
                // it pipelined do not turn the close into a reset that destroys the response.
                tunnel::respond_and_close(ctx, client, Answer::Nothing).await;
            }
            return;
        }
        match next_request(ctx, client, &mut pending).await {
            Next::Request(next) => request = next,
            Next::End => return,
            Next::Refuse(status, reason) => {
                info!(client = %report.client, protocol = "http", status = status.code(), reason = %reason, "request refused");
                ctx.stats()
                    .count_refusal(Protocol::Http, Refusal::Status(status.code()));
                tunnel::respond_and_close(ctx, client, Answer::Status(status)).await;
                return;
            }
        }
    }
}

/// One request and its response.
async fn exchange<B: Backend>(
    ctx: &WorkerContext<B>,
    client: &B::Stream,
    request: &http::Request,
    pending: &mut Vec<u8>,
    origin: &mut Option<Origin<B::Stream>>,
    [upload, download]: [&FlowHandle; 2],
    report: &mut Report,
) -> Exchange {
    if origin
        .as_ref()
        .is_some_and(|origin| origin.target != request.target || !is_idle(&origin.stream))
    {
        *origin = None;
    }
    if origin.is_none() {
        let deadline = Instant::now() + ctx.live().handshake_timeout;
        match connect_upstream(ctx, &request.target, PortRule::PlainHttp, deadline, report).await {
            Ok((stream, address)) => {
                *origin = Some(Origin {
                    target: request.target.clone(),
                    stream,
                    address,
                })
            }
            Err((answer, reason)) => {
                tunnel::respond_and_close(ctx, client, answer).await;
                let status = match answer {
                    Answer::Status(status) => Some(status.code()),
                    _ => None,
                };
                return Exchange {
                    status,
                    ..Exchange::failed(reason)
                };
            }
        }
    }
    let upstream = &origin.as_ref().expect("connected above").stream;
    report.upstream = origin.as_ref().map(|origin| origin.address);
    let head = request.encode();
    if let Err(error) = send(upstream, &head, upload).await {
        tunnel::respond_and_close(ctx, client, Answer::Status(Status::BadGateway)).await;
        return Exchange {
            status: Some(502),
            ..Exchange::failed(format!("sending the request to the origin failed: {error}"))
        };
    }
    let wait = ctx.live().idle_timeout.unwrap_or(RESPONSE_TIMEOUT);
    let chunk = ctx.config().buffer_size.max(1);
    let responded = Cell::new(false);
    let mut sending = pin!(copy_body(
        client,
        upstream,
        pending,
        request.body,
        upload,
        wait,
        chunk
    ));
    let mut answering = pin!(respond(
        upstream, client, request, download, wait, chunk, &responded
    ));
    let mut sent: Option<Result<u64, BodyError>> = None;
    let answered = loop {
        tokio::select! {
            biased;
            result = &mut sending, if sent.is_none() => {
                if let Err(error) = &result {
                    // The request body broke off: the origin cannot get a whole request.
                    upstream.abort();
                    if !responded.get() {
                        let status = error.status();
                        tunnel::respond_and_close(ctx, client, Answer::Status(status)).await;
                        return Exchange {
                            status: Some(status.code()),
                            ..Exchange::failed(format!("request body: {error}"))
                        };
                    }
                }
                sent = Some(result);
            }
            result = &mut answering => break result,
        }
    };
    if sent.is_none() {
        // The response ended first; the request body may have ended in the same turn.
        sent = tokio::select! {
            biased;
            result = &mut sending => Some(result),
            () = std::future::ready(()) => None,
        };
    }
    let up_bytes = head.len() as u64
        + match &sent {
            Some(Ok(bytes)) => *bytes,
            _ => 0,
        };
    // A response that came before the whole request body leaves the client connection
    // somewhere inside that body: it closes.
    let body_sent = matches!(sent, Some(Ok(_)));
    match answered {
        Ok(done) => Exchange {
            status: Some(done.status),
            up_bytes,
            down_bytes: done.bytes,
            outcome: "done".into(),
            keep_open: body_sent && done.keep_client && request.keep_alive,
            origin_reusable: body_sent && done.keep_origin,
            closed: false,
        },
        Err(error) => {
            if !responded.get() {
                let status = error.status();
                tunnel::respond_and_close(ctx, client, Answer::Status(status)).await;
                return Exchange {
                    status: Some(status.code()),
                    up_bytes,
                    ..Exchange::failed(format!("response: {error}"))
                };
            }
            // Part of the response went out: all the client can be told is a cut connection.
            client.abort();
            Exchange {
                up_bytes,
                ..Exchange::failed(format!("response broke off: {error}"))
            }
        }
    }
}

/// Whether a kept origin connection is still open with nothing unasked for on it: an origin
/// that closed an idle connection has sent its FIN by now, and a request sent on it would fail
/// with a 502 the client did not earn.
fn is_idle<S: Stream>(stream: &S) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_recv(&mut probe), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
}

/// Why a body or response could not be moved.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("{0}")]
    Framing(HttpError),
    #[error("connection closed {0} bytes before the end")]
    Truncated(u64),
    #[error("nothing arrived for {0:?}")]
    TimedOut(Duration),
    #[error("{0}")]
    Io(std::io::Error),
}

impl BodyError {
    fn status(&self) -> Status {
        match self {
            Self::Framing(error) => error.status(),
            Self::TimedOut(_) => Status::GatewayTimeout,
            Self::Truncated(_) | Self::Io(_) => Status::BadGateway,
        }
    }
}

/// A response's end.
struct Responded {
    status: u16,
    bytes: u64,
    keep_client: bool,
    keep_origin: bool,
}

/// Reads the origin's response (interim ones first) and moves it to the client.
async fn respond<S: Stream>(
    upstream: &S,
    client: &S,
    request: &http::Request,
    flow: &FlowHandle,
    wait: Duration,
    chunk: usize,
    responded: &Cell<bool>,
) -> Result<Responded, BodyError> {
    let mut received = Vec::new();
    let mut bytes = 0;
    loop {
        let (response, consumed) = loop {
            match http::parse_response(&received, request.is_head()) {
                Ok(http::Parse::Complete { value, consumed }) => break (value, consumed),
                Ok(http::Parse::Partial) => {}
                Err(error) => return Err(BodyError::Framing(error)),
            }
            let mut buffer = vec![0; chunk];
            match read(upstream, &mut buffer, wait).await? {
                0 => {
                    return Err(BodyError::Framing(HttpError::BadResponse(
                        "the origin closed before a complete response head",
                    )))
                }
                read => received.extend_from_slice(&buffer[..read]),
            }
        };
        received.drain(..consumed);
        if response.status == 101 {
            return Err(BodyError::Framing(HttpError::BadResponse(
                "101 Switching Protocols to a request without Upgrade",
            )));
        }
        let close_client = !request.keep_alive || !response.keep_alive;
        let head = response.encode(close_client, request.minor_version == 0);
        send(client, &head, flow).await.map_err(BodyError::Io)?;
        responded.set(true);
        bytes += head.len() as u64;
        if response.is_interim() {
            continue;
        }
        bytes += copy_body(
            upstream,
            client,
            &mut received,
            response.body,
            flow,
            wait,
            chunk,
        )
        .await?;
        return Ok(Responded {
            status: response.status,
            bytes,
            keep_client: !close_client,
            // Bytes after the response's end are no answer to anything: the origin is not
            // trusted with another request.
            keep_origin: response.keep_alive && received.is_empty(),
        });
    }
}

/// Moves one body framed as `body` from `from` to `to`, taking `leftover` (bytes already read
/// from `from`) first; what follows the body stays in `leftover`. Returns the body's length.
async fn copy_body<S: Stream>(
    from: &S,
    to: &S,
    leftover: &mut Vec<u8>,
    body: Body,
    flow: &FlowHandle,
    wait: Duration,
    chunk: usize,
) -> Result<u64, BodyError> {
    let mut remaining = match body {
        Body::Empty => return Ok(0),
        Body::Length(length) => length,
        Body::Chunked | Body::UntilClose => u64::MAX,
    };
    let mut chunked = ChunkedBody::default();
    let mut moved = 0u64;
    let mut buffer = vec![0; chunk];
    loop {
        if leftover.is_empty() {
            let read = read(from, &mut buffer, wait).await?;
            if read == 0 {
                return match body {
                    Body::UntilClose => Ok(moved),
                    Body::Length(_) => Err(BodyError::Truncated(remaining)),
                    _ => Err(BodyError::Framing(HttpError::BadChunk(
                        "connection closed inside the chunked body",
                    ))),
                };
            }
            leftover.extend_from_slice(&buffer[..read]);
        }
        let available = leftover.len().min(chunk);
        let take = match body {
            Body::Length(_) => available.min(usize::try_from(remaining).unwrap_or(usize::MAX)),
            Body::Chunked => chunked
                .advance(&leftover[..available])
                .map_err(BodyError::Framing)?,
            _ => available,
        };
        send(to, &leftover[..take], flow)
            .await
            .map_err(BodyError::Io)?;
        leftover.drain(..take);
        moved += take as u64;
        remaining = remaining.saturating_sub(take as u64);
        let done = match body {
            Body::Length(_) => remaining == 0,
            Body::Chunked => chunked.is_done(),
            _ => false,
        };
        if done {
            return Ok(moved);
        }
    }
}

/// Reads what `from` has (at least one byte, or 0 at EOF), waiting at most `wait`.
async fn read<S: Stream>(from: &S, buffer: &mut [u8], wait: Duration) -> Result<usize, BodyError> {
    loop {
        match from.try_recv(buffer) {
            Ok(read) => return Ok(read),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(BodyError::Io(error)),
        }
        match tokio::time::timeout(wait, from.readable()).await {
            Err(_) => return Err(BodyError::TimedOut(wait)),
            Ok(Err(error)) => return Err(BodyError::Io(error)),
            Ok(Ok(())) => {}
        }
    }
}

/// Writes `bytes` once the scheduler grants them.
async fn send<S: Stream>(to: &S, bytes: &[u8], flow: &FlowHandle) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    flow.acquire(bytes.len()).await;
    let written = to.send_all(bytes).await;
    flow.complete();
    written
}

/// What the client sends after an exchange.
enum Next {
    Request(http::Request),
    /// It closed, or sent nothing more within the handshake timeout.
    End,
    Refuse(Status, String),
}

/// Reads the client's next request head, with the handshake timeout for the whole head.
async fn next_request<B: Backend>(
    ctx: &WorkerContext<B>,
    client: &B::Stream,
    pending: &mut Vec<u8>,
) -> Next {
    let deadline = Instant::now() + ctx.live().handshake_timeout;
    loop {
        if !pending.is_empty() {
            match http::parse_request(pending) {
                Ok(http::Parse::Complete { value, consumed }) => {
                    pending.drain(..consumed);
                    return Next::Request(value);
                }
                Ok(http::Parse::Partial) => {}
                Err(error) => return Next::Refuse(error.status(), error.to_string()),
            }
        }
        match tunnel::recv_with_scratch(ctx, client, |bytes| pending.extend_from_slice(bytes)) {
            Ok(0) => return Next::End,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Next::End,
        }
        match tokio::time::timeout_at(deadline.into(), client.readable()).await {
            Ok(Ok(())) => {}
            // An idle keep-alive connection is closed quietly; a half-sent head gets 408.
            Err(_) if !pending.is_empty() => {
                return Next::Refuse(
                    Status::RequestTimeout,
                    "next request head incomplete".into(),
                )
            }
            _ => return Next::End,
        }
    }
}

/// Counts one exchange: its bytes, and either a request the origin answered or a refusal.
fn count(stats: &WorkerStats, exchange: &Exchange) {
    let bytes = stats.bytes(Protocol::Http);
    bytes[0].fetch_add(exchange.up_bytes, Ordering::Relaxed);
    bytes[1].fetch_add(exchange.down_bytes, Ordering::Relaxed);
    match exchange.status {
        Some(_) if exchange.outcome == "done" => stats.count_http_request(),
        Some(code) => stats.count_refusal(Protocol::Http, Refusal::Status(code)),
        None => {}
    }
}

fn log<S>(
    report: &Report,
    request: &http::Request,
    origin: &Option<Origin<S>>,
    exchange: &Exchange,
    duration: Duration,
) {
    let upstream = origin
        .as_ref()
        .map_or_else(|| "-".to_string(), |origin| origin.address.to_string());
    info!(
        client = %report.client,
        protocol = "http",
        method = %request.method,
        url = %format_args!("http://{}{}", request.authority, request.path),
        upstream = %upstream,
        status = exchange.status.unwrap_or(0),
        up_bytes = exchange.up_bytes,
        down_bytes = exchange.down_bytes,
        duration_ms = duration.as_millis() as u64,
        outcome = %exchange.outcome,
        "http request"
    );
}
