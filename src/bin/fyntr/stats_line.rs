//! The live stats line and the periodic summary.
//!
//! On a terminal, one line at the bottom of standard error is rewritten in place once a
//! second; log lines clear it before they are written (see [`LogWriter`]) and it is drawn
//! again under them. Elsewhere (a pipe, a file, journald) no carriage returns are written: an
//! info line sums up every `--stats-interval` seconds while there is traffic.

use std::{
    io::{IsTerminal, Write},
    sync::Mutex,
    time::{Duration, Instant},
};

use fyntr::metrics::{Ending, Observer, Snapshot};
use tracing::info;

/// Whether the stats line is on the screen now; held while writing to standard error, so a
/// log line and the stats line are never written at once.
static SHOWN: Mutex<bool> = Mutex::new(false);

/// How often the terminal line is redrawn.
const REDRAW: Duration = Duration::from_secs(1);

/// Starts the stats thread: the live line when standard error is a terminal, the summary every
/// `interval` otherwise. `Duration::ZERO` turns both off.
pub(crate) fn start(observer: Observer, interval: Duration) -> std::io::Result<()> {
    if interval.is_zero() {
        return Ok(());
    }
    let terminal = std::io::stderr().is_terminal();
    std::thread::Builder::new()
        .name("fyntr-stats".into())
        .spawn(move || {
            if terminal {
                live_line(&observer)
            } else {
                summaries(&observer, interval)
            }
        })?;
    Ok(())
}

fn live_line(observer: &Observer) {
    let mut last = (Instant::now(), observer.snapshot());
    loop {
        std::thread::sleep(REDRAW);
        let now = (Instant::now(), observer.snapshot());
        let line = describe(&last, &now);
        last = now;
        let mut shown = SHOWN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r\x1b[2K{line}");
        let _ = stderr.flush();
        *shown = true;
    }
}

fn summaries(observer: &Observer, interval: Duration) {
    let mut last = (Instant::now(), observer.snapshot());
    loop {
        std::thread::sleep(interval);
        let now = (Instant::now(), observer.snapshot());
        let moved = now.1.total_bytes() != last.1.total_bytes()
            || now.1.active_connections > 0
            || now.1.total_refused() != last.1.total_refused();
        if moved {
            let [up, down] = rates(&last, &now);
            let [up_total, down_total] = now.1.total_bytes();
            info!(
                active = now.1.active_connections,
                refused = now.1.total_refused(),
                errors = now.1.total_ended(Ending::Error),
                up_mbit = format!("{:.2}", up * 8.0 / 1e6),
                down_mbit = format!("{:.2}", down * 8.0 / 1e6),
                up_bytes = up_total,
                down_bytes = down_total,
                "traffic"
            );
        }
        last = now;
    }
}

/// Bytes per second each way between two snapshots.
fn rates(before: &(Instant, Snapshot), after: &(Instant, Snapshot)) -> [f64; 2] {
    let seconds = after.0.duration_since(before.0).as_secs_f64().max(1e-3);
    let [up_before, down_before] = before.1.total_bytes();
    let [up, down] = after.1.total_bytes();
    [
        up.saturating_sub(up_before) as f64 / seconds,
        down.saturating_sub(down_before) as f64 / seconds,
    ]
}

/// The terminal line: active, refused, errors, throughput, totals.
fn describe(before: &(Instant, Snapshot), after: &(Instant, Snapshot)) -> String {
    let [up, down] = rates(before, after);
    let [up_total, down_total] = after.1.total_bytes();
    format!(
        "fyntr: {} active | {} refused | {} errors | up {} down {} | total up {} down {}",
        after.1.active_connections,
        after.1.total_refused(),
        after.1.total_ended(Ending::Error),
        per_second(up),
        per_second(down),
        bytes(up_total),
        bytes(down_total),
    )
}

fn per_second(bytes_per_second: f64) -> String {
    format!("{:.1} Mbit/s", bytes_per_second * 8.0 / 1e6)
}

fn bytes(count: u64) -> String {
    match count {
        0..1_000_000 => format!("{:.1} kB", count as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", count as f64 / 1e6),
        _ => format!("{:.2} GB", count as f64 / 1e9),
    }
}

/// Standard error for log lines: clears the stats line first when it is shown.
pub(crate) struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> Self::Writer {
        LogLine
    }
}

/// One log line on its way to standard error.
pub(crate) struct LogLine;

impl Write for LogLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut shown = SHOWN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut stderr = std::io::stderr().lock();
        if *shown {
            stderr.write_all(b"\r\x1b[2K")?;
            *shown = false;
        }
        stderr.write_all(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
