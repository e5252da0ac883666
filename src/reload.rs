//! Changing a running server's settings (SIGHUP, or [`Reloader::reload`] from a program).
//!
//! What a request reads when it starts ([`Live`]: policy, threat feeds, timeouts, the dial
//! plan) is swapped whole, so each request sees one consistent set and open tunnels keep the
//! one they started with. The connection cap and the rates change in place (every direction has
//! a pacer and an `auto` controller that can be turned on and off). What was bound or sized at
//! start (listeners, workers, backend, buffers) takes a restart; a reload that changes it says
//! so and keeps the running value.

use std::{sync::Arc, time::Duration};

use tracing::{info, warn};

use crate::{
    config::{Config, Pacing, RateSetting, Threats},
    dial::DialPlan,
    gate::Direction,
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
    /// The rates in force each way and of new connections.
    pub(crate) pacing: Pacing,
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
            pacing: config.pacing,
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

    /// Puts `settings` in force: policy, threat feeds (read again from their files), timeouts
    /// and the connection cap for new requests, while open tunnels keep what they started with;
    /// rates (`off`, `auto` or fixed, each way, and of new connections) for all traffic at once,
    /// since one pacer paces every tunnel. On an error nothing changes.
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
        let running = shared.live().pacing;
        let wanted = prepared.pacing;
        // Nothing failed: everything changes now.
        for (way, running, wanted, pacer) in [
            (
                Direction::Upload,
                running.upload,
                wanted.upload,
                &shared.upload_pacer,
            ),
            (
                Direction::Download,
                running.download,
                wanted.download,
                &shared.download_pacer,
            ),
        ] {
            let (Some(pacer), true) = (pacer, running != wanted) else {
                continue;
            };
            let auto = shared.auto_pacing.as_deref();
            match wanted {
                RateSetting::Off => {
                    auto.inspect(|auto| auto.set_enabled(way, false));
                    pacer.set_rate(None, 0);
                }
                RateSetting::Fixed(rate) => {
                    auto.inspect(|auto| auto.set_enabled(way, false));
                    pacer.set_rate(Some(rate), byte_burst(rate, shared.config.buffer_size));
                }
                RateSetting::Auto => {
                    // Unlimited until the controller, starting afresh, finds a queue.
                    pacer.set_rate(None, 0);
                    auto.inspect(|auto| auto.set_enabled(way, true));
                }
            }
        }
        if running.connects_per_second != wanted.connects_per_second {
            if let Some(pacer) = &shared.connect_pacer {
                match wanted.connects_per_second {
                    Some(per_second) => pacer.set_rate(
                        Some(crate::sched::pacer::Rate(per_second)),
                        connect_burst(per_second),
                    ),
                    None => pacer.set_rate(None, 0),
                }
            }
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
            upload_rate = ?prepared.pacing.upload,
            download_rate = ?prepared.pacing.download,
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
