//! The proxy's configuration, validated.

use std::time::Duration;

use crate::{
    dial::DialPlan,
    policy::PolicyConfig,
    sched::{
        pacer::{Rate, ACKED_PAYLOAD, SEGMENT_PAYLOAD},
        SchedulerConfig,
    },
};

/// Size of a relay buffer: one read, one scheduled chunk. 64 KiB moves a bulk flow in few
/// syscalls while an idle tunnel holds none (buffers are taken only once data is readable).
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;

/// How many copy buffers' worth one spliced chunk may hold when not paced. A spliced chunk only
/// references the kernel's pages, so holding a bigger one costs no memory, and each chunk costs
/// two syscalls and a grant: 4 x 64 KiB moved loopback bulk 10-20 % faster at 25 % less CPU per
/// byte than 64 KiB chunks (README, Performance). Fairness is unchanged: DRR counts bytes, so a
/// flow with big chunks waits more rounds for each.
pub const SPLICE_CHUNK_FACTOR: usize = 4;

/// The largest pipe an unprivileged process may create by default (`/proc/sys/fs/pipe-max-size`).
pub const MAX_SPLICE_CHUNK: usize = 1 << 20;

/// Which I/O backend to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// io_uring when the kernel allows it, else Tokio.
    Auto,
    /// io_uring or fail.
    IoUring,
    /// The portable Tokio backend.
    Tokio,
}

/// Everything a server needs to run. Build it with [`Config::default`], set what differs, and
/// [`Config::resolve`] it (the server does so too).
#[derive(Clone, Debug)]
pub struct Config {
    /// Concurrent client connections, pending CONNECTs included; never 0 here (the FD guard
    /// turns "unlimited" into what the descriptor limit allows).
    pub connection_cap: usize,
    /// A tunnel silent both ways this long is closed; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Time a client has to send the whole request head.
    pub handshake_timeout: Duration,
    /// On SIGINT/SIGTERM, how long tunnels may drain before exit.
    pub shutdown_grace: Duration,
    /// Worker threads.
    pub workers: usize,
    /// Destination policy.
    pub policy: PolicyConfig,
    /// Threat feeds and what a match does; `None`: no feeds.
    pub threats: Option<Threats>,
    /// Relay buffer size in bytes: one copied chunk. [`Config::resolve`] makes it smaller when a
    /// rate is set (see [`Pacing::chunk_size`]).
    pub buffer_size: usize,
    /// Most bytes one spliced chunk holds (see [`SPLICE_CHUNK_FACTOR`]).
    pub splice_chunk: usize,
    /// Most buffers one worker may hold at once (backpressure beyond).
    pub max_buffers_per_worker: usize,
    /// Pipes one worker may hold open for zero-copy relaying (`splice`, Linux); 0 = copy every
    /// chunk through a buffer.
    pub pipes_per_worker: usize,
    /// Pipe capacity in bytes all workers together may hold open for zero-copy relaying (see
    /// [`fyntr_platform::pipe_budget`]); `None`: unlimited.
    pub pipe_budget: Option<usize>,
    /// Upstream dialling.
    pub dial: DialPlan,
    /// Write scheduling.
    pub scheduler: SchedulerConfig,
    /// Pacing of the total each way and of new upstream connections.
    pub pacing: Pacing,
}

/// Loaded threat feeds and the action on a match.
#[derive(Clone)]
pub struct Threats {
    /// Every feed, merged.
    pub index: std::sync::Arc<crate::threat::ThreatIndex>,
    /// What a match does.
    pub action: crate::threat::ThreatAction,
}

impl std::fmt::Debug for Threats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Threats")
            .field("entries", &self.index.counts())
            .field("action", &self.action)
            .finish()
    }
}

/// How one direction's total is paced.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum RateSetting {
    /// Not paced.
    Off,
    /// Paced at this rate.
    Fixed(Rate),
    /// Paced at the bottleneck rate fyntr estimates, while its own traffic builds a queue
    /// there (see [`crate::sched::autorate`]).
    #[default]
    Auto,
}

impl RateSetting {
    /// Parses `auto`, `off`, or a rate (see [`Rate::parse`]).
    pub fn parse(text: &str) -> Result<RateSetting, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(RateSetting::Auto),
            "off" | "none" | "0" => Ok(RateSetting::Off),
            _ => Rate::parse(text).map(RateSetting::Fixed),
        }
    }

    /// The fixed rate, if one is set.
    pub fn fixed(self) -> Option<Rate> {
        match self {
            RateSetting::Fixed(rate) => Some(rate),
            RateSetting::Off | RateSetting::Auto => None,
        }
    }

    /// Whether fyntr estimates the rate.
    pub fn is_auto(self) -> bool {
        self == RateSetting::Auto
    }
}

