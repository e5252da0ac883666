//! The command line: every option, its `FYNTR_*` variable and default, and the settings they
//! make for [`fyntr::run::ServerBuilder`].

use std::{path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};
use fyntr::{
    config::{BackendChoice, RateSetting},
    run::ServerBuilder,
    threat::ThreatAction,
};
use ipnet::IpNet;

/// A forward proxy for bursts of TLS connections (Terraform, aws-cli, git, pip, brew).
///
/// Point tools at it with `HTTPS_PROXY=http://127.0.0.1:9999`. It tunnels CONNECT requests
/// without terminating TLS and schedules the bytes of all tunnels with Deficit Round-Robin.
/// Every option can also be set with its FYNTR_* environment variable.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
pub(crate) struct Cli {
    /// A tool instead of the proxy: shell completions or the man page.
    #[command(subcommand)]
    pub(crate) tool: Option<Tool>,

    /// A TOML file of settings: its keys are the long option names with underscores
    /// (`max_connections = 0`, `allow_port = [443, 8443]`). An option given as a flag or a
    /// FYNTR_* variable wins over the file. SIGHUP reloads it.
    #[arg(long, env = "FYNTR_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Checks the settings (file, flags, variables, threat feeds, addresses), prints the
    /// effective ones with where each came from, and exits without listening: 0 when they are
    /// valid.
    #[arg(long)]
    pub(crate) check_config: bool,

    /// Serve metrics on this address: GET /metrics (Prometheus text; ?format=json for JSON)
    /// and GET /healthz. Default: off. A warning is logged when it is not loopback.
    #[arg(long, env = "FYNTR_METRICS_BIND", value_name = "ADDR:PORT")]
    pub(crate) metrics_bind: Option<String>,

