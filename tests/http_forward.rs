//! Plain HTTP forwarding on the proxy port (RFC 9110 / 9112): absolute-form requests reach the
//! origin in origin form without hop-by-hop fields and with `Via`; keep-alive across requests
//! and origins; bodies by length and chunked, 50 MiB each way byte-exact; `Expect:
//! 100-continue`; responses without bodies; smuggling defences; upstream failures; the
//! destination policy; and real clients (curl, wget, Python requests, Go net/http). Both
//! backends.

#![allow(missing_docs)]

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    sync::mpsc,
};

use common::*;

/// A request as the origin received it.
struct Received {
    head: String,
}

fn read_head(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            return Some(head);
        }
    }
}

fn field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn read_body(reader: &mut BufReader<TcpStream>, head: &str) -> Vec<u8> {
    let mut body = Vec::new();
    if field(head, "transfer-encoding").is_some() {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                    line.clear();
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = field(head, "content-length") {
        body.resize(length.parse().unwrap(), 0);
        reader.read_exact(&mut body).unwrap();
    }
    body
}

/// An HTTP/1.1 origin with keep-alive. Routes: `/head` answers with the request head it
/// received, `/hash` with the sha256 and length of the body, `/data/N` with N bytes, `/chunked/N`
/// with N bytes chunked, `/status/N` with that status and no body, `/continue` answers
/// `100 Continue` before reading the body. Every request is also sent on the channel.
fn origin() -> (SocketAddr, mpsc::Receiver<Received>) {
    let (sender, receiver) = mpsc::channel();
    let sender = std::sync::Arc::new(std::sync::Mutex::new(sender));
    let addr = targets::serve(move |stream| {
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        while let Some(head) = read_head(&mut reader) {
            let target = head.split(' ').nth(1).unwrap_or_default();
            let path = target.split('?').next().unwrap_or_default().to_string();
            let method = head.split(' ').next().unwrap_or_default().to_string();
            if path == "/continue" && field(&head, "expect").is_some() {
                writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
            }
            let body = read_body(&mut reader, &head);
            let _ = sender.lock().unwrap().send(Received { head: head.clone() });
            let (status, content): (&str, Vec<u8>) = if path == "/head" {
                ("200 OK", head.clone().into_bytes())
            } else if path == "/hash" || path == "/continue" {
                (
                    "200 OK",
                    format!("{} {}", sha256(&body), body.len()).into_bytes(),
                )
            } else if let Some(n) = path.strip_prefix("/data/") {
                ("200 OK", payload(n.parse().unwrap(), 21))
            } else if let Some(n) = path.strip_prefix("/chunked/") {
                let data = payload(n.parse().unwrap(), 22);
                let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for chunk in data.chunks(70_000) {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                if writer.write_all(&out).is_err() {
                    return;
                }
                continue;
            } else if path == "/then-close" {
                // Keep-alive by its head, then the connection closes, as an origin's idle
                // timeout does.
                let _ = writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                return;
            } else if let Some(code) = path.strip_prefix("/status/") {
                let line = format!("HTTP/1.1 {code} Whatever\r\nContent-Length: 0\r\n\r\n");
                if writer.write_all(line.as_bytes()).is_err() {
                    return;
                }
                continue;
            } else {
                ("404 Not Found", Vec::new())
            };
            let mut out = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nX-Origin: yes\r\nKeep-Alive: timeout=5\r\n\r\n",
                content.len()
            )
            .into_bytes();
            if method != "HEAD" {
                out.extend_from_slice(&content);
            }
            if writer.write_all(&out).is_err() {
                return;
            }
        }
    });
    (addr, receiver)
}

fn proxy_for(backend: Backend, origin: SocketAddr, extra: &[&str]) -> Proxy {
    let port = origin.port().to_string();
    let mut args = vec!["--allow-port", &port];
    args.extend_from_slice(extra);
    Proxy::start(backend, &args)
}

/// Reads one response (head and body by Content-Length or chunked) from `reader`.
fn read_response(reader: &mut BufReader<TcpStream>) -> (String, Vec<u8>) {
    let head = read_head(reader).expect("a response head");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        read_body(reader, &head)
    };
    (head, body)
}

fn connect(proxy: &Proxy) -> (TcpStream, BufReader<TcpStream>) {
    let stream = proxy.connect_raw();
    let reader = BufReader::new(stream.try_clone().unwrap());
    (stream, reader)
}

