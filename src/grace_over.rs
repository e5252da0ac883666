//! The end of the shutdown grace period, which every relay of a worker waits on beside its
//! pumps.

use std::cell::Cell;

use tokio::sync::Notify;

/// The end of the shutdown grace period, announced once to every relay of a worker: each
/// closes its tunnel, so that the tunnel ends like any other (its bytes logged and counted)
/// instead of vanishing with the worker.
#[derive(Debug, Default)]
pub(crate) struct GraceOver {
    over: Cell<bool>,
    notify: Notify,
}

impl GraceOver {
    /// Tells every relay, running or yet to start, that the grace period is over.
    pub(crate) fn announce(&self) {
        self.over.set(true);
        self.notify.notify_waiters();
    }

    /// Returns once the grace period is over.
    pub(crate) async fn wait(&self) {
        // Registered before the check: `notify_waiters` wakes every future created before it.
        let notified = self.notify.notified();
        if !self.over.get() {
            notified.await;
        }
    }
}
