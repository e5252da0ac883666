//! The `fyntr` command: parses the command line, sets up logging, guards descriptors, picks the
//! backend, binds, and runs the server until SIGINT/SIGTERM.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use fyntr::{
    backend,
    config::{BackendChoice, Config, Pacing, RateSetting, Threats},
    limits,
    platform::{socket, PipeBudget},
    policy::{Policy, PolicyConfig},
    threat::{ThreatAction, ThreatIndex},
};
use ipnet::IpNet;
use tracing::{error, info, warn};

/// A forward proxy for bursts of TLS connections (Terraform, aws-cli, git, pip, brew).
///
/// Point tools at it with `HTTPS_PROXY=http://127.0.0.1:9999`. It tunnels CONNECT requests
/// without terminating TLS and schedules the bytes of all tunnels with Deficit Round-Robin.
/// Every option can also be set with its FYNTR_* environment variable.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    /// Address or host name to listen on; a warning is logged when it is not loopback.
    #[arg(long, env = "FYNTR_BIND", default_value = "127.0.0.1")]
    bind: String,

    /// Port to listen on (0 picks a free port, which the start line reports).
    #[arg(long, env = "FYNTR_PORT", default_value_t = 9999)]
    port: u16,

    /// Concurrent client connections, pending CONNECTs included (0 = as many as the descriptor
    /// limit allows). Connections over the cap get 503.
    #[arg(long, env = "FYNTR_MAX_CONNECTIONS", default_value_t = 1000)]
    max_connections: usize,

    /// Seconds a tunnel may be silent both ways before it is closed (0 = never).
    #[arg(
        long,
        env = "FYNTR_IDLE_TIMEOUT",
        default_value_t = 300,
        value_name = "SECONDS"
    )]
    idle_timeout: u64,

    /// Seconds a client has to send its whole CONNECT request head (408 after).
    #[arg(long, env = "FYNTR_HANDSHAKE_TIMEOUT", default_value_t = 30, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    handshake_timeout: u64,

    /// Seconds one upstream connection attempt may take (each resolved address is tried, in 3
    /// rounds; 504 when they all time out).
    #[arg(long, env = "FYNTR_CONNECT_TIMEOUT", default_value_t = 3, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    connect_timeout: u64,

    /// Seconds open tunnels may drain after SIGINT/SIGTERM before exit.
    #[arg(
        long,
        env = "FYNTR_SHUTDOWN_GRACE",
        default_value_t = 5,
        value_name = "SECONDS"
    )]
    shutdown_grace: u64,

    /// Allowed CONNECT destination port (repeat or comma-separate; 443 is always allowed unless
    /// --no-default-allow-port).
    #[arg(long, env = "FYNTR_ALLOW_PORT", value_delimiter = ',', value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    allow_port: Vec<u16>,

    /// Do not allow port 443 implicitly: only --allow-port values are allowed.
    #[arg(long, env = "FYNTR_NO_DEFAULT_ALLOW_PORT")]
    no_default_allow_port: bool,

    /// Extra CIDR denied as a destination, added to the default list (loopback, private,
    /// link-local, CGNAT, multicast, reserved, ULA). Repeat or comma-separate.
    #[arg(
        long,
        env = "FYNTR_DENY_CIDR",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    deny_cidr: Vec<IpNet>,

    /// CIDR allowed even when a deny range covers it. Repeat or comma-separate.
    #[arg(
        long,
        env = "FYNTR_ALLOW_CIDR",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    allow_cidr: Vec<IpNet>,

    /// Domain (and its subdomains) whose denied addresses are skipped instead of refusing the
    /// request; refused only if every address is denied. Repeat or comma-separate.
    #[arg(
        long,
        env = "FYNTR_ALLOW_DOMAIN",
        value_delimiter = ',',
        value_name = "DOMAIN"
    )]
    allow_domain: Vec<String>,

    /// I/O backend: auto picks io_uring when the kernel allows it, else tokio.
    #[arg(long, env = "FYNTR_BACKEND", value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,

    /// Worker threads, each with its own listener, runtime and scheduler (default: one per core).
    #[arg(long, env = "FYNTR_WORKERS", value_parser = clap::value_parser!(u64).range(1..1025))]
    workers: Option<u64>,

    /// Size of one relay buffer (one read, one scheduled chunk), e.g. 65536, 64KiB, 256KiB
    /// (KiB/MiB are powers of 1024; KB/MB and a bare k/m powers of 1000).
    #[arg(long, env = "FYNTR_BUFFER_SIZE", default_value = "64KiB", value_name = "BYTES",
          value_parser = parse_buffer_size)]
    buffer_size: usize,

    /// Relay bulk data without copying it (splice through kernel pipes, Linux): on or off.
    /// Off copies every chunk through a buffer (and, on io-uring, through the ring).
    #[arg(long, env = "FYNTR_ZERO_COPY", value_enum, default_value_t = Switch::On)]
    zero_copy: Switch,

    /// Total upload rate (client to destination): auto, off, or a rate such as 19mbit, 2.5MB,
    /// 500KiB (per second; kbit/mbit and KB/MB are powers of 1000, as in tc; KiB/MiB powers of
    /// 1024). auto paces all tunnels together just below the bottleneck rate fyntr measures,
    /// only while its own traffic builds a queue there; a rate paces at exactly that (set it a
    /// little below the uplink, 95 %); both share the rate fairly with DRR.
    #[arg(long, env = "FYNTR_UPLOAD_RATE", value_name = "RATE", default_value = "auto", value_parser = parse_rate)]
    upload_rate: RateSetting,

    /// Total download rate (destination to client), like --upload-rate; paced by how fast fyntr
    /// reads from upstream and by the receive windows it offers.
    #[arg(long, env = "FYNTR_DOWNLOAD_RATE", value_name = "RATE", default_value = "auto", value_parser = parse_rate)]
    download_rate: RateSetting,

    /// New upstream connections per second (a small burst allowed). Requests over the rate wait
    /// their turn in order, within the handshake timeout (503 if none comes). Default: off.
    #[arg(long, env = "FYNTR_CONNECT_RATE", value_name = "PER_SECOND", value_parser = parse_connect_rate)]
    connect_rate: Option<f64>,

    /// A threat feed: domains, IP addresses, CIDR ranges, AdGuard `||host^` rules or hosts-file
    /// lines, one per line. Requests to a listed host (or a name under a listed domain, or a
    /// name resolving to a listed address) are logged, or refused with --threat-action block.
    #[arg(
        long,
        env = "FYNTR_THREAT_FEED_FILE",
        value_delimiter = ',',
        value_name = "FILE"
    )]
    threat_feed_file: Vec<std::path::PathBuf>,

    /// What a threat feed match does: `warn` logs it and lets the request go on, `block` also
    /// refuses it (403; SOCKS5 reply 02).
    #[arg(long, env = "FYNTR_THREAT_ACTION", value_enum, default_value = "warn")]
    threat_action: ThreatActionArg,

    /// Also serve SOCKS5 (no authentication, CONNECT only) on this port, with the same policy,
    /// limits and pacing as the proxy port (0 picks a free port). Default: off.
    #[arg(long, env = "FYNTR_SOCKS5_PORT", value_name = "PORT")]
    socks5_port: Option<u16>,

    /// Address of the SOCKS5 listener. Default: the --bind address.
    #[arg(long, env = "FYNTR_SOCKS5_BIND", value_name = "ADDR")]
    socks5_bind: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ThreatActionArg {
    Warn,
    Block,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    Auto,
    IoUring,
    Tokio,
}

