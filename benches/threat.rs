//! Threat feed matching with a 1,000,000-entry feed (domains, hosts-file lines and ranges): the
//! time to load it, and lookups that hit and miss, which must not grow with the feed.

#![allow(missing_docs)] // criterion macros generate undocumented items

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use fyntr::threat::ThreatIndex;

/// A feed of `entries` lines: plain names, AdGuard rules, hosts-file lines and ranges.
fn feed(entries: u32) -> String {
    let mut text = String::with_capacity(entries as usize * 32);
    for n in 0..entries {
        match n % 4 {
            0 => text.push_str(&format!("bad{n}.feed.example\n")),
            1 => text.push_str(&format!("||ads{n}.example^\n")),
            2 => text.push_str(&format!("0.0.0.0 track{n}.example\n")),
            _ => text.push_str(&format!(
                "{}.{}.{}.0/24\n",
                (n >> 16) & 0xff,
                (n >> 8) & 0xff,
                n & 0xff
            )),
        }
    }
    text
}

fn lookups(c: &mut Criterion) {
    let text = feed(1_000_000);
    let started = Instant::now();
    let mut index = ThreatIndex::default();
    let counts = index.add_feed(&text);
    eprintln!(
        "loaded 1,000,000 lines ({} domains, {} ranges) in {:.2} s",
        counts.domains,
        counts.ranges,
        started.elapsed().as_secs_f64()
    );
    let mut group = c.benchmark_group("threat_lookup_1m");
    group.bench_function("domain_hit_subdomain", |b| {
        b.iter(|| index.match_domain("cdn.a.bad400000.feed.example"))
    });
    group.bench_function("domain_miss", |b| {
        b.iter(|| index.match_domain("registry.terraform.io"))
    });
    group.bench_function("ip_in_range", |b| {
        b.iter(|| index.match_ip("1.2.3.77".parse().unwrap()))
    });
    group.bench_function("ip_miss", |b| {
        b.iter(|| index.match_ip("203.0.113.9".parse().unwrap()))
    });
    group.finish();
    let mut small = ThreatIndex::default();
    small.add_feed(&feed(1_000));
    let mut group = c.benchmark_group("threat_lookup_1k");
    group.bench_function("domain_miss", |b| {
        b.iter(|| small.match_domain("registry.terraform.io"))
    });
    group.bench_function("ip_miss", |b| {
        b.iter(|| small.match_ip("203.0.113.9".parse().unwrap()))
    });
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
