//! Running fyntr from a program, with the command line's settings and defaults.
//!
//! [`server`] returns a [`ServerBuilder`]; [`ServerBuilder::background`] starts the proxy on
//! its own threads and returns a [`ServerHandle`] with the bound addresses. The binary uses the
//! same builder ([`ServerBuilder::start`], then [`Started::run`]), so a program gets exactly
//! what `fyntr` on the command line does.
//!
//! ```
//! use std::time::Duration;
//!
//! let server = fyntr::run::server()
//!     .port(0) // a free port
//!     .socks5_port(0)
//!     .max_connections(100)
//!     .idle_timeout(Duration::from_secs(60))
//!     .allow_port(8443)
//!     .allow_cidr("127.0.0.0/8")
//!     .unwrap()
//!     .background()
//!     .expect("fyntr starts");
//! println!("HTTPS_PROXY=http://{}", server.listen_addr());
//! println!("ALL_PROXY=socks5h://{}", server.socks5_listen_addr().unwrap());
//! server.shutdown().expect("fyntr stops");
//! ```

use std::{
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use thiserror::Error;
use tracing::{info, warn};

use crate::{
    backend::{self, Chosen},
    config::{BackendChoice, Config, RateSetting, Threats},
    limits,
    platform::socket,
    server::{Listeners, ShutdownSignal},
    threat::{FeedError, ThreatAction, ThreatIndex},
    worker::Shared,
};
pub use crate::{metrics::Observer, reload::Reloader};

/// The default listen address.
pub const DEFAULT_BIND: &str = "127.0.0.1";
/// The default proxy port.
pub const DEFAULT_PORT: u16 = 9999;
/// The default connection cap.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// The default idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A builder with fyntr's defaults (those of the command line).
pub fn server() -> ServerBuilder {
    ServerBuilder::default()
}

/// Why a server could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// A bind address that is neither an IP address nor a resolvable name.
    #[error("{option} {value}: {why}")]
    Address {
        /// The setting (`--bind`, `--socks5-bind`).
        option: &'static str,
        /// Its value.
        value: String,
        /// Why it cannot be used.
        why: String,
    },
    /// A listener could not be bound.
    #[error("binding {what} on {address}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Where.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Settings that contradict each other.
    #[error("{0}")]
    Settings(String),
    /// The threat feeds could not be loaded.
    #[error(transparent)]
    Threats(#[from] FeedError),
    /// The backend asked for cannot run here.
    #[error(transparent)]
    Backend(#[from] backend::Unavailable),
    /// The descriptor limit could not be read or raised.
    #[error("reading the file-descriptor limit: {0}")]
    Limits(std::io::Error),
}

/// fyntr's settings, one setter per command-line option.
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    bind: String,
    port: u16,
    socks5_bind: Option<String>,
    socks5_port: Option<u16>,
    max_connections: usize,
    workers: Option<usize>,
    backend: BackendChoice,
    threat_feed_files: Vec<PathBuf>,
    threat_action: ThreatAction,
    metrics_bind: Option<String>,
    config: Config,
}

/// What [`ServerBuilder::prepare`] computes.
struct Prepared {
    config: Config,
    listen: SocketAddr,
    socks5_listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self {
            bind: DEFAULT_BIND.into(),
            port: DEFAULT_PORT,
            socks5_bind: None,
            socks5_port: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            workers: None,
            backend: BackendChoice::Auto,
            threat_feed_files: Vec::new(),
            threat_action: ThreatAction::Warn,
            metrics_bind: None,
            config: Config {
                idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
                policy: crate::policy::PolicyConfig {
                    denied: crate::policy::default_denied(),
                    ..Default::default()
                },
                pipe_budget: crate::platform::PipeBudget::for_this_user().total(),
                ..Config::default()
            },
        }
    }
}

impl ServerBuilder {
    /// Listen address: an IP address or a host name (`--bind`).
    pub fn bind(mut self, address: impl Into<String>) -> Self {
        self.bind = address.into();
        self
    }

