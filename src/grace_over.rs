//! The end of the shutdown grace period, which every relay of a worker waits on beside its
//! pumps.

use std::{
    cell::Cell,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::sync::{futures::Notified, Notify};

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

    /// Completes once the grace period is over.
    pub(crate) fn wait(&self) -> GraceWait<'_> {
        GraceWait {
            grace: self,
            notified: Box::pin(self.notify.notified()),
            registered: false,
        }
    }
}

/// The wait of one relay for [`GraceOver`]. It sits beside the relay's pumps, so it is polled
/// at every wake-up of the tunnel's task: once registered, a poll reads one flag. (A
/// `Notified` polled again takes its `Notify`'s lock to check the waker, once per relayed
/// chunk.) The relay's task is the only one that polls it, so the waker registered first
/// stays the one to wake.
pub(crate) struct GraceWait<'a> {
    grace: &'a GraceOver,
    notified: Pin<Box<Notified<'a>>>,
    registered: bool,
}

impl Future for GraceWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.grace.over.get() {
            return Poll::Ready(());
        }
        if !self.registered {
            if self.notified.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            self.registered = true;
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_wait_registered_before_the_announcement_ends_with_it() {
        let grace = std::rc::Rc::new(GraceOver::default());
        let waiting = tokio::task::LocalSet::new();
        let ended = std::rc::Rc::new(Cell::new(false));
        let (grace_in, ended_in) = (std::rc::Rc::clone(&grace), std::rc::Rc::clone(&ended));
        waiting.spawn_local(async move {
            grace_in.wait().await;
            ended_in.set(true);
        });
        waiting
            .run_until(async {
                // Let the wait register, and poll it again with nothing announced.
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                assert!(!ended.get());
                grace.announce();
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
            })
            .await;
        assert!(ended.get());
        // A wait that starts after the announcement ends at once.
        grace.wait().await;
    }
}
