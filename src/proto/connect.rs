//! Two-step parsing of a CONNECT request head.
//!
//! [`parse`] is called with everything received so far. It returns [`Parse::Partial`] while the
//! head is incomplete and within the limits, and [`Parse::Complete`] with the number of bytes the
//! head used, so that bytes a client pipelined after the head are relayed, never dropped.
//!
//! Only the authority form (`host:port`, `[v6]:port`) is accepted, as RFC 9110 section 9.3.6
//! requires for CONNECT. Methods are case-sensitive (RFC 9110 section 9.1): `connect` is not
//! CONNECT.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use super::Status;

/// Longest request line, in bytes, without its line ending.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Longest header line, in bytes, without its line ending.
pub const MAX_HEADER_LINE: usize = 8 * 1024;
/// Largest whole head, line endings and the final empty line included.
pub const MAX_HEAD: usize = 32 * 1024;
/// Most header lines in a head (the request line not counted), as in fyntr 0.4.8.
pub const MAX_LINES: usize = 100;
/// Longest host name (RFC 1035: 253 characters without the trailing dot).
const MAX_HOST: usize = 253;

/// The outcome of looking at the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// The head is not complete yet; read more.
    Partial,
    /// A valid CONNECT head.
    Complete {
        /// The request.
        request: ConnectRequest,
        /// Bytes used by the head; anything after them belongs to the tunnel.
        consumed: usize,
    },
}

/// A valid CONNECT request.
#[derive(Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Where to connect.
    pub target: Target,
}

/// A CONNECT destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP literal.
    pub host: Host,
    /// Destination port, never 0.
    pub port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Domain(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

/// The host part of a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// An IP literal.
    Ip(IpAddr),
    /// A DNS name, lowercased, without a trailing dot.
    Domain(String),
}

/// Why a head was refused; [`RequestError::status`] gives the response.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    /// The head is not valid HTTP/1.x.
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    /// A method other than CONNECT.
    #[error("method {0:?} is not CONNECT")]
    NotConnect(String),
    /// The request target is not a valid `host:port` authority.
    #[error("invalid CONNECT target: {0}")]
    BadTarget(&'static str),
    /// The request line exceeds [`MAX_REQUEST_LINE`].
    #[error("request line longer than {MAX_REQUEST_LINE} bytes")]
    RequestLineTooLong,
    /// A header line exceeds [`MAX_HEADER_LINE`].
    #[error("header line longer than {MAX_HEADER_LINE} bytes")]
    HeaderLineTooLong,
    /// More than [`MAX_LINES`] header lines.
    #[error("more than {MAX_LINES} header lines")]
    TooManyLines,
    /// The head exceeds [`MAX_HEAD`].
    #[error("head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The client opened with a TLS record: it was told `https://` for the proxy itself.
    #[error("the client sent TLS to the proxy: use http:// (not https://) in HTTPS_PROXY")]
    TlsToProxy,
}

impl RequestError {
    /// The status to answer with.
    pub fn status(&self) -> Status {
        match self {
            Self::Malformed(_) | Self::BadTarget(_) | Self::TlsToProxy => Status::BadRequest,
            Self::NotConnect(_) => Status::MethodNotAllowed,
            Self::RequestLineTooLong => Status::UriTooLong,
            Self::HeaderLineTooLong | Self::TooManyLines | Self::HeadTooLarge => {
                Status::HeaderFieldsTooLarge
            }
        }
    }
}

/// Parses the bytes received so far. See the [module docs](self).
pub fn parse(received: &[u8]) -> Result<Parse, RequestError> {
    check_method_prefix(received)?;
    let Some(head_len) = check_limits(received)? else {
        return Ok(Parse::Partial);
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_LINES];
    let mut request = httparse::Request::new(&mut headers);
    let status = request
        .parse(&received[..head_len])
        .map_err(|error| match error {
            httparse::Error::TooManyHeaders => RequestError::TooManyLines,
            httparse::Error::Version => RequestError::Malformed("unsupported HTTP version"),
            httparse::Error::Token => RequestError::Malformed("invalid method"),
            httparse::Error::HeaderName => RequestError::Malformed("invalid header name"),
            httparse::Error::HeaderValue => RequestError::Malformed("invalid header value"),
            _ => RequestError::Malformed("invalid request line or line ending"),
        })?;
    if status.is_partial() {
        return Err(RequestError::Malformed("incomplete head"));
    }
    let method = request.method.unwrap_or_default();
    if method != "CONNECT" {
        return Err(RequestError::NotConnect(method.chars().take(32).collect()));
    }
    let target = parse_authority(request.path.unwrap_or_default())?;
    check_no_content(request.headers)?;
    Ok(Parse::Complete {
        request: ConnectRequest { target },
        consumed: head_len,
    })
}

/// TLS's record type for a handshake, the first byte of every ClientHello.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Refuses a head as soon as its first bytes cannot begin a request line, rather than wait for
/// the handshake timeout: a request line starts with a method, a token of RFC 9110 `tchar`s
/// followed by a space (after empty lines, which RFC 9112 lets a server skip). A client that
/// speaks TLS to the proxy sends 0x16 first and then waits for the server's answer, so without
/// this it would wait for a 408.
pub(crate) fn check_method_prefix(received: &[u8]) -> Result<(), RequestError> {
    if received.first() == Some(&TLS_HANDSHAKE_RECORD) {
        return Err(RequestError::TlsToProxy);
    }
    let start = received
        .iter()
        .position(|&byte| byte != b'\r' && byte != b'\n')
        .unwrap_or(received.len());
    for &byte in &received[start..] {
        if byte == b' ' {
            return Ok(());
        }
        if !is_token_byte(byte) {
            return Err(RequestError::Malformed("invalid method"));
        }
    }
    Ok(())
}

