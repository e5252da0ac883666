//! Unit tests and deterministic simulations of the DRR scheduler with a virtual clock.

use std::{collections::VecDeque, sync::Arc};

use super::*;

fn config(window_bytes: u64) -> SchedulerConfig {
    SchedulerConfig {
        window_bytes,
        ..SchedulerConfig::default()
    }
}

/// Jain's fairness index of `shares`: 1.0 is perfectly fair, 1/n is one flow taking everything.
fn jain(shares: &[f64]) -> f64 {
    let sum: f64 = shares.iter().sum();
    let squares: f64 = shares.iter().map(|share| share * share).sum();
    sum * sum / (shares.len() as f64 * squares)
}

/// A small deterministic PRNG (xorshift64*), so simulations are reproducible without a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// A virtual link that completes granted writes in grant order at `bytes_per_ms`.
struct Link {
    now: Instant,
    bytes_per_ms: u64,
    writing: VecDeque<(FlowId, u32)>,
    progress: u64,
}

impl Link {
    fn new(bytes_per_ms: u64) -> Self {
        Self {
            now: Instant::now(),
            bytes_per_ms,
            writing: VecDeque::new(),
            progress: 0,
        }
    }

    /// Advances one millisecond; returns the flows whose writes completed.
    fn tick(&mut self, scheduler: &mut Scheduler) -> Vec<FlowId> {
        self.now += Duration::from_millis(1);
        self.progress += self.bytes_per_ms;
        let mut done = Vec::new();
        while let Some(&(flow, len)) = self.writing.front() {
            if self.progress < u64::from(len) {
                break;
            }
            self.progress -= u64::from(len);
            self.writing.pop_front();
            scheduler.handle_complete(flow);
            done.push(flow);
        }
        if self.writing.is_empty() {
            self.progress = 0;
        }
        done
    }

    fn drain_grants(&mut self, scheduler: &mut Scheduler) -> Vec<Grant> {
        let mut grants = Vec::new();
        while let Some(grant) = scheduler.poll_grant(self.now) {
            self.writing.push_back((grant.flow, grant.len));
            grants.push(grant);
        }
        grants
    }
}

#[test]
fn an_idle_window_grants_at_once() {
    let mut scheduler = Scheduler::new(config(1 << 20));
    let flow = scheduler.add_flow();
    scheduler.handle_enqueue(flow, 65536);
    let now = Instant::now();
    assert_eq!(scheduler.poll_grant(now), Some(Grant { flow, len: 65536 }));
    assert_eq!(scheduler.poll_grant(now), None);
    assert_eq!(scheduler.in_flight(), 65536);
    scheduler.handle_complete(flow);
    assert_eq!(scheduler.in_flight(), 0);
}

#[test]
fn a_chunk_larger_than_the_window_still_goes_alone() {
    let mut scheduler = Scheduler::new(config(1000));
    let flow = scheduler.add_flow();
    scheduler.handle_enqueue(flow, 5000);
    assert!(scheduler.poll_grant(Instant::now()).is_some());
}

#[test]
fn a_full_window_holds_grants_until_a_write_completes() {
    let mut scheduler = Scheduler::new(config(100_000));
    let (a, b) = (scheduler.add_flow(), scheduler.add_flow());
    let now = Instant::now();
    scheduler.handle_enqueue(a, 60_000);
    scheduler.handle_enqueue(b, 60_000);
    assert_eq!(scheduler.poll_grant(now).map(|grant| grant.flow), Some(a));
    assert_eq!(scheduler.poll_grant(now), None, "window of 100 kB is full");
    scheduler.handle_complete(a);
    assert_eq!(scheduler.poll_grant(now).map(|grant| grant.flow), Some(b));
}

#[test]
fn an_emptied_flow_banks_no_credit() {
    let mut scheduler = Scheduler::new(config(1 << 30));
    let flow = scheduler.add_flow();
    let now = Instant::now();
    for _ in 0..10 {
        scheduler.handle_enqueue(flow, 100);
        scheduler.poll_grant(now).unwrap();
        assert_eq!(
            scheduler.deficit(flow),
            0,
            "deficit resets when the queue empties"
        );
        scheduler.handle_complete(flow);
    }
    // A flow with a queue keeps its remainder only while backlogged.
    scheduler.handle_enqueue(flow, 100);
    scheduler.handle_enqueue(flow, 100);
    scheduler.poll_grant(now).unwrap();
    assert!(scheduler.deficit(flow) > 0);
    scheduler.poll_grant(now).unwrap();
    assert_eq!(scheduler.deficit(flow), 0);
}

