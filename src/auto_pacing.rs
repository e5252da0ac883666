//! `--upload-rate auto` / `--download-rate auto` at run time: relays register their upstream
//! sockets with [`AutoPacing`] (through [`PathSampler`]), and one thread reads what the busy
//! ones' kernels know, ticks each direction's [`AutoRate`] controller every [`TICK`] and sets
//! the shared pacer's rate.
//!
//! A socket's own least round trip includes the queue that was there when it opened, and a
//! burst's tunnels open while the burst builds one: so the base round trip of each upstream
//! address is remembered across its connections ([`BaseMemory`]), as the kernel's TCP
//! metrics cache remembers a destination's round trip.
//!
//! Upstream sockets to loopback are not observed: there is no link to find, and a loaded
//! machine's loopback round trips (tens of milliseconds with both cores busy) would read as a
//! queue.
//!
//! A burst on an idle line starts paced as its first path registers
//! ([`AutoPacing::start_if_idle`]): the relays' threads set the pacer's first rate themselves,
//! so that the burst's first bytes wait for it, and the controller takes over at its next tick.
//!
//! With nothing paced and no traffic on the watched paths for a second, the thread dozes
//! ([`Doze`]) until a relay moves data on one: an idle proxy, or one that only relays to
//! loopback, is not woken ten times a second. A direction that keeps its rate between bursts
//! (see `SILENCE` in the controller) lets it doze too, for a second at a time: a tick then
//! still counts what that rate holds back of tunnels no watched socket reports on (to
//! loopback), which ends pacing within seconds as a silence does.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
    time::{Duration, Instant},
};

use fyntr_platform::{tcp_info::WatchedSocket, Stream, TcpStats};
use tracing::{debug, info, trace};

use crate::{
    active_downloads::ActiveDownloads,
    config::Pacing,
    doze::{Doze, Slept},
    gate::Direction,
    metrics::AutoEstimate,
    sched::{
        autorate::{first_to_decide, AutoRate, AutoRateConfig, Mode, Sample, START_RATE},
        pacer::{acks_on_the_wire, on_the_wire, Pacer, Rate},
    },
};

/// How often the sockets are read and the controllers run.
pub(crate) const TICK: Duration = Duration::from_millis(100);
/// How often the info line is written while traffic flows.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// What the sockets of one direction reported since the last tick.
#[derive(Default)]
struct Observed {
    delivered: u64,
    sent: u64,
    resent: u64,
    /// Segments with data received, and of those out of order (downloads).
    segments_in: u64,
    out_of_order: u64,
    /// The least base round trip reported.
    base: Option<Duration>,
}

impl Observed {
    /// Whether nothing was reported.
    fn is_empty(&self) -> bool {
        self.delivered == 0
            && self.sent == 0
            && self.resent == 0
            && self.segments_in == 0
            && self.out_of_order == 0
            && self.base.is_none()
    }
}

/// How recently a socket must have sent data for its smoothed round trip to count.
const FRESH_ROUND_TRIP: Duration = Duration::from_secs(1);
/// How long a remembered base round trip lasts without being seen again: routes change.
const BASE_WINDOW: Duration = Duration::from_secs(300);
/// Upstream addresses remembered at most; past it the memory starts again.
const BASE_PEERS: usize = 4096;

/// The base round trip of each upstream address over the last [`BASE_WINDOW`] or two: a
/// windowed minimum kept as two buckets, the current one and the one before. Each bucket
/// keeps the two least distinct figures and answers the greater: one socket's figure below
/// every other's (a mismeasured sample) does not set the base of all.
#[derive(Default)]
struct BaseMemory {
    peers: HashMap<IpAddr, RememberedBase>,
}

struct RememberedBase {
    current: LeastTwo,
    previous: LeastTwo,
    since: Instant,
}

/// The two least distinct figures seen; the second is the first until another comes.
#[derive(Clone, Copy)]
struct LeastTwo([Duration; 2]);

impl LeastTwo {
    fn new(first: Duration) -> Self {
        Self([first, first])
    }

    fn empty() -> Self {
        Self([Duration::MAX, Duration::MAX])
    }

    fn take(&mut self, figure: Duration) {
        let [least, second] = &mut self.0;
        if figure < *least {
            *second = *least;
            *least = figure;
        } else if figure > *least && (figure < *second || *second == *least) {
            *second = figure;
        }
    }

    fn base(self) -> Duration {
        self.0[1]
    }
}

impl BaseMemory {
    /// Takes a socket's least round trip to `peer`; returns the peer's base round trip.
    fn observe(&mut self, peer: IpAddr, least: Duration, now: Instant) -> Duration {
        if self.peers.len() >= BASE_PEERS && !self.peers.contains_key(&peer) {
            self.peers.clear();
        }
        let base = self.peers.entry(peer).or_insert(RememberedBase {
            current: LeastTwo::new(least),
            previous: LeastTwo::empty(),
            since: now,
        });
        if now.duration_since(base.since) >= BASE_WINDOW {
            base.previous = base.current;
            base.current = LeastTwo::new(least);
            base.since = now;
        } else {
            base.current.take(least);
        }
        base.current.base().min(base.previous.base()).min(least)
    }
}

/// One direction under `auto`.
struct AutoDirection {
    pacer: Arc<Pacer>,
    /// Whether this direction is paced with `auto` now (a reload may change it).
    enabled: AtomicBool,
    observed: Mutex<Observed>,
    /// What the controller estimated at its last tick, for the metrics.
    estimate: Mutex<AutoEstimate>,
    /// From when (nanoseconds since [`AutoPacing::epoch`]) a path that opens may start this
    /// direction paced ([`AutoRate::start`]), as of the controller's last tick; `u64::MAX`
    /// for never.
    start_from: AtomicU64,
    /// Whether a path that opened started the pacer, for the controller's next tick.
    started: AtomicBool,
}

/// Paths with a base round trip under this never start a burst paced ([`AutoRate::start`]):
/// a LAN, or a veth pair, has no slow link to spare, and a start there would only cost the
/// time it takes to grow (a slow uplink's own hop alone takes several milliseconds).
const START_MIN_ROUND_TRIP: Duration = Duration::from_millis(1);

