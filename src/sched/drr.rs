//! The DRR scheduler proper.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    pacer::{acks_on_the_wire, on_the_wire, Pacer, ACKED_PAYLOAD},
    quantum::{AdaptiveQuantum, QuantumBounds},
};

/// Tuning of one worker's scheduler.
#[derive(Clone, Copy, Debug)]
pub struct SchedulerConfig {
    /// Bytes that may be granted but not yet written at once. 4 MiB is 64 full chunks: far more
    /// than one flow can use (each flow has one chunk in flight), so a lone bulk flow is never
    /// slowed, yet small enough that when writes back up, DRR orders what goes next.
    pub window_bytes: u64,
    /// A grant unwritten for this long is blocked by its own peer, and leaves the window.
    pub stall_after: Duration,
    /// Bounds of the adaptive quantum.
    pub quantum: QuantumBounds,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            window_bytes: 4 << 20,
            stall_after: Duration::from_millis(20),
            quantum: QuantumBounds::default(),
        }
    }
}

/// Names one flow (one direction of one tunnel). Stale ids of removed flows are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowId {
    index: u32,
    generation: u32,
}

impl FlowId {
    /// A dense index, unique among the live flows, for side tables.
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// Permission for `flow` to write its next chunk of `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The flow allowed to write.
    pub flow: FlowId,
    /// Length of the granted chunk.
    pub len: u32,
}

/// A granted chunk whose write has not completed yet.
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    sequence: u64,
    len: u32,
    /// Still counted against the window (false once it stalled).
    counted: bool,
}

#[derive(Debug)]
struct Flow {
    generation: u32,
    live: bool,
    queue: VecDeque<u32>,
    deficit: u64,
    quantum: AdaptiveQuantum,
    /// In the round (has queued chunks).
    backlogged: bool,
    /// Its current visit already added the quantum.
    visiting: bool,
    outstanding: VecDeque<Outstanding>,
    granted_bytes: u64,
}