    /// Listen port; 0 picks a free one (`--port`).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Concurrent client connections; 0 = as many as the descriptor limit allows
    /// (`--max-connections`).
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    /// How long a tunnel may be silent both ways; `Duration::ZERO` = never (`--idle-timeout`).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = (!timeout.is_zero()).then_some(timeout);
        self
    }

    /// Time a client has to send its whole request (`--handshake-timeout`).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// Time per upstream connection attempt (`--connect-timeout`).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.dial.attempt_timeout = timeout;
        self
    }

    /// On shutdown, how long open tunnels may finish (`--shutdown-grace`).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// Allows a destination port, beside 443 (`--allow-port`, repeatable).
    pub fn allow_port(mut self, port: u16) -> Self {
        self.config.policy.allowed_ports.push(port);
        self
    }

    /// Does not allow 443 (and 80 for plain HTTP) implicitly (`--no-default-allow-port`).
    pub fn no_default_allow_port(mut self, yes: bool) -> Self {
        self.config.policy.no_default_allowed_port = yes;
        self
    }

    /// Denies a destination range, beside the default list (`--deny-cidr`).
    pub fn deny_cidr(self, cidr: &str) -> Result<Self, ipnet::AddrParseError> {
        Ok(self.deny_range(cidr.parse()?))
    }

    /// Allows a range even when denied (`--allow-cidr`).
    pub fn allow_cidr(self, cidr: &str) -> Result<Self, ipnet::AddrParseError> {
        Ok(self.allow_range(cidr.parse()?))
    }

    /// Denies a destination range, beside the default list (`--deny-cidr`).
    pub fn deny_range(mut self, range: IpNet) -> Self {
        self.config.policy.denied.push(range);
        self
    }

    /// Allows a range even when denied (`--allow-cidr`).
    pub fn allow_range(mut self, range: IpNet) -> Self {
        self.config.policy.allowed.push(range);
        self
    }

    /// A domain (and its subdomains) whose denied addresses are skipped (`--allow-domain`).
    pub fn allow_domain(mut self, domain: impl Into<String>) -> Self {
        self.config.policy.allowed_domains.push(domain.into());
        self
    }

    /// Adds a threat feed file (`--threat-feed-file`, repeatable).
    pub fn threat_feed_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.threat_feed_files.push(path.into());
        self
    }

    /// What a threat feed match does (`--threat-action`).
    pub fn threat_action(mut self, action: ThreatAction) -> Self {
        self.threat_action = action;
        self
    }

    /// `true`: block threat feed matches, `false`: warn (fyntr 0.4.8's name for
    /// [`ServerBuilder::threat_action`]).
    pub fn reject_threats(self, reject: bool) -> Self {
        self.threat_action(if reject {
            ThreatAction::Block
        } else {
            ThreatAction::Warn
        })
    }

    /// Address of the SOCKS5 listener; default: the listen address (`--socks5-bind`).
    pub fn socks5_bind(mut self, address: impl Into<String>) -> Self {
        self.socks5_bind = Some(address.into());
        self
    }

    /// Serves SOCKS5 on this port too; 0 picks a free one (`--socks5-port`).
    pub fn socks5_port(mut self, port: u16) -> Self {
        self.socks5_port = Some(port);
        self
    }

    /// Serves `/metrics` and `/healthz` on this `ADDR:PORT` (`--metrics-bind`); port 0 picks
    /// a free one.
    pub fn metrics_bind(mut self, address: impl Into<String>) -> Self {
        self.metrics_bind = Some(address.into());
        self
    }

    /// Total upload rate (`--upload-rate`).
    pub fn upload_rate(mut self, rate: RateSetting) -> Self {
        self.config.pacing.upload = rate;
        self
    }

    /// Total download rate (`--download-rate`).
    pub fn download_rate(mut self, rate: RateSetting) -> Self {
        self.config.pacing.download = rate;
        self
    }

    /// New upstream connections per second; `None` = off (`--connect-rate`).
    pub fn connect_rate(mut self, per_second: Option<f64>) -> Self {
        self.config.pacing.connects_per_second = per_second;
        self
    }

    /// Worker threads; default: one per core (`--workers`).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = Some(workers.max(1));
        self
    }

    /// The I/O backend (`--backend`).
    pub fn backend(mut self, backend: BackendChoice) -> Self {
        self.backend = backend;
        self
    }

    /// One relay chunk in bytes (`--buffer-size`).
    pub fn buffer_size(mut self, bytes: usize) -> Self {
        self.config.buffer_size = bytes;
        self
    }

    /// Zero-copy relaying with `splice` where available (`--zero-copy`).
    pub fn zero_copy(mut self, on: bool) -> Self {
        self.config.pipes_per_worker = if on { limits::PIPES_PER_WORKER } else { 0 };
        self
    }

    /// Everything a start checks and computes before it binds anything: feeds loaded, addresses
    /// resolved, the connection cap fitted to the descriptor limit, the configuration resolved.
    fn prepare(&self) -> Result<Prepared, StartError> {
        let threats = load_threats(&self.threat_feed_files, self.threat_action)?;
        let listen = resolve("--bind", &self.bind, self.port)?;
        let socks5_listen = match (self.socks5_port, &self.socks5_bind) {
            (Some(port), bind) => Some(resolve(
                "--socks5-bind",
                bind.as_deref().unwrap_or(&self.bind),
                port,
            )?),
            (None, _) => None,
        };
        if let Some(address) =
            socks5_listen.filter(|address| address.port() != 0 && address.port() == listen.port())
        {
            return Err(same_port(address));
        }
        let metrics_listen = self
            .metrics_bind
            .as_deref()
            .map(|address| resolve_address("--metrics-bind", address))
            .transpose()?;
        let workers = self
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let budget = limits::fd_guard(self.max_connections, workers).map_err(StartError::Limits)?;
        if budget.lowered && self.max_connections != 0 {
            warn!(
                requested = self.max_connections,
                connection_cap = budget.connection_cap,
                descriptor_limit = budget.soft_limit,
                "the descriptor limit cannot hold the requested connections; cap lowered (raise `ulimit -n` to keep it)"
            );
        }
        let config = Config {
            connection_cap: budget.connection_cap,
            workers,
            threats,
            ..self.config.clone()
        }
        .resolve();
        Ok(Prepared {
            config,
            listen,
            socks5_listen,
            metrics_listen,
        })
    }

    /// The configuration these settings give a running server, checked as a start would.
    pub(crate) fn prepare_for_reload(&self) -> Result<Config, StartError> {
        self.prepare().map(|prepared| prepared.config)
    }

    /// The settings that take a restart and differ between these and `running`.
    pub(crate) fn needs_restart(&self, running: &ServerBuilder) -> Vec<&'static str> {
        let (new, old) = (&self.config, &running.config);
        [
            ("bind", self.bind != running.bind),
            ("port", self.port != running.port),
            ("socks5_bind", self.socks5_bind != running.socks5_bind),
            ("socks5_port", self.socks5_port != running.socks5_port),
            ("metrics_bind", self.metrics_bind != running.metrics_bind),
            ("workers", self.workers != running.workers),
            ("backend", self.backend != running.backend),
            ("buffer_size", new.buffer_size != old.buffer_size),
            ("zero_copy", new.pipes_per_worker != old.pipes_per_worker),
            ("shutdown_grace", new.shutdown_grace != old.shutdown_grace),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
    }

    /// Checks the settings as [`ServerBuilder::start`] would (feeds, addresses, the
    /// backend), without binding anything.
    pub fn check(&self) -> Result<(), StartError> {
        let prepared = self.prepare()?;
        let buffer_size = prepared.config.buffer_size;
        backend::choose(
            self.backend,
            buffer_size,
            may_register_ring_buffers(buffer_size, prepared.config.workers),
        )?;
        Ok(())
    }

    /// Loads the feeds, picks the backend and binds the listeners; nothing is served until
    /// [`Started::run`].
    pub fn start(self) -> Result<Started, StartError> {
        let Prepared {
            config,
            listen,
            socks5_listen,
            metrics_listen,
        } = self.prepare()?;
        if !listen.ip().is_loopback() {
            warn!(address = %listen, "listening on a non-loopback address: anyone who can reach it can use this proxy");
        }
        if self.socks5_port.is_none() && self.socks5_bind.is_some() {
            warn!("--socks5-bind is ignored without --socks5-port: no SOCKS5 listener");
        }
        if let Some(address) = socks5_listen.filter(|address| !address.ip().is_loopback()) {
            warn!(address = %address, "SOCKS5 on a non-loopback address: anyone who can reach it can use this proxy");
        }
        let workers = config.workers;
        let buffer_size = config.buffer_size;
        return_buffers_to_the_system(buffer_size);
        let choice = backend::choose(
            self.backend,
            buffer_size,
            may_register_ring_buffers(buffer_size, workers),
        )?;
        if let Some(warning) = &choice.fallback_warning {
            warn!("{warning}");
        }
        let bind = |what, address| {
            socket::bind_listeners(address, workers).map_err(|source| StartError::Bind {
                what,
                address,
                source,
            })
        };
        let proxy = bind("the proxy listener", listen)?;
        let listen_addr = local_addr(&proxy[0], listen)?;
        if let Some(address) = socks5_listen.filter(|address| address.port() == listen_addr.port())
        {
            return Err(same_port(address));
        }
        let socks5 = socks5_listen
            .map(|address| bind("the SOCKS5 listener", address))
            .transpose()?;
        let socks5_listen_addr = match (&socks5, socks5_listen) {
            (Some(listeners), Some(address)) => Some(local_addr(&listeners[0], address)?),
            _ => None,
        };
        let metrics = metrics_listen
            .map(|address| {
                crate::metrics::endpoint::bind(address).map_err(|source| StartError::Bind {
                    what: "the metrics listener",
                    address,
                    source,
                })
            })
            .transpose()?;
        let metrics_listen_addr = match (&metrics, metrics_listen) {
            (Some(listener), Some(address)) => Some(local_addr(listener, address)?),
            _ => None,
        };
        let shared = Arc::new(Shared::new(config, choice.backend.name()));
        Ok(Started {
            backend: choice.backend,
            backend_reason: choice.reason,
            unlimited: self.max_connections == 0,
            reloader: Reloader::new(Arc::clone(&shared), &self),
            shared,
            listeners: Listeners { proxy, socks5 },
            listen_addr,
            socks5_listen_addr,
            metrics,
            metrics_listen_addr,
        })
    }

    /// Starts the server on its own threads.
    pub fn background(self) -> Result<ServerHandle, StartError> {
        let started = self.start()?;
        started.announce();
        let listen_addr = started.listen_addr;
        let socks5_listen_addr = started.socks5_listen_addr;
        let metrics_listen_addr = started.metrics_listen_addr;
        let reloader = started.reloader();
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("fyntr-server".into())
            .spawn(move || started.run(shutdown))
            .map_err(|error| {
                StartError::Settings(format!("starting the server thread: {error}"))
            })?;
        Ok(ServerHandle {
            listen_addr,
            socks5_listen_addr,
            metrics_listen_addr,
            reloader,
            stop,
            thread: Some(thread),
        })
    }

    /// Runs the server on the calling thread for as long as the process lives.
    pub fn foreground(self) -> Result<(), StartError> {
        let started = self.start()?;
        started.announce();
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        started
            .run(shutdown)
            .map_err(|error| StartError::Settings(format!("running the workers: {error}")))
    }
}