#[test]
fn removed_flows_release_their_window_share_and_stale_ids_are_ignored() {
    let mut scheduler = Scheduler::new(config(100));
    let flow = scheduler.add_flow();
    scheduler.handle_enqueue(flow, 100);
    scheduler.poll_grant(Instant::now()).unwrap();
    scheduler.handle_enqueue(flow, 100);
    scheduler.remove_flow(flow);
    assert_eq!(scheduler.in_flight(), 0);
    let reused = scheduler.add_flow();
    assert_eq!(reused.index(), flow.index());
    scheduler.handle_enqueue(flow, 7); // stale: ignored
    scheduler.handle_complete(flow); // stale: ignored
    assert_eq!(scheduler.poll_grant(Instant::now()), None);
    scheduler.handle_enqueue(reused, 10);
    assert_eq!(
        scheduler.poll_grant(Instant::now()),
        Some(Grant {
            flow: reused,
            len: 10
        })
    );
}

#[test]
fn a_stalled_write_leaves_the_window_so_others_proceed() {
    let mut scheduler = Scheduler::new(config(64 * 1024));
    let (stuck, other) = (scheduler.add_flow(), scheduler.add_flow());
    let start = Instant::now();
    scheduler.handle_enqueue(stuck, 64 * 1024);
    assert!(scheduler.poll_grant(start).is_some());
    scheduler.handle_enqueue(other, 1000);
    assert_eq!(scheduler.poll_grant(start), None);
    let wake = scheduler
        .poll_timeout()
        .expect("a waiting flow needs a timer");
    assert_eq!(wake, start + SchedulerConfig::default().stall_after);
    assert_eq!(
        scheduler.poll_grant(wake).map(|grant| grant.flow),
        Some(other)
    );
    assert_eq!(scheduler.stalled_grants(), 1);
    // The stuck write completing later does not release its bytes twice.
    scheduler.handle_complete(stuck);
    scheduler.handle_complete(other);
    assert_eq!(scheduler.in_flight(), 0);
}

/// Runs `flows` always-backlogged flows with chunk sizes from `chunk_size` through a link slower
/// than the proxy; returns bytes granted per flow.
fn simulate_backlogged(
    flows: usize,
    milliseconds: u64,
    mut chunk_size: impl FnMut(usize) -> u32,
) -> Vec<f64> {
    let mut scheduler = Scheduler::new(config(256 * 1024));
    let ids: Vec<FlowId> = (0..flows).map(|_| scheduler.add_flow()).collect();
    let mut link = Link::new(100_000);
    for (i, id) in ids.iter().enumerate() {
        scheduler.handle_enqueue(*id, chunk_size(i));
    }
    for _ in 0..milliseconds {
        link.drain_grants(&mut scheduler);
        for done in link.tick(&mut scheduler) {
            let i = ids.iter().position(|id| *id == done).unwrap();
            scheduler.handle_enqueue(done, chunk_size(i));
        }
    }
    ids.iter()
        .map(|id| scheduler.granted_bytes(*id) as f64)
        .collect()
}

#[test]
fn equal_backlogged_flows_get_equal_shares() {
    let shares = simulate_backlogged(20, 5_000, |_| 16 * 1024);
    let index = jain(&shares);
    assert!(index >= 0.99, "Jain's index {index}, shares {shares:?}");
}

#[test]
fn equal_flows_with_noisy_chunk_sizes_stay_fair() {
    let mut rng = Rng(0x5eed);
    let shares = simulate_backlogged(50, 10_000, |_| 8 * 1024 + rng.below(56 * 1024) as u32);
    let index = jain(&shares);
    assert!(index >= 0.99, "Jain's index {index}");
}

