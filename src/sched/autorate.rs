//! Finding a direction's bottleneck rate from what fyntr observes, with no configuration
//! (`--upload-rate auto`, the default).
//!
//! Sans-io: every tick (about 100 ms) the caller sums what its busy upstream sockets reported
//! ([`Sample`]: bytes delivered, the queueing delay of the path, the share of bytes sent again,
//! whether the pacer held anything back) and [`AutoRate::on_tick`] answers with the rate to pace
//! the direction's total at, or `None` for no pacing.
//!
//! - **Starting**: a burst on a line idle for a few seconds is paced from its first byte
//!   ([`AutoRate::start`], which the caller calls as the burst's first path opens): from
//!   [`START_RATE`], growing by a quarter a tick while the path stays clear, until its first
//!   queue starts pacing as below, or, past [`START_CAP`] with none, the line counts as fast
//!   and is left unpaced for [`AutoRateConfig::off_after`].
//! - **Off** otherwise until fyntr's own traffic builds a queue: pacing costs nothing where
//!   nothing is congested. A queue means the queueing delay over [`AutoRateConfig::bloat`] in
//!   3 of the last 6 ticks (the rule of cake-autorate), or more than 2 % of the bytes sent
//!   again (BBR's loss threshold), while at least [`AutoRateConfig::min_load`] moves.
//! - **Paced**: a cut sets the rate just below what was delivered (`0.95` of it at the bloat
//!   threshold, down to `0.85` at three times the threshold), at most once per
//!   [`AutoRateConfig::refractory`] and only while the queue is not already draining (nor in
//!   the first tick of a queue after a clear one, unless it is deep or drops data). After a
//!   cut the rate holds for [`AutoRateConfig::hold`]; then, while the pacer is the limit (it
//!   holds bytes back) and the path keeps up, the rate grows by a step that doubles every
//!   [`AutoRateConfig::step_every`] of growth without a queue, so a link that got faster is
//!   found again within seconds; the next queue cuts it back.
//! - **A stall** (nothing delivered: radio silence, a Wi-Fi roam, or a pause in the traffic)
//!   is not congestion: the delay that the stalled bytes report once they arrive is ignored
//!   for [`AutoRateConfig::stall_grace`]. Nothing delivered for longer is the line idle: the
//!   rate is kept (at most where the path last queued) for the next burst, which it paces
//!   from the first byte, and that burst's queue is read from its first tick.
//! - **Contended**: when cut after cut leaves the queue as full, or the rate has been held at
//!   [`AutoRateConfig::floor`] (or, if more, [`AutoRateConfig::sender_floor`] for each remote
//!   sender the rate is shared among) for 2 s with more to send, the queue is someone else's (a
//!   loss-based flow that fills any buffer). Backing off further would hand it the whole link,
//!   so pacing stops for [`AutoRateConfig::contended_pause`] (TCP then takes its share), then
//!   tries again from what moves then (or goes off if almost nothing does); a queue back at
//!   once after that goes back to the pause after two cuts.
//! - Back to **off** after [`AutoRateConfig::off_after`] without a queue, or after [`SILENCE`]
//!   of traffic with no report of the delay.
//!
//! The delay is measured from the round trips of fyntr's own sockets against their base round
//! trip, so a queue in either direction of the path raises it: when both directions carry bulk
//! data, both may be cut for a queue that only one of them built. What tells them apart, first:
//! the directions take turns to probe past the rate at which their path last queued
//! ([`AutoRate::probing`]), so a queue that shows while only one of them probes is that one's.
//! Then: a direction that moves less than half of what the opposite one moves leaves the queue
//! to it (and grows by the least step meanwhile, blind to a queue of its own); a queue that
//! drops only one direction's data (uploads' resends, downloads' out-of-order arrivals) is
//! that direction's, which decides first in the tick and does not wait for the other's cut;
//! and a queue does not count as someone else's while the opposite direction may still drain
//! it with cuts of its own.

use std::time::{Duration, Instant};

use super::pacer::{Rate, SEGMENT_HEADERS, SEGMENT_PAYLOAD};

/// What one direction's sockets reported over one tick.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// When the tick ended.
    pub now: Instant,
    /// How long the tick lasted.
    pub interval: Duration,
    /// Payload bytes the far ends acknowledged (upload) or fyntr received (download).
    pub delivered: u64,
    /// Bytes on the wire of the ACKs this direction carried for the opposite one's delivery:
    /// the pacer counts them against this direction's rate.
    pub acks: u64,
    /// The path's queueing delay (the median over the busy sockets of their round trip since
    /// the last reading over their base round trip), if any socket took a sample.
    pub queue_delay: Option<Duration>,
    /// The share of bytes sent that were sent again, if known.
    pub loss: Option<f64>,
    /// Whether the pacer held bytes back during the tick (fyntr had more to send than the rate).
    pub backlogged: bool,
    /// What the opposite direction delivers, in bytes on the wire per second (its
    /// [`AutoRate::delivery`]); zero when it is not observed.
    pub opposite_load: f64,
    /// When the opposite direction's controller last cut its rate, if ever. Both directions
    /// read one delay (a round trip crosses both queues), so a queue that does not drain
    /// while the opposite direction cuts too is not a sign of a flow outside fyntr.
    pub opposite_cut: Option<Instant>,
    /// The opposite direction's cuts in a row that left the queue as it was.
    pub opposite_cuts_in_a_row: u32,
    /// Whether the opposite direction stopped pacing for a queue that is not fyntr's.
    pub opposite_contended: bool,
    /// Whether the opposite direction is paced: only then does it take turns to probe.
    pub opposite_paced: bool,
    /// Whether the opposite direction is starting ([`Mode::Starting`]): paced, but with no
    /// rate of its path known yet.
    pub opposite_starting: bool,
    /// Whether the opposite direction's rate is past the one at which its path last queued
    /// ([`AutoRate::probing`]).
    pub opposite_probing: bool,
    /// Whether the opposite direction's probe keeps this one at its ceiling
    /// ([`AutoRate::holds_turn`]).
    pub opposite_holds_turn: bool,
    /// Since when the opposite direction has waited for its turn to probe, if it waits
    /// ([`AutoRate::waiting_since`]).
    pub opposite_waiting_since: Option<Instant>,
    /// How far past its ceiling the opposite direction probed when it last cut, as a ratio
    /// of the rates ([`AutoRate::probe_at_cut`]); zero if that cut ended no probe.
    pub opposite_probe_at_cut: f64,
    /// Whether this direction's own link dropped some of its data during the tick, if known.
    pub dropped: Option<bool>,
    /// Whether the opposite direction's link dropped some of its data lately
    /// ([`AutoRate::dropped_lately`]).
    pub opposite_dropped: bool,
    /// Remote senders that share the rate, each held back only by the window fyntr offers it
    /// (downloads that moved data lately); zero where fyntr's own sockets send (uploads).
    pub held_senders: u32,
}

/// The controller's constants.
#[derive(Clone, Copy, Debug)]
pub struct AutoRateConfig {
    /// Queueing delay (over the jitter floor) that counts as a queue of fyntr's making: a
    /// little over CoDel's 5 ms target (RFC 8289), since the smoothed round trip of a busy
    /// path wobbles by a few milliseconds; a 32 KiB router buffer at 20 Mbit/s holds 13 ms.
    /// At 5 ms the burst's probe p99 came to 12.9 and 13.2 ms beside direct's 25, but the
    /// burst took 1.44x and 1.46x as long as direct (7 ms: 15.4 ms, 1.07x; testbed).
    pub bloat: Duration,
    /// Queueing delay under which the path counts as clear, so that the rate may grow.
    pub clear: Duration,
    /// Least delivery, bytes per second, at which a queue is acted on (1 Mbit/s): below it a
    /// delay is someone else's.
    pub min_load: f64,
    /// Least rate ever set, bytes per second: above the ACKs that a busy opposite direction
    /// draws over this one (about 2.5 % of its rate), which the pacer counts too.
    pub floor: f64,
    /// Least share of the rate per held sender ([`Sample::held_senders`]), bytes per second
    /// (100 kbit/s): the rate never goes below it for all of them, and a direction that
    /// delivers less over a queue does not start pacing. A BBR sender kept far under its own
    /// rate while the path drops a fifth of its segments takes that rate for a policer's and
    /// keeps it for 48 round trips, which at a few segments a second are minutes: beside a
    /// competing download, 30 downloads paced at 1.0-1.6 Mbit/s in all (33-52 kbit/s each),
    /// their segments dropped in the competitor's queue, left the burst's first 30 tunnels'
    /// senders at a few kbit/s (one server's socket: `bbr:(bw:3448bps)`, pacing gain 1), and
    /// those tunnels took 25-66 s where the others took 3-4 s (testbed competing). Delivering
    /// less than this share each, the downloads are the lighter traffic over a queue someone
    /// else keeps.
    pub sender_floor: f64,
    /// Least time between two cuts: the delay signal lags by a few round trips.
    pub refractory: Duration,
    /// How long the rate holds after a cut before it may grow.
    pub hold: Duration,
    /// The first growth step per tick, as a fraction of the rate.
    pub first_step: f64,
    /// The largest growth step per tick.
    pub max_step: f64,
    /// How often the growth step doubles while the rate grows without a queue.
    pub step_every: Duration,
    /// Share of bytes sent again that counts as a queue overflowing.
    pub loss: f64,
    /// How long a delay reported after a stall is ignored.
    pub stall_grace: Duration,
    /// Cuts in a row that leave the queue as full before it counts as someone else's.
    pub contended_after: u32,
    /// How long pacing stops when the queue is someone else's.
    pub contended_pause: Duration,
    /// How long without a queue before pacing stops.
    pub off_after: Duration,
    /// Whether delivery is counted where the bytes arrive (downloads: what fyntr's sockets
    /// received), so that one tick's delivery is what crossed the link in it. Uploads count
    /// what the far ends acknowledged, and ACKs come in lumps: a tick may read a 20 Mbit/s
    /// link at 26.
    pub counts_arrivals: bool,
}

impl Default for AutoRateConfig {
    fn default() -> Self {
        Self {
            bloat: Duration::from_millis(7),
            clear: Duration::from_millis(3),
            min_load: 125_000.0,
            floor: 125_000.0,
            sender_floor: 12_500.0,
            refractory: Duration::from_millis(300),
            hold: Duration::from_secs(1),
            first_step: 0.01,
            max_step: 0.1,
            step_every: Duration::from_millis(300),
            loss: 0.02,
            stall_grace: Duration::from_secs(1),
            contended_after: 5,
            contended_pause: Duration::from_secs(10),
            off_after: Duration::from_secs(600),
            counts_arrivals: false,
        }
    }
}

/// What the controller is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No pacing: nothing showed a queue of fyntr's making.
    Off,
    /// Pacing a burst on an idle line from its first byte, before any queue is known: from
    /// [`START_RATE`], growing each tick the path stays clear (see [`AutoRate::start`]).
    Starting,
    /// Pacing at the estimated rate.
    Paced,
    /// Not pacing for a while: the queue belongs to a flow that does not go through fyntr.
    Contended,
}

impl Mode {
    /// A word for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Starting => "starting",
            Self::Paced => "paced",
            Self::Contended => "contended",
        }
    }
}

/// Ticks over which delivery is averaged: one sample per socket per tick is lumpy.
const LOAD_TICKS: usize = 3;
/// Ticks of the longer average a cut is taken from: over a second, reports that land a tick
/// late even out (the short average reads a 20 Mbit/s link at up to 26), and a dip of a loss
/// recovery weighs little.
const SECOND_TICKS: usize = 10;
/// How fast the jitter floor rises toward the delay, per tick (a time constant of 30 s).
const FLOOR_GAIN: f64 = 0.003;
/// The highest jitter floor, in seconds: a delay above it always shows.
const MAX_FLOOR: f64 = 0.002;
/// How long the best delivery is remembered as the rate to grow back to quickly: a cut for a
/// passing queue (a burst of new connections, the jitter of a busy path) costs a second,
/// not the many seconds of probing up from scratch.
const BEST_MEMORY: Duration = Duration::from_secs(10);
/// How recent a cut of the opposite direction keeps a queue that does not drain from
/// counting as someone else's.
const OPPOSITE_CUT_WINDOW: Duration = Duration::from_secs(2);
/// Ticks at the floor rate (within [`NEAR_FLOOR`] of it) with more to send, after which the
/// queue that brought the rate there counts as someone else's: 2 s.
const FLOOR_TICKS: u32 = 20;
/// A rate at most this far over the floor is held there (see `paced_tick`).
const NEAR_FLOOR: f64 = 1.25;
/// How long after pacing stopped with a queue standing (a pause for contention, or silence)
/// a queue that starts pacing again is taken for the same flow's, as on resuming (see
/// [`PROBATION`]).
const CONTENTION_MEMORY: Duration = Duration::from_secs(30);
/// How long after pacing starts from off a queue that stays is not taken for someone else's.
const STARTUP: Duration = Duration::from_secs(5);
/// How long after pacing resumes from a pause for contention a queue that stays is taken for
/// the same flow's.
const PROBATION: Duration = Duration::from_secs(3);
/// How long a paced direction moves data without a report of the delay before pacing stops.
/// With no signal a rate can neither grow nor be cut, and one set for a queue that has gone
/// holds the direction there: on the testbed's asymmetric line, downloads cut for the uplink's
/// queue stayed at 1.2 Mbit/s of a 40 Mbit/s downlink for 30 s once only downloads moved, and
/// the burst took 72 s against 35, with only the senders' round trips read. (Downloads'
/// receivers stand in when no sender reports, see `auto_pacing`: silence is 3 s in which
/// neither did.) Ticks that move nothing do not count: a rate holds nothing back while the
/// line is idle, and kept in force it paces the next burst from its first byte (a plan run
/// again), where a burst that starts unpaced sends every new connection's first flight at once
/// (on a 5 Mbit/s uplink their resends kept its queue full for 3 s, testbed asymmetric).
const SILENCE: Duration = Duration::from_secs(3);
/// How long nothing is delivered before it is the line idle rather than a stall (see
/// [`AutoRateConfig::stall_grace`]): a stall the grace covers is a second or so.
const IDLE: Duration = Duration::from_secs(3);
/// Ticks over which a direction's drops are remembered (see [`AutoRate::dropped_lately`]).
const DROP_TICKS: u32 = 5;
/// How long a direction waits on the opposite direction's cut to drain a queue both read
/// before it cuts too: a cut that drains it shows within a round trip and a tick or two.
/// (Testbed burst: with a second's wait, the downloads waited on an upload cut a second while
/// their own queue stood at 12-13 ms and the uploads, done, cut no more.)
const OPPOSITE_WAIT: Duration = Duration::from_millis(500);
/// How long a probe past the ceiling keeps the opposite direction from probing past its own:
/// near the ceiling a probe finds the queue within a second or two; a rate climbing from far
/// below its link (a first rate read from the first tick of a burst) goes on climbing past it,
/// and the opposite one may then probe too rather than wait at its own ceiling.
const PROBE_TURN: Duration = Duration::from_secs(2);
/// How far past its ceiling a probe keeps the opposite direction at its own: further, the path
/// got faster (a line that steps up does so both ways), and both directions find it at once
/// (testbed steps: the downloads waited 2 s at 3.8 Mbit/s on a 20 Mbit/s downlink while the
/// uploads climbed).
const NEAR_PROBE: f64 = 1.1;
/// The rate a burst on an idle line starts at (see [`AutoRate::start`]), bytes on the wire per
/// second (4 Mbit/s): under the slowest uplink fyntr is meant to spare (the testbed's 5 Mbit/s),
/// where 30 new connections' first flights, 434 KB unpaced, fill a 32 KiB buffer and their
/// resends keep it full for seconds.
pub const START_RATE: f64 = 500_000.0;
/// How much a starting rate grows per tick while the path stays clear. A queue shows a tick and
/// a round trip after the rate passes the link, and by then it holds about `(g - 1) x 120 ms`
/// of the link's rate: at 1.25, 30 ms, within the testbed's 5 Mbit/s buffer (52 ms) and over
/// its 20 Mbit/s one (13 ms) by a few packets. From 4 Mbit/s it reaches 20 in 0.7 s.
const START_GROWTH: f64 = 1.25;
/// A rise of the delay over a tick that holds a starting rate where it is.
const START_RISE: Duration = Duration::from_micros(500);
/// How far over the least delay a start read a reading stands (see `starting_tick`): over a
/// busy path's jitter (the testbed's idle probe p99 is 1.5 ms over its median).
const START_STANDING: Duration = Duration::from_micros(1_500);
/// Standing readings in a row that end a start: the rate is at the link.
const START_STANDING_READINGS: u32 = 3;
/// A starting rate that grows past this with no queue found is on a fast line, where pacing is
/// left off (bytes on the wire per second: 200 Mbit/s, about 1.8 s from [`START_RATE`]).
const START_CAP: f64 = 25_000_000.0;

/// The share of an upload rate past the ceiling the path must carry for the rate to grow on
/// (see `paced_tick`): under it by the lag of delivery behind a growing rate and the lumps
/// ACKs come in.
const PROBE_IN_USE: f64 = 0.9;

