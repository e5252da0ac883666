//! The SOCKS5 listener on the wire (RFC 1928, as fyntr 0.4.8 serves it) and with real clients:
//! curl, Python requests, git. Every test runs on both backends.

#![allow(missing_docs)]

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    thread,
    time::Duration,
};

use common::*;

/// A proxy with SOCKS5 on a free port, loopback destinations allowed, plus `args`.
fn socks5_proxy(backend: Backend, args: &[&str]) -> Proxy {
    let mut all = vec!["--socks5-port", "0"];
    all.extend_from_slice(args);
    Proxy::start(backend, &all)
}

fn allow(port: u16) -> String {
    port.to_string()
}

/// Sends `bytes` raw to the SOCKS5 port and returns everything answered until it closes.
fn socks5_exchange(proxy: &Proxy, bytes: &[u8]) -> Vec<u8> {
    let mut stream = proxy.socks5_raw();
    stream.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

/// The reply code to a greeting plus `request`, after checking the method reply.
fn reply_code(proxy: &Proxy, request: &[u8]) -> u8 {
    let (mut stream, reply) = proxy.socks5_request(request);
    let code = reply.expect_err("a failure reply");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing follows a failure reply: {rest:?}");
    code
}

/// An upstream that sends back the address it sees the proxy connect from, then echoes.
fn peer_reporting_echo() -> SocketAddr {
    targets::serve(|mut stream| {
        let peer = stream.peer_addr().unwrap().to_string();
        let _ = stream.write_all(format!("{peer}\n").as_bytes());
        targets::echo_on(&mut stream);
    })
}

fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read_exact(&mut byte).is_ok() && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

on_each_backend! {
    fn connect_to_an_ipv4_target_replies_with_the_upstream_socket_address(backend) {
        let upstream = peer_reporting_echo();
        let proxy = socks5_proxy(backend, &["--allow-port", &allow(upstream.port())]);
        let (mut stream, bound) = proxy.socks5_tunnel(upstream);
        let seen = read_line(&mut stream);
        assert_eq!(bound.to_string(), seen, "BND is where the upstream sees fyntr from");
        stream.write_all(b"ping").unwrap();
        let mut echoed = [0u8; 4];
        stream.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, b"ping");
        drop(stream);
        proxy.wait_for_log("protocol=\"socks5\"");
    }

    fn bytes_pipelined_after_the_request_are_relayed(backend) {
        let (upstream, received) = targets::recorder();
        let proxy = socks5_proxy(backend, &["--allow-port", &allow(upstream.port())]);
        let mut stream = proxy.socks5_raw();
        let mut bytes = vec![5, 1, 0];
        bytes.extend_from_slice(&socks5_request(upstream));
        bytes.extend_from_slice(b"early bytes");
        stream.write_all(&bytes).unwrap();
        let mut method = [0u8; 2];
        stream.read_exact(&mut method).unwrap();
        read_socks5_reply(&mut stream).expect("success");
        stream.write_all(b" and later ones").unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let got = received.recv_timeout(WAIT).unwrap();
        assert_eq!(got, b"early bytes and later ones");
    }

    fn a_domain_target_is_resolved_by_the_proxy(backend) {
        let upstream = targets::echo();
        let proxy = socks5_proxy(backend, &["--allow-port", &allow(upstream.port())]);
        let mut stream = proxy.socks5_raw();
        let mut bytes = vec![5, 1, 0];
        bytes.extend_from_slice(&socks5_domain_request(b"localhost", upstream.port()));
        stream.write_all(&bytes).unwrap();
        let mut method = [0u8; 2];
        stream.read_exact(&mut method).unwrap();
        read_socks5_reply(&mut stream).expect("success");
        let data = payload(100_000, 3);
        assert_eq!(send_and_receive(stream, data.clone()), data);
    }

    fn an_ipv6_target_is_checked_as_ipv6(backend) {
        let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else {
            eprintln!("skipped: no IPv6 loopback here");
            return;
        };
        let upstream = targets::serve_on(listener, |mut stream| {
            let _ = stream.write_all(b"six");
        });
        // The default deny list holds ::1/128: refused until it is allowed.
        let denied = socks5_proxy(backend, &["--allow-port", &allow(upstream.port())]);
        assert_eq!(reply_code(&denied, &socks5_request(upstream)), 2);
        let allowed = socks5_proxy(
            backend,
            &["--allow-port", &allow(upstream.port()), "--allow-cidr", "::1/128"],
        );
        let (mut stream, bound) = allowed.socks5_tunnel(upstream);
        assert!(bound.is_ipv6(), "an IPv6 upstream socket gives an IPv6 BND: {bound}");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "six");
    }

    fn only_no_authentication_is_served(backend) {
        let proxy = socks5_proxy(backend, &[]);
        assert_eq!(socks5_exchange(&proxy, &[5, 1, 2]), [5, 0xff]);
        assert_eq!(socks5_exchange(&proxy, &[5, 0]), [5, 0xff]);
        // Offered among others, "no authentication" is chosen.
        let mut stream = proxy.socks5_raw();
        stream.write_all(&[5, 3, 1, 2, 0]).unwrap();
        let mut method = [0u8; 2];
        stream.read_exact(&mut method).unwrap();
        assert_eq!(method, [5, 0]);
    }

    fn other_protocols_get_no_answer(backend) {
        let proxy = socks5_proxy(backend, &[]);
        assert!(socks5_exchange(&proxy, b"CONNECT example.com:443 HTTP/1.1\r\n\r\n").is_empty());
        assert!(socks5_exchange(&proxy, &[4, 1, 0, 80, 127, 0, 0, 1, 0]).is_empty());
        proxy.wait_for_log("unsupported SOCKS version 4");
    }

    fn bind_and_udp_associate_are_not_supported(backend) {
        let proxy = socks5_proxy(backend, &[]);
        for command in [2u8, 3, 9] {
            let request = [5, command, 0, 1, 127, 0, 0, 1, 0, 80];
            assert_eq!(reply_code(&proxy, &request), 7, "command {command}");
        }
        assert_eq!(reply_code(&proxy, &[5, 1, 1, 1, 127, 0, 0, 1, 0, 80]), 1);
    }

    fn bad_address_types_and_names_get_08(backend) {
        let proxy = socks5_proxy(backend, &["--allow-port", "80"]);
        assert_eq!(reply_code(&proxy, &[5, 1, 0, 2, 0, 0]), 8);
        for name in [&b"127.1"[..], b"2130706433", b"0x7f000001", b"8.8.8.8", b"a..b", b"\xff", b""] {
            assert_eq!(reply_code(&proxy, &socks5_domain_request(name, 80)), 8, "{name:?}");
        }
    }

    fn the_destination_policy_applies(backend) {
        let upstream = targets::echo();
        // The port is not allowed.
        let proxy = socks5_proxy(backend, &[]);
        assert_eq!(reply_code(&proxy, &socks5_request(upstream)), 2);
        proxy.wait_for_log("is not allowed");
        // Loopback is in the default deny list when not allowed.
        let strict = Proxy::start_raw(&[
            "--port", "0", "--socks5-port", "0", "--backend", backend.flag(),
            "--allow-port", &allow(upstream.port()),
        ])
        .unwrap();
        assert_eq!(reply_code(&strict, &socks5_request(upstream)), 2);
        let bytes = socks5_domain_request(b"localhost", upstream.port());
        assert_eq!(reply_code(&strict, &bytes), 2);
    }

    fn a_refused_upstream_gets_05(backend) {
        let closed = targets::closed_port();
        let proxy = socks5_proxy(backend, &["--allow-port", &allow(closed.port())]);
        assert_eq!(reply_code(&proxy, &socks5_request(closed)), 5);
        let log = proxy.wait_for_log("reply=0x05");
        assert!(log.contains("protocol=\"socks5\""), "{log}");
    }

    fn a_client_that_stops_mid_greeting_is_closed_without_a_reply(backend) {
        let proxy = socks5_proxy(backend, &["--handshake-timeout", "1"]);
        let mut stream = proxy.socks5_raw();
        stream.write_all(&[5, 2, 0]).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        assert!(answer.is_empty(), "{answer:?}");
        proxy.wait_for_log("request incomplete after");
    }

    fn past_the_cap_a_connection_closes_at_once_and_the_next_one_after_a_close_is_served(backend) {
        let upstream = targets::echo();
        let proxy = socks5_proxy(
            backend,
            &["--allow-port", &allow(upstream.port()), "--max-connections", "1"],
        );
        let (first, _) = proxy.socks5_tunnel(upstream);
        let mut over = proxy.socks5_raw();
        let _ = over.write_all(&[5, 1, 0]);
        let mut answer = Vec::new();
        let _ = over.read_to_end(&mut answer);
        assert!(answer.is_empty(), "closed with no bytes: {answer:?}");
        drop(first);
        // The slot frees once the first tunnel's close is seen; bounded retries.
        let mut served = false;
        for _ in 0..100 {
            let mut stream = proxy.socks5_raw();
            let mut bytes = vec![5, 1, 0];
            bytes.extend_from_slice(&socks5_request(upstream));
            if stream.write_all(&bytes).is_err() {
                continue;
            }
            let mut method = [0u8; 2];
            if stream.read_exact(&mut method).is_ok() {
                served = read_socks5_reply(&mut stream).is_ok();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        assert!(served, "a tunnel is served once the first one closed");
    }

    fn fifty_mebibytes_each_way_arrive_byte_exact(backend) {
        let upstream = targets::hashing_sink();
        let proxy = socks5_proxy(backend, &["--allow-port", &allow(upstream.port())]);
        let data = payload(50 << 20, 11);
        let (stream, _) = proxy.socks5_tunnel(upstream);
        let answer = send_and_receive(stream, data.clone());
        assert_eq!(
            String::from_utf8(answer).unwrap(),
            format!("{} {}", sha256(&data), data.len())
        );
        let download = payload(50 << 20, 12);
        let source = targets::source(download.clone());
        let proxy = socks5_proxy(backend, &["--allow-port", &allow(source.port())]);
        let (mut stream, _) = proxy.socks5_tunnel(source);
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        assert_eq!(sha256(&received), sha256(&download));
    }

    fn the_socks5_port_cannot_be_the_proxy_port(backend) {
        let taken = targets::closed_port().port().to_string();
        let error = Proxy::start_raw(&[
            "--port", &taken, "--socks5-port", &taken, "--backend", backend.flag(),
        ])
        .err()
        .expect("refused");
        assert!(error.contains("is the proxy port"), "{error}");
    }

    fn curl_fetches_through_socks5_hostname(backend) {
        require("curl");
        let body = payload(200_000, 5);
        let server = http_server(body.clone());
        let proxy = socks5_proxy(backend, &["--allow-port", &allow(server.port())]);
        let output = Command::new("curl")
            .args([
                "-sS", "--max-time", "20", "--socks5-hostname",
                &proxy.socks5_addr().to_string(),
                &format!("http://localhost:{}/data", server.port()),
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(sha256(&output.stdout), sha256(&body));
    }

    fn python_requests_fetches_through_socks5h(backend) {
        require("python3");
        let body = payload(300_000, 6);
        let server = http_server(body.clone());
        let proxy = socks5_proxy(backend, &["--allow-port", &allow(server.port())]);
        let script = format!(
            "import hashlib, requests\n\
             proxy = 'socks5h://{socks}'\n\
             r = requests.get('http://localhost:{port}/data', proxies={{'http': proxy}}, timeout=20)\n\
             r.raise_for_status()\n\
             print(hashlib.sha256(r.content).hexdigest())\n",
            socks = proxy.socks5_addr(),
            port = server.port(),
        );
        let output = Command::new("python3").args(["-c", &script]).output().unwrap();
        assert!(
            output.status.success(),
            "requests with PySocks (ci/test.sh installs them): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), sha256(&body));
    }

    fn git_clones_through_all_proxy(backend) {
        require("git");
        let repository = GitRepository::new();
        let proxy = socks5_proxy(backend, &["--allow-port", &allow(repository.port)]);
        let clone = repository.dir.join("clone");
        let output = Command::new("git")
            .args([
                "clone", "--quiet",
                &format!("http://localhost:{}/repo.git", repository.port),
                clone.to_str().unwrap(),
            ])
            .env("ALL_PROXY", format!("socks5h://{}", proxy.socks5_addr()))
            .env("GIT_TERMINAL_PROMPT", "0")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let cloned = std::fs::read(clone.join("data.bin")).unwrap();
        assert_eq!(sha256(&cloned), sha256(&repository.content));
        proxy.wait_for_log("protocol=\"socks5\" target=localhost");
    }
}

/// A minimal HTTP/1.1 server answering every request with `body` and closing.
fn http_server(body: Vec<u8>) -> SocketAddr {
    let body = std::sync::Arc::new(body);
    targets::serve(move |mut stream| {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read_exact(&mut byte).is_ok() {
            head.push(byte[0]);
        }
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(&body);
    })
}

/// A bare git repository with one commit, served over git's "dumb" HTTP protocol by Python's
/// http.server; removed (and the server stopped) on drop.
struct GitRepository {
    dir: std::path::PathBuf,
    port: u16,
    content: Vec<u8>,
    server: std::process::Child,
}

impl GitRepository {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "fyntr-git-{}-{:?}",
            std::process::id(),
            thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let content = payload(1 << 20, 9);
        std::fs::write(work.join("data.bin"), &content).unwrap();
        let git = |args: &[&str], at: &std::path::Path| {
            let output = Command::new("git")
                .args(args)
                .current_dir(at)
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        git(&["init", "--quiet"], &work);
        git(&["add", "data.bin"], &work);
        git(&["commit", "--quiet", "-m", "data"], &work);
        let serve = dir.join("serve");
        std::fs::create_dir_all(&serve).unwrap();
        git(
            &[
                "clone",
                "--quiet",
                "--bare",
                work.to_str().unwrap(),
                "repo.git",
            ],
            &serve,
        );
        git(&["update-server-info"], &serve.join("repo.git"));
        let port = targets::closed_port().port();
        let server = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(&serve)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Bounded wait for the server to listen.
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            thread::sleep(Duration::from_millis(25));
        }
        Self {
            dir,
            port,
            content,
            server,
        }
    }
}

impl Drop for GitRepository {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
