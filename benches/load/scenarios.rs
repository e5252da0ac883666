//! The scenarios. Each runs for a bounded time and count and returns its metrics.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{proxies::Running, targets::Targets, Options};

/// One measured number.
#[derive(Clone, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    pub value: f64,
    /// Whether a larger value is better (throughput) or worse (latency, CPU).
    pub higher_is_better: bool,
    /// Only meaningful for proxies (CPU, memory): no ratio to direct.
    pub proxy_only: bool,
}

impl Metric {
    fn better_higher(name: &'static str, unit: &'static str, value: f64) -> Metric {
        Metric {
            name,
            unit,
            value,
            higher_is_better: true,
            proxy_only: false,
        }
    }
    fn better_lower(name: &'static str, unit: &'static str, value: f64) -> Metric {
        Metric {
            name,
            unit,
            value,
            higher_is_better: false,
            proxy_only: false,
        }
    }
    pub fn of_proxy(name: &'static str, unit: &'static str, value: f64) -> Metric {
        Metric {
            name,
            unit,
            value,
            higher_is_better: false,
            proxy_only: true,
        }
    }
}

type Run = for<'a> fn(
    &'a Options,
    &'a Targets,
    Option<&'a Running>,
) -> Pin<Box<dyn Future<Output = Vec<Metric>> + 'a>>;

/// A named scenario.
pub struct Scenario {
    pub name: &'static str,
    pub run: Run,
}

pub const ALL: &[Scenario] = &[
    Scenario {
        name: "bulk_upload",
        run: |o, t, p| Box::pin(bulk_upload(o, t, p)),
    },
    Scenario {
        name: "bulk_download",
        run: |o, t, p| Box::pin(bulk_download(o, t, p)),
    },
    Scenario {
        name: "upload_100",
        run: |o, t, p| Box::pin(upload_100(o, t, p)),
    },
    Scenario {
        name: "churn",
        run: |o, t, p| Box::pin(churn(o, t, p)),
    },
    Scenario {
        name: "ping_pong",
        run: |o, t, p| Box::pin(ping_pong(o, t, p)),
    },
    Scenario {
        name: "mice_elephants",
        run: |o, t, p| Box::pin(mice_elephants(o, t, p)),
    },
    Scenario {
        name: "idle",
        run: |o, t, p| Box::pin(idle(o, t, p)),
    },
    Scenario {
        name: "syscalls",
        run: |o, t, p| Box::pin(crate::syscalls::syscalls(o, t, p)),
    },
];

/// Opens a connection to `target`, through `proxy` when there is one. Returns the stream and
/// how many tunnel bytes arrived with the proxy's response head.
pub async fn open(
    proxy: Option<&Running>,
    target: SocketAddr,
) -> std::io::Result<(TcpStream, usize)> {
    open_addr(proxy.map(|proxy| proxy.addr), target).await
}

fn cpu(proxy: Option<&Running>) -> f64 {
    proxy.map_or(0.0, Running::cpu_seconds)
}

/// User plus system CPU seconds this process (the load generator: its clients and its targets)
/// has used so far. Where the cores are the bound, a proxy's rate relative to direct is at most
/// the load generator's CPU per operation direct over the sum of the proxy's and the load
/// generator's CPU per operation through it; these metrics let a run show that sum.
fn load_generator_cpu() -> f64 {
    crate::proxies::process_cpu_seconds("self")
}

/// Uploads in rounds of `round` bytes to the ack target until `until`; returns the bytes the
/// target confirmed. Rounds with acknowledgements (not a final half-close) keep the measurement
/// valid for proxies that do not propagate half-close.
async fn upload_for(mut stream: TcpStream, until: Instant, round: u64) -> u64 {
    let chunk = vec![0xa5u8; 256 * 1024];
    let mut confirmed = 0;
    while Instant::now() < until {
        if stream.write_all(&round.to_be_bytes()).await.is_err() {
            break;
        }
        let mut remaining = round;
        while remaining > 0 {
            let n = remaining.min(chunk.len() as u64) as usize;
            if stream.write_all(&chunk[..n]).await.is_err() {
                return confirmed;
            }
            remaining -= n as u64;
        }
        let mut ack = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut ack)).await {
            Ok(Ok(_)) => confirmed += round,
            _ => break,
        }
    }
    confirmed
}

