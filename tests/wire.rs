//! Wire behaviour of a real fyntr process: success response, byte-exactness, pipelining,
//! half-close, concurrency, and every error status.

#![allow(missing_docs)]

mod common;

use std::{
    io::{Read, Write},
    net::Shutdown,
    thread,
    time::Duration,
};

use common::{targets, *};

on_each_backend! {
    fn tunnel_answers_exactly_200_then_relays(backend) {
        echo_round_trip(backend, b"hello through the tunnel");
    }

    fn one_mebibyte_each_way_is_byte_exact(backend) {
        byte_exact_both_ways(backend, 1 << 20);
    }

    fn fifty_mebibytes_each_way_are_byte_exact(backend) {
        byte_exact_both_ways(backend, 50 << 20);
    }

    fn fifty_mebibytes_each_way_are_byte_exact_when_copying(backend) {
        // The copying relay (buffers; ring reads and writes on io_uring), which serves
        // wherever splice cannot: off Linux, or when the worker has no pipe to spare.
        byte_exact_both_ways_with(backend, 50 << 20, &["--zero-copy", "off"]);
    }

    fn a_hundred_concurrent_tunnels_are_byte_exact_when_copying(backend) {
        a_hundred_concurrent_tunnels(backend, &["--zero-copy", "off"]);
    }

    fn small_messages_of_every_size_and_in_bursts_are_byte_exact(backend) {
        // Small reads copy and clear readiness when they come back short; a stall here would
        // mean a short read that had not in fact emptied the socket (the read timeout fails
        // the test instead of hanging it).
        let echo = targets::echo();
        let proxy = Proxy::start(backend, &["--allow-port", &echo.port().to_string()]);
        let mut stream = proxy.tunnel(&echo.to_string());
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        // Lockstep, every size around the interactive limit (16 KiB) and the buffer size.
        let sizes = (1..64).chain((16_380..16_390).step_by(1)).chain([1000, 4096, 65_535, 65_536, 65_537, 200_000]);
        for (i, size) in sizes.enumerate() {
            let message = payload(size, i as u64);
            stream.write_all(&message).unwrap();
            let mut back = vec![0u8; size];
            stream.read_exact(&mut back).unwrap();
            assert!(back == message, "message {i} of {size} bytes");
        }
        // Bursts of tiny writes, so that segments pile up while the relay reads.
        let mut writer = stream.try_clone().unwrap();
        let messages: Vec<Vec<u8>> = (0..5000u64).map(|i| payload(1 + (i as usize * 7) % 40, i)).collect();
        let expected: Vec<u8> = messages.concat();
        let sender = thread::spawn(move || {
            for message in &messages {
                writer.write_all(message).unwrap();
            }
        });
        let mut back = vec![0u8; expected.len()];
        stream.read_exact(&mut back).unwrap();
        sender.join().unwrap();
        assert_eq!(sha256(&back), sha256(&expected));
    }

    fn pipelined_bytes_after_the_head_are_relayed(backend) {
        let echo = targets::echo();
        let proxy = Proxy::start(backend, &["--allow-port", &echo.port().to_string()]);
        let mut stream = proxy.connect_raw();
        let mut request = format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n").into_bytes();
        let early = payload(100_000, 3);
        request.extend_from_slice(&early);
        stream.write_all(&request).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        assert_eq!(&received[..ESTABLISHED.len()], ESTABLISHED);
        assert_eq!(sha256(&received[ESTABLISHED.len()..]), sha256(&early));
    }

    fn a_client_that_sends_then_half_closes_gets_the_whole_reply(backend) {
        let sink = targets::hashing_sink();
        let proxy = Proxy::start(backend, &["--allow-port", &sink.port().to_string()]);
        let data = payload(3 << 20, 5);
        let expected = format!("{} {}", sha256(&data), data.len());
        let reply = send_and_receive(proxy.tunnel(&sink.to_string()), data);
        assert_eq!(String::from_utf8(reply).unwrap(), expected);
    }

    fn an_upstream_half_close_reaches_the_client_and_uploads_continue(backend) {
        // The upstream says hello and half-closes, then keeps reading until the client's EOF.
        let (sender, received) = std::sync::mpsc::channel();
        let sender = std::sync::Arc::new(std::sync::Mutex::new(sender));
        let target = targets::serve(move |mut stream| {
            stream.write_all(b"hello").unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).unwrap();
            sender.lock().unwrap().send(rest).unwrap();
        });
        let proxy = Proxy::start(backend, &["--allow-port", &target.port().to_string()]);
        let mut stream = proxy.tunnel(&target.to_string());
        let mut greeting = Vec::new();
        stream.read_to_end(&mut greeting).unwrap();
        assert_eq!(greeting, b"hello", "client reads the data, then EOF");
        let late = payload(2 << 20, 9);
        stream.write_all(&late).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let got = received.recv_timeout(WAIT).unwrap();
        assert_eq!(sha256(&got), sha256(&late));
    }

    fn both_sockets_of_a_loopback_tunnel_use_reno(backend) {
        // Reno is fyntr's choice for loopback peers (no pacing timers); the test's own sockets
        // keep the system default, which on many machines is BBR.
        require("ss");
        let (proxy, echo, _open_tunnel) = echo_round_trip(backend, b"ping");
        // The proxy's accepted socket has the proxy's port as its source; its dialed socket has
        // the echo target's port as its destination.
        for filter in [
            format!("sport = :{}", proxy.addr.port()),
            format!("dport = :{}", echo.port()),
        ] {
            let listing = ss_info(&filter);
            assert!(
                listing.split_whitespace().any(|word| word == "reno"),
                "fyntr's socket ({filter}) does not use reno:\n{listing}"
            );
        }
    }

    fn download_from_a_source_is_byte_exact(backend) {
        let data = payload(20 << 20, 11);
        let expected = sha256(&data);
        let source = targets::source(data);
        let proxy = Proxy::start(backend, &["--allow-port", &source.port().to_string()]);
        let mut stream = proxy.tunnel(&source.to_string());
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        assert_eq!(sha256(&received), expected);
    }

    fn a_hundred_concurrent_tunnels_are_all_byte_exact(backend) {
        a_hundred_concurrent_tunnels(backend, &[]);
    }

    fn an_ipv6_literal_target_is_tunnelled(backend) {
        let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else {
            eprintln!("skipped: this machine has no IPv6 loopback");
            return;
        };
        let echo = targets::serve_on(listener, |mut stream| {
            let mut buffer = [0u8; 5];
            stream.read_exact(&mut buffer).unwrap();
            stream.write_all(&buffer).unwrap();
        });
        let port = echo.port().to_string();
        let proxy = Proxy::start(backend, &["--allow-port", &port, "--allow-cidr", "::1/128"]);
        let mut stream = proxy.tunnel(&format!("[::1]:{port}"));
        stream.write_all(b"six66").unwrap();
        let mut reply = [0u8; 5];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"six66");
    }

    fn loopback_in_every_spelling_is_denied_by_default(backend) {
        let echo = targets::echo();
        let port = echo.port().to_string();
        let proxy = Proxy::start_raw(&["--port", "0", "--backend", backend.flag(), "--allow-port", &port]).unwrap();
        for target in [
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
            format!("[::ffff:127.0.0.1]:{port}"),
            format!("localhost:{port}"),
            format!("[::]:{port}"),
            format!("0.0.0.0:{port}"),
        ] {
            let response = proxy.exchange(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes());
            assert_error_response(&response, 403);
        }
    }

    fn malformed_requests_get_400(backend) {
        let proxy = Proxy::start(backend, &[]);
        for request in [
            "CONNECT example.com HTTP/1.1\r\n\r\n",
            "CONNECT example.com:0 HTTP/1.1\r\n\r\n",
            "CONNECT example.com:65536 HTTP/1.1\r\n\r\n",
            "CONNECT user:pw@example.com:443 HTTP/1.1\r\n\r\n",
            "CONNECT http://example.com:443/ HTTP/1.1\r\n\r\n",
            "CONNECT example.com:443 HTTP/9.9\r\n\r\n",
            "CONNECT example.com:443\r\n\r\n",
            "\x16\x03\x01\x00\x25\x01\x00\x00\x21\x03\x03\r\n\r\n",
        ] {
            assert_error_response(&proxy.exchange(request.as_bytes()), 400);
        }
    }

    fn origin_form_requests_and_lowercase_connect_get_405(backend) {
        let proxy = Proxy::start(backend, &[]);
        for request in [
            "GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n",
            "connect example.com:443 HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        ] {
            let response = proxy.exchange(request.as_bytes());
            assert_error_response(&response, 405);
            assert!(response.contains("\r\nAllow: CONNECT\r\n"));
        }
    }

    fn oversized_heads_get_414_and_431(backend) {
        let proxy = Proxy::start(backend, &[]);
        let long_line = format!("CONNECT {}.example:443 HTTP/1.1\r\n\r\n", "a".repeat(9000));
        assert_error_response(&proxy.exchange(long_line.as_bytes()), 414);
        let long_header = format!("CONNECT a.example:443 HTTP/1.1\r\nX: {}\r\n\r\n", "b".repeat(9000));
        assert_error_response(&proxy.exchange(long_header.as_bytes()), 431);
        let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("CONNECT a.example:443 HTTP/1.1\r\n{many}\r\n");
        assert_error_response(&proxy.exchange(many.as_bytes()), 431);
        let big: String = (0..6).map(|i| format!("X-{i}: {}\r\n", "c".repeat(8000))).collect();
        let big = format!("CONNECT a.example:443 HTTP/1.1\r\n{big}\r\n");
        assert_error_response(&proxy.exchange(big.as_bytes()), 431);
    }

    fn policy_refusals_get_403(backend) {
        let echo = targets::echo();
        let proxy = Proxy::start(backend, &[]);
        // Port not allowed.
        assert_error_response(&proxy.exchange(format!("CONNECT {echo} HTTP/1.1\r\n\r\n").as_bytes()), 403);
        // Allowed port, denied private range.
        assert_error_response(&proxy.exchange(b"CONNECT 10.255.255.1:443 HTTP/1.1\r\n\r\n"), 403);
        assert_error_response(&proxy.exchange(b"CONNECT [fd00::1]:443 HTTP/1.1\r\n\r\n"), 403);
    }

    fn an_upstream_that_refuses_gets_502(backend) {
        let closed = targets::closed_port();
        let proxy = Proxy::start(backend, &["--allow-port", &closed.port().to_string()]);
        assert_error_response(&proxy.exchange(format!("CONNECT {closed} HTTP/1.1\r\n\r\n").as_bytes()), 502);
        let log = proxy.wait_for_log("status=502");
        assert!(log.contains("refused"), "{log}");
    }

    fn an_unresolvable_name_gets_502(backend) {
        let proxy = Proxy::start(backend, &[]);
        let response = proxy.exchange(b"CONNECT no-such-host.invalid:443 HTTP/1.1\r\n\r\n");
        assert_error_response(&response, 502);
    }

    fn an_upstream_that_never_answers_gets_504(backend) {
        let (hole, _fillers, _socket) = targets::black_hole();
        let proxy = Proxy::start(backend, &["--allow-port", &hole.port().to_string(), "--connect-timeout", "1"]);
        assert_error_response(&proxy.exchange(format!("CONNECT {hole} HTTP/1.1\r\n\r\n").as_bytes()), 504);
    }

    fn a_slowloris_client_gets_408_and_others_are_served(backend) {
        let echo = targets::echo();
        let proxy = Proxy::start(backend, &["--allow-port", &echo.port().to_string(), "--handshake-timeout", "2"]);
        let mut slow = proxy.connect_raw();
        slow.write_all(b"CONNECT 127.0.0.1:").unwrap();
        // Trickle bytes: each one arrives well within any per-read timeout, never completing.
        let trickle = thread::spawn(move || {
            for _ in 0..8 {
                thread::sleep(Duration::from_millis(400));
                if slow.write_all(b"1").is_err() {
                    break;
                }
            }
            read_until_close(&mut slow)
        });
        let mut fast = proxy.tunnel(&echo.to_string());
        fast.write_all(b"ok").unwrap();
        let mut reply = [0u8; 2];
        fast.read_exact(&mut reply).unwrap();
        let response = trickle.join().unwrap();
        assert_error_response(&response, 408);
    }

    fn a_client_that_speaks_tls_to_the_proxy_gets_400_at_once(backend) {
        // HTTPS_PROXY=https://...: the client opens with a ClientHello and waits for the
        // server's. The handshake timeout is far beyond the read timeout of the exchange, so
        // only an answer to the first bytes can pass.
        let proxy = Proxy::start(backend, &["--handshake-timeout", "600"]);
        let client_hello_start = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        assert_error_response(&proxy.exchange(client_hello_start), 400);
        let log = proxy.wait_for_log("use http://");
        assert!(log.contains("status=400"), "{log}");
        // A real TLS client is refused the same way, and the proxy goes on serving.
        if have("openssl") {
            let output = std::process::Command::new("openssl")
                .args(["s_client", "-connect", &proxy.addr.to_string(), "-servername", "example.com"])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            assert!(!output.status.success(), "openssl finished a handshake with the proxy");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                format!("{stdout}{stderr}").contains("HTTP/1.1 400") || stderr.contains("wrong version number") || stderr.contains("packet length too long") || stderr.contains("record layer failure"),
                "openssl output: {stdout} {stderr}"
            );
        }
        assert_error_response(&proxy.exchange(b"GET / HTTP/1.1\r\n\r\n"), 405);
    }

    fn a_client_that_resets_does_not_disturb_others(backend) {
        let echo = targets::echo();
        let proxy = Proxy::start(backend, &["--allow-port", &echo.port().to_string()]);
        for _ in 0..20 {
            let stream = proxy.tunnel(&echo.to_string());
            let socket = socket2::Socket::from(stream);
            socket.set_linger(Some(Duration::ZERO)).unwrap();
            (&socket).write_all(&payload(100_000, 1)).unwrap();
            drop(socket); // RST
        }
        let data = payload(1 << 20, 2);
        let expected = sha256(&data);
        assert_eq!(sha256(&send_and_receive(proxy.tunnel(&echo.to_string()), data)), expected);
    }

    fn an_upstream_reset_closes_the_tunnel(backend) {
        let target = targets::serve(|stream| {
            let socket = socket2::Socket::from(stream);
            socket.set_linger(Some(Duration::ZERO)).unwrap();
            (&socket).write_all(b"bye").unwrap();
            thread::sleep(Duration::from_millis(100));
        });
        let proxy = Proxy::start(backend, &["--allow-port", &target.port().to_string()]);
        let mut stream = proxy.tunnel(&target.to_string());
        let received = read_until_close(&mut stream);
        assert_eq!(received, "bye");
        proxy.wait_for_log("upstream error");
    }

    fn requests_split_across_many_reads_still_parse(backend) {
        let echo = targets::echo();
        let proxy = Proxy::start(backend, &["--allow-port", &echo.port().to_string()]);
        let mut stream = proxy.connect_raw();
        stream.set_nodelay(true).unwrap();
        let request = format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\nUser-Agent: split\r\n\r\n");
        for byte in request.as_bytes() {
            stream.write_all(&[*byte]).unwrap();
            thread::sleep(Duration::from_millis(2));
        }
        let mut response = vec![0; ESTABLISHED.len()];
        stream.read_exact(&mut response).unwrap();
        assert_eq!(response, ESTABLISHED);
    }
}