/// A queueing delay no buffer of a line as fast as the rate in force would hold: the line got
/// slower (a 32 KiB router buffer holds 13 ms at 20 Mbit/s, both directions' 26).
const DEEP_QUEUE: Duration = Duration::from_millis(30);

/// Ticks the bloat rule looks back over, and how many of them must show a queue.
const BLOAT_WINDOW: u32 = 6;
const BLOAT_TICKS: u32 = 3;

/// Payload bytes to the bytes the pacer counts: payload plus the headers of its segments.
const WIRE_PER_PAYLOAD: f64 = (SEGMENT_PAYLOAD + SEGMENT_HEADERS) as f64 / SEGMENT_PAYLOAD as f64;

/// What a tick read of the path, for the mode's own part of the tick.
#[derive(Clone, Copy)]
struct Reading {
    /// Delivery over the last ticks ([`AutoRate::delivery`]).
    load: f64,
    /// The queueing delay over the jitter floor (zero if none was reported).
    delay: Duration,
    /// Whether the tick showed a queue of this direction's to act on.
    queue: bool,
    /// Whether the tick read the path as clear (or the delay as the opposite direction's).
    clear: bool,
    /// Whether more than the loss threshold was sent again.
    lossy: bool,
}

/// One direction's rate controller.
#[derive(Debug)]
pub struct AutoRate {
    config: AutoRateConfig,
    mode: Mode,
    /// The rate in force while paced, in bytes on the wire per second.
    rate: f64,
    /// The last ticks' delivery (bytes, seconds), newest last: the short average is its last
    /// [`LOAD_TICKS`], the longer one all of it.
    recent: [(f64, f64); SECOND_TICKS],
    /// The rate in force during each of the last [`LOAD_TICKS`] ticks, newest last.
    recent_rates: [f64; LOAD_TICKS],
    /// The path's jitter floor, in seconds ([`AutoRate::over_floor`]).
    floor: f64,
    /// The best averaged delivery lately and when it was seen; forgotten after
    /// [`BEST_MEMORY`], or when a queue outlasts a cut (the path got slower).
    best: (f64, Instant),
    /// One bit per recent tick, newest lowest: whether it showed a queue.
    bloat_bits: u32,
    last_cut: Option<Instant>,
    /// The queueing delay at the last cut: a smaller one since means the cut works.
    delay_at_cut: Duration,
    /// What the path delivered when it last built a queue, at most the rate in force then:
    /// the estimate of its rate.
    ceiling: f64,
    cuts_in_a_row: u32,
    /// Ticks in a row at the floor rate with more to send.
    ticks_at_floor: u32,
    /// The floor rate as of the last tick: [`AutoRateConfig::floor`], or the held senders'
    /// least share ([`AutoRateConfig::sender_floor`]) if that is more.
    least_rate: f64,
    /// The rate before the first of those cuts.
    rate_before_cuts: f64,
    step: f64,
    step_since: Instant,
    last_queue: Instant,
    stalled_until: Option<Instant>,
    /// When the current run of ticks with nothing delivered while paced began.
    stalled_since: Option<Instant>,
    contended_until: Option<Instant>,
    last_delay: Option<Duration>,
    /// How long the ticks since the last report of the delay (or since pacing started or
    /// resumed) moved data: delivered some, or held some back. See [`SILENCE`].
    silent_for: Duration,
    /// One bit per recent tick, newest lowest: whether this direction's link dropped its data.
    drop_bits: u32,
    /// Whether the sockets ever said whether the link dropped data.
    drops_known: bool,
    /// When pacing last resumed after a pause for contention.
    resumed_at: Option<Instant>,
    /// When pacing last stopped with a queue left standing: a pause for contention ended, or
    /// no delay was reported for [`SILENCE`] after a reading that showed a queue.
    left_standing: Option<Instant>,
    /// When pacing last started from off.
    paced_since: Instant,
    /// When this direction last moved data (delivered some, or held some back), if ever.
    last_moved: Option<Instant>,
    /// Until when a burst may not start paced: a start found the line fast, or no delay to
    /// read ([`AutoRate::start`]).
    no_start_until: Option<Instant>,
    /// Since when a queue has been left to the opposite direction's cut.
    deferred_since: Option<Instant>,
    /// What the last tick decided, in a word (for the per-tick trace).
    decision: &'static str,
    /// Whether the tick before this one read the path as clear.
    clear_before: bool,
    /// The queueing delay (over the jitter floor) the last tick that reported one read.
    delay_before: Duration,
    /// The queueing delays the last two readings of this start read, newest first
    /// ([`Duration::MAX`] for none yet).
    start_delays: [Duration; 2],
    /// The least queueing delay this start read ([`Duration::MAX`] for none yet).
    start_least_delay: Duration,
    /// Readings in a row of this start with the delay standing over its least.
    start_standing_readings: u32,
    /// Since when a queue has stood while starting, if one stands.
    start_queue_since: Option<Instant>,
    /// Since when the rate has been past the ceiling, as of the end of the last tick.
    probing_since: Option<Instant>,
    /// Whether, as of the end of the last tick, this direction's probe keeps the opposite one
    /// at its ceiling ([`AutoRate::holds_turn`]).
    holds_turn: bool,
    /// Whether the pacer held bytes back during the last tick.
    held_back: bool,
    /// Since when this direction has waited for its turn to probe, if it waits.
    waiting_since: Option<Instant>,
    /// Whether this tick waited for the turn to probe.
    waited: bool,
    /// Whether the rate grew since the last cut: a rate above the ceiling only because a cut
    /// may at most halve it is no probe.
    grown_since_cut: bool,
    /// How far past the ceiling the rate was when the last cut ended a probe, as a ratio;
    /// zero if the last cut ended none.
    probe_at_cut: f64,
}

impl AutoRate {
    /// A controller that starts off, at `now`.
    pub fn new(config: AutoRateConfig, now: Instant) -> Self {
        Self {
            config,
            mode: Mode::Off,
            rate: 0.0,
            recent: [(0.0, 0.0); SECOND_TICKS],
            recent_rates: [0.0; LOAD_TICKS],
            best: (0.0, now),
            floor: 0.0,
            bloat_bits: 0,
            last_cut: None,
            delay_at_cut: Duration::ZERO,
            ceiling: 0.0,
            cuts_in_a_row: 0,
            ticks_at_floor: 0,
            least_rate: config.floor,
            rate_before_cuts: 0.0,
            step: config.first_step,
            step_since: now,
            last_queue: now,
            stalled_until: None,
            stalled_since: None,
            contended_until: None,
            last_delay: None,
            silent_for: Duration::ZERO,
            drop_bits: 0,
            drops_known: false,
            resumed_at: None,
            left_standing: None,
            paced_since: now,
            last_moved: None,
            no_start_until: None,
            deferred_since: None,
            decision: "off",
            clear_before: false,
            delay_before: Duration::ZERO,
            start_delays: [Duration::MAX; 2],
            start_least_delay: Duration::MAX,
            start_standing_readings: 0,
            start_queue_since: None,
            probing_since: None,
            holds_turn: false,
            held_back: false,
            waiting_since: None,
            waited: false,
            grown_since_cut: false,
            probe_at_cut: 0.0,
        }
    }