/// A server with its listeners bound, not yet serving.
pub struct Started {
    backend: Chosen,
    backend_reason: String,
    unlimited: bool,
    shared: Arc<Shared>,
    reloader: Reloader,
    listeners: Listeners,
    listen_addr: SocketAddr,
    socks5_listen_addr: Option<SocketAddr>,
    metrics: Option<std::net::TcpListener>,
    metrics_listen_addr: Option<SocketAddr>,
}

impl Started {
    /// Where the proxy port listens.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// Where the SOCKS5 port listens, if it is on.
    pub fn socks5_listen_addr(&self) -> Option<SocketAddr> {
        self.socks5_listen_addr
    }

    /// Where the metrics endpoint listens, if it is on.
    pub fn metrics_listen_addr(&self) -> Option<SocketAddr> {
        self.metrics_listen_addr
    }

    /// The validated configuration it will run with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// A handle that changes the running server's settings (what SIGHUP does).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Logs the start line (address, backend and why, limits, rates) and the SOCKS5 line.
    pub fn announce(&self) {
        let config = &self.shared.config;
        let ports: Vec<String> = crate::policy::Policy::new(&config.policy)
            .allowed_ports()
            .map(|port| port.to_string())
            .collect();
        info!(
            version = env!("CARGO_PKG_VERSION"),
            backend = self.backend.name(),
            backend_reason = self.backend_reason.as_str(),
            workers = config.workers,
            max_connections = config.connection_cap,
            unlimited = self.unlimited,
            idle_timeout_s = config.idle_timeout.map_or(0, |timeout| timeout.as_secs()),
            handshake_timeout_s = config.handshake_timeout.as_secs(),
            buffer_size = config.buffer_size,
            zero_copy = zero_copy_state(config.pipes_per_worker),
            pipe_budget = %describe_pipe_budget(config),
            splice_chunk = config.splice_chunk,
            allowed_ports = %ports.join(","),
            upload_rate = %describe_rate(config.pacing.upload),
            download_rate = %describe_rate(config.pacing.download),
            connect_rate = %config.pacing.connects_per_second.map_or("off".to_string(), |r| format!("{r}/s")),
            socks5 = %self.socks5_listen_addr.map_or("off".to_string(), |address| address.to_string()),
            metrics = %self.metrics_listen_addr.map_or("off".to_string(), |address| address.to_string()),
            "fyntr listening on {}",
            self.listen_addr
        );
        if let Some(address) = self.socks5_listen_addr {
            info!("fyntr SOCKS5 listening on {address}");
        }
        if let Some(address) = self.metrics_listen_addr {
            if !address.ip().is_loopback() {
                warn!(address = %address, "metrics on a non-loopback address: anyone who can reach it can read them");
            }
            info!("fyntr metrics on http://{address}/metrics");
        }
    }

