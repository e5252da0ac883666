//! A lock-free rate limiter (GCRA, the "virtual scheduling" form of a token bucket) that every
//! worker shares.
//!
//! The state is one number, the theoretical arrival time (TAT): when the link would be free if
//! every admitted byte went out at exactly the rate. Admitting `n` bytes at `now` moves it to
//! `max(TAT, now) + n / rate`; that is allowed while the new TAT is at most `burst` ahead of
//! `now`. So the total is paced smoothly, with at most `burst` bytes sent back to back, never
//! once per second. One atomic compare-and-swap per grant: no lock on the data path.
//!
//! Sans-io: the caller passes `now`; the pacer only compares it with its epoch.

use std::{
    convert::Infallible,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// A rate in bytes per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate(pub f64);

impl Rate {
    /// Parses `19mbit`, `2.5MB`, `500KiB`, `1gbit/s`, or a plain number of bytes per second.
    /// Bit units and `KB`/`MB`/`GB` are decimal; `KiB`/`MiB`/`GiB` are binary.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let original = text;
        let text = text.trim();
        let text = text
            .strip_suffix("/s")
            .or_else(|| text.strip_suffix("ps"))
            .unwrap_or(text);
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("{original:?} is not a rate such as 19mbit, 2.5MB or 500KiB"))?;
        if unit.trim() == "b" {
            return Err(format!(
                "{original:?}: \"b\" is ambiguous in a rate: write B for bytes or bit for bits"
            ));
        }
        let Some(bytes_per_unit) =
            crate::units::bytes_in_bits(unit).or_else(|| crate::units::bytes_in(unit))
        else {
            return Err(format!(
                "{original:?}: unknown unit {unit:?} (use bit, kbit, mbit, gbit, B, KB, MB, GB, KiB, MiB or GiB; K, M, G are powers of 1000)"
            ));
        };
        let rate = number * bytes_per_unit;
        if !(rate.is_finite() && rate >= 1.0) {
            return Err(format!("{original:?} must be at least 1 byte per second"));
        }
        Ok(Rate(rate))
    }

    /// Bytes per second.
    pub fn bytes_per_second(self) -> f64 {
        self.0
    }

    /// The rate in megabits per second, for logs.
    pub fn megabits(self) -> f64 {
        self.0 * 8.0 / 1e6
    }
}

/// TCP payload per full segment on a 1500-byte MTU path (1500 - 20 IPv4 - 20 TCP - 12 options).
pub const SEGMENT_PAYLOAD: u64 = 1448;
/// Headers per packet on the wire: Ethernet (14 bytes, what Linux shapers such as tbf and htb
/// count, and what a home router's LAN side carries), IPv4 (20) and TCP with the timestamp
/// option (32).
pub const SEGMENT_HEADERS: u64 = 66;

/// Bytes `payload` occupies on the wire: payload plus the headers of its segments.
///
/// Rates are what a user's link is sold as, on the wire; at 1448-byte segments the headers
/// add 4.6 %, most of the headroom between a 95 % rate and a full link. Counting only the IP
/// and TCP headers (3.6 %), a 19mbit rate plus the other direction's ACKs came to 98 % of a
/// 20 Mbit/s link that a shaper measures in Ethernet frames.
pub fn on_the_wire(payload: u64) -> u64 {
    payload + payload.div_ceil(SEGMENT_PAYLOAD) * SEGMENT_HEADERS
}

/// Payload one bare ACK is charged for: two full segments, as delayed ACKs go. fyntr's paced
/// downloads read at least this much at a time (`Pacing::download_chunk_for`), and draw one
/// per 1.7 segments (`ss -ti`, testbed; the first segments of each connection are acknowledged
/// one by one). Charged at one per 1.25, the uploads went under the uplink and the asymmetric
/// line's probes over 12 ms rose: see docs/testbed.md.
pub const ACKED_PAYLOAD: u64 = 2 * SEGMENT_PAYLOAD;

/// Bytes of the acknowledgements that `payload` draws back over the opposite direction: one
/// bare ACK (its headers, [`SEGMENT_HEADERS`]) per [`ACKED_PAYLOAD`].
///
/// On an asymmetric consumer link both directions share nothing but these ACKs; counting them
/// against the opposite rate keeps each direction's total, data and ACKs, at the rate set,
/// instead of about 2 % over it when both directions are busy.
pub fn acks_on_the_wire(payload: u64) -> u64 {
    payload.div_ceil(ACKED_PAYLOAD) * SEGMENT_HEADERS
}

