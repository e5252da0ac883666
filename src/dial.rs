//! Resolving and connecting to the upstream.
//!
//! Resolution runs on Tokio's blocking pool, off the worker's loop. Each attempt is the
//! backend's non-blocking connect on the worker ([`Backend::connect`]), which registers the new
//! socket once for its whole life; dropping an attempt at its timeout closes the socket.

use std::{
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use fyntr_platform::Backend;
use thiserror::Error;

use crate::proto::{Host, Status};

/// At most this many resolved addresses are tried (fyntr 0.4.8 uses the same bound).
pub const MAX_ADDRESSES: usize = 32;

/// How hard to try reaching an upstream.
#[derive(Clone, Copy, Debug)]
pub struct DialPlan {
    /// Time for one connection attempt.
    pub attempt_timeout: Duration,
    /// Passes over the address list.
    pub rounds: u32,
    /// Pause after the first failed round; doubles after each further round.
    pub first_backoff: Duration,
    /// Bound on resolution plus all attempts, so a client never waits minutes for a 504.
    pub total_timeout: Duration,
    /// Bound on name resolution alone.
    pub resolve_timeout: Duration,
}

impl Default for DialPlan {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(3),
            rounds: 3,
            first_backoff: Duration::from_millis(200),
            total_timeout: Duration::from_secs(30),
            resolve_timeout: Duration::from_secs(10),
        }
    }
}

/// Why no upstream connection was made; always the upstream side's failure.
#[derive(Debug, Error)]
pub enum DialError {
    /// The name did not resolve.
    #[error("upstream name did not resolve: {0}")]
    Resolve(io::Error),
    /// Resolution took too long.
    #[error("upstream name resolution timed out")]
    ResolveTimeout,
    /// The name resolved to nothing.
    #[error("upstream name resolved to no address")]
    NoAddress,
    /// Every attempt was refused or failed.
    #[error("upstream refused or unreachable: {0}")]
    Refused(io::Error),
    /// Attempts timed out.
    #[error("upstream connection timed out")]
    TimedOut,
}

impl DialError {
    /// The status to answer the client with.
    pub fn status(&self) -> Status {
        match self {
            Self::ResolveTimeout | Self::TimedOut => Status::GatewayTimeout,
            Self::Resolve(_) | Self::NoAddress | Self::Refused(_) => Status::BadGateway,
        }
    }
}

/// Resolves `host` to at most [`MAX_ADDRESSES`] addresses, in the resolver's preference order.
pub async fn resolve(
    host: &Host,
    port: u16,
    plan: &DialPlan,
) -> Result<Vec<SocketAddr>, DialError> {
    let name = match host {
        Host::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, port)]),
        Host::Domain(name) => name,
    };
    let lookup = tokio::net::lookup_host((name.as_str(), port));
    let resolved = tokio::time::timeout(plan.resolve_timeout, lookup)
        .await
        .map_err(|_| DialError::ResolveTimeout)?
        .map_err(DialError::Resolve)?;
    let mut addresses: Vec<SocketAddr> = Vec::new();
    for address in resolved {
        if !addresses.contains(&address) {
            addresses.push(address);
        }
        if addresses.len() == MAX_ADDRESSES {
            break;
        }
    }
    if addresses.is_empty() {
        return Err(DialError::NoAddress);
    }
    Ok(addresses)
}

pub use fyntr_platform::SocketTuning;

/// Connects to the first address that answers, trying each in turn for `plan.rounds` rounds.
///
/// Returns the stream, on the current worker, and the address it reached.
pub async fn connect<B: Backend>(
    addresses: &[SocketAddr],
    plan: &DialPlan,
    tuning: &SocketTuning,
) -> Result<(B::Stream, SocketAddr), DialError> {
    let deadline = Instant::now() + plan.total_timeout;
    let mut backoff = plan.first_backoff;
    let mut last_error: Option<io::Error> = None;
    let mut timed_out = false;
    for round in 0..plan.rounds {
        if round > 0 {
            if Instant::now() + backoff >= deadline {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        for &address in addresses {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                timed_out = true;
                break;
            }
            let attempt = B::connect(address, *tuning);
            match tokio::time::timeout(plan.attempt_timeout.min(remaining), attempt).await {
                Ok(Ok(stream)) => return Ok((stream, address)),
                Ok(Err(error)) => last_error = Some(error),
                Err(_) => timed_out = true,
            }
        }
    }
    match last_error {
        Some(error) if !timed_out => Err(DialError::Refused(error)),
        _ if timed_out => Err(DialError::TimedOut),
        _ => Err(DialError::NoAddress),
    }
}

#[cfg(test)]
mod tests {
    use fyntr_platform::portable::Portable;

    use super::*;

    fn fast_plan() -> DialPlan {
        DialPlan {
            first_backoff: Duration::from_millis(1),
            ..DialPlan::default()
        }
    }

    #[tokio::test]
    async fn a_refused_port_is_502_after_every_round() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = listener.local_addr().unwrap();
        drop(listener);
        let Err(error) =
            connect::<Portable>(&[closed], &fast_plan(), &SocketTuning::default()).await
        else {
            panic!("a closed port was reached");
        };
        assert_eq!(error.status(), Status::BadGateway, "{error}");
    }

    #[tokio::test]
    async fn the_first_answering_address_wins() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let closed = {
            let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            other.local_addr().unwrap()
        };
        let (_, reached) =
            connect::<Portable>(&[closed, open], &fast_plan(), &SocketTuning::default())
                .await
                .unwrap();
        assert_eq!(reached, open);
    }

    #[tokio::test]
    async fn ip_literals_skip_the_resolver_and_names_resolve() {
        let host = Host::Ip("127.0.0.1".parse().unwrap());
        assert_eq!(
            resolve(&host, 443, &DialPlan::default()).await.unwrap(),
            vec!["127.0.0.1:443".parse().unwrap()]
        );
        let localhost = Host::Domain("localhost".into());
        let resolved = resolve(&localhost, 443, &DialPlan::default())
            .await
            .unwrap();
        assert!(resolved.iter().all(|address| address.ip().is_loopback()));
    }
}