/// The directions paced with `auto`, shared by every worker.
pub(crate) struct AutoPacing {
    /// Upload, download.
    directions: [Option<AutoDirection>; 2],
    /// The relay buffer: the largest chunk, of which a paced burst must hold one.
    buffer_size: usize,
    /// Downloads that moved data lately: the senders a download rate is shared among.
    active_downloads: Arc<ActiveDownloads>,
    bases: Mutex<BaseMemory>,
    /// The queueing delays reported since the last tick, one per report, of either direction.
    path_delays: Mutex<Vec<Duration>>,
    /// The queueing delays downloads' receivers estimated since the last tick, one per report
    /// (see [`PathReport::receive_delay`]).
    receive_delays: Mutex<Vec<Duration>>,
    watched: Mutex<Watched>,
    /// The controllers' thread's sleep while there is nothing to pace; the thread holds its
    /// own handle, so that it sleeps without keeping `auto` alive.
    doze: Arc<Doze>,
    /// What [`AutoDirection::start_from`] counts from.
    epoch: Instant,
}

/// A word for logs.
fn name(direction: Direction) -> &'static str {
    match direction {
        Direction::Upload => "upload",
        Direction::Download => "download",
    }
}

impl AutoPacing {
    /// The controllers of the directions that have a pacer here, each on while `enabled`
    /// says so; `None` when neither has a pacer.
    pub(crate) fn new(
        upload: Option<Arc<Pacer>>,
        download: Option<Arc<Pacer>>,
        enabled: [bool; 2],
        buffer_size: usize,
        active_downloads: Arc<ActiveDownloads>,
    ) -> Option<Arc<AutoPacing>> {
        if upload.is_none() && download.is_none() {
            return None;
        }
        let direction = |pacer: Option<Arc<Pacer>>, enabled: bool| {
            pacer.map(|pacer| AutoDirection {
                pacer,
                enabled: AtomicBool::new(enabled),
                observed: Mutex::new(Observed::default()),
                estimate: Mutex::new(AutoEstimate::default()),
                start_from: AtomicU64::new(0),
                started: AtomicBool::new(false),
            })
        };
        Some(Arc::new(AutoPacing {
            directions: [
                direction(upload, enabled[0]),
                direction(download, enabled[1]),
            ],
            buffer_size,
            active_downloads,
            bases: Mutex::new(BaseMemory::default()),
            path_delays: Mutex::new(Vec::new()),
            receive_delays: Mutex::new(Vec::new()),
            watched: Mutex::new(Watched::default()),
            doze: Arc::new(Doze::default()),
            epoch: Instant::now(),
        }))
    }

    /// Whether `way` is paced with `auto`.
    pub(crate) fn covers(&self, way: Direction) -> bool {
        self.directions[way as usize]
            .as_ref()
            .is_some_and(|direction| direction.enabled.load(Ordering::Relaxed))
    }

    /// Turns `auto` on or off for `way` (a reload). Off, the controller leaves the pacer alone
    /// and starts afresh when turned on again.
    pub(crate) fn set_enabled(&self, way: Direction, enabled: bool) {
        if let Some(direction) = &self.directions[way as usize] {
            direction.enabled.store(enabled, Ordering::Relaxed);
        }
    }

    /// What the controller of `way` estimated at its last tick (all zero when `way` is not
    /// paced with `auto`).
    pub(crate) fn estimate(&self, way: Direction) -> AutoEstimate {
        self.directions[way as usize]
            .as_ref()
            .map_or_else(AutoEstimate::default, |direction| {
                *direction
                    .estimate
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
            })
    }

    /// Starts the thread that runs the controllers; it ends once `auto` is dropped.
    pub(crate) fn start(auto: &Arc<AutoPacing>) {
        let weak = Arc::downgrade(auto);
        let doze = Arc::clone(&auto.doze);
        let spawned = std::thread::Builder::new()
            .name("fyntr-autorate".into())
            .spawn(move || run_controllers(weak, &doze));
        if let Err(error) = spawned {
            tracing::warn!(%error, "could not start the auto rate thread: auto pacing stays off");
        }
    }

    fn report(&self, way: Direction, report: PathReport) {
        let Some(direction) = &self.directions[way as usize] else {
            return;
        };
        let mut observed = direction
            .observed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        observed.delivered += report.delivered;
        observed.sent += report.sent;
        observed.resent += report.resent;
        observed.segments_in += report.segments_in;
        observed.out_of_order += report.out_of_order;
        if let Some(base) = report.base {
            observed.base = Some(observed.base.map_or(base, |least| least.min(base)));
        }
        drop(observed);
        if let Some(delay) = report.queue_delay {
            self.path_delays
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(delay);
        }
        if let Some(delay) = report.receive_delay {
            self.receive_delays
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(delay);
        }
        // A sampler's last reading comes from its relay, which may find the thread asleep.
        self.doze.rouse();
    }

    /// Raises a watched path's flag that its relay moved data, and wakes the controllers'
    /// thread if it dozed.
    fn note_moved(&self, moved: &AtomicBool) {
        moved.store(true, Ordering::SeqCst);
        self.doze.rouse();
    }

    /// Whether the controllers have nothing to read: no watched path moved data or has bytes
    /// on their way, and nothing was reported since the last tick. Read when the thread is
    /// about to doze (see [`Doze::sleep_unless`]: the relays raise their flags first, with
    /// the same ordering).
    fn idle(&self) -> bool {
        let quiet_paths = self
            .watched()
            .paths
            .values()
            .all(|path| !path.moved.load(Ordering::SeqCst) && !path.has_bytes_in_flight());
        let nothing_reported = self.directions.iter().flatten().all(|direction| {
            direction
                .observed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .is_empty()
        });
        let no_delay = [&self.path_delays, &self.receive_delays]
            .iter()
            .all(|delays| {
                delays
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .is_empty()
            });
        quiet_paths && nothing_reported && no_delay
    }

