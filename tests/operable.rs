//! Operating fyntr: the metrics endpoint (checked with the Prometheus project's Python parser
//! and against known byte counts), the config file and its precedence, `--check-config`,
//! reloading on SIGHUP with tunnels open across it, and the stats line on a terminal and off
//! one. Both backends.

#![allow(missing_docs)]

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::Instant,
};

use common::*;

/// The metrics address the start log names.
fn metrics_addr(proxy: &Proxy) -> SocketAddr {
    let log = proxy.wait_for_log("fyntr metrics on http://");
    let rest = log.split("fyntr metrics on http://").nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

/// One request to the metrics endpoint: status and body.
fn get(addr: SocketAddr, request_line: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "{request_line}\r\nHost: fyntr\r\n\r\n").unwrap();
    let response = read_until_close(&mut stream);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status_of(&response), body)
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "GET /metrics HTTP/1.1");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the series `name{labels}` (labels exactly as fyntr writes them), if present.
fn series(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series == key).then(|| value.parse().unwrap())
        })
}

/// Waits until `name{labels}` reaches at least `least`; returns the text scraped then.
fn wait_for_series(addr: SocketAddr, name: &str, labels: &str, least: f64) -> String {
    let start = Instant::now();
    loop {
        let text = scrape(addr);
        if series(&text, name, labels).is_some_and(|value| value >= least) {
            return text;
        }
        assert!(
            start.elapsed() < WAIT,
            "{name}{{{labels}}} never reached {least}:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Parses `text` with the `prometheus_client` Python package's parser (what the Prometheus
/// project ships for its text format): every family, and the samples of the ones named.
fn parse_with_python(text: &str) -> String {
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
families = list(text_string_to_metric_families(sys.stdin.read()))
for family in families:
    for sample in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
        print(f"{family.type} {sample.name}{{{labels}}} {sample.value}")
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parser refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A plain HTTP origin answering every request with `body`.
fn origin(body: &'static [u8]) -> SocketAddr {
    targets::serve(move |mut stream| {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(body);
    })
}

on_each_backend! {
    fn metrics_count_known_bytes_and_parse_as_prometheus_text(backend) {
        let echo = targets::echo();
        let web = origin(b"0123456789");
        let proxy = Proxy::start(backend, &[
            "--allow-port", &echo.port().to_string(),
            "--allow-port", &web.port().to_string(),
            "--socks5-port", "0",
            "--metrics-bind", "127.0.0.1:0",
        ]);
        let metrics = metrics_addr(&proxy);
        let connect_bytes = (1 << 20) + 1234;
        let data = payload(connect_bytes, 3);
        assert_eq!(send_and_receive(proxy.tunnel(&echo.to_string()), data.clone()), data);
        let socks5_bytes = 300_001;
        let data = payload(socks5_bytes, 4);
        let (stream, _) = proxy.socks5_tunnel(echo);
        assert_eq!(send_and_receive(stream, data.clone()), data);
        assert_error_response(
            &proxy.exchange(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n"),
            403,
        );
        let request = format!(
            "GET http://{web}/ HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n"
        );
        let response = proxy.exchange(request.as_bytes());
        assert!(response.ends_with("0123456789"), "{response}");

        // Each connection is counted when it ends, which for a refusal or a forwarded request
        // is after fyntr drained what the client still sent.
        for ended in [
            r#"protocol="connect",outcome="closed""#,
            r#"protocol="connect",outcome="refused""#,
            r#"protocol="http",outcome="forwarded""#,
        ] {
            wait_for_series(metrics, "fyntr_connections_total", ended, 1.0);
        }
        let text = wait_for_series(
            metrics,
            "fyntr_connections_total",
            r#"protocol="socks5",outcome="closed""#,
            1.0,
        );
        let value = |name: &str, labels: &str| {
            series(&text, name, labels).unwrap_or_else(|| panic!("no {name}{{{labels}}}:\n{text}"))
        };
        assert_eq!(value("fyntr_bytes_total", r#"protocol="connect",direction="upload""#), connect_bytes as f64);
        assert_eq!(value("fyntr_bytes_total", r#"protocol="connect",direction="download""#), connect_bytes as f64);
        assert_eq!(value("fyntr_bytes_total", r#"protocol="socks5",direction="upload""#), socks5_bytes as f64);
        assert_eq!(value("fyntr_bytes_total", r#"protocol="socks5",direction="download""#), socks5_bytes as f64);
        assert!(value("fyntr_bytes_total", r#"protocol="http",direction="download""#) >= 10.0);
        assert_eq!(value("fyntr_http_requests_total", ""), 1.0);
        assert_eq!(value("fyntr_refused_total", r#"protocol="connect",status="403""#), 1.0);
        assert_eq!(value("fyntr_connections_total", r#"protocol="connect",outcome="refused""#), 1.0);
        assert_eq!(value("fyntr_connections_total", r#"protocol="http",outcome="forwarded""#), 1.0);
        // Three upstream connections (CONNECT, SOCKS5, HTTP), two tunnels timed.
        assert_eq!(value("fyntr_upstream_connect_seconds_count", ""), 3.0);
        assert_eq!(value("fyntr_upstream_connect_seconds_bucket", r#"le="+Inf""#), 3.0);
        assert_eq!(value("fyntr_tunnel_duration_seconds_count", ""), 2.0);
        assert_eq!(value("fyntr_connection_cap", ""), 1000.0);
        assert_eq!(value("fyntr_build_info", &format!(r#"version="{}",backend="{}""#, env!("CARGO_PKG_VERSION"), backend.flag())), 1.0);

        let parsed = parse_with_python(&text);
        assert!(parsed.contains(r#"counter fyntr_bytes_total{direction="upload",protocol="connect"} 1049810"#), "{parsed}");
        assert!(parsed.contains("histogram fyntr_upstream_connect_seconds_count{} 3"), "{parsed}");
        assert!(parsed.contains("gauge fyntr_active_connections{}"), "{parsed}");

        // The same figures as JSON.
        let (status, body) = get(metrics, "GET /metrics?format=json HTTP/1.1");
        assert_eq!(status, 200);
        let json: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(json["fyntr_bytes_total"]["connect"]["upload"], connect_bytes as u64);
        assert_eq!(json["fyntr_bytes_total"]["socks5"]["download"], socks5_bytes as u64);
        assert_eq!(json["fyntr_http_requests_total"], 1);
        assert_eq!(json["fyntr_upstream_connect_seconds"]["count"], 3);
        assert_eq!(json["fyntr_build_info"]["backend"], backend.flag());

        assert_eq!(get(metrics, "GET /healthz HTTP/1.1"), (200, "ok\n".to_string()));
        assert_eq!(get(metrics, "GET /other HTTP/1.1").0, 404);
        assert_eq!(get(metrics, "POST /metrics HTTP/1.1").0, 405);
        assert_eq!(get(metrics, "garbage").0, 400);
    }

    fn metrics_answer_while_a_hundred_tunnels_move_data(backend) {
        let echo = targets::echo();
        let proxy = Proxy::start(backend, &[
            "--allow-port", &echo.port().to_string(),
            "--metrics-bind", "127.0.0.1:0",
        ]);
        let metrics = metrics_addr(&proxy);
        let tunnels = 100;
        let (ready, all_ready) = std::sync::mpsc::channel();
        let (go, started) = std::sync::mpsc::channel::<()>();
        let started = std::sync::Arc::new(std::sync::Mutex::new(started));
        let workers: Vec<_> = (0..tunnels)
            .map(|index| {
                let mut stream = proxy.tunnel(&echo.to_string());
                let ready = ready.clone();
                let started = std::sync::Arc::clone(&started);
                std::thread::spawn(move || {
                    ready.send(()).unwrap();
                    let _ = started.lock().unwrap().recv();
                    let chunk = payload(16 * 1024, index);
                    let mut back = vec![0u8; chunk.len()];
                    for _ in 0..40 {
                        stream.write_all(&chunk).unwrap();
                        stream.read_exact(&mut back).unwrap();
                        assert_eq!(back, chunk);
                    }
                })
            })
            .collect();
        for _ in 0..tunnels {
            all_ready.recv_timeout(WAIT).unwrap();
        }
        // Every tunnel is open: the gauge counts them. A tunnel is counted just after its
        // client reads the 200, so the last ones may take a moment to show.
        let text = wait_for_series(metrics, "fyntr_open_tunnels", r#"protocol="connect""#, tunnels as f64);
        assert!(series(&text, "fyntr_active_connections", "").unwrap() >= tunnels as f64, "{text}");
        assert_eq!(series(&text, "fyntr_open_tunnels", r#"protocol="connect""#), Some(tunnels as f64), "{text}");
        // Scrapes are answered while they all move data.
        drop(go);
        for _ in 0..5 {
            scrape(metrics);
        }
        for worker in workers {
            worker.join().unwrap();
        }
        let moved = (tunnels * 40 * 16 * 1024) as f64;
        // A chunk is counted once its write completes, which may be just after the echo came back.
        let text = wait_for_series(metrics, "fyntr_bytes_total", r#"protocol="connect",direction="upload""#, moved);
        assert_eq!(series(&text, "fyntr_bytes_total", r#"protocol="connect",direction="upload""#), Some(moved));
    }

    fn the_config_file_sits_below_variables_and_flags(backend) {
        let dir = TempDir::new("operable-precedence");
        let file = dir.write("fyntr.toml", "idle_timeout = 111\nhandshake_timeout = 7\nconnect_timeout = 2\nallow_port = [8443, 9443]\nno_default_allow_port = true\nupload_rate = \"19mbit\"\nzero_copy = false\n");
        let output = Command::new(env!("CARGO_BIN_EXE_fyntr"))
            .args(["--config", file.to_str().unwrap(), "--check-config", "--backend", backend.flag(), "--connect-timeout", "4"])
            .env("FYNTR_HANDSHAKE_TIMEOUT", "9")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        let line = |key: &str| {
            stdout
                .lines()
                .find(|line| line.starts_with(&format!("{key} =")))
                .unwrap_or_else(|| panic!("no {key} in:\n{stdout}"))
                .to_string()
        };
        let file_source = format!("# file {}", file.display());
        // File over default.
        assert!(line("idle_timeout").starts_with("idle_timeout = 111 ") && line("idle_timeout").ends_with(&file_source), "{stdout}");
        assert!(line("allow_port").starts_with("allow_port = [8443, 9443]"), "{stdout}");
        assert!(line("no_default_allow_port").starts_with("no_default_allow_port = true"), "{stdout}");
        assert!(line("upload_rate").starts_with("upload_rate = \"19mbit\""), "{stdout}");
        assert!(line("zero_copy").starts_with("zero_copy = \"off\""), "{stdout}");
        // Variable over file.
        assert!(line("handshake_timeout").starts_with("handshake_timeout = 9 ") && line("handshake_timeout").ends_with("# variable FYNTR_HANDSHAKE_TIMEOUT"), "{stdout}");
        // Flag over file.
        assert!(line("connect_timeout").starts_with("connect_timeout = 4 ") && line("connect_timeout").ends_with("# flag"), "{stdout}");
        // Default where nothing says otherwise.
        assert!(line("max_connections").ends_with("# default"), "{stdout}");

        // A running proxy takes its settings from the file, and a flag over them.
        let echo = targets::echo();
        let file = dir.write("run.toml", &format!("port = 0\nallow_cidr = [\"127.0.0.0/8\"]\nallow_port = [{}]\n", echo.port()));
        let proxy = Proxy::start_raw(&["--config", file.to_str().unwrap(), "--backend", backend.flag()]).expect("starts");
        let data = payload(100_000, 9);
        assert_eq!(send_and_receive(proxy.tunnel(&echo.to_string()), data.clone()), data);
        let proxy = Proxy::start_raw(&["--config", file.to_str().unwrap(), "--backend", backend.flag(), "--allow-port", "8443"]).expect("starts");
        assert_error_response(&proxy.exchange(format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n").as_bytes()), 403);
    }

    fn a_wrong_config_file_stops_the_start_naming_the_file_and_key(backend) {
        let dir = TempDir::new("operable-wrong");
        let cases = [
            ("unknown.toml", "max_conections = 5\n", "unknown key `max_conections`"),
            ("type.toml", "port = [1, 2]\n", "key `port`: expected a string or a number, found array"),
            ("value.toml", "max_connections = \"many\"\n", "key `max_connections`: invalid value 'many'"),
            ("flag.toml", "no_default_allow_port = \"yes\"\n", "key `no_default_allow_port`: expected true or false"),
            ("syntax.toml", "port = \n", "not valid TOML"),
            ("section.toml", "[server]\nport = 1\n", "unknown key `server`"),
        ];
        for (name, text, expected) in cases {
            let file = dir.write(name, text);
            for extra in [&[][..], &["--check-config"][..]] {
                let output = Command::new(env!("CARGO_BIN_EXE_fyntr"))
                    .args(["--config", file.to_str().unwrap(), "--backend", backend.flag(), "--port", "0"])
                    .args(extra)
                    .output()
                    .unwrap();
                let stderr = String::from_utf8_lossy(&output.stderr);
                assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
                assert!(stderr.contains(&file.display().to_string()) && stderr.contains(expected), "{name}: {stderr}");
            }
        }
        let output = Command::new(env!("CARGO_BIN_EXE_fyntr"))
            .args(["--config", "/nonexistent/fyntr.toml", "--backend", backend.flag()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("reading the config file /nonexistent/fyntr.toml"), "{stderr}");
        // --check-config fails on what only a start would find: a missing threat feed.
        let file = dir.write("feed.toml", "threat_feed_file = [\"/nonexistent/feed.txt\"]\n");
        let output = Command::new(env!("CARGO_BIN_EXE_fyntr"))
            .args(["--config", file.to_str().unwrap(), "--check-config", "--backend", backend.flag()])
            .output()
            .unwrap();
        assert!(!output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/feed.txt"));
    }

    fn sighup_reloads_for_new_requests_and_open_tunnels_keep_running(backend) {
        let echo = targets::echo();
        let dir = TempDir::new("operable-reload");
        let feed = dir.write("feed.txt", "192.0.2.1\n");
        let settings = |extra: &str| {
            format!(
                "allow_cidr = [\"127.0.0.0/8\"]\nthreat_feed_file = [\"{}\"]\nthreat_action = \"block\"\n{extra}",
                feed.display()
            )
        };
        let file = dir.write("fyntr.toml", &settings(&format!("allow_port = [{}]\nport = 0\n", echo.port())));
        let proxy = Proxy::start_raw(&["--config", file.to_str().unwrap(), "--backend", backend.flag(), "--metrics-bind", "127.0.0.1:0"]).expect("starts");
        let metrics = metrics_addr(&proxy);
        let mut open = proxy.tunnel(&echo.to_string());
        let echo_through = |stream: &mut TcpStream, seed: u64| {
            let data = payload(256 * 1024, seed);
            let mut back = vec![0u8; data.len()];
            let writer = {
                let mut stream = stream.try_clone().unwrap();
                let data = data.clone();
                std::thread::spawn(move || stream.write_all(&data).unwrap())
            };
            stream.read_exact(&mut back).unwrap();
            writer.join().unwrap();
            assert_eq!(sha256(&back), sha256(&data));
        };
        echo_through(&mut open, 1);
        let connect = format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n");

        // The feed now lists the echo's address, and the port (a restart setting) changes.
        std::fs::write(&feed, "127.0.0.1\n").unwrap();
        std::fs::write(&file, settings(&format!("allow_port = [{}]\nport = 1\n", echo.port()))).unwrap();
        proxy.signal("HUP");
        let log = proxy.wait_for_log("settings reloaded");
        assert!(log.contains("setting=\"port\""), "{log}");
        assert_error_response(&proxy.exchange(connect.as_bytes()), 403);
        proxy.wait_for_log("blocked by threat feed");
        echo_through(&mut open, 2);

        // A broken file changes nothing.
        std::fs::write(&file, settings("allow_port = [\"not a port\"]\nport = 0\n")).unwrap();
        proxy.signal("HUP");
        proxy.wait_for_log("reload refused");
        assert_error_response(&proxy.exchange(connect.as_bytes()), 403);
        echo_through(&mut open, 3);

        // A clean feed and a cap of one: the open tunnel holds the only place.
        std::fs::write(&feed, "192.0.2.1\n").unwrap();
        std::fs::write(&file, settings(&format!("allow_port = [{}]\nmax_connections = 1\nport = 0\n", echo.port()))).unwrap();
        proxy.signal("HUP");
        let text = wait_for_series(metrics, "fyntr_reloads_total", r#"result="applied""#, 2.0);
        assert_eq!(series(&text, "fyntr_reloads_total", r#"result="refused""#), Some(1.0));
        assert_eq!(series(&text, "fyntr_connection_cap", ""), Some(1.0));
        assert_error_response(&proxy.exchange(connect.as_bytes()), 503);
        echo_through(&mut open, 4);
        open.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(read_until_close(&mut open).is_empty());
        drop(open);
        let start = Instant::now();
        loop {
            let text = scrape(metrics);
            if series(&text, "fyntr_active_connections", "") == Some(0.0) {
                break;
            }
            assert!(start.elapsed() < WAIT);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let data = payload(100_000, 5);
        assert_eq!(send_and_receive(proxy.tunnel(&echo.to_string()), data.clone()), data);
    }

    fn a_reload_moves_rates_between_auto_fixed_and_off(backend) {
        let echo = targets::echo();
        let dir = TempDir::new("operable-rates");
        let settings = |rates: &str| {
            format!("port = 0\nallow_cidr = [\"127.0.0.0/8\"]\nallow_port = [{}]\n{rates}", echo.port())
        };
        let file = dir.write("fyntr.toml", &settings(""));
        let proxy = Proxy::start_raw(&["--config", file.to_str().unwrap(), "--backend", backend.flag(), "--metrics-bind", "127.0.0.1:0"]).expect("starts");
        let metrics = metrics_addr(&proxy);
        let rate = |text: &str, direction: &str, mode: &str| {
            series(text, "fyntr_pacing_rate_bytes_per_second", &format!(r#"direction="{direction}",mode="{mode}""#))
        };
        let (status, json) = get(metrics, "GET /metrics?format=json HTTP/1.1");
        assert_eq!(status, 200);
        assert!(json.contains(r#""mode":"auto""#), "{json}");
        let open = proxy.tunnel(&echo.to_string());
        let mut applied = 0.0;
        let mut reload = |rates: &str| {
            std::fs::write(&file, settings(rates)).unwrap();
            proxy.signal("HUP");
            applied += 1.0;
            wait_for_series(metrics, "fyntr_reloads_total", r#"result="applied""#, applied)
        };
        // auto to fixed, both ways.
        let text = reload("upload_rate = \"8mbit\"\ndownload_rate = \"16mbit\"\nconnect_rate = 50\n");
        assert_eq!(rate(&text, "upload", "fixed"), Some(1e6), "{text}");
        assert_eq!(rate(&text, "download", "fixed"), Some(2e6), "{text}");
        // A fixed rate to another, and to off.
        let text = reload("upload_rate = \"4mbit\"\ndownload_rate = \"off\"\n");
        assert_eq!(rate(&text, "upload", "fixed"), Some(5e5), "{text}");
        assert_eq!(rate(&text, "download", "off"), None, "{text}");
        assert!(!text.contains(r#"direction="download",mode="#), "{text}");
        // Back to auto: unlimited until the controller finds a queue.
        let text = reload("");
        assert!(!text.contains("fyntr_pacing_rate_bytes_per_second{"), "{text}");
        let (_, json) = get(metrics, "GET /metrics?format=json HTTP/1.1");
        assert_eq!(json.matches(r#""mode":"auto""#).count(), 2, "{json}");
        assert!(!proxy.log().contains("takes a restart"), "{}", proxy.log());
        // The tunnel opened before all this still carries bytes exactly.
        let data = payload(200_000, 8);
        assert_eq!(send_and_receive(open, data.clone()), data);
    }

    fn the_stats_line_is_redrawn_on_a_terminal_and_summed_up_elsewhere(backend) {
        // Under a pseudo-terminal: the line is rewritten in place.
        let script = r#"
import os, pty, sys, time, select, signal
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out = b""
deadline = time.time() + 20
while time.time() < deadline and out.count(b"\r\x1b[2K") < 2:
    ready, _, _ = select.select([fd], [], [], 0.5)
    if ready:
        try:
            out += os.read(fd, 65536)
        except OSError:
            break
os.kill(pid, signal.SIGTERM)
os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf-8", "replace"))
"#;
        let output = Command::new("python3")
            .args(["-c", script, env!("CARGO_BIN_EXE_fyntr"), "--port", "0", "--backend", backend.flag()])
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&output.stdout);
        assert!(shown.matches("\r\x1b[2K").count() >= 2, "{shown}");
        assert!(shown.contains("fyntr: 0 active | 0 refused | 0 errors"), "{shown}");

        // Not a terminal: no carriage returns, a summary line while there is traffic.
        let echo = targets::echo();
        let proxy = Proxy::start(backend, &["--allow-port", &echo.port().to_string(), "--stats-interval", "1"]);
        let mut stream = proxy.tunnel(&echo.to_string());
        let data = payload(10_000, 6);
        let mut back = vec![0u8; data.len()];
        stream.write_all(&data).unwrap();
        stream.read_exact(&mut back).unwrap();
        let log = proxy.wait_for_log(" traffic ");
        assert!(log.contains("active=1") && log.contains("up_bytes=10000"), "{log}");
        assert!(!log.contains('\r'), "{log}");
    }
}
