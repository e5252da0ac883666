//! Adaptive per-flow quantum.
//!
//! The quantum is the credit a flow gains per DRR visit. It follows an exponentially weighted
//! moving average of the flow's chunk sizes, clamped to [`QuantumBounds`]:
//!
//! - **Lower bound, 1500 bytes** (one Ethernet payload): interactive TLS records (keystrokes,
//!   small API calls) fit in one visit, so a chatty flow is granted on the first visit after it
//!   becomes backlogged, never after several empty rounds.
//! - **Upper bound, 64 KiB** (the relay's buffer size): one visit covers one full read of a bulk
//!   flow, so a bulk flow is served once per round and a round never lasts more than one chunk per
//!   flow.
//!
//! Equal flows get equal quanta and therefore equal byte shares; a flow of small chunks gets a
//! small quantum, which keeps the rounds that others wait through short.

/// Bounds of the adaptive quantum, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantumBounds {
    /// Smallest quantum.
    pub min: u32,
    /// Largest quantum.
    pub max: u32,
}

impl Default for QuantumBounds {
    fn default() -> Self {
        Self {
            min: 1500,
            max: 64 * 1024,
        }
    }
}

/// The EWMA weight of a new sample is `1 / 2^EWMA_SHIFT` (1/4): a flow that changes from chatty to
/// bulk reaches the bulk quantum within a handful of chunks.
const EWMA_SHIFT: u32 = 2;

/// One flow's quantum, adapted to its chunk sizes.
#[derive(Clone, Copy, Debug)]
pub struct AdaptiveQuantum {
    /// EWMA of chunk sizes; 0 until the first sample.
    average: u32,
    bounds: QuantumBounds,
}

impl AdaptiveQuantum {
    /// A quantum with no history yet.
    pub fn new(bounds: QuantumBounds) -> Self {
        debug_assert!(bounds.min > 0 && bounds.min <= bounds.max);
        Self { average: 0, bounds }
    }

    /// Feeds one chunk size into the average.
    pub fn record(&mut self, chunk: u32) {
        self.average = if self.average == 0 {
            chunk
        } else {
            let average = i64::from(self.average);
            let delta = (i64::from(chunk) - average) >> EWMA_SHIFT;
            (average + delta).max(1) as u32
        };
    }

    /// The current quantum.
    pub fn current(&self) -> u32 {
        self.average.clamp(self.bounds.min, self.bounds.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatty_flows_get_the_minimum_and_bulk_flows_the_cap() {
        let mut chatty = AdaptiveQuantum::new(QuantumBounds::default());
        let mut bulk = AdaptiveQuantum::new(QuantumBounds::default());
        for _ in 0..20 {
            chatty.record(90);
            bulk.record(1 << 20);
        }
        assert_eq!(chatty.current(), 1500);
        assert_eq!(bulk.current(), 64 * 1024);
    }

    #[test]
    fn the_quantum_follows_a_change_of_pattern() {
        let mut quantum = AdaptiveQuantum::new(QuantumBounds::default());
        for _ in 0..10 {
            quantum.record(100);
        }
        for _ in 0..16 {
            quantum.record(32 * 1024);
        }
        assert!(quantum.current() > 30 * 1024, "got {}", quantum.current());
    }
}