    fn watched(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.watched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads every busy watched socket (see [`Watched`]) and adds what changed to the
    /// observations of its direction.
    fn read_watched(&self) {
        let mut watched = self.watched();
        for path in watched.paths.values_mut().filter(|path| path.busy()) {
            path.read(self);
        }
    }

    /// The base round trip to `peer`, given a socket's own least round trip.
    fn base_to(&self, peer: IpAddr, least: Duration) -> Duration {
        self.bases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .observe(peer, least, Instant::now())
    }

    /// Starts `way`'s pacer at [`START_RATE`] as a path of it opens, if the controller allows a
    /// start now (see [`AutoRate::start`]) and nothing paces it yet, so that the burst's first
    /// bytes are paced: the controller takes over at its next tick. `socket`'s round trip so
    /// far (its handshake's) tells a LAN, which never starts paced, nor does a path whose
    /// kernel reports no round trip.
    fn start_if_idle(&self, way: Direction, socket: &WatchedSocket) {
        let Some(direction) = &self.directions[way as usize] else {
            return;
        };
        let now = self.nanos_since_epoch(Instant::now());
        if direction.start_from.load(Ordering::SeqCst) > now || direction.pacer.rate().is_some() {
            return;
        }
        // Where the kernel says nothing of the path (off Linux), `auto` reads no delay either,
        // and a start could not find the line.
        let Ok(stats) = socket.read() else {
            return;
        };
        let round_trip = if stats.min_round_trip.is_zero() {
            stats.round_trip
        } else {
            stats.min_round_trip
        };
        if round_trip < START_MIN_ROUND_TRIP {
            return;
        }
        // The burst's other paths find the pacer at a rate.
        direction.start_from.store(u64::MAX, Ordering::SeqCst);
        let rate = Rate(START_RATE);
        direction.pacer.set_rate(Some(rate), self.burst(way, rate));
        direction.started.store(true, Ordering::SeqCst);
        self.doze.rouse();
    }

    fn nanos_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The pacer's burst at `rate`: one paced chunk `way` plus 2 ms of the rate (as for a
    /// fixed rate: room for a timer that fires late without losing the rate).
    fn burst(&self, way: Direction, rate: Rate) -> u64 {
        let chunk = match way {
            Direction::Upload => Pacing::chunk_for(rate, self.buffer_size),
            Direction::Download => Pacing::download_chunk_for(rate, self.buffer_size),
        };
        on_the_wire(chunk as u64) + (rate.bytes_per_second() * 0.002) as u64
    }
}

/// What one socket reported.
struct PathReport {
    delivered: u64,
    sent: u64,
    resent: u64,
    segments_in: u64,
    out_of_order: u64,
    queue_delay: Option<Duration>,
    /// A download's queueing delay as its receiver estimates it (`tcpi_rcv_rtt` over the base),
    /// from the timestamps the remote sender echoes. It reads a standing queue of a few
    /// milliseconds low, and may hold a figure for seconds, so it stands in only for ticks in
    /// which no socket that sends data reported the delay (see `run_controllers`).
    receive_delay: Option<Duration>,
    base: Option<Duration>,
}

/// The upstream sockets `auto` reads once a tick, each registered by the [`PathSampler`] of
/// one relay direction. The controllers' thread reads them itself, on the tick, rather than
/// each relay reporting when it moves data: a relay waiting for room in its socket, or for its
/// client, reports nothing while its bytes are being delivered, and the tick after carries them
/// all. Reports that came in lumps read a 20 Mbit/s uplink as delivering nothing for ticks in
/// a row and then 35 Mbit/s (testbed burst), and ticks of nothing read as a stall, during
/// which the delay is ignored: the uplink's queue stood full for a second.
#[derive(Default)]
struct Watched {
    next_id: u64,
    paths: HashMap<u64, WatchedPath>,
}

impl Watched {
    /// Registers one relay direction's upstream `socket`, connected to `peer`; returns its id,
    /// the flag its relay raises when it moves data, and where its base round trip is kept.
    fn register(
        &mut self,
        socket: WatchedSocket,
        peer: IpAddr,
        way: Direction,
    ) -> (u64, Arc<AtomicBool>, Arc<AtomicU64>) {
        let id = self.next_id;
        self.next_id += 1;
        let moved = Arc::new(AtomicBool::new(false));
        let base = Arc::new(AtomicU64::new(0));
        self.paths.insert(
            id,
            WatchedPath {
                socket,
                peer,
                way,
                last: TcpStats::default(),
                moved: Arc::clone(&moved),
                base: Arc::clone(&base),
            },
        );
        (id, moved, base)
    }
}

/// One relay direction's upstream socket.
struct WatchedPath {
    socket: WatchedSocket,
    peer: IpAddr,
    way: Direction,
    /// The figures at the last reading.
    last: TcpStats,
    /// Whether the relay moved data since the last reading.
    moved: Arc<AtomicBool>,
    /// The path's base round trip at the last reading, in microseconds (0 before the first),
    /// for the relay's receive window.
    base: Arc<AtomicU64>,
}

impl WatchedPath {
    /// Whether the socket is worth reading this tick: its relay moved data, or (uploads) bytes
    /// it sent were still on their way at the last reading (their delivery is yet to be
    /// counted). A download counts its bytes as they arrive, so it has nothing on its way.
    fn busy(&self) -> bool {
        self.moved.swap(false, Ordering::SeqCst) || self.has_bytes_in_flight()
    }

    /// Whether, at the last reading, an upload had sent bytes not yet acknowledged.
    fn has_bytes_in_flight(&self) -> bool {
        self.way == Direction::Upload && self.last.bytes_sent > self.last.bytes_acked
    }

