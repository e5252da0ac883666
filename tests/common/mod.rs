//! Shared helpers for the integration tests: a real `fyntr` process on loopback, local upstream
//! servers, and raw CONNECT clients.

#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod targets;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

/// The success response, byte for byte.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// Bound on every wait in the tests, so a bug fails a test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(30);

/// Which backend a test runs the proxy on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Tokio,
    IoUring,
}

impl Backend {
    pub fn flag(self) -> &'static str {
        match self {
            Backend::Tokio => "tokio",
            Backend::IoUring => "io-uring",
        }
    }
}

/// Whether `fyntr --backend io-uring` can run here: asked once, of the binary itself, so the
/// tests skip exactly where the proxy's own probe fails.
pub fn uring_unavailable() -> Option<String> {
    static PROBE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            Proxy::start_raw(&["--port", "0", "--workers", "1", "--backend", "io-uring"]).err()
        })
        .clone()
}

/// Generates one test per backend from one body: `name::tokio` and `name::uring`. The io_uring
/// variant skips, saying why, only where the proxy's io_uring probe fails.
#[macro_export]
macro_rules! on_each_backend {
    ($(#[$meta:meta])* fn $name:ident($backend:ident) $body:block $($rest:tt)*) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($backend: $crate::common::Backend) $body

            #[test]
            fn tokio() {
                body($crate::common::Backend::Tokio)
            }

            #[test]
            fn uring() {
                if let Some(why) = $crate::common::uring_unavailable() {
                    eprintln!("skipped: fyntr --backend io-uring cannot run here: {why}");
                    return;
                }
                body($crate::common::Backend::IoUring)
            }
        }
        $crate::on_each_backend! { $($rest)* }
    };
    () => {};
}