/// A shared pacer: admits bytes at most at its rate, with a bounded burst. The rate may change
/// at any time ([`Pacer::set_rate`], for `auto`), and may be none: an unlimited pacer admits
/// everything at the cost of one atomic load.
#[derive(Debug)]
pub struct Pacer {
    epoch: Instant,
    /// Nanoseconds per byte as `f64` bits; 0 means unlimited.
    nanos_per_byte: AtomicU64,
    burst_nanos: AtomicU64,
    /// Theoretical arrival time, in nanoseconds since `epoch`.
    tat: AtomicU64,
    /// Admissions refused: whether bytes waited for the rate.
    refusals: AtomicU64,
    /// Bytes admitted at a rate (on the wire, as asked for) since [`Pacer::take_admitted`]:
    /// what the pacer itself let through, apart from what the kernel sent of its own accord
    /// (resends, bytes the sockets already held).
    admitted: AtomicU64,
}

impl Pacer {
    /// A pacer of `rate` allowing `burst_bytes` back to back. `burst_bytes` should cover the
    /// largest single admission (one relay chunk); a larger one passes only when the pacer is
    /// idle.
    pub fn new(rate: Rate, burst_bytes: u64, epoch: Instant) -> Pacer {
        let pacer = Pacer::unlimited(epoch);
        pacer.set_rate(Some(rate), burst_bytes);
        pacer
    }

    /// A pacer that admits everything until it is given a rate.
    pub fn unlimited(epoch: Instant) -> Pacer {
        Pacer {
            epoch,
            nanos_per_byte: AtomicU64::new(0),
            burst_nanos: AtomicU64::new(0),
            tat: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
        }
    }

    /// Sets the rate (`None`: unlimited) and the burst, for the admissions that follow.
    pub fn set_rate(&self, rate: Option<Rate>, burst_bytes: u64) {
        let nanos_per_byte = rate.map_or(0.0, |rate| 1e9 / rate.bytes_per_second());
        self.burst_nanos.store(
            (burst_bytes as f64 * nanos_per_byte) as u64,
            Ordering::Relaxed,
        );
        self.nanos_per_byte
            .store(nanos_per_byte.to_bits(), Ordering::Release);
    }

    /// The rate in force; `None` when unlimited.
    pub fn rate(&self) -> Option<Rate> {
        let nanos_per_byte = self.nanos_per_byte();
        (nanos_per_byte > 0.0).then(|| Rate(1e9 / nanos_per_byte))
    }

    /// How many admissions were refused so far.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }

    /// The bytes admitted at a rate since the last call, and starts the count afresh. An
    /// unlimited pacer counts nothing.
    pub fn take_admitted(&self) -> u64 {
        self.admitted.swap(0, Ordering::Relaxed)
    }

    fn nanos_per_byte(&self) -> f64 {
        f64::from_bits(self.nanos_per_byte.load(Ordering::Acquire))
    }

    /// Admits `bytes` at `now`, or says when to try again.
    pub fn try_admit(&self, bytes: u64, now: Instant) -> Result<(), Instant> {
        let nanos_per_byte = self.nanos_per_byte();
        if nanos_per_byte == 0.0 {
            return Ok(());
        }
        let now_nanos = self.nanos_at(now);
        let cost = (bytes as f64 * nanos_per_byte) as u64;
        let burst = self.burst_nanos.load(Ordering::Relaxed);
        let admitted = self.advance(|tat| {
            let start = tat.max(now_nanos);
            let next = start + cost;
            // Never later than `start`: an admission larger than the burst (a chunk read before
            // the rate fell) passes once the pacer is idle.
            let earliest = next.saturating_sub(burst).min(start);
            if earliest > now_nanos {
                return Err(self.epoch + Duration::from_nanos(earliest));
            }
            Ok(next)
        });
        match admitted {
            Ok(_) => self.admitted.fetch_add(bytes, Ordering::Relaxed),
            Err(_) => self.refusals.fetch_add(1, Ordering::Relaxed),
        };
        admitted.map(|_| ())
    }

