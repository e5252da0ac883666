//! Changing a running server's settings (SIGHUP, or [`Reloader::reload`] from a program).
//!
//! What a request reads when it starts ([`Live`]: policy, threat feeds, timeouts, the dial
//! plan) is swapped whole, so each request sees one consistent set and open tunnels keep the
//! one they started with. The connection cap and fixed rates change in place. What was bound or
//! sized at start (listeners, workers, backend, buffers) takes a restart; a reload that changes
//! it says so and keeps the running value.

use std::{sync::Arc, time::Duration};

use tracing::{info, warn};

use crate::{
    config::{Config, RateSetting, Threats},
    dial::DialPlan,
    policy::Policy,
    run::{ServerBuilder, StartError},
    worker::{byte_burst, connect_burst, Shared},
};

/// The settings a new request reads, replaced whole by a reload.
pub(crate) struct Live {
    /// Destination policy.
    pub(crate) policy: Policy,
    /// Threat feeds and the action on a match.
    pub(crate) threats: Option<Threats>,
    /// Time a client has to send its request.
    pub(crate) handshake_timeout: Duration,
    /// A tunnel silent both ways this long is closed; `None` = never.
    pub(crate) idle_timeout: Option<Duration>,
    /// Upstream dialling.
    pub(crate) dial: DialPlan,
}

impl Live {
    /// The live part of `config`.
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            policy: Policy::new(&config.policy),
            threats: config.threats.clone(),
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.idle_timeout,
            dial: config.dial,
        }
    }
}

/// Changes a running server's settings. Cheap to clone; every clone changes the same server.
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
    /// The settings the server started with: what needs a restart is compared against them.
    started: Arc<ServerBuilder>,
}

/// What a reload did.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// The settings that need a restart and differ from the running ones (kept as they are).
    pub ignored: Vec<&'static str>,
}

impl Reloader {
    pub(crate) fn new(shared: Arc<Shared>, started: &ServerBuilder) -> Self {
        Self {
            shared,
            started: Arc::new(started.clone()),
        }
    }

    /// Puts `settings` in force for new requests: policy, threat feeds (read again from their
    /// files), timeouts, the connection cap and fixed rates. Open tunnels are not touched. On an
    /// error nothing changes.
    pub fn reload(&self, settings: ServerBuilder) -> Result<Reloaded, StartError> {
        let reloaded = self.apply(settings);
        self.shared.stats.count_reload(reloaded.is_ok());
        reloaded
    }

    /// Counts a reload refused before it reached [`Reloader::reload`] (a config file that did
    /// not parse), so that the metrics count every refused reload.
    pub fn count_refused(&self) {
        self.shared.stats.count_reload(false);
    }

    fn apply(&self, settings: ServerBuilder) -> Result<Reloaded, StartError> {
        let ignored = settings.needs_restart(&self.started);
        let prepared = settings.prepare_for_reload()?;
        let shared = &self.shared;
        let mut ignored = ignored;
        let mut rates = Vec::new();
        for (name, running, wanted, pacer) in [
            (
                "upload_rate",
                shared.config.pacing.upload,
                prepared.pacing.upload,
                &shared.upload_pacer,
            ),
            (
                "download_rate",
                shared.config.pacing.download,
                prepared.pacing.download,
                &shared.download_pacer,
            ),
        ] {
            match (running, wanted, pacer) {
                (RateSetting::Fixed(_), RateSetting::Fixed(rate), Some(pacer)) => {
                    rates.push((
                        pacer,
                        Some(rate),
                        byte_burst(rate, shared.config.buffer_size),
                    ));
                }
                (running, wanted, _) if running == wanted => {}
                _ => ignored.push(name),
            }
        }
        match (
            shared.config.pacing.connects_per_second,
            prepared.pacing.connects_per_second,
            &shared.connect_pacer,
        ) {
            (Some(_), Some(per_second), Some(pacer)) => rates.push((
                pacer,
                Some(crate::sched::pacer::Rate(per_second)),
                connect_burst(per_second),
            )),
            (None, None, _) => {}
            _ => ignored.push("connect_rate"),
        }
        // Nothing failed: everything changes now.
        for (pacer, rate, burst) in rates {
            pacer.set_rate(rate, burst);
        }
        shared.admission.set_cap(prepared.connection_cap);
        shared.set_live(Live::new(&prepared));
        for name in &ignored {
            warn!(
                setting = name,
                "reload: this setting takes a restart; the running value stays"
            );
        }
        let policy = Policy::new(&prepared.policy);
        let ports: Vec<String> = policy
            .allowed_ports()
            .map(|port| port.to_string())
            .collect();
        info!(
            max_connections = prepared.connection_cap,
            allowed_ports = %ports.join(","),
            idle_timeout_s = prepared.idle_timeout.map_or(0, |timeout| timeout.as_secs()),
            handshake_timeout_s = prepared.handshake_timeout.as_secs(),
            threat_entries = prepared.threats.as_ref().map_or(0, |threats| {
                let counts = threats.index.counts();
                counts.domains + counts.ips + counts.ranges
            }),
            ignored = ignored.len(),
            "settings reloaded; new requests use them"
        );
        Ok(Reloaded { ignored })
    }
}
