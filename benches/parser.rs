//! CONNECT head parsing: a typical curl head, and a large one near the limits.

#![allow(missing_docs)] // criterion macros generate undocumented items

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fyntr::proto;

fn parse(c: &mut Criterion) {
    let typical = b"CONNECT registry.terraform.io:443 HTTP/1.1\r\nHost: registry.terraform.io:443\r\nUser-Agent: Go-http-client/1.1\r\n\r\n";
    let mut large = b"CONNECT s3.eu-west-1.amazonaws.com:443 HTTP/1.1\r\n".to_vec();
    for i in 0..60 {
        large.extend_from_slice(format!("X-Header-{i}: {}\r\n", "v".repeat(200)).as_bytes());
    }
    large.extend_from_slice(b"\r\n");
    let mut group = c.benchmark_group("connect_parse");
    group.throughput(Throughput::Bytes(typical.len() as u64));
    group.bench_function("typical", |b| b.iter(|| proto::parse(typical)));
    group.throughput(Throughput::Bytes(large.len() as u64));
    group.bench_function("large", |b| b.iter(|| proto::parse(&large)));
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
