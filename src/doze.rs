//! A thread that sleeps while it has nothing to do, and the threads that rouse it.
//!
//! `auto`'s controllers run on a thread of their own that ticks ten times a second. With
//! nothing paced and no traffic on the paths it watches, each tick reads nothing and changes
//! nothing, yet it is the only thing that wakes an idle proxy: ten wake-ups a second, for
//! ever, on a laptop's battery. So the thread dozes instead, and whatever gives it work (a
//! relay moving data on a watched path, a report of a closing one) rouses it.
//!
//! Rousing is on the relays' path, so while the thread is awake it costs one load of a flag:
//! the lock and the condition variable are taken only across a doze.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Condvar, Mutex,
    },
    time::{Duration, Instant},
};

/// How a call to [`Doze::sleep_unless`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slept {
    /// There was work when the sleep was announced: no sleep.
    Not,
    /// Another thread roused it.
    Roused,
    /// The time it was given ran out.
    Elapsed,
}

/// The sleep of one thread until another rouses it.
#[derive(Debug, Default)]
pub(crate) struct Doze {
    asleep: AtomicBool,
    lock: Mutex<()>,
    roused: Condvar,
}

impl Doze {
    /// Sleeps until [`Doze::rouse`] is called, or for at most `at_most` if given, unless
    /// `still_idle` says otherwise once the sleep is announced.
    ///
    /// `still_idle` must read the flags that the rousers raise before they call `rouse`, with
    /// sequentially consistent loads: then either it sees a flag raised, or the rouser sees the
    /// sleep and wakes it, and no work waits on a sleeping thread.
    pub(crate) fn sleep_unless(
        &self,
        at_most: Option<Duration>,
        still_idle: impl FnOnce() -> bool,
    ) -> Slept {
        self.asleep.store(true, Ordering::SeqCst);
        if !still_idle() {
            self.asleep.store(false, Ordering::SeqCst);
            return Slept::Not;
        }
        let deadline = at_most.map(|at_most| Instant::now() + at_most);
        let mut guard = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A rouser clears the flag, then notifies under the lock: cleared before this check,
        // the sleep ends here; after it, the notification comes once the wait has released
        // the lock.
        while self.asleep.load(Ordering::SeqCst) {
            let Some(deadline) = deadline else {
                guard = self
                    .roused
                    .wait(guard)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            // Out of time, the sleep ends here, unless a rouser cleared the flag meanwhile:
            // then it was roused after all.
            if left.is_zero() && self.asleep.swap(false, Ordering::SeqCst) {
                return Slept::Elapsed;
            }
            guard = self
                .roused
                .wait_timeout(guard, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        Slept::Roused
    }

    /// Whether the thread announced a sleep and nothing roused it since.
    #[cfg(test)]
    pub(crate) fn is_asleep(&self) -> bool {
        self.asleep.load(Ordering::SeqCst)
    }

    /// Wakes the thread if it sleeps; call it after raising the flag that says there is work.
    pub(crate) fn rouse(&self) {
        if self.asleep.load(Ordering::SeqCst) && self.asleep.swap(false, Ordering::SeqCst) {
            let _guard = self
                .lock
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            self.roused.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{atomic::AtomicBool, mpsc, Arc},
        time::Duration,
    };

    use super::*;

    /// A sleeper on `doze` that sleeps while `work` is not raised; its result comes on the
    /// channel, so that a lost wake-up fails the test instead of hanging it.
    fn sleeper(doze: &Arc<Doze>, work: &Arc<AtomicBool>) -> mpsc::Receiver<Slept> {
        let (doze, work) = (Arc::clone(doze), Arc::clone(work));
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(doze.sleep_unless(None, || !work.load(Ordering::SeqCst)));
        });
        receiver
    }

    const BOUND: Duration = Duration::from_secs(20);

    #[test]
    fn work_seen_when_the_sleep_is_announced_keeps_the_thread_awake() {
        let doze = Doze::default();
        assert_eq!(doze.sleep_unless(None, || false), Slept::Not);
        // Not asleep: a rouse has nothing to wake and does not block.
        doze.rouse();
    }

    #[test]
    fn a_sleeping_thread_wakes_when_roused_and_not_before() {
        let doze = Arc::new(Doze::default());
        let work = Arc::new(AtomicBool::new(false));
        let slept = sleeper(&doze, &work);
        while !doze.asleep.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        assert!(
            slept.recv_timeout(Duration::from_millis(50)).is_err(),
            "woke with nothing to do"
        );
        work.store(true, Ordering::SeqCst);
        doze.rouse();
        assert_eq!(slept.recv_timeout(BOUND), Ok(Slept::Roused), "not woken");
    }

    #[test]
    fn a_sleep_with_a_limit_ends_when_it_runs_out_and_a_rouse_after_it_is_harmless() {
        let doze = Doze::default();
        let started = Instant::now();
        let slept = doze.sleep_unless(Some(Duration::from_millis(30)), || true);
        assert_eq!(slept, Slept::Elapsed);
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert!(!doze.is_asleep(), "awake again");
        doze.rouse();
    }

    #[test]
    fn a_rouse_racing_the_sleep_is_never_lost() {
        // Work arrives while the sleeper announces its sleep, checks for work or waits,
        // whichever the threads' timing makes it.
        for _ in 0..2_000 {
            let doze = Arc::new(Doze::default());
            let work = Arc::new(AtomicBool::new(false));
            let slept = sleeper(&doze, &work);
            work.store(true, Ordering::SeqCst);
            doze.rouse();
            assert!(slept.recv_timeout(BOUND).is_ok(), "a wake-up was lost");
        }
    }
}
