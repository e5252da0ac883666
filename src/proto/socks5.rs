//! Sans-io parsing of a SOCKS5 handshake (RFC 1928) and the replies fyntr sends.
//!
//! A client sends a greeting (the authentication methods it offers), waits for the method
//! reply, then sends its request; many send both at once. [`parse_greeting`] and
//! [`parse_request`] are each called with everything received so far and say how many bytes
//! they used, so that bytes a client pipelines after its request are relayed, never dropped.
//!
//! Only "no authentication" and CONNECT are served, as in fyntr 0.4.8: other commands get
//! [`Reply::CommandNotSupported`]. A domain name must be a DNS name: one that looks numeric
//! (`127.1`, `0x7f000001`, `8.8.8.8`) is refused with [`Reply::AddressTypeNotSupported`], since
//! a resolver would read it as an address and the destination policy would be checked against
//! a name that is not one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

use super::{connect::parse_domain_name, Host, Target};

/// The protocol version byte.
pub const VERSION: u8 = 5;
/// The method "no authentication required".
const NO_AUTHENTICATION: u8 = 0x00;
/// The method reply "no acceptable methods".
const NO_ACCEPTABLE_METHOD: u8 = 0xff;
const CONNECT: u8 = 1;
const ATYP_IPV4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_IPV6: u8 = 4;

/// The method reply that selects "no authentication".
pub const NO_AUTHENTICATION_SELECTED: [u8; 2] = [VERSION, NO_AUTHENTICATION];
/// The method reply sent before closing when the client offers no method fyntr serves.
pub const NO_METHOD_ACCEPTABLE: [u8; 2] = [VERSION, NO_ACCEPTABLE_METHOD];

pub use super::Progress as Parse;

/// Why a greeting was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum GreetingError {
    /// Not SOCKS5 (SOCKS4, or HTTP sent to this port): closed without a reply, since the client
    /// would not understand one.
    #[error("unsupported SOCKS version {0}")]
    NotSocks5(u8),
    /// The client offered no method fyntr serves (it only serves "no authentication"); the
    /// answer is [`NO_METHOD_ACCEPTABLE`].
    #[error("no acceptable authentication method offered (only \"no authentication\" is served)")]
    NoAcceptableMethod,
}

/// Parses the greeting: `VER NMETHODS METHODS...`.
pub fn parse_greeting(received: &[u8]) -> Result<Parse<()>, GreetingError> {
    let Some(&version) = received.first() else {
        return Ok(Parse::Partial);
    };
    if version != VERSION {
        return Err(GreetingError::NotSocks5(version));
    }
    let Some(&count) = received.get(1) else {
        return Ok(Parse::Partial);
    };
    let end = 2 + usize::from(count);
    let Some(methods) = received.get(2..end) else {
        return Ok(Parse::Partial);
    };
    if !methods.contains(&NO_AUTHENTICATION) {
        return Err(GreetingError::NoAcceptableMethod);
    }
    Ok(Parse::Complete {
        value: (),
        consumed: end,
    })
}

/// The reply codes of RFC 1928 section 6 that fyntr sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// 00: the tunnel is established.
    Succeeded,
    /// 01: a malformed request, or the connection cap was reached.
    GeneralFailure,
    /// 02: the destination policy (or a threat feed) refuses the target.
    NotAllowed,
    /// 03: no route to the destination's network.
    NetworkUnreachable,
    /// 04: the host did not resolve, did not answer, or was unreachable.
    HostUnreachable,
    /// 05: the destination refused the connection.
    ConnectionRefused,
    /// 07: BIND, UDP ASSOCIATE or an unknown command.
    CommandNotSupported,
    /// 08: an unknown address type, or a domain name that is not a valid DNS name.
    AddressTypeNotSupported,
}

impl Reply {
    /// The reply code byte.
    pub fn code(self) -> u8 {
        match self {
            Self::Succeeded => 0x00,
            Self::GeneralFailure => 0x01,
            Self::NotAllowed => 0x02,
            Self::NetworkUnreachable => 0x03,
            Self::HostUnreachable => 0x04,
            Self::ConnectionRefused => 0x05,
            Self::CommandNotSupported => 0x07,
            Self::AddressTypeNotSupported => 0x08,
        }
    }

    /// The whole reply: `VER REP RSV ATYP BND.ADDR BND.PORT`. A success carries `bound`, the
    /// local address of fyntr's upstream socket; a failure carries 0.0.0.0:0.
    pub fn encode(self, bound: Option<SocketAddr>) -> Vec<u8> {
        let bound = bound.unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let mut reply = vec![VERSION, self.code(), 0];
        match bound.ip() {
            IpAddr::V4(ip) => {
                reply.push(ATYP_IPV4);
                reply.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(ip) => {
                    reply.push(ATYP_IPV4);
                    reply.extend_from_slice(&ip.octets());
                }
                None => {
                    reply.push(ATYP_IPV6);
                    reply.extend_from_slice(&ip.octets());
                }
            },
        }
        reply.extend_from_slice(&bound.port().to_be_bytes());
        reply
    }
}

