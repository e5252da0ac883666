//! The connection cap all workers share: every accepted client connection holds a place under
//! it, pending CONNECTs included, until it closes.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

/// The connection cap, shared by all workers. Counts every accepted client connection, pending
/// CONNECTs included.
#[derive(Debug)]
pub struct Admission {
    cap: AtomicUsize,
    active: AtomicUsize,
}

impl Admission {
    /// A cap of `cap` concurrent connections.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: AtomicUsize::new(cap.max(1)),
            active: AtomicUsize::new(0),
        }
    }

    /// Admits one connection if the cap allows; the ticket gives the place back when dropped.
    pub fn try_admit(self: &Arc<Self>) -> Option<Ticket> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |active| {
                (active < self.cap()).then_some(active + 1)
            })
            .ok()?;
        Some(Ticket(Arc::clone(self)))
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap.load(Ordering::Relaxed)
    }

    /// Changes the cap for the connections that come next; connections over a lowered cap
    /// stay until they close.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap.max(1), Ordering::Relaxed);
    }

    /// Connections admitted now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

/// One admitted connection's place under the cap.
#[derive(Debug)]
pub struct Ticket(Arc<Admission>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_holds_the_cap_and_tickets_give_places_back() {
        let admission = Arc::new(Admission::new(2));
        let a = admission.try_admit().unwrap();
        let _b = admission.try_admit().unwrap();
        assert!(admission.try_admit().is_none());
        drop(a);
        assert!(admission.try_admit().is_some());
    }
}
