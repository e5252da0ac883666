//! Handing the CPU to other threads after a bounded burst of work.
//!
//! fyntr runs on the same cores as the programs whose connections it carries. A worker that
//! always finds more to do (a handful of chatty tunnels, or bulk relays) never blocks, and the
//! kernel then lets it run until its time slice ends at a scheduler tick (4 ms at `HZ=250`)
//! while the client and server threads that would produce and consume its next bytes wait on
//! the same core. On the load benchmark's 1 KiB ping-pong (10 tunnels, 2 cores) that made the
//! p99 round trip one tick, 4.0 ms, against 52 us at the median.
//!
//! [`share_cpu`] is called after each relayed chunk: once the worker has run for [`BURST`]
//! since it last did so, it calls `sched_yield`, which on Linux's EEVDF scheduler moves the
//! worker behind the threads already waiting for that core, and returns at once when none are.
//! The burst is measured in wall time since the last yield, not CPU time since the worker last
//! slept (neither runtime tells when its thread blocks), so a worker that sleeps a lot yields
//! at most once per wake-up that finds work: one cheap system call per [`BURST`] at most.

use std::{cell::Cell, time::Duration, time::Instant};

/// How long a worker may keep the CPU before it lets waiting threads run. Short next to a
/// scheduler tick; long next to a relayed message (a few microseconds), so the system calls
/// it costs stay under one per 40 messages. 100 us and 200 us gave the same ping-pong p99 on
/// the load benchmark; 1 ms left a third of the tail (p99 1.1-1.4 ms).
pub const BURST: Duration = Duration::from_micros(200);

thread_local! {
    /// When this thread last yielded (or first asked).
    static LAST_YIELD: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Lets other runnable threads on this core go first if this worker has had the CPU for
/// [`BURST`] since it last did. `now` is a recent reading of the clock, which the caller
/// usually has at hand (the relay stamps every chunk), so the common case reads no clock.
pub fn share_cpu(now: Instant) {
    LAST_YIELD.with(|last| match last.get() {
        Some(since) if now.saturating_duration_since(since) < BURST => {}
        Some(_) => {
            std::thread::yield_now();
            last.set(Some(Instant::now()));
        }
        None => last.set(Some(now)),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_once_per_burst_and_restarts_the_burst_after_yielding() {
        let start = Instant::now();
        share_cpu(start);
        let first = LAST_YIELD.with(Cell::get);
        assert_eq!(first, Some(start), "the first call starts the burst");
        share_cpu(start + BURST / 2);
        assert_eq!(
            LAST_YIELD.with(Cell::get),
            first,
            "within the burst: no yield"
        );
        share_cpu(start + BURST * 2);
        let after = LAST_YIELD.with(Cell::get).expect("set");
        assert!(after > start, "a yield restarts the burst from the clock");
    }
}
