//! The metrics listener (`--metrics-bind`): `GET /metrics` (Prometheus text),
//! `GET /metrics?format=json`, `GET /healthz`; 404 for any other path, 405 for other methods.
//!
//! It runs on a thread of its own with its own small runtime, so a scrape never waits for the
//! workers' event loops and never slows them: it only reads their counters.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tracing::{debug, warn};

use super::{render, Observer};
use crate::server::ShutdownSignal;

/// Time a scraper has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the answer may take to write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Scrapes served at once; more wait in the listen backlog.
const MAX_CONCURRENT: usize = 32;

/// Binds the metrics listener.
pub(crate) fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves `listener` on a thread of its own until `shutdown` fires.
pub(crate) fn spawn(
    listener: std::net::TcpListener,
    observer: Observer,
    mut shutdown: ShutdownSignal,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("fyntr-metrics".into())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        warn!(%error, "metrics listener unusable; no metrics");
                        return;
                    }
                };
                let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
                loop {
                    let accepted = tokio::select! {
                        accepted = listener.accept() => accepted,
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    };
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            debug!(%error, "metrics accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                        return;
                    };
                    let observer = observer.clone();
                    tokio::task::spawn_local(async move {
                        if let Err(error) = answer(stream, &observer).await {
                            debug!(client = %peer, %error, "metrics request failed");
                        }
                        drop(permit);
                    });
                }
            });
        })?;
    Ok(())
}

/// Reads one request and answers it; the connection closes after.
async fn answer(mut stream: TcpStream, observer: &Observer) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let request = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buffer = [0u8; 1024];
        loop {
            let read = stream.read(&mut buffer).await?;
            if read == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            head.extend_from_slice(&buffer[..read]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&head) {
                Ok(httparse::Status::Complete(_)) => {
                    return Ok(Some((
                        request.method.unwrap_or_default().to_string(),
                        request.path.unwrap_or_default().to_string(),
                    )))
                }
                Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => {}
                _ => return Ok(Some((String::new(), String::new()))),
            }
        }
    })
    .await;
    let Ok(Ok(Some((method, target)))) = request else {
        return Ok(());
    };
    let (status, content_type, body) = route(&method, &target, observer);
    let body = if method == "HEAD" {
        String::new()
    } else {
        body
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    response.push_str(&body);
    tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(response.as_bytes()))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.shutdown().await
}

/// The status line's text, the content type and the body for a request.
fn route(method: &str, target: &str, observer: &Observer) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method.is_empty() {
        return ("400 Bad Request", TEXT, "bad request\n".into());
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let known = matches!(path, "/metrics" | "/healthz");
    if known && method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, "use GET\n".into());
    }
    match path {
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/metrics" => {
            let wants_json = query.split('&').any(|pair| pair == "format=json");
            let snapshot = observer.snapshot();
            if wants_json {
                ("200 OK", "application/json", render::json(&snapshot))
            } else {
                (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    render::prometheus(&snapshot),
                )
            }
        }
        _ => (
            "404 Not Found",
            TEXT,
            "not found: try /metrics or /healthz\n".into(),
        ),
    }
}