#[test]
fn a_chatty_flow_among_ten_bulk_flows_is_granted_within_one_round() {
    let mut scheduler = Scheduler::new(config(128 * 1024));
    let bulk: Vec<FlowId> = (0..10).map(|_| scheduler.add_flow()).collect();
    let chatty = scheduler.add_flow();
    let mut link = Link::new(64 * 1024);
    // Each bulk flow keeps several 64 KiB chunks queued, so the window stays full.
    for id in &bulk {
        for _ in 0..4 {
            scheduler.handle_enqueue(*id, 64 * 1024);
        }
    }
    let mut rng = Rng(7);
    for _ in 0..2_000 {
        link.drain_grants(&mut scheduler);
        for done in link.tick(&mut scheduler) {
            if done != chatty {
                scheduler.handle_enqueue(done, 64 * 1024);
            }
        }
        if rng.below(50) == 0 {
            scheduler.handle_enqueue(chatty, 200);
            // Count grants to others until the chatty chunk is granted.
            let mut others = 0;
            loop {
                let grants = link.drain_grants(&mut scheduler);
                if let Some(position) = grants.iter().position(|grant| grant.flow == chatty) {
                    others += position;
                    break;
                }
                others += grants.len();
                for done in link.tick(&mut scheduler) {
                    if done != chatty {
                        scheduler.handle_enqueue(done, 64 * 1024);
                    }
                }
            }
            assert!(
                others <= bulk.len(),
                "chatty flow waited behind {others} grants, more than one round of {}",
                bulk.len()
            );
        }
    }
}

#[test]
fn no_flow_starves_under_random_traffic() {
    let mut rng = Rng(42);
    let mut scheduler = Scheduler::new(config(512 * 1024));
    let ids: Vec<FlowId> = (0..200).map(|_| scheduler.add_flow()).collect();
    let mut link = Link::new(50_000);
    let mut waiting_since: Vec<Option<u64>> = vec![None; ids.len()];
    let mut longest_wait = 0;
    for ms in 0..20_000u64 {
        for (i, id) in ids.iter().enumerate() {
            if waiting_since[i].is_none() && rng.below(20) == 0 {
                scheduler.handle_enqueue(*id, 1 + rng.below(64 * 1024) as u32);
                waiting_since[i] = Some(ms);
            }
        }
        for grant in link.drain_grants(&mut scheduler) {
            let i = ids.iter().position(|id| *id == grant.flow).unwrap();
            let since = waiting_since[i].take().expect("granted only when waiting");
            longest_wait = longest_wait.max(ms - since);
        }
        link.tick(&mut scheduler);
    }
    for (i, since) in waiting_since.iter().enumerate() {
        if let Some(since) = since {
            longest_wait = longest_wait.max(20_000 - since);
            assert!(20_000 - since < 5_000, "flow {i} starved since {since} ms");
        }
    }
    // 200 flows of at most 64 KiB on a 50 kB/ms link: a round takes at most ~270 ms.
    assert!(longest_wait < 1_000, "a flow waited {longest_wait} ms");
}

#[test]
fn paced_flows_share_the_rate_fairly_and_never_exceed_it() {
    let start = Instant::now();
    let rate = crate::sched::pacer::Rate(2_000_000.0); // 2 MB/s
    let burst = 64 * 1024;
    let pacer = Arc::new(crate::sched::pacer::Pacer::new(rate, burst, start));
    let mut scheduler = Scheduler::new(config(4 << 20));
    scheduler.set_pacer(pacer);
    let ids: Vec<FlowId> = (0..8).map(|_| scheduler.add_flow()).collect();
    for id in &ids {
        scheduler.handle_enqueue(*id, 16 * 1024);
    }
    let mut now = start;
    let mut granted_total = 0u64;
    for _ in 0..5_000 {
        // A fast link: every grant completes at once, and its flow has another chunk ready.
        while let Some(grant) = scheduler.poll_grant(now) {
            granted_total += u64::from(grant.len);
            scheduler.handle_complete(grant.flow);
            scheduler.handle_enqueue(grant.flow, 16 * 1024);
        }
        let wake = scheduler
            .poll_timeout()
            .expect("paced flows wait for the pacer");
        assert!(wake > now);
        now = wake
            .min(now + Duration::from_millis(1))
            .max(now + Duration::from_micros(100));
    }
    let elapsed = now.duration_since(start).as_secs_f64();
    let allowed = rate.bytes_per_second() * elapsed + burst as f64;
    assert!(
        granted_total as f64 <= allowed,
        "{granted_total} > {allowed}"
    );
    assert!(granted_total as f64 >= rate.bytes_per_second() * elapsed * 0.95);
    let shares: Vec<f64> = ids
        .iter()
        .map(|id| scheduler.granted_bytes(*id) as f64)
        .collect();
    assert!(jain(&shares) >= 0.99, "{shares:?}");
}