    /// Seconds between summary lines of traffic in the log while there is traffic (0 = off).
    /// When standard error is a terminal, a live stats line is shown instead.
    #[arg(
        long,
        env = "FYNTR_STATS_INTERVAL",
        default_value_t = 60,
        value_name = "SECONDS"
    )]
    pub(crate) stats_interval: u64,

    /// Address or host name to listen on; a warning is logged when it is not loopback.
    #[arg(long, env = "FYNTR_BIND", default_value = "127.0.0.1")]
    pub(crate) bind: String,

    /// Port to listen on (0 picks a free port, which the start line reports).
    #[arg(long, env = "FYNTR_PORT", default_value_t = 9999)]
    pub(crate) port: u16,

    /// Concurrent client connections, pending CONNECTs included (0 = as many as the descriptor
    /// limit allows). Connections over the cap get 503.
    #[arg(long, env = "FYNTR_MAX_CONNECTIONS", default_value_t = 1000)]
    pub(crate) max_connections: usize,

    /// Seconds a tunnel may be silent both ways before it is closed (0 = never).
    #[arg(
        long,
        env = "FYNTR_IDLE_TIMEOUT",
        default_value_t = 300,
        value_name = "SECONDS"
    )]
    pub(crate) idle_timeout: u64,

    /// Seconds a client has to send its whole CONNECT request head (408 after).
    #[arg(long, env = "FYNTR_HANDSHAKE_TIMEOUT", default_value_t = 30, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) handshake_timeout: u64,

    /// Seconds one upstream connection attempt may take (each resolved address is tried, in 3
    /// rounds; 504 when they all time out).
    #[arg(long, env = "FYNTR_CONNECT_TIMEOUT", default_value_t = 3, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) connect_timeout: u64,

    /// Seconds open tunnels may drain after SIGINT/SIGTERM before exit.
    #[arg(
        long,
        env = "FYNTR_SHUTDOWN_GRACE",
        default_value_t = 5,
        value_name = "SECONDS"
    )]
    pub(crate) shutdown_grace: u64,

    /// Allowed CONNECT destination port (repeat or comma-separate; 443 is always allowed unless
    /// --no-default-allow-port).
    #[arg(long, env = "FYNTR_ALLOW_PORT", value_delimiter = ',', value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) allow_port: Vec<u16>,

    /// Do not allow port 443 implicitly: only --allow-port values are allowed.
    #[arg(long, env = "FYNTR_NO_DEFAULT_ALLOW_PORT")]
    pub(crate) no_default_allow_port: bool,

    /// Extra CIDR denied as a destination, added to the default list (loopback, private,
    /// link-local, CGNAT, multicast, reserved, ULA). Repeat or comma-separate.
    #[arg(
        long,
        env = "FYNTR_DENY_CIDR",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub(crate) deny_cidr: Vec<IpNet>,

    /// CIDR allowed even when a deny range covers it. Repeat or comma-separate.
    #[arg(
        long,
        env = "FYNTR_ALLOW_CIDR",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub(crate) allow_cidr: Vec<IpNet>,

    /// Domain (and its subdomains) whose denied addresses are skipped instead of refusing the
    /// request; refused only if every address is denied. Repeat or comma-separate.
    #[arg(
        long,
        env = "FYNTR_ALLOW_DOMAIN",
        value_delimiter = ',',
        value_name = "DOMAIN"
    )]
    pub(crate) allow_domain: Vec<String>,

    /// I/O backend: auto picks io_uring when the kernel allows it, else tokio.
    #[arg(long, env = "FYNTR_BACKEND", value_enum, default_value_t = BackendArg::Auto)]
    pub(crate) backend: BackendArg,

    /// Worker threads, each with its own listener, runtime and scheduler (default: one per core).
    #[arg(long, env = "FYNTR_WORKERS", value_parser = clap::value_parser!(u64).range(1..1025))]
    pub(crate) workers: Option<u64>,

    /// Size of one relay buffer (one read, one scheduled chunk), e.g. 65536, 64KiB, 256KiB
    /// (KiB/MiB are powers of 1024; KB/MB and a bare k/m powers of 1000).
    #[arg(long, env = "FYNTR_BUFFER_SIZE", default_value = "64KiB", value_name = "BYTES",
          value_parser = parse_buffer_size)]
    pub(crate) buffer_size: usize,

    /// Relay bulk data without copying it (splice through kernel pipes, Linux): on or off.
    /// Off copies every chunk through a buffer (and, on io-uring, through the ring).
    #[arg(long, env = "FYNTR_ZERO_COPY", value_enum, default_value_t = Switch::On)]
    pub(crate) zero_copy: Switch,

    /// Total upload rate (client to destination): auto, off, or a rate such as 19mbit, 2.5MB,
    /// 500KiB (per second; kbit/mbit and KB/MB are powers of 1000, as in tc; KiB/MiB powers of
    /// 1024). auto paces all tunnels together just below the bottleneck rate fyntr measures,
    /// only while its own traffic builds a queue there; a rate paces at exactly that (set it a
    /// little below the uplink, 95 %); both share the rate fairly with DRR.
    #[arg(long, env = "FYNTR_UPLOAD_RATE", value_name = "RATE", default_value = "auto", value_parser = parse_rate)]
    pub(crate) upload_rate: RateSetting,

    /// Total download rate (destination to client), like --upload-rate; paced by how fast fyntr
    /// reads from upstream and by the receive windows it offers.
    #[arg(long, env = "FYNTR_DOWNLOAD_RATE", value_name = "RATE", default_value = "auto", value_parser = parse_rate)]
    pub(crate) download_rate: RateSetting,

    /// New upstream connections per second (a small burst allowed). Requests over the rate wait
    /// their turn in order, within the handshake timeout (503 if none comes). Default: off.
    #[arg(long, env = "FYNTR_CONNECT_RATE", value_name = "PER_SECOND", value_parser = parse_connect_rate)]
    pub(crate) connect_rate: Option<f64>,

    /// A threat feed: domains, IP addresses, CIDR ranges, AdGuard `||host^` rules or hosts-file
    /// lines, one per line. Requests to a listed host (or a name under a listed domain, or a
    /// name resolving to a listed address) are logged, or refused with --threat-action block.
    #[arg(
        long,
        env = "FYNTR_THREAT_FEED_FILE",
        value_delimiter = ',',
        value_name = "FILE"
    )]
    pub(crate) threat_feed_file: Vec<std::path::PathBuf>,

    /// What a threat feed match does: `warn` logs it and lets the request go on, `block` also
    /// refuses it (403; SOCKS5 reply 02).
    #[arg(long, env = "FYNTR_THREAT_ACTION", value_enum, default_value = "warn")]
    pub(crate) threat_action: ThreatActionArg,

    /// Also serve SOCKS5 (no authentication, CONNECT only) on this port, with the same policy,
    /// limits and pacing as the proxy port (0 picks a free port). Default: off.
    #[arg(long, env = "FYNTR_SOCKS5_PORT", value_name = "PORT")]
    pub(crate) socks5_port: Option<u16>,

    /// Address of the SOCKS5 listener. Default: the --bind address.
    #[arg(long, env = "FYNTR_SOCKS5_BIND", value_name = "ADDR")]
    pub(crate) socks5_bind: Option<String>,
}

