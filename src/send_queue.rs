//! How much each bulk socket may hold in the kernel: fitted to its path and to how many bulk
//! flows its worker carries.
//!
//! Whatever a socket queues beyond what its path needs is out of the scheduler's reach. On
//! loopback the kernel autotunes each send buffer to 4 MiB and each receiver's buffer to as much
//! as 32 MiB; with 100 spliced uploads into one receiver that could not keep up, the receiver's
//! windows decided who went: tunnels whose windows had grown first took everything, and a
//! tenth of them got 2 % of the mean (load benchmark, `upload_100`). With each socket's queue
//! bounded, the bytes wait in fyntr, where DRR takes them in turn.
//!
//! The bound never holds a flow below [`PATH_RATE`]: a socket keeps room for that rate times
//! its round trip, and a worker's one or two bulk flows keep the kernel's autotuning (and, when
//! not paced, are left alone altogether).

use std::{cell::Cell, time::Duration};

/// The fastest path a flow is sized for: a socket keeps room for this rate times its round
/// trip (10 Gbit/s).
const PATH_RATE: f64 = 10e9 / 8.0;

/// What one worker's bulk sockets may hold in the kernel together, shared out equally (but
/// never below [`MIN_SEND_QUEUE`] each). Two bulk flows or fewer keep the kernel's autotuning.
const WORKER_SEND_QUEUES: usize = 8 << 20;

/// The least send queue a bulk socket is left: one default spliced chunk.
pub(crate) const MIN_SEND_QUEUE: usize = 256 * 1024;

/// Unsent bytes a bulk socket may hold (`TCP_NOTSENT_LOWAT`) when its direction is not paced:
/// one spliced chunk. What has been sent is bounded by the send buffer; this bounds what waits
/// behind it.
pub(crate) const UNSENT: usize = 256 * 1024;

/// Unsent bytes a socket of a paced direction may hold: about this long at the rate. The pacer
/// spaces what enters the socket, but what TCP cannot send at once (its window full, or after a
/// loss) waits there and leaves later in one burst at the speed of the first link: 256 KiB of
/// it overflowed the testbed router's 32 KiB queue. Bounded to a few paced chunks, such data
/// waits in fyntr, behind the pacer.
const PACED_UNSENT_TIME: Duration = Duration::from_millis(2);

/// Unsent bytes an upload may hold in its socket while `auto` watches its direction over a real
/// path, from the tunnel's first byte. With `auto` still off, a burst of new tunnels hands the
/// kernel whole requests at once (30 tunnels of 128 KiB filled the testbed's uplink for 2.7 s
/// after the first cut, the sockets sending what they held at the speed of the link). At
/// this bound, 30 sockets hold under 0.5 MB, and a socket is refilled as soon as it falls
/// below half of it: on the testbed's unshaped link (several Gbit/s) a burst took as long as
/// with 256 KiB.
pub(crate) const AUTO_UNSENT: usize = 16 * 1024;

/// The unsent bound of an upload that `auto` watches, with its direction paced at
/// `bytes_per_second` or not yet (`None`). Once paced, the bound of a fixed rate: with thirty
/// uploads at 16 KiB each, the sockets held 0.5 MB the pacer had let through, which left at
/// the speed of the first link whenever their windows opened after a loss (testbed burst,
/// router trace: 20 Mbit/s of new data in a quarter second on a 20 Mbit/s uplink while the
/// rate was 14).
pub(crate) fn auto_unsent_bound(bytes_per_second: Option<f64>) -> usize {
    bytes_per_second.map_or(AUTO_UNSENT, |rate| {
        unsent_bound(Some(rate)).min(AUTO_UNSENT)
    })
}

/// The unsent bound for a direction paced at `bytes_per_second`, or not paced (`None`).
pub(crate) fn unsent_bound(bytes_per_second: Option<f64>) -> usize {
    bytes_per_second.map_or(UNSENT, |rate| {
        ((rate * PACED_UNSENT_TIME.as_secs_f64()) as usize).clamp(4 * 1024, UNSENT)
    })
}

/// A worker's count of bulk flows (directions that have read a full chunk and not yet ended).
#[derive(Default)]
pub(crate) struct BulkFlows(Cell<usize>);

impl BulkFlows {
    fn count(&self) -> usize {
        self.0.get()
    }
}

/// The send-buffer size for a socket with round trip `round_trip` among `bulk_flows` bulk
/// flows: `None` to leave the kernel's autotuning (which stops at `autotune_limit`).
pub(crate) fn send_buffer_for(
    round_trip: Duration,
    bulk_flows: usize,
    autotune_limit: usize,
) -> Option<usize> {
    let share = WORKER_SEND_QUEUES / bulk_flows.max(1);
    let path = (PATH_RATE * round_trip.as_secs_f64()) as usize;
    let needed = share.max(path).max(MIN_SEND_QUEUE);
    (needed < autotune_limit).then_some(needed)
}

/// One relay direction's fit of its destination socket. Registers as a bulk flow of its
/// worker on the first full chunk and leaves when dropped.
pub(crate) struct SendQueueFit<'a> {
    flows: &'a BulkFlows,
    /// The bound on unsent bytes (see [`unsent_bound`]).
    unsent: usize,
    /// Whether this direction counts among the worker's bulk flows.
    registered: bool,
    /// The destination's path round trip, read at the first fit.
    round_trip: Duration,
    /// The send buffer last set; `None` while the kernel's autotuning runs.
    applied: Option<usize>,
    /// Whether the unsent bound is already in force on the socket.
    unsent_set: bool,
}

