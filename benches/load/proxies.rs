//! The proxies under test, started as child processes on free loopback ports.

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::targets::Targets;

/// One way of reaching the targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Direct,
    FyntrUring,
    FyntrTokio,
    /// io_uring with `--zero-copy off`: the copying relay, for before/after comparisons.
    FyntrUringCopy,
    /// io_uring with `--upload-rate off --download-rate off`: what `auto` (the default) costs.
    FyntrUringUnpaced,
    FyntrUpstream(PathBuf),
    Tinyproxy(PathBuf),
    Squid(PathBuf),
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::FyntrUring => "fyntr-io-uring",
            Mode::FyntrTokio => "fyntr-tokio",
            Mode::FyntrUringCopy => "fyntr-io-uring-copy",
            Mode::FyntrUringUnpaced => "fyntr-io-uring-unpaced",
            Mode::FyntrUpstream(_) => "fyntr-0.4.8",
            Mode::Tinyproxy(_) => "tinyproxy",
            Mode::Squid(_) => "squid",
        }
    }
}

/// Every mode available on this machine, filtered by `wanted` (names) when not empty.
pub fn available(wanted: &[String]) -> Vec<Mode> {
    let mut modes = vec![Mode::Direct, Mode::FyntrUring, Mode::FyntrTokio];
    let upstream = std::env::var_os("FYNTR_UPSTREAM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/fyntr-0.4.8/bin/fyntr"));
    if upstream.exists() {
        modes.push(Mode::FyntrUpstream(upstream));
    }
    for (name, make) in [
        ("tinyproxy", Mode::Tinyproxy as fn(PathBuf) -> Mode),
        ("squid", Mode::Squid as fn(PathBuf) -> Mode),
    ] {
        for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
            let path = PathBuf::from(dir).join(name);
            if path.exists() {
                modes.push(make(path));
                break;
            }
        }
    }
    // Opt-in: only when asked for by name.
    let opt_in = [Mode::FyntrUringCopy, Mode::FyntrUringUnpaced];
    modes.extend(opt_in.iter().cloned());
    modes.retain(|mode| {
        let named = wanted.iter().any(|name| name == mode.name());
        named || (wanted.is_empty() && !opt_in.contains(mode))
    });
    modes
}

/// A running proxy; killed on drop.
pub struct Running {
    child: Child,
    pub addr: SocketAddr,
    _config: Option<tempdir::Dir>,
}

impl Running {
    pub fn start(mode: &Mode, targets: &Targets) -> Result<Running, String> {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let ports: Vec<String> = targets.ports().iter().map(u16::to_string).collect();
        let fyntr_args = |backend: Option<&str>| {
            let mut args = vec![
                "--port".to_string(),
                port.to_string(),
                "--allow-cidr".into(),
                "127.0.0.0/8".into(),
                "--max-connections".into(),
                "5000".into(),
            ];
            for target_port in &ports {
                args.push("--allow-port".into());
                args.push(target_port.clone());
            }
            if let Some(backend) = backend {
                args.push("--backend".into());
                args.push(backend.into());
            }
            args
        };
        let mut config_dir = None;
        let mut command = match mode {
            Mode::Direct => return Err("direct has no proxy".into()),
            Mode::FyntrUring
            | Mode::FyntrTokio
            | Mode::FyntrUringCopy
            | Mode::FyntrUringUnpaced => {
                let backend = if *mode == Mode::FyntrTokio {
                    "tokio"
                } else {
                    "io-uring"
                };
                let mut command = Command::new(env!("CARGO_BIN_EXE_fyntr"));
                command
                    .args(fyntr_args(Some(backend)))
                    .env("RUST_LOG", "warn");
                if *mode == Mode::FyntrUringCopy {
                    command.args(["--zero-copy", "off"]);
                }
                if *mode == Mode::FyntrUringUnpaced {
                    command.args(["--upload-rate", "off", "--download-rate", "off"]);
                }
                command
            }
            Mode::FyntrUpstream(path) => {
                let mut command = Command::new(path);
                command.args(fyntr_args(None)).env("RUST_LOG", "warn");
                command
            }
            Mode::Tinyproxy(path) => {
                let dir = tempdir::Dir::new("tinyproxy");
                let mut conf = format!(
                    "Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 5000\nAllow 127.0.0.1\nLogLevel Critical\nDisableViaHeader Yes\n"
                );
                for target_port in &ports {
                    conf.push_str(&format!("ConnectPort {target_port}\n"));
                }
                let file = dir.path.join("tinyproxy.conf");
                std::fs::write(&file, conf).map_err(|e| e.to_string())?;
                let mut command = Command::new(path);
                command.arg("-d").arg("-c").arg(&file);
                config_dir = Some(dir);
                command
            }
            Mode::Squid(path) => {
                let dir = tempdir::Dir::new("squid");
                let mut conf = format!(
                    "http_port 127.0.0.1:{port}\nacl localnet src 127.0.0.0/8\nacl targets port {}\nacl CONNECT method CONNECT\nhttp_access allow CONNECT targets localnet\nhttp_access deny all\ncache deny all\naccess_log none\ncache_log /dev/null\npid_filename none\nmax_filedescriptors 16384\ncoredump_dir {}\n",
                    ports.join(" "),
                    dir.path.display()
                );
                conf.push_str("shutdown_lifetime 0 seconds\n");
                let file = dir.path.join("squid.conf");
                std::fs::write(&file, conf).map_err(|e| e.to_string())?;
                let mut command = Command::new(path);
                command.arg("-N").arg("-f").arg(&file);
                config_dir = Some(dir);
                command
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("spawn: {error}"))?;
        let mut running = Running {
            child,
            addr,
            _config: config_dir,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if start.elapsed() > Duration::from_secs(10)
                || running.child.try_wait().ok().flatten().is_some()
            {
                return Err("did not start listening".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(running)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU seconds the proxy has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(&self.pid().to_string())
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

mod tempdir {
    use std::path::PathBuf;

    /// A directory removed on drop.
    pub struct Dir {
        pub path: PathBuf,
    }

    impl Dir {
        pub fn new(name: &str) -> Dir {
            let path =
                std::env::temp_dir().join(format!("fyntr-load-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&path).unwrap();
            Dir { path }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Makes `target/release/fyntr` the binary users run before the proxies start.
///
/// `cargo bench` builds fyntr with the dev-dependencies' features unified in (Tokio's
/// multi-threaded runtime, for this load generator), into the same path: a binary 52 KB larger
/// that also loads libm, whose start-up relocations cost 0.45 MB of resident memory (baseline
/// 4.1 MB against 3.6 MB for `cargo build --release`). Building the plain release binary again
/// only copies it back into place when it is up to date.
pub fn use_the_shipped_binary() {
    let built = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--bin",
            "fyntr",
            "--manifest-path",
        ])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .status();
    match built {
        Ok(status) if status.success() => {}
        other => eprintln!(
            "could not build the release binary ({other:?}); measuring the bench build of fyntr"
        ),
    }
}

/// User plus system CPU seconds, all threads, that `process` (a pid, or `self`) has used so far.
pub fn process_cpu_seconds(process: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{process}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    // Safety: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / per_second
}