    /// Counts `bytes` that went out without asking (the ACKs of the other direction's data, a
    /// remote sender's initial window): later admissions wait for them, but they are never
    /// refused.
    pub fn charge(&self, bytes: u64, now: Instant) {
        if self.nanos_per_byte() == 0.0 {
            return;
        }
        let now_nanos = self.nanos_at(now);
        let cost = self.cost_of(bytes);
        let Ok(_) = self.advance(|tat| Ok::<_, Infallible>(tat.max(now_nanos) + cost));
    }

    /// Reserves the next slot for one unit of `cost` (a connection, for connect pacing) in
    /// arrival order, unless it would come later than `deadline`. Returns when to proceed.
    pub fn reserve(&self, cost_bytes: u64, now: Instant, deadline: Instant) -> Option<Instant> {
        let now_nanos = self.nanos_at(now);
        let deadline_nanos = self.nanos_at(deadline);
        let cost = self.cost_of(cost_bytes);
        let burst = self.burst_nanos.load(Ordering::Relaxed);
        let proceed_at = |next: u64| next.saturating_sub(burst).max(now_nanos);
        let next = self
            .advance(|tat| {
                let next = tat.max(now_nanos) + cost;
                if proceed_at(next) > deadline_nanos {
                    return Err(());
                }
                Ok(next)
            })
            .ok()?;
        Some(self.epoch + Duration::from_nanos(proceed_at(next)))
    }

