//! Real TLS through the tunnel with real clients: curl, openssl s_client and Python's ssl.
//! The certificate is made at test time; fyntr never sees plaintext.

#![allow(missing_docs)]

mod common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{targets, *};

/// A self-signed certificate for `localhost` and 127.0.0.1 in a fresh directory, removed
/// when the test ends.
fn certificate() -> TempDir {
    require("openssl");
    let dir = TempDir::new("tls");
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(dir.path().join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl req failed");
    dir
}

/// `openssl s_server -www` on a free port; killed on drop.
struct TlsServer {
    child: Child,
    port: u16,
}

impl TlsServer {
    fn start(dir: &Path) -> TlsServer {
        let port = targets::closed_port().port();
        let child = Command::new("openssl")
            .args(["s_server", "-www", "-accept", &port.to_string()])
            .arg("-cert")
            .arg(dir.join("cert.pem"))
            .arg("-key")
            .arg(dir.join("key.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < WAIT, "s_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsServer { child, port }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python client/server: a TLS echo server, and a client that CONNECTs through the proxy,
/// does a verified TLS handshake and checks the sha256 of the echoed payload.
const PYTHON_TLS_ECHO: &str = r#"
import hashlib, os, socket, ssl, sys, threading
cert, key, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain(cert, key)
listener = socket.create_server(("127.0.0.1", 0))
port = listener.getsockname()[1]
print(port, flush=True)
def serve():
    conn, _ = listener.accept()
    with server_ctx.wrap_socket(conn, server_side=True) as tls:
        while True:
            data = tls.recv(65536)
            if not data:
                break
            tls.sendall(data)
threading.Thread(target=serve, daemon=True).start()
proxy_port = int(sys.stdin.readline())  # the proxy, once it allows this port
raw = socket.create_connection(("127.0.0.1", proxy_port), timeout=30)
raw.sendall(b"CONNECT localhost:%d HTTP/1.1\r\nHost: localhost:%d\r\n\r\n" % (port, port))
head = b""
while not head.endswith(b"\r\n\r\n"):
    head += raw.recv(1)
assert head == b"HTTP/1.1 200 Connection Established\r\n\r\n", head
client_ctx = ssl.create_default_context(cafile=cert)
tls = client_ctx.wrap_socket(raw, server_hostname="localhost")
payload = os.urandom(size)
received = bytearray()
# One SSL object must not be read and written from two threads at once: send a 64 KiB chunk,
# then read its echo, until the whole payload has gone round.
for offset in range(0, size, 65536):
    chunk = payload[offset:offset + 65536]
    tls.sendall(chunk)
    want = offset + len(chunk)
    while len(received) < want:
        data = tls.recv(65536)
        assert data, ("EOF", len(received), want)
        received.extend(data)
assert hashlib.sha256(received).hexdigest() == hashlib.sha256(payload).hexdigest(), (len(received), size)
print("ok", tls.version(), len(received), flush=True)
"#;

on_each_backend! {
    fn curl_fetches_a_page_over_tls_through_the_proxy(backend) {
        require("curl");
        let dir = certificate();
        let server = TlsServer::start(dir.path());
        let proxy = Proxy::start(backend, &["--allow-port", &server.port.to_string()]);
        let output = Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "30", "--proxy", &format!("http://{}", proxy.addr)])
            .arg("--cacert")
            .arg(dir.path().join("cert.pem"))
            .arg(format!("https://localhost:{}/", server.port))
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "curl: {}", String::from_utf8_lossy(&output.stderr));
        assert!(body.contains("s_server"), "{body}");
        proxy.wait_for_log("tunnel closed");
    }

    fn openssl_s_client_handshakes_through_the_proxy(backend) {
        let dir = certificate();
        let server = TlsServer::start(dir.path());
        let proxy = Proxy::start(backend, &["--allow-port", &server.port.to_string()]);
        let mut client = Command::new("openssl")
            .args(["s_client", "-proxy", &proxy.addr.to_string(), "-connect", &format!("localhost:{}", server.port)])
            .args(["-servername", "localhost", "-verify_return_error", "-ign_eof"])
            .arg("-CAfile")
            .arg(dir.path().join("cert.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        client.stdin.take().unwrap().write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let output = wait_output(client);
        assert!(output.contains("Verify return code: 0 (ok)"), "{output}");
        assert!(output.contains("s_server"), "{output}");
    }

    fn python_ssl_echoes_four_mebibytes_byte_exact(backend) {
        require("python3");
        let dir = certificate();
        run_python_echo(backend, dir.path(), 4 << 20);
    }
}

fn run_python_echo(backend: Backend, dir: &Path, size: usize) {
    // Python reports its server port; the proxy then starts allowing it, and Python is told
    // the proxy's port.
    let mut python = Command::new("python3")
        .arg("-c")
        .arg(PYTHON_TLS_ECHO)
        .arg(dir.join("cert.pem"))
        .arg(dir.join("key.pem"))
        .arg(size.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(python.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let target_port: u16 = line.trim().parse().expect("python reports its port");
    let proxy = Proxy::start(backend, &["--allow-port", &target_port.to_string()]);
    use std::io::Write;
    let proxy_port = format!("{}\n", proxy.addr.port());
    python
        .stdin
        .take()
        .unwrap()
        .write_all(proxy_port.as_bytes())
        .unwrap();
    let mut result = String::new();
    stdout.read_line(&mut result).unwrap();
    let status = python.wait().unwrap();
    assert!(
        status.success() && result.starts_with("ok"),
        "python: {result} ({status:?})\n{}",
        proxy.log()
    );
}

fn wait_output(mut child: Child) -> String {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > WAIT {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}