#[test]
fn unasked_bytes_and_the_other_directions_acks_delay_later_grants() {
    use crate::sched::pacer::{Pacer, Rate};
    let start = Instant::now();
    // 1 MB/s, a burst of one 1448-byte chunk (1514 bytes on the wire).
    let pacer = Arc::new(Pacer::new(Rate(1_000_000.0), 1514, start));
    let mut scheduler = Scheduler::new(config(4 << 20));
    scheduler.set_pacer(Arc::clone(&pacer));
    let flow = scheduler.add_flow();
    // 2896 bytes arrived unasked: 3028 on the wire, 3.028 ms at the rate.
    scheduler.charge_unasked(2896, start);
    scheduler.handle_enqueue(flow, 1448);
    assert!(scheduler.poll_grant(start).is_none());
    let retry = scheduler.poll_timeout().expect("waits for the pacer");
    assert_eq!(retry.duration_since(start), Duration::from_micros(3028));
    assert!(scheduler.poll_grant(retry).is_some());

    // The opposite direction's grants charge this pacer one ACK per two segments.
    let mut opposite = Scheduler::new(config(4 << 20));
    opposite.set_ack_pacer(Arc::clone(&pacer));
    let other = opposite.add_flow();
    opposite.handle_enqueue(other, 2 * 1448);
    assert!(
        opposite.poll_grant(retry).is_some(),
        "the opposite side is not paced"
    );
    scheduler.handle_complete(flow);
    scheduler.handle_enqueue(flow, 1448);
    let after_acks = retry + Duration::from_micros(1514);
    assert!(
        scheduler.poll_grant(after_acks).is_none(),
        "66 bytes of ACKs are charged"
    );
    assert!(scheduler
        .poll_grant(after_acks + Duration::from_micros(66))
        .is_some());
}

#[test]
fn grants_of_one_segment_charge_the_opposite_pacer_per_acked_payload_not_per_grant() {
    let now = Instant::now();
    let (acks, mut scheduler) = charging_acks_to_a_pacer(now);
    let flow = scheduler.add_flow();
    for _ in 0..4 {
        scheduler.handle_enqueue(flow, crate::sched::pacer::SEGMENT_PAYLOAD as u32);
        scheduler.poll_grant(now).expect("granted");
        scheduler.handle_complete(flow);
    }
    // Four segments draw two ACKs (132 bytes), not four.
    assert_acks_charged(&acks, 2, now);
}

/// A scheduler charging its grants' ACKs to a pacer of 1000 bytes a second with a second's
/// burst: what it charges shows in what the pacer still admits at once.
fn charging_acks_to_a_pacer(now: Instant) -> (Arc<Pacer>, Scheduler) {
    let acks = Arc::new(Pacer::new(crate::sched::pacer::Rate(1000.0), 1000, now));
    let mut scheduler = Scheduler::new(config(1 << 20));
    scheduler.set_ack_pacer(Arc::clone(&acks));
    (acks, scheduler)
}

/// Asserts that `acks` was charged for exactly `count` bare ACKs.
fn assert_acks_charged(acks: &Pacer, count: u64, now: Instant) {
    let charged = count * crate::sched::pacer::SEGMENT_HEADERS;
    assert!(acks.try_admit(1000 - charged + 1, now).is_err());
    assert!(acks.try_admit(1000 - charged, now).is_ok());
}

#[test]
fn unasked_bytes_charge_the_opposite_pacer_for_their_acks_at_once() {
    let now = Instant::now();
    let (acks, scheduler) = charging_acks_to_a_pacer(now);
    // A first flight of four segments, before any grant: two ACKs' worth charged now.
    scheduler.charge_unasked(4 * crate::sched::pacer::SEGMENT_PAYLOAD, now);
    assert_acks_charged(&acks, 2, now);
}
