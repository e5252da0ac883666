//! The worker's write gate: connects the sans-io [`Scheduler`]s to the worker's tasks.
//!
//! A worker has one scheduler per direction (upload: client to destination; download: the
//! reverse), because each direction has its own pacing rate. A relay direction holds a
//! [`FlowHandle`]. Before writing a chunk it awaits [`FlowHandle::acquire`], which enqueues the
//! chunk and resolves when the scheduler grants it; after the write it calls
//! [`FlowHandle::complete`]. Grants are handed out synchronously on each enqueue and completion,
//! so an uncongested write never waits for another task; a timer task ([`Gate::run_timer`])
//! covers what only time can unblock (stalled writes leaving the window, the pacer's next slot).

use std::{
    cell::{Cell, RefCell},
    future::poll_fn,
    rc::Rc,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Poll, Waker},
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use crate::sched::{pacer::Pacer, FlowId, Scheduler, SchedulerConfig};

/// Which way a flow's bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Client to destination.
    Upload,
    /// Destination to client.
    Download,
}

#[derive(Default)]
struct Waiter {
    grants: u32,
    waker: Option<Waker>,
}

/// One direction's scheduler and the tasks waiting on it.
struct Lane {
    scheduler: RefCell<Scheduler>,
    waiters: RefCell<Vec<Waiter>>,
}

/// What the timer task waits for.
#[derive(Clone, Copy)]
enum TimerSetFor {
    /// Only a notification: no scheduler has a timeout.
    Nothing,
    /// This deadline (or an earlier notification).
    Deadline(Instant),
}

/// One worker's gate. Single-threaded: it lives in an `Rc`.
pub(crate) struct Gate {
    lanes: [Lane; 2],
    /// Per direction, the bytes waiting for a grant after the last dispatch, for the metrics.
    backlog: Arc<[AtomicU64; 2]>,
    /// Wakes the timer task when a scheduler needs it earlier than `timer_set_for`.
    timer: Notify,
    timer_set_for: Cell<TimerSetFor>,
}

impl Gate {
    /// A gate whose upload and download grants go through the given pacers, if any; it
    /// publishes each direction's backlog in `backlog`.
    pub(crate) fn new(
        config: SchedulerConfig,
        upload: Option<Arc<Pacer>>,
        download: Option<Arc<Pacer>>,
        backlog: Arc<[AtomicU64; 2]>,
    ) -> Rc<Self> {
        // Each direction's data draws ACKs over the other: those count against its rate.
        let lane = |pacer: &Option<Arc<Pacer>>, opposite: &Option<Arc<Pacer>>| {
            let mut scheduler = Scheduler::new(config);
            if let Some(pacer) = pacer {
                scheduler.set_pacer(Arc::clone(pacer));
            }
            if let Some(opposite) = opposite {
                scheduler.set_ack_pacer(Arc::clone(opposite));
            }
            Lane {
                scheduler: RefCell::new(scheduler),
                waiters: RefCell::new(Vec::new()),
            }
        };
        Rc::new(Self {
            lanes: [lane(&upload, &download), lane(&download, &upload)],
            backlog,
            timer: Notify::new(),
            timer_set_for: Cell::new(TimerSetFor::Nothing),
        })
    }

    fn lane(&self, direction: Direction) -> &Lane {
        &self.lanes[direction as usize]
    }

    /// Registers a flow; it is removed when the handle drops.
    pub(crate) fn open_flow(self: &Rc<Self>, direction: Direction) -> FlowHandle {
        let lane = self.lane(direction);
        let id = lane.scheduler.borrow_mut().add_flow();
        let mut waiters = lane.waiters.borrow_mut();
        if waiters.len() <= id.index() {
            waiters.resize_with(id.index() + 1, Waiter::default);
        }
        waiters[id.index()] = Waiter::default();
        FlowHandle {
            gate: Rc::clone(self),
            direction,
            id,
            waited: Cell::new(Duration::ZERO),
        }
    }

    /// Hands out every grant the scheduler of `direction` allows now and wakes their flows; wakes
    /// the timer task if the scheduler now needs it earlier than it is set for.
    fn dispatch(&self, direction: Direction) {
        let Some(timeout) = self.grant_all(direction) else {
            return;
        };
        let earlier = match self.timer_set_for.get() {
            TimerSetFor::Nothing => true,
            TimerSetFor::Deadline(deadline) => timeout < deadline,
        };
        if earlier {
            self.timer.notify_one();
        }
    }