    /// Reads the socket and adds what changed since the last reading to `auto`'s observations.
    fn read(&mut self, auto: &AutoPacing) {
        let Ok(stats) = self.socket.read() else {
            return;
        };
        let base = (!stats.min_round_trip.is_zero())
            .then(|| auto.base_to(self.peer, stats.min_round_trip));
        if let Some(base) = base {
            self.base
                .store(base.as_micros().max(1) as u64, Ordering::Relaxed);
        }
        auto.report(self.way, report(self.way, &stats, &self.last, base));
        self.last = stats;
    }
}

/// What changed on one socket between two readings.
fn report(way: Direction, stats: &TcpStats, last: &TcpStats, base: Option<Duration>) -> PathReport {
    // The delay of the path, from either direction's sockets: a round trip crosses the queues
    // of both. Only a smoothed round trip that data sent lately keeps fresh counts. The
    // receiver's estimate (tcpi_rcv_rtt) of a download that received data since the last
    // reading is kept apart: it may stay where it was for seconds while data streams in.
    let queue_delay = base
        .filter(|_| stats.since_data_sent < FRESH_ROUND_TRIP)
        .and_then(|base| Some(recent_round_trip(stats, last)?.saturating_sub(base)));
    let receive_delay = base
        .filter(|_| way == Direction::Download && stats.bytes_received > last.bytes_received)
        .filter(|_| !stats.receive_round_trip.is_zero())
        .map(|base| stats.receive_round_trip.saturating_sub(base));
    match way {
        Direction::Upload => PathReport {
            delivered: delivered_bytes(stats, last),
            sent: stats.bytes_sent.saturating_sub(last.bytes_sent),
            resent: stats
                .bytes_retransmitted
                .saturating_sub(last.bytes_retransmitted),
            segments_in: 0,
            out_of_order: 0,
            queue_delay,
            receive_delay: None,
            base,
        },
        Direction::Download => PathReport {
            delivered: stats.bytes_received.saturating_sub(last.bytes_received),
            sent: 0,
            resent: 0,
            segments_in: u64::from(
                stats
                    .data_segments_received
                    .saturating_sub(last.data_segments_received),
            ),
            out_of_order: u64::from(
                stats
                    .out_of_order_received
                    .saturating_sub(last.out_of_order_received),
            ),
            queue_delay,
            receive_delay,
            base,
        },
    }
}

/// The mean round trip of the samples the kernel took between two readings of a socket, if it
/// took any.
///
/// The smoothed round trip moves by an eighth of each sample (RFC 6298), so it trails a
/// queue by about eight samples: a tick or less for a busy socket, but seconds for one of 30
/// sockets sharing a slow uplink, which gets a few ACKs a tick (testbed asymmetric: the
/// median read 12-22 ms for 4 s after the queue had gone, and the uploads were cut to the
/// floor). Each bare ACK received since the last reading counts as one sample (at least one,
/// and no more than the segments newly acknowledged): after `k` samples of mean `m`, the
/// smoothed figure is `7/8^k * before + (1 - 7/8^k) * m`, solved for `m`, and never under the
/// least round trip the kernel saw, which a noisy figure would otherwise cross.
///
/// Nothing of this side's acknowledged since the last reading means no sample: the figure is
/// as old as it was then, and a burst's tunnels that had moved on from their upload to their
/// download kept reporting the round trip of the uplink's queue they had left (testbed burst:
/// 10 ms read for 2 s with both directions paced under their links). The first reading gives
/// the smoothed figure as it is.
fn recent_round_trip(stats: &TcpStats, last: &TcpStats) -> Option<Duration> {
    if last.round_trip.is_zero() {
        return Some(stats.round_trip);
    }
    let newly_delivered = stats
        .delivered_segments
        .saturating_sub(last.delivered_segments);
    if newly_delivered == 0 && stats.bytes_acked <= last.bytes_acked {
        return None;
    }
    let acks = stats
        .segments_received
        .saturating_sub(last.segments_received)
        .saturating_sub(
            stats
                .data_segments_received
                .saturating_sub(last.data_segments_received),
        );
    // A kernel that does not count delivered segments reports zero: then the ACKs alone.
    let samples = if newly_delivered == 0 {
        acks.max(1)
    } else {
        acks.clamp(1, newly_delivered)
    };
    // Past 32 samples the figure before weighs under 1.4 %.
    let kept = (7.0f64 / 8.0).powi(samples.min(32) as i32);
    let mean =
        (stats.round_trip.as_secs_f64() - kept * last.round_trip.as_secs_f64()) / (1.0 - kept);
    Some(Duration::from_secs_f64(
        mean.max(stats.min_round_trip.as_secs_f64()),
    ))
}

/// Registers one relay direction's upstream socket with `auto` for as long as the relay
/// lives, and says when the relay moves data. The controllers' thread reads the socket once a
/// tick while it is busy (see [`Watched`]), and a last time when the sampler drops.
pub(crate) struct PathSampler<'a, S: Stream> {
    auto: &'a AutoPacing,
    /// Borrowed for the sampler's life: the socket must outlive its registration.
    _upstream: &'a S,
    id: u64,
    moved: Arc<AtomicBool>,
    base: Arc<AtomicU64>,
}

impl<'a, S: Stream> PathSampler<'a, S> {
    /// A sampler of `upstream` (connected to `peer`) for `way`, if `auto` covers it and the
    /// path is observed.
    pub(crate) fn new(
        auto: Option<&'a AutoPacing>,
        peer: Option<IpAddr>,
        upstream: &'a S,
        way: Direction,
    ) -> Option<Self> {
        let auto = auto.filter(|auto| auto.covers(way))?;
        let peer = peer?;
        // Safety: the registration ends in `drop`, and `upstream`, borrowed for as long as the
        // sampler lives, is open until then.
        let socket = unsafe { WatchedSocket::new(upstream.descriptor()) };
        auto.start_if_idle(way, &socket);
        let (id, moved, base) = auto.watched().register(socket, peer, way);
        Some(Self {
            auto,
            _upstream: upstream,
            id,
            moved,
            base,
        })
    }

    /// Says that the relay moved data: the socket is read at the next tick (and the
    /// controllers' thread wakes if it dozed).
    pub(crate) fn moved(&self) {
        self.auto.note_moved(&self.moved);
    }

    /// The round trip a paced download's window should cover: the path's base round trip
    /// plus room for a queue (as long again, at least 20 ms), never less than
    /// [`Pacing::BUFFER_TIME`]. `None` before the first reading. A busy opposite direction's
    /// queue delays this one's ACKs, and `auto` raises a rate only while delivery keeps up with
    /// it: a window that covers less than the round trip of the moment holds the download
    /// below its rate, and so the rate where it is (testbed steps, 5 Mbit/s: uploads held the
    /// uplink's queue at 10-17 ms, and the downloads stayed at 2 Mbit/s for 20 s with a window
    /// of 30 ms).
    pub(crate) fn window_round_trip(&self) -> Option<Duration> {
        let base = match self.base.load(Ordering::Relaxed) {
            0 => return None,
            micros => Duration::from_micros(micros),
        };
        Some((base + base.max(Duration::from_millis(20))).max(Pacing::BUFFER_TIME))
    }
}

/// Payload bytes that reached the peer between two snapshots: segments delivered (selectively
/// acknowledged ones too, so that a loss recovery does not read as a slow path) at the
/// sender's segment size, or the bytes acknowledged where the kernel does not count segments.
/// Not the larger of the two: when a resend fills a hole, the cumulative ACK jumps over
/// segments already counted when they were selectively acknowledged (testbed steps: a
/// 5 Mbit/s uplink read as delivering 9-12 Mbit/s in the loss recovery after the step down).
fn delivered_bytes(now: &TcpStats, before: &TcpStats) -> u64 {
    if now.delivered_segments == 0 || now.send_mss == 0 {
        return now.bytes_acked.saturating_sub(before.bytes_acked);
    }
    // The first segment delivered is the SYN. Segments may be short, so the count is bounded
    // by what could have arrived: what was in flight before, and what was sent since.
    let segments = now
        .delivered_segments
        .saturating_sub(before.delivered_segments.max(1));
    let could_arrive = before.bytes_sent.saturating_sub(before.bytes_acked)
        + now.bytes_sent.saturating_sub(before.bytes_sent);
    (u64::from(segments) * u64::from(now.send_mss)).min(could_arrive)
}