    /// What the last tick decided, in a word: what the per-tick trace shows beside the rate.
    pub fn decision(&self) -> &'static str {
        self.decision
    }

    /// What the controller is doing.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The rate in force, if paced.
    pub fn rate(&self) -> Option<Rate> {
        matches!(self.mode, Mode::Paced | Mode::Starting).then_some(Rate(self.rate))
    }

    /// From when a burst on a path of this direction may start paced ([`AutoRate::start`]):
    /// `None` while this direction is paced or paused, else once the line has been idle for
    /// [`IDLE`] and no start lately found it fast.
    pub fn start_allowed_from(&self) -> Option<Instant> {
        if self.mode != Mode::Off {
            return None;
        }
        [
            self.last_moved.map(|moved| moved + IDLE),
            self.no_start_until,
        ]
        .into_iter()
        .flatten()
        .max()
        // Never moved: from the start.
        .or(Some(self.paced_since))
    }

    /// Starts pacing a burst at [`START_RATE`] (when [`AutoRate::start_allowed_from`] allows it,
    /// which the caller checks as the burst's first path opens, so that its first bytes are
    /// paced). `auto` is otherwise off until a queue shows, and by the first tick of a burst
    /// unpaced, 30 new connections' first flights (434 KB) had filled a 5 Mbit/s uplink's
    /// 32 KiB buffer and their resends kept it full for 1-3 s (testbed asymmetric). The rate
    /// grows by [`START_GROWTH`] a tick while the pacer holds bytes back and the path stays
    /// clear; a queue starts pacing as from off, from what the path delivers; past
    /// [`START_CAP`] the line is fast, and pacing is off for [`AutoRateConfig::off_after`].
    /// Paths with a base round trip under a millisecond (a LAN) never start paced: that is the
    /// caller's to check.
    pub fn start(&mut self, now: Instant) -> Option<Rate> {
        if self.mode == Mode::Off {
            self.mode = Mode::Starting;
            self.rate = START_RATE;
            self.paced_since = now;
            self.silent_for = Duration::ZERO;
            self.last_queue = now;
            self.start_queue_since = None;
            self.start_delays = [Duration::MAX; 2];
            self.start_least_delay = Duration::MAX;
            self.start_standing_readings = 0;
            self.decision = "start from the first byte";
        }
        self.rate()
    }

    /// Delivery over the last ticks, in bytes on the wire per second.
    pub fn delivery(&self) -> f64 {
        average(&self.recent[SECOND_TICKS - LOAD_TICKS..])
    }

    /// `delay` over the path's jitter floor, which the floor then follows: down at once, up
    /// slowly (3 % of the gap per second, so a queue is acted on long before it is taken
    /// for jitter) and never above [`MAX_FLOOR`]. A busy path's smoothed round trips sit a
    /// little over their least one even with no queue (delayed ACKs, a router's or host's
    /// scheduling), and cake-autorate's baseline follows one-way delays the same way.
    fn over_floor(&mut self, delay: Duration) -> Duration {
        let delay = delay.as_secs_f64();
        if delay < self.floor {
            self.floor = delay;
        } else {
            self.floor = (self.floor + FLOOR_GAIN * (delay - self.floor)).min(MAX_FLOOR);
        }
        Duration::from_secs_f64(delay - self.floor.min(delay))
    }

    /// The mean rate over the ticks [`AutoRate::delivery`] averages.
    fn rate_during_load(&self) -> f64 {
        self.recent_rates.iter().sum::<f64>() / LOAD_TICKS as f64
    }

    /// Whether the rate is past the one at which the path last queued and the pacer holds
    /// bytes back at it: probing for more. (A rate that holds nothing back probes nothing:
    /// the sockets' windows are the limit. Taken for a probe, a download direction paced at
    /// 25 Mbit/s over a 20 Mbit/s downlink, window-limited, kept the uploads from their turn,
    /// and the queue its windows built was left to them.)
    pub fn probing(&self) -> bool {
        self.mode == Mode::Paced
            && self.ceiling > 0.0
            && self.rate > self.ceiling
            && self.held_back
            && self.grown_since_cut
    }

    /// How far past its ceiling this direction probed when it last cut (the ratio of the
    /// rates), zero if that cut ended no probe: of two directions that both probed, the one
    /// further past its ceiling most likely built the queue.
    pub fn probe_at_cut(&self) -> f64 {
        self.probe_at_cut
    }

    /// How far past the ceiling the rate is while probing, as a ratio; zero when not probing.
    fn probe(&self) -> f64 {
        if self.probing() {
            self.rate / self.ceiling
        } else {
            0.0
        }
    }

    /// Whether this direction's probe keeps the opposite one from probing past its own
    /// ceiling: for the first [`PROBE_TURN`] of it, and while within [`NEAR_PROBE`] of the
    /// ceiling. As of the end of the last tick.
    pub fn holds_turn(&self) -> bool {
        self.holds_turn
    }

    /// Since when this direction has waited for its turn to probe, as of the end of the last
    /// tick, if it waits.
    pub fn waiting_since(&self) -> Option<Instant> {
        self.waiting_since
    }

    /// The rate grown to `grown`, but not past the ceiling while the opposite direction holds
    /// the turn to probe, or has waited for it longer than this one: the directions take turns,
    /// so that the queue a probe builds is known to be the prober's (both read one delay), and
    /// in the order they asked (testbed steps: after the step up, the uploads' probes came
    /// one after another, each holding the turn, and the downloads waited at 13-14 Mbit/s of
    /// the 20 Mbit/s downlink for 8 s). The tick's decision is `decision`, or that it waited
    /// its turn.
    fn grow(&mut self, grown: f64, sample: &Sample, decision: &'static str) {
        let opposite_asked_first = sample
            .opposite_waiting_since
            .is_some_and(|theirs| self.waiting_since.is_none_or(|mine| theirs < mine));
        let waits = (sample.opposite_holds_turn || opposite_asked_first)
            && !self.probing()
            && grown > self.ceiling;
        if waits {
            self.waiting_since.get_or_insert(sample.now);
            self.waited = true;
        }
        let rate = if waits {
            self.rate.max(self.ceiling)
        } else {
            grown
        };
        self.grown_since_cut |= rate > self.rate;
        self.rate = rate;
        self.decision = if waits {
            "waits its turn to probe"
        } else {
            decision
        };
    }

    /// Delivery over those of the last [`LOAD_TICKS`] ticks that delivered anything.
    fn delivery_while_moving(&self) -> f64 {
        average(
            self.recent[SECOND_TICKS - LOAD_TICKS..]
                .iter()
                .filter(|(bytes, _)| *bytes > 0.0),
        )
    }

    /// The most any of the last [`LOAD_TICKS`] ticks delivered, in bytes on the wire per
    /// second.
    fn busiest_recent_tick(&self) -> f64 {
        self.recent[SECOND_TICKS - LOAD_TICKS..]
            .iter()
            .map(|&tick| per_second(tick))
            .fold(0.0, f64::max)
    }

    /// Delivery over the last [`SECOND_TICKS`] ticks, in bytes on the wire per second.
    fn second_delivery(&self) -> f64 {
        average(&self.recent)
    }

    /// The median of the last [`SECOND_TICKS`] ticks' delivery, in bytes on the wire per
    /// second: what the path carried in a typical tick, whatever one tick's dip or lump.
    fn median_tick(&self) -> f64 {
        let mut rates = self.recent.map(per_second);
        rates.sort_unstable_by(f64::total_cmp);
        rates[SECOND_TICKS / 2]
    }

    /// The last queueing delay reported.
    pub fn queue_delay(&self) -> Option<Duration> {
        self.last_delay
    }

    /// Takes one tick's sample; returns the rate to pace at, `None` for none.
    pub fn on_tick(&mut self, sample: &Sample) -> Option<Rate> {
        let now = sample.now;
        self.held_back = sample.backlogged;
        self.waited = false;
        self.least_rate = self
            .config
            .floor
            .max(f64::from(sample.held_senders) * self.config.sender_floor);
        let wire = sample.delivered as f64 * WIRE_PER_PAYLOAD + sample.acks as f64;
        self.recent.rotate_left(1);
        self.recent[SECOND_TICKS - 1] = (wire, sample.interval.as_secs_f64());
        self.recent_rates.rotate_left(1);
        self.recent_rates[LOAD_TICKS - 1] = self.rate;
        if sample.queue_delay.is_some() {
            self.last_delay = sample.queue_delay;
            self.silent_for = Duration::ZERO;
        } else if sample.delivered > 0 || sample.backlogged {
            self.silent_for += sample.interval;
        }
        if sample.delivered > 0 || sample.backlogged {
            self.last_moved = Some(now);
        }
        let load = self.delivery();
        let second = self.second_delivery();
        if second >= self.best.0 || now.duration_since(self.best.1) >= BEST_MEMORY {
            self.best = (second, now);
        }
        // A stall (or a pause): nothing delivered while paced. What stalled bytes report on
        // arrival is their wait, not a queue. The pacer cannot tell a stall from a pause: in a
        // stall the sockets' windows fill and fyntr stops writing, so it holds nothing back.
        // (Over the last ticks, not one: with few sockets a tick may hold no report at all.)
        //
        // Nothing delivered for longer than [`IDLE`] is the line idle, not a stall: the grace
        // runs out, so that the next burst's queue is read from its first tick (with the rate
        // kept, see [`SILENCE`], a burst over a line that got slower meanwhile would otherwise
        // fill its buffer for a second before the first cut).
        let stalled = self.mode == Mode::Paced && load < 0.05 * self.rate.max(self.config.min_load);
        if stalled {
            let since = *self.stalled_since.get_or_insert(now);
            if now.duration_since(since) < IDLE {
                self.stalled_until = Some(now + self.config.stall_grace);
            }
        } else {
            self.stalled_since = None;
        }
        // A rate past where the path last queued is a probe, which only traffic can end: with
        // nothing moving it falls back to what a cut there would set, the rate the next burst
        // starts at.
        let idle = sample.delivered == 0 && !sample.backlogged;
        if idle && self.mode == Mode::Paced && self.ceiling > 0.0 {
            self.rate = self.rate.min(0.95 * self.ceiling).max(self.least_rate);
        }
        let in_grace = self.stalled_until.is_some_and(|until| now < until);
        let delay = sample
            .queue_delay
            .map_or(Duration::ZERO, |delay| self.over_floor(delay));
        // Retransmissions come a round trip or more after the overflow, and go on for a while
        // after a cut: within `hold` of a cut they are the last queue's, not a new one.
        let since_cut = self
            .last_cut
            .map_or(Duration::MAX, |cut| now.duration_since(cut));
        let lossy = sample.loss.is_some_and(|loss| loss > self.config.loss)
            && since_cut >= self.config.hold;
        // Both directions read one delay, so a direction that moves less than half of what
        // the opposite one moves leaves a queue to it: the queue is most likely the busier
        // direction's, and cutting the lighter one too would starve it for nothing. Its own
        // resends still count: they are its own queue overflowing.
        //
        // A queue that drops the opposite direction's data while this direction's link drops
        // none of its own is the opposite direction's too, whatever each moves: on a 5 Mbit/s
        // uplink beside a 40 Mbit/s downlink, uploads and downloads moved about as much, and
        // the downloads were cut to 1-4 Mbit/s for the uplink's queue (testbed asymmetric).
        self.drop_bits = ((self.drop_bits << 1) | u32::from(sample.dropped == Some(true)))
            & ((1 << DROP_TICKS) - 1);
        self.drops_known |= sample.dropped.is_some();
        // And one that drops only this direction's data is this one's, however little it
        // moves.
        let only_opposite_drops =
            sample.opposite_dropped && self.drops_known && self.drop_bits == 0;
        let only_mine_drops = self.only_mine_drops(sample);
        // The directions take turns to probe past the rates at which their paths last queued
        // (see `grow`): a queue that shows while only one of them probes is that one's, however
        // much each moves (simulated 5/40 line: the uploads, lighter, grew 10 % past the uplink
        // and filled its buffer while the downloads were cut three times for it).
        // An opposite direction that is not paced takes no turns: that it does not probe says
        // nothing of whose queue it is (testbed competing: the downloads, paused or off beside
        // the competitor, never probed, so every queue of the competitor's was the probing
        // uploads' by turn; they were cut for it every second or two, from 7 to 1.5 Mbit/s over
        // 50 s on an idle 20 Mbit/s uplink, though only the downloads' data was dropped, and
        // each tunnel waited seconds to send its request).
        let probing = self.probing();
        let mine_by_turn = probing && sample.opposite_paced && !sample.opposite_probing;
        let theirs_by_turn = sample.opposite_probing && !probing;
        let lighter = ((sample.opposite_load > 2.0 * load && !only_mine_drops)
            || only_opposite_drops
            || theirs_by_turn)
            && !mine_by_turn;
        // A tick with no report of the delay says nothing either way. The lighter direction
        // may grow while the busier one keeps a queue.
        let known = sample.queue_delay.is_some();
        let queue = !in_grace && ((known && delay > self.config.bloat && !lighter) || lossy);
        let clear = !in_grace && known && !lossy && (delay < self.config.clear || lighter);
        self.bloat_bits = ((self.bloat_bits << 1) | u32::from(queue)) & ((1 << BLOAT_WINDOW) - 1);
        if queue {
            self.last_queue = now;
        }
        self.decision = match (queue, clear, lighter) {
            (true, _, _) => "queue",
            (_, true, true) => "lighter",
            (_, true, false) => "clear",
            _ => "grey",
        };
        let reading = Reading {
            load,
            delay,
            queue,
            clear,
            lossy,
        };
        match self.mode {
            Mode::Off => {
                if self.queue_starts_pacing(sample, &reading) {
                    self.start_pacing(sample, delay, lossy);
                }
            }
            Mode::Starting => self.starting_tick(sample, &reading),
            Mode::Paced => self.paced_tick(sample, &reading),
            Mode::Contended => {
                if self.contended_until.is_some_and(|until| now >= until) {
                    self.end_pause(now, second, delay);
                }
            }
        }
        let silent =
            matches!(self.mode, Mode::Paced | Mode::Starting) && self.silent_for >= SILENCE;
        let no_queue_for_long =
            self.mode != Mode::Off && now.duration_since(self.last_queue) >= self.config.off_after;
        if silent || no_queue_for_long {
            // Silent after a reading that showed a queue: beside a competing download, whose
            // queue the downloads were cut for, the last reading before each silence showed
            // 9-17 ms, and pacing started again within a second.
            if silent && self.delay_before > self.config.bloat {
                self.left_standing = Some(now);
            }
            // A start that reads no delay cannot find the line: later bursts go unpaced.
            if silent && self.mode == Mode::Starting {
                self.no_start_until = Some(now + self.config.off_after);
            }
            self.turn_off();
            self.decision = if silent {
                "silent"
            } else {
                "no queue for long"
            };
        }
        if self.probing() {
            let since = *self.probing_since.get_or_insert(now);
            self.holds_turn =
                now.duration_since(since) < PROBE_TURN && self.rate <= NEAR_PROBE * self.ceiling;
        } else {
            self.probing_since = None;
            self.holds_turn = false;
        }
        if !self.waited {
            self.waiting_since = None;
        }
        self.clear_before = clear;
        if known {
            self.delay_before = delay;
        }
        self.rate()
    }

    /// Whether the tick's queue is one of fyntr's making that pacing should start for.
    fn queue_starts_pacing(&self, sample: &Sample, reading: &Reading) -> bool {
        let Reading {
            load,
            delay,
            queue,
            lossy,
            ..
        } = *reading;
        let queue_ticks = self.bloat_bits.count_ones();
        // A delay of twice the threshold is no wobble: act at once. Nor is a queue that drops
        // this direction's data: it overflows now (testbed burst: the downloads' first queue
        // dropped data from its first tick over the threshold, and waiting for 3 such ticks
        // held the 20 Mbit/s downlink full for 0.3 s).
        let deep = delay > 2 * self.config.bloat;
        let overflowing = sample.dropped == Some(true);
        // Delivering less than the held senders' least share, fyntr's traffic is the lighter
        // over a queue it did not build (see `AutoRateConfig::sender_floor`).
        load >= self.config.min_load.max(self.least_rate)
            && (queue_ticks >= BLOAT_TICKS || lossy || deep || overflowing)
            && queue
    }

    /// A tick while starting (see [`AutoRate::start`]).
    fn starting_tick(&mut self, sample: &Sample, reading: &Reading) {
        let now = sample.now;
        let Reading {
            load,
            delay,
            queue,
            clear,
            lossy,
        } = *reading;
        // Beside an opposite direction paced at a rate it found, the delay is that one's to
        // act on: a start knows no rate of its own path, and taking the opposite's queue for
        // its own would leave it paced at what it moved then, far under its link (testbed
        // asymmetric: downloads that started pacing at 3.5 Mbit/s for the uplink's queue took
        // 30 s to grow past 5 on the 40 Mbit/s downlink, and the burst 40 s against 28). It
        // goes on growing until its own link drops its data, or until a queue has stood for
        // [`OPPOSITE_WAIT`]: the opposite's cuts would have drained a queue of its own by
        // then, and this start's growth is what keeps it (testbed asymmetric:
        // downloads that grew from 8 to 47 Mbit/s in 0.8 s while the uploads were cut, with the
        // uplink's queue at 10-34 ms from the downloads' ACKs).
        if !queue {
            self.start_queue_since = None;
        }
        let queue_outlasted_the_opposite = queue
            && now.duration_since(*self.start_queue_since.get_or_insert(now)) >= OPPOSITE_WAIT;
        let opposite_reads_the_delay =
            sample.opposite_paced && !sample.opposite_starting && !queue_outlasted_the_opposite;
        // Else the rate grew into the link, most likely: pacing starts from what the path
        // delivers at the first tick of a queue, not after 3 ticks of it as from off (a start
        // grows by a quarter a tick, and on a 5 Mbit/s uplink one tick more took the queue
        // from 10 to 28 ms, testbed asymmetric).
        let overflowing = sample.dropped == Some(true);
        // A delay that rises while still under the clear mark is the link filling: the rate
        // holds there (testbed asymmetric: from 4 Mbit/s the uploads grew to 5, the delay rose
        // from 0.8 to 1.7 ms, and at 6.25 the queue reached 28 ms before the first cut).
        // Risen over the last reading or the last two: a queue that fills slowly (a rate just
        // over the link) rises by less than the mark a tick (testbed asymmetric: at 5 Mbit/s on
        // the 5 Mbit/s uplink the delay rose from 1.0 to 1.6 and 2.0 ms, the rate grew to 6.25
        // on the tick it rose by less, and the queue reached 44 ms before the cut took). Not
        // since the rate last grew: a growth on a reading at the bottom of a busy path's
        // jitter held the uploads at 5 Mbit/s of a 20 Mbit/s uplink for 3 s (testbed steps).
        let lately = self.start_delays[0].min(self.start_delays[1]);
        let rising = !opposite_reads_the_delay && delay > lately.saturating_add(START_RISE);
        // Risen past the clear mark by more than the mark within a tick or two, the delay is
        // a rate a growth took past the link, not jitter: a queue of its own, which holding the
        // rate would fill for another tick (testbed asymmetric: the uploads grown to 6.25
        // Mbit/s on the 5 Mbit/s uplink read 6.8 ms, held, and the queue reached 48 ms).
        let filling =
            rising && delay > self.config.clear && delay > lately.saturating_add(self.config.clear);
        // A delay that stands over the least this start read, reading after reading, is the
        // rate at the link, where a queue fills slowly; the start would grow again once the
        // delay stops rising, and a quarter past the link (testbed asymmetric: the uploads held
        // at 5 Mbit/s on the 5 Mbit/s uplink as the delay rose from 0.6 to 1.3, 2.6, 2.6 and
        // 3.0 ms, grew to 6.25 on the flat reading, and the queue reached 26 ms). A busy
        // path's jitter lifts one reading, not several in a row (testbed burst and steps: the
        // starts on 20 Mbit/s links read 0.2-1.7 ms, and lone readings of 3.5-6.1).
        if sample.queue_delay.is_some() {
            let standing = !opposite_reads_the_delay
                && delay > self.start_least_delay.saturating_add(START_STANDING);
            self.start_standing_readings = if standing {
                self.start_standing_readings + 1
            } else {
                0
            };
            self.start_delays = [delay, self.start_delays[0]];
            self.start_least_delay = self.start_least_delay.min(delay);
        }
        let at_the_link = self.start_standing_readings >= START_STANDING_READINGS;
        let own_queue =
            overflowing || lossy || filling || at_the_link || (queue && !opposite_reads_the_delay);
        if own_queue && load >= self.config.min_load.max(self.least_rate) {
            self.start_pacing(sample, delay, lossy);
            return;
        }
        if !((clear || opposite_reads_the_delay)
            && !rising
            && sample.backlogged
            && self.drop_bits == 0)
        {
            if rising {
                self.decision = "start holds: delay rising";
            }
            return;
        }
        self.rate *= START_GROWTH;
        self.decision = "start grows";
        if self.rate >= START_CAP {
            self.turn_off();
            self.no_start_until = Some(now + self.config.off_after);
            self.decision = "start found a fast line";
        }
    }

    /// Starts pacing for a queue of fyntr's making, from what the path delivered.
    fn start_pacing(&mut self, sample: &Sample, delay: Duration, lossy: bool) {
        let now = sample.now;
        self.mode = Mode::Paced;
        self.paced_since = now;
        self.silent_for = Duration::ZERO;
        // A queue soon after pacing stopped with one standing (a pause for contention, or
        // silence) is most likely the same flow's: pacing starts as it resumes after a pause, on
        // probation, without the first seconds' leave (beside a competing download, runs whose
        // downloads went off for silence and started pacing afresh three to seven times spent
        // 302-924 ticks paced, cut for its queue, and got 0.20-0.31 of the downlink; runs that
        // started once, 98-471 ticks and 0.29-0.60).
        if self
            .left_standing
            .is_some_and(|stopped| now.duration_since(stopped) < CONTENTION_MEMORY)
        {
            self.paced_since = now.checked_sub(STARTUP).unwrap_or(now);
            self.resumed_at = Some(now);
        }
        // The last second, and the last ticks too, may hold the idle time before the burst (a
        // first download rate of 4 Mbit/s, read from one tick of 12 and two idle ones, took 5 s
        // to grow to 11 on a 20 Mbit/s downlink). Over the ticks that moved data, delivery is
        // never under `load`, which counts the idle ones too.
        self.rate = self.second_delivery().max(self.delivery_while_moving());
        // A tick in which the link dropped this direction's data had it full: counted where
        // the bytes arrive, what that tick delivered is the link's rate, where the average
        // still holds the ticks in which the flights were on their way (testbed burst: the
        // downloads' first queue dropped data in a tick that delivered 13 Mbit/s of the
        // 20 Mbit/s downlink, after ticks of 1 and 7; the average set 7 Mbit/s, and growing
        // from there took 3 s).
        if self.config.counts_arrivals && sample.dropped == Some(true) {
            self.rate = self.rate.max(self.busiest_recent_tick());
        }
        self.cut(now, self.rate, delay, lossy, false);
        self.decision = "start";
    }

    /// A tick while paced.
    fn paced_tick(&mut self, sample: &Sample, reading: &Reading) {
        let now = sample.now;
        let Reading {
            load,
            delay,
            queue,
            clear,
            lossy,
        } = *reading;
        let since_cut = self
            .last_cut
            .map_or(Duration::MAX, |cut| now.duration_since(cut));
        // Pushing: fyntr has more to send than the rate, or moves enough to build a queue. Past
        // a step down the pacer holds nothing back (the sockets' windows are the limit), and
        // what moves is a fraction of the rate.
        let pushing = sample.backlogged || load >= self.config.min_load;
        // The first seconds of pacing: the queue may be what the sockets took while `auto` was
        // off, and the rate was read before the link filled (both used below).
        let starting = now.duration_since(self.paced_since) < STARTUP;
        // Held at the floor with more to send: whatever queue brought the rate there is not
        // fyntr's, however its delay wobbles (a drop-tail queue that another flow keeps full
        // saws up and down, and reads as draining after every cut, so the cuts in a row below
        // never add up). Pacing there only hands that flow the link while the tunnels time
        // out; on a path that is clear the rate grows off the floor within a tick or two. Not
        // in the first seconds of pacing, for the reason the cuts in a row below wait too.
        // Near the floor counts: growing by 1 % a tick between the cuts, two bulk uploads
        // stayed at 1.0-1.12 Mbit/s on an idle 20 Mbit/s uplink for 12 s, cut for a
        // competing download's queue (testbed competing), and never held 1.05 of the floor
        // for 2 s.
        // At the held senders' least share this holds in the first seconds too: the bytes the
        // sockets took before pacing make a queue that a rate far above a crawl is cut for
        // (testbed burst: 30 downloads' first queue, paced at 8-20 Mbit/s), while beside a
        // competing download a crawl of those seconds is what leaves their senders crawling
        // (see `AutoRateConfig::sender_floor`).
        let senders_set_the_floor = self.least_rate > self.config.floor;
        if self.rate <= NEAR_FLOOR * self.least_rate
            && pushing
            && (!starting || senders_set_the_floor)
        {
            self.ticks_at_floor += 1;
            if self.ticks_at_floor >= FLOOR_TICKS {
                self.ticks_at_floor = 0;
                self.pause_for_contention(now);
                self.decision = "pause at floor";
                return;
            }
        } else {
            self.ticks_at_floor = 0;
        }
        // Both directions read one delay. When the opposite direction cut for this queue since
        // this one last did, its cut may be what drains it: wait for that, for
        // [`OPPOSITE_WAIT`] at most, before cutting too. Not for a deep queue: a line that got
        // slower needs both cut at once. Nor for a queue that drops this direction's data: it
        // is this one's (the opposite's may overflow too), and waiting lets it overflow on
        // (testbed burst: an uplink queue stood at 11-12 ms for a second, dropping uploads,
        // while the uploads waited on a download cut; and uploads paced 15 % over a 20 Mbit/s
        // uplink waited 0.7 s while both links dropped data). Nor while this rate is past the
        // one at which the path last queued: the queue is likely its own, and when both
        // directions probe at once, the one that waits fills its buffer (simulated 20/20 line:
        // the waiting direction's link dropped data after nearly every probe). Unless the
        // opposite direction's cut ended a probe further past its own ceiling: that one most
        // likely built the queue (testbed steps: at the start and after a step up, downloads
        // 1.2-2.5 times past their ceilings were cut at once beside uploads 1.7-4.7 times past
        // theirs, and then climbed near the ceiling the cut set, 9-15 Mbit/s of a 20 Mbit/s
        // downlink, for seconds). Nor once two cuts of the opposite direction in a row left
        // the queue standing: it is not the opposite's (testbed burst: the uploads were cut
        // four times in a second for the downlink's queue, full at 13 ms, while the downloads
        // waited on their cuts).
        let opposite_turn = queue
            && delay <= 2 * self.config.bloat
            && self.probe() <= sample.opposite_probe_at_cut
            && sample.opposite_cuts_in_a_row < 2
            && self.drop_bits == 0
            && sample.opposite_cut.is_some_and(|cut| {
                now.saturating_duration_since(cut) < OPPOSITE_WAIT
                    && self.last_cut.is_none_or(|mine| mine < cut)
            });
        let my_turn = !opposite_turn || {
            let since = *self.deferred_since.get_or_insert(now);
            now.duration_since(since) >= OPPOSITE_WAIT
        };
        if my_turn {
            self.deferred_since = None;
        } else {
            self.decision = "opposite's turn";
        }
        // A queue straight after a clear tick, neither deep nor overflowing, waits for the next
        // tick: a round trip of the moment over the threshold between two clear ones is gone
        // before a cut could drain it (testbed steps: a quarter of the cuts at 20 Mbit/s, each
        // taking the rate 10-20 % under the link for the second or more it takes to grow back).
        let standing = !self.clear_before
            || delay > 2 * self.config.bloat
            || lossy
            || sample.dropped == Some(true);
        if queue && standing && pushing && since_cut >= self.config.refractory && my_turn {
            let draining = delay < self.delay_at_cut.mul_f64(0.8);
            if draining {
                // The last cut works; the signal lags behind it.
                self.delay_at_cut = delay;
                self.cuts_in_a_row = 0;
                self.decision = "draining";
                return;
            }
            // The first cut is taken from the best of the last second's delivery, the last
            // ticks' and the last second's median tick (any may dip: a loss recovery, a pause
            // between requests; one tick of a fifth of the rest took a 20 Mbit/s uplink's rate
            // from 18 to 12.6 Mbit/s, testbed steps); a
            // queue that outlasts it, from what moves now (the link got slower), and from no
            // more than the rate: delivery read over a few ticks can run over the link's
            // rate (reports land a tick late), and a cut from it would leave the queue be.
            // In the first seconds of pacing, from what moves now even above the rate: the
            // path then carries the bytes the sockets took before on top of the rate, and
            // cutting the rate for them takes it to the floor within seconds while the queue
            // stands all the same (testbed asymmetric: uploads at 1.4 Mbit/s on a 5 Mbit/s
            // uplink cut to 1.0 in 3 s, then unpaced for 10 s, and the uplink's queue that
            // followed had the downloads cut to 2 Mbit/s of a 40 Mbit/s downlink).
            //
            // A queue past [`DEEP_QUEUE`] is a line that got slower under a full buffer, which
            // keeps the link busy: the cut is taken from what moves now (testbed steps:
            // cut from the last second's 18 Mbit/s when the line stepped to 5, both directions
            // took 0.7 s and three cuts to come under it, and the queue stood at 50-120 ms).
            // Not in the first seconds of pacing: the queue is then the bytes the sockets took
            // before (see below).
            let deep = delay > DEEP_QUEUE && !starting;
            let basis = if deep {
                load.min(self.rate)
            } else if self.cuts_in_a_row == 0 {
                self.second_delivery().max(load).max(self.median_tick())
            } else if starting {
                load
            } else {
                load.min(self.rate)
            };
            let before = self.rate;
            if !self.cut(now, basis, delay, lossy, deep) {
                // The rate is already below what the path delivers: the queue is bytes the
                // sockets took before, and it drains by itself. In the first seconds of pacing
                // that rate was read from the few ticks before the queue showed, while a queue
                // that stands means the path carries what it delivers now: that is the path's
                // rate, which the rate grows back to once the queue has gone. (Testbed burst:
                // the uploads' first rate, from their first 100 ms, was 1.1 Mbit/s of a
                // 20 Mbit/s uplink, and it took 3 s to grow past 1.5. Raising the rate while
                // the queue still stood kept it standing: probes over 15 ms in the burst's
                // first 2 s went from 1-13 to 32-76.)
                if starting {
                    self.ceiling = self.ceiling.max(basis);
                }
                self.decision = "below delivery";
                return;
            }
            if self.cuts_in_a_row > 0 {
                // The queue outlasted a cut: what the path delivered before is no guide, and
                // the last second may still hold it (growing back to it after a step down
                // would fill the queue again).
                self.best = (self.second_delivery().min(load), now);
            } else {
                self.rate_before_cuts = before;
            }
            let opposite_cutting = sample
                .opposite_cut
                .is_some_and(|cut| now.saturating_duration_since(cut) < OPPOSITE_CUT_WINDOW);
            self.cuts_in_a_row += 1;
            // Someone else's queue: cut after cut did not drain it, and they halved the rate
            // (a queue of jitter comes and goes; a slower link drains after a cut or two).
            let halved = self.rate <= 0.5 * self.rate_before_cuts;
            // The opposite direction cutting too may mean the queue is its own, which its cuts
            // drain; twice as many cuts in a row with the queue as full mean it is no queue of
            // fyntr's in either direction (a download beside fyntr's fills the downlink, and
            // the uploads read its delay too).
            // Nor is a queue someone else's while the opposite direction, moving enough to have
            // built it, has not cut in a row itself (it waits for this one's cuts to drain the
            // queue): an upload cut for a downlink's queue until it counted the queue as
            // someone else's and stopped pacing, and the uplink's queue it then built did the
            // same to the download (testbed burst: both unpaced for 10 s, both queues full).
            let opposite_untried = 2.0 * sample.opposite_load >= load
                && sample.opposite_cuts_in_a_row == 0
                && !sample.opposite_contended;
            // Soon after a pause for contention, a queue back at once and not drained by two
            // cuts is the same flow's: back to the pause without first halving the rate (beside
            // a competing download, fyntr's downloads spent seconds at a few Mbit/s after each
            // pause before the rule above let them go).
            let probation = self
                .resumed_at
                .is_some_and(|at| now.duration_since(at) < PROBATION);
            // On probation the opposite direction's cuts do not hold this one back: the pause
            // found the queue someone else's, and it was back at once (beside a competing
            // download both directions cut for its queue, and the downloads, waiting on the
            // uploads' cuts, spent 6-25 s paced down to 1 Mbit/s after each pause).
            let opposite_may_drain = !probation
                && (opposite_cutting || opposite_untried)
                && self.cuts_in_a_row < 2 * self.config.contended_after;
            let someone_elses = if probation {
                self.cuts_in_a_row >= 2
            } else {
                self.cuts_in_a_row >= self.config.contended_after && halved
            };
            // Nor in the first seconds of pacing: the queue is then the bytes the sockets took
            // while `auto` was off (whole initial windows of a burst's new connections, and
            // their unsent bytes), which no cut reaches (testbed asymmetric: a 5 Mbit/s uplink
            // full for the burst's first 8 s, the upload unpaced for 10 s from its second).
            self.decision = "cut";
            if someone_elses && !opposite_may_drain && !starting {
                self.pause_for_contention(now);
                self.decision = "pause";
            }
            return;
        }
        // Between clear and a queue (the jitter of a busy path, or a queue that comes and
        // goes), the rate still grows, by the smallest step only.
        let grey = !clear
            && !queue
            && !lossy
            && sample.queue_delay.is_some()
            && delay <= self.config.bloat;
        if !clear && !grey {
            return;
        }
        if clear {
            self.cuts_in_a_row = 0;
            // The queue the last cut was for has gone: a queue from now on is a new one, not
            // that one draining (a delay under the last cut's read as draining seconds later,
            // and the cut waited a tick while the new queue filled the buffer).
            self.delay_at_cut = Duration::ZERO;
        }
        if since_cut < self.config.hold {
            self.decision = "hold";
            return;
        }
        if !sample.backlogged {
            self.decision = "not held back";
            // Nothing to learn about a rate that fyntr does not use up.
            self.step = self.config.first_step;
            self.step_since = now;
            return;
        }
        // Against the rates in force while that delivery happened: while the rate grows, the
        // delivery averaged over the last ticks trails the rate of now by the growth. A
        // quarter under it, not less: what ACKs report comes in lumps, as a download's queue
        // delays the uploads' ACKs (testbed competing: uploads paced at 15 Mbit/s read
        // 0-15 Mbit/s a tick).
        if load < 0.75 * self.rate_during_load() {
            // Far more is admitted than delivered: the path does not keep up with the rate
            // (the limit is elsewhere), so raising it teaches nothing.
            self.decision = "not keeping up";
            self.step = self.config.first_step;
            self.step_since = now;
            return;
        }
        // Below the best the path delivered lately, and no higher than where it last queued
        // (delivery read over a second runs a little over the link's rate, and growing back
        // to it quickly filled the queue again after every cut): a quarter of the way back per
        // tick.
        let best = 0.95
            * if self.ceiling > 0.0 {
                self.best.0.min(self.ceiling)
            } else {
                self.best.0
            };
        // A delay left to the opposite direction (see `lighter` in `on_tick`) hides whether this
        // one builds a queue of its own: the rate grows as in the grey band, not in steps that
        // double (testbed burst: uploads grew from 18 to 23 Mbit/s on a 20 Mbit/s uplink in
        // 0.6 s while the downlink's queue was read as the downloads').
        let masked = clear && delay >= self.config.clear;
        // Past the rate at which the path last queued, a delay that rises in the grey band is
        // the queue this rate builds: growing on into it fills the buffer before the cut (at
        // the least step, a 20 Mbit/s link's queue rose 4 ms a tick, and the cut came at 13).
        if grey && self.probing() && delay > self.delay_before {
            self.decision = "hold: queue rising";
            return;
        }
        // Past the ceiling, uploads grow only while the path carries nearly all of the rate: a
        // probe teaches something only at a rate in use, and one grown while the sockets sent
        // less (beside busy downloads, whose ACKs the pacer counts against the uploads) lands
        // on the link all at once when they send more (testbed asymmetric: uploads that sent
        // 3.8-4.2 Mbit/s grew from 5.1 to 6.2 in 0.7 s over a 5 Mbit/s uplink with the delay
        // at 2-4 ms, and when the downloads paused the queue reached 43 ms). Downloads are
        // held by the windows fyntr offers, a round trip behind the rate, and deliver 0.8-0.9
        // of a rate that has room to grow (held so, a download on a 20 Mbit/s downlink stayed
        // under 11 Mbit/s for 10 s, testbed burst).
        if !self.config.counts_arrivals
            && self.ceiling > 0.0
            && self.rate >= self.ceiling
            && load < PROBE_IN_USE * self.rate_during_load()
        {
            self.decision = "probe not in use";
            self.step = self.config.first_step;
            self.step_since = now;
            return;
        }
        // Under half of that, a delay between clear and a queue is not this rate's doing.
        if (grey || masked) && self.rate >= 0.5 * best {
            // The smallest step, and the step's doubling goes on where it was.
            self.grow(
                self.rate * (1.0 + self.config.first_step),
                sample,
                "grow by the least",
            );
            return;
        }
        if self.rate < best {
            let grown = (self.rate * (1.0 + self.step)).max(self.rate + 0.25 * (best - self.rate));
            self.grow(grown, sample, "grow to best");
            return;
        }
        // Near the rate at which the path last queued, grow by the smallest step (the queue
        // comes back within a second or so, and the cut it brings is small); away from it, in
        // steps that keep doubling, so that a path that got faster is found within seconds.
        let near_ceiling = self.rate >= 0.92 * self.ceiling && self.rate <= 1.02 * self.ceiling;
        if near_ceiling {
            self.step = self.config.first_step;
            self.step_since = now;
        } else if now.duration_since(self.step_since) >= self.config.step_every {
            self.step = (self.step * 2.0).min(self.config.max_step);
            self.step_since = now;
        }
        let decision = if near_ceiling {
            "grow near ceiling"
        } else {
            "grow"
        };
        self.grow(self.rate * (1.0 + self.step), sample, decision);
    }

    /// Stops pacing for [`AutoRateConfig::contended_pause`]: the queue is someone else's.
    fn pause_for_contention(&mut self, now: Instant) {
        self.mode = Mode::Contended;
        self.contended_until = Some(now + self.config.contended_pause);
    }

    /// Stops pacing until a queue shows again, counted afresh.
    fn turn_off(&mut self) {
        self.mode = Mode::Off;
        self.bloat_bits = 0;
    }

    /// Ends a pause for contention. Pacing tries again just below what moves now (`second`,
    /// the last second's delivery), unless almost nothing moved: then there is no rate to read,
    /// and pacing at the floor would hold back whatever comes next for many seconds (testbed
    /// asymmetric: a burst that resumed at the floor with its tunnels between requests took
    /// 65 s, against 39 s). Off instead: the next queue starts pacing from what moves then.
    fn end_pause(&mut self, now: Instant, second: f64, delay: Duration) {
        self.left_standing = Some(now);
        if second < self.config.min_load {
            self.turn_off();
            self.decision = "pause ends off";
            return;
        }
        self.decision = "resume";
        self.mode = Mode::Paced;
        self.rate = (0.95 * second).max(self.least_rate);
        self.grown_since_cut = false;
        self.probe_at_cut = 0.0;
        self.last_cut = Some(now);
        self.delay_at_cut = delay;
        self.cuts_in_a_row = 0;
        self.ticks_at_floor = 0;
        self.step = self.config.first_step;
        self.step_since = now;
        self.resumed_at = Some(now);
        self.silent_for = Duration::ZERO;
    }

    /// Sets the rate just below `basis` (what the path delivers), the further below the larger
    /// the queue, and for a `deep` queue (past [`DEEP_QUEUE`]) to as little as a quarter of the
    /// rate; returns whether that lowered the rate (a rate already below it is left alone).
    fn cut(&mut self, now: Instant, basis: f64, delay: Duration, lossy: bool, deep: bool) -> bool {
        let bloat = self.config.bloat.as_secs_f64();
        let over = ((delay.as_secs_f64() - bloat) / (2.0 * bloat)).clamp(0.0, 1.0);
        let factor = if lossy && delay <= self.config.bloat {
            0.85
        } else {
            0.95 - 0.1 * over
        };
        let target = factor * basis;
        if target >= self.rate {
            return false;
        }
        self.probe_at_cut = self.probe();
        // What moved when the queue showed, or the rate allowed then if that was less.
        self.ceiling = basis.min(self.rate);
        // At most halved per cut: delivery read during a loss recovery understates the path.
        // Under a deep queue the line got slower, and a quarter of the rate may be what it
        // carries now.
        let least_kept = if deep { 0.25 } else { 0.5 };
        self.rate = target.max(least_kept * self.rate).max(self.least_rate);
        self.grown_since_cut = false;
        self.last_cut = Some(now);
        self.delay_at_cut = delay;
        self.step = self.config.first_step;
        self.step_since = now;
        true
    }

    /// The least rate in force as of the last tick, bytes per second: [`AutoRateConfig::floor`],
    /// or the held senders' least share if that is more.
    pub fn least_rate(&self) -> f64 {
        self.least_rate
    }

    /// When the rate was last cut.
    pub fn last_cut(&self) -> Option<Instant> {
        self.last_cut
    }

    /// Whether this direction's link dropped some of its data in the last [`DROP_TICKS`].
    pub fn dropped_lately(&self) -> bool {
        self.drop_bits != 0
    }

    /// Whether this direction's link dropped some of its data lately and the opposite one's
    /// did not: the queue is this direction's.
    fn only_mine_drops(&self, sample: &Sample) -> bool {
        self.drop_bits != 0 && !sample.opposite_dropped
    }

    /// Cuts in a row that left the queue as it was.
    pub fn cuts_in_a_row(&self) -> u32 {
        self.cuts_in_a_row
    }
}

