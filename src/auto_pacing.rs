//! `--upload-rate auto` / `--download-rate auto` at run time: relays report what their upstream
//! sockets' kernels know (through [`PathSampler`]) into [`AutoPacing`], and one thread ticks
//! each direction's [`AutoRate`] controller every [`TICK`] and sets the shared pacer's rate.
//!
//! Upstream sockets to loopback are not observed: there is no link to find, and a loaded
//! machine's loopback round trips (tens of milliseconds with both cores busy) would read as a
//! queue.

use std::{
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use fyntr_platform::{Stream, TcpStats};
use tracing::{debug, info};

use crate::{
    config::Pacing,
    gate::Direction,
    sched::{
        autorate::{AutoRate, AutoRateConfig, Sample},
        pacer::{on_the_wire, Pacer, Rate},
    },
};

/// How often the controllers run, and the least time between two reports of one socket.
pub(crate) const TICK: Duration = Duration::from_millis(100);
/// How often the info line is written while traffic flows.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// What the sockets of one direction reported since the last tick.
#[derive(Default)]
struct Observed {
    delivered: u64,
    sent: u64,
    resent: u64,
    /// One queueing delay per report.
    delays: Vec<Duration>,
    /// The least base round trip reported.
    base: Option<Duration>,
}

/// One direction under `auto`.
struct AutoDirection {
    pacer: Arc<Pacer>,
    observed: Mutex<Observed>,
}

/// The directions paced with `auto`, shared by every worker.
pub(crate) struct AutoPacing {
    /// Upload, download.
    directions: [Option<AutoDirection>; 2],
    /// The relay buffer: the largest chunk, of which a paced burst must hold one.
    buffer_size: usize,
}

/// A word for logs.
fn name(direction: Direction) -> &'static str {
    match direction {
        Direction::Upload => "upload",
        Direction::Download => "download",
    }
}

impl AutoPacing {
    /// `auto` for the directions that have a pacer here; `None` when neither has.
    pub(crate) fn new(
        upload: Option<Arc<Pacer>>,
        download: Option<Arc<Pacer>>,
        buffer_size: usize,
    ) -> Option<Arc<AutoPacing>> {
        if upload.is_none() && download.is_none() {
            return None;
        }
        let direction = |pacer: Option<Arc<Pacer>>| {
            pacer.map(|pacer| AutoDirection {
                pacer,
                observed: Mutex::new(Observed::default()),
            })
        };
        Some(Arc::new(AutoPacing {
            directions: [direction(upload), direction(download)],
            buffer_size,
        }))
    }

    /// Whether `way` is paced with `auto`.
    pub(crate) fn covers(&self, way: Direction) -> bool {
        self.directions[way as usize].is_some()
    }

    /// Starts the thread that runs the controllers; it ends once `auto` is dropped.
    pub(crate) fn start(auto: &Arc<AutoPacing>) {
        let weak = Arc::downgrade(auto);
        let spawned = std::thread::Builder::new()
            .name("fyntr-autorate".into())
            .spawn(move || run_controllers(weak));
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
        if let Some(delay) = report.queue_delay {
            observed.delays.push(delay);
        }
        if let Some(base) = report.base {
            observed.base = Some(observed.base.map_or(base, |least| least.min(base)));
        }
    }

    /// The pacer's burst at `rate`: one paced chunk plus 2 ms of the rate (as for a fixed
    /// rate: room for a timer that fires late without losing the rate).
    fn burst(&self, rate: Rate) -> u64 {
        let chunk = on_the_wire(Pacing::chunk_for(rate, self.buffer_size) as u64);
        chunk + (rate.bytes_per_second() * 0.002) as u64
    }
}

/// What one socket reported.
struct PathReport {
    delivered: u64,
    sent: u64,
    resent: u64,
    queue_delay: Option<Duration>,
    base: Option<Duration>,
}

/// Reads one upstream socket's kernel figures at most once per [`TICK`] while its direction
/// moves data, and reports what changed; a last time when the direction ends (it drops).
pub(crate) struct PathSampler<'a, S: Stream> {
    auto: &'a AutoPacing,
    upstream: &'a S,
    way: Direction,
    last: TcpStats,
    at: Option<Instant>,
}

impl<'a, S: Stream> PathSampler<'a, S> {
    /// A sampler of `upstream` for `way`, if `auto` covers it.
    pub(crate) fn new(
        auto: Option<&'a AutoPacing>,
        upstream: &'a S,
        way: Direction,
    ) -> Option<Self> {
        let auto = auto.filter(|auto| auto.covers(way))?;
        Some(Self {
            auto,
            upstream,
            way,
            last: TcpStats::default(),
            at: None,
        })
    }