/// Burst smoothing: total rates each way and a rate of new upstream connections.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pacing {
    /// Total client-to-destination rate.
    pub upload: RateSetting,
    /// Total destination-to-client rate (paced by how fast fyntr reads from upstream).
    pub download: RateSetting,
    /// New upstream connections per second.
    pub connects_per_second: Option<f64>,
}

impl Pacing {
    /// How long the upstream's buffers may hold at a paced rate: a typical broadband round trip
    /// to a cloud region. A lone flow gets `rate x BUFFER_TIME` of receive buffer, enough to fill
    /// the rate over such a path.
    pub const BUFFER_TIME: Duration = Duration::from_millis(20);

    /// Longest run of bytes one paced write puts on the wire: about half a millisecond of the
    /// rate, in whole segments (one segment up to 23 Mbit/s). The shared pacer spaces these
    /// writes, so the total leaves as an even stream of small runs. With 4 ms chunks each socket
    /// needed kernel pacing at its share of the rate to spread them, and 30 sockets paced alike
    /// fell into step: all sent at once, every 20 ms, 45 KB in a burst, more than a 32 KiB router
    /// queue holds (testbed capture). Against 1 ms chunks, half a millisecond halved the p99 of
    /// the testbed's uplink queue (7.5 KB against 14 KB) for twice the writes, 1,600 a second at
    /// 19 Mbit/s.
    pub const CHUNK_TIME: Duration = Duration::from_micros(500);

    /// Whether a fixed byte rate is set either way (what the relay's chunk sizes are fixed
    /// for; with `auto` they follow the estimated rate instead).
    pub fn paces_bytes(&self) -> bool {
        self.upload.fixed().is_some() || self.download.fixed().is_some()
    }

    /// The spliced chunk for relay buffers of `buffer_size`: bigger when not paced, the same
    /// when paced (a chunk is then a few milliseconds of the rate, see [`Pacing::CHUNK_TIME`]).
    pub fn splice_chunk(&self, buffer_size: usize) -> usize {
        if self.paces_bytes() {
            buffer_size
        } else {
            (buffer_size * SPLICE_CHUNK_FACTOR)
                .clamp(buffer_size, MAX_SPLICE_CHUNK.max(buffer_size))
        }
    }

    /// Receive window for a paced download at `rate` among `tunnels` downloads: the whole
    /// `rate x BUFFER_TIME` for a lone one, an equal share of it otherwise, so that all
    /// remote senders together can put at most about one round trip of data in flight and the
    /// router's queue stays short. At least 4 KiB, at most 4 MiB. The relay moves each
    /// upstream socket's window to it as tunnels come and go, so a flow left alone can use the
    /// whole rate.
    pub fn socket_buffer(rate: Rate, tunnels: usize) -> usize {
        Self::socket_buffer_over(rate, tunnels, Self::BUFFER_TIME)
    }

    /// [`Pacing::socket_buffer`] over a path whose round trip is known: `rate x round_trip`
    /// (`auto` knows each upstream's base round trip; a window shorter than the round trip
    /// would hold a download below the rate).
    pub fn socket_buffer_over(rate: Rate, tunnels: usize, round_trip: Duration) -> usize {
        let whole = rate.bytes_per_second() * round_trip.as_secs_f64();
        let share = whole / tunnels.max(1) as f64;
        (share as usize).clamp(4 * 1024, 4 << 20)
    }

    /// The window clamp a new upstream socket gets before it connects. The clamp before
    /// `connect` also sets the first window and the window scale: the share while the whole
    /// `rate x BUFFER_TIME` fits the unscaled 64 KiB, so new tunnels start with small windows;
    /// above that the whole, so that the scale lets a lone flow's window grow to it later (the
    /// first window is then at most 64 KiB).
    pub fn first_window_clamp(rate: Rate, tunnels: usize) -> usize {
        let whole = Self::socket_buffer(rate, 1);
        if whole <= usize::from(u16::MAX) {
            Self::socket_buffer(rate, tunnels)
        } else {
            whole
        }
    }

