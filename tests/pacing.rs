//! Burst smoothing on a real proxy: total upload and download rates, and the connect rate.
//!
//! The checks are lower bounds a paced proxy cannot beat (bytes over time at the rate, less one
//! burst), which noise on a shared machine can only make easier to meet; no upper time bound.

#![allow(missing_docs)]

mod common;

use std::{
    io::{Read, Write},
    thread,
    time::{Duration, Instant},
};

use common::{targets, *};

on_each_backend! {
    fn the_upload_rate_paces_the_total_and_stays_byte_exact(backend) {
        let sink = targets::hashing_sink();
        let proxy = Proxy::start(backend, &["--allow-port", &sink.port().to_string(), "--upload-rate", "8mbit"]);
        assert!(proxy.log().contains("upload_rate=8.00mbit"), "{}", proxy.log());
        // Two tunnels of 1.5 MB each: 3 MB at 1 MB/s, less one 64 KiB burst.
        let start = Instant::now();
        let uploads: Vec<_> = (0..2u64)
            .map(|i| {
                let stream = proxy.tunnel(&sink.to_string());
                thread::spawn(move || {
                    let data = payload(1_500_000, i);
                    let expected = format!("{} {}", sha256(&data), data.len());
                    let reply = send_and_receive(stream, data);
                    assert_eq!(String::from_utf8(reply).unwrap(), expected);
                })
            })
            .collect();
        for upload in uploads {
            upload.join().unwrap();
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(2_700), "3 MB at 1 MB/s took only {elapsed:?}");
        let log = proxy.wait_for_log("up_wait_ms=");
        assert!(log.lines().any(|line| line.contains("tunnel closed") && !line.contains("up_wait_ms=0 ")), "{log}");
    }

    fn the_download_rate_paces_the_total(backend) {
        let data = payload(2_000_000, 3);
        let expected = sha256(&data);
        let source = targets::source(data);
        let proxy = Proxy::start(backend, &["--allow-port", &source.port().to_string(), "--download-rate", "1MB"]);
        let start = Instant::now();
        let mut stream = proxy.tunnel(&source.to_string());
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        let elapsed = start.elapsed();
        assert_eq!(sha256(&received), expected);
        assert!(elapsed >= Duration::from_millis(1_800), "2 MB at 1 MB/s took only {elapsed:?}");
    }

    fn connects_over_the_rate_wait_their_turn_and_are_not_refused(backend) {
        let echo = targets::echo();
        let proxy = Proxy::start(backend, &["--allow-port", &echo.port().to_string(), "--connect-rate", "5"]);
        let start = Instant::now();
        let clients: Vec<_> = (0..10)
            .map(|_| {
                let mut stream = proxy.connect_raw();
                stream.write_all(format!("CONNECT {echo} HTTP/1.1\r\n\r\n").as_bytes()).unwrap();
                thread::spawn(move || {
                    let mut head = vec![0u8; ESTABLISHED.len()];
                    stream.read_exact(&mut head).unwrap();
                    assert_eq!(head, ESTABLISHED);
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        // 10 connections at 5/s with a burst of 1: the last one starts 1.8 s after the first.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(1_600), "10 connects at 5/s took only {elapsed:?}");
        assert!(proxy.wait_for_log("connect_wait_ms=").contains("connect_rate=5/s"));
    }

    fn connects_that_cannot_get_a_turn_before_the_handshake_deadline_get_503(backend) {
        let echo = targets::echo();
        let proxy = Proxy::start(backend, &["--allow-port", &echo.port().to_string(), "--connect-rate", "1", "--handshake-timeout", "2"]);
        let clients: Vec<_> = (0..6)
            .map(|_| {
                let mut stream = proxy.connect_raw();
                stream.write_all(format!("CONNECT {echo} HTTP/1.1\r\n\r\n").as_bytes()).unwrap();
                thread::spawn(move || {
                    let mut head = vec![0u8; 12];
                    stream.read_exact(&mut head).unwrap();
                    status_of(&String::from_utf8_lossy(&head))
                })
            })
            .collect();
        let statuses: Vec<u16> = clients.into_iter().map(|client| client.join().unwrap()).collect();
        assert!(statuses.contains(&200), "{statuses:?}");
        assert!(statuses.contains(&503), "{statuses:?}");
        assert!(statuses.iter().all(|status| *status == 200 || *status == 503), "{statuses:?}");
    }
}

on_each_backend! {
    fn rates_default_to_auto_and_can_be_turned_off(backend) {
        let proxy = Proxy::start(backend, &[]);
        let log = proxy.log();
        assert!(log.contains("upload_rate=auto") && log.contains("download_rate=auto"), "{log}");
        drop(proxy);
        let proxy = Proxy::start(backend, &["--upload-rate", "off", "--download-rate", "OFF"]);
        let log = proxy.log();
        assert!(log.contains("upload_rate=off") && log.contains("download_rate=off"), "{log}");
    }
}

/// The voluntary context switches of `pid`'s thread named `name`, from /proc.
#[cfg(target_os = "linux")]
fn thread_wake_ups(pid: u32, name: &str) -> u64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task") {
        let task = task.expect("a task").path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status")).expect("status");
        return status
            .lines()
            .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|count| count.trim().parse().ok())
            .expect("voluntary_ctxt_switches");
    }
    panic!("no thread named {name}");
}

#[cfg(target_os = "linux")]
on_each_backend! {
    fn with_nothing_to_pace_the_auto_controllers_stop_waking_the_proxy(backend) {
        // Default rates (`auto` both ways), after a tunnel has relayed: loopback paths are not
        // watched, so there is nothing to pace, and the controllers' thread, which ticks ten
        // times a second while it has work, dozes. Seconds in which it never woke prove it.
        let echo = targets::echo();
        let proxy = Proxy::start(backend, &["--allow-port", &echo.port().to_string()]);
        let data = payload(200_000, 7);
        let echoed = send_and_receive(connect_through(proxy.addr, &echo.to_string()), data.clone());
        assert!(echoed == data, "the echo came back altered");
        let mut before = thread_wake_ups(proxy.pid(), "fyntr-autorate");
        let mut quiet_second = false;
        for _ in 0..15 {
            thread::sleep(Duration::from_secs(1));
            let now = thread_wake_ups(proxy.pid(), "fyntr-autorate");
            if now == before {
                quiet_second = true;
                break;
            }
            before = now;
        }
        assert!(quiet_second, "the auto thread woke in every second of 15");
    }
}

#[test]
fn bad_rates_are_refused_clearly() {
    for args in [
        &["--upload-rate", "fast"][..],
        &["--download-rate", "0mbit"],
        &["--upload-rate", "automatic"],
        &["--connect-rate", "-3"],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_fyntr"))
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("error"),
            "{args:?}"
        );
    }
}