    /// Reports the socket's figures if a tick has passed since the last report.
    pub(crate) fn sample(&mut self) {
        let now = Instant::now();
        if self.at.is_some_and(|at| now.duration_since(at) < TICK) {
            return;
        }
        self.at = Some(now);
        self.report();
    }

    fn report(&mut self) {
        let Ok(stats) = self.upstream.tcp_stats() else {
            return;
        };
        let base = (!stats.min_round_trip.is_zero()).then_some(stats.min_round_trip);
        let report = match self.way {
            Direction::Upload => PathReport {
                delivered: stats.bytes_acked.saturating_sub(self.last.bytes_acked),
                sent: stats.bytes_sent.saturating_sub(self.last.bytes_sent),
                resent: stats
                    .bytes_retransmitted
                    .saturating_sub(self.last.bytes_retransmitted),
                queue_delay: base.map(|base| stats.round_trip.saturating_sub(base)),
                base,
            },
            Direction::Download => PathReport {
                delivered: stats
                    .bytes_received
                    .saturating_sub(self.last.bytes_received),
                sent: 0,
                resent: 0,
                queue_delay: base
                    .filter(|_| !stats.receive_round_trip.is_zero())
                    .map(|base| stats.receive_round_trip.saturating_sub(base)),
                base,
            },
        };
        self.last = stats;
        self.auto.report(self.way, report);
    }
}

impl<S: Stream> Drop for PathSampler<'_, S> {
    fn drop(&mut self) {
        if self.at.is_some() {
            self.report();
        }
    }
}

/// The controllers' loop: every tick, each direction's observations in, a rate out.
fn run_controllers(weak: Weak<AutoPacing>) {
    let started = Instant::now();
    let mut controllers = [
        AutoRate::new(AutoRateConfig::default(), started),
        AutoRate::new(AutoRateConfig::default(), started),
    ];
    let mut refusals = [0u64; 2];
    let mut last_tick = started;
    let mut last_report = started;
    let mut delivered_since_report = [0u64; 2];
    let mut base = [None::<Duration>; 2];
    loop {
        std::thread::sleep(TICK);
        let Some(auto) = weak.upgrade() else { return };
        let now = Instant::now();
        let interval = now.duration_since(last_tick);
        last_tick = now;
        for way in [Direction::Upload, Direction::Download] {
            let Some(direction) = &auto.directions[way as usize] else {
                continue;
            };
            let observed = std::mem::take(
                &mut *direction
                    .observed
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            );
            let refused = direction.pacer.refusals();
            let backlogged = refused != refusals[way as usize];
            refusals[way as usize] = refused;
            delivered_since_report[way as usize] += observed.delivered;
            if observed.base.is_some() {
                base[way as usize] = observed.base;
            }
            let sample = Sample {
                now,
                interval,
                delivered: observed.delivered,
                queue_delay: low_rank(observed.delays),
                loss: (observed.sent > 0).then(|| observed.resent as f64 / observed.sent as f64),
                backlogged,
            };
            let controller = &mut controllers[way as usize];
            let before = (controller.mode(), direction.pacer.rate());
            let rate = controller.on_tick(&sample);
            if rate != before.1 {
                direction
                    .pacer
                    .set_rate(rate, rate.map_or(0, |rate| auto.burst(rate)));
                debug!(
                    direction = name(way),
                    mode = controller.mode().name(),
                    rate = %describe(rate),
                    delivered_mbit = controller.delivery() * 8.0 / 1e6,
                    queue_delay_ms = delay_ms(sample.queue_delay),
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
    }
}

/// The path's queueing delay from the sockets' reports: the second lowest of three or more,
/// else the lowest. A queue at the shared bottleneck delays every socket; one far-away
/// server's own queue delays only its socket, and a low rank ignores it.
fn low_rank(mut delays: Vec<Duration>) -> Option<Duration> {
    delays.sort_unstable();
    match delays.len() {
        0 => None,
        1 | 2 => Some(delays[0]),
        _ => Some(delays[1]),
    }
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
    fn the_delay_is_a_low_rank_of_the_reports() {
        let ms = Duration::from_millis;
        assert_eq!(low_rank(vec![]), None);
        assert_eq!(low_rank(vec![ms(9)]), Some(ms(9)));
        assert_eq!(low_rank(vec![ms(9), ms(3)]), Some(ms(3)));
        assert_eq!(low_rank(vec![ms(40), ms(2), ms(7), ms(8)]), Some(ms(7)));
    }
}
