//! The one path from a parsed request to a connected upstream, for every front end (CONNECT,
//! SOCKS5, plain HTTP): lookalike names, threat feeds, connect pacing, the destination policy,
//! resolution and the dial; and the answers a refused request gets on each front end.

use std::{net::SocketAddr, time::Instant};

use fyntr_platform::Backend;
use tracing::warn;

use crate::{
    config::Threats,
    dial::{self, DialError},
    proto::{
        self,
        socks5::{self, Reply},
        Status, Target,
    },
    server::FrontEnd,
    threat::{ThreatAction, ThreatMatch},
    tunnel::Report,
    worker::WorkerContext,
};

/// What a refused client is told before the connection closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// An HTTP error status (CONNECT).
    Status(Status),
    /// A SOCKS5 reply with this code.
    Socks5(Reply),
    /// The SOCKS5 method reply "no acceptable methods".
    NoSocks5Method,
    /// Nothing: the client would not understand any answer (a SOCKS5 port spoken to in
    /// another protocol, a SOCKS5 client that timed out).
    Nothing,
}

impl Answer {
    /// What the metrics say the client was told.
    pub(crate) fn refusal(self) -> crate::metrics::Refusal {
        use crate::metrics::Refusal;
        match self {
            Self::Status(status) => Refusal::Status(status.code()),
            Self::Socks5(reply) => Refusal::Socks5(reply.code()),
            Self::NoSocks5Method => Refusal::Socks5(0xff),
            Self::Nothing => Refusal::Closed,
        }
    }

    /// The answer to a refusal on `front_end`: `status` for CONNECT, `reply` for SOCKS5.
    pub(crate) fn on(front_end: FrontEnd, status: Status, reply: Reply) -> Self {
        match front_end {
            FrontEnd::Connect => Self::Status(status),
            FrontEnd::Socks5 => Self::Socks5(reply),
        }
    }

    pub(crate) fn bytes(self) -> std::borrow::Cow<'static, [u8]> {
        match self {
            Self::Status(status) => status.response().into(),
            Self::Socks5(reply) => reply.encode(None).into(),
            Self::NoSocks5Method => socks5::NO_METHOD_ACCEPTABLE.to_vec().into(),
            Self::Nothing => (&[][..]).into(),
        }
    }
}

/// The SOCKS5 reply for a failed dial: the kind of the last error decides, as in fyntr 0.4.8.
fn dial_reply(error: &DialError) -> Reply {
    match error {
        DialError::Refused(cause) => match cause.kind() {
            std::io::ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
            std::io::ErrorKind::NetworkUnreachable => Reply::NetworkUnreachable,
            _ => Reply::HostUnreachable,
        },
        DialError::Resolve(_)
        | DialError::ResolveTimeout
        | DialError::NoAddress
        | DialError::TimedOut => Reply::HostUnreachable,
    }
}

/// Which ports a request may reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PortRule {
    /// A tunnel (CONNECT, SOCKS5): the allowed ports.
    Tunnel,
    /// A plain HTTP request: the allowed ports and, by default, 80.
    PlainHttp,
}