/// One worker's DRR scheduler. See the [module docs](super).
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    flows: Vec<Flow>,
    free: Vec<u32>,
    /// Backlogged flows in visiting order; may hold stale ids, skipped lazily.
    round: VecDeque<FlowId>,
    /// Bytes counted against the window.
    in_flight: u64,
    /// Bytes of chunks waiting for a grant.
    queued: u64,
    /// Outstanding grants by age, to find stalled ones; may hold finished ones, pruned lazily.
    by_age: VecDeque<(Instant, FlowId, u64)>,
    next_sequence: u64,
    stalled_grants: u64,
    /// The shared rate limit, if any; consulted for every grant.
    pacer: Option<Arc<Pacer>>,
    /// When the pacer allows the chunk it last refused.
    pacer_retry: Option<Instant>,
    /// The opposite direction's pacer, if any: charged for the ACKs each grant draws over it.
    ack_pacer: Option<Arc<Pacer>>,
    /// Payload granted since the last ACK charged: ACKs are charged per [`ACKED_PAYLOAD`]
    /// granted in all, not per grant (a paced chunk is often one segment, and a whole ACK for
    /// each charged the uploads more than the ACKs the downloads drew).
    ack_payload: u64,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            flows: Vec::new(),
            free: Vec::new(),
            round: VecDeque::new(),
            in_flight: 0,
            queued: 0,
            by_age: VecDeque::new(),
            next_sequence: 0,
            stalled_grants: 0,
            pacer: None,
            pacer_retry: None,
            ack_pacer: None,
            ack_payload: 0,
        }
    }

    /// Paces every grant through `pacer` (shared with the other workers' schedulers).
    pub fn set_pacer(&mut self, pacer: Arc<Pacer>) {
        self.pacer = Some(pacer);
    }

    /// Counts `bytes` that went out unasked against this scheduler's pacer, if any, and the
    /// ACKs they drew against the opposite direction's. Bytes that come unasked are a remote
    /// sender's first flight, which a new socket acknowledges segment by segment (quick-ACK
    /// mode) as it arrives, before fyntr reads it: half of those ACKs are charged here, the
    /// other half with the grant that reads the bytes. Charged only at the read, a burst's
    /// downloads starting together put their first flights' ACKs on an uplink the uploads
    /// already filled (testbed asymmetric: 5 Mbit/s, the queue from 2 to 28 ms in 0.4 s).
    pub fn charge_unasked(&self, bytes: u64, now: Instant) {
        if let Some(pacer) = &self.pacer {
            pacer.charge(on_the_wire(bytes), now);
        }
        if let Some(ack_pacer) = &self.ack_pacer {
            ack_pacer.charge(acks_on_the_wire(bytes), now);
        }
    }

    /// Charges `pacer`, the opposite direction's, for the ACKs every grant's data draws back.
    pub fn set_ack_pacer(&mut self, pacer: Arc<Pacer>) {
        self.ack_pacer = Some(pacer);
    }

    /// Registers a new flow.
    pub fn add_flow(&mut self) -> FlowId {
        let fresh = |generation| Flow {
            generation,
            live: true,
            queue: VecDeque::new(),
            deficit: 0,
            quantum: AdaptiveQuantum::new(self.config.quantum),
            backlogged: false,
            visiting: false,
            outstanding: VecDeque::new(),
            granted_bytes: 0,
        };
        if let Some(index) = self.free.pop() {
            let slot = &mut self.flows[index as usize];
            let generation = slot.generation.wrapping_add(1);
            *slot = fresh(generation);
            FlowId { index, generation }
        } else {
            let index = u32::try_from(self.flows.len()).expect("fewer than 2^32 flows");
            self.flows.push(fresh(0));
            FlowId {
                index,
                generation: 0,
            }
        }
    }

    /// Removes a flow: its queued chunks are forgotten and its in-flight bytes leave the window.
    pub fn remove_flow(&mut self, id: FlowId) {
        let Some(flow) = self.flow_mut(id) else {
            return;
        };
        let released: u64 = flow
            .outstanding
            .iter()
            .filter(|grant| grant.counted)
            .map(|grant| u64::from(grant.len))
            .sum();
        flow.live = false;
        let forgotten: u64 = flow.queue.drain(..).map(u64::from).sum();
        flow.outstanding.clear();
        self.in_flight -= released;
        self.queued -= forgotten;
        self.free.push(id.index);
    }

    /// A flow has a chunk of `len` bytes to write.
    pub fn handle_enqueue(&mut self, id: FlowId, len: u32) {
        let Some(flow) = self.flow_mut(id) else {
            return;
        };
        flow.quantum.record(len);
        flow.queue.push_back(len);
        if !flow.backlogged {
            flow.backlogged = true;
            flow.visiting = false;
            self.round.push_back(id);
        }
        self.queued += u64::from(len);
    }

    /// The oldest outstanding write of `id` has completed.
    pub fn handle_complete(&mut self, id: FlowId) {
        let Some(flow) = self.flow_mut(id) else {
            return;
        };
        if let Some(grant) = flow.outstanding.pop_front() {
            if grant.counted {
                self.in_flight -= u64::from(grant.len);
            }
        }
        self.prune_by_age();
    }

    /// The next grant in DRR order, if the window allows one at `now`.
    pub fn poll_grant(&mut self, now: Instant) -> Option<Grant> {
        self.release_stalled(now);
        self.pacer_retry = None;
        let pacer = self.pacer.clone();
        let ack_pacer = self.ack_pacer.clone();
        loop {
            let id = *self.round.front()?;
            let in_flight = self.in_flight;
            let window = self.config.window_bytes;
            let sequence = self.next_sequence;
            let Some(flow) = self.flow_mut(id).filter(|flow| flow.backlogged) else {
                self.round.pop_front();
                continue;
            };
            let head = *flow.queue.front().expect("a backlogged flow has a chunk");
            if !flow.visiting {
                flow.visiting = true;
                flow.deficit += u64::from(flow.quantum.current());
            }
            if u64::from(head) > flow.deficit {
                // The visit is over; the deficit carries to the next round.
                flow.visiting = false;
                self.round.rotate_left(1);
                continue;
            }
            // A chunk larger than the whole window may still go alone.
            if in_flight > 0 && in_flight + u64::from(head) > window {
                return None;
            }
            if let Some(pacer) = &pacer {
                if let Err(retry_at) = pacer.try_admit(on_the_wire(u64::from(head)), now) {
                    // The visit goes on when the pacer allows: DRR still picks who goes next.
                    self.pacer_retry = Some(retry_at);
                    return None;
                }
            }
            flow.queue.pop_front();
            flow.deficit -= u64::from(head);
            flow.granted_bytes += u64::from(head);
            flow.outstanding.push_back(Outstanding {
                sequence,
                len: head,
                counted: true,
            });
            if flow.queue.is_empty() {
                flow.deficit = 0;
                flow.backlogged = false;
                flow.visiting = false;
                self.round.pop_front();
            }
            self.next_sequence += 1;
            self.in_flight += u64::from(head);
            self.queued -= u64::from(head);
            if let Some(ack_pacer) = &ack_pacer {
                let payload = self.ack_payload + u64::from(head);
                let whole = payload - payload % ACKED_PAYLOAD;
                self.ack_payload = payload - whole;
                // A grant that completes no ACK's payload leaves the shared pacer alone.
                if whole > 0 {
                    ack_pacer.charge(acks_on_the_wire(whole), now);
                }
            }
            self.by_age.push_back((now, id, sequence));
            return Some(Grant {
                flow: id,
                len: head,
            });
        }
    }

    /// When [`Scheduler::poll_grant`] should be called again even if nothing else happens, if a
    /// flow is waiting: the moment the oldest outstanding grant counts as stalled, or the pacer
    /// allows the next chunk, whichever is first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.round.is_empty() {
            return None;
        }
        let stall = self
            .by_age
            .front()
            .map(|(granted_at, _, _)| *granted_at + self.config.stall_after);
        match (stall, self.pacer_retry) {
            (Some(stall), Some(retry)) => Some(stall.min(retry)),
            (stall, retry) => stall.or(retry),
        }
    }

    /// Bytes of chunks waiting for a grant: the DRR backlog.
    pub fn queued_bytes(&self) -> u64 {
        self.queued
    }

    /// Bytes granted whose writes have not completed, counted against the window.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Total bytes ever granted to `id`.
    pub fn granted_bytes(&self, id: FlowId) -> u64 {
        self.flow(id).map_or(0, |flow| flow.granted_bytes)
    }

    /// Current deficit of `id` (for tests and diagnostics).
    pub fn deficit(&self, id: FlowId) -> u64 {
        self.flow(id).map_or(0, |flow| flow.deficit)
    }

    /// Grants that stalled and left the window so far.
    pub fn stalled_grants(&self) -> u64 {
        self.stalled_grants
    }

    fn flow(&self, id: FlowId) -> Option<&Flow> {
        self.flows
            .get(id.index())
            .filter(|flow| flow.live && flow.generation == id.generation)
    }

    fn flow_mut(&mut self, id: FlowId) -> Option<&mut Flow> {
        self.flows
            .get_mut(id.index())
            .filter(|flow| flow.live && flow.generation == id.generation)
    }

    /// Outstanding grants older than `stall_after` stop counting against the window.
    fn release_stalled(&mut self, now: Instant) {
        while let Some(&(granted_at, id, sequence)) = self.by_age.front() {
            if granted_at + self.config.stall_after > now {
                break;
            }
            self.by_age.pop_front();
            let Some(flow) = self.flow_mut(id) else {
                continue;
            };
            if let Some(grant) = flow
                .outstanding
                .iter_mut()
                .find(|grant| grant.sequence == sequence && grant.counted)
            {
                grant.counted = false;
                let len = u64::from(grant.len);
                self.in_flight -= len;
                self.stalled_grants += 1;
            }
        }
    }

    /// Drops finished grants from the front of the age queue so `poll_timeout` stays accurate.
    fn prune_by_age(&mut self) {
        while let Some(&(_, id, sequence)) = self.by_age.front() {
            let outstanding = self.flow(id).is_some_and(|flow| {
                flow.outstanding
                    .iter()
                    .any(|grant| grant.sequence == sequence && grant.counted)
            });
            if outstanding {
                break;
            }
            self.by_age.pop_front();
        }
    }
}

#[cfg(test)]
mod tests;
