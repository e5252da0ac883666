//! Destination policy: which ports and addresses a CONNECT may reach.
//!
//! Same rules as fyntr 0.4.8, with its `[::1]` bug fixed: IPv4-mapped IPv6 addresses
//! (`::ffff:a.b.c.d`) are checked as the IPv4 address they carry, and every other IPv6 address,
//! `::1` included, is checked as IPv6.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;
use thiserror::Error;

use crate::proto::Host;

/// The port allowed when no `--allow-port` is given (unless `--no-default-allow-port`).
pub const DEFAULT_ALLOWED_PORT: u16 = 443;
/// The port also allowed, by default, for plain HTTP requests (not for CONNECT tunnels).
pub const DEFAULT_PLAIN_HTTP_PORT: u16 = 80;

/// Destinations denied by default: loopback, private (RFC 1918), link-local, CGNAT, "this
/// network", multicast and reserved IPv4; loopback, unspecified, ULA, link-local and multicast
/// IPv6. A proxy on a laptop must not become a way into the laptop's own network.
pub const DEFAULT_DENIED_CIDRS: [&str; 14] = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "0.0.0.0/8",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::1/128",
    "::/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// The policy's inputs, as the command line gives them.
#[derive(Clone, Debug, Default)]
pub struct PolicyConfig {
    /// `--allow-port` values.
    pub allowed_ports: Vec<u16>,
    /// `--no-default-allow-port`.
    pub no_default_allowed_port: bool,
    /// `--deny-cidr` values; empty means the default list.
    pub denied: Vec<IpNet>,
    /// `--allow-cidr` values: exceptions to the deny list.
    pub allowed: Vec<IpNet>,
    /// `--allow-domain` values: names (and their subdomains) whose denied addresses are skipped
    /// rather than refusing the whole request.
    pub allowed_domains: Vec<String>,
}

/// Why a destination is refused (403).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The port is not allowed.
    #[error("port {port} is not allowed (allowed: {allowed})")]
    PortNotAllowed {
        /// The requested port.
        port: u16,
        /// The allowed ports, for the log.
        allowed: String,
    },
    /// An address is in a denied range.
    #[error("address {ip} is denied by {cidr}")]
    AddressDenied {
        /// The address.
        ip: IpAddr,
        /// The range that denies it.
        cidr: IpNet,
    },
    /// Every resolved address of an allowed domain is denied.
    #[error("every address of an allowed domain is denied")]
    AllAddressesDenied,
}

/// The compiled destination policy.
#[derive(Clone, Debug)]
pub struct Policy {
    allowed_ports: BTreeSet<u16>,
    /// Whether plain HTTP may reach [`DEFAULT_PLAIN_HTTP_PORT`] (the defaults are on).
    plain_http_port: bool,
    denied: Vec<IpNet>,
    allowed: Vec<IpNet>,
    allowed_domains: Vec<String>,
}

impl Policy {
    /// Builds the policy from its configuration.
    pub fn new(config: &PolicyConfig) -> Self {
        let mut allowed_ports: BTreeSet<u16> = config
            .allowed_ports
            .iter()
            .copied()
            .filter(|port| *port != 0)
            .collect();
        if !config.no_default_allowed_port {
            allowed_ports.insert(DEFAULT_ALLOWED_PORT);
        }
        let denied = if config.denied.is_empty() {
            default_denied()
        } else {
            config.denied.clone()
        };
        let allowed_domains = config
            .allowed_domains
            .iter()
            .map(|domain| normalize_domain(domain))
            .filter(|domain| !domain.is_empty())
            .collect();
        Self {
            allowed_ports,
            plain_http_port: !config.no_default_allowed_port,
            denied,
            allowed: config.allowed.clone(),
            allowed_domains,
        }
    }

    /// The allowed ports, ascending.
    pub fn allowed_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.allowed_ports.iter().copied()
    }

    /// Checks the destination port.
    pub fn check_port(&self, port: u16) -> Result<(), PolicyError> {
        if self.allowed_ports.contains(&port) {
            return Ok(());
        }
        let allowed = if self.allowed_ports.is_empty() {
            "none; use --allow-port".to_string()
        } else {
            let ports: Vec<String> = self.allowed_ports.iter().map(u16::to_string).collect();
            ports.join(", ")
        };
        Err(PolicyError::PortNotAllowed { port, allowed })
    }

    /// Checks the destination port of a plain HTTP request: the allowed ports, and port 80
    /// unless `--no-default-allow-port`.
    pub fn check_plain_http_port(&self, port: u16) -> Result<(), PolicyError> {
        if self.plain_http_port && port == DEFAULT_PLAIN_HTTP_PORT {
            return Ok(());
        }
        self.check_port(port)
    }

    /// Keeps the addresses `host` may be reached at, in their order.
    ///
    /// A denied address refuses the whole request, unless the host is an allowed domain, in
    /// which case denied addresses are dropped and the rest are kept.
    pub fn filter_addresses(
        &self,
        host: &Host,
        addresses: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, PolicyError> {
        let domain_allowed = match host {
            Host::Domain(name) => self.is_domain_allowed(name),
            Host::Ip(_) => false,
        };
        let mut kept = Vec::with_capacity(addresses.len());
        for address in addresses {
            let address = SocketAddr::new(canonical_ip(address.ip()), address.port());
            match self.denying_range(address.ip()) {
                None => {
                    if !kept.contains(&address) {
                        kept.push(address);
                    }
                }
                Some(_) if domain_allowed => {}
                Some(cidr) => {
                    return Err(PolicyError::AddressDenied {
                        ip: address.ip(),
                        cidr,
                    })
                }
            }
        }
        if kept.is_empty() {
            return Err(PolicyError::AllAddressesDenied);
        }
        Ok(kept)
    }

    /// The deny range that covers `ip`, unless an allow range excepts it.
    fn denying_range(&self, ip: IpAddr) -> Option<IpNet> {
        let ip = canonical_ip(ip);
        if self.allowed.iter().any(|cidr| cidr.contains(&ip)) {
            return None;
        }
        self.denied.iter().copied().find(|cidr| cidr.contains(&ip))
    }

    fn is_domain_allowed(&self, name: &str) -> bool {
        self.allowed_domains.iter().any(|allowed| {
            name == allowed
                || (name.len() > allowed.len()
                    && name.ends_with(allowed.as_str())
                    && name.as_bytes()[name.len() - allowed.len() - 1] == b'.')
        })
    }
}

