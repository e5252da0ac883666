//! The kernel pipes of the zero-copy relay: the budget all workers share, and what fyntr does
//! when the kernel hands out pipes too small to be worth splicing through.

#![allow(missing_docs)]

mod common;

use std::{
    io::{Read, Write},
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{targets, *};
use sha2::{Digest, Sha256};

/// The unprivileged user the tests below run processes as.
const NOBODY: u32 = 65534;

on_each_backend! {
    fn relay_pipes_stay_within_the_budget_and_chunks_beyond_it_are_copied_byte_exact(backend) {
        // Uploads to a destination that does not read yet: once the proxy's socket buffers
        // toward it are full (a few MiB on loopback), each tunnel's chunk waits in the proxy, in
        // a pipe of 1 MiB (`--buffer-size 256KiB`) while the budget lasts, copied through a
        // buffer beyond it. 24 such pipes would be half as much again as the budget on this
        // machine's default limit, and 2 workers of 32 pipes could hold them.
        let Some(budget) = pipe_budget_of(&Proxy::start(backend, &[])) else {
            eprintln!("skipped: this system sets no fs.pipe-user-pages-soft, so fyntr sets no budget");
            return;
        };
        const TUNNELS: u64 = 24;
        const PIECES: u64 = 8;
        const PIECE: usize = 1 << 20;
        assert!(budget < TUNNELS as usize * PIECE, "the test needs a budget below 24 MiB: {budget}");
        let (sink, release) = targets::gated_hashing_sink();
        let proxy = Proxy::start(backend, &["--allow-port", &sink.port().to_string(), "--workers", "2", "--buffer-size", "256KiB"]);
        let before = pipe_capacity(proxy.pid());
        let uploads: Vec<_> = (0..TUNNELS)
            .map(|i| {
                let mut stream = proxy.tunnel(&sink.to_string());
                thread::spawn(move || {
                    let mut sent = Sha256::new();
                    for piece in 0..PIECES {
                        let data = payload(PIECE, i * PIECES + piece);
                        sent.update(&data);
                        stream.write_all(&data).unwrap();
                    }
                    stream.shutdown(std::net::Shutdown::Write).unwrap();
                    let mut answer = String::new();
                    stream.read_to_string(&mut answer).unwrap();
                    let expected = format!("{} {}", hex(&sent.finalize()), PIECES as usize * PIECE);
                    assert_eq!(answer, expected, "tunnel {i}");
                })
            })
            .collect();
        // Watched for a second after the chunks began to wait in pipes (5 s at most): the
        // pipes never hold more than the budget.
        let start = Instant::now();
        let mut waiting_since: Option<Instant> = None;
        let mut most = 0;
        while start.elapsed() < Duration::from_secs(5)
            && waiting_since.is_none_or(|since| since.elapsed() < Duration::from_secs(1))
        {
            most = most.max(pipe_capacity(proxy.pid()).saturating_sub(before));
            if most >= budget / 2 {
                waiting_since.get_or_insert_with(Instant::now);
            }
            thread::sleep(Duration::from_millis(20));
        }
        release();
        let arrived: Vec<_> = uploads.into_iter().map(thread::JoinHandle::join).collect();
        assert!(most <= budget, "relay pipes held {most} bytes of capacity, budget {budget}");
        assert!(most >= budget / 2, "the stalled chunks should have used pipes: {most} bytes");
        assert!(arrived.iter().all(Result::is_ok), "every upload arrives byte-exact");
    }

    fn an_unprivileged_user_over_its_pipe_limit_copies_instead_of_splicing_tiny_pipes(backend) {
        // Linux gives a user over fs.pipe-user-pages-soft new pipes of two pages, and does
        // not let it grow them. Another process of the same user takes the whole allowance
        // first; fyntr, run as that user, must then relay by copying, byte-exact, and say why.
        if let Some(why) = cannot_run_as_nobody() {
            eprintln!("skipped: {why}");
            return;
        }
        // Both backends' variants run in parallel and share user nobody's allowance: the first
        // to end would kill its hog, and the other's fyntr would get full-size pipes again.
        let _nobody_pipes = NOBODYS_PIPES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _hog = PipeHog::start();
        let binary = BinaryCopy::for_nobody();
        let echo = targets::echo();
        let proxy = Proxy::start_program(
            binary.path(),
            &["--port", "0", "--allow-cidr", "127.0.0.0/8", "--backend", backend.flag(), "--allow-port", &echo.port().to_string()],
            |command| {
                command.uid(NOBODY).gid(NOBODY);
            },
        )
        .expect("fyntr starts as nobody");
        let data = payload(16 << 20, 7);
        let back = send_and_receive(proxy.tunnel(&echo.to_string()), data.clone());
        assert!(back == data, "16 MiB echoed byte-exact ({} bytes came back)", back.len());
        proxy.wait_for_log("new pipes come with only");
    }
}

/// Held by a test for as long as it uses user `nobody`'s pipe allowance.
static NOBODYS_PIPES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Why this machine cannot run a process as `nobody` over its pipe limit, if it cannot.
fn cannot_run_as_nobody() -> Option<String> {
    // Safety: geteuid only reads the caller's credentials.
    if unsafe { libc::geteuid() } != 0 {
        return Some("switching to user nobody needs root".into());
    }
    let soft = std::fs::read_to_string("/proc/sys/fs/pipe-user-pages-soft").unwrap_or_default();
    match soft.trim().parse::<u64>() {
        Ok(0) => Some("fs.pipe-user-pages-soft is 0: the kernel never shrinks pipes".into()),
        Ok(_) => None,
        Err(_) => Some("no /proc/sys/fs/pipe-user-pages-soft".into()),
    }
}

/// A `sleep` process of user `nobody` holding pipes of 256 KiB until that user is over its soft
/// pipe limit; killed on drop.
struct PipeHog(Child);

impl PipeHog {
    fn start() -> PipeHog {
        let mut command = Command::new("sleep");
        command
            .arg("120")
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::null());
        // Safety: runs in the child between fork and exec, calling only system calls, with no
        // allocation. The pipes are not close-on-exec, so `sleep` inherits and holds them.
        unsafe {
            command.pre_exec(|| {
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                for _ in 0..4000 {
                    let mut fds = [0; 2];
                    if libc::pipe(fds.as_mut_ptr()) != 0 {
                        break;
                    }
                    // Refused once the user is over the soft limit: from then on every new
                    // pipe of the user gets two pages.
                    if libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 256 * 1024) < 0 {
                        break;
                    }
                }
                Ok(())
            });
        }
        PipeHog(command.spawn().expect("spawn the pipe hog"))
    }
}

