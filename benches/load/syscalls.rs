//! System calls per relayed message, counted by `strace -c` on the proxy's threads.
//!
//! Two fixed workloads, each under its own count: 1 KiB ping-pong on 10 tunnels (every round
//! trip is two relayed messages), and one bulk download (per 64 KiB relayed). The calls are
//! grouped as direct I/O (`recv`/`send`/`read`/`write`/`splice` and their variants), epoll, and
//! `io_uring_enter`. strace slows the proxy down, so the rates of this run mean nothing; the
//! counts per message are what it measures. Without `strace` (or where ptrace is denied) the
//! scenario reports nothing.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    proxies::Running,
    scenarios::{open, Metric},
    targets::Targets,
    Options,
};

const DIRECT_IO: &[&str] = &[
    "read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg", "recvmmsg",
    "sendmmsg", "splice", "vmsplice", "tee",
];
const EPOLL: &[&str] = &["epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl"];
const RING: &[&str] = &["io_uring_enter"];

/// An `strace -c` attached to every thread of a process.
struct Counting {
    strace: Child,
    output: std::path::PathBuf,
}

impl Counting {
    fn attach(pid: u32, label: &str) -> Option<Counting> {
        let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .collect();
        let output =
            std::env::temp_dir().join(format!("fyntr-syscalls-{}-{label}", std::process::id()));
        let mut command = Command::new("strace");
        command.args(["-c", "-f", "-qq", "-o"]).arg(&output);
        for thread in &threads {
            command.args(["-p", thread]);
        }
        let strace = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        // Attaching takes a moment; counting starts once it has.
        std::thread::sleep(Duration::from_millis(300));
        Some(Counting { strace, output })
    }

    /// Detaches and returns the calls counted, by name.
    fn finish(mut self) -> Option<Vec<(String, u64)>> {
        // Safety: kill has no memory preconditions; the PID is our own child's.
        unsafe {
            libc::kill(self.strace.id() as i32, libc::SIGINT);
        }
        let _ = self.strace.wait();
        let text = std::fs::read_to_string(&self.output).ok()?;
        let _ = std::fs::remove_file(&self.output);
        let counts: Vec<(String, u64)> = text
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // % time, seconds, usecs/call, calls, [errors,] syscall
                if fields.len() < 5 || fields[0].parse::<f64>().is_err() {
                    return None;
                }
                let calls = fields[3].parse().ok()?;
                Some((fields.last()?.to_string(), calls))
            })
            .collect();
        (!counts.is_empty()).then_some(counts)
    }
}

fn sum(counts: &[(String, u64)], names: &[&str]) -> f64 {
    counts
        .iter()
        .filter(|(name, _)| names.contains(&name.as_str()))
        .map(|(_, calls)| *calls as f64)
        .fold(0.0, |total, calls| total + calls)
}

fn have_strace() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

pub async fn syscalls(
    options: &Options,
    targets: &Targets,
    proxy: Option<&Running>,
) -> Vec<Metric> {
    let Some(proxy) = proxy else {
        return Vec::new();
    };
    if !have_strace() {
        eprintln!("syscalls: strace not installed; nothing counted");
        return Vec::new();
    }
    let mut metrics = Vec::new();

    // Ping-pong: 10 tunnels, a fixed number of round trips each.
    let round_trips: u64 = if options.quick { 500 } else { 3000 };
    let mut streams = Vec::new();
    for _ in 0..10 {
        streams.push(open(Some(proxy), targets.echo).await.expect("open").0);
    }
    let Some(counting) = Counting::attach(proxy.pid(), "ping") else {
        return metrics;
    };
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let message = [3u8; 1024];
                let mut reply = [0u8; 1024];
                for _ in 0..round_trips {
                    if stream.write_all(&message).await.is_err()
                        || stream.read_exact(&mut reply).await.is_err()
                    {
                        break;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(120), task).await;
    }
    let Some(counts) = counting.finish() else {
        eprintln!("syscalls: strace counted nothing (ptrace denied?)");
        return metrics;
    };
    let messages = (10 * round_trips * 2) as f64;
    metrics.push(Metric::of_proxy(
        "ping_direct_io_per_message",
        "calls",
        sum(&counts, DIRECT_IO) / messages,
    ));
    metrics.push(Metric::of_proxy(
        "ping_epoll_per_message",
        "calls",
        sum(&counts, EPOLL) / messages,
    ));
    metrics.push(Metric::of_proxy(
        "ping_io_uring_enter_per_message",
        "calls",
        sum(&counts, RING) / messages,
    ));

    // Bulk: one download of a fixed size.
    let bytes: u64 = if options.quick { 64 << 20 } else { 512 << 20 };
    let (mut stream, early) = open(Some(proxy), targets.source).await.expect("open");
    let Some(counting) = Counting::attach(proxy.pid(), "bulk") else {
        return metrics;
    };
    let mut received = early as u64;
    let mut buffer = vec![0u8; 256 * 1024];
    let read = async {
        while received < bytes {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n as u64,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(120), read).await;
    let Some(counts) = counting.finish() else {
        return metrics;
    };
    let chunks = received as f64 / 65536.0;
    metrics.push(Metric::of_proxy(
        "bulk_direct_io_per_64k",
        "calls",
        sum(&counts, DIRECT_IO) / chunks,
    ));
    metrics.push(Metric::of_proxy(
        "bulk_epoll_per_64k",
        "calls",
        sum(&counts, EPOLL) / chunks,
    ));
    metrics.push(Metric::of_proxy(
        "bulk_io_uring_enter_per_64k",
        "calls",
        sum(&counts, RING) / chunks,
    ));
    metrics
}
