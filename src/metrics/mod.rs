//! What the server counts, for `/metrics` and the stats line.
//!
//! Every worker counts into its own shard (relaxed atomics on a cache line of its own), so
//! counting costs the data path an uncontended add; a scrape sums the shards. [`Snapshot`] is
//! that sum at one moment, with the gauges read beside it.

pub mod endpoint;
pub mod render;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use crate::{gate::Direction, worker::Shared};

/// What a client spoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// HTTP CONNECT.
    Connect,
    /// SOCKS5 CONNECT.
    Socks5,
    /// Plain HTTP forwarding.
    Http,
}

impl Protocol {
    /// Every protocol, in label order.
    pub const ALL: [Protocol; 3] = [Protocol::Connect, Protocol::Socks5, Protocol::Http];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Socks5 => "socks5",
            Self::Http => "http",
        }
    }
}

/// How a client connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// A tunnel ran and closed normally (both sides finished), or fyntr closed it at the end of
    /// the shutdown grace period.
    Closed,
    /// A tunnel was closed after the idle timeout.
    IdleTimeout,
    /// A tunnel ended on a socket error.
    Error,
    /// The request was refused.
    Refused,
    /// The client left before a tunnel was established.
    ClientGone,
    /// The connection carried plain HTTP requests.
    Forwarded,
}

impl Ending {
    /// Every ending, in label order.
    pub const ALL: [Ending; 6] = [
        Ending::Closed,
        Ending::IdleTimeout,
        Ending::Error,
        Ending::Refused,
        Ending::ClientGone,
        Ending::Forwarded,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::IdleTimeout => "idle_timeout",
            Self::Error => "error",
            Self::Refused => "refused",
            Self::ClientGone => "client_gone",
            Self::Forwarded => "forwarded",
        }
    }
}

/// Upper bounds of the upstream connect time buckets, in seconds.
pub const CONNECT_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Upper bounds of the tunnel duration buckets, in seconds.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// A histogram one worker adds to.
#[derive(Debug)]
struct AtomicHistogram {
    bounds: &'static [f64],
    /// One per bound, then the overflow; not cumulative.
    counts: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(value.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn add_to(&self, into: &mut Histogram) {
        for (total, count) in into.counts.iter_mut().zip(self.counts.iter()) {
            *total += count.load(Ordering::Relaxed);
        }
        into.sum += self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
    }
}

/// A histogram summed over the workers.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    /// The buckets' upper bounds, in seconds.
    pub bounds: &'static [f64],
    /// Observations per bucket (one per bound, then the overflow); not cumulative.
    pub counts: Vec<u64>,
    /// Sum of the observations, in seconds.
    pub sum: f64,
}

impl Histogram {
    fn empty(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    /// How many observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(upper bound, cumulative count)` per bucket, `+Inf` last.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.counts
            .iter()
            .enumerate()
            .map(|(index, count)| {
                total += count;
                (
                    self.bounds.get(index).copied().unwrap_or(f64::INFINITY),
                    total,
                )
            })
            .collect()
    }
}

/// What a refused request was told: an HTTP status, a SOCKS5 reply code, or nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// An HTTP status code (CONNECT, plain HTTP).
    Status(u16),
    /// A SOCKS5 reply code, or 0xff for "no acceptable method".
    Socks5(u8),
    /// The connection was closed without an answer.
    Closed,
}

impl Refusal {
    /// The `status` label value: `403`, `0x02`, `none`.
    pub fn label(self) -> String {
        match self {
            Self::Status(code) => code.to_string(),
            Self::Socks5(code) => format!("{code:#04x}"),
            Self::Closed => "none".to_string(),
        }
    }
}

/// One worker's counters. Aligned to two cache lines so that workers never share one.
#[repr(align(128))]
#[derive(Debug)]
pub(crate) struct WorkerStats {
    /// Per protocol: upload, download.
    bytes: [[AtomicU64; 2]; 3],
    /// Per protocol, per [`Ending`].
    endings: [[AtomicU64; 6]; 3],
    /// Plain HTTP requests forwarded (each response counts one).
    http_requests: AtomicU64,
    refusals: Mutex<BTreeMap<(Protocol, Refusal), u64>>,
    connect_time: AtomicHistogram,
    tunnel_duration: AtomicHistogram,
    /// Per direction, the bytes waiting for a DRR grant (see `Gate`).
    backlog: Arc<[AtomicU64; 2]>,
    /// Open tunnels (established, relaying) per protocol.
    open_tunnels: [AtomicI64; 3],
}

