//! A chatty tunnel beside bulk tunnels: its round trips are never starved, on either backend.
//!
//! No timing threshold: the test checks that every round trip is byte-exact and that all of
//! them complete while the bulk transfers are still running (a starved chatty flow would finish
//! only after them); the latencies are printed for the record.

#![allow(missing_docs)]

mod common;

use std::{
    io::{Read, Write},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use common::{targets, *};

on_each_backend! {
    fn a_chatty_tunnel_keeps_its_round_trips_beside_bulk_tunnels(backend) {
        let echo = targets::echo();
        let sink = targets::counting_sink();
        let ports = format!("{},{}", echo.port(), sink.port());
        let proxy = Arc::new(Proxy::start(backend, &["--allow-port", &ports, "--workers", "1"]));
        let bulk_done = Arc::new(AtomicUsize::new(0));
        let stop_bulk = Arc::new(AtomicBool::new(false));
        let mut bulk = Vec::new();
        for i in 0..4u64 {
            let proxy = Arc::clone(&proxy);
            let bulk_done = Arc::clone(&bulk_done);
            let stop_bulk = Arc::clone(&stop_bulk);
            bulk.push(thread::spawn(move || {
                let mut stream = proxy.tunnel(&sink.to_string());
                let chunk = payload(1 << 20, i);
                let mut sent = Vec::new();
                // Bounded: at most 4 GiB per tunnel (spliced, a tunnel moves over 1 GiB/s
                // here), or until the chatty flow is done.
                for _ in 0..4096 {
                    if stop_bulk.load(Ordering::Relaxed) {
                        break;
                    }
                    stream.write_all(&chunk).unwrap();
                    sent.push(());
                }
                stream.shutdown(std::net::Shutdown::Write).unwrap();
                let mut reply = String::new();
                stream.read_to_string(&mut reply).unwrap();
                let expected_len = sent.len() * chunk.len();
                assert_eq!(reply, expected_len.to_string(), "bulk tunnel {i}");
                bulk_done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        // Let the bulk tunnels get going.
        thread::sleep(Duration::from_millis(300));
        let mut chatty = proxy.tunnel(&echo.to_string());
        chatty.set_nodelay(true).unwrap();
        let mut latencies = Vec::new();
        for round in 0..300u64 {
            let message = payload(100, 1000 + round);
            let start = Instant::now();
            chatty.write_all(&message).unwrap();
            let mut reply = vec![0u8; message.len()];
            chatty.read_exact(&mut reply).unwrap();
            latencies.push(start.elapsed());
            assert_eq!(reply, message, "round trip {round}");
        }
        let finished_while_bulk_ran = bulk_done.load(Ordering::SeqCst) == 0;
        stop_bulk.store(true, Ordering::Relaxed);
        for handle in bulk {
            handle.join().unwrap();
        }
        latencies.sort();
        eprintln!(
            "{backend:?}: chatty round trips beside 4 bulk tunnels: p50 {:?}, p99 {:?}",
            latencies[latencies.len() / 2],
            latencies[latencies.len() * 99 / 100]
        );
        assert!(finished_while_bulk_ran, "the chatty tunnel finished only after the bulk tunnels");
    }
}