impl<S: Stream> Drop for PathSampler<'_, S> {
    fn drop(&mut self) {
        // Read outside the registry's lock: other tunnels register and end meanwhile.
        let path = self.auto.watched().paths.remove(&self.id);
        if let Some(mut path) = path {
            path.read(self.auto);
        }
    }
}

/// The controller's constants for `way`: downloads count what fyntr's sockets received, which
/// arrives at the link's pace.
fn controller_config(way: Direction) -> AutoRateConfig {
    AutoRateConfig {
        counts_arrivals: way == Direction::Download,
        ..AutoRateConfig::default()
    }
}

/// The controllers' loop: every tick, each direction's observations in, a rate out. It dozes
/// after [`DOZE_AFTER`] quiet ticks, until a relay rouses it (see [`doze_for`]).
fn run_controllers(weak: Weak<AutoPacing>, doze: &Doze) {
    let started = Instant::now();
    let mut controllers = [Direction::Upload, Direction::Download]
        .map(|way| AutoRate::new(controller_config(way), started));
    let mut refusals = [0u64; 2];
    let mut last_tick = started;
    let mut last_report = started;
    let mut delivered_since_report = [0u64; 2];
    let mut base = [None::<Duration>; 2];
    let mut download_senders = RecentMost::default();
    let mut quiet_ticks = 0;
    loop {
        std::thread::sleep(TICK);
        let Some(auto) = weak.upgrade() else { return };
        let now = Instant::now();
        let interval = now.duration_since(last_tick);
        last_tick = now;
        auto.read_watched();
        let mut observed = auto.directions.each_ref().map(|direction| {
            direction
                .as_ref()
                .map_or_else(Observed::default, |direction| {
                    std::mem::take(
                        &mut *direction
                            .observed
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner()),
                    )
                })
        });
        let held_downloads = download_senders.note(auto.active_downloads.count(now));
        let take = |delays: &Mutex<Vec<Duration>>| {
            median(std::mem::take(
                &mut *delays
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            ))
        };
        // With no socket sending data (a burst's uploads done, its downloads streaming), no
        // smoothed round trip is fresh, and ticks without a delay neither grow nor cut: the
        // downloads stood at 10.9 Mbit/s on a 20 Mbit/s downlink for 2 s (testbed burst). The
        // receivers' estimate stands in then.
        let receive_delay = take(&auto.receive_delays);
        let path_delay = take(&auto.path_delays).or(receive_delay);
        let quiet = path_delay.is_none() && observed.iter().all(Observed::is_empty);
        quiet_ticks = if quiet { quiet_ticks + 1 } else { 0 };
        // The direction whose data the tick dropped, else the one cut last, decides first (see
        // `first_to_decide`): its opposite reads that cut in the same tick.
        let drops = [Direction::Upload, Direction::Download]
            .map(|way| dropped(way, &observed[way as usize]));
        let ways = match first_to_decide(
            [&controllers[0], &controllers[1]],
            drops.map(|dropped| dropped == Some(true)),
        ) {
            0 => [Direction::Upload, Direction::Download],
            _ => [Direction::Download, Direction::Upload],
        };
        for way in ways {
            let Some(direction) = &auto.directions[way as usize] else {
                continue;
            };
            if !direction.enabled.load(Ordering::Relaxed) {
                // Off (a fixed rate or none is in force): a later `auto` starts from scratch.
                controllers[way as usize] = AutoRate::new(controller_config(way), now);
                continue;
            }
            // The pacer also counts the ACKs this direction carries for the opposite one.
            let acks = acks_on_the_wire(observed[1 - way as usize].delivered);
            let observed = std::mem::take(&mut observed[way as usize]);
            // What the kernel sent again took the link as new bytes do, but no admission asked
            // for it: the pacer counts it now, so that new bytes and resends together keep to
            // the rate. Left out, the resends of a burst's first losses came on top of the
            // rate and kept the 5 Mbit/s uplink of the asymmetric testbed full for 8 s, at
            // 40-110 KB a tick, while the rate was 3.9 Mbit/s. At most a tick of the rate is
            // counted: resends beyond it went out while the rate was below what the link
            // carried, and a debt of them held all new bytes back for seconds after the
            // resends had ended, with the link idle.
            // (Downloads' resends are the remote sender's, which fyntr's sockets do not see:
            // theirs is always zero.)
            if let Some(rate) = direction.pacer.rate().filter(|_| observed.resent > 0) {
                let tick_of_rate = (rate.bytes_per_second() * interval.as_secs_f64()) as u64;
                direction
                    .pacer
                    .charge(on_the_wire(observed.resent).min(tick_of_rate), now);
            }
            // What the pacer let through this tick, beside what the sockets sent: in a burst's
            // first seconds on a slow line the kernel's resends and the bytes its sockets already
            // held kept the link full while the pacer admitted nothing (testbed asymmetric).
            let admitted = direction.pacer.take_admitted();
            let refused = direction.pacer.refusals();
            let backlogged = refused != refusals[way as usize];
            refusals[way as usize] = refused;
            delivered_since_report[way as usize] += observed.delivered;
            if observed.base.is_some() {
                base[way as usize] = observed.base;
            }
            let opposite = &controllers[1 - way as usize];
            let sample = Sample {
                now,
                interval,
                delivered: observed.delivered,
                acks,
                queue_delay: path_delay,
                loss: (observed.sent > 0).then(|| observed.resent as f64 / observed.sent as f64),
                dropped: drops[way as usize],
                opposite_dropped: opposite.dropped_lately(),
                backlogged,
                opposite_load: opposite.delivery(),
                opposite_cut: opposite.last_cut(),
                opposite_cuts_in_a_row: opposite.cuts_in_a_row(),
                opposite_contended: opposite.mode() == Mode::Contended,
                opposite_paced: opposite.rate().is_some(),
                opposite_starting: opposite.mode() == Mode::Starting,
                opposite_probing: opposite.probing(),
                opposite_holds_turn: opposite.holds_turn(),
                opposite_waiting_since: opposite.waiting_since(),
                opposite_probe_at_cut: opposite.probe_at_cut(),
                held_senders: match way {
                    Direction::Upload => 0,
                    Direction::Download => held_downloads,
                },
            };
            let controller = &mut controllers[way as usize];
            // A path that opened may have started the pacer (see `AutoPacing::start_if_idle`).
            let started = direction.started.swap(false, Ordering::SeqCst);
            if started {
                controller.start(now);
            }
            let before = if started {
                direction.pacer.rate()
            } else {
                controller.rate()
            };
            let rate = controller.on_tick(&sample);
            direction.start_from.store(
                controller
                    .start_allowed_from()
                    .map_or(u64::MAX, |from| auto.nanos_since_epoch(from)),
                Ordering::SeqCst,
            );
            trace!(
                direction = name(way),
                delivered = sample.delivered,
                sent = observed.sent,
                resent = observed.resent,
                admitted,
                segments_in = observed.segments_in,
                out_of_order = observed.out_of_order,
                queue_delay_ms = delay_ms(sample.queue_delay),
                receive_delay_ms = delay_ms(receive_delay),
                dropped = ?sample.dropped,
                backlogged = sample.backlogged,
                opposite_dropped = sample.opposite_dropped,
                mode = controller.mode().name(),
                rate = %describe(rate),
                floor_mbit = controller.least_rate() * 8.0 / 1e6,
                decision = controller.decision(),
                "auto tick"
            );
            *direction
                .estimate
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = AutoEstimate {
                delivery_rate: controller.delivery(),
                base_rtt: base[way as usize],
                queue_delay: controller.queue_delay(),
            };
            if rate != before {
                direction
                    .pacer
                    .set_rate(rate, rate.map_or(0, |rate| auto.burst(way, rate)));
                debug!(
                    direction = name(way),
                    mode = controller.mode().name(),
                    rate = %describe(rate),
                    delivered_mbit = controller.delivery() * 8.0 / 1e6,
                    queue_delay_ms = delay_ms(sample.queue_delay),
                    dropped = controller.dropped_lately(),
                    opposite_dropped = sample.opposite_dropped,
                    "auto rate changed"
                );
            }
        }
        if now.duration_since(last_report) >= REPORT_EVERY {
            let seconds = now.duration_since(last_report).as_secs_f64();
            last_report = now;
            for way in [Direction::Upload, Direction::Download] {
                let delivered = std::mem::take(&mut delivered_since_report[way as usize]);
                if delivered == 0 || !auto.covers(way) {
                    continue;
                }
                let controller = &controllers[way as usize];
                info!(
                    direction = name(way),
                    mode = controller.mode().name(),
                    rate = %describe(controller.rate()),
                    throughput_mbit = format!("{:.2}", delivered as f64 * 8.0 / 1e6 / seconds),
                    base_rtt_ms = delay_ms(base[way as usize]),
                    queue_delay_ms = delay_ms(controller.queue_delay()),
                    "auto rate"
                );
            }
        }
        let doze_for = doze_for(controllers.each_ref().map(AutoRate::mode));
        if let Some(at_most) = doze_for.filter(|_| quiet_ticks >= DOZE_AFTER) {
            // Ticks would read nothing and change nothing. The check takes `auto` with it, so
            // that the thread sleeps without keeping it alive (its drop rouses the thread,
            // which then ends).
            if doze.sleep_unless(at_most, move || auto.idle()) == Slept::Roused {
                trace!("auto: traffic on a watched path after a doze");
                last_tick = Instant::now();
                last_report = last_tick;
                quiet_ticks = 0;
            }
        }
    }
}