/// Buffer sizes from 4 KiB (below that, syscalls per byte dominate) to 1 MiB (above that, a
/// single flow's chunk delays every other flow's turn for too long).
fn parse_buffer_size(text: &str) -> Result<usize, String> {
    let size = fyntr::config::parse_byte_size(text)?;
    if !(4096..=1 << 20).contains(&size) {
        return Err(format!("{size} bytes is outside 4KiB..=1MiB"));
    }
    Ok(size)
}

fn parse_rate(text: &str) -> Result<RateSetting, String> {
    RateSetting::parse(text)
}

fn parse_connect_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a positive number of connections per second"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!("{error:#}");
            eprintln!("fyntr: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to standard error at the level `RUST_LOG` names (`info` by default). `RUST_LOG` takes
/// `level` or `target=level` pairs (`fyntr::tunnel=debug,info`); the filter needs no regex
/// engine, which keeps the binary and its resident memory small.
fn init_logging() {
    use tracing_subscriber::{filter::Targets, layer::SubscriberExt, util::SubscriberInitExt};
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let filter = spec
        .parse::<Targets>()
        .ok()
        .filter(|_| !spec.trim().is_empty())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    tracing_subscriber::registry()
        .with(format)
        .with(filter)
        .init();
}

fn run(cli: Cli) -> Result<()> {
    let threats = load_threats(&cli)?;
    let listen = resolve_bind(&cli.bind, cli.port)?;
    if !listen.ip().is_loopback() {
        warn!(
            address = %listen,
            "listening on a non-loopback address: anyone who can reach it can use this proxy"
        );
    }
    let socks5_listen = match (cli.socks5_port, &cli.socks5_bind) {
        (Some(port), bind) => Some(resolve_bind(bind.as_deref().unwrap_or(&cli.bind), port)?),
        (None, Some(_)) => {
            warn!("--socks5-bind is ignored without --socks5-port: no SOCKS5 listener");
            None
        }
        (None, None) => None,
    };
    if let Some(address) = socks5_listen.filter(|address| !address.ip().is_loopback()) {
        warn!(
            address = %address,
            "SOCKS5 on a non-loopback address: anyone who can reach it can use this proxy"
        );
    }
    let workers = match cli.workers {
        Some(workers) => workers as usize,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let budget = limits::fd_guard(cli.max_connections, workers)
        .context("reading the file-descriptor limit")?;
    if budget.lowered && cli.max_connections != 0 {
        warn!(
            requested = cli.max_connections,
            connection_cap = budget.connection_cap,
            descriptor_limit = budget.soft_limit,
            "the descriptor limit cannot hold the requested connections; cap lowered (raise `ulimit -n` to keep it)"
        );
    }

    let config = Config {
        connection_cap: budget.connection_cap,
        idle_timeout: (cli.idle_timeout > 0).then(|| Duration::from_secs(cli.idle_timeout)),
        handshake_timeout: Duration::from_secs(cli.handshake_timeout),
        shutdown_grace: Duration::from_secs(cli.shutdown_grace),
        workers,
        threats,
        policy: PolicyConfig {
            allowed_ports: cli.allow_port,
            no_default_allowed_port: cli.no_default_allow_port,
            denied: fyntr::policy::default_denied()
                .into_iter()
                .chain(cli.deny_cidr)
                .collect(),
            allowed: cli.allow_cidr,
            allowed_domains: cli.allow_domain,
        },
        buffer_size: cli.buffer_size,
        pipes_per_worker: match cli.zero_copy {
            Switch::On => fyntr::limits::PIPES_PER_WORKER,
            Switch::Off => 0,
        },
        pipe_budget: PipeBudget::for_this_user().total(),
        pacing: Pacing {
            upload: cli.upload_rate,
            download: cli.download_rate,
            connects_per_second: cli.connect_rate,
        },
        dial: fyntr::dial::DialPlan {
            attempt_timeout: Duration::from_secs(cli.connect_timeout),
            ..Default::default()
        },
        ..Config::default()
    };
    let config = config.resolve();
    return_buffers_to_the_system(cli.buffer_size);

    let choice_arg = match cli.backend {
        BackendArg::Auto => BackendChoice::Auto,
        BackendArg::IoUring => BackendChoice::IoUring,
        BackendArg::Tokio => BackendChoice::Tokio,
    };
    let choice = backend::choose(choice_arg, fixed_buffer_count(cli.buffer_size, workers))?;
    if let Some(warning) = &choice.fallback_warning {
        warn!("{warning}");
    }
    let backend = choice.backend;
    let reason = choice.reason.as_str();
    let listeners =
        socket::bind_listeners(listen, workers).with_context(|| format!("binding {listen}"))?;
    let bound = listeners[0]
        .local_addr()
        .context("reading the bound address")?;
    if let Some(address) = socks5_listen.filter(|address| address.port() == bound.port()) {
        // Both listeners set SO_REUSEPORT, so the kernel would let them share the port and
        // split its connections between two protocols.
        bail!(
            "--socks5-port {} is the proxy port; choose another",
            address.port()
        );
    }
    let socks5_listeners = socks5_listen
        .map(|address| {
            socket::bind_listeners(address, workers)
                .with_context(|| format!("binding the SOCKS5 listener on {address}"))
        })
        .transpose()?;
    let socks5_bound = socks5_listeners
        .as_ref()
        .map(|listeners| listeners[0].local_addr())
        .transpose()
        .context("reading the SOCKS5 bound address")?;
    let ports: Vec<String> = Policy::new(&config.policy)
        .allowed_ports()
        .map(|p| p.to_string())
        .collect();
    // Signals are watched before the start line: a SIGINT sent as soon as the proxy says it
    // listens must drain it, not kill it with the default action.
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let (watching, watched) = std::sync::mpsc::channel();
    let grace = Duration::from_secs(cli.shutdown_grace);
    std::thread::Builder::new()
        .name("fyntr-signals".into())
        .spawn(move || wait_for_signals(stop, grace, watching))
        .context("starting the signal thread")?;
    if watched.recv_timeout(Duration::from_secs(5)).is_err() {
        warn!("the signal thread did not start watching within 5 s");
    }
    info!(
        version = env!("CARGO_PKG_VERSION"),
        backend = backend.name(),
        backend_reason = reason,
        workers,
        max_connections = config.connection_cap,
        unlimited = cli.max_connections == 0,
        idle_timeout_s = cli.idle_timeout,
        handshake_timeout_s = cli.handshake_timeout,
        buffer_size = config.buffer_size,
        zero_copy = zero_copy_state(config.pipes_per_worker),
        pipe_budget = %describe_pipe_budget(&config),
        splice_chunk = config.splice_chunk,
        allowed_ports = %ports.join(","),
        upload_rate = %describe_rate(config.pacing.upload),
        download_rate = %describe_rate(config.pacing.download),
        connect_rate = %config.pacing.connects_per_second.map_or("off".to_string(), |r| format!("{r}/s")),
        socks5 = %socks5_bound.map_or("off".to_string(), |address| address.to_string()),
        "fyntr listening on {bound}"
    );
    if let Some(address) = socks5_bound {
        info!("fyntr SOCKS5 listening on {address}");
    }
    let listeners = fyntr::server::Listeners {
        proxy: listeners,
        socks5: socks5_listeners,
    };

    backend
        .run(config, listeners, shutdown)
        .context("running the workers")?;
    info!("shutdown complete");
    Ok(())
}

fn describe_rate(setting: RateSetting) -> String {
    match setting {
        RateSetting::Off => "off".to_string(),
        RateSetting::Auto => "auto".to_string(),
        RateSetting::Fixed(rate) => format!(
            "{:.2}mbit on the wire (upstream receive windows up to {} KiB)",
            rate.megabits(),
            Pacing::socket_buffer(rate, 1) / 1024
        ),
    }
}

/// What the start line says about the pipes all workers may hold (see `PipeBudget`).
fn describe_pipe_budget(config: &Config) -> String {
    match (config.pipes_per_worker, config.pipe_budget) {
        (0, _) => "none (no pipes)".to_string(),
        (_, None) => "unlimited".to_string(),
        (_, Some(bytes)) => format!("{} KiB", bytes / 1024),
    }
}

/// What the start line says about zero-copy relaying.
fn zero_copy_state(pipes_per_worker: usize) -> &'static str {
    match (cfg!(target_os = "linux"), pipes_per_worker) {
        (false, _) => "off (splice is Linux-only)",
        (true, 0) => "off",
        (true, _) => "splice",
    }
}

/// Makes glibc serve relay-sized allocations with mmap, so buffers freed after a burst go back
/// to the system instead of staying in a fragmented heap (measured: 2000 idle io_uring tunnels
/// kept 45 MiB resident after their opening burst without this, 14 MiB with it).
fn return_buffers_to_the_system(buffer_size: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let threshold = i32::try_from(buffer_size).unwrap_or(i32::MAX);
        // Safety: mallopt only changes allocator tuning; called before any worker starts.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, threshold);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = buffer_size;
}

/// Registered buffers per worker: the default, unless `RLIMIT_MEMLOCK` (which pinned, registered
/// memory counts against) cannot hold it, in which case what fits in three quarters of it.
fn fixed_buffer_count(buffer_size: usize, workers: usize) -> usize {
    #[cfg(target_os = "linux")]
    {
        let wanted = fyntr::platform::uring::DEFAULT_FIXED_BUFFERS;
        let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::MEMLOCK) else {
            return 0;
        };
        // Root has CAP_IPC_LOCK, which lifts the limit.
        // Safety: geteuid has no preconditions.
        if soft == rlimit::INFINITY || unsafe { libc::geteuid() } == 0 {
            return wanted;
        }
        let per_worker = (soft / 4 * 3) / (buffer_size as u64 * workers.max(1) as u64);
        wanted.min(usize::try_from(per_worker).unwrap_or(usize::MAX))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (buffer_size, workers);
        0
    }
}

fn resolve_bind(bind: &str, port: u16) -> Result<SocketAddr> {
    let host = bind.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("--bind {bind}: not an IP address or resolvable host name"))?
        .next()
        .with_context(|| format!("--bind {bind}: resolved to no address"))
}

