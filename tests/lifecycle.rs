//! Admission, timeouts, shutdown, descriptors and the command line of a real fyntr process.

#![allow(missing_docs)]

mod common;

use std::{
    io::{Read, Write},
    thread,
    time::{Duration, Instant},
};

use common::{targets, *};

on_each_backend! {
    fn the_connection_cap_gives_503_and_recovers(backend) {
        let echo = targets::echo();
        // One worker, so connections are accepted in the order they arrive.
        let proxy = Proxy::start(backend, &["--allow-port", &echo.port().to_string(), "--max-connections", "2", "--workers", "1"]);
        // Two pending CONNECTs (no head yet) fill the cap.
        let first = proxy.connect_raw();
        let second = proxy.connect_raw();
        let mut refused = proxy.connect_raw();
        refused.write_all(format!("CONNECT {echo} HTTP/1.1\r\n\r\n").as_bytes()).unwrap();
        assert_error_response(&read_until_close(&mut refused), 503);
        drop(first);
        // The freed place is reusable once the proxy has seen the close.
        let start = Instant::now();
        loop {
            let mut stream = proxy.connect_raw();
            stream.write_all(format!("CONNECT {echo} HTTP/1.1\r\n\r\n").as_bytes()).unwrap();
            let mut head = vec![0; ESTABLISHED.len()];
            if stream.read_exact(&mut head).is_ok() && head == ESTABLISHED {
                break;
            }
            assert!(start.elapsed() < WAIT, "the cap never recovered");
            thread::sleep(Duration::from_millis(50));
        }
        drop(second);
    }

    fn an_idle_tunnel_is_closed_and_a_busy_one_is_not(backend) {
        let echo = targets::echo();
        let proxy = Proxy::start(backend, &["--allow-port", &echo.port().to_string(), "--idle-timeout", "2"]);
        let mut idle = proxy.tunnel(&echo.to_string());
        let mut busy = proxy.tunnel(&echo.to_string());
        // The busy tunnel exchanges a byte every 200 ms for 3 s, longer than the idle timeout.
        for _ in 0..15 {
            busy.write_all(b"x").unwrap();
            let mut byte = [0u8; 1];
            busy.read_exact(&mut byte).unwrap();
            thread::sleep(Duration::from_millis(200));
        }
        // By now the idle tunnel has been closed by the proxy.
        let mut rest = Vec::new();
        assert_eq!(idle.read_to_end(&mut rest).unwrap_or(0), 0);
        proxy.wait_for_log("outcome=idle timeout");
        busy.write_all(b"y").unwrap();
        let mut byte = [0u8; 1];
        busy.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"y");
    }

    fn a_tunnel_that_goes_quiet_after_bulk_data_is_closed_when_idle(backend) {
        // Full-buffer reads make the relay read again without waiting for readiness; the idle
        // timeout must still end a tunnel whose peers then fall silent.
        let echo = targets::echo();
        let proxy = Proxy::start(backend, &["--allow-port", &echo.port().to_string(), "--idle-timeout", "2"]);
        let mut stream = proxy.tunnel(&echo.to_string());
        let data = payload(8 << 20, 12);
        let mut writer = stream.try_clone().unwrap();
        let sender = {
            let data = data.clone();
            thread::spawn(move || writer.write_all(&data).unwrap())
        };
        let mut back = vec![0u8; data.len()];
        stream.read_exact(&mut back).unwrap();
        sender.join().unwrap();
        assert_eq!(sha256(&back), sha256(&data));
        // Now both sides are silent: the proxy closes the tunnel.
        let mut rest = Vec::new();
        assert_eq!(stream.read_to_end(&mut rest).unwrap_or(0), 0);
        proxy.wait_for_log("outcome=idle timeout");
    }

    fn a_write_that_makes_no_progress_ends_the_tunnel_even_while_the_other_way_is_busy(backend) {
        // The destination never reads but sends a byte every 200 ms (for at most 12 s): the
        // upload stalls once the buffers are full while the download keeps reading, so only
        // the stalled write can trip the 2 s idle timeout.
        let chatty = targets::serve(|mut stream| {
            for _ in 0..60 {
                if stream.write_all(b"t").is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(200));
            }
        });
        let proxy = Proxy::start(backend, &["--allow-port", &chatty.port().to_string(), "--idle-timeout", "2"]);
        let mut stream = proxy.tunnel(&chatty.to_string());
        let mut writer = stream.try_clone().unwrap();
        let uploader = thread::spawn(move || {
            let block = vec![0u8; 1 << 20];
            while writer.write_all(&block).is_ok() {}
        });
        let mut received = 0;
        let mut byte = [0u8; 1];
        while matches!(stream.read(&mut byte), Ok(1)) {
            received += 1;
        }
        uploader.join().unwrap();
        proxy.wait_for_log("outcome=idle timeout");
        assert!(received >= 2, "the download was not busy: {received} bytes");
    }

    fn sigterm_stops_accepting_and_lets_open_tunnels_finish(backend) {
        let echo = targets::echo();
        let mut proxy = Proxy::start(backend, &["--allow-port", &echo.port().to_string(), "--shutdown-grace", "20", "--workers", "2"]);
        let mut open = proxy.tunnel(&echo.to_string());
        proxy.signal("TERM");
        proxy.wait_for_log("worker=0 open=");
        proxy.wait_for_log("worker=1 open=");
        // New connections are no longer served.
        let refused = std::net::TcpStream::connect(proxy.addr).map(|mut stream| {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = stream.write_all(format!("CONNECT {echo} HTTP/1.1\r\n\r\n").as_bytes());
            read_until_close(&mut stream)
        });
        assert!(!refused.as_deref().unwrap_or("").contains("200"), "{refused:?}");
        // The open tunnel still works, and closing it lets the process exit 0 well before the grace.
        let data = payload(1 << 20, 4);
        let expected = sha256(&data);
        open.write_all(&data).unwrap();
        let mut back = vec![0; data.len()];
        open.read_exact(&mut back).unwrap();
        assert_eq!(sha256(&back), expected);
        drop(open);
        let status = proxy.wait_exit(Duration::from_secs(15)).expect("exits once drained");
        assert!(status.success(), "{status:?}");
    }

    fn sigint_exits_0_after_the_grace_period_and_logs_the_tunnels_it_closed(backend) {
        let echo = targets::echo();
        let mut proxy = Proxy::start(backend, &["--allow-port", &echo.port().to_string(), "--shutdown-grace", "1"]);
        let mut open = proxy.tunnel(&echo.to_string());
        open.write_all(b"ping").unwrap();
        let mut echoed = [0u8; 4];
        open.read_exact(&mut echoed).unwrap();
        proxy.signal("INT");
        let status = proxy.wait_exit(WAIT).expect("exits after the grace period");
        assert!(status.success(), "{status:?}");
        let mut rest = Vec::new();
        let _ = open.read_to_end(&mut rest);
        assert!(rest.is_empty());
        // The tunnel still open when the grace period ended is closed by fyntr, and its line
        // says so, with its bytes.
        let log = proxy.wait_for_log("outcome=closed at shutdown");
        let line = log.lines().find(|line| line.contains("tunnel closed")).unwrap_or_default();
        assert!(line.contains("up_bytes=4 down_bytes=4"), "{line}");
        assert!(line.contains("outcome=closed at shutdown"), "{line}");
    }

    fn a_connection_still_sending_its_request_when_the_grace_period_ends_gets_a_line(backend) {
        let echo = targets::echo();
        let mut proxy = Proxy::start(
            backend,
            &["--allow-port", &echo.port().to_string(), "--shutdown-grace", "1", "--handshake-timeout", "60"],
        );
        // Half a request head: the connection waits for the rest until its handshake timeout,
        // long after the grace period.
        let before = proxy.open_fds();
        let mut waiting = proxy.connect_raw();
        waiting.write_all(format!("CONNECT {echo} HTTP/1.1\r\nHost:").as_bytes()).unwrap();
        let client = waiting.local_addr().unwrap();
        // Accepted once the proxy holds a descriptor for it.
        let started = Instant::now();
        while proxy.open_fds() <= before {
            assert!(started.elapsed() < WAIT, "the connection was never accepted");
            thread::sleep(Duration::from_millis(10));
        }
        proxy.signal("INT");
        let status = proxy.wait_exit(WAIT).expect("exits after the grace period");
        assert!(status.success(), "{status:?}");
        let log = proxy.wait_for_log("connection dropped at shutdown");
        let line = log
            .lines()
            .find(|line| line.contains("connection dropped at shutdown"))
            .unwrap_or_default();
        assert!(line.contains(&format!("client={client}")), "{line}");
        assert!(line.contains("protocol=\"connect\""), "{line}");
    }

    fn descriptors_do_not_leak(backend) {
        let echo = targets::echo();
        let closed = targets::closed_port();
        let proxy = Proxy::start(backend, &["--allow-port", &format!("{},{}", echo.port(), closed.port())]);
        let mut one = proxy.tunnel(&echo.to_string());
        one.write_all(b"warm").unwrap();
        let mut warm = [0u8; 4];
        one.read_exact(&mut warm).unwrap();
        drop(one);
        thread::sleep(Duration::from_millis(300));
        let baseline = proxy.open_fds();
        for i in 0..200u64 {
            match i % 4 {
                0 => {
                    let received = send_and_receive(proxy.tunnel(&echo.to_string()), payload(10_000, i));
                    assert_eq!(received.len(), 10_000);
                }
                1 => drop(proxy.connect_raw()),
                2 => {
                    let response = proxy.exchange(format!("CONNECT {closed} HTTP/1.1\r\n\r\n").as_bytes());
                    assert_error_response(&response, 502);
                }
                _ => {
                    let response = proxy.exchange(b"GET / HTTP/1.1\r\n\r\n");
                    assert_error_response(&response, 405);
                }
            }
        }
        let start = Instant::now();
        while proxy.open_fds() > baseline {
            assert!(start.elapsed() < WAIT, "descriptors: {} open, baseline {baseline}", proxy.open_fds());
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn handshakes_and_small_messages_take_no_relay_buffers(backend) {
        // Request heads, responses, pipelined bytes and small messages go through the worker's
        // scratch buffer; relay buffers (registered, so pinned, on io_uring: 1 MiB per worker)
        // are for bulk copies only. Taking one for a request head made the first tunnel of each
        // worker grow the proxy by that much.
        let echo = targets::echo();
        let proxy = Proxy::start(backend, &["--workers", "1", "--allow-port", &echo.port().to_string()]);
        let before = proxy.anonymous_rss_kib();
        for i in 0..40u64 {
            let mut stream = proxy.connect_raw();
            let message = payload(1000 + i as usize, i);
            let mut request = format!("CONNECT {echo} HTTP/1.1\r\n\r\n").into_bytes();
            request.extend_from_slice(&message[..100]);
            stream.write_all(&request).unwrap();
            let mut head = [0u8; ESTABLISHED.len()];
            stream.read_exact(&mut head).unwrap();
            assert_eq!(&head, ESTABLISHED);
            stream.write_all(&message[100..]).unwrap();
            let mut back = vec![0u8; message.len()];
            stream.read_exact(&mut back).unwrap();
            assert!(back == message, "tunnel {i}");
            assert_error_response(&proxy.exchange(b"GET / HTTP/1.1\r\n\r\n"), 405);
        }
        let grown = proxy.anonymous_rss_kib().saturating_sub(before);
        assert!(grown < 512, "40 small tunnels grew the proxy by {grown} KiB");
    }

    fn unlimited_connections_derive_a_cap_from_the_descriptor_limit(backend) {
        let echo = targets::echo();
        let proxy = Proxy::start(backend, &["--allow-port", &echo.port().to_string(), "--max-connections", "0"]);
        let log = proxy.log();
        assert!(log.contains("unlimited=true"), "{log}");
        let mut stream = proxy.tunnel(&echo.to_string());
        stream.write_all(b"z").unwrap();
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).unwrap();
    }

    fn several_workers_all_serve(backend) {
        let echo = targets::echo();
        let proxy = Proxy::start(backend, &["--allow-port", &echo.port().to_string(), "--workers", "3"]);
        for i in 0..30 {
            let received = send_and_receive(proxy.tunnel(&echo.to_string()), payload(5_000, i));
            assert_eq!(received, payload(5_000, i));
        }
        assert!(proxy.log().contains("workers=3"));
    }
}

