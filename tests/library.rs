//! fyntr in-process through its library API (`fyntr::run::server()`): tunnels on the proxy and
//! SOCKS5 ports, plain HTTP, shutdown, and start errors. Both backends.

#![allow(missing_docs)]

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use common::*;
use fyntr::{config::BackendChoice, run::StartError, threat::ThreatAction};

fn choice(backend: Backend) -> BackendChoice {
    match backend {
        Backend::Tokio => BackendChoice::Tokio,
        Backend::IoUring => BackendChoice::IoUring,
    }
}

fn builder(backend: Backend) -> fyntr::run::ServerBuilder {
    fyntr::run::server()
        .port(0)
        .workers(2)
        .backend(choice(backend))
        .allow_cidr("127.0.0.0/8")
        .unwrap()
        .shutdown_grace(Duration::from_secs(1))
}

fn tunnel(proxy: std::net::SocketAddr, target: std::net::SocketAddr) -> TcpStream {
    connect_through(proxy, &target.to_string())
}

on_each_backend! {
    fn a_program_reloads_settings_and_reads_metrics(backend) {
        let echo = targets::echo();
        let server = builder(backend)
            .allow_port(echo.port())
            .metrics_bind("127.0.0.1:0")
            .background()
            .expect("starts");
        let metrics = server.metrics_listen_addr().expect("metrics are on");
        let mut health = TcpStream::connect(metrics).unwrap();
        health.set_read_timeout(Some(WAIT)).unwrap();
        health.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(status_of(&read_until_close(&mut health)), 200);
        let data = payload(50_000, 2);
        let open = tunnel(server.listen_addr(), echo);
        // Without the echo's port, and on another port (which takes a restart).
        let reloaded = server
            .reloader()
            .reload(builder(backend).metrics_bind("127.0.0.1:0").port(1))
            .expect("reloads");
        assert_eq!(reloaded.ignored, vec!["port"]);
        assert_eq!(send_and_receive(open, data.clone()), data);
        let mut refused = TcpStream::connect(server.listen_addr()).unwrap();
        refused.set_read_timeout(Some(WAIT)).unwrap();
        write!(refused, "CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n").unwrap();
        assert_error_response(&read_until_close(&mut refused), 403);
        // A reload that cannot load is refused and changes nothing.
        let broken = server
            .reloader()
            .reload(builder(backend).threat_feed_file("/nonexistent/feed.txt"));
        assert!(matches!(broken, Err(StartError::Threats(_))));
        server.shutdown().expect("stops");
    }

    fn a_background_server_tunnels_forwards_and_shuts_down(backend) {
        let echo = targets::echo();
        let server = builder(backend)
            .allow_port(echo.port())
            .socks5_port(0)
            .background()
            .expect("starts");
        let data = payload(1 << 20, 7);
        let stream = tunnel(server.listen_addr(), echo);
        assert_eq!(send_and_receive(stream, data.clone()), data);
        // SOCKS5 on its own port.
        let socks5 = server.socks5_listen_addr().expect("SOCKS5 is on");
        let mut stream = TcpStream::connect(socks5).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut request = vec![5, 1, 0];
        request.extend_from_slice(&socks5_request(echo));
        stream.write_all(&request).unwrap();
        let mut method = [0u8; 2];
        stream.read_exact(&mut method).unwrap();
        read_socks5_reply(&mut stream).expect("success");
        assert_eq!(send_and_receive(stream, data.clone()), data);
        // Plain HTTP to a policy-denied address is refused by the same policy.
        let mut stream = TcpStream::connect(server.listen_addr()).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.write_all(b"GET http://169.254.169.254/ HTTP/1.1\r\n\r\n").unwrap();
        assert_error_response(&read_until_close(&mut stream), 403);
        let address = server.listen_addr();
        server.shutdown().expect("stops cleanly");
        assert!(TcpStream::connect(address).is_err(), "no longer listening");
    }

    fn dropping_the_handle_stops_the_server(backend) {
        let server = builder(backend).background().expect("starts");
        let address = server.listen_addr();
        drop(server);
        let started = Instant::now();
        while TcpStream::connect(address).is_ok() {
            assert!(started.elapsed() < WAIT, "still listening after the handle was dropped");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn bad_settings_are_start_errors(backend) {
        let block = builder(backend).threat_action(ThreatAction::Block).background();
        assert!(matches!(block, Err(StartError::Settings(_))));
        let missing = builder(backend).threat_feed_file("/no/such/feed").background();
        assert!(matches!(missing, Err(StartError::Threats(_))), "{:?}", missing.err());
        let taken = targets::closed_port().port();
        let same = builder(backend).port(taken).socks5_port(taken).background();
        let error = same.err().expect("refused").to_string();
        assert!(error.contains("is the proxy port"), "{error}");
        let bind = builder(backend).bind("no-such-host.invalid").background();
        assert!(matches!(bind, Err(StartError::Address { .. })));
        assert!(fyntr::run::server().deny_cidr("10.0.0.0/33").is_err());
    }
}