async fn bulk_upload(options: &Options, targets: &Targets, proxy: Option<&Running>) -> Vec<Metric> {
    let cpu_before = cpu(proxy);
    let start = Instant::now();
    let (stream, _) = open(proxy, targets.ack).await.expect("open");
    let bytes = upload_for(stream, start + options.duration(), 16 << 20).await;
    let elapsed = start.elapsed().as_secs_f64();
    let mut metrics = vec![Metric::better_higher(
        "throughput",
        "MB/s",
        bytes as f64 / elapsed / 1e6,
    )];
    if proxy.is_some() && bytes > 0 {
        metrics.push(Metric::of_proxy(
            "cpu_per_gb",
            "s/GB",
            (cpu(proxy) - cpu_before) / (bytes as f64 / 1e9),
        ));
    }
    metrics
}

async fn bulk_download(
    options: &Options,
    targets: &Targets,
    proxy: Option<&Running>,
) -> Vec<Metric> {
    let cpu_before = cpu(proxy);
    let start = Instant::now();
    let until = start + options.duration();
    let (mut stream, early) = open(proxy, targets.source).await.expect("open");
    let mut bytes = early as u64;
    let mut buffer = vec![0u8; 256 * 1024];
    while Instant::now() < until {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes += n as u64,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut metrics = vec![Metric::better_higher(
        "throughput",
        "MB/s",
        bytes as f64 / elapsed / 1e6,
    )];
    if proxy.is_some() && bytes > 0 {
        metrics.push(Metric::of_proxy(
            "cpu_per_gb",
            "s/GB",
            (cpu(proxy) - cpu_before) / (bytes as f64 / 1e9),
        ));
    }
    metrics
}

/// 100 tunnels uploading at once, counted where their bytes are delivered (the sink target),
/// over a window that opens once every tunnel is open and streaming: a tunnel the proxy starves
/// shows up here, whatever the clients managed to push into their socket buffers.
async fn upload_100(options: &Options, targets: &Targets, proxy: Option<&Running>) -> Vec<Metric> {
    const TUNNELS: usize = 100;
    targets.delivered.clear();
    let mut streams = Vec::new();
    for _ in 0..TUNNELS {
        streams.push(open(proxy, targets.sink).await.expect("open").0);
    }
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let chunk = vec![0xa5u8; 256 * 1024];
                while stream.write_all(&chunk).await.is_ok() {}
            })
        })
        .collect();
    let opened = Instant::now();
    while targets.delivered.connections() < TUNNELS && opened.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every tunnel is open; let them all get going before the window opens.
    tokio::time::sleep(options.duration() / 4).await;
    let before = targets.delivered.snapshot();
    let start = Instant::now();
    tokio::time::sleep(options.duration()).await;
    let after = targets.delivered.snapshot();
    let elapsed = start.elapsed().as_secs_f64();
    for task in tasks {
        task.abort();
    }
    let mut per_tunnel: Vec<f64> = (0..TUNNELS)
        .map(|i| {
            let first = before.get(i).copied().unwrap_or(0);
            after.get(i).copied().unwrap_or(0).saturating_sub(first) as f64
        })
        .collect();
    per_tunnel.sort_by(f64::total_cmp);
    let total: f64 = per_tunnel.iter().sum();
    let mean = total / TUNNELS as f64;
    let squares: f64 = per_tunnel.iter().map(|b| b * b).sum();
    let jain = if squares > 0.0 {
        total * total / (TUNNELS as f64 * squares)
    } else {
        0.0
    };
    let slowest = if mean > 0.0 {
        per_tunnel[0] / mean
    } else {
        0.0
    };
    vec![
        Metric::better_higher("aggregate", "MB/s", total / elapsed / 1e6),
        Metric {
            proxy_only: true,
            ..Metric::better_higher("jain", "index", jain)
        },
        Metric {
            proxy_only: true,
            ..Metric::better_higher("slowest_to_mean", "ratio", slowest)
        },
    ]
}