#[test]
fn with_no_flags_it_listens_on_127_0_0_1_port_9999() {
    if std::net::TcpListener::bind("127.0.0.1:9999").is_err() {
        panic!("port 9999 is busy on this machine; this test needs it free");
    }
    let proxy = Proxy::start_raw(&[]).expect("starts with defaults");
    assert_eq!(proxy.addr, "127.0.0.1:9999".parse().unwrap());
    let log = proxy.log();
    assert!(log.contains("max_connections=1000"), "{log}");
    assert!(log.contains("allowed_ports=443"), "{log}");
}

#[test]
fn threat_feed_and_socks5_options_start_or_say_why_not() {
    let missing = Proxy::start_raw(&["--port", "0", "--threat-feed-file", "/no/such/feed.txt"])
        .err()
        .expect("a missing feed stops the start");
    assert!(missing.contains("/no/such/feed.txt"), "{missing}");
    let empty = Proxy::start_raw(&["--port", "0", "--threat-feed-file", "/dev/null"])
        .err()
        .expect("a feed with no entries stops the start");
    assert!(empty.contains("no supported entries"), "{empty}");
    let block = Proxy::start_raw(&["--port", "0", "--threat-action", "block"])
        .err()
        .expect("block needs a feed");
    assert!(
        block.contains("requires at least one --threat-feed-file"),
        "{block}"
    );
    let proxy = Proxy::start_with(&["--port", "0"], |command| {
        command.env("FYNTR_SOCKS5_PORT", "0");
    })
    .expect("starts with SOCKS5 from the environment");
    proxy.socks5_addr();
}

#[test]
fn bad_values_are_clear_errors() {
    for args in [
        &["--port", "70000"][..],
        &["--allow-port", "0"],
        &["--deny-cidr", "10.0.0.0/33"],
        &["--backend", "epoll"],
        &["--workers", "0"],
        &["--bind", "no-such-host.invalid"],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_fyntr"))
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("error") || stderr.contains("fyntr:"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn environment_variables_configure_like_flags() {
    let echo = targets::echo();
    let output_log = {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fyntr"))
            .env("FYNTR_PORT", "0")
            .env("FYNTR_MAX_CONNECTIONS", "7")
            .env("FYNTR_ALLOW_PORT", format!("{},8443", echo.port()))
            .env("FYNTR_ALLOW_CIDR", "127.0.0.0/8")
            .env("FYNTR_WORKERS", "1")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stderr.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let _ = child.kill();
        let _ = child.wait();
        String::from_utf8_lossy(&line).into_owned()
    };
    assert!(output_log.contains("max_connections=7"), "{output_log}");
    let mut ports = [echo.port(), 443, 8443];
    ports.sort_unstable();
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let expected = format!("allowed_ports={}", ports.join(","));
    assert!(
        output_log.contains(&expected),
        "{expected} not in {output_log}"
    );
}