/// Why a request was refused; [`RequestError::reply`] gives the answer.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    /// The request's version byte is not 5.
    #[error("request version {0} is not SOCKS5")]
    BadVersion(u8),
    /// A command other than CONNECT.
    #[error("command {0} is not supported (only CONNECT is)")]
    UnsupportedCommand(u8),
    /// The reserved byte is not zero.
    #[error("reserved byte is {0}, not 0")]
    BadReserved(u8),
    /// An address type other than IPv4, domain or IPv6.
    #[error("address type {0} is not supported")]
    UnsupportedAddressType(u8),
    /// The domain name is not a DNS name fyntr accepts.
    #[error("invalid domain name: {0}")]
    BadDomain(&'static str),
    /// Port 0.
    #[error("port 0 is not a destination")]
    PortZero,
}

impl RequestError {
    /// The reply to send before closing.
    pub fn reply(&self) -> Reply {
        match self {
            Self::BadVersion(_) | Self::BadReserved(_) | Self::PortZero => Reply::GeneralFailure,
            Self::UnsupportedCommand(_) => Reply::CommandNotSupported,
            Self::UnsupportedAddressType(_) | Self::BadDomain(_) => Reply::AddressTypeNotSupported,
        }
    }
}

/// Parses the request: `VER CMD RSV ATYP DST.ADDR DST.PORT`. Version, command and reserved byte
/// are checked in that order, each as soon as it has arrived.
pub fn parse_request(received: &[u8]) -> Result<Parse<Target>, RequestError> {
    if let Some(&version) = received.first() {
        if version != VERSION {
            return Err(RequestError::BadVersion(version));
        }
    }
    if let Some(&command) = received.get(1) {
        if command != CONNECT {
            return Err(RequestError::UnsupportedCommand(command));
        }
    }
    if let Some(&reserved) = received.get(2) {
        if reserved != 0 {
            return Err(RequestError::BadReserved(reserved));
        }
    }
    let Some(&address_type) = received.get(3) else {
        return Ok(Parse::Partial);
    };
    let (host, port_at) = match address_type {
        ATYP_IPV4 => {
            let Some(octets) = received.get(4..8) else {
                return Ok(Parse::Partial);
            };
            let octets: [u8; 4] = octets.try_into().expect("four bytes");
            (Host::Ip(IpAddr::V4(Ipv4Addr::from(octets))), 8)
        }
        ATYP_IPV6 => {
            let Some(octets) = received.get(4..20) else {
                return Ok(Parse::Partial);
            };
            let octets: [u8; 16] = octets.try_into().expect("sixteen bytes");
            let ip = Ipv6Addr::from(octets);
            // An IPv4-mapped address is the IPv4 host: the policy checks it as one.
            let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
            (Host::Ip(ip), 20)
        }
        ATYP_DOMAIN => {
            let Some(&length) = received.get(4) else {
                return Ok(Parse::Partial);
            };
            let end = 5 + usize::from(length);
            let Some(name) = received.get(5..end) else {
                return Ok(Parse::Partial);
            };
            (Host::Domain(parse_domain(name)?), end)
        }
        other => return Err(RequestError::UnsupportedAddressType(other)),
    };
    let Some(port) = received.get(port_at..port_at + 2) else {
        return Ok(Parse::Partial);
    };
    let port = u16::from_be_bytes([port[0], port[1]]);
    if port == 0 {
        return Err(RequestError::PortZero);
    }
    Ok(Parse::Complete {
        value: Target { host, port },
        consumed: port_at + 2,
    })
}

/// A SOCKS5 domain name as a lowercase ASCII DNS name (IDNA-mapped), refusing names that look
/// numeric.
fn parse_domain(name: &[u8]) -> Result<String, RequestError> {
    if name.is_empty() {
        return Err(RequestError::BadDomain("empty"));
    }
    let name = std::str::from_utf8(name).map_err(|_| RequestError::BadDomain("not UTF-8"))?;
    let ascii =
        super::idna::to_ascii(name).ok_or(RequestError::BadDomain("not a valid IDNA name"))?;
    let trimmed = ascii.strip_suffix('.').unwrap_or(&ascii);
    if looks_numeric(trimmed) {
        return Err(RequestError::BadDomain(
            "numeric host names are not accepted",
        ));
    }
    parse_domain_name(&ascii).map_err(RequestError::BadDomain)
}

/// Whether `name` is, or could be read by a resolver as, an IPv4 address: every dot-separated
/// part is decimal, octal or `0x` hexadecimal digits (`8.8.8.8`, `127.1`, `2130706433`,
/// `0x7f.1`).
fn looks_numeric(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            let digits = part
                .strip_prefix("0x")
                .or_else(|| part.strip_prefix("0X"))
                .map_or((part, 10), |hex| (hex, 16));
            !digits.0.is_empty() && digits.0.chars().all(|c| c.is_digit(digits.1))
        })
}

#[cfg(test)]
mod tests;
