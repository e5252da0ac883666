//! How many downloads moved data lately, counted across all workers: a paced download rate's
//! window is shared among them.
//!
//! Sharing it among every open tunnel instead would hand each upload-only tunnel a slice of
//! the download window that it never uses: with two uploads beside two downloads, the downloads
//! could fill only half the rate, delivered less than the rate, and so never gave `auto` a
//! reason to raise it (testbed `steps`: downlink utilisation 0.12 to 0.44).
//!
//! Lock-free: time is cut into epochs of [`EPOCH`]; a download marks the epoch of each read
//! once, and the count is the larger of the current and the previous epoch's marks, so a
//! download that reads at least once per epoch is always counted and one that stopped is
//! forgotten within two epochs.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// How long one epoch lasts: longer than the gap between two reads of a slow paced download
/// (a paced chunk is half a millisecond of the rate, one segment at least, so 30 downloads
/// sharing 1 Mbit/s read one segment each about every 0.35 s).
const EPOCH: Duration = Duration::from_secs(1);

/// The count of downloads that read in recent epochs.
#[derive(Debug)]
pub(crate) struct ActiveDownloads {
    origin: Instant,
    /// Two slots, for even and odd epochs: the epoch number in the high 32 bits, the count of
    /// downloads that marked it in the low 32.
    slots: [AtomicU64; 2],
}

/// One download's memory of the last epoch it marked.
#[derive(Debug, Default)]
pub(crate) struct DownloadMark {
    last_epoch: Option<u64>,
}

impl ActiveDownloads {
    /// A count that starts at zero, with its epochs counted from `origin`.
    pub(crate) fn new(origin: Instant) -> Self {
        Self {
            origin,
            slots: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        // Epoch 0 is never marked, so an empty slot (all zero) reads as an old epoch.
        (now.saturating_duration_since(self.origin).as_millis() / EPOCH.as_millis()) as u64 + 1
    }

    /// Counts the download behind `mark` as active at `now` (once per epoch).
    pub(crate) fn mark(&self, mark: &mut DownloadMark, now: Instant) {
        let epoch = self.epoch(now);
        if mark.last_epoch == Some(epoch) {
            return;
        }
        mark.last_epoch = Some(epoch);
        let slot = &self.slots[(epoch % 2) as usize];
        let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |packed| {
            let (marked, count) = unpack(packed);
            match marked.cmp(&epoch) {
                std::cmp::Ordering::Equal => Some(pack(epoch, count.saturating_add(1))),
                std::cmp::Ordering::Less => Some(pack(epoch, 1)),
                // A newer epoch already took the slot: this mark is late, drop it.
                std::cmp::Ordering::Greater => None,
            }
        });
    }

    /// Downloads that read in this epoch or the one before, whichever counted more.
    pub(crate) fn count(&self, now: Instant) -> usize {
        let epoch = self.epoch(now);
        self.slots
            .iter()
            .map(|slot| unpack(slot.load(Ordering::Acquire)))
            .filter(|&(marked, _)| marked == epoch || marked + 1 == epoch)
            .map(|(_, count)| count as usize)
            .max()
            .unwrap_or(0)
    }
}

fn pack(epoch: u64, count: u32) -> u64 {
    (epoch << 32) | u64::from(count)
}

fn unpack(packed: u64) -> (u64, u32) {
    (packed >> 32, packed as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh count, and the instant `ms` milliseconds after its origin.
    fn fresh() -> (ActiveDownloads, impl Fn(u64) -> Instant) {
        let origin = Instant::now();
        (ActiveDownloads::new(origin), move |ms| {
            origin + Duration::from_millis(ms)
        })
    }

    #[test]
    fn each_download_counts_once_per_epoch_and_is_forgotten_after_two() {
        let (active, at) = fresh();
        let (mut first, mut second) = (DownloadMark::default(), DownloadMark::default());
        assert_eq!(active.count(at(0)), 0);
        for ms in [0, 100, 200, 900] {
            active.mark(&mut first, at(ms));
        }
        active.mark(&mut second, at(500));
        assert_eq!(active.count(at(950)), 2);
        // The next epoch: only the first still reads, but the last epoch's two still count.
        active.mark(&mut first, at(1_200));
        assert_eq!(active.count(at(1_300)), 2);
        // Two epochs on, only the first is left.
        active.mark(&mut first, at(2_100));
        assert_eq!(active.count(at(2_200)), 1);
        // Nobody reads any more: forgotten once two epochs have passed.
        assert_eq!(active.count(at(3_500)), 1);
        assert_eq!(active.count(at(4_000)), 0);
    }

    #[test]
    fn a_late_mark_does_not_overwrite_a_newer_epoch() {
        let (active, at) = fresh();
        let (mut early, mut late) = (DownloadMark::default(), DownloadMark::default());
        active.mark(&mut early, at(2_100));
        // A mark for epoch 1's slot-mate (epoch 3 shares the slot with epoch 1) arriving late.
        active.mark(&mut late, at(100));
        assert_eq!(active.count(at(2_200)), 1);
    }
}