impl<'a> SendQueueFit<'a> {
    pub(crate) fn new(flows: &'a BulkFlows, unsent: usize) -> Self {
        Self {
            flows,
            unsent,
            registered: false,
            round_trip: Duration::ZERO,
            applied: None,
            unsent_set: false,
        }
    }

    /// A fit whose unsent bound holds on `socket` from now, before any bulk chunk (see
    /// [`AUTO_UNSENT`]); the first bulk chunk then only sizes the send buffer.
    pub(crate) fn bounded_from_start<S: fyntr_platform::Stream>(
        flows: &'a BulkFlows,
        unsent: usize,
        socket: &S,
    ) -> Self {
        let mut fit = Self::new(flows, unsent);
        match socket.bound_send_queue(unsent, None) {
            Ok(()) => fit.unsent_set = true,
            Err(error) => tracing::debug!(%error, "could not bound a send queue"),
        }
        fit
    }

    /// Moves the unsent bound of a socket bounded from its start to `unsent` (an upload that
    /// `auto` watches: [`AUTO_UNSENT`] while off, [`unsent_bound`] of the rate while paced).
    /// Costs a system call only when the bound moves by more than an eighth.
    pub(crate) fn follow_unsent<S: fyntr_platform::Stream>(&mut self, unsent: usize, socket: &S) {
        if !self.unsent_set || self.unsent.abs_diff(unsent) <= self.unsent / 8 {
            return;
        }
        self.unsent = unsent;
        if let Err(error) = socket.bound_send_queue(unsent, None) {
            tracing::debug!(%error, "could not bound a send queue");
        }
    }

    /// Called after each full chunk: fits `socket` on the first one, and again whenever its
    /// share of the worker's budget has moved by more than an eighth (a flow fitted while alone
    /// gives way when others arrive, and gets its room back when they leave). Costs a system
    /// call only when the share moves.
    pub(crate) fn on_bulk_chunk<S: fyntr_platform::Stream>(&mut self, socket: &S) {
        let first = !self.registered;
        if first {
            self.registered = true;
            self.flows.0.set(self.flows.count() + 1);
            // The path's round trip, not what the queues on it add at this moment: a flow that
            // started while a receiver lagged would otherwise keep a buffer sized to the lag.
            self.round_trip = socket
                .tcp_stats()
                .map_or(Duration::ZERO, |stats| stats.base_round_trip());
        }
        let limit = fyntr_platform::socket::autotuned_send_buffer_limit();
        let wanted = match send_buffer_for(self.round_trip, self.flows.count(), limit) {
            Some(bytes) => Some(bytes),
            // Autotuning cannot be turned back on: a capped socket gets the most it would give.
            None if self.applied.is_some() => Some(limit),
            None => None,
        };
        let moved = match (self.applied, wanted) {
            (Some(applied), Some(wanted)) => applied.abs_diff(wanted) > applied / 8,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        // An unpaced flow that keeps autotuning has nothing to share its socket with: it is
        // left alone (a lone bulk download with the unsent bound ran 5 % slower).
        let leave_alone = self.unsent == UNSENT && wanted.is_none();
        let bound_pending = first && !self.unsent_set && !leave_alone;
        if !moved && !bound_pending {
            return;
        }
        let buffer = if moved { wanted } else { None };
        match socket.bound_send_queue(self.unsent, buffer) {
            Ok(()) => self.unsent_set = true,
            Err(error) => tracing::debug!(%error, "could not bound a send queue"),
        }
        if buffer.is_some() {
            self.applied = buffer;
        }
    }
}

impl Drop for SendQueueFit<'_> {
    fn drop(&mut self) {
        if self.registered {
            self.flows.0.set(self.flows.count() - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 4 << 20;

    #[test]
    fn a_lone_or_second_bulk_flow_keeps_autotuning() {
        let loopback = Duration::from_micros(20);
        assert_eq!(send_buffer_for(loopback, 1, LIMIT), None);
        assert_eq!(send_buffer_for(loopback, 2, LIMIT), None);
    }

    #[test]
    fn many_loopback_flows_share_the_worker_budget_down_to_the_floor() {
        let loopback = Duration::from_micros(20);
        assert_eq!(send_buffer_for(loopback, 4, LIMIT), Some(2 << 20));
        assert_eq!(send_buffer_for(loopback, 50, LIMIT), Some(MIN_SEND_QUEUE));
    }

    #[test]
    fn a_watched_upload_keeps_16_kib_unsent_until_paced_then_the_paced_bound() {
        assert_eq!(auto_unsent_bound(None), AUTO_UNSENT);
        assert_eq!(auto_unsent_bound(Some(19e6 / 8.0)), 4750);
        assert_eq!(auto_unsent_bound(Some(1e3)), 4 * 1024);
        assert_eq!(auto_unsent_bound(Some(1e12)), AUTO_UNSENT);
    }

    #[test]
    fn paced_directions_keep_a_few_milliseconds_unsent() {
        assert_eq!(unsent_bound(None), UNSENT);
        // 19 Mbit/s: 2 ms is 4.75 KB.
        assert_eq!(unsent_bound(Some(19e6 / 8.0)), 4750);
        assert_eq!(unsent_bound(Some(1e3)), 4 * 1024);
        assert_eq!(unsent_bound(Some(1e12)), UNSENT);
    }

    #[test]
    fn a_long_path_keeps_room_for_the_path_rate() {
        // 1 ms at 10 Gbit/s is 1.25 MB; 10 ms is more than autotuning gives anyway.
        let lan = send_buffer_for(Duration::from_millis(1), 50, LIMIT).unwrap();
        assert_eq!(lan, 1_250_000);
        assert_eq!(send_buffer_for(Duration::from_millis(10), 50, LIMIT), None);
    }
}