/// An RFC 9110 `tchar`: the bytes a method (or any token) may consist of.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Enforces the size limits on what has arrived; returns the head length once it is complete.
pub(crate) fn check_limits(received: &[u8]) -> Result<Option<usize>, RequestError> {
    let mut start = 0;
    let mut lines = 0;
    let mut seen_request_line = false;
    loop {
        let rest = &received[start..];
        let Some(newline) = rest.iter().position(|&byte| byte == b'\n') else {
            // An unfinished line: refuse it as soon as it is certain to be too long.
            let limit = if seen_request_line {
                MAX_HEADER_LINE
            } else {
                MAX_REQUEST_LINE
            };
            if rest.len() > limit + 1 {
                return Err(too_long(seen_request_line));
            }
            if received.len() > MAX_HEAD {
                return Err(RequestError::HeadTooLarge);
            }
            return Ok(None);
        };
        let line = &rest[..newline];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        start += newline + 1;
        if start > MAX_HEAD {
            return Err(RequestError::HeadTooLarge);
        }
        if line.is_empty() {
            if seen_request_line {
                return Ok(Some(start));
            }
            // RFC 9112 section 2.2: ignore empty lines before the request line.
            continue;
        }
        let limit = if seen_request_line {
            MAX_HEADER_LINE
        } else {
            MAX_REQUEST_LINE
        };
        if line.len() > limit {
            return Err(too_long(seen_request_line));
        }
        if seen_request_line {
            lines += 1;
            if lines > MAX_LINES {
                return Err(RequestError::TooManyLines);
            }
        }
        seen_request_line = true;
    }
}

fn too_long(in_headers: bool) -> RequestError {
    if in_headers {
        RequestError::HeaderLineTooLong
    } else {
        RequestError::RequestLineTooLong
    }
}

/// A CONNECT request has no content (RFC 9110 section 9.3.6). Framing headers on it are a
/// smuggling attempt or a broken client: bytes after the head would be taken as tunnel data.
fn check_no_content(headers: &[httparse::Header<'_>]) -> Result<(), RequestError> {
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RequestError::Malformed("Transfer-Encoding on CONNECT"));
        }
        if header.name.eq_ignore_ascii_case("content-length") && header.value.trim_ascii() != b"0" {
            return Err(RequestError::Malformed("content on CONNECT"));
        }
    }
    Ok(())
}

/// Parses an authority-form request target: `host:port` or `[v6]:port`.
fn parse_authority(target: &str) -> Result<Target, RequestError> {
    if target.is_empty() {
        return Err(RequestError::BadTarget("empty target"));
    }
    if target.contains('@') {
        return Err(RequestError::BadTarget("userinfo is not allowed"));
    }
    if target.contains('/') || target == "*" {
        return Err(RequestError::BadTarget("not authority-form host:port"));
    }
    let (host, port) = if let Some(bracketed) = target.strip_prefix('[') {
        let (literal, after) = bracketed
            .split_once(']')
            .ok_or(RequestError::BadTarget("unclosed IPv6 bracket"))?;
        let port = after
            .strip_prefix(':')
            .ok_or(RequestError::BadTarget("missing port"))?;
        let ip: Ipv6Addr = literal
            .parse()
            .map_err(|_| RequestError::BadTarget("invalid IPv6 literal"))?;
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = target
            .rsplit_once(':')
            .ok_or(RequestError::BadTarget("missing port"))?;
        if host.contains(':') {
            return Err(RequestError::BadTarget("IPv6 literal must be in brackets"));
        }
        (parse_host(host)?, port)
    };
    Ok(Target {
        host,
        port: parse_port(port)?,
    })
}

pub(crate) fn parse_port(port: &str) -> Result<u16, RequestError> {
    if port.is_empty() {
        return Err(RequestError::BadTarget("missing port"));
    }
    if port.len() > 5 || !port.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(RequestError::BadTarget("port is not a number in 1-65535"));
    }
    match port.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        _ => Err(RequestError::BadTarget("port is not a number in 1-65535")),
    }
}

pub(crate) fn parse_host(host: &str) -> Result<Host, RequestError> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    // An international name (`bücher.de`) is taken in its ASCII form, as DNS and the threat
    // feeds know it.
    let ascii = if host.is_ascii() {
        std::borrow::Cow::Borrowed(host)
    } else {
        super::idna::to_ascii(host)
            .ok_or(RequestError::BadTarget(
                "not a valid international host name",
            ))?
            .into()
    };
    parse_domain_name(&ascii)
        .map(Host::Domain)
        .map_err(RequestError::BadTarget)
}

/// Checks an ASCII host name (one trailing dot allowed) and returns it lowercased without the
/// dot, or says why it is not one.
pub(crate) fn parse_domain_name(host: &str) -> Result<String, &'static str> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > MAX_HOST {
        return Err("host name is empty or too long");
    }
    for label in name.split('.') {
        // RFC 1123 section 2.1: a label neither starts nor ends with a hyphen.
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        if !valid {
            return Err("invalid host name");
        }
    }
    // A numeric last label is no DNS name: the resolver would read shorthand such as `127.1`
    // or `0x7f.1` as an IPv4 address, so such hosts must be written as plain dotted quads.
    let last = name.rsplit('.').next().unwrap_or_default();
    if last.bytes().all(|byte| byte.is_ascii_digit())
        || (last.len() > 2 && last[..2].eq_ignore_ascii_case("0x"))
    {
        return Err("not a host name nor a dotted-quad IPv4");
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests;