    /// Hands out every grant the scheduler of `direction` allows now and wakes their flows.
    /// Returns when the scheduler next needs to run (stalled writes, the pacer's next slot).
    fn grant_all(&self, direction: Direction) -> Option<Instant> {
        let lane = self.lane(direction);
        let now = Instant::now();
        loop {
            let grant = lane.scheduler.borrow_mut().poll_grant(now);
            let Some(grant) = grant else { break };
            let waker = {
                let mut waiters = lane.waiters.borrow_mut();
                let waiter = &mut waiters[grant.flow.index()];
                waiter.grants += 1;
                waiter.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
        let scheduler = lane.scheduler.borrow();
        self.backlog[direction as usize].store(scheduler.queued_bytes(), Ordering::Relaxed);
        scheduler.poll_timeout()
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.lanes
            .iter()
            .filter_map(|lane| lane.scheduler.borrow().poll_timeout())
            .min()
    }

    /// Re-runs the schedulers whenever one's timeout passes. Runs for the worker's lifetime.
    ///
    /// Its own runs never notify it: a task that woke itself would find the permit at once and
    /// loop without yielding, and the flows it just granted could not run on this thread until
    /// no timeout was left. With pacing that would hold every grant back for a whole DRR round
    /// and then write them all at once (a 20 KiB burst every 10 ms at 19 Mbit/s).
    pub(crate) async fn run_timer(self: Rc<Self>) {
        loop {
            match self.next_timeout() {
                Some(deadline) => {
                    self.timer_set_for.set(TimerSetFor::Deadline(deadline));
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline.into()) => {}
                        () = self.timer.notified() => {}
                    }
                }
                None => {
                    self.timer_set_for.set(TimerSetFor::Nothing);
                    self.timer.notified().await;
                }
            }
            self.grant_all(Direction::Upload);
            self.grant_all(Direction::Download);
        }
    }
}

/// One flow's access to the gate.
pub(crate) struct FlowHandle {
    gate: Rc<Gate>,
    direction: Direction,
    id: FlowId,
    /// Total time this flow's chunks waited for their grants (window, DRR turn, pacing).
    waited: Cell<Duration>,
}

impl FlowHandle {
    /// Which way this flow's bytes go.
    pub(crate) fn direction(&self) -> Direction {
        self.direction
    }

    /// Waits until a chunk of `len` bytes may be written.
    pub(crate) async fn acquire(&self, len: usize) {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        let lane = self.gate.lane(self.direction);
        lane.scheduler.borrow_mut().handle_enqueue(self.id, len);
        self.gate.dispatch(self.direction);
        let mut started: Option<Instant> = None;
        poll_fn(|cx| {
            let mut waiters = lane.waiters.borrow_mut();
            let waiter = &mut waiters[self.id.index()];
            if waiter.grants > 0 {
                waiter.grants -= 1;
                if let Some(started) = started {
                    self.waited.set(self.waited.get() + started.elapsed());
                }
                Poll::Ready(())
            } else {
                started.get_or_insert_with(Instant::now);
                waiter.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }

    /// Counts `bytes` that reached fyntr without a grant (a remote sender's initial window)
    /// against the rate, so that other flows' reads make room for them on the link.
    pub(crate) fn charge_unasked(&self, bytes: usize) {
        let lane = self.gate.lane(self.direction);
        lane.scheduler
            .borrow()
            .charge_unasked(bytes as u64, Instant::now());
    }

    /// The granted write finished (successfully or not).
    pub(crate) fn complete(&self) {
        let lane = self.gate.lane(self.direction);
        lane.scheduler.borrow_mut().handle_complete(self.id);
        self.gate.dispatch(self.direction);
    }

    /// Time this flow's chunks spent waiting for grants so far.
    pub(crate) fn waited(&self) -> Duration {
        self.waited.get()
    }
}

impl Drop for FlowHandle {
    fn drop(&mut self) {
        let lane = self.gate.lane(self.direction);
        lane.scheduler.borrow_mut().remove_flow(self.id);
        lane.waiters.borrow_mut()[self.id.index()] = Waiter::default();
        self.gate.dispatch(self.direction);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::pacer::{on_the_wire, Rate};

    /// Paced grants reach their flows as they are made: the timer task yields after each of its
    /// runs. (A timer that woke itself would spin, and no flow would run until the whole round
    /// was granted.)
    #[tokio::test]
    async fn each_paced_grant_reaches_its_flow_before_the_next_is_made() {
        const CHUNK: usize = 1448;
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                // One chunk per millisecond, and a burst of exactly one chunk: each run of the
                // timer can grant one chunk, however late it fires.
                let wire = on_the_wire(CHUNK as u64);
                let pacer = Pacer::new(Rate(wire as f64 * 1000.0), wire, Instant::now());
                let gate = Gate::new(
                    SchedulerConfig::default(),
                    Some(Arc::new(pacer)),
                    None,
                    Arc::default(),
                );
                tokio::task::spawn_local(Rc::clone(&gate).run_timer());
                let most_granted_at_once = Rc::new(Cell::new(0));
                let flows: Vec<_> = (0..4)
                    .map(|_| {
                        let flow = gate.open_flow(Direction::Upload);
                        let gate = Rc::clone(&gate);
                        let most = Rc::clone(&most_granted_at_once);
                        tokio::task::spawn_local(async move {
                            for _ in 0..3 {
                                flow.acquire(CHUNK).await;
                                let lane = gate.lane(Direction::Upload);
                                let in_flight = lane.scheduler.borrow().in_flight();
                                most.set(most.get().max(in_flight));
                                flow.complete();
                            }
                        })
                    })
                    .collect();
                for flow in flows {
                    tokio::time::timeout(Duration::from_secs(10), flow)
                        .await
                        .expect("12 grants at one per ms")
                        .unwrap();
                }
                assert_eq!(most_granted_at_once.get(), CHUNK as u64);
            })
            .await;
    }
}