/// What `fyntr TOOL` prints instead of running the proxy.
#[derive(Clone, Copy, Debug, clap::Subcommand)]
pub(crate) enum Tool {
    /// Prints a completion script for SHELL (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Prints the man page (roff) on stdout: `fyntr man > /usr/local/share/man/man1/fyntr.1`.
    Man,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ThreatActionArg {
    Warn,
    Block,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Switch {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum BackendArg {
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

impl Cli {
    /// The server these settings describe (everything but the tool, the config file, the
    /// metrics listener and the stats line, which the binary runs itself).
    pub(crate) fn builder(&self) -> ServerBuilder {
        let mut builder = fyntr::run::server()
            .bind(self.bind.clone())
            .port(self.port)
            .max_connections(self.max_connections)
            .idle_timeout(Duration::from_secs(self.idle_timeout))
            .handshake_timeout(Duration::from_secs(self.handshake_timeout))
            .connect_timeout(Duration::from_secs(self.connect_timeout))
            .shutdown_grace(Duration::from_secs(self.shutdown_grace))
            .no_default_allow_port(self.no_default_allow_port)
            .threat_action(match self.threat_action {
                ThreatActionArg::Warn => ThreatAction::Warn,
                ThreatActionArg::Block => ThreatAction::Block,
            })
            .upload_rate(self.upload_rate)
            .download_rate(self.download_rate)
            .connect_rate(self.connect_rate)
            .buffer_size(self.buffer_size)
            .zero_copy(self.zero_copy == Switch::On)
            .backend(match self.backend {
                BackendArg::Auto => BackendChoice::Auto,
                BackendArg::IoUring => BackendChoice::IoUring,
                BackendArg::Tokio => BackendChoice::Tokio,
            });
        if let Some(workers) = self.workers {
            builder = builder.workers(workers as usize);
        }
        if let Some(port) = self.socks5_port {
            builder = builder.socks5_port(port);
        }
        if let Some(bind) = &self.socks5_bind {
            builder = builder.socks5_bind(bind.clone());
        }
        for &port in &self.allow_port {
            builder = builder.allow_port(port);
        }
        for &range in &self.deny_cidr {
            builder = builder.deny_range(range);
        }
        for &range in &self.allow_cidr {
            builder = builder.allow_range(range);
        }
        for domain in &self.allow_domain {
            builder = builder.allow_domain(domain.clone());
        }
        if let Some(address) = &self.metrics_bind {
            builder = builder.metrics_bind(address.clone());
        }
        for feed in &self.threat_feed_file {
            builder = builder.threat_feed_file(feed.clone());
        }
        builder
    }
}