/// Quiet ticks in a row (nothing reported) after which the controllers' thread
/// dozes: a second, so that the last second's averages read the quiet before it sleeps.
const DOZE_AFTER: u32 = 10;

/// The longest doze while a direction keeps its rate with nothing moving (see the module's
/// doc): ticks after a doze this long count the whole of it.
const PACED_DOZE: Duration = Duration::from_secs(1);

/// Whether the controllers' thread may doze once its ticks are quiet, given the directions'
/// modes: `None` if not (a pause for contention ends on a tick), else for how long at most
/// (`None`: until roused).
fn doze_for(modes: [Mode; 2]) -> Option<Option<Duration>> {
    if modes.contains(&Mode::Contended) {
        None
    } else if modes.contains(&Mode::Paced) || modes.contains(&Mode::Starting) {
        Some(Some(PACED_DOZE))
    } else {
        Some(None)
    }
}

impl Drop for AutoPacing {
    fn drop(&mut self) {
        // A dozing controllers' thread wakes, finds `auto` gone and ends.
        self.doze.rouse();
    }
}

/// Ticks over which the downloads' count is remembered ([`RecentMost`]): 5 s.
const SENDER_MEMORY: usize = 50;

/// The most downloads that moved data in any tick of the last [`SENDER_MEMORY`]: the remote
/// senders a download rate is shared among. Those paced at a crawl may deliver nothing for
/// seconds (a sender in retransmission backoff), and counted only while they move they would
/// drop out of the count that keeps their rate from a crawl (testbed competing: 30 downloads
/// at 1.7 Mbit/s delivered nothing for 1.7 s).
#[derive(Default)]
struct RecentMost {
    counts: VecDeque<u32>,
}

impl RecentMost {
    /// Notes this tick's count; returns the most of the remembered ticks.
    fn note(&mut self, count: usize) -> u32 {
        if self.counts.len() == SENDER_MEMORY {
            self.counts.pop_front();
        }
        self.counts
            .push_back(u32::try_from(count).unwrap_or(u32::MAX));
        self.counts.iter().copied().max().unwrap_or(0)
    }
}

/// Whether the direction's own link dropped its data during the tick, if its sockets say:
/// uploads' resends over [`UPLOAD_DROPS`] of what they sent, downloads' out-of-order arrivals
/// over [`DOWNLOAD_DROPS`] of what they received.
fn dropped(way: Direction, observed: &Observed) -> Option<bool> {
    match way {
        Direction::Upload => (observed.sent > 0)
            .then_some(observed.resent as f64 > UPLOAD_DROPS * observed.sent as f64),
        Direction::Download => (observed.segments_in > 0)
            .then_some(observed.out_of_order as f64 > DOWNLOAD_DROPS * observed.segments_in as f64),
    }
}

