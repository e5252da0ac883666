//! Moving bytes both ways once a tunnel is established.
//!
//! Each direction loops: wait until readable (an idle tunnel holds no buffer and no pipe), take a
//! pipe from the worker's pool and splice a chunk into it (on Linux; otherwise, or when no pipe is
//! to be had, read into a pool buffer), ask the worker's gate for a grant of exactly that chunk,
//! splice (or write) it out, release. Small messages are copied instead (`recv` into the worker's
//! scratch buffer, then `send`; see [`INTERACTIVE_READ`]). With `--download-rate`, downloads ask
//! for the grant before the read instead, so that fyntr reads from upstream only at the rate. EOF
//! on one side becomes `shutdown(Write)` on the other, and the tunnel ends when both directions
//! are done, on the first error (both sockets are then shut down so the other direction ends
//! too), when its idle watchdog finds both directions silent, or a write stalled, for the idle
//! timeout, or when the shutdown grace period ends.

use std::{
    cell::{Cell, RefCell},
    io,
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use fyntr_platform::{Backend, BufferPool, IoBuffer, PipePool, PooledPipe, Stream};

use crate::{
    active_downloads::{ActiveDownloads, DownloadMark},
    auto_pacing::{AutoPacing, PathSampler},
    config::{Config, Pacing},
    gate::{Direction, FlowHandle, Gate},
    grace_over::GraceOver,
    sched::pacer::{Pacer, Rate},
    send_queue::{self, BulkFlows, SendQueueFit},
};

/// What a relay uses of its worker: no more, so that it depends on nothing above it.
pub(crate) struct RelayContext<'a, B: Backend> {
    pub(crate) config: &'a Config,
    /// The idle timeout in force when the tunnel was established.
    pub(crate) idle_timeout: Option<Duration>,
    /// Where the bytes each way are counted (upload, download), as they are written.
    pub(crate) bytes: &'a [AtomicU64; 2],
    /// Downloads that moved data lately, among which paced download windows are shared.
    pub(crate) active_downloads: &'a ActiveDownloads,
    pub(crate) pool: &'a B::Pool,
    pub(crate) pipes: &'a PipePool,
    /// Where interactive messages land first; only ever borrowed without an await in between.
    pub(crate) scratch: &'a RefCell<Box<[u8]>>,
    pub(crate) gate: &'a std::rc::Rc<Gate>,
    pub(crate) bulk_flows: &'a BulkFlows,
    /// The shared pacers, whose rates the relay's chunks and windows follow.
    pub(crate) upload_pacer: Option<&'a Pacer>,
    pub(crate) download_pacer: Option<&'a Pacer>,
    /// Where upstream sockets report their paths with `auto`.
    pub(crate) auto_pacing: Option<&'a AutoPacing>,
    /// The end of the shutdown grace period, at which the tunnel closes.
    pub(crate) grace_over: &'a GraceOver,
}

impl<B: Backend> RelayContext<'_, B> {
    /// Counts `bytes` written to `to`.
    fn count(&self, to: Side, bytes: usize) {
        let way = usize::from(to == Side::Downstream);
        self.bytes[way].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The rate the bytes going to `to` are paced at now, if any: fixed, or what `auto` set.
    fn live_rate(&self, to: Side) -> Option<Rate> {
        match to {
            Side::Upstream => self.upload_pacer,
            Side::Downstream => self.download_pacer,
        }
        .and_then(Pacer::rate)
    }

    /// The receive window a download paced at `rate` may offer now: its share of the rate
    /// over `round_trip` among the downloads that moved data lately (tunnels that only
    /// upload take no share).
    fn download_window(&self, rate: Rate, round_trip: Duration) -> usize {
        let downloads = self.active_downloads.count(Instant::now()).max(1);
        Pacing::socket_buffer_over(rate, downloads, round_trip)
    }
}

/// The largest read of an interactive message. A read shorter than this marks its direction as
/// interactive, and the next read there copies (`recv`) instead of splicing: a short `recv`
/// proves the socket empty, so a small message costs two calls (`recv`, `send`) where a splice
/// costs three (in, out, and one more that finds the socket empty), and needs no pipe. A full
/// read marks the direction as bulk, which splices. 16 KiB is one full TLS record.
pub(crate) const INTERACTIVE_READ: usize = 16 * 1024;