    /// The relay buffer size to use with these rates: `buffer_size`, or less when a rate is
    /// set, so that one chunk is [`Pacing::CHUNK_TIME`] of the slower rate rounded to whole
    /// segments (at least one).
    pub fn chunk_size(&self, buffer_size: usize) -> usize {
        if !self.paces_bytes() {
            return buffer_size;
        }
        let slowest = [self.upload.fixed(), self.download.fixed()]
            .into_iter()
            .flatten()
            .map(Rate::bytes_per_second)
            .fold(f64::INFINITY, f64::min);
        if slowest.is_infinite() {
            return buffer_size;
        }
        Self::chunk_for(Rate(slowest), buffer_size)
    }

    /// One paced chunk at `rate`: [`Pacing::CHUNK_TIME`] of it in whole segments (at least
    /// one), at most `buffer_size`.
    pub fn chunk_for(rate: Rate, buffer_size: usize) -> usize {
        let segment = SEGMENT_PAYLOAD as usize;
        let segments =
            (rate.bytes_per_second() * Self::CHUNK_TIME.as_secs_f64() / segment as f64).round();
        let chunk = (segments as usize).max(1) * segment;
        chunk.min(buffer_size.max(segment))
    }

    /// One paced read of a download at `rate`: [`Pacing::chunk_for`], but at least the
    /// payload one ACK is charged for ([`ACKED_PAYLOAD`]). A paced download's window is a few
    /// segments, and each read that frees part of it makes the kernel announce the new room
    /// with an ACK: reading one segment at a time drew one ACK per 1.3 segments over the
    /// uplink where delayed ACKs draw one per two (`ss -ti`, testbed), 4 % of the downloads'
    /// rate against the 2.6 % the pacer charges, on a 5 Mbit/s uplink under 40 Mbit/s of
    /// downloads 1.2 Mbit/s of ACKs. Read two at a time, they drew one per 1.7. The bytes
    /// read have crossed the link already, so reading two segments at once costs the downlink
    /// nothing.
    pub fn download_chunk_for(rate: Rate, buffer_size: usize) -> usize {
        Self::chunk_for(rate, buffer_size).max((ACKED_PAYLOAD as usize).min(buffer_size))
    }
}

impl Default for Config {
    /// The defaults of the command line.
    fn default() -> Self {
        Self {
            connection_cap: 1000,
            idle_timeout: Some(Duration::from_secs(300)),
            handshake_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            workers: 1,
            policy: PolicyConfig::default(),
            threats: None,
            buffer_size: DEFAULT_BUFFER_SIZE,
            splice_chunk: DEFAULT_BUFFER_SIZE * SPLICE_CHUNK_FACTOR,
            max_buffers_per_worker: 2048,
            pipes_per_worker: crate::limits::PIPES_PER_WORKER,
            pipe_budget: None,
            dial: DialPlan::default(),
            scheduler: SchedulerConfig::default(),
            pacing: Pacing::default(),
        }
    }
}

impl Config {
    /// Derives the effective settings from the requested ones: the relay chunk (a few
    /// hundred microseconds of the slower rate when one is set), the spliced chunk, and the
    /// quantum cap (one chunk, never under the quantum's floor: a paced chunk may be a single
    /// segment). Applying it twice changes nothing, so [`crate::server::run`] applies it to
    /// whatever it is given, and every caller gets the same effective settings.
    pub fn resolve(mut self) -> Self {
        self.buffer_size = self.pacing.chunk_size(self.buffer_size);
        self.splice_chunk = self.pacing.splice_chunk(self.buffer_size);
        let quantum = &mut self.scheduler.quantum;
        quantum.max = u32::try_from(self.buffer_size)
            .unwrap_or(u32::MAX)
            .max(quantum.min);
        self
    }
}

