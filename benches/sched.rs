//! Grants per second of the DRR scheduler with 10, 1k and 10k backlogged flows.

#![allow(missing_docs)] // criterion macros generate undocumented items

use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fyntr::sched::{Scheduler, SchedulerConfig};

fn grants(c: &mut Criterion) {
    let mut group = c.benchmark_group("drr_grant");
    for flows in [10usize, 1_000, 10_000] {
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::from_parameter(flows), &flows, |b, &flows| {
            let mut scheduler = Scheduler::new(SchedulerConfig::default());
            let ids: Vec<_> = (0..flows).map(|_| scheduler.add_flow()).collect();
            for id in &ids {
                scheduler.handle_enqueue(*id, 16 * 1024);
            }
            let now = Instant::now();
            // Steady state: every grant completes at once and its flow enqueues again.
            b.iter(|| {
                let grant = scheduler.poll_grant(now).expect("backlogged flows");
                scheduler.handle_complete(grant.flow);
                scheduler.handle_enqueue(grant.flow, 16 * 1024);
                grant
            });
        });
    }
    group.finish();
}

criterion_group!(benches, grants);
criterion_main!(benches);