/// Which side of the tunnel an event concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client.
    Downstream,
    /// The destination.
    Upstream,
}

/// How a tunnel ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions reached EOF.
    Closed,
    /// Both directions were silent for the idle timeout, or a write made no progress for it.
    IdleTimeout,
    /// Reading from or writing to this side failed.
    Failed(Side, io::Error),
    /// fyntr closed it: the shutdown grace period ended first.
    Shutdown,
}

impl std::fmt::Display for RelayEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("closed"),
            Self::IdleTimeout => f.write_str("idle timeout"),
            Self::Shutdown => f.write_str("closed at shutdown"),
            Self::Failed(Side::Downstream, error) => write!(f, "downstream error: {error}"),
            Self::Failed(Side::Upstream, error) => write!(f, "upstream error: {error}"),
        }
    }
}

/// Bytes moved by a tunnel, and how long its chunks waited for their turn.
#[derive(Clone, Copy, Debug, Default)]
pub struct Traffic {
    /// Client to destination, pipelined bytes included.
    pub upload: u64,
    /// Destination to client.
    pub download: u64,
    /// Time upload chunks waited for grants (window, DRR turn, pacing).
    pub upload_wait: Duration,
    /// Time download chunks waited for grants.
    pub download_wait: Duration,
}

/// State both directions of one tunnel share.
struct Tunnel<'a, S> {
    downstream: &'a S,
    upstream: &'a S,
    /// When either direction last read something.
    last_read: Cell<Instant>,
    /// Per direction (upload, download): when the chunk being written was read, while one is.
    writing_since: [Cell<Option<Instant>>; 2],
    end: RefCell<Option<RelayEnd>>,
}