on_each_backend! {
    fn a_request_reaches_the_origin_in_origin_form_without_hop_by_hop_fields(backend) {
        let (origin, received) = origin();
        let proxy = proxy_for(backend, origin, &[]);
        let (mut stream, mut reader) = connect(&proxy);
        write!(
            stream,
            "GET http://{origin}/head?x=1 HTTP/1.1\r\nHost: {origin}\r\nConnection: keep-alive, X-Hop\r\n\
             X-Hop: secret\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eDp5\r\n\
             Keep-Alive: timeout=9\r\nTE: trailers\r\nUpgrade: websocket\r\nX-End: kept\r\n\r\n"
        )
        .unwrap();
        let (head, body) = read_response(&mut reader);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\nVia: 1.1 fyntr\r\n"), "{head}");
        assert!(head.contains("X-Origin: yes"), "{head}");
        assert!(!head.contains("Keep-Alive"), "hop-by-hop field of the response: {head}");
        let seen = received.recv_timeout(WAIT).unwrap().head;
        assert_eq!(String::from_utf8(body).unwrap(), seen);
        assert!(seen.starts_with("GET /head?x=1 HTTP/1.1\r\n"), "{seen}");
        assert_eq!(field(&seen, "host"), Some(origin.to_string().as_str()));
        assert_eq!(field(&seen, "via"), Some("1.1 fyntr"));
        assert_eq!(field(&seen, "x-end"), Some("kept"));
        for hop in ["connection", "x-hop", "proxy-connection", "proxy-authorization", "keep-alive", "te", "upgrade"] {
            assert_eq!(field(&seen, hop), None, "{hop} reached the origin: {seen}");
        }
        proxy.wait_for_log("protocol=\"http\" method=GET");
    }

    fn keep_alive_answers_requests_in_order_across_origins(backend) {
        let (first, _) = origin();
        let (second, _) = origin();
        let ports = format!("{},{}", first.port(), second.port());
        let proxy = Proxy::start(backend, &["--allow-port", &ports]);
        let (mut stream, mut reader) = connect(&proxy);
        // Pipelined: three requests in one write, the last to another origin.
        write!(
            stream,
            "GET http://{first}/data/1000 HTTP/1.1\r\n\r\n\
             GET http://{first}/status/204 HTTP/1.1\r\n\r\n\
             GET http://{second}/chunked/200000 HTTP/1.1\r\n\r\n"
        )
        .unwrap();
        let (_, body) = read_response(&mut reader);
        assert_eq!(body, payload(1000, 21));
        let (head, body) = read_response(&mut reader);
        assert!(head.starts_with("HTTP/1.1 204"), "{head}");
        assert!(body.is_empty());
        let (head, body) = read_response(&mut reader);
        assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
        assert_eq!(sha256(&body), sha256(&payload(200_000, 22)));
        // HEAD and 304: no bodies, and the connection goes on.
        write!(stream, "HEAD http://{first}/data/5000 HTTP/1.1\r\n\r\n").unwrap();
        let head = read_head(&mut reader).unwrap();
        assert_eq!(field(&head, "content-length"), Some("5000"));
        write!(stream, "GET http://{first}/status/304 HTTP/1.1\r\n\r\n").unwrap();
        let (head, _) = read_response(&mut reader);
        assert!(head.starts_with("HTTP/1.1 304"), "{head}");
        // Bytes the client sends after the closing request are never answered, and do not cut
        // the closing response short (a close with unread bytes would be a reset).
        write!(stream, "GET http://{first}/data/2000000 HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        let head = read_head(&mut reader).unwrap();
        assert!(head.contains("Connection: close"), "{head}");
        write!(stream, "GET http://{first}/data/10 HTTP/1.1\r\n\r\n").unwrap();
        // Bounded: the proxy finishes sending and closes meanwhile.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let body = read_body(&mut reader, &head);
        assert_eq!(sha256(&body), sha256(&payload(2_000_000, 21)));
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "closed after the last response");
    }

    fn an_origin_that_closed_its_kept_connection_gets_a_new_one(backend) {
        let (origin, _) = origin();
        let proxy = proxy_for(backend, origin, &[]);
        let (mut stream, mut reader) = connect(&proxy);
        write!(stream, "GET http://{origin}/then-close HTTP/1.1\r\n\r\n").unwrap();
        let (_, body) = read_response(&mut reader);
        assert_eq!(body, b"ok");
        // Bounded: the origin's FIN arrives within a moment on loopback.
        std::thread::sleep(std::time::Duration::from_millis(200));
        write!(stream, "GET http://{origin}/data/100 HTTP/1.1\r\n\r\n").unwrap();
        let (head, body) = read_response(&mut reader);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, payload(100, 21));
        // An HTTP/1.0 client that asks to keep the connection is told it is kept.
        write!(stream, "GET http://{origin}/data/5 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        let (head, _) = read_response(&mut reader);
        assert!(head.contains("\r\nConnection: keep-alive\r\n"), "{head}");
    }

    fn fifty_mebibytes_each_way_by_length_and_chunked(backend) {
        let (origin, _) = origin();
        let proxy = proxy_for(backend, origin, &[]);
        let upload = payload(50 << 20, 31);
        let (mut stream, mut reader) = connect(&proxy);
        write!(stream, "POST http://{origin}/hash HTTP/1.1\r\nContent-Length: {}\r\n\r\n", upload.len()).unwrap();
        let writer = {
            let mut stream = stream.try_clone().unwrap();
            let upload = upload.clone();
            std::thread::spawn(move || stream.write_all(&upload).unwrap())
        };
        let (_, body) = read_response(&mut reader);
        writer.join().unwrap();
        assert_eq!(String::from_utf8(body).unwrap(), format!("{} {}", sha256(&upload), upload.len()));
        // Chunked upload on the same connection.
        write!(stream, "POST http://{origin}/hash HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        let writer = {
            let mut stream = stream.try_clone().unwrap();
            let upload = upload.clone();
            std::thread::spawn(move || {
                for chunk in upload.chunks(1 << 20) {
                    write!(stream, "{:x}\r\n", chunk.len()).unwrap();
                    stream.write_all(chunk).unwrap();
                    stream.write_all(b"\r\n").unwrap();
                }
                stream.write_all(b"0\r\n\r\n").unwrap();
            })
        };
        let (_, body) = read_response(&mut reader);
        writer.join().unwrap();
        assert_eq!(String::from_utf8(body).unwrap(), format!("{} {}", sha256(&upload), upload.len()));
        write!(stream, "GET http://{origin}/data/{} HTTP/1.1\r\n\r\n", 50 << 20).unwrap();
        let (_, body) = read_response(&mut reader);
        assert_eq!(sha256(&body), sha256(&payload(50 << 20, 21)));
    }

    fn expect_100_continue_reaches_the_client_before_its_body(backend) {
        let (origin, _) = origin();
        let proxy = proxy_for(backend, origin, &[]);
        let (mut stream, mut reader) = connect(&proxy);
        write!(
            stream,
            "POST http://{origin}/continue HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        .unwrap();
        let (interim, _) = read_response(&mut reader);
        assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
        stream.write_all(b"hello").unwrap();
        let (head, body) = read_response(&mut reader);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(String::from_utf8(body).unwrap(), format!("{} 5", sha256(b"hello")));
    }

    fn ambiguous_framing_gets_400_and_a_close(backend) {
        let (origin, received) = origin();
        let proxy = proxy_for(backend, origin, &[]);
        for (request, status) in [
            (format!("POST http://{origin}/hash HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello"), 400),
            (format!("POST http://{origin}/hash HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello"), 400),
            (format!("POST http://{origin}/hash HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), 501),
        ] {
            assert_error_response(&proxy.exchange(request.as_bytes()), status);
        }
        let bad_chunk = format!("POST http://{origin}/hash HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n");
        assert_error_response(&proxy.exchange(bad_chunk.as_bytes()), 400);
        assert!(received.try_recv().is_err(), "no ambiguous request reached the origin whole");
        // A second request after a bad one is never read.
        let smuggled = format!(
            "GET http://{origin}/data/3 HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n\
             GET http://{origin}/head HTTP/1.1\r\n\r\n"
        );
        assert_error_response(&proxy.exchange(smuggled.as_bytes()), 400);
    }

    fn upstream_failures_are_502_and_504_and_policy_403(backend) {
        let closed = targets::closed_port();
        let proxy = proxy_for(backend, closed, &["--connect-timeout", "1"]);
        let request = format!("GET http://{closed}/ HTTP/1.1\r\n\r\n");
        assert_error_response(&proxy.exchange(request.as_bytes()), 502);
        let (black, _fillers, _socket) = targets::black_hole();
        let proxy = proxy_for(backend, black, &["--connect-timeout", "1"]);
        let request = format!("GET http://{black}/ HTTP/1.1\r\n\r\n");
        assert_error_response(&proxy.exchange(request.as_bytes()), 504);
        // Cloud metadata stays denied.
        let metadata = b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\n\r\n";
        assert_error_response(&proxy.exchange(metadata), 403);
        proxy.wait_for_log("url=http://169.254.169.254/latest/meta-data/");
    }

    fn port_80_is_allowed_for_plain_http_unless_the_defaults_are_dropped(backend) {
        // Nothing listens on 127.0.0.1:80 here: allowed means the dial is tried (502).
        let request = b"GET http://127.0.0.1/ HTTP/1.1\r\n\r\n";
        let proxy = Proxy::start(backend, &[]);
        let answer = proxy.exchange(request);
        assert_ne!(status_of(&answer), 403, "{answer}");
        let strict = Proxy::start(backend, &["--no-default-allow-port"]);
        assert_error_response(&strict.exchange(request), 403);
        // CONNECT to port 80 stays refused by default.
        assert_error_response(&proxy.exchange(b"CONNECT 127.0.0.1:80 HTTP/1.1\r\n\r\n"), 403);
    }

    fn curl_wget_and_python_requests_fetch_through_http_proxy(backend) {
        let (origin, _) = origin();
        let proxy = proxy_for(backend, origin, &[]);
        let proxy_url = format!("http://{}", proxy.addr);
        let url = format!("http://localhost:{}/data/300000", origin.port());
        let expected = sha256(&payload(300_000, 21));
        require("curl");
        let curl = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--noproxy", "", &url])
            .env("http_proxy", &proxy_url)
            .output()
            .unwrap();
        assert!(curl.status.success(), "{}", String::from_utf8_lossy(&curl.stderr));
        assert_eq!(sha256(&curl.stdout), expected);
        let upload = payload(2 << 20, 41);
        let upload_file = std::env::temp_dir().join(format!("fyntr-upload-{}-{backend:?}", std::process::id()));
        std::fs::write(&upload_file, &upload).unwrap();
        let post = Command::new("curl")
            .args([
                "-sS", "--max-time", "20", "-x", &proxy_url, "--data-binary",
                &format!("@{}", upload_file.display()),
                &format!("http://localhost:{}/hash", origin.port()),
            ])
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&upload_file);
        assert_eq!(
            String::from_utf8_lossy(&post.stdout),
            format!("{} {}", sha256(&upload), upload.len()),
            "{}",
            String::from_utf8_lossy(&post.stderr)
        );
        if have("wget") {
            let wget = Command::new("wget")
                .args(["-q", "-O", "-", "--timeout=20", "--tries=1", &url])
                .env("http_proxy", &proxy_url)
                .env("no_proxy", "")
                .output()
                .unwrap();
            assert!(wget.status.success(), "{}", String::from_utf8_lossy(&wget.stderr));
            assert_eq!(sha256(&wget.stdout), expected);
        }
        let script = format!(
            "import hashlib, requests\n\
             s = requests.Session()\n\
             for _ in range(3):\n\
             \x20   r = s.get('{url}', proxies={{'http': '{proxy_url}'}}, timeout=20)\n\
             \x20   r.raise_for_status()\n\
             print(hashlib.sha256(r.content).hexdigest())\n"
        );
        let python = Command::new("python3").args(["-c", &script]).output().unwrap();
        assert!(python.status.success(), "{}", String::from_utf8_lossy(&python.stderr));
        assert_eq!(String::from_utf8_lossy(&python.stdout).trim(), expected);
    }

    fn go_net_http_fetches_and_posts_through_the_proxy(backend) {
        require("go");
        let (origin, _) = origin();
        let proxy = proxy_for(backend, origin, &[]);
        let dir = std::env::temp_dir().join(format!("fyntr-go-{}-{backend:?}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Go's environment proxy skips loopback destinations, so the client names the proxy
        // itself, as a program configured for one does.
        let program = format!(
            r#"package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"
)

func main() {{
	proxy, _ := url.Parse("http://{proxy}")
	client := &http.Client{{Timeout: 20 * time.Second, Transport: &http.Transport{{Proxy: http.ProxyURL(proxy)}}}}
	for i := 0; i < 2; i++ {{
		response, err := client.Get("http://localhost:{port}/data/300000")
		if err != nil {{
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}}
		body, _ := io.ReadAll(response.Body)
		response.Body.Close()
		fmt.Printf("%x\n", sha256.Sum256(body))
	}}
	upload := bytes.Repeat([]byte("fyntr"), 200000)
	response, err := client.Post("http://localhost:{port}/hash", "application/octet-stream", bytes.NewReader(upload))
	if err != nil {{
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}}
	body, _ := io.ReadAll(response.Body)
	fmt.Printf("%s %x\n", body, sha256.Sum256(upload))
}}
"#,
            proxy = proxy.addr,
            port = origin.port(),
        );
        std::fs::write(dir.join("main.go"), program).unwrap();
        let output = Command::new("go")
            .args(["run", "main.go"])
            .current_dir(&dir)
            .env("GOCACHE", dir.join("cache"))
            .env("GO111MODULE", "off")
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8(output.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        let expected = sha256(&payload(300_000, 21));
        assert_eq!(lines[..2], [expected.as_str(), expected.as_str()]);
        let upload = b"fyntr".repeat(200_000);
        assert_eq!(lines[2], format!("{} {} {}", sha256(&upload), upload.len(), sha256(&upload)));
    }
}