/// Starts a proxy, opens a tunnel to a new echo target and sends `message` through it, checking
/// that it comes back unchanged; returns the proxy, the target and the tunnel, still open.
fn echo_round_trip(
    backend: Backend,
    message: &[u8],
) -> (Proxy, std::net::SocketAddr, std::net::TcpStream) {
    let echo = targets::echo();
    let proxy = Proxy::start(backend, &["--allow-port", &echo.port().to_string()]);
    let mut stream = proxy.tunnel(&echo.to_string());
    stream.write_all(message).unwrap();
    let mut reply = vec![0u8; message.len()];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(reply, message);
    (proxy, echo, stream)
}

/// `ss`'s listing, with TCP internals, of the established sockets matching `filter`.
fn ss_info(filter: &str) -> String {
    let output = std::process::Command::new("ss")
        .args(["-tinH", "state", "established", filter])
        .output()
        .expect("ss runs");
    assert!(output.status.success(), "ss {filter} failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// 100 clients at once, each echoing a payload of its own length and content.
fn a_hundred_concurrent_tunnels(backend: Backend, extra_args: &[&str]) {
    let echo = targets::echo();
    let port = echo.port().to_string();
    let mut args = vec!["--allow-port", &port];
    args.extend_from_slice(extra_args);
    let proxy = std::sync::Arc::new(Proxy::start(backend, &args));
    let clients: Vec<_> = (0..100u64)
        .map(|i| {
            let proxy = std::sync::Arc::clone(&proxy);
            thread::spawn(move || {
                let data = payload(256 * 1024 + i as usize * 997, i);
                let expected = sha256(&data);
                let received = send_and_receive(proxy.tunnel(&echo.to_string()), data);
                assert_eq!(sha256(&received), expected, "tunnel {i}");
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
}

fn byte_exact_both_ways(backend: Backend, len: usize) {
    byte_exact_both_ways_with(backend, len, &[]);
}

fn byte_exact_both_ways_with(backend: Backend, len: usize, extra_args: &[&str]) {
    let echo = targets::echo();
    let sink = targets::hashing_sink();
    let ports = format!("{},{}", echo.port(), sink.port());
    let mut args = vec!["--allow-port", &ports];
    args.extend_from_slice(extra_args);
    let proxy = Proxy::start(backend, &args);
    // Upload: the far end hashes what it received.
    let data = payload(len, 21);
    let expected = format!("{} {}", sha256(&data), len);
    let reply = send_and_receive(proxy.tunnel(&sink.to_string()), data);
    assert_eq!(String::from_utf8(reply).unwrap(), expected);
    // Both ways at once: what comes back is what went out.
    let data = payload(len, 22);
    let expected = sha256(&data);
    let received = send_and_receive(proxy.tunnel(&echo.to_string()), data);
    assert_eq!(received.len(), len);
    assert_eq!(sha256(&received), expected);
}