async fn churn(options: &Options, targets: &Targets, proxy: Option<&Running>) -> Vec<Metric> {
    let time_wait = sockets_in_time_wait();
    let cpu_before = cpu(proxy);
    let load_cpu_before = load_generator_cpu();
    let until = Instant::now() + options.duration();
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..50 {
        let (done, errors) = (Arc::clone(&done), Arc::clone(&errors));
        let (proxy_addr, echo) = (proxy.map(|p| p.addr), targets.echo);
        workers.push(tokio::spawn(async move {
            let message = [7u8; 1024];
            let mut reply = [0u8; 1024];
            while Instant::now() < until {
                let result = async {
                    let (mut stream, _) = open_addr(proxy_addr, echo).await?;
                    stream.write_all(&message).await?;
                    stream.read_exact(&mut reply).await?;
                    std::io::Result::Ok(())
                };
                match tokio::time::timeout(Duration::from_secs(10), result).await {
                    Ok(Ok(())) => done.fetch_add(1, Ordering::Relaxed),
                    _ => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let done = done.load(Ordering::Relaxed);
    let mut metrics = vec![
        Metric::better_higher("tunnels_per_s", "1/s", done as f64 / elapsed),
        Metric {
            proxy_only: true,
            ..Metric::better_lower("errors", "count", errors.load(Ordering::Relaxed) as f64)
        },
    ];
    if let Some(time_wait) = time_wait {
        metrics.push(Metric {
            proxy_only: true,
            ..Metric::better_lower("time_wait_at_start", "count", time_wait as f64)
        });
    }
    if done > 0 {
        metrics.push(Metric::better_lower(
            "load_cpu_per_tunnel",
            "us",
            (load_generator_cpu() - load_cpu_before) / done as f64 * 1e6,
        ));
    }
    if proxy.is_some() && done > 0 {
        metrics.push(Metric::of_proxy(
            "cpu_per_tunnel",
            "us",
            (cpu(proxy) - cpu_before) / done as f64 * 1e6,
        ));
    }
    metrics
}

/// TCP sockets in TIME_WAIT on this host (`/proc/net/sockstat`; None elsewhere). Each churned
/// connection leaves one behind for a minute, and while fewer than `tcp_max_tw_buckets` exist,
/// every `connect` to the same destination searches the ephemeral ports past those closed
/// less than a second ago: on Linux 6.18 that search was two thirds of a direct churn's CPU,
/// and the direct rate more than doubled once earlier runs had filled the table. The count
/// at the start of each run says which of the two a run measured.
fn sockets_in_time_wait() -> Option<u64> {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let tcp = sockstat.lines().find(|line| line.starts_with("TCP:"))?;
    let mut fields = tcp.split_whitespace();
    fields.find(|field| *field == "tw")?;
    fields.next()?.parse().ok()
}

/// Opens a connection to `target`, through the proxy at `proxy` when there is one. Returns the
/// stream and how many tunnel bytes arrived with the proxy's response head.
async fn open_addr(
    proxy: Option<SocketAddr>,
    target: SocketAddr,
) -> std::io::Result<(TcpStream, usize)> {
    let Some(proxy) = proxy else {
        let stream = TcpStream::connect(target).await?;
        stream.set_nodelay(true)?;
        return Ok((stream, 0));
    };
    let mut stream = TcpStream::connect(proxy).await?;
    stream.set_nodelay(true)?;
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::with_capacity(128);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("proxy closed during the handshake"));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
                return Err(std::io::Error::other(
                    String::from_utf8_lossy(&head).into_owned(),
                ));
            }
            return Ok((stream, head.len() - end - 4));
        }
    }
}

/// The `fraction` percentile of `sorted` durations as a lower-is-better metric in `unit`
/// (`us` or `ms`).
fn latency(name: &'static str, unit: &'static str, sorted: &[Duration], fraction: f64) -> Metric {
    let per_second = match unit {
        "us" => 1e6,
        "ms" => 1e3,
        _ => unreachable!("a latency is given in us or ms, not {unit}"),
    };
    Metric::better_lower(
        name,
        unit,
        percentile(sorted, fraction).as_secs_f64() * per_second,
    )
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * fraction) as usize).min(sorted.len() - 1)]
}