/// Which of the two directions' controllers (upload, download) takes its tick first: the one
/// cut last. Both read one delay, and a controller waits while the other's fresh cut may drain
/// the queue (see [`AutoRate::on_tick`]), so the first to decide is the first to cut. The one
/// cut last is the one whose cut was needed: a cut that drained the queue left the other
/// uncut, and a cut that did not was followed by the other's. But when the tick's drops
/// (`dropping`, upload and download) name one direction, that one decides first: the queue
/// that overflows is its own (testbed steps: uploads probing past a 20 Mbit/s uplink dropped
/// their data, and the downloads, cut last, cut first and then held at two thirds of theirs).
pub fn first_to_decide(controllers: [&AutoRate; 2], dropping: [bool; 2]) -> usize {
    if dropping[0] != dropping[1] {
        return usize::from(dropping[1]);
    }
    match (controllers[0].last_cut, controllers[1].last_cut) {
        (Some(upload), Some(download)) if download > upload => 1,
        (None, Some(_)) => 1,
        _ => 0,
    }
}

/// Bytes per second over (bytes, seconds) pairs.
/// One tick's delivery, (bytes, seconds), in bytes per second; zero for a tick of no length.
fn per_second((bytes, seconds): (f64, f64)) -> f64 {
    if seconds > 0.0 {
        bytes / seconds
    } else {
        0.0
    }
}