    /// Moves the TAT from its current value to `step(current)` in one compare-and-swap, unless
    /// `step` refuses; returns the new TAT. Every admission and charge goes through here.
    fn advance<R>(&self, mut step: impl FnMut(u64) -> Result<u64, R>) -> Result<u64, R> {
        let mut current = self.tat.load(Ordering::Acquire);
        loop {
            let next = step(current)?;
            match self
                .tat
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(next),
                Err(actual) => current = actual,
            }
        }
    }

    fn nanos_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn cost_of(&self, bytes: u64) -> u64 {
        (bytes as f64 * self.nanos_per_byte()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_bytes_count_the_headers_of_each_segment() {
        assert_eq!(on_the_wire(0), 0);
        assert_eq!(on_the_wire(1), 67);
        assert_eq!(on_the_wire(1448), 1514);
        assert_eq!(on_the_wire(1449), 1449 + 132);
    }

    #[test]
    fn acks_cost_one_header_per_two_segments() {
        assert_eq!(acks_on_the_wire(0), 0);
        assert_eq!(acks_on_the_wire(1), 66);
        assert_eq!(acks_on_the_wire(2 * 1448), 66);
        assert_eq!(acks_on_the_wire(2 * 1448 + 1), 132);
    }

    #[test]
    fn charged_bytes_delay_later_admissions() {
        let start = Instant::now();
        let pacer = Pacer::new(Rate(1000.0), 1000, start);
        pacer.charge(1500, start);
        assert!(
            pacer.try_admit(1000, start).is_err(),
            "1.5 s of the rate is charged"
        );
        assert!(pacer
            .try_admit(1000, start + Duration::from_millis(1500))
            .is_ok());
    }

    #[test]
    fn rates_parse_in_bits_and_bytes() {
        assert_eq!(Rate::parse("19mbit").unwrap().0, 19e6 / 8.0);
        assert_eq!(Rate::parse("2.5MB").unwrap().0, 2.5e6);
        assert_eq!(Rate::parse("500KiB").unwrap().0, 512_000.0);
        assert_eq!(Rate::parse("1gbit/s").unwrap().0, 1.25e8);
        assert_eq!(Rate::parse("4000").unwrap().0, 4000.0);
        assert_eq!(
            Rate::parse("64k").unwrap().0,
            64e3,
            "k is SI, as in every unit"
        );
        for bad in ["", "fast", "10 parsecs", "0mbit", "-1MB", "1b"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_long_run_rate_holds_and_bursts_stay_small() {
        let start = Instant::now();
        let rate = Rate(1_000_000.0); // 1 MB/s
        let pacer = Pacer::new(rate, 16_384, start);
        // A greedy sender polls every 100 us for 2 s with 4 KiB chunks.
        let mut sent = 0u64;
        let mut now = start;
        let mut most_in_one_ms = 0u64;
        let mut this_ms = 0u64;
        let mut ms = 0;
        while now < start + Duration::from_secs(2) {
            while pacer.try_admit(4096, now).is_ok() {
                sent += 4096;
                this_ms += 4096;
            }
            now += Duration::from_micros(100);
            let elapsed_ms = now.duration_since(start).as_millis();
            if elapsed_ms != ms {
                most_in_one_ms = most_in_one_ms.max(this_ms);
                this_ms = 0;
                ms = elapsed_ms;
            }
        }
        // 2 s at 1 MB/s plus at most one burst.
        assert!(sent <= 2_000_000 + 16_384, "sent {sent}");
        assert!(sent >= 2_000_000 - 8192, "sent {sent}");
        assert!(
            most_in_one_ms <= 16_384 + 4096,
            "burst of {most_in_one_ms} in one ms"
        );
    }

    #[test]
    fn the_rate_can_change_and_be_lifted() {
        let start = Instant::now();
        let pacer = Pacer::unlimited(start);
        assert_eq!(pacer.rate(), None);
        for _ in 0..100 {
            assert!(pacer.try_admit(1 << 20, start).is_ok(), "unlimited");
        }
        pacer.set_rate(Some(Rate(1000.0)), 1000);
        assert_eq!(pacer.rate(), Some(Rate(1000.0)));
        assert!(pacer.try_admit(1000, start).is_ok());
        assert!(pacer.try_admit(1000, start).is_err());
        assert_eq!(pacer.refusals(), 1);
        pacer.set_rate(None, 0);
        assert!(pacer.try_admit(1000, start).is_ok(), "lifted");
    }

    #[test]
    fn admitted_bytes_are_counted_at_a_rate_and_taken_once() {
        let start = Instant::now();
        let pacer = Pacer::unlimited(start);
        assert!(pacer.try_admit(5000, start).is_ok());
        assert_eq!(
            pacer.take_admitted(),
            0,
            "an unlimited pacer counts nothing"
        );
        pacer.set_rate(Some(Rate(1000.0)), 1000);
        assert!(pacer.try_admit(600, start).is_ok());
        assert!(pacer.try_admit(400, start).is_ok());
        assert!(
            pacer.try_admit(300, start).is_err(),
            "refused bytes are not counted"
        );
        // Charged bytes went out without an admission.
        pacer.charge(500, start);
        assert_eq!(pacer.take_admitted(), 1000);
        assert_eq!(pacer.take_admitted(), 0, "the count starts afresh");
    }

    #[test]
    fn an_admission_larger_than_the_burst_passes_when_idle() {
        let start = Instant::now();
        let pacer = Pacer::new(Rate(1000.0), 100, start);
        assert!(pacer.try_admit(5000, start).is_ok(), "idle: passes");
        let retry = pacer.try_admit(5000, start).unwrap_err();
        assert_eq!(retry.duration_since(start), Duration::from_secs(5));
        assert!(pacer.try_admit(5000, retry).is_ok());
    }

    #[test]
    fn a_refusal_says_when_to_retry() {
        let start = Instant::now();
        let pacer = Pacer::new(Rate(1000.0), 1000, start);
        assert!(pacer.try_admit(1000, start).is_ok());
        let retry = pacer.try_admit(500, start).unwrap_err();
        assert_eq!(retry.duration_since(start), Duration::from_millis(500));
        assert!(pacer.try_admit(500, retry).is_ok());
    }

    #[test]
    fn reservations_are_spaced_in_arrival_order_and_bounded() {
        let start = Instant::now();
        // 10 connections per second with a burst of 2.
        let pacer = Pacer::new(Rate(10.0), 2, start);
        let deadline = start + Duration::from_millis(950);
        let slots: Vec<_> = (0..12).map(|_| pacer.reserve(1, start, deadline)).collect();
        assert_eq!(slots[0], Some(start));
        assert_eq!(slots[1], Some(start));
        assert_eq!(slots[2], Some(start + Duration::from_millis(100)));
        let granted: Vec<Instant> = slots.iter().flatten().copied().collect();
        assert!(granted.windows(2).all(|pair| pair[0] <= pair[1]));
        assert_eq!(slots[11], None, "beyond the deadline");
    }
}