/// Everything between a parsed request and a connected upstream: the lookalike warning, the
/// threat feeds, connect pacing (by `deadline`), the destination policy, resolution and the
/// dial. On failure, what to answer and why.
pub(crate) async fn connect_upstream<B: Backend>(
    ctx: &WorkerContext<B>,
    target: &Target,
    ports: PortRule,
    deadline: Instant,
    report: &mut Report,
) -> Result<(B::Stream, SocketAddr), (Answer, String)> {
    let front_end = report.front_end;
    if let proto::Host::Domain(name) = &target.host {
        warn_of_mixed_script(name, report);
    }
    let denied = |reason: String| {
        (
            Answer::on(front_end, Status::Forbidden, Reply::NotAllowed),
            reason,
        )
    };
    let live = ctx.live();
    if let Some(threats) = &live.threats {
        if let Some(found) = threats.index.match_host(&target.host) {
            log_threat(threats, &found, report);
            if threats.action == ThreatAction::Block {
                return Err(denied(format!("blocked by threat feed: {found}")));
            }
        }
    }
    if let Some(pacer) = ctx.connect_pacer() {
        // Connection storms wait their turn in arrival order, within the handshake deadline
        // (with no --connect-rate the pacer is unlimited and every turn is now).
        let now = Instant::now();
        match pacer.reserve(1, now, deadline) {
            Some(turn) if turn <= now => {}
            Some(turn) => {
                tokio::time::sleep_until(turn.into()).await;
                report.connect_wait = turn.saturating_duration_since(now);
            }
            None => {
                let reason = "--connect-rate: no connection slot before the handshake deadline";
                let answer =
                    Answer::on(front_end, Status::ServiceUnavailable, Reply::GeneralFailure);
                return Err((answer, reason.into()));
            }
        }
    }
    let policy = &live.policy;
    let plan = live.dial;
    let failed = |error: DialError| {
        (
            Answer::on(front_end, error.status(), dial_reply(&error)),
            error.to_string(),
        )
    };
    let port_allowed = match ports {
        PortRule::Tunnel => policy.check_port(target.port),
        PortRule::PlainHttp => policy.check_plain_http_port(target.port),
    };
    port_allowed.map_err(|refused| denied(refused.to_string()))?;
    let connect_started = Instant::now();
    let addresses = dial::resolve(&target.host, target.port, &plan)
        .await
        .map_err(failed)?;
    let addresses = policy
        .filter_addresses(&target.host, addresses)
        .map_err(|refused| denied(refused.to_string()))?;
    if let Some(found) = check_resolved(live.threats.as_ref(), target, &addresses, report) {
        return Err(denied(format!("blocked by threat feed: {found}")));
    }
    let connected = dial::connect::<B>(&addresses, &plan, &ctx.socket_tuning())
        .await
        .map_err(failed)?;
    ctx.stats().observe_connect(connect_started.elapsed());
    Ok(connected)
}

/// Checks the addresses a name resolved to (and the policy kept) against the threat feeds:
/// every match is logged; with `block`, the first one is returned to refuse the request.
fn check_resolved(
    threats: Option<&Threats>,
    target: &Target,
    addresses: &[SocketAddr],
    report: &Report,
) -> Option<ThreatMatch> {
    let threats = threats?;
    if !matches!(target.host, proto::Host::Domain(_)) {
        // A literal address was checked as the requested host.
        return None;
    }
    for address in addresses {
        if let Some(found) = threats.index.match_ip(address.ip()) {
            log_threat(threats, &found, report);
            if threats.action == ThreatAction::Block {
                return Some(found);
            }
        }
    }
    None
}

fn log_threat(threats: &Threats, found: &ThreatMatch, report: &Report) {
    let target = report
        .target
        .as_ref()
        .map_or_else(|| "-".to_string(), ToString::to_string);
    let (match_type, matched) = match found {
        ThreatMatch::Domain(name) => ("domain", name.clone()),
        ThreatMatch::Ip(ip) => ("ip", ip.to_string()),
        ThreatMatch::Range(range) => ("range", range.to_string()),
    };
    warn!(
        client = %report.client,
        protocol = report.front_end.name(),
        target = %target,
        threat_match = true,
        action = threats.action.name(),
        match_type,
        matched = %matched,
        "threat feed match"
    );
}

/// Warns of a name with a label that mixes lookalike scripts (always, feeds or not); it never
/// refuses the request.
fn warn_of_mixed_script(name: &str, report: &Report) {
    if let Some(label) = crate::threat::mixed_script_label(name) {
        warn!(
            client = %report.client,
            protocol = report.front_end.name(),
            ascii_host = name,
            label = %label,
            mixed_script = true,
            "host name mixes Latin, Cyrillic or Greek letters in one label (a lookalike?)"
        );
    }
}
