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
    sync::Arc,
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

/// One worker's gate. Single-threaded: it lives in an `Rc`.
pub(crate) struct Gate {
    lanes: [Lane; 2],
    timer: Notify,
}

impl Gate {
    /// A gate whose upload and download grants go through the given pacers, if any.
    pub(crate) fn new(
        config: SchedulerConfig,
        upload: Option<Arc<Pacer>>,
        download: Option<Arc<Pacer>>,
    ) -> Rc<Self> {
        let lane = |pacer: Option<Arc<Pacer>>| {
            let mut scheduler = Scheduler::new(config);
            if let Some(pacer) = pacer {
                scheduler.set_pacer(pacer);
            }
            Lane {
                scheduler: RefCell::new(scheduler),
                waiters: RefCell::new(Vec::new()),
            }
        };
        Rc::new(Self {
            lanes: [lane(upload), lane(download)],
            timer: Notify::new(),
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

    /// Hands out every grant the scheduler of `direction` allows now and wakes their flows.
    fn dispatch(&self, direction: Direction) {
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
        if lane.scheduler.borrow().poll_timeout().is_some() {
            self.timer.notify_one();
        }
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.lanes
            .iter()
            .filter_map(|lane| lane.scheduler.borrow().poll_timeout())
            .min()
    }

    /// Re-runs dispatch whenever a scheduler's timeout passes. Runs for the worker's lifetime.
    pub(crate) async fn run_timer(self: Rc<Self>) {
        loop {
            match self.next_timeout() {
                Some(deadline) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline.into()) => {}
                        () = self.timer.notified() => {}
                    }
                }
                None => self.timer.notified().await,
            }
            self.dispatch(Direction::Upload);
            self.dispatch(Direction::Download);
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