impl<S: Stream> Tunnel<'_, S> {
    /// Records why the tunnel ends (the first cause wins) and shuts both sockets down, which
    /// completes every wait and operation of both directions.
    fn fail(&self, end: RelayEnd) {
        let mut first = self.end.borrow_mut();
        if first.is_none() {
            *first = Some(end);
            self.downstream.abort();
            self.upstream.abort();
        }
    }

    fn stream(&self, side: Side) -> &S {
        match side {
            Side::Downstream => self.downstream,
            Side::Upstream => self.upstream,
        }
    }

    fn writing_since(&self, to: Side) -> &Cell<Option<Instant>> {
        &self.writing_since[usize::from(to == Side::Downstream)]
    }

    /// Ends the tunnel once it has been idle for `idle`: both directions silent, or a write
    /// that made no progress, for that long. One timer per tunnel, re-armed only when it fires
    /// early: arming a timer around every readiness wait and every write cost more CPU per
    /// relayed message than the splices (ping-pong profile), for a deadline that almost never
    /// expires.
    async fn watch_idle(&self, idle: Duration) {
        loop {
            let quiet_until = self.last_read.get() + idle;
            let stalled_until = self
                .writing_since
                .iter()
                .filter_map(|since| since.get().map(|since| since + idle))
                .min();
            let deadline = stalled_until.map_or(quiet_until, |stalled| stalled.min(quiet_until));
            if deadline <= Instant::now() {
                self.fail(RelayEnd::IdleTimeout);
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// Relays between `downstream` and `upstream` until the tunnel ends. `pipelined` holds bytes the
/// client sent after its request head; they go upstream first. With `observed_peer` (the
/// upstream's address), the upstream socket's path figures feed `auto` pacing.
pub(crate) async fn relay<B: Backend>(
    ctx: &RelayContext<'_, B>,
    downstream: &B::Stream,
    upstream: &B::Stream,
    pipelined: &[u8],
    observed_peer: Option<IpAddr>,
) -> (Traffic, RelayEnd) {
    let tunnel = Tunnel {
        downstream,
        upstream,
        last_read: Cell::new(Instant::now()),
        writing_since: [Cell::new(None), Cell::new(None)],
        end: RefCell::new(None),
    };
    let pumps = async {
        tokio::join!(
            pump(ctx, &tunnel, Side::Downstream, pipelined, observed_peer),
            pump(ctx, &tunnel, Side::Upstream, &[], observed_peer),
        )
    };
    tokio::pin!(pumps);
    let watchdog = async {
        match ctx.idle_timeout {
            Some(idle) => tunnel.watch_idle(idle).await,
            None => std::future::pending().await,
        }
    };
    let ((upload, upload_wait), (download, download_wait)) = tokio::select! {
        biased;
        both = &mut pumps => both,
        // The watchdog has shut both sockets down: every operation of the pumps completes
        // now (none is ever dropped mid-flight), and they end.
        () = watchdog => pumps.await,
        () = ctx.grace_over.wait() => {
            tunnel.fail(RelayEnd::Shutdown);
            pumps.await
        }
    };
    let end = tunnel.end.take().unwrap_or(RelayEnd::Closed);
    let traffic = Traffic {
        upload,
        download,
        upload_wait,
        download_wait,
    };
    (traffic, end)
}

/// One direction: reads from `from` and writes to the other side. Returns bytes written and the
/// time spent waiting for grants.
async fn pump<B: Backend>(
    ctx: &RelayContext<'_, B>,
    tunnel: &Tunnel<'_, B::Stream>,
    from: Side,
    pipelined: &[u8],
    observed_peer: Option<IpAddr>,
) -> (u64, Duration) {
    let (to, direction) = match from {
        Side::Downstream => (Side::Upstream, Direction::Upload),
        Side::Upstream => (Side::Downstream, Direction::Download),
    };
    let flow = ctx.gate.open_flow(direction);
    let written = pump_chunks(ctx, tunnel, from, to, &flow, pipelined, observed_peer).await;
    (written, flow.waited())
}

async fn pump_chunks<B: Backend>(
    ctx: &RelayContext<'_, B>,
    tunnel: &Tunnel<'_, B::Stream>,
    from: Side,
    to: Side,
    flow: &FlowHandle,
    pipelined: &[u8],
    observed_peer: Option<IpAddr>,
) -> u64 {
    let mut written = 0;
    // Pipelined bytes (a TLS ClientHello sent with the CONNECT) are sent like a small message:
    // chunks of at most a relay buffer, so that each grant stays within one paced chunk.
    for chunk in pipelined.chunks(ctx.config.buffer_size.max(1)) {
        let read_at = Instant::now();
        let bytes = Chunk::Interactive(Box::from(chunk));
        if !Box::pin(forward(tunnel, flow, to, bytes, 0, read_at)).await {
            return written;
        }
        written += chunk.len() as u64;
        ctx.count(to, chunk.len());
    }
    // With a download rate, downloads are paced where they enter: the grant is taken before the
    // read, for exactly the bytes the kernel holds, so fyntr never reads ahead of the rate and
    // the remote senders' windows (and so the router's queue) open only at the rate. Granting
    // after the read would let every new download take a free chunk plus a refilled receive
    // buffer, which at 30 parallel tunnels puts the downlink over a 95 % rate (testbed trace).
    // Paced downloads offer the remote sender a window of their current share, moved as
    // tunnels come and go and as the rate moves: a window fixed when the tunnel opens (a
    // thirtieth of the rate in a burst) would hold a flow left alone far below the rate.
    let mut window = WindowShare::default();
    // With `auto`, the upstream socket is read once a tick while this direction moves data
    // (never for loopback destinations: see auto_pacing).
    let sampler = PathSampler::new(
        ctx.auto_pacing,
        observed_peer,
        tunnel.stream(Side::Upstream),
        flow.direction(),
    );
    let mut first_read = true;
    // After a read that filled the whole chunk more data is almost surely waiting, so the next
    // read goes straight to the socket without a readiness round trip (on io_uring that saves
    // an epoll wake-up and a peek per chunk). Only a short read sends the flow back to waiting
    // for readiness, where an idle tunnel holds no buffer and no pipe.
    let mut streaming = false;
    // Tunnels start with small messages (TLS handshakes); see INTERACTIVE_READ. Never more than
    // a relay buffer, which is also the most one grant may be (the paced chunk, when paced).
    let buffer_size = ctx.config.buffer_size.max(1);
    let mut interactive = true;
    let pacing = &ctx.config.pacing;
    let fixed_rate = match to {
        Side::Upstream => pacing.upload.fixed(),
        Side::Downstream => pacing.download.fixed(),
    };
    // An upload that `auto` watches over a real path is bounded from its first byte, paced or
    // not yet: what the sockets take while `auto` is still off would leave at the speed of the
    // first link after the first cut (see send_queue::AUTO_UNSENT). The bound then follows
    // the rate (see the loop).
    let watched_upload = to == Side::Upstream && sampler.is_some();
    let mut send_queue = if watched_upload {
        let unsent =
            send_queue::auto_unsent_bound(ctx.live_rate(to).map(|rate| rate.bytes_per_second()));
        SendQueueFit::bounded_from_start(ctx.bulk_flows, unsent, tunnel.stream(to))
    } else {
        let unsent = send_queue::unsent_bound(fixed_rate.map(|rate| rate.bytes_per_second()));
        SendQueueFit::new(ctx.bulk_flows, unsent)
    };
    let mut download_mark = DownloadMark::default();
    loop {
        // No timer around this wait: the tunnel's idle watchdog shuts the sockets down, which
        // makes them readable.
        if !streaming {
            if let Err(error) = tunnel.stream(from).readable().await {
                tunnel.fail(RelayEnd::Failed(from, error));
                return written;
            }
        }
        // A splice never blocks: with nothing to read it says WouldBlock, and the flow goes
        // back to waiting for readiness without holding the pipe. A copying read and the
        // forward are boxed: they exist only while data moves, so an idle tunnel's task holds
        // just the readiness wait above.
        // The rate in force now: fixed, or what `auto` set (it may come and go). A paced
        // chunk is a fraction of a millisecond of it (see Pacing::CHUNK_TIME).
        let live_rate = ctx.live_rate(to);
        let splice_chunk = match live_rate {
            Some(rate) if to == Side::Downstream => Pacing::download_chunk_for(rate, buffer_size),
            Some(rate) => Pacing::chunk_for(rate, buffer_size),
            // An upload `auto` watches but does not pace splices half its unsent bound at a
            // time (a copied read, when the worker has no pipe left, still fills a relay
            // buffer): the kernel takes a write by whole socket buffers while the unsent bytes
            // are under the bound, so a larger chunk passed it by up to a buffer. With 256 KiB
            // chunks the 32 upstream sockets of a burst held 854 KB unsent half a second in,
            // 27 KB each (`ss -tin`), the uplink's first half second before any rate was known.
            None if watched_upload => ctx.config.splice_chunk.min(send_queue::AUTO_UNSENT / 2),
            None => ctx.config.splice_chunk,
        };
        let interactive_read = INTERACTIVE_READ.min(buffer_size).min(splice_chunk);
        if watched_upload {
            send_queue.follow_unsent(
                send_queue::auto_unsent_bound(live_rate.map(|rate| rate.bytes_per_second())),
                tunnel.stream(to),
            );
        }
        // With a download rate, downloads are paced where they enter (see above).
        let gate_reads = to == Side::Downstream && live_rate.is_some();
        match live_rate.filter(|_| gate_reads) {
            Some(rate) => {
                // The window covers the path's round trip where `auto` knows it.
                let round_trip = sampler
                    .as_ref()
                    .and_then(PathSampler::window_round_trip)
                    .unwrap_or(Pacing::BUFFER_TIME);
                window.follow(tunnel.stream(from), ctx.download_window(rate, round_trip))
            }
            None => window.release(tunnel.stream(from)),
        }
        let granted = if gate_reads {
            Box::pin(grant_before_read(
                tunnel.stream(from),
                flow,
                splice_chunk,
                &mut first_read,
            ))
            .await
        } else {
            0
        };
        let splice_max = if granted > 0 { granted } else { splice_chunk };
        let (read, chunk) = if interactive && !streaming && !gate_reads {
            read_interactive(ctx, tunnel.stream(from), interactive_read)
        } else {
            match ctx.pipes.take() {
                Some(mut pipe) => {
                    let read = tunnel.stream(from).try_splice_in(&mut pipe, splice_max);
                    (read, Chunk::Spliced(pipe))
                }
                None => Box::pin(read_copied(ctx, tunnel.stream(from))).await,
            }
        };
        if granted > 0 && !matches!(read, Ok(n) if n > 0) {
            // The grant was for bytes this read did not return: hand it back unused.
            flow.complete();
        }
        match read {
            Ok(0) => {
                // Half-close: the other side reads EOF, the opposite direction carries on.
                let _ = tunnel.stream(to).shutdown_write();
                return written;
            }
            Ok(n) => {
                streaming = n == chunk.limit(splice_chunk, interactive_read);
                interactive = n < interactive_read;
                if streaming && !matches!(chunk, Chunk::Interactive(_)) {
                    send_queue.on_bulk_chunk(tunnel.stream(to));
                }
                let read_at = Instant::now();
                tunnel.last_read.set(read_at);
                if to == Side::Downstream {
                    ctx.active_downloads.mark(&mut download_mark, read_at);
                }
                if !Box::pin(forward(tunnel, flow, to, chunk, granted, read_at)).await {
                    return written;
                }
                written += n as u64;
                ctx.count(to, n);
                if let Some(sampler) = &sampler {
                    sampler.moved();
                }
                // A worker busy with small messages would otherwise hold its core until a
                // scheduler tick while the threads it relays for wait (see cpu_share).
                fyntr_platform::cpu_share::share_cpu(read_at, n);
                // On loopback or a fast LAN, reads and writes complete at once and a bulk flow
                // would keep the worker for a long run of chunks (Tokio's budget allows 128
                // operations), making every other tunnel wait. Yielding after each full chunk
                // lets the worker visit its tunnels in turn, one chunk each, as DRR intends. A
                // short chunk needs no yield: the flow goes back to waiting for readiness.
                if streaming {
                    B::yield_to_others().await;
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => streaming = false,
            Err(error) => {
                tunnel.fail(RelayEnd::Failed(from, error));
                return written;
            }
        }
    }
}

/// The receive window a paced download last offered its upstream.
#[derive(Default)]
struct WindowShare {
    clamp: Option<usize>,
}

impl WindowShare {
    /// What a download's socket gets when pacing stops (`auto` found no queue): the largest
    /// window fyntr ever offers a paced download. The buffer stays fixed (autotuning cannot
    /// be turned back on), at a size that fills 40 Mbit/s over 100 ms.
    const RELEASED: usize = 4 << 20;

    /// Moves `upstream`'s window clamp to `wanted` when it has moved by more than an eighth
    /// since it was last set, and fixes its receive buffer at twice that (room for the window
    /// with the kernel's overhead): two system calls per change, not per chunk. A fixed buffer
    /// ends autotuning, which would otherwise raise the clamp as soon as fyntr read faster than
    /// the buffer filled, and the remote senders' windows with it (testbed: downlink queue
    /// 18.8 KB mean with the clamp alone, 2.4 KB with buffers fixed at connect). The buffer
    /// follows the share down as well as up: the window a sender may fill is the buffer's free
    /// room, not only the clamp, so a buffer sized for a lone download let each of 30 tunnels
    /// keep taking a share per round trip into bytes fyntr had not read yet, and the downlink
    /// stayed full for seconds after a cut (testbed burst).
    fn follow<S: Stream>(&mut self, upstream: &S, wanted: usize) {
        if self
            .clamp
            .is_some_and(|clamp| clamp.abs_diff(wanted) <= clamp / 8)
        {
            return;
        }
        if let Err(error) = upstream.fix_receive_buffer(2 * wanted) {
            tracing::debug!(%error, "could not fix a download's receive buffer");
        }
        match upstream.set_window_clamp(wanted) {
            Ok(()) => self.clamp = Some(wanted),
            Err(error) => tracing::debug!(%error, "could not move a download's window"),
        }
    }

    /// Opens the window again once the download is no longer paced.
    fn release<S: Stream>(&mut self, upstream: &S) {
        if self.clamp.take().is_none() {
            return;
        }
        if let Err(error) = upstream
            .fix_receive_buffer(Self::RELEASED)
            .and_then(|()| upstream.set_window_clamp(Self::RELEASED))
        {
            tracing::debug!(%error, "could not open a download's window");
        }
    }
}

/// One chunk on its way through the proxy.
enum Chunk<B> {
    /// Spliced into a kernel pipe: never copied to user space (Linux).
    Spliced(PooledPipe),
    /// Copied into a pool buffer: where pipes cannot be had.
    Copied(B),
    /// An interactive message, copied out of the worker's scratch buffer, or pipelined bytes.
    Interactive(Box<[u8]>),
}

impl<B: IoBuffer> Chunk<B> {
    fn len(&self) -> usize {
        match self {
            Self::Spliced(pipe) => pipe.held(),
            Self::Copied(buffer) => buffer.filled().len(),
            Self::Interactive(bytes) => bytes.len(),
        }
    }

    /// The most one read could have put in this chunk.
    fn limit(&self, splice_chunk: usize, interactive_read: usize) -> usize {
        match self {
            Self::Spliced(pipe) => pipe.capacity().min(splice_chunk),
            Self::Copied(buffer) => buffer.capacity(),
            Self::Interactive(_) => interactive_read,
        }
    }
}

/// Reads one interactive message: into the worker's scratch buffer, then into a copy of exactly
/// its size, which lives until it is written (small, and no pool buffer is pinned for it).
fn read_interactive<B: Backend>(
    ctx: &RelayContext<'_, B>,
    stream: &B::Stream,
    max: usize,
) -> (io::Result<usize>, Chunk<B::Buffer>) {
    let mut scratch = ctx.scratch.borrow_mut();
    let read = stream.try_recv(&mut scratch[..max]);
    let bytes = match read {
        Ok(n) => Box::from(&scratch[..n]),
        Err(_) => Box::default(),
    };
    (read, Chunk::Interactive(bytes))
}

/// Reads one chunk from `stream` into a pool buffer (where no pipe is to be had). The read is
/// never dropped mid-flight: if the tunnel goes idle, the watchdog shuts the sockets down, which
/// completes it.
async fn read_copied<B: Backend>(
    ctx: &RelayContext<'_, B>,
    stream: &B::Stream,
) -> (io::Result<usize>, Chunk<B::Buffer>) {
    let buffer = ctx.pool.take().await;
    let (read, buffer) = stream.read(buffer).await;
    (read, Chunk::Copied(buffer))
}

/// Asks the gate for a grant of the bytes `stream` holds ready (at most `max`) before they are
/// read; returns the grant's size, 0 when nothing is pending (EOF, an error, or readiness that
/// was stale), in which case the read goes ungranted and [`forward`] asks for what it returns.
async fn grant_before_read<S: Stream>(
    stream: &S,
    flow: &FlowHandle,
    max: usize,
    first: &mut bool,
) -> usize {
    let queued = stream.queued_to_read().unwrap_or(0);
    if *first && queued > 0 {
        *first = false;
        flow.charge_unasked(queued);
    }
    let want = queued.min(max);
    if want > 0 {
        flow.acquire(want).await;
    }
    want
}

/// Writes one chunk to `to` once the gate grants it; false if the tunnel must end. `granted`
/// bytes of it were granted before it was read (at `read_at`); only the rest is asked for here.
/// Writes are never dropped mid-flight (io_uring would carry on with them): a peer that accepts
/// nothing for the idle timeout is cut off by the watchdog shutting the sockets down, which
/// completes the write with an error.
async fn forward<S: Stream>(
    tunnel: &Tunnel<'_, S>,
    flow: &FlowHandle,
    to: Side,
    chunk: Chunk<S::Buffer>,
    granted: usize,
    read_at: Instant,
) -> bool {
    let len = chunk.len();
    let writing_since = tunnel.writing_since(to);
    writing_since.set(Some(read_at));
    let waited_before = flow.waited();
    if granted == 0 {
        flow.acquire(len).await;
    } else if len > granted {
        // A copying read may return more than was pending when the grant was asked for.
        flow.complete();
        flow.acquire(len - granted).await;
    }
    if flow.waited() != waited_before {
        // Waiting for a grant is not a stalled write: the watchdog counts from the grant.
        writing_since.set(Some(Instant::now()));
    }
    let stream = tunnel.stream(to);
    let written = match chunk {
        // What a splice does not move stays in the pipe, which is then closed.
        Chunk::Spliced(mut pipe) => stream.splice_out(&mut pipe).await,
        Chunk::Copied(buffer) => stream.write_all(buffer).await.0,
        Chunk::Interactive(bytes) => stream.send_all(&bytes).await,
    };
    writing_since.set(None);
    flow.complete();
    match written {
        Ok(()) => tunnel.end.borrow().is_none(),
        Err(error) => {
            tunnel.fail(RelayEnd::Failed(to, error));
            false
        }
    }
}