/// Parses a byte size: a plain number of bytes, or one with a unit of [`crate::units`] (`KB`
/// is 1000 bytes, `KiB` 1024).
pub fn parse_byte_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 65536, 64KiB or 1MiB"))?;
    let multiplier = crate::units::bytes_in(unit).ok_or_else(|| {
        format!("{text:?}: unknown unit {unit:?} (use B, KB, MB, KiB or MiB; KB is 1000 bytes)")
    })?;
    number
        .checked_mul(multiplier as usize)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_settings_parse_auto_off_and_rates() {
        assert_eq!(RateSetting::parse("auto"), Ok(RateSetting::Auto));
        assert_eq!(RateSetting::parse("AUTO"), Ok(RateSetting::Auto));
        assert_eq!(RateSetting::parse("off"), Ok(RateSetting::Off));
        assert_eq!(
            RateSetting::parse("19mbit"),
            Ok(RateSetting::Fixed(Rate(19e6 / 8.0)))
        );
        assert!(RateSetting::parse("automatic").is_err());
        assert!(RateSetting::parse("0mbit").is_err());
        assert_eq!(RateSetting::default(), RateSetting::Auto);
        assert_eq!(RateSetting::Auto.fixed(), None);
    }

    #[test]
    fn resolving_derives_the_paced_chunk_and_resolving_again_changes_nothing() {
        let mut config = Config::default();
        config.pacing.upload = RateSetting::Fixed(Rate::parse("19mbit").unwrap());
        let resolved = config.resolve();
        assert_eq!(resolved.buffer_size, SEGMENT_PAYLOAD as usize);
        assert_eq!(resolved.splice_chunk, resolved.buffer_size);
        assert_eq!(
            resolved.scheduler.quantum.max,
            resolved.scheduler.quantum.min
        );
        let again = resolved.clone().resolve();
        assert_eq!(again.buffer_size, resolved.buffer_size);
        assert_eq!(again.splice_chunk, resolved.splice_chunk);
        let unpaced = Config::default().resolve();
        assert_eq!(unpaced.buffer_size, DEFAULT_BUFFER_SIZE);
        assert_eq!(
            unpaced.splice_chunk,
            DEFAULT_BUFFER_SIZE * SPLICE_CHUNK_FACTOR
        );
    }

    #[test]
    fn spliced_chunks_are_bigger_only_when_not_paced() {
        let unpaced = Pacing::default();
        assert_eq!(unpaced.splice_chunk(64 * 1024), 256 * 1024);
        assert_eq!(unpaced.splice_chunk(512 * 1024), MAX_SPLICE_CHUNK);
        assert_eq!(
            unpaced.splice_chunk(4 << 20),
            4 << 20,
            "never below the buffer size"
        );
        let paced = Pacing {
            upload: RateSetting::Fixed(Rate::parse("19mbit").unwrap()),
            ..Pacing::default()
        };
        let chunk = paced.chunk_size(64 * 1024);
        assert!(chunk < 64 * 1024);
        assert_eq!(paced.splice_chunk(chunk), chunk);
    }

    #[test]
    fn paced_chunks_are_about_half_a_millisecond_of_whole_segments() {
        let paced = |rate: &str| Pacing {
            download: RateSetting::Fixed(Rate::parse(rate).unwrap()),
            ..Pacing::default()
        };
        // 19 Mbit/s is 1187 bytes per half millisecond: one segment; 100 Mbit/s, four.
        assert_eq!(paced("19mbit").chunk_size(64 * 1024), 1448);
        assert_eq!(paced("100mbit").chunk_size(64 * 1024), 4 * 1448);
        assert_eq!(paced("100kbit").chunk_size(64 * 1024), 1448, "at least one");
        assert_eq!(
            paced("10gbit").chunk_size(64 * 1024),
            64 * 1024,
            "at most a buffer"
        );
        assert_eq!(Pacing::default().chunk_size(64 * 1024), 64 * 1024);
    }

    #[test]
    fn paced_download_reads_take_at_least_the_payload_of_one_ack() {
        let rate = |text: &str| Rate::parse(text).unwrap();
        // Under 23 Mbit/s a paced chunk is one segment; a download reads two.
        assert_eq!(
            Pacing::download_chunk_for(rate("5mbit"), 64 * 1024),
            2 * 1448
        );
        assert_eq!(
            Pacing::download_chunk_for(rate("19mbit"), 64 * 1024),
            2 * 1448
        );
        assert_eq!(
            Pacing::download_chunk_for(rate("100mbit"), 64 * 1024),
            4 * 1448
        );
        assert_eq!(
            Pacing::download_chunk_for(rate("5mbit"), 1448),
            1448,
            "at most a buffer"
        );
    }

    #[test]
    fn byte_sizes_parse_with_binary_units() {
        assert_eq!(parse_byte_size("65536"), Ok(65536));
        assert_eq!(parse_byte_size("64KiB"), Ok(65536));
        assert_eq!(parse_byte_size("64k"), Ok(64_000));
        assert_eq!(parse_byte_size("64KB"), Ok(64_000));
        assert_eq!(parse_byte_size("1MiB"), Ok(1 << 20));
        assert!(parse_byte_size("64 parsecs").is_err());
        assert!(parse_byte_size("").is_err());
        assert!(parse_byte_size("-1").is_err());
    }
}