impl Drop for PipeHog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A copy of the fyntr binary that user `nobody` may run (the build directory may be private);
/// removed on drop.
struct BinaryCopy(std::path::PathBuf);

impl BinaryCopy {
    fn for_nobody() -> BinaryCopy {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "fyntr-nobody-{}-{:?}",
            std::process::id(),
            thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("fyntr");
        std::fs::copy(env!("CARGO_BIN_EXE_fyntr"), &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        BinaryCopy(path)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for BinaryCopy {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The pipe budget a proxy's start line reports, in bytes; `None` when it is unlimited.
fn pipe_budget_of(proxy: &Proxy) -> Option<usize> {
    let log = proxy.wait_for_log("pipe_budget=");
    let value = log.split("pipe_budget=").nth(1).unwrap();
    if value.starts_with("unlimited") {
        return None;
    }
    let kib: usize = value.split(" KiB").next().unwrap().parse().expect("KiB");
    Some(kib * 1024)
}

/// The capacity of all pipes process `pid` holds open at one moment. A scan of its descriptors
/// is not atomic (a pipe closed and another opened while it runs would both count), so only
/// pipes found by two scans in a row are counted: each of those was open in between.
fn pipe_capacity(pid: u32) -> usize {
    let first = pipe_sizes(pid);
    let second = pipe_sizes(pid);
    second
        .iter()
        .filter(|(pipe, _)| first.contains_key(*pipe))
        .map(|(_, size)| size)
        .sum()
}

/// Each pipe process `pid` holds open (by its `pipe:[inode]` name) and its size (F_GETPIPE_SZ).
fn pipe_sizes(pid: u32) -> std::collections::HashMap<String, usize> {
    use std::os::{fd::AsRawFd, unix::fs::OpenOptionsExt};
    let mut sizes = std::collections::HashMap::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return sizes;
    };
    for fd in fds.filter_map(Result::ok) {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if !target.starts_with("pipe:") || sizes.contains_key(&target) {
            continue;
        }
        // Opening /proc/PID/fd/N opens the same pipe; a non-blocking reader never waits.
        let Ok(pipe) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fd.path())
        else {
            continue;
        };
        // Safety: fcntl on a descriptor this function owns.
        let size = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_GETPIPE_SZ) };
        sizes.insert(target, usize::try_from(size).unwrap_or(0));
    }
    sizes
}
