//! Handing the CPU to other threads after a bounded burst of work.
//!
//! fyntr runs on the same cores as the programs whose connections it carries. A worker that
//! always finds more to do (a handful of chatty tunnels, or bulk relays) never blocks, and the
//! kernel then lets it run until its time slice ends at a scheduler tick (4 ms at `HZ=250`)
//! while the client and server threads that would produce and consume its next bytes wait on
//! the same core. On the load benchmark's 1 KiB ping-pong (10 tunnels, 2 cores) that makes the
//! p99 round trip one tick, 4.0 ms, against 52 us at the median, when workers never yield.
//!
//! [`share_cpu`] is called after each relayed chunk. Once [`BURST`] has passed since the worker
//! last yielded, it calls `sched_yield` if the worker moved less than [`BULK_BYTES`] in that
//! time: on Linux's EEVDF scheduler that moves the worker behind the threads already waiting for
//! its core, and returns at once when none are. A worker relaying small messages is
//! latency-bound, and its peers' next messages are what it waits for. A worker moving bulk data
//! is throughput-bound and keeps its core: yielding there too costs the load benchmark's 100
//! uploads a tenth of their aggregate rate and some fairness (Jain's index 0.965), for no gain.
//! The burst is wall time since the last yield, not CPU time since the worker last slept
//! (neither runtime tells when its thread blocks), so a worker that sleeps a lot yields at most
//! once per wake-up that finds work: one cheap system call per [`BURST`] at most.

use std::{cell::Cell, time::Duration, time::Instant};

/// How long a worker may keep the CPU before it lets waiting threads run. Short next to a
/// scheduler tick; long next to a relayed message (a few microseconds), so the system calls
/// it costs stay under one per 40 messages. 100 us and 200 us gave the same ping-pong p99 on
/// the load benchmark; 1 ms left a third of the tail (p99 1.1-1.4 ms).
pub const BURST: Duration = Duration::from_micros(200);

/// A worker that moved at least this much in one [`BURST`] (1.3 GB/s, one default spliced
/// chunk) is moving bulk data and does not yield. Small messages on a busy worker move about
/// 10 KiB per burst.
pub const BULK_BYTES: usize = 256 * 1024;

/// This worker's current burst.
#[derive(Clone, Copy)]
struct Burst {
    /// When the burst began: the last yield, or the first chunk.
    since: Instant,
    /// Bytes relayed since then.
    moved: usize,
}

thread_local! {
    static BURST_STATE: Cell<Option<Burst>> = const { Cell::new(None) };
}

/// Records that this worker relayed `bytes`, and lets other runnable threads on its core go
/// first if it has had the CPU for [`BURST`] while moving less than [`BULK_BYTES`]. `now` is a
/// recent reading of the clock, which the caller has at hand (the relay stamps every chunk), so
/// the common case reads no clock and makes no system call.
pub fn share_cpu(now: Instant, bytes: usize) {
    BURST_STATE.with(|state| {
        let burst = match state.get() {
            None => Burst {
                since: now,
                moved: bytes,
            },
            Some(burst) if now.saturating_duration_since(burst.since) < BURST => Burst {
                moved: burst.moved.saturating_add(bytes),
                ..burst
            },
            Some(burst) if burst.moved.saturating_add(bytes) < BULK_BYTES => {
                std::thread::yield_now();
                Burst {
                    since: Instant::now(),
                    moved: 0,
                }
            }
            Some(_) => Burst {
                since: now,
                moved: 0,
            },
        };
        state.set(Some(burst));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn since() -> Instant {
        BURST_STATE.with(Cell::get).expect("a burst").since
    }

    #[test]
    fn a_worker_moving_small_messages_yields_once_per_burst() {
        let start = Instant::now();
        share_cpu(start, 1024);
        assert_eq!(since(), start, "the first chunk starts the burst");
        share_cpu(start + BURST / 2, 1024);
        assert_eq!(since(), start, "within the burst: no yield");
        share_cpu(start + BURST * 2, 1024);
        assert!(since() > start, "a yield restarts the burst from the clock");
    }

    #[test]
    fn a_worker_moving_bulk_data_keeps_its_core() {
        let start = Instant::now();
        share_cpu(start, BULK_BYTES / 2);
        share_cpu(start + BURST / 2, BULK_BYTES / 2);
        let end = start + BURST * 2;
        share_cpu(end, 1);
        assert_eq!(
            since(),
            end,
            "no yield: the next burst starts at the caller's clock"
        );
        assert_eq!(BURST_STATE.with(Cell::get).expect("a burst").moved, 0);
    }
}