/// A running `fyntr` process; killed on drop.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Proxy {
    /// Starts fyntr on a free loopback port with loopback destinations allowed, plus `args`.
    pub fn start(backend: Backend, args: &[&str]) -> Proxy {
        let mut all = vec![
            "--port",
            "0",
            "--allow-cidr",
            "127.0.0.0/8",
            "--backend",
            backend.flag(),
        ];
        all.extend_from_slice(args);
        Proxy::start_raw(&all).expect("fyntr starts")
    }

    /// Starts fyntr with exactly `args`; returns the error output if it exits before listening.
    pub fn start_raw(args: &[&str]) -> Result<Proxy, String> {
        Proxy::start_with(args, |_| {})
    }

    /// Like [`Proxy::start_raw`], letting the caller adjust the command first.
    pub fn start_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Result<Proxy, String> {
        Proxy::start_program(env!("CARGO_BIN_EXE_fyntr").as_ref(), args, adjust)
    }

    /// Like [`Proxy::start_with`], running `program` (a copy of fyntr).
    pub fn start_program(
        program: &std::path::Path,
        args: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Result<Proxy, String> {
        let mut command = Command::new(program);
        adjust(&mut command);
        command
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // A freshly copied binary is "busy" while another test thread's fork still holds the
        // copy's descriptor (until that child's exec closes it): try again shortly.
        let started = Instant::now();
        let mut child = loop {
            match command.spawn() {
                Err(error)
                    if error.raw_os_error() == Some(libc::ETXTBSY) && started.elapsed() < WAIT =>
                {
                    thread::sleep(Duration::from_millis(10));
                }
                spawned => break spawned.expect("spawn fyntr"),
            }
        };
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (found, address) = std::sync::mpsc::channel();
        {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                let mut sent = false;
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    {
                        let mut log = log.lock().unwrap();
                        log.push_str(&line);
                        log.push('\n');
                    }
                    if !sent {
                        if let Some(rest) = line.split("listening on ").nth(1) {
                            let addr = rest.split_whitespace().next().unwrap().to_string();
                            let _ = found.send(addr);
                            sent = true;
                        }
                    }
                }
            });
        }
        match address.recv_timeout(WAIT) {
            Ok(addr) => Ok(Proxy {
                child,
                addr: addr.parse().expect("address in the start line"),
                log,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                thread::sleep(Duration::from_millis(100));
                Err(log.lock().unwrap().clone())
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                start.elapsed() < WAIT,
                "log never contained {needle:?}:\n{log}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Open io_uring instances of the proxy process.
    pub fn io_uring_instances(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter_map(|entry| std::fs::read_link(entry.path()).ok())
                    .filter(|target| target.to_string_lossy().contains("io_uring"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Open descriptors of the proxy process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }

    /// Anonymous resident memory of the proxy process (heap, stacks, registered buffers), KiB.
    pub fn anonymous_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("proxy status")
            .lines()
            .find_map(|line| line.strip_prefix("RssAnon:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("RssAnon in the proxy status")
    }

    /// Opens a raw connection to the proxy.
    pub fn connect_raw(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect to proxy");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        stream
    }

    /// Opens a tunnel to `target` and checks the exact success response.
    pub fn tunnel(&self, target: &str) -> TcpStream {
        connect_through(self.addr, target)
    }

    /// The SOCKS5 listener's address, from its start line.
    pub fn socks5_addr(&self) -> SocketAddr {
        let log = self.wait_for_log("SOCKS5 listening on ");
        log.split("SOCKS5 listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|address| address.parse().ok())
            .expect("address in the SOCKS5 start line")
    }

    /// Opens a raw connection to the SOCKS5 listener.
    pub fn socks5_raw(&self) -> TcpStream {
        let stream = TcpStream::connect(self.socks5_addr()).expect("connect to SOCKS5");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        stream
    }

    /// Sends a SOCKS5 greeting offering "no authentication" and `request` in one write, checks
    /// the method reply, and returns the stream with the reply: `Ok(bound address)` for a
    /// success, `Err(code)` otherwise.
    pub fn socks5_request(&self, request: &[u8]) -> (TcpStream, Result<SocketAddr, u8>) {
        let mut stream = self.socks5_raw();
        let mut bytes = vec![5, 1, 0];
        bytes.extend_from_slice(request);
        stream.write_all(&bytes).unwrap();
        let mut method = [0u8; 2];
        stream.read_exact(&mut method).unwrap();
        assert_eq!(method, [5, 0]);
        let reply = read_socks5_reply(&mut stream);
        (stream, reply)
    }

    /// Opens a SOCKS5 tunnel to `target` and returns the stream and the reply's bound address.
    pub fn socks5_tunnel(&self, target: SocketAddr) -> (TcpStream, SocketAddr) {
        let (stream, reply) = self.socks5_request(&socks5_request(target));
        (stream, reply.expect("a success reply"))
    }

    /// Sends `request` raw and returns everything the proxy answers until it closes.
    pub fn exchange(&self, request: &[u8]) -> String {
        let mut stream = self.connect_raw();
        stream.write_all(request).unwrap();
        read_until_close(&mut stream)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens a CONNECT tunnel to `target` through the proxy at `proxy` and checks the exact success
/// response.
pub fn connect_through(proxy: SocketAddr, target: &str) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).expect("connect to proxy");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
    )
    .unwrap();
    let mut response = vec![0; ESTABLISHED.len()];
    stream.read_exact(&mut response).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&response),
        String::from_utf8_lossy(ESTABLISHED)
    );
    stream
}

/// A SOCKS5 CONNECT request for an IP target.
pub fn socks5_request(target: SocketAddr) -> Vec<u8> {
    let mut request = vec![5, 1, 0];
    match target.ip() {
        std::net::IpAddr::V4(ip) => {
            request.push(1);
            request.extend_from_slice(&ip.octets());
        }
        std::net::IpAddr::V6(ip) => {
            request.push(4);
            request.extend_from_slice(&ip.octets());
        }
    }
    request.extend_from_slice(&target.port().to_be_bytes());
    request
}

/// A SOCKS5 CONNECT request for a domain target.
pub fn socks5_domain_request(name: &[u8], port: u16) -> Vec<u8> {
    let mut request = vec![5, 1, 0, 3, name.len() as u8];
    request.extend_from_slice(name);
    request.extend_from_slice(&port.to_be_bytes());
    request
}

/// Reads one SOCKS5 reply: `Ok(bound address)` for a success, `Err(code)` otherwise.
pub fn read_socks5_reply(stream: &mut TcpStream) -> Result<SocketAddr, u8> {
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).expect("a SOCKS5 reply head");
    assert_eq!(head[0], 5, "reply version");
    assert_eq!(head[2], 0, "reply reserved byte");
    let ip: std::net::IpAddr = match head[3] {
        1 => {
            let mut octets = [0u8; 4];
            stream.read_exact(&mut octets).unwrap();
            octets.into()
        }
        4 => {
            let mut octets = [0u8; 16];
            stream.read_exact(&mut octets).unwrap();
            octets.into()
        }
        other => panic!("reply address type {other}"),
    };
    let mut port = [0u8; 2];
    stream.read_exact(&mut port).unwrap();
    match head[1] {
        0 => Ok(SocketAddr::new(ip, u16::from_be_bytes(port))),
        code => Err(code),
    }
}

/// Reads until EOF (or reset) and returns what arrived, lossily as text.
pub fn read_until_close(stream: &mut TcpStream) -> String {
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

/// The status code of a response head.
pub fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

/// Asserts `response` is a complete error response with `code`.
pub fn assert_error_response(response: &str, code: u16) {
    assert_eq!(status_of(response), code, "response: {response:?}");
    assert!(response.starts_with("HTTP/1.1 "), "{response:?}");
    assert!(
        response.contains("\r\nContent-Length: 0\r\n"),
        "{response:?}"
    );
    assert!(
        response.contains("\r\nConnection: close\r\n"),
        "{response:?}"
    );
    assert!(
        response.ends_with("\r\n\r\n"),
        "nothing may follow: {response:?}"
    );
}

/// Deterministic pseudo-random bytes (xorshift), so payloads are not compressible patterns.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Sends `data` then half-closes, while reading everything back; returns what was read.
pub fn send_and_receive(stream: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        for chunk in data.chunks(100_000) {
            writer.write_all(chunk).unwrap();
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut reader = stream;
    let mut received = Vec::new();
    reader.read_to_end(&mut received).unwrap();
    sender.join().unwrap();
    received
}

/// Whether a program is on PATH (the test script installs what the tests need).
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Fails the test with a clear message when a required tool is missing.
pub fn require(program: &str) {
    assert!(
        have(program),
        "{program} is required for this test; run ci/test.sh, which installs it"
    );
}

/// A directory for one test's files, removed when dropped (also when the test fails).
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory whose name holds `name`, the process and the test's thread.
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "fyntr-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to the file `name` in the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