/// Share of an upload tick's bytes sent again that shows the uplink dropped some: above the
/// odd tail-loss probe, which resends a segment with nothing lost.
const UPLOAD_DROPS: f64 = 0.005;
/// Share of a download tick's segments that arrived out of order that shows the downlink
/// dropped some: one drop puts the rest of a round trip's segments out of order, so a
/// tenth, and not a single stray segment of a slow tick.
const DOWNLOAD_DROPS: f64 = 0.1;

/// The path's queueing delay from the sockets' reports: their median (the lower one of an
/// even count). A queue at the shared bottleneck delays every socket; one far-away server's
/// own queue delays only its sockets, and a socket whose base was measured through a queue
/// reads low: the median ignores both while they are the fewer.
fn median(mut delays: Vec<Duration>) -> Option<Duration> {
    delays.sort_unstable();
    (!delays.is_empty()).then(|| delays[(delays.len() - 1) / 2])
}

fn describe(rate: Option<Rate>) -> String {
    rate.map_or("off".to_string(), |rate| {
        format!("{:.2}mbit", rate.megabits())
    })
}

fn delay_ms(delay: Option<Duration>) -> String {
    delay.map_or("-".to_string(), |delay| {
        format!("{:.1}", delay.as_secs_f64() * 1e3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_is_the_median_of_the_reports() {
        let ms = Duration::from_millis;
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![ms(9)]), Some(ms(9)));
        assert_eq!(median(vec![ms(9), ms(3)]), Some(ms(3)));
        assert_eq!(median(vec![ms(40), ms(2), ms(7), ms(8)]), Some(ms(7)));
        assert_eq!(
            median(vec![ms(40), ms(0), ms(7), ms(8), ms(9)]),
            Some(ms(8))
        );
    }

    /// A smoothed round trip after `samples` of `sample` from `before`, as the kernel keeps it.
    fn smoothed(before: Duration, sample: Duration, samples: u32) -> Duration {
        (0..samples).fold(before, |srtt, _| (srtt * 7 + sample) / 8)
    }

    /// Asserts that the reading `now`, after `before`, gives a round trip of `millis`.
    fn assert_recent(now: &TcpStats, before: &TcpStats, millis: u64) {
        let recent = recent_round_trip(now, before).expect("a sample");
        assert!(
            recent.abs_diff(Duration::from_millis(millis)) < Duration::from_micros(50),
            "{recent:?}"
        );
    }

    #[test]
    fn the_round_trip_read_is_the_mean_of_the_samples_since_the_last_reading() {
        let before = TcpStats {
            round_trip: Duration::from_millis(20),
            min_round_trip: Duration::from_millis(20),
            delivered_segments: 50,
            segments_received: 100,
            data_segments_received: 10,
            ..TcpStats::default()
        };
        // Three ACKs of a 32 ms round trip for six segments (and two segments of data, which
        // carry no sample).
        let queued = TcpStats {
            round_trip: smoothed(before.round_trip, Duration::from_millis(32), 3),
            delivered_segments: 56,
            segments_received: 105,
            data_segments_received: 12,
            ..before
        };
        assert_recent(&queued, &before, 32);
        // Gone again: two ACKs at the base bring the figure back to it, not to the smoothed one.
        let drained = TcpStats {
            round_trip: smoothed(queued.round_trip, Duration::from_millis(20), 2),
            delivered_segments: 60,
            segments_received: 107,
            ..queued
        };
        assert!(drained.round_trip > Duration::from_millis(22));
        assert_recent(&drained, &queued, 20);
        // Nothing acknowledged since (data received only): no sample, whatever the figure.
        let receiving = TcpStats {
            segments_received: 140,
            data_segments_received: 45,
            ..drained
        };
        assert_eq!(recent_round_trip(&receiving, &drained), None);
        // One sample acknowledged by data, with no bare ACK, still counts as one.
        let piggybacked = TcpStats {
            round_trip: smoothed(drained.round_trip, Duration::from_millis(28), 1),
            delivered_segments: 61,
            segments_received: 141,
            data_segments_received: 46,
            ..receiving
        };
        assert_recent(&piggybacked, &receiving, 28);
    }

    #[test]
    fn a_download_that_received_data_reports_its_receivers_delay_apart() {
        let ms = Duration::from_millis;
        let before = TcpStats {
            bytes_received: 10_000,
            receive_round_trip: ms(24),
            since_data_sent: Duration::from_secs(5),
            ..TcpStats::default()
        };
        let streaming = TcpStats {
            bytes_received: 60_000,
            receive_round_trip: ms(31),
            ..before
        };
        let base = Some(ms(20));
        let report = report(Direction::Download, &streaming, &before, base);
        // No data sent for seconds: no fresh smoothed round trip, only the receiver's.
        assert_eq!(report.queue_delay, None);
        assert_eq!(report.receive_delay, Some(ms(11)));
        // Nothing received since: the receiver's figure is as old as the last data.
        let idle = super::report(Direction::Download, &streaming, &streaming, base);
        assert_eq!(idle.receive_delay, None);
        // An upload's receiver estimate is not the path it paces.
        let upload = super::report(Direction::Upload, &streaming, &before, base);
        assert_eq!(upload.receive_delay, None);
    }

    #[test]
    fn a_hole_filled_late_counts_each_segment_once() {
        let mss = 1000;
        let start = TcpStats {
            send_mss: mss,
            delivered_segments: 1,
            bytes_sent: 20_000,
            ..TcpStats::default()
        };
        // Segment 1 is lost; segments 2-10 arrive and are selectively acknowledged.
        let sacked = TcpStats {
            delivered_segments: 10,
            ..start
        };
        // The resend of segment 1 arrives: the cumulative ACK jumps over all ten.
        let filled = TcpStats {
            delivered_segments: 11,
            bytes_acked: 10_000,
            bytes_sent: 21_000,
            ..start
        };
        assert_eq!(delivered_bytes(&sacked, &start), 9_000);
        assert_eq!(delivered_bytes(&filled, &sacked), 1_000);
        // Without segment counts (not Linux), the bytes acknowledged.
        let counted_by_acks = |acked| TcpStats {
            bytes_acked: acked,
            ..TcpStats::default()
        };
        assert_eq!(
            delivered_bytes(&counted_by_acks(7_000), &counted_by_acks(2_000)),
            5_000
        );
    }

    /// Registers `socket` for uploads the way a relay's [`PathSampler`] does; returns the flag
    /// its relay sets when it moves data.
    fn watch(auto: &AutoPacing, socket: &std::net::TcpStream) -> Arc<AtomicBool> {
        use std::os::fd::AsFd;
        // Safety: the test keeps `socket` open until the end.
        let socket = unsafe { WatchedSocket::new(socket.as_fd()) };
        let peer = "192.0.2.1".parse().unwrap();
        let (_, moved, _) = auto.watched().register(socket, peer, Direction::Upload);
        moved
    }

    /// A loopback connection whose sending end `auto` watches as an upload paced by `pacer`.
    struct WatchedUpload {
        auto: Arc<AutoPacing>,
        upstream: std::net::TcpStream,
        far_end: std::net::TcpStream,
        moved: Arc<AtomicBool>,
    }

    impl WatchedUpload {
        fn new(pacer: Pacer) -> Self {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let upstream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (far_end, _) = listener.accept().unwrap();
            let active = Arc::new(ActiveDownloads::new(Instant::now()));
            let auto =
                AutoPacing::new(Some(Arc::new(pacer)), None, [true, false], 65536, active).unwrap();
            let moved = watch(&auto, &upstream);
            WatchedUpload {
                auto,
                upstream,
                far_end,
                moved,
            }
        }

        /// Sends 100 000 bytes, and reads them at the far end.
        fn send(&mut self) {
            use std::io::{Read, Write};
            self.upstream.write_all(&[7; 100_000]).unwrap();
            let mut got = vec![0; 100_000];
            self.far_end.read_exact(&mut got).unwrap();
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_path_under_a_millisecond_away_never_starts_a_burst_paced() {
        use std::os::fd::AsFd;
        let path = WatchedUpload::new(Pacer::unlimited(Instant::now()));
        let direction = path.auto.directions[0].as_ref().unwrap();
        assert_eq!(direction.start_from.load(Ordering::SeqCst), 0, "allowed");
        // Safety: `path` keeps the socket open until the end.
        let socket = unsafe { WatchedSocket::new(path.upstream.as_fd()) };
        path.auto.start_if_idle(Direction::Upload, &socket);
        assert_eq!(
            direction.pacer.rate(),
            None,
            "a loopback round trip is a LAN's"
        );
        assert!(!direction.started.load(Ordering::SeqCst));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_watched_socket_is_read_on_the_tick_once_its_relay_moved_data_and_each_byte_counts_once() {
        let mut path = WatchedUpload::new(Pacer::new(Rate(1e9), 1 << 20, Instant::now()));
        let (auto, moved) = (Arc::clone(&path.auto), Arc::clone(&path.moved));
        let delivered = || {
            std::mem::take(
                &mut *auto.directions[0]
                    .as_ref()
                    .unwrap()
                    .observed
                    .lock()
                    .unwrap(),
            )
            .delivered
        };
        let mut send = || {
            path.send();
            // Loopback acknowledges at once; give the ACK a moment to be processed.
            std::thread::sleep(Duration::from_millis(20));
        };
        send();
        // The relay has not said it moved anything, and nothing was in flight at the last
        // reading (there was none): not read.
        auto.read_watched();
        assert_eq!(delivered(), 0);
        moved.store(true, Ordering::Relaxed);
        auto.read_watched();
        assert_eq!(delivered(), 100_000);
        // Idle: not read again, and nothing counted twice.
        auto.read_watched();
        assert_eq!(delivered(), 0);
        send();
        moved.store(true, Ordering::Relaxed);
        auto.read_watched();
        assert_eq!(delivered(), 100_000);
    }

    /// Waits up to 20 s for `condition`, checking every 10 ms.
    fn eventually(condition: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if condition() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn a_kept_rate_lets_the_thread_doze_a_second_at_a_time_and_a_pause_not_at_all() {
        assert_eq!(doze_for([Mode::Off, Mode::Off]), Some(None));
        assert_eq!(doze_for([Mode::Paced, Mode::Off]), Some(Some(PACED_DOZE)));
        assert_eq!(doze_for([Mode::Off, Mode::Paced]), Some(Some(PACED_DOZE)));
        assert_eq!(doze_for([Mode::Paced, Mode::Contended]), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_controllers_doze_with_nothing_to_pace_and_wake_when_a_watched_path_moves_data() {
        let mut path = WatchedUpload::new(Pacer::unlimited(Instant::now()));
        AutoPacing::start(&path.auto);
        assert!(eventually(|| path.auto.doze.is_asleep()), "never dozed");
        // Asleep, the thread holds no reference: dropping `auto` would end it.
        assert_eq!(Arc::strong_count(&path.auto), 1);
        assert_eq!(path.auto.estimate(Direction::Upload).delivery_rate, 0.0);
        path.send();
        path.auto.note_moved(&path.moved);
        assert!(
            eventually(|| path.auto.estimate(Direction::Upload).delivery_rate > 0.0),
            "the bytes moved were never counted"
        );
        // Quiet again: it dozes again.
        assert!(
            eventually(|| path.auto.doze.is_asleep()),
            "never dozed again"
        );
    }

    #[test]
    fn a_base_measured_through_a_queue_gives_way_to_the_one_remembered() {
        let ms = Duration::from_millis;
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let start = Instant::now();
        let mut memory = BaseMemory::default();
        assert_eq!(memory.observe(peer, ms(20), start), ms(20));
        // A connection opened while a queue stood: its own least round trip is 32 ms.
        assert_eq!(memory.observe(peer, ms(32), start + ms(500)), ms(32));
        assert_eq!(memory.observe(peer, ms(21), start + ms(550)), ms(21));
        assert_eq!(memory.observe(peer, ms(33), start + ms(560)), ms(21));
        // One figure below all others does not set the base.
        assert_eq!(memory.observe(peer, ms(12), start + ms(570)), ms(12));
        assert_eq!(memory.observe(peer, ms(34), start + ms(580)), ms(20));
        // Another address has its own base.
        assert_eq!(memory.observe(other, ms(80), start + ms(600)), ms(80));
        // The route changed for good: after two windows the old base is forgotten.
        let later = start + BASE_WINDOW + ms(1);
        assert_eq!(memory.observe(peer, ms(45), later), ms(20));
        assert_eq!(memory.observe(peer, ms(45), later + BASE_WINDOW), ms(45));
    }
}
