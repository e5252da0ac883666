//! The worker's write gate: connects the sans-io [`Scheduler`] to the worker's tasks.
//!
//! A relay direction holds a [`FlowHandle`]. Before writing a chunk it awaits
//! [`FlowHandle::acquire`], which enqueues the chunk and resolves when the scheduler grants it;
//! after the write it calls [`FlowHandle::complete`]. Grants are handed out synchronously on each
//! enqueue and completion, so an uncongested write never waits for another task; a timer task
//! ([`Gate::run_timer`]) covers what only time can unblock (stalled writes leaving the window).

use std::{
    cell::RefCell,
    future::poll_fn,
    rc::Rc,
    task::{Poll, Waker},
    time::Instant,
};

use tokio::sync::Notify;

use crate::sched::{FlowId, Scheduler, SchedulerConfig};

#[derive(Default)]
struct Waiter {
    grants: u32,
    waker: Option<Waker>,
}

/// One worker's gate. Single-threaded: it lives in an `Rc`.
pub(crate) struct Gate {
    scheduler: RefCell<Scheduler>,
    waiters: RefCell<Vec<Waiter>>,
    timer: Notify,
}

impl Gate {
    pub(crate) fn new(config: SchedulerConfig) -> Rc<Self> {
        Rc::new(Self {
            scheduler: RefCell::new(Scheduler::new(config)),
            waiters: RefCell::new(Vec::new()),
            timer: Notify::new(),
        })
    }

    /// Registers a flow; it is removed when the handle drops.
    pub(crate) fn open_flow(self: &Rc<Self>) -> FlowHandle {
        let id = self.scheduler.borrow_mut().add_flow();
        let mut waiters = self.waiters.borrow_mut();
        if waiters.len() <= id.index() {
            waiters.resize_with(id.index() + 1, Waiter::default);
        }
        waiters[id.index()] = Waiter::default();
        FlowHandle {
            gate: Rc::clone(self),
            id,
        }
    }

    /// Hands out every grant the scheduler allows now and wakes their flows.
    fn dispatch(&self) {
        let now = Instant::now();
        loop {
            let grant = self.scheduler.borrow_mut().poll_grant(now);
            let Some(grant) = grant else { break };
            let waker = {
                let mut waiters = self.waiters.borrow_mut();
                let waiter = &mut waiters[grant.flow.index()];
                waiter.grants += 1;
                waiter.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
        if self.scheduler.borrow().poll_timeout().is_some() {
            self.timer.notify_one();
        }
    }

    /// Re-runs dispatch whenever the scheduler's timeout passes. Runs for the worker's lifetime.
    pub(crate) async fn run_timer(self: Rc<Self>) {
        loop {
            let deadline = self.scheduler.borrow().poll_timeout();
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline.into()) => {}
                        () = self.timer.notified() => {}
                    }
                }
                None => self.timer.notified().await,
            }
            self.dispatch();
        }
    }
}

/// One flow's access to the gate.
pub(crate) struct FlowHandle {
    gate: Rc<Gate>,
    id: FlowId,
}

impl FlowHandle {
    /// Waits until a chunk of `len` bytes may be written.
    pub(crate) async fn acquire(&self, len: usize) {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        self.gate
            .scheduler
            .borrow_mut()
            .handle_enqueue(self.id, len);
        self.gate.dispatch();
        poll_fn(|cx| {
            let mut waiters = self.gate.waiters.borrow_mut();
            let waiter = &mut waiters[self.id.index()];
            if waiter.grants > 0 {
                waiter.grants -= 1;
                Poll::Ready(())
            } else {
                waiter.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }

    /// The granted write finished (successfully or not).
    pub(crate) fn complete(&self) {
        self.gate.scheduler.borrow_mut().handle_complete(self.id);
        self.gate.dispatch();
    }
}

impl Drop for FlowHandle {
    fn drop(&mut self) {
        self.gate.scheduler.borrow_mut().remove_flow(self.id);
        self.gate.waiters.borrow_mut()[self.id.index()] = Waiter::default();
        self.gate.dispatch();
    }
}
