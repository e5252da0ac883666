//! The `fyntr` command: parses the command line, sets up logging, hands the settings to
//! [`fyntr::run`] (descriptors, feeds, backend, listeners), and runs the server until
//! SIGINT/SIGTERM.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use fyntr::{
    config::{BackendChoice, RateSetting},
    threat::ThreatAction,
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
    /// A tool instead of the proxy: shell completions or the man page.
    #[command(subcommand)]
    tool: Option<Tool>,

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

/// What `fyntr TOOL` prints instead of running the proxy.
#[derive(Clone, Copy, Debug, clap::Subcommand)]
enum Tool {
    /// Prints a completion script for SHELL (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Prints the man page (roff) on stdout: `fyntr man > /usr/local/share/man/man1/fyntr.1`.
    Man,
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
    if let Some(tool) = cli.tool {
        return print_tool(tool);
    }
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

/// Writes a completion script or the man page to stdout, both generated from the same
/// command-line definition as the parser, so they never drift from the flags.
fn print_tool(tool: Tool) -> ExitCode {
    use clap::CommandFactory;
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    let written = match tool {
        Tool::Completions { shell } => {
            clap_complete::generate(shell, &mut command, "fyntr", &mut out);
            Ok(())
        }
        Tool::Man => clap_mangen::Man::new(command).render(&mut out),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fyntr: writing to stdout: {error}");
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
    let mut builder = fyntr::run::server()
        .bind(cli.bind.clone())
        .port(cli.port)
        .max_connections(cli.max_connections)
        .idle_timeout(Duration::from_secs(cli.idle_timeout))
        .handshake_timeout(Duration::from_secs(cli.handshake_timeout))
        .connect_timeout(Duration::from_secs(cli.connect_timeout))
        .shutdown_grace(Duration::from_secs(cli.shutdown_grace))
        .no_default_allow_port(cli.no_default_allow_port)
        .threat_action(match cli.threat_action {
            ThreatActionArg::Warn => ThreatAction::Warn,
            ThreatActionArg::Block => ThreatAction::Block,
        })
        .upload_rate(cli.upload_rate)
        .download_rate(cli.download_rate)
        .connect_rate(cli.connect_rate)
        .buffer_size(cli.buffer_size)
        .zero_copy(cli.zero_copy == Switch::On)
        .backend(match cli.backend {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::IoUring => BackendChoice::IoUring,
            BackendArg::Tokio => BackendChoice::Tokio,
        });
    if let Some(workers) = cli.workers {
        builder = builder.workers(workers as usize);
    }
    if let Some(port) = cli.socks5_port {
        builder = builder.socks5_port(port);
    }
    if let Some(bind) = cli.socks5_bind {
        builder = builder.socks5_bind(bind);
    }
    for port in cli.allow_port {
        builder = builder.allow_port(port);
    }
    for range in cli.deny_cidr {
        builder = builder.deny_range(range);
    }
    for range in cli.allow_cidr {
        builder = builder.allow_range(range);
    }
    for domain in cli.allow_domain {
        builder = builder.allow_domain(domain);
    }
    for feed in cli.threat_feed_file {
        builder = builder.threat_feed_file(feed);
    }
    let started = builder.start()?;
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
    started.announce();
    started.run(shutdown).context("running the workers")?;
    info!("shutdown complete");
    Ok(())
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