/// Loads the threat feeds, logging what each held; `None` without feeds.
fn load_threats(cli: &Cli) -> Result<Option<Threats>> {
    let action = match cli.threat_action {
        ThreatActionArg::Warn => ThreatAction::Warn,
        ThreatActionArg::Block => ThreatAction::Block,
    };
    if cli.threat_feed_file.is_empty() {
        if action == ThreatAction::Block {
            bail!("--threat-action block requires at least one --threat-feed-file");
        }
        return Ok(None);
    }
    let (index, counts) = ThreatIndex::load(&cli.threat_feed_file)?;
    for (path, counts) in cli.threat_feed_file.iter().zip(&counts) {
        info!(
            file = %path.display(),
            domains = counts.domains,
            ips = counts.ips,
            ranges = counts.ranges,
            skipped = counts.skipped,
            "loaded threat feed"
        );
        if counts.skipped > 0 {
            warn!(file = %path.display(), skipped = counts.skipped, "skipped unsupported threat feed lines");
        }
    }
    let total = index.counts();
    info!(
        files = counts.len(),
        domains = total.domains,
        ips = total.ips,
        ranges = total.ranges,
        action = action.name(),
        "threat feeds ready"
    );
    Ok(Some(Threats {
        index: std::sync::Arc::new(index),
        action,
    }))
}

/// Waits for SIGINT or SIGTERM, then asks the server to drain. A second signal exits at once.
fn wait_for_signals(
    stop: tokio::sync::watch::Sender<bool>,
    grace: Duration,
    watching: std::sync::mpsc::Sender<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            error!(%error, "cannot watch for signals; stop fyntr with SIGKILL");
            return;
        }
    };
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        // Both handlers are installed here, when the streams are made, before the caller is
        // told that signals are watched.
        let (Ok(mut interrupt), Ok(mut terminate)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            error!("cannot watch for SIGINT and SIGTERM");
            let _ = watching.send(());
            return;
        };
        let _ = watching.send(());
        tokio::select! {
            _ = interrupt.recv() => info!("SIGINT received, stopping"),
            _ = terminate.recv() => info!("SIGTERM received, stopping"),
        }
        info!(
            grace_s = grace.as_secs(),
            "no longer accepting; draining open tunnels"
        );
        let _ = stop.send(true);
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        warn!("second signal, exiting now");
        std::process::exit(1);
    });
}