impl WorkerStats {
    fn new() -> Self {
        Self {
            bytes: Default::default(),
            endings: Default::default(),
            http_requests: AtomicU64::new(0),
            refusals: Mutex::new(BTreeMap::new()),
            connect_time: AtomicHistogram::new(&CONNECT_BUCKETS),
            tunnel_duration: AtomicHistogram::new(&DURATION_BUCKETS),
            backlog: Arc::default(),
            open_tunnels: Default::default(),
        }
    }

    /// The byte counters of `protocol`: upload, download.
    pub(crate) fn bytes(&self, protocol: Protocol) -> &[AtomicU64; 2] {
        &self.bytes[protocol as usize]
    }

    /// Where this worker's gate publishes its backlog.
    pub(crate) fn backlog(&self) -> Arc<[AtomicU64; 2]> {
        Arc::clone(&self.backlog)
    }

    /// A connection of `protocol` ended so.
    pub(crate) fn count_ending(&self, protocol: Protocol, ending: Ending) {
        self.endings[protocol as usize][ending as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A request of `protocol` was refused with `refusal`.
    pub(crate) fn count_refusal(&self, protocol: Protocol, refusal: Refusal) {
        *self
            .refusals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry((protocol, refusal))
            .or_default() += 1;
    }

    /// A plain HTTP request was answered.
    pub(crate) fn count_http_request(&self) {
        self.http_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// An upstream connection took `time` to establish.
    pub(crate) fn observe_connect(&self, time: Duration) {
        self.connect_time.observe(time);
    }

    /// A tunnel (or a plain HTTP forwarding connection) of `protocol` began relaying.
    pub(crate) fn opened(&self, protocol: Protocol) {
        self.open_tunnels[protocol as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// What [`WorkerStats::opened`] counted ended.
    pub(crate) fn closed(&self, protocol: Protocol) {
        self.open_tunnels[protocol as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// A tunnel lasted `lasted`, from its client's connection to its close.
    pub(crate) fn observe_tunnel(&self, lasted: Duration) {
        self.tunnel_duration.observe(lasted);
    }
}

/// Every worker's counters.
#[derive(Debug)]
pub(crate) struct Stats {
    workers: Box<[WorkerStats]>,
    /// Reloads that took effect, and reloads refused.
    reloads: [AtomicU64; 2],
}

impl Stats {
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            workers: (0..workers.max(1)).map(|_| WorkerStats::new()).collect(),
            reloads: Default::default(),
        }
    }

    /// Worker `index`'s shard.
    pub(crate) fn worker(&self, index: usize) -> &WorkerStats {
        &self.workers[index % self.workers.len()]
    }

    /// A reload took effect (`true`) or was refused.
    pub(crate) fn count_reload(&self, applied: bool) {
        self.reloads[usize::from(!applied)].fetch_add(1, Ordering::Relaxed);
    }
}

/// `auto`'s figures for one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AutoEstimate {
    /// What the bottleneck delivered lately, bytes per second.
    pub delivery_rate: f64,
    /// The path's base round trip.
    pub base_rtt: Option<Duration>,
    /// The queueing delay the controller sees.
    pub queue_delay: Option<Duration>,
}

/// One direction's pacing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DirectionPacing {
    /// `off`, `auto` or `fixed`.
    pub mode: &'static str,
    /// The rate in force, bytes per second on the wire; `None`: not limited now.
    pub rate: Option<f64>,
    /// With `auto`, what it estimates.
    pub auto: Option<AutoEstimate>,
    /// Bytes waiting for a DRR grant, all workers.
    pub backlog: u64,
}

/// Everything the server counts, summed over the workers at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// `fyntr`'s version.
    pub version: &'static str,
    /// The backend's name.
    pub backend: &'static str,
    /// Client connections admitted now (pending requests included).
    pub active_connections: usize,
    /// The connection cap in force.
    pub connection_cap: usize,
    /// Established tunnels per protocol.
    pub open_tunnels: Vec<(Protocol, i64)>,
    /// Bytes per protocol: upload, download.
    pub bytes: Vec<(Protocol, [u64; 2])>,
    /// Connections per protocol and ending.
    pub connections: Vec<(Protocol, Ending, u64)>,
    /// Refused requests per protocol and answer.
    pub refused: Vec<(Protocol, Refusal, u64)>,
    /// Plain HTTP requests answered.
    pub http_requests: u64,
    /// Upstream connect times.
    pub connect_time: Histogram,
    /// Tunnel durations.
    pub tunnel_duration: Histogram,
    /// Upload, download.
    pub pacing: [DirectionPacing; 2],
    /// Reloads applied and refused.
    pub reloads: [u64; 2],
}

impl Snapshot {
    /// Reads everything `shared` counts now.
    pub(crate) fn take(shared: &Shared) -> Self {
        let stats = &shared.stats;
        let mut bytes = [[0u64; 2]; 3];
        let mut endings = [[0u64; 6]; 3];
        let mut open = [0i64; 3];
        let mut refused = BTreeMap::new();
        let mut http_requests = 0;
        let mut backlog = [0u64; 2];
        let mut connect_time = Histogram::empty(&CONNECT_BUCKETS);
        let mut tunnel_duration = Histogram::empty(&DURATION_BUCKETS);
        for worker in stats.workers.iter() {
            for protocol in 0..3 {
                add_all(&mut bytes[protocol], &worker.bytes[protocol]);
                add_all(&mut endings[protocol], &worker.endings[protocol]);
                open[protocol] += worker.open_tunnels[protocol].load(Ordering::Relaxed);
            }
            for (key, count) in worker
                .refusals
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .iter()
            {
                *refused.entry(*key).or_insert(0) += count;
            }
            http_requests += worker.http_requests.load(Ordering::Relaxed);
            add_all(&mut backlog, worker.backlog.as_slice());
            worker.connect_time.add_to(&mut connect_time);
            worker.tunnel_duration.add_to(&mut tunnel_duration);
        }
        let in_force = shared.live().pacing;
        let pacing = [Direction::Upload, Direction::Download].map(|way| {
            let (setting, pacer) = match way {
                Direction::Upload => (in_force.upload, &shared.upload_pacer),
                Direction::Download => (in_force.download, &shared.download_pacer),
            };
            DirectionPacing {
                mode: match setting {
                    crate::config::RateSetting::Off => "off",
                    crate::config::RateSetting::Auto => "auto",
                    crate::config::RateSetting::Fixed(_) => "fixed",
                },
                rate: pacer
                    .as_ref()
                    .and_then(|pacer| pacer.rate())
                    .map(|rate| rate.bytes_per_second()),
                auto: shared
                    .auto_pacing
                    .as_ref()
                    .filter(|auto| auto.covers(way))
                    .map(|auto| auto.estimate(way)),
                backlog: backlog[way as usize],
            }
        });
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            backend: shared.backend_name,
            active_connections: shared.admission.active(),
            connection_cap: shared.admission.cap(),
            open_tunnels: Protocol::ALL
                .iter()
                .map(|&protocol| (protocol, open[protocol as usize].max(0)))
                .collect(),
            bytes: Protocol::ALL
                .iter()
                .map(|&protocol| (protocol, bytes[protocol as usize]))
                .collect(),
            connections: Protocol::ALL
                .iter()
                .flat_map(|&protocol| {
                    Ending::ALL.iter().map(move |&ending| {
                        (
                            protocol,
                            ending,
                            endings[protocol as usize][ending as usize],
                        )
                    })
                })
                .collect(),
            refused: refused
                .into_iter()
                .map(|((protocol, refusal), count)| (protocol, refusal, count))
                .collect(),
            http_requests,
            connect_time,
            tunnel_duration,
            pacing,
            reloads: [
                stats.reloads[0].load(Ordering::Relaxed),
                stats.reloads[1].load(Ordering::Relaxed),
            ],
        }
    }

    /// Bytes moved each way (upload, download), all protocols.
    pub fn total_bytes(&self) -> [u64; 2] {
        self.bytes
            .iter()
            .fold([0, 0], |[up, down], (_, [u, d])| [up + u, down + d])
    }

    /// Requests refused, all protocols and answers.
    pub fn total_refused(&self) -> u64 {
        self.refused.iter().map(|(_, _, count)| count).sum()
    }

    /// Connections of this ending, all protocols.
    pub fn total_ended(&self, ending: Ending) -> u64 {
        self.connections
            .iter()
            .filter(|(_, each, _)| *each == ending)
            .map(|(_, _, count)| count)
            .sum()
    }
}

/// Adds each counter of `from` to its place in `into`.
fn add_all(into: &mut [u64], from: &[AtomicU64]) {
    for (total, counter) in into.iter_mut().zip(from) {
        *total += counter.load(Ordering::Relaxed);
    }
}

/// Reads a server's figures from another thread: the metrics endpoint and the stats line.
#[derive(Clone)]
pub struct Observer {
    shared: Arc<Shared>,
}

impl Observer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The figures now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::take(&self.shared)
    }
}