async fn ping_pong(options: &Options, targets: &Targets, proxy: Option<&Running>) -> Vec<Metric> {
    let cpu_before = cpu(proxy);
    let load_cpu_before = load_generator_cpu();
    let until = Instant::now() + options.duration();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (mut stream, _) = open(proxy, targets.echo).await.expect("open");
        tasks.push(tokio::spawn(async move {
            let message = [3u8; 1024];
            let mut reply = [0u8; 1024];
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let sent = Instant::now();
                if stream.write_all(&message).await.is_err()
                    || stream.read_exact(&mut reply).await.is_err()
                {
                    break;
                }
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap_or_default());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let load_cpu = load_generator_cpu() - load_cpu_before;
    latencies.sort();
    let mut metrics = vec![
        Metric::better_higher("round_trips_per_s", "1/s", latencies.len() as f64 / elapsed),
        latency("p50_latency", "us", &latencies, 0.50),
        latency("p99_latency", "us", &latencies, 0.99),
    ];
    if !latencies.is_empty() {
        metrics.push(Metric::better_lower(
            "load_cpu_per_round_trip",
            "us",
            load_cpu / latencies.len() as f64 * 1e6,
        ));
    }
    if proxy.is_some() && !latencies.is_empty() {
        // Each round trip is two relayed messages; the proxy's CPU time per round trip shows
        // what its syscalls and wake-ups cost, which the shared cores' noise hides in rates.
        metrics.push(Metric::of_proxy(
            "cpu_per_round_trip",
            "us",
            (cpu(proxy) - cpu_before) / latencies.len() as f64 * 1e6,
        ));
    }
    metrics
}

async fn mice_elephants(
    options: &Options,
    targets: &Targets,
    proxy: Option<&Running>,
) -> Vec<Metric> {
    let start = Instant::now();
    let until = start + options.duration();
    let mut elephants = Vec::new();
    for _ in 0..4 {
        let (stream, _) = open(proxy, targets.ack).await.expect("open");
        elephants.push(tokio::spawn(upload_for(stream, until, 8 << 20)));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut mice = Vec::new();
    for _ in 0..2 {
        let proxy_addr = proxy.map(|p| p.addr);
        let ack = targets.ack;
        let stop = Arc::clone(&stop);
        mice.push(tokio::spawn(async move {
            let mut times = Vec::new();
            let body = vec![9u8; 64 * 1024];
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                let mouse = async {
                    let (mut stream, _) = open_addr(proxy_addr, ack).await?;
                    let opened = began.elapsed();
                    stream.write_all(&(body.len() as u64).to_be_bytes()).await?;
                    stream.write_all(&body).await?;
                    let mut done = [0u8; 1];
                    stream.read_exact(&mut done).await?;
                    std::io::Result::Ok(opened)
                };
                if let Ok(Ok(opened)) = tokio::time::timeout(Duration::from_secs(10), mouse).await {
                    times.push((began.elapsed(), opened));
                }
            }
            times
        }));
    }
    let mut bytes = 0u64;
    for elephant in elephants {
        bytes += elephant.await.unwrap_or(0);
    }
    stop.store(true, Ordering::Relaxed);
    let (mut times, mut opens): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
    for mouse in mice {
        for (time, opened) in mouse.await.unwrap_or_default() {
            times.push(time);
            opens.push(opened);
        }
    }
    times.sort();
    opens.sort();
    let elapsed = start.elapsed().as_secs_f64();
    vec![
        latency("mice_p99", "ms", &times, 0.99),
        latency("mice_p50", "ms", &times, 0.50),
        // How long a mouse waited for its connection (through a proxy: until the CONNECT was
        // answered), which is where the wake-ups of every process on the busy cores show.
        latency("mice_open_p50", "ms", &opens, 0.50),
        Metric::better_higher("elephants", "MB/s", bytes as f64 / elapsed / 1e6),
    ]
}

async fn idle(options: &Options, targets: &Targets, proxy: Option<&Running>) -> Vec<Metric> {
    let Some(proxy) = proxy else {
        return Vec::new();
    };
    let count = if options.quick { 200 } else { 2000 };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = proxy.rss_kib();
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        match open(Some(proxy), targets.idle).await {
            Ok((mut stream, _)) => {
                // One byte through each tunnel, so both sides have been used once.
                let _ = stream.write_all(b"x").await;
                streams.push(stream);
            }
            Err(_) => break,
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = proxy.rss_kib();
    let opened = streams.len().max(1) as f64;
    drop(streams);
    vec![
        Metric::of_proxy("baseline_rss", "MB", baseline as f64 / 1024.0),
        Metric::of_proxy(
            "rss_per_tunnel",
            "KiB",
            (loaded.saturating_sub(baseline)) as f64 / opened,
        ),
    ]
}