fn average<'a>(ticks: impl IntoIterator<Item = &'a (f64, f64)>) -> f64 {
    let (bytes, seconds) = ticks
        .into_iter()
        .fold((0.0, 0.0), |(b, s), (bytes, secs)| (b + bytes, s + secs));
    if seconds > 0.0 {
        bytes / seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);
    const STEP: Duration = Duration::from_millis(1);
    const MBIT: f64 = 1e6 / 8.0;

    /// A drop-tail router queue in front of a link, as a fluid: fyntr's bytes and another
    /// flow's share it in proportion to what each put in.
    struct Link {
        capacity: f64,
        buffer: f64,
        fyntr_queued: f64,
        other_queued: f64,
        /// Smoothed queueing delay, as a socket's smoothed round trip follows it.
        observed: f64,
        since_delivery: f64,
    }

    /// What the simulation records per tick.
    #[derive(Default)]
    struct Tick {
        delivered: f64,
        queue_delay: f64,
        rate: Option<f64>,
        other_delivered: f64,
    }

    impl Link {
        fn new(megabits: f64) -> Self {
            Self {
                capacity: megabits * MBIT,
                buffer: 32.0 * 1024.0,
                fyntr_queued: 0.0,
                other_queued: 0.0,
                observed: 0.0,
                since_delivery: 0.0,
            }
        }

        fn queued(&self) -> f64 {
            self.fyntr_queued + self.other_queued
        }

        /// One millisecond: offers in, delivery out. Returns (fyntr delivered, fyntr dropped,
        /// other delivered, fyntr offered).
        fn step(&mut self, fyntr_offer: f64, other_offer: f64) -> (f64, f64, f64) {
            let dt = STEP.as_secs_f64();
            let (offer_f, offer_o) = (fyntr_offer * dt, other_offer * dt);
            // What leaves during the step makes room too.
            let space = (self.buffer + self.capacity * dt - self.queued()).max(0.0);
            let keep = if offer_f + offer_o > space {
                space / (offer_f + offer_o)
            } else {
                1.0
            };
            self.fyntr_queued += offer_f * keep;
            self.other_queued += offer_o * keep;
            let dropped = offer_f * (1.0 - keep);
            let out = (self.capacity * dt).min(self.queued());
            let (mut out_f, mut out_o) = (0.0, 0.0);
            if out > 0.0 {
                out_f = out * self.fyntr_queued / self.queued();
                out_o = out - out_f;
                self.fyntr_queued -= out_f;
                self.other_queued -= out_o;
            }
            if out > 0.0 {
                // What the bytes delivered now waited: the queue ahead of them, plus a stall
                // they sat through.
                let waited = self.queued() / self.capacity.max(1.0) + self.since_delivery;
                self.observed += (waited - self.observed) / 20.0;
                self.since_delivery = 0.0;
            } else if self.queued() > 0.0 {
                // Only bytes waiting in a stall wait: a link with nothing to carry holds none.
                self.since_delivery += dt;
            }
            (out_f, dropped, out_o)
        }
    }

    /// What crossed a link in one tick, in bytes.
    #[derive(Default)]
    struct Moved {
        delivered: f64,
        dropped: f64,
        offered: f64,
        other: f64,
        /// Whether the pacer held bytes back.
        backlogged: bool,
    }

    /// What a controller sees of the opposite direction's (none, by default).
    #[derive(Default)]
    struct OppositeView {
        load: f64,
        cut: Option<Instant>,
        cuts_in_a_row: u32,
        contended: bool,
        paced: bool,
        dropped: bool,
        probing: bool,
        holds_turn: bool,
        waiting_since: Option<Instant>,
        probe_at_cut: f64,
    }

    /// fyntr's demand: a backlog that always has more (`None`) or at most this many bytes per
    /// second. Unpaced, a backlogged fyntr keeps the queue full as loss-based TCP does.
    struct Run {
        controller: AutoRate,
        link: Link,
        now: Instant,
        demand: Option<f64>,
        /// Another flow's greedy demand beside fyntr's, when on.
        competitor: bool,
        /// The opposite direction cuts its rate every tick (it reads the same queue).
        opposite_cutting: bool,
        /// No socket reports the delay (downloads running alone).
        silent: bool,
        ticks: Vec<Tick>,
    }

    impl Run {
        fn new(megabits: f64) -> Self {
            Self::starting_at(megabits, Instant::now())
        }

        /// A run on a line of `megabits` that `ticks` of a greedy backlog left paced.
        fn paced(megabits: f64, ticks: usize) -> Self {
            let mut run = Self::new(megabits);
            run.run(ticks, 0..0);
            assert_eq!(run.controller.mode(), Mode::Paced);
            run
        }

        /// Runs `ticks` ticks with nothing to send.
        fn idle(&mut self, ticks: usize) {
            self.demand = Some(0.0);
            self.run(ticks, 0..0);
        }

        fn starting_at(megabits: f64, now: Instant) -> Self {
            Self {
                controller: AutoRate::new(AutoRateConfig::default(), now),
                link: Link::new(megabits),
                now,
                demand: None,
                competitor: false,
                opposite_cutting: false,
                silent: false,
                ticks: Vec::new(),
            }
        }

        fn greedy_offer(&self) -> f64 {
            // Enough to keep the queue full: what leaves, plus what the buffer has room for.
            self.link.capacity * 1.02 + (self.link.buffer - self.link.queued()).max(0.0) * 10.0
        }

        /// Runs `ticks` ticks of 100 ms.
        fn run(&mut self, ticks: usize, stall_ticks: std::ops::Range<usize>) {
            for _ in 0..ticks {
                let stalled = stall_ticks.contains(&self.ticks.len());
                let moved = self.move_tick(stalled);
                let queue_delay = (moved.delivered > 0.0 && !self.silent)
                    .then(|| Duration::from_secs_f64(self.link.observed));
                let opposite_cut = self.opposite_cutting.then_some(self.now);
                let opposite = OppositeView {
                    cut: opposite_cut,
                    ..OppositeView::default()
                };
                self.decide(&moved, queue_delay, &opposite);
            }
        }

        /// Runs tick by tick until `done` holds of the controller; `what` has not happened if
        /// `limit` ticks have run in all first.
        fn run_until(&mut self, done: impl Fn(&AutoRate) -> bool, limit: usize, what: &str) {
            while !done(&self.controller) {
                self.run(1, 0..0);
                assert!(self.ticks.len() < limit, "{what}");
            }
        }

        /// One tick of traffic through the link at the rate in force; the clock moves on.
        fn move_tick(&mut self, stalled: bool) -> Moved {
            let rate = self.controller.rate().map(Rate::bytes_per_second);
            let mut moved = Moved::default();
            let capacity = self.link.capacity;
            if stalled {
                self.link.capacity = 0.0;
            }
            for _ in 0..(TICK.as_millis() / STEP.as_millis()) {
                // TCP's own limit: what keeps the queue full. The pacer holds bytes back
                // only where it is below both that and the demand; above them the
                // sockets' windows are the limit and the pacer sees no backlog.
                let tcp = self.greedy_offer();
                let wanted = self.demand.map_or(tcp, |demand| demand.min(tcp));
                let offer = match rate {
                    Some(rate) => {
                        moved.backlogged |= wanted > rate / WIRE_PER_PAYLOAD;
                        wanted.min(rate / WIRE_PER_PAYLOAD)
                    }
                    None => wanted,
                };
                let other_offer = if self.competitor {
                    self.greedy_offer()
                } else {
                    0.0
                };
                let (out, drop, out_other) = self.link.step(offer, other_offer);
                moved.delivered += out;
                moved.dropped += drop;
                moved.offered += offer * STEP.as_secs_f64();
                moved.other += out_other;
            }
            self.link.capacity = capacity;
            self.now += TICK;
            moved
        }

        /// The controller's answer to a tick of traffic, given the delay it reads and what
        /// the opposite direction does; the tick is recorded.
        fn decide(
            &mut self,
            moved: &Moved,
            queue_delay: Option<Duration>,
            opposite: &OppositeView,
        ) {
            let sample = Sample {
                now: self.now,
                interval: TICK,
                delivered: moved.delivered as u64,
                acks: 0,
                queue_delay,
                loss: (moved.offered > 0.0).then(|| moved.dropped / moved.offered),
                backlogged: moved.backlogged,
                opposite_load: opposite.load,
                opposite_cut: opposite.cut,
                opposite_cuts_in_a_row: opposite.cuts_in_a_row,
                opposite_contended: opposite.contended,
                opposite_paced: opposite.paced,
                opposite_starting: false,
                opposite_probing: opposite.probing,
                opposite_holds_turn: opposite.holds_turn,
                opposite_waiting_since: opposite.waiting_since,
                opposite_probe_at_cut: opposite.probe_at_cut,
                dropped: (moved.offered > 0.0).then_some(moved.dropped > 0.0),
                opposite_dropped: opposite.dropped,
                held_senders: 0,
            };
            let rate = self.controller.on_tick(&sample).map(Rate::bytes_per_second);
            if std::env::var_os("AUTORATE_TRACE").is_some() {
                eprintln!(
                    "{} {:?} {} rate {:?} delivered {:.2} delay {:.1} ms backlogged {} loss {:.3}",
                    self.ticks.len(),
                    self.controller.mode(),
                    self.controller.decision(),
                    rate.map(|r| r / MBIT),
                    moved.delivered / MBIT / TICK.as_secs_f64(),
                    queue_delay.unwrap_or_default().as_secs_f64() * 1e3,
                    moved.backlogged,
                    sample.loss.unwrap_or(0.0),
                );
            }
            self.ticks.push(Tick {
                delivered: moved.delivered,
                queue_delay: queue_delay.map_or(self.link.observed, |delay| delay.as_secs_f64()),
                rate,
                other_delivered: moved.other,
            });
        }

        /// Utilisation of the link by fyntr over ticks `range`, at `megabits`.
        fn utilisation(&self, range: std::ops::Range<usize>, megabits: f64) -> f64 {
            let ticks = &self.ticks[range];
            let bytes: f64 = ticks.iter().map(|t| t.delivered).sum();
            bytes / (megabits * MBIT * TICK.as_secs_f64() * ticks.len() as f64)
        }

        /// fyntr's share of what the link carried for it and the competing flow over ticks
        /// `range`.
        fn share_beside_competitor(&self, range: std::ops::Range<usize>) -> f64 {
            let ticks = &self.ticks[range];
            let mine: f64 = ticks.iter().map(|t| t.delivered).sum();
            let theirs: f64 = ticks.iter().map(|t| t.other_delivered).sum();
            mine / (mine + theirs)
        }

        /// The 99th percentile of the queueing delay over ticks `range`, in milliseconds.
        fn delay_p99_ms(&self, range: std::ops::Range<usize>) -> f64 {
            let mut delays: Vec<f64> = self.ticks[range].iter().map(|t| t.queue_delay).collect();
            delays.sort_by(f64::total_cmp);
            delays[(delays.len() * 99 / 100).min(delays.len() - 1)] * 1e3
        }
    }

    /// Both directions of one path, each with its link and controller. A round trip crosses
    /// both queues, so both controllers read the sum of the two delays.
    struct Duplex {
        /// Upload, download.
        ways: [Run; 2],
    }

    impl Duplex {
        fn new(up_megabits: f64, down_megabits: f64) -> Self {
            let now = Instant::now();
            Self {
                ways: [
                    Run::starting_at(up_megabits, now),
                    Run::starting_at(down_megabits, now),
                ],
            }
        }

        fn run(&mut self, ticks: usize) {
            for _ in 0..ticks {
                let moved = [self.ways[0].move_tick(false), self.ways[1].move_tick(false)];
                let delay = Duration::from_secs_f64(
                    self.ways[0].link.observed + self.ways[1].link.observed,
                );
                let first = first_to_decide(
                    [&self.ways[0].controller, &self.ways[1].controller],
                    [moved[0].dropped > 0.0, moved[1].dropped > 0.0],
                );
                for way in [first, 1 - first] {
                    let opposite = &self.ways[1 - way].controller;
                    let opposite = OppositeView {
                        load: opposite.delivery(),
                        cut: opposite.last_cut(),
                        cuts_in_a_row: opposite.cuts_in_a_row(),
                        contended: opposite.mode() == Mode::Contended,
                        paced: opposite.mode() == Mode::Paced,
                        dropped: opposite.dropped_lately(),
                        probing: opposite.probing(),
                        holds_turn: opposite.holds_turn(),
                        waiting_since: opposite.waiting_since(),
                        probe_at_cut: opposite.probe_at_cut(),
                    };
                    let delay = (moved[way].delivered > 0.0).then_some(delay);
                    self.ways[way].decide(&moved[way], delay, &opposite);
                }
            }
        }
    }

    #[test]
    fn it_converges_below_a_full_link_and_keeps_the_queue_short() {
        let mut run = Run::new(20.0);
        run.run(300, 0..0);
        assert_eq!(run.controller.mode(), Mode::Paced);
        let utilisation = run.utilisation(50..300, 20.0);
        let p99 = run.delay_p99_ms(50..300);
        assert!(utilisation >= 0.85, "utilisation {utilisation:.2}");
        assert!(p99 <= 10.0, "queueing delay p99 {p99:.1} ms");
    }

    #[test]
    fn it_tracks_a_rate_that_steps_down_and_up() {
        let mut run = Run::new(20.0);
        run.run(300, 0..0);
        run.link.capacity = 5.0 * MBIT;
        run.run(300, 0..0);
        run.link.capacity = 20.0 * MBIT;
        run.run(300, 0..0);
        // Drained within 2 s of the step down.
        let drained = run.ticks[300..]
            .iter()
            .position(|t| t.queue_delay < 0.005)
            .expect("the queue drains");
        assert!(drained <= 20, "drained after {drained} ticks");
        // 90 % of the new rate within 10 s of the step up.
        let ramped = run.ticks[600..]
            .iter()
            .position(|t| t.delivered >= 0.9 * 20.0 * MBIT * TICK.as_secs_f64())
            .expect("the rate grows back");
        assert!(ramped <= 100, "90 % of the rate after {ramped} ticks");
        for (phase, megabits) in [(320..600, 5.0), (660..900, 20.0)] {
            let utilisation = run.utilisation(phase.clone(), megabits);
            let p99 = run.delay_p99_ms(phase.clone());
            assert!(
                utilisation >= 0.8,
                "{phase:?}: utilisation {utilisation:.2}"
            );
            assert!(p99 <= 15.0, "{phase:?}: queueing delay p99 {p99:.1} ms");
        }
    }

    #[test]
    fn a_competing_flow_that_fills_the_queue_does_not_push_it_to_the_floor() {
        let mut run = Run::new(20.0);
        run.run(100, 0..0);
        run.competitor = true;
        run.run(600, 0..0);
        let share = run.share_beside_competitor(200..700);
        assert!(
            share >= 0.3,
            "fyntr's share beside the other flow: {share:.2}"
        );
        let floored = run.ticks[200..700]
            .iter()
            .filter(|t| t.rate.is_some_and(|rate| rate <= 125_000.0))
            .count();
        assert_eq!(floored, 0, "ticks at the floor");
        // The other flow leaves: the queue is fyntr's again, and pacing keeps it short.
        run.competitor = false;
        run.run(300, 0..0);
        assert_eq!(run.controller.mode(), Mode::Paced);
        let p99 = run.delay_p99_ms(900..1000);
        assert!(
            p99 <= 12.0,
            "queueing delay p99 {p99:.1} ms once alone again"
        );
    }

    #[test]
    fn a_competing_flow_does_not_starve_it_while_both_directions_cut() {
        // A download beside fyntr's fills the downlink queue. A round trip crosses both
        // queues, so fyntr's upload reads the same delay and cuts as well; that must not keep
        // the download from seeing that the queue is not fyntr's.
        let mut run = Run::new(20.0);
        run.run(100, 0..0);
        run.competitor = true;
        run.opposite_cutting = true;
        run.run(600, 0..0);
        let share = run.share_beside_competitor(200..700);
        assert!(
            share >= 0.3,
            "fyntr's share beside the other flow: {share:.2}"
        );
    }

    /// A tick in which fyntr, with more to send, delivers what it paces at (`rate`, bytes per
    /// second; 10 Mbit/s at most and when unpaced) through a queue of `delay_ms`, beside an
    /// opposite direction that moves `opposite_load` and never cuts.
    fn steady_tick(now: Instant, rate: Option<f64>, delay_ms: u64, opposite_load: f64) -> Sample {
        Sample {
            now,
            interval: TICK,
            delivered: (rate.unwrap_or(f64::MAX).min(10.0 * MBIT) * TICK.as_secs_f64()
                / WIRE_PER_PAYLOAD) as u64,
            acks: 0,
            queue_delay: Some(Duration::from_millis(delay_ms)),
            loss: Some(0.0),
            backlogged: true,
            opposite_load,
            opposite_cut: None,
            opposite_cuts_in_a_row: 0,
            opposite_contended: false,
            opposite_paced: true,
            opposite_starting: false,
            opposite_probing: false,
            opposite_holds_turn: false,
            opposite_waiting_since: None,
            opposite_probe_at_cut: 0.0,
            dropped: None,
            opposite_dropped: false,
            held_senders: 0,
        }
    }

    /// Whether a tick cut the rate: paced before and after it, and lower after.
    fn lowered(before: Option<f64>, after: Option<f64>) -> bool {
        before
            .zip(after)
            .is_some_and(|(before, after)| after < before)
    }

    /// Cuts a controller makes under a queue that never drains ([`steady_tick`]s) before it
    /// counts the queue as someone else's.
    fn cuts_under_a_queue_that_stays(opposite_load: f64) -> Option<usize> {
        let start = Instant::now();
        let mut controller = AutoRate::new(AutoRateConfig::default(), start);
        let mut cuts = 0;
        // A queue starts pacing, a clear path outlasts the first seconds of pacing, then the
        // queue comes back to stay.
        let clear = 4..=60u32;
        for tick in 1..=400u32 {
            let before = controller.rate().map(Rate::bytes_per_second);
            let delay = if clear.contains(&tick) { 0 } else { 20 };
            let sample = steady_tick(start + TICK * tick, before, delay, opposite_load);
            let after = controller.on_tick(&sample).map(Rate::bytes_per_second);
            if controller.mode() == Mode::Contended {
                return Some(cuts);
            }
            if tick > *clear.end() && lowered(before, after) {
                cuts += 1;
            }
        }
        None
    }

    /// Ticks before a paced controller cuts for a 10 ms queue that the opposite direction cut
    /// for just before, with each direction's link dropping its data or not.
    fn ticks_to_cut_after_the_opposite_cut(
        dropping: bool,
        opposite_dropping: bool,
        opposite_cuts_in_a_row: u32,
    ) -> Option<u32> {
        let start = Instant::now();
        let mut controller = AutoRate::new(AutoRateConfig::default(), start);
        for tick in 1..=60u32 {
            let before = controller.rate().map(Rate::bytes_per_second);
            let delay = if tick <= 3 { 20 } else { 0 };
            // Nothing held back once paced: the rate stays under the one at which the path
            // queued (a rate probing past it does not wait for the opposite direction).
            let sample = Sample {
                backlogged: tick <= 3,
                ..steady_tick(start + TICK * tick, before, delay, 0.0)
            };
            controller.on_tick(&sample);
        }
        let queue_at = start + TICK * 60;
        ticks_to_cut_beside_an_opposite_cut(&mut controller, queue_at, queue_at, |sample| Sample {
            opposite_cuts_in_a_row,
            dropped: Some(dropping),
            opposite_dropped: opposite_dropping,
            ..sample
        })
    }

    /// Ticks, from `now` on, before `controller` cuts for a 10 ms queue that the opposite
    /// direction cut for at `opposite_cut`, each tick's sample shaped by `shape`.
    fn ticks_to_cut_beside_an_opposite_cut(
        controller: &mut AutoRate,
        mut now: Instant,
        opposite_cut: Instant,
        shape: impl Fn(Sample) -> Sample,
    ) -> Option<u32> {
        for tick in 1..=20u32 {
            now += TICK;
            let before = controller.rate().map(Rate::bytes_per_second);
            let sample = shape(Sample {
                opposite_cut: Some(opposite_cut),
                ..steady_tick(now, before, 10, 0.0)
            });
            let after = controller.on_tick(&sample).map(Rate::bytes_per_second);
            if lowered(before, after) {
                return Some(tick);
            }
        }
        None
    }

    #[test]
    fn a_queue_that_drops_only_this_directions_data_is_cut_without_waiting_for_the_opposite() {
        // Not dropping: the opposite direction's cut may drain the queue; wait for it (half a
        // second).
        let waited = ticks_to_cut_after_the_opposite_cut(false, false, 1).expect("cut at last");
        assert!(waited >= 5, "cut after {waited} ticks");
        // Dropping its own data: the queue is this direction's. (The first tick reads the
        // queue as draining: it is shorter than at the cut that started pacing.)
        let at_once = ticks_to_cut_after_the_opposite_cut(true, false, 1).expect("cut");
        assert!(at_once <= 2, "cut after {at_once} ticks");
        // However much the opposite direction's link drops too: its queue may overflow beside
        // this one's.
        let both = ticks_to_cut_after_the_opposite_cut(true, true, 1).expect("cut");
        assert!(both <= 2, "cut after {both} ticks");
    }

    #[test]
    fn a_queue_that_two_cuts_of_the_opposite_direction_left_standing_is_not_left_to_it() {
        let waited = ticks_to_cut_after_the_opposite_cut(false, false, 2).expect("cut");
        assert!(waited <= 2, "cut after {waited} ticks");
    }

    /// A controller paced at `rate` (bytes per second) on a clear path, past its hold and its
    /// first seconds of pacing, and the time of its last tick.
    fn paced_at(rate: f64) -> (AutoRate, Instant) {
        let start = Instant::now();
        let mut controller = AutoRate::new(AutoRateConfig::default(), start);
        let mut now = start;
        for tick in 1..=80u32 {
            now = start + TICK * tick;
            // The queue that started pacing was as deep as the ones the tests show it next
            // (a shallower one would read as the first cut's queue draining).
            let delay = if tick <= 3 { 12 } else { 0 };
            // Nothing held back once paced: the rate stays where the first cut set it.
            let sample = Sample {
                backlogged: tick <= 3,
                ..steady_tick(now, Some(rate), delay, 0.0)
            };
            controller.on_tick(&sample);
        }
        assert_eq!(controller.mode(), Mode::Paced);
        (controller, now)
    }

    /// A controller [`paced_at`] 8 Mbit/s that clear ticks with more to send grew past the rate
    /// at which its path queued: probing. Returns it and the time of its last tick.
    fn probing_past_its_ceiling() -> (AutoRate, Instant) {
        let (mut controller, mut now) = paced_at(8.0 * MBIT);
        let mut ticks = 0;
        while !controller.probing() {
            now += TICK;
            let rate = controller.rate().map(Rate::bytes_per_second);
            controller.on_tick(&steady_tick(now, rate, 0, 0.0));
            ticks += 1;
            assert!(ticks < 100, "never grew past the ceiling");
        }
        (controller, now)
    }

    /// The highest rate, as a share of its ceiling, that `ticks` clear ticks with more to send
    /// take a controller [`paced_at`] 8 Mbit/s to (its delivery counted where the bytes arrive
    /// if `counts_arrivals`), each tick's sample made by `sample` from the tick's time and the
    /// rate in force.
    fn highest_probe(
        counts_arrivals: bool,
        ticks: usize,
        sample: impl Fn(Instant, f64) -> Sample,
    ) -> f64 {
        let (mut controller, mut now) = paced_at(8.0 * MBIT);
        controller.config.counts_arrivals = counts_arrivals;
        let ceiling = controller.ceiling;
        let mut highest: f64 = 0.0;
        for _ in 0..ticks {
            now += TICK;
            let rate = controller.rate().expect("paced").bytes_per_second();
            controller.on_tick(&sample(now, rate));
            highest = highest.max(controller.rate().expect("paced").bytes_per_second());
        }
        highest / ceiling
    }

    /// [`highest_probe`] over 5 s, the path delivering `share` of the rate.
    fn probe_delivering(share: f64, counts_arrivals: bool) -> f64 {
        highest_probe(counts_arrivals, 50, |now, rate| {
            steady_tick(now, Some(share * rate), 0, 0.0)
        })
    }

    #[test]
    fn an_upload_probe_past_its_ceiling_grows_on_only_while_the_rate_is_in_use() {
        let unused = probe_delivering(0.8, false);
        assert!(
            unused <= 1.02,
            "uploads sending 80 % of the rate: {unused:.3}"
        );
        let used = probe_delivering(1.0, false);
        assert!(used > 1.3, "uploads using the rate: {used:.3}");
        // Downloads deliver a round trip behind the windows offered: they grow on.
        let downloads = probe_delivering(0.8, true);
        assert!(downloads > 1.3, "downloads: {downloads:.3}");
    }

    /// [`highest_probe`] over 3 s, beside an opposite direction that has waited for its turn
    /// to probe since before them, or not.
    fn probe_beside_an_opposite_that_waits(opposite_waits: bool) -> f64 {
        let opposite_waiting_since = opposite_waits.then(Instant::now);
        highest_probe(false, 30, |now, rate| Sample {
            opposite_waiting_since,
            ..steady_tick(now, Some(rate), 0, 0.0)
        })
    }

    #[test]
    fn a_direction_that_waited_for_its_turn_to_probe_first_goes_first() {
        let alone = probe_beside_an_opposite_that_waits(false);
        assert!(alone > 1.05, "no one waits: {alone:.3}");
        let behind = probe_beside_an_opposite_that_waits(true);
        assert!(behind <= 1.0, "the opposite asked first: {behind:.3}");
    }

    /// Whether `controller`, [`probing_past_its_ceiling`] from `now`, cuts within 3 s for a
    /// queue that drops only the opposite direction's data, which moves a little more than it
    /// and does not probe; paced or not, as `opposite_paced` says.
    fn cuts_for_a_queue_that_drops_only_an_opposite_not_probing(opposite_paced: bool) -> bool {
        let (mut controller, mut now) = probing_past_its_ceiling();
        (0..30).any(|_| {
            now += TICK;
            let before = controller.rate().map(Rate::bytes_per_second);
            let sample = Sample {
                dropped: Some(false),
                opposite_dropped: true,
                opposite_paced,
                ..steady_tick(now, before, 13, 10.0 * MBIT)
            };
            let after = controller.on_tick(&sample).map(Rate::bytes_per_second);
            lowered(before, after)
        })
    }

    #[test]
    fn an_opposite_direction_that_is_not_paced_takes_no_turn_to_probe() {
        // Beside a competing download, the downloads paused: the queue that drops them is the
        // competitor's, not the probing uploads' by turn.
        assert!(!cuts_for_a_queue_that_drops_only_an_opposite_not_probing(
            false
        ));
        // A paced opposite that does not probe leaves the queue to the direction that does.
        assert!(cuts_for_a_queue_that_drops_only_an_opposite_not_probing(
            true
        ));
    }

    /// Ten ticks of a 20 ms queue over unpaced traffic of 10 Mbit/s shared by `held_senders`;
    /// returns the mode they leave the controller in.
    fn mode_after_a_queue_shared_by(held_senders: u32) -> Mode {
        let start = Instant::now();
        let mut controller = AutoRate::new(AutoRateConfig::default(), start);
        for tick in 1..=10u32 {
            controller.on_tick(&Sample {
                held_senders,
                ..steady_tick(start + TICK * tick, None, 20, 0.0)
            });
        }
        controller.mode()
    }

    #[test]
    fn senders_that_each_deliver_under_the_least_share_do_not_start_pacing() {
        // 120 downloads moving 10 Mbit/s get 83 kbit/s each: the queue is someone else's.
        assert_eq!(mode_after_a_queue_shared_by(120), Mode::Off);
        assert_eq!(mode_after_a_queue_shared_by(30), Mode::Paced);
    }

    #[test]
    fn a_rate_shared_by_held_senders_is_never_cut_under_their_least_share() {
        let (mut controller, mut now) = paced_at(8.0 * MBIT);
        let held_senders = 60;
        // 100 kbit/s each.
        let least = f64::from(held_senders) * 0.1 * MBIT;
        for _ in 0..100 {
            now += TICK;
            let rate = controller.rate().map(Rate::bytes_per_second);
            controller.on_tick(&Sample {
                held_senders,
                ..steady_tick(now, rate, 20, 0.0)
            });
            if let Some(rate) = controller.rate() {
                assert!(rate.bytes_per_second() >= least, "{rate:?}");
            }
        }
        // Held there with a queue standing, the queue is someone else's.
        assert_eq!(controller.mode(), Mode::Contended);
    }

    #[test]
    fn a_rate_held_at_the_senders_least_share_pauses_within_the_first_seconds() {
        // 60 downloads beside a flow that keeps the queue standing: pacing starts, is cut to
        // their least share (6 Mbit/s), and stops there before its first seconds are over.
        let start = Instant::now();
        let mut controller = AutoRate::new(AutoRateConfig::default(), start);
        let mut paced_at = None;
        for tick in 1..=80u32 {
            let now = start + TICK * tick;
            let rate = controller.rate().map(Rate::bytes_per_second);
            controller.on_tick(&Sample {
                held_senders: 60,
                ..steady_tick(now, rate, 20, 0.0)
            });
            match controller.mode() {
                Mode::Paced => {
                    paced_at.get_or_insert(now);
                }
                Mode::Contended => {
                    let paced_for = now.duration_since(paced_at.expect("paced first"));
                    assert!(paced_for < STARTUP, "paced for {paced_for:?}");
                    return;
                }
                Mode::Off | Mode::Starting => {}
            }
        }
        panic!("never paused: {:?}", controller.mode());
    }

    #[test]
    fn a_probe_stops_growing_into_a_rising_delay() {
        let (mut controller, mut now) = probing_past_its_ceiling();
        // A delay that rises between clear and a queue: the probe's own queue building.
        for delay_ms in [4, 5, 6] {
            now += TICK;
            let before = controller.rate().map(Rate::bytes_per_second);
            let after = controller
                .on_tick(&steady_tick(now, before, delay_ms, 0.0))
                .map(Rate::bytes_per_second);
            assert_eq!(after, before, "at {delay_ms} ms");
        }
    }

    #[test]
    fn a_rate_that_a_cut_could_only_halve_is_no_probe() {
        let (mut controller, mut now) = paced_at(16.0 * MBIT);
        // The path slows to 4 Mbit/s under a queue that stays: the second cut, from what
        // moves now, may only halve the rate, which stays over the ceiling the cut set.
        let mut over_the_ceiling = false;
        for _ in 0..10 {
            now += TICK;
            controller.on_tick(&steady_tick(now, Some(4.0 * MBIT), 12, 0.0));
            if controller.rate > controller.ceiling {
                over_the_ceiling = true;
                // Taken for a probe, it would keep the opposite direction from its turn
                // and take the queue for its own.
                assert!(!controller.probing(), "a cut rate read as a probe");
            }
        }
        assert!(over_the_ceiling, "no cut was held to half the rate");
    }

    /// Ticks before a direction probing just past its ceiling cuts for a 10 ms queue, when the
    /// opposite direction cut as it showed, `opposite_probe_at_cut` past its own ceiling.
    fn ticks_to_cut_beside_a_probe_cut(opposite_probe_at_cut: f64) -> Option<u32> {
        let (mut controller, now) = probing_past_its_ceiling();
        ticks_to_cut_beside_an_opposite_cut(&mut controller, now, now + TICK / 2, |sample| Sample {
            opposite_cuts_in_a_row: 1,
            opposite_probe_at_cut,
            ..sample
        })
    }

    #[test]
    fn of_two_probes_the_one_further_past_its_ceiling_is_taken_for_the_queue() {
        // The opposite direction probed twice as far past its ceiling: its cut most likely
        // drains the queue, and this one waits on it (half a second).
        let waited = ticks_to_cut_beside_a_probe_cut(2.0).expect("cut at last");
        assert!(waited >= 5, "cut after {waited} ticks");
        // The opposite direction's cut ended no probe: the queue is this probe's own.
        let at_once = ticks_to_cut_beside_a_probe_cut(0.0).expect("cut");
        assert!(at_once <= 2, "cut after {at_once} ticks");
    }

    #[test]
    fn a_round_trip_over_the_threshold_between_two_clear_ticks_is_not_cut() {
        let rate = 10.0 * MBIT;
        let (mut controller, mut now) = paced_at(rate);
        let mut tick = |controller: &mut AutoRate, delay_ms| {
            now += TICK;
            let before = controller.rate().map(Rate::bytes_per_second);
            let after = controller
                .on_tick(&steady_tick(now, before, delay_ms, 0.0))
                .map(Rate::bytes_per_second);
            lowered(before, after)
        };
        assert!(!tick(&mut controller, 12), "cut for one tick's round trip");
        assert!(!tick(&mut controller, 0));
        // A queue that stands is cut on its second tick.
        assert!(!tick(&mut controller, 12));
        assert!(tick(&mut controller, 12), "a standing queue was not cut");
    }

    #[test]
    fn the_first_cut_is_not_taken_from_a_ticks_dip() {
        let rate = 10.0 * MBIT;
        let (mut controller, mut now) = paced_at(rate);
        // The path delivers the rate, but for the last two ticks of the second (a loss
        // recovery, reports of a few sockets): then a queue stands.
        for tick in 1..=10u32 {
            now += TICK;
            let share = if tick >= 9 { 0.2 } else { 1.0 };
            let sample = steady_tick(now, Some(share * rate), 0, 0.0);
            controller.on_tick(&sample);
        }
        let before = controller.rate().map(Rate::bytes_per_second).unwrap();
        for _ in 0..2 {
            now += TICK;
            controller.on_tick(&steady_tick(now, Some(rate), 12, 0.0));
        }
        let after = controller.rate().map(Rate::bytes_per_second).unwrap();
        assert!(after < before, "no cut");
        assert!(
            after >= 0.9 * rate,
            "cut to {:.2} of what the path delivers",
            after / rate
        );
    }

    #[test]
    fn the_direction_whose_data_the_tick_dropped_decides_first() {
        let start = Instant::now();
        let upload = AutoRate::new(AutoRateConfig::default(), start);
        let mut download = AutoRate::new(AutoRateConfig::default(), start);
        download.last_cut = Some(start);
        // The download was cut last: it decides first, unless only the upload dropped data.
        assert_eq!(first_to_decide([&upload, &download], [false, false]), 1);
        assert_eq!(first_to_decide([&upload, &download], [true, true]), 1);
        assert_eq!(first_to_decide([&upload, &download], [true, false]), 0);
        assert_eq!(first_to_decide([&upload, &download], [false, true]), 1);
    }

    #[test]
    fn a_delay_left_to_the_opposite_direction_does_not_let_the_rate_double_its_steps() {
        let rate = 10.0 * MBIT;
        let (mut controller, mut now) = paced_at(rate);
        let start = controller.rate().map(Rate::bytes_per_second).unwrap();
        // The downlink's queue drops downloads, not uploads: the upload leaves the delay to
        // the download, and fyntr has more to upload than the rate.
        for _ in 0..20 {
            now += TICK;
            let before = controller.rate().map(Rate::bytes_per_second);
            let sample = Sample {
                dropped: Some(false),
                opposite_dropped: true,
                ..steady_tick(now, before, 10, 0.0)
            };
            controller.on_tick(&sample);
        }
        let grown = controller.rate().map(Rate::bytes_per_second).unwrap() / start;
        assert!(grown > 1.0, "the rate did not grow");
        assert!(
            grown <= 1.25,
            "grew {grown:.2}x in 2 s with its own queue hidden"
        );
    }

    #[test]
    fn a_first_rate_read_before_the_link_filled_grows_back_to_what_a_standing_queue_delivered() {
        // A burst's first tick delivers a little, and shows a queue: pacing starts far below
        // the link. The sockets' own bytes then keep the queue standing for a second while the
        // link delivers its full rate, the path's rate; then the delay falls to between clear
        // and a queue while those bytes go.
        let link = 10.0 * MBIT;
        let start = Instant::now();
        let mut controller = AutoRate::new(AutoRateConfig::default(), start);
        for tick in 1..=25u32 {
            let rate = controller.rate().map(Rate::bytes_per_second);
            let (delivered, delay) = match tick {
                1 => (Some(0.15 * link), 20),
                2..=10 => (Some(link), 20),
                _ => (rate, 5),
            };
            controller.on_tick(&steady_tick(start + TICK * tick, delivered, delay, 0.0));
        }
        // Half of it at once (then by the smallest step while the delay is between clear and
        // a queue): at the smallest step from the first rate, 0.15 of the link.
        let rate = controller.rate().expect("paced").bytes_per_second();
        assert!(
            rate >= 0.45 * link,
            "{:.1} Mbit/s 1.5 s after the queue went",
            rate / MBIT
        );
    }

    #[test]
    fn a_queue_in_the_first_seconds_of_pacing_is_not_someone_elses() {
        // The bytes the sockets took while `auto` was off make a queue that no cut reaches,
        // whether pacing starts from a busy link or at the floor.
        for first_delivery in [None, Some(1.1 * MBIT)] {
            let start = Instant::now();
            let mut controller = AutoRate::new(AutoRateConfig::default(), start);
            let mut paced_at = None;
            let contended_at = (1..=100u32).find_map(|tick| {
                let now = start + TICK * tick;
                let before = controller.rate().map(Rate::bytes_per_second);
                let delivery = if tick == 1 { first_delivery } else { before };
                controller.on_tick(&steady_tick(now, delivery, 20, 0.0));
                if controller.mode() == Mode::Paced {
                    paced_at.get_or_insert(now);
                }
                (controller.mode() == Mode::Contended).then_some(now)
            });
            let contended_at =
                contended_at.expect("a queue that stays is someone else's after the first seconds");
            let paced_for = contended_at.duration_since(paced_at.expect("paced first"));
            assert!(
                paced_for >= Duration::from_secs(5),
                "someone else's after {paced_for:?} of pacing, starting at {first_delivery:?}"
            );
        }
    }

    #[test]
    fn a_queue_that_stands_in_the_first_seconds_while_the_path_carries_more_than_the_rate_is_not_cut_to_the_floor(
    ) {
        // Pacing starts from a burst's first 100 ms, and a dip in delivery below the rate
        // brings a second cut; then the queue of the bytes the sockets took before stands
        // for 4 s while the link carries 10 Mbit/s.
        let link = 10.0 * MBIT;
        let start = Instant::now();
        let mut controller = AutoRate::new(AutoRateConfig::default(), start);
        controller.on_tick(&steady_tick(start + TICK, Some(0.3 * link), 40, 0.0));
        let first = controller.rate().expect("paced").bytes_per_second();
        let mut tick = 1;
        while controller.cuts_in_a_row() == 0 {
            tick += 1;
            assert!(tick < 20, "no second cut");
            let dip = Some(0.5 * controller.rate().expect("paced").bytes_per_second());
            controller.on_tick(&steady_tick(start + TICK * tick, dip, 40, 0.0));
        }
        let cut = controller.rate().expect("paced").bytes_per_second();
        for _ in 0..40 {
            tick += 1;
            controller.on_tick(&steady_tick(start + TICK * tick, Some(link), 40, 0.0));
            assert_eq!(controller.mode(), Mode::Paced, "{tick} ticks in");
        }
        let rate = controller.rate().expect("paced").bytes_per_second();
        assert!(
            rate >= cut,
            "{:.2} Mbit/s first, {:.2} after the second cut, {:.2} 4 s later",
            first / MBIT,
            cut / MBIT,
            rate / MBIT
        );
    }

    #[test]
    fn a_queue_the_opposite_direction_may_have_built_takes_more_cuts_to_count_as_someone_elses() {
        let contended_after = AutoRateConfig::default().contended_after as usize;
        // Alone on the path: a queue that outlasts the cuts in a row is someone else's.
        let alone = cuts_under_a_queue_that_stays(0.0).expect("counted as someone else's");
        assert!(alone < 2 * contended_after, "{alone} cuts alone");
        // Beside an opposite direction that moves about as much and has not cut: the queue
        // may be its own (it waits while this one cuts), so twice as many cuts before the
        // queue counts as someone else's, or none once this direction moves under half of
        // what the opposite one does (the queue is then left to it).
        let beside = cuts_under_a_queue_that_stays(5.0 * MBIT);
        assert!(
            beside.is_none_or(|cuts| cuts >= 2 * contended_after - 1),
            "{beside:?} cuts beside a busy opposite direction, {alone} alone"
        );
    }

    #[test]
    fn a_one_second_stall_is_not_congestion() {
        let mut run = Run::new(20.0);
        run.run(300, 0..0);
        let before = run.controller.rate().expect("paced").bytes_per_second();
        run.run(40, 300..310);
        let after = run
            .controller
            .rate()
            .expect("still paced")
            .bytes_per_second();
        assert!(
            after >= 0.9 * before,
            "rate {:.2} Mbit/s before the stall, {:.2} after",
            before / MBIT,
            after / MBIT
        );
    }

    #[test]
    fn a_first_queue_that_drops_data_starts_pacing_at_once() {
        for dropped in [false, true] {
            let start = Instant::now();
            let mut controller = AutoRate::new(AutoRateConfig::default(), start);
            let sample = Sample {
                dropped: Some(dropped),
                ..steady_tick(start + TICK, None, 10, 0.0)
            };
            controller.on_tick(&sample);
            // A queue over the threshold for one tick is a wobble, unless the link drops data.
            let paced = controller.mode() == Mode::Paced;
            assert_eq!(paced, dropped, "dropping: {dropped}");
        }
    }

    #[test]
    fn a_first_rate_is_not_read_over_the_idle_ticks_before_the_burst() {
        let start = Instant::now();
        let mut controller = AutoRate::new(AutoRateConfig::default(), start);
        for tick in 1..=20u32 {
            let idle = Sample {
                delivered: 0,
                queue_delay: None,
                ..steady_tick(start + TICK * tick, None, 0, 0.0)
            };
            controller.on_tick(&idle);
        }
        // The burst's first tick: 10 Mbit/s delivered, a queue that drops data.
        let sample = Sample {
            dropped: Some(true),
            ..steady_tick(start + TICK * 21, None, 10, 0.0)
        };
        let rate = controller
            .on_tick(&sample)
            .expect("paced")
            .bytes_per_second();
        let moved = 10.0 * MBIT * WIRE_PER_PAYLOAD;
        assert!(
            rate >= 0.8 * moved,
            "first rate {:.1} Mbit/s after a tick of {:.1}",
            rate / MBIT,
            moved / MBIT
        );
    }

    #[test]
    fn a_fast_link_that_never_queues_stays_unpaced() {
        let mut run = Run::new(1000.0);
        run.demand = Some(50e6);
        run.run(300, 0..0);
        assert!(run.ticks.iter().all(|t| t.rate.is_none()));
    }

    #[test]
    fn light_traffic_over_a_queue_it_did_not_build_stays_unpaced() {
        let mut run = Run::new(20.0);
        run.demand = Some(50_000.0);
        run.competitor = true;
        run.run(300, 0..0);
        assert!(run.ticks.iter().all(|t| t.rate.is_none()));
    }

    #[test]
    fn pacing_stops_after_a_long_time_without_a_queue() {
        let mut run = Run::paced(20.0, 100);
        run.idle(6_100);
        assert_eq!(run.controller.mode(), Mode::Off);
    }

    #[test]
    fn one_directions_queue_does_not_hold_the_other_down() {
        // Bulk both ways over a 20/20 line: each direction's queue delays the other's round
        // trips too, and cutting the direction that did not build it drains nothing.
        let mut duplex = Duplex::new(20.0, 20.0);
        duplex.run(600);
        for (way, run) in ["upload", "download"].iter().zip(&duplex.ways) {
            let utilisation = run.utilisation(100..600, 20.0);
            assert!(utilisation >= 0.8, "{way}: utilisation {utilisation:.2}");
            let p99 = run.delay_p99_ms(100..600);
            assert!(
                p99 <= 15.0,
                "{way}: round-trip queueing delay p99 {p99:.1} ms"
            );
        }
    }

    #[test]
    fn the_direction_that_grew_into_a_queue_is_the_one_cut() {
        // Bulk both ways over a 20/20 line. Each probe of a rate past its link builds a queue
        // on that link alone, which both directions read: the other direction, holding its
        // rate, must not be the one cut for it.
        let mut duplex = Duplex::new(20.0, 20.0);
        duplex.run(100);
        let mut cuts = [0, 0];
        let mut wrong = [0, 0];
        for _ in 0..600 {
            let before = duplex.ways.each_ref().map(|run| run.controller.last_cut());
            let queued = duplex.ways.each_ref().map(|run| run.link.queued());
            duplex.run(1);
            for way in 0..2 {
                if duplex.ways[way].controller.last_cut() != before[way] {
                    cuts[way] += 1;
                    wrong[way] += usize::from(queued[way] < queued[1 - way]);
                }
            }
        }
        for (way, name) in ["upload", "download"].iter().enumerate() {
            assert!(
                wrong[way] * 10 <= cuts[way],
                "{name}: {} of {} cuts while the other link held the longer queue",
                wrong[way],
                cuts[way]
            );
            let p99 = duplex.ways[way].delay_p99_ms(100..700);
            assert!(
                p99 <= 12.0,
                "{name}: round-trip queueing delay p99 {p99:.1} ms"
            );
        }
    }

    #[test]
    fn a_light_direction_that_probes_past_its_link_is_cut_for_its_own_queue() {
        // A 5 Mbit/s uplink beside a 40 Mbit/s downlink, bulk both ways: the uploads move an
        // eighth of what the downloads move, yet a queue their probe builds is theirs to cut.
        let mut duplex = Duplex::new(5.0, 40.0);
        duplex.run(400);
        let p99 = duplex.ways[0].delay_p99_ms(100..400);
        assert!(p99 <= 15.0, "round-trip queueing delay p99 {p99:.1} ms");
        for (way, megabits) in [(0, 5.0), (1, 40.0)] {
            let utilisation = duplex.ways[way].utilisation(100..400, megabits);
            assert!(
                utilisation >= 0.8,
                "{}: utilisation {utilisation:.2}",
                ["upload", "download"][way]
            );
        }
    }

    #[test]
    fn a_queue_that_drops_only_the_opposite_directions_data_is_left_to_it() {
        // A download beside fyntr's keeps the downlink queue full and dropping. The upload
        // reads the same delay, but its own link drops nothing: it must not cut itself down
        // for the downlink's queue, nor stop pacing.
        let mut duplex = Duplex::new(20.0, 20.0);
        duplex.run(100);
        duplex.ways[1].competitor = true;
        let mut upload_contended = 0;
        for _ in 0..600 {
            duplex.run(1);
            upload_contended += usize::from(duplex.ways[0].controller.mode() == Mode::Contended);
        }
        assert_eq!(upload_contended, 0, "ticks the upload stopped pacing");
        let utilisation = duplex.ways[0].utilisation(300..700, 20.0);
        assert!(utilisation >= 0.8, "upload utilisation {utilisation:.2}");
        let share = duplex.ways[1].share_beside_competitor(300..700);
        assert!(
            share >= 0.3,
            "download's share beside the other flow: {share:.2}"
        );
    }

    #[test]
    fn a_queue_back_at_once_after_a_pause_for_contention_is_the_same_flows() {
        let mut run = Run::new(20.0);
        run.run(100, 0..0);
        run.competitor = true;
        // Until the first pause, and through it.
        run.run_until(|c| c.mode() == Mode::Contended, 1000, "never paused");
        run.run_until(|c| c.mode() != Mode::Contended, 1000, "never resumed");
        // Pacing resumed beside the same flow: back to the pause within two cuts.
        let resumed = run.ticks.len();
        run.run_until(
            |c| c.mode() == Mode::Contended,
            resumed + 100,
            "no second pause",
        );
        let paced_for = run.ticks.len() - resumed;
        assert!(
            paced_for <= 10,
            "paced for {paced_for} ticks before the second pause"
        );
    }

    /// `sample` beside an opposite direction that moves `load`, as this one does, and cut for
    /// the same queue a tick ago.
    fn beside_an_opposite_that_cuts(sample: Sample, load: f64) -> Sample {
        Sample {
            opposite_load: load,
            opposite_cut: Some(sample.now - TICK),
            opposite_cuts_in_a_row: 1,
            ..sample
        }
    }

    #[test]
    fn a_queue_back_at_once_after_a_pause_is_the_same_flows_though_the_opposite_direction_cuts() {
        let start = Instant::now();
        let mut controller = AutoRate::new(AutoRateConfig::default(), start);
        let load = 8.0 * MBIT;
        let mut resumed = None;
        for tick in 1..=600u32 {
            let now = start + TICK * tick;
            let rate = controller.rate().map(Rate::bytes_per_second);
            // A queue starts pacing, a clear path outlasts the first seconds of pacing, then
            // another flow's queue comes to stay.
            let delay = if (4..=60).contains(&tick) { 0 } else { 20 };
            let mut sample = steady_tick(now, rate, delay, 0.0);
            if resumed.is_some() {
                sample = beside_an_opposite_that_cuts(sample, rate.unwrap_or(load));
            }
            controller.on_tick(&sample);
            match (controller.mode(), resumed) {
                (Mode::Contended, Some(at)) => {
                    let paced_for = tick - at;
                    assert!(
                        paced_for <= 10,
                        "paced for {paced_for} ticks before the second pause"
                    );
                    return;
                }
                (Mode::Paced, None) if controller.resumed_at.is_some() => resumed = Some(tick),
                _ => {}
            }
        }
        panic!("no second pause (resumed at tick {resumed:?})");
    }

    /// A controller fed steady ticks one at a time (see [`steady_tick`]).
    struct SteadyTicks {
        controller: AutoRate,
        start: Instant,
        tick: u32,
    }

    impl SteadyTicks {
        fn new() -> Self {
            let start = Instant::now();
            Self {
                controller: AutoRate::new(AutoRateConfig::default(), start),
                start,
                tick: 0,
            }
        }

        /// One tick reporting a delay of `delay` ms (none if `None`), beside an opposite
        /// direction that cuts if `opposite_cuts`; returns the tick's number.
        fn next(&mut self, delay: Option<u64>, opposite_cuts: bool) -> u32 {
            self.tick += 1;
            let now = self.start + TICK * self.tick;
            let rate = self.controller.rate().map(Rate::bytes_per_second);
            let mut sample = steady_tick(now, rate, delay.unwrap_or(0), 0.0);
            sample.queue_delay = delay.map(Duration::from_millis);
            if opposite_cuts {
                sample = beside_an_opposite_that_cuts(sample, rate.unwrap_or(8.0 * MBIT));
            }
            self.controller.on_tick(&sample);
            self.tick
        }

        /// Pacing started by a queue, then a clear path past the first seconds of pacing.
        fn paced_past_the_first_seconds(&mut self) {
            for _ in 0..3 {
                self.next(Some(20), false);
            }
            for _ in 0..57 {
                self.next(Some(0), false);
            }
        }

        /// The queue back, beside an opposite direction that cuts for it too: pacing starts
        /// again (before tick `limit`) and pauses within 10 ticks of starting.
        fn assert_a_restart_pauses_at_once(&mut self, limit: u32) {
            let mut started = 0;
            while self.controller.mode() == Mode::Off {
                started = self.next(Some(20), true);
                assert!(started < limit, "pacing never started again");
            }
            while self.controller.mode() != Mode::Contended {
                let at = self.next(Some(20), true);
                assert!(
                    at - started <= 10,
                    "paced for {} ticks without a pause",
                    at - started
                );
            }
        }
    }

    #[test]
    fn a_queue_that_starts_pacing_soon_after_a_pause_is_taken_for_the_same_flows() {
        let mut ticks = SteadyTicks::new();
        // Paced, a clear path past the first seconds, then another flow's queue: a pause.
        ticks.paced_past_the_first_seconds();
        while ticks.controller.mode() != Mode::Contended {
            assert!(ticks.next(Some(20), false) < 1000, "never paused");
        }
        while ticks.controller.mode() == Mode::Contended {
            assert!(ticks.next(Some(20), false) < 2000, "never resumed");
        }
        // No delay reported for long: pacing stops.
        while ticks.controller.mode() != Mode::Off {
            assert!(ticks.next(None, false) < 2000, "never stopped");
        }
        ticks.assert_a_restart_pauses_at_once(3000);
    }

    #[test]
    fn a_queue_that_starts_pacing_soon_after_a_silence_over_a_queue_is_taken_for_the_same_flows() {
        let mut ticks = SteadyTicks::new();
        // Paced, a clear path past the first seconds, then a queue, and no delay reported
        // after it (downloads alone report none): pacing stops.
        ticks.paced_past_the_first_seconds();
        ticks.next(Some(20), false);
        while ticks.controller.mode() != Mode::Off {
            assert!(ticks.next(None, false) < 1000, "never stopped");
        }
        ticks.assert_a_restart_pauses_at_once(2000);
    }

    #[test]
    fn a_rate_that_hovers_just_over_the_floor_counts_as_held_there() {
        let start = Instant::now();
        let mut controller = AutoRate::new(AutoRateConfig::default(), start);
        let floor = AutoRateConfig::default().floor;
        // Paced, past the first seconds, then held near the floor: each tick moves the rate
        // between 1.0 and 1.2 of the floor, as growth between cuts does, under a queue.
        for tick in 1..=3u32 {
            controller.on_tick(&steady_tick(start + TICK * tick, None, 20, 0.0));
        }
        assert_eq!(controller.mode(), Mode::Paced);
        for tick in 4..=80u32 {
            controller.on_tick(&steady_tick(start + TICK * tick, None, 0, 0.0));
        }
        for tick in 81..=200u32 {
            let now = start + TICK * tick;
            controller.rate = floor * (1.0 + 0.02 * f64::from(tick % 10));
            controller.on_tick(&steady_tick(now, Some(controller.rate), 5, 0.0));
            if controller.mode() == Mode::Contended {
                assert!(tick <= 81 + 25, "paused only at tick {tick}");
                return;
            }
        }
        panic!("a rate held near the floor never counted as someone else's queue");
    }

    #[test]
    fn a_pause_for_contention_that_ends_with_nothing_moving_does_not_resume_at_the_floor() {
        let mut run = Run::new(20.0);
        run.run(100, 0..0);
        run.competitor = true;
        run.run_until(|c| c.mode() == Mode::Contended, 1000, "never paused");
        // The competing flow leaves and fyntr's tunnels fall silent for the rest of the pause.
        run.competitor = false;
        run.demand = Some(0.0);
        run.run_until(|c| c.mode() != Mode::Contended, 1000, "never resumed");
        // Then a new burst: the whole link is fyntr's again within seconds.
        run.demand = None;
        let burst = run.ticks.len();
        run.run(60, 0..0);
        let utilisation = run.utilisation(burst + 30..burst + 60, 20.0);
        assert!(
            utilisation >= 0.8,
            "utilisation {utilisation:.2} from the burst's third second"
        );
    }

    #[test]
    fn a_rate_with_no_delay_reported_stops_holding_the_direction_back() {
        let mut run = Run::new(20.0);
        run.run(100, 0..0);
        assert_eq!(run.controller.mode(), Mode::Paced);
        // The queue goes (the line is four times as fast) and no socket reports the delay
        // any more.
        run.link.capacity *= 4.0;
        run.silent = true;
        run.run(60, 0..0);
        let utilisation = run.utilisation(140..160, 80.0);
        assert!(
            utilisation >= 0.8,
            "utilisation {utilisation:.2} of the faster line, 4 s on"
        );
    }

    #[test]
    fn a_rate_found_in_one_burst_paces_the_next_after_a_minute_idle() {
        // A plan run again on a 5 Mbit/s line: the first burst finds the rate...
        let mut run = Run::paced(5.0, 150);
        let found = run.controller.rate();
        // ...the line is idle for a minute, no socket reporting anything...
        run.idle(600);
        assert_eq!(
            run.controller.mode(),
            Mode::Paced,
            "the rate is kept while nothing moves"
        );
        let kept = run.controller.rate().expect("paced").bytes_per_second();
        assert!(
            kept <= found.expect("paced").bytes_per_second(),
            "the rate the burst ended at, or less (a probe falls back)"
        );
        // ...and the next burst is paced from its first byte: its queue never fills the buffer
        // (52 ms at 5 Mbit/s).
        run.demand = None;
        let start = run.ticks.len();
        run.run(30, 0..0);
        let worst = run.ticks[start..]
            .iter()
            .map(|tick| tick.queue_delay)
            .fold(0.0, f64::max);
        assert!(
            worst < 0.015,
            "the next burst's queue reached {:.1} ms in its first 3 s",
            worst * 1e3
        );
    }

    /// The worst queueing delay of a run's ticks from `start` on, in seconds.
    fn worst_delay(run: &Run, start: usize) -> f64 {
        run.ticks[start..]
            .iter()
            .map(|tick| tick.queue_delay)
            .fold(0.0, f64::max)
    }

    #[test]
    fn a_burst_on_an_idle_slow_line_starts_paced_and_finds_its_rate_without_filling_the_buffer() {
        // Unpaced, a greedy burst on a 5 Mbit/s line queues deep before the first queue is read
        // (a real one fills its buffer for seconds: the first flights' losses are sent again).
        let mut unpaced = Run::new(5.0);
        unpaced.run(30, 0..0);
        assert!(worst_delay(&unpaced, 0) > 0.025);
        // Started from its first byte, it grows into the link and is cut at its first queue.
        let mut run = Run::new(5.0);
        assert!(run
            .controller
            .start_allowed_from()
            .is_some_and(|from| from <= run.now));
        assert_eq!(
            run.controller.start(run.now).map(Rate::bytes_per_second),
            Some(START_RATE)
        );
        run.run(30, 0..0);
        let worst = worst_delay(&run, 0);
        assert!(
            worst < 0.02,
            "the queue reached {:.1} ms in the first 3 s",
            worst * 1e3
        );
        assert_eq!(run.controller.mode(), Mode::Paced);
        let rate = run.controller.rate().expect("paced").bytes_per_second();
        assert!(
            (0.7 * 5.0 * MBIT..1.1 * 5.0 * MBIT).contains(&rate),
            "{:.2} Mbit/s",
            rate / MBIT
        );
    }

    #[test]
    fn a_start_on_a_fast_line_turns_pacing_off_and_is_not_tried_again_for_ten_minutes() {
        let mut run = Run::new(1000.0);
        run.controller.start(run.now);
        run.run_until(
            |controller| controller.mode() == Mode::Off,
            25,
            "the start ends within 2.5 s",
        );
        let from = run.controller.start_allowed_from().expect("off");
        assert!(from >= run.now + Duration::from_secs(590), "{from:?}");
        // Idle meanwhile, the line may start a burst paced again.
        let off_after = AutoRateConfig::default().off_after;
        assert!(from <= run.now + off_after);
    }

    #[test]
    fn a_start_waits_for_the_line_to_be_idle() {
        // Off while light traffic moves: no start until it has been idle for a while.
        let mut run = Run::new(20.0);
        run.demand = Some(0.5 * MBIT);
        run.run(20, 0..0);
        assert_eq!(run.controller.mode(), Mode::Off);
        assert_eq!(
            run.controller.start_allowed_from(),
            Some(run.now + IDLE),
            "the last tick moved data"
        );
        // Paced: never.
        let paced = Run::paced(5.0, 150);
        assert_eq!(paced.controller.start_allowed_from(), None);
    }

    /// A start's mode after five ticks (under half a second) through a queue of 13 ms beside
    /// an opposite direction in `opposite_mode`.
    fn start_beside(opposite_mode: Mode) -> Mode {
        start_under_a_queue_beside(opposite_mode, 5)
    }

    /// The mode of a start after `ticks` ticks of a 13 ms queue beside an opposite direction in
    /// `opposite_mode`.
    fn start_under_a_queue_beside(opposite_mode: Mode, ticks: usize) -> Mode {
        let mut now = Instant::now();
        let mut controller = AutoRate::new(AutoRateConfig::default(), now);
        controller.start(now);
        for _ in 0..ticks {
            now += TICK;
            let rate = controller.rate().map(Rate::bytes_per_second);
            controller.on_tick(&Sample {
                opposite_paced: opposite_mode != Mode::Off,
                opposite_starting: opposite_mode == Mode::Starting,
                ..steady_tick(now, rate, 13, 0.0)
            });
        }
        controller.mode()
    }

    /// The rates of a start after each of ticks that read these delays (microseconds), with
    /// more to send and no opposite direction paced; it is still starting after them.
    fn starting_rates(delays_us: &[u64]) -> Vec<f64> {
        let (controller, rates) = start_through(delays_us);
        assert_eq!(controller.mode(), Mode::Starting);
        rates
    }

    /// A start through ticks that read these delays (microseconds), the path carrying the
    /// rate; the controller after them and the rate after each.
    fn start_through(delays_us: &[u64]) -> (AutoRate, Vec<f64>) {
        let mut now = Instant::now();
        let mut controller = AutoRate::new(AutoRateConfig::default(), now);
        controller.start(now);
        let mut rates = Vec::new();
        for &delay_us in delays_us {
            now += TICK;
            let rate = controller.rate().map(Rate::bytes_per_second);
            controller.on_tick(&Sample {
                queue_delay: Some(Duration::from_micros(delay_us)),
                opposite_paced: false,
                ..steady_tick(now, rate, 0, 0.0)
            });
            rates.push(controller.rate().expect("paced").bytes_per_second());
        }
        (controller, rates)
    }

    #[test]
    fn a_start_whose_delay_stands_over_its_least_three_readings_in_a_row_paces() {
        // The testbed's uploads at the 5 Mbit/s uplink: the delay rises, then flattens.
        let (controller, rates) = start_through(&[600, 1_300, 2_600, 2_600, 3_000]);
        assert_eq!(controller.mode(), Mode::Paced, "{rates:?}");
        assert!(rates[4] <= rates[3], "no growth past the link: {rates:?}");
        // Lone readings lifted by jitter leave the start be.
        let (controller, rates) = start_through(&[600, 3_500, 1_600, 3_300, 1_000, 2_400]);
        assert_eq!(controller.mode(), Mode::Starting, "{rates:?}");
    }

    #[test]
    fn a_start_whose_delay_jumps_past_the_clear_mark_in_a_tick_paces_at_once() {
        // Under the queue mark (7 ms), but 6 ms over the last readings: the rate is past the
        // link, and one tick more there would fill a slow link's buffer.
        let (controller, rates) = start_through(&[800, 800, 6_800]);
        assert_eq!(controller.mode(), Mode::Paced, "{rates:?}");
        assert!(
            rates[2] < rates[1],
            "paced under the rate that filled: {rates:?}"
        );
        // A rise that ends under the clear mark only holds the start.
        let (controller, _) = start_through(&[800, 800, 2_900]);
        assert_eq!(controller.mode(), Mode::Starting);
    }

    #[test]
    fn a_start_holds_its_rate_while_the_delay_rises_under_the_clear_mark() {
        // Clear and flat, then rising by 1 ms a tick (still under 3 ms), then back where it grew.
        let rates = starting_rates(&[800, 800, 1_800, 2_800, 800]);
        assert!(rates[1] > rates[0], "grows while flat: {rates:?}");
        assert_eq!(rates[2], rates[1], "holds while rising: {rates:?}");
        assert_eq!(rates[3], rates[2], "holds while rising: {rates:?}");
        assert!(rates[4] > rates[3], "grows once back: {rates:?}");
    }

    #[test]
    fn a_start_holds_its_rate_while_the_delay_rose_over_the_last_two_readings() {
        // Flat, then two rises under the mark that add up to more, then flat.
        let rates = starting_rates(&[800, 800, 1_200, 1_600, 1_600]);
        assert!(rates[1] > rates[0], "grows while flat: {rates:?}");
        assert!(rates[2] > rates[1], "a rise under the mark: {rates:?}");
        assert_eq!(rates[3], rates[2], "over it in two readings: {rates:?}");
        assert!(rates[4] > rates[3], "flat again: {rates:?}");
    }

    #[test]
    fn a_start_leaves_a_queue_to_an_opposite_direction_paced_at_a_rate_it_found() {
        assert_eq!(start_beside(Mode::Paced), Mode::Starting);
        assert_eq!(start_beside(Mode::Off), Mode::Paced);
        assert_eq!(start_beside(Mode::Starting), Mode::Paced);
    }

    #[test]
    fn a_start_takes_a_queue_that_outlasted_the_opposite_directions_cuts_for_its_own() {
        assert_eq!(start_under_a_queue_beside(Mode::Paced, 7), Mode::Paced);
    }

    /// The rate a start sets when its third tick's delivery (after 1 and 7 Mbit/s) overflows
    /// the link: 13 Mbit/s, its data dropped, counted where the bytes arrive or not.
    fn rate_started_by_first_flights(counts_arrivals: bool) -> f64 {
        let mut now = Instant::now();
        let config = AutoRateConfig {
            counts_arrivals,
            ..AutoRateConfig::default()
        };
        let mut controller = AutoRate::new(config, now);
        controller.start(now);
        for (megabits, dropped) in [(1.0, false), (7.0, false), (13.0, true)] {
            now += TICK;
            controller.on_tick(&Sample {
                delivered: (megabits * MBIT * TICK.as_secs_f64()) as u64,
                dropped: Some(dropped),
                opposite_paced: false,
                ..steady_tick(now, None, 1, 0.0)
            });
        }
        assert_eq!(controller.mode(), Mode::Paced);
        controller.rate().expect("paced").bytes_per_second() / MBIT
    }

    #[test]
    fn a_first_rate_read_where_the_bytes_arrive_is_the_tick_that_overflowed() {
        let arrivals = rate_started_by_first_flights(true);
        assert!(
            (12.0..13.5).contains(&arrivals),
            "counted on arrival: {arrivals:.2} Mbit/s"
        );
        // Counted from ACKs, which come in lumps, one tick is no measure of the link.
        let acks = rate_started_by_first_flights(false);
        assert!(acks < 7.5, "counted from ACKs: {acks:.2} Mbit/s");
    }

    /// Whether `controller` paces at `mbit` Mbit/s or under.
    fn paced_at_most(controller: &AutoRate, mbit: f64) -> bool {
        controller
            .rate()
            .is_some_and(|rate| rate.bytes_per_second() <= mbit * MBIT)
    }

    #[test]
    fn a_kept_rate_over_a_line_that_got_slower_meanwhile_is_cut_at_once() {
        let mut run = Run::paced(20.0, 150);
        run.idle(600);
        // The line is a quarter as fast when the next burst comes: no stall's grace hides its
        // queue (nothing waited through the idle minute; with the grace its buffer stood full
        // for 0.9 s before the first cut).
        run.link.capacity /= 4.0;
        run.demand = None;
        let start = run.ticks.len();
        run.run_until(
            |controller| paced_at_most(controller, 5.5),
            start + 6,
            "the kept rate cut under the slower line within 0.6 s",
        );
    }

    #[test]
    fn a_line_that_steps_down_to_a_quarter_under_load_is_cut_under_it_within_half_a_second() {
        let mut run = Run::paced(20.0, 300);
        run.link.capacity /= 4.0;
        let start = run.ticks.len();
        run.run_until(
            |controller| paced_at_most(controller, 5.0),
            start + 5,
            "the rate cut under the slower line within 0.5 s",
        );
    }

    #[test]
    fn both_directions_follow_a_line_that_steps_down_and_up() {
        let mut duplex = Duplex::new(20.0, 20.0);
        duplex.run(300);
        for run in &mut duplex.ways {
            run.link.capacity = 5.0 * MBIT;
        }
        duplex.run(300);
        for run in &mut duplex.ways {
            run.link.capacity = 20.0 * MBIT;
        }
        duplex.run(300);
        for (way, run) in ["upload", "download"].iter().zip(&duplex.ways) {
            for (phase, megabits) in [(320..600, 5.0), (700..900, 20.0)] {
                let utilisation = run.utilisation(phase.clone(), megabits);
                assert!(
                    utilisation >= 0.8,
                    "{way} {phase:?}: utilisation {utilisation:.2}"
                );
            }
        }
    }
}