/// The default deny list.
pub fn default_denied() -> Vec<IpNet> {
    DEFAULT_DENIED_CIDRS
        .iter()
        .map(|cidr| cidr.parse().expect("default CIDRs are valid"))
        .collect()
}

/// IPv4-mapped IPv6 addresses become the IPv4 address they carry; everything else is unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// `*.Example.com.` and `.example.com` both mean `example.com` and its subdomains.
fn normalize_domain(domain: &str) -> String {
    let domain = domain.trim();
    let domain = domain.strip_prefix("*.").unwrap_or(domain);
    let domain = domain.strip_prefix('.').unwrap_or(domain);
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    domain.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn ip_host(text: &str) -> Host {
        Host::Ip(text.parse().unwrap())
    }

    #[test]
    fn ports_default_to_443_and_can_be_replaced() {
        let policy = Policy::new(&PolicyConfig::default());
        assert!(policy.check_port(443).is_ok());
        assert!(policy.check_port(80).is_err());
        let policy = Policy::new(&PolicyConfig {
            allowed_ports: vec![8443],
            no_default_allowed_port: true,
            ..PolicyConfig::default()
        });
        assert!(policy.check_port(8443).is_ok());
        assert!(policy.check_port(443).is_err());
    }

    #[test]
    fn loopback_private_and_mapped_addresses_are_denied_by_default() {
        let policy = Policy::new(&PolicyConfig::default());
        for denied in [
            "127.0.0.1:443",
            "10.1.1.1:443",
            "192.168.1.1:443",
            "100.64.0.1:443",
            "[::1]:443",
            "[::ffff:127.0.0.1]:443",
            "[::ffff:10.0.0.1]:443",
            "[fe80::1]:443",
            "[fd00::1]:443",
            "[::]:443",
        ] {
            let address = addr(denied);
            let result =
                policy.filter_addresses(&ip_host(&address.ip().to_string()), vec![address]);
            assert!(result.is_err(), "{denied} must be denied");
        }
        let public = addr("[2001:db8::1]:443");
        assert_eq!(
            policy.filter_addresses(&ip_host("2001:db8::1"), vec![public]),
            Ok(vec![public])
        );
    }

    #[test]
    fn mapped_public_addresses_are_checked_as_ipv4() {
        let policy = Policy::new(&PolicyConfig::default());
        let mapped = addr("[::ffff:93.184.216.34]:443");
        assert_eq!(
            policy.filter_addresses(&ip_host("::ffff:93.184.216.34"), vec![mapped]),
            Ok(vec![addr("93.184.216.34:443")])
        );
    }

    #[test]
    fn allow_cidr_overrides_deny() {
        let policy = Policy::new(&PolicyConfig {
            allowed: vec!["127.0.0.0/8".parse().unwrap()],
            ..PolicyConfig::default()
        });
        let loopback = addr("127.0.0.1:443");
        assert_eq!(
            policy.filter_addresses(&ip_host("127.0.0.1"), vec![loopback]),
            Ok(vec![loopback])
        );
        assert!(policy
            .filter_addresses(&ip_host("::1"), vec![addr("[::1]:443")])
            .is_err());
    }

    #[test]
    fn allowed_domains_skip_denied_addresses_instead_of_failing() {
        let policy = Policy::new(&PolicyConfig {
            allowed_domains: vec!["*.Corp.Example".into()],
            ..PolicyConfig::default()
        });
        let host = Host::Domain("api.corp.example".into());
        let public = addr("203.0.113.5:443");
        assert_eq!(
            policy.filter_addresses(&host, vec![addr("10.0.0.1:443"), public]),
            Ok(vec![public])
        );
        assert_eq!(
            policy.filter_addresses(&host, vec![addr("10.0.0.1:443")]),
            Err(PolicyError::AllAddressesDenied)
        );
        let other = Host::Domain("evilcorp.example".into());
        assert!(policy
            .filter_addresses(&other, vec![addr("10.0.0.1:443"), public])
            .is_err());
    }
}