    /// What the server counts, readable from any thread (what `/metrics` serves).
    pub fn observer(&self) -> Observer {
        Observer::new(Arc::clone(&self.shared))
    }

    /// Serves until `shutdown` fires (or its sender drops) and the tunnels have drained.
    pub fn run(self, shutdown: ShutdownSignal) -> std::io::Result<()> {
        let observer = self.observer();
        if let Some(listener) = self.metrics {
            crate::metrics::endpoint::spawn(listener, observer, shutdown.clone())?;
        }
        self.backend.run(self.shared, self.listeners, shutdown)
    }
}

/// A server running in the background. Dropping it asks the server to stop without waiting.
pub struct ServerHandle {
    listen_addr: SocketAddr,
    socks5_listen_addr: Option<SocketAddr>,
    metrics_listen_addr: Option<SocketAddr>,
    reloader: Reloader,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl ServerHandle {
    /// Where the proxy port listens.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// Where the SOCKS5 port listens, if it is on.
    pub fn socks5_listen_addr(&self) -> Option<SocketAddr> {
        self.socks5_listen_addr
    }

    /// Where the metrics endpoint listens, if it is on.
    pub fn metrics_listen_addr(&self) -> Option<SocketAddr> {
        self.metrics_listen_addr
    }

    /// A handle that changes the running server's settings.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Stops accepting, lets open tunnels finish within the shutdown grace, and waits for the
    /// workers to end.
    pub fn shutdown(mut self) -> std::io::Result<()> {
        let _ = self.stop.send(true);
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the server thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn resolve(option: &'static str, bind: &str, port: u16) -> Result<SocketAddr, StartError> {
    let error = |why: String| StartError::Address {
        option,
        value: bind.to_string(),
        why,
    };
    let host = bind.trim().trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()
        .map_err(|_| error("not an IP address or resolvable host name".into()))?
        .next()
        .ok_or_else(|| error("resolved to no address".into()))
}

/// An `ADDR:PORT` (a host name, an IPv4 address, or a bracketed IPv6 address, then a port).
fn resolve_address(option: &'static str, text: &str) -> Result<SocketAddr, StartError> {
    let error = |why: &str| StartError::Address {
        option,
        value: text.to_string(),
        why: why.to_string(),
    };
    let (host, port) = text
        .trim()
        .rsplit_once(':')
        .ok_or_else(|| error("expected ADDR:PORT, such as 127.0.0.1:9090"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| error("the port is not a number from 0 to 65535"))?;
    resolve(option, host, port)
}

/// Two listeners on one port: both set SO_REUSEPORT, so the kernel would let them share it and
/// split its connections between two protocols.
fn same_port(address: SocketAddr) -> StartError {
    StartError::Settings(format!(
        "--socks5-port {} is the proxy port; choose another",
        address.port()
    ))
}

fn local_addr(
    listener: &std::net::TcpListener,
    address: SocketAddr,
) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        what: "reading the bound address",
        address,
        source,
    })
}

/// Loads the threat feeds, logging what each held; `None` without feeds.
fn load_threats(paths: &[PathBuf], action: ThreatAction) -> Result<Option<Threats>, StartError> {
    if paths.is_empty() {
        if action == ThreatAction::Block {
            return Err(StartError::Settings(
                "--threat-action block requires at least one --threat-feed-file".into(),
            ));
        }
        return Ok(None);
    }
    let (index, counts) = ThreatIndex::load(paths)?;
    for (path, counts) in paths.iter().zip(&counts) {
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
        index: Arc::new(index),
        action,
    }))
}

fn describe_rate(setting: RateSetting) -> String {
    match setting {
        RateSetting::Off => "off".to_string(),
        RateSetting::Auto => "auto".to_string(),
        RateSetting::Fixed(rate) => format!(
            "{:.2}mbit on the wire (upstream receive windows up to {} KiB)",
            rate.megabits(),
            crate::config::Pacing::socket_buffer(rate, 1) / 1024
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

/// Whether the io_uring backend may register its workers' relay buffers with their rings:
/// registered memory is pinned and counts against `RLIMIT_MEMLOCK`, so only when all workers'
/// buffers fit in three quarters of it (or the process has `CAP_IPC_LOCK`, as root does).
fn may_register_ring_buffers(buffer_size: usize, workers: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::MEMLOCK) else {
            return false;
        };
        // Safety: geteuid has no preconditions.
        if soft == rlimit::INFINITY || unsafe { libc::geteuid() } == 0 {
            return true;
        }
        let wanted = buffer_size as u64
            * u64::from(crate::platform::uring::RING_BUFFERS)
            * workers.max(1) as u64;
        wanted <= soft / 4 * 3
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (buffer_size, workers);
        false
    }
}
