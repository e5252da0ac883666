//! Sans-io plain HTTP/1.x forwarding (RFC 9110, RFC 9112): a client's absolute-form request
//! (`GET http://host/path HTTP/1.1`) becomes an origin-form request to the origin, and the
//! origin's response goes back, both without their hop-by-hop headers and with `Via` added.
//!
//! Message framing is decided here, once, and strictly, because a proxy that reads a body's
//! length differently from the next hop is a request-smuggling hole: a request with both
//! `Content-Length` and `Transfer-Encoding`, with differing lengths, with a transfer coding other
//! than `chunked`, or with a malformed chunk size is refused, and the connection closes.

use std::net::IpAddr;

use thiserror::Error;

use super::{
    connect::{check_limits, parse_host, parse_port, MAX_LINES},
    Host, Status, Target,
};

/// The default port of `http://` URLs.
pub const HTTP_PORT: u16 = 80;
/// Longest chunk-size line (size, extensions) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

pub use super::Progress as Parse;

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding, forwarded as it is (after checking it).
    Chunked,
    /// Until the origin closes (a response without length; the client connection closes after).
    UntilClose,
}

/// Why a message was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum HttpError {
    /// Malformed head, or framing that could be read two ways.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// A transfer coding other than `chunked`.
    #[error("transfer coding {0:?} is not supported (only chunked)")]
    UnsupportedCoding(String),
    /// Not an `http://` absolute-form target.
    #[error("not a proxy request: {0}")]
    NotAbsolute(&'static str),
    /// The head's size limits (the same as CONNECT's).
    #[error("{0}")]
    Limits(super::RequestError),
    /// A bad chunk in a chunked body.
    #[error("bad chunked body: {0}")]
    BadChunk(&'static str),
    /// The origin's response could not be read.
    #[error("malformed response from the origin: {0}")]
    BadResponse(&'static str),
}

impl HttpError {
    /// The status to answer the client with.
    pub fn status(&self) -> Status {
        match self {
            Self::Malformed(_) | Self::BadChunk(_) => Status::BadRequest,
            Self::UnsupportedCoding(_) => Status::NotImplemented,
            Self::NotAbsolute(_) => Status::MethodNotAllowed,
            Self::Limits(error) => error.status(),
            Self::BadResponse(_) => Status::BadGateway,
        }
    }
}

/// One header field as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The name as sent.
    pub name: String,
    /// The value as sent.
    pub value: Vec<u8>,
}

/// A request to forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent.
    pub method: String,
    /// The origin.
    pub target: Target,
    /// The request target in origin form (`/path?query`).
    pub path: String,
    /// `host[:port]` for the `Host` field.
    pub authority: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// End-to-end fields, in order (hop-by-hop fields and `Host` removed).
    pub fields: Vec<Field>,
    /// The body's framing.
    pub body: Body,
    /// Whether the client wants the connection kept after this exchange.
    pub keep_alive: bool,
}

impl Request {
    /// Whether this is a HEAD request (its response has no body).
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// The head to send the origin: origin-form, `Host` first, the end-to-end fields, `Via`.
    /// The connection to the origin is kept open when the client's is (`Connection` is left
    /// to its HTTP/1.1 default).
    pub fn encode(&self) -> Vec<u8> {
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(self.method.as_bytes());
        head.push(b' ');
        head.extend_from_slice(self.path.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        head.extend_from_slice(self.authority.as_bytes());
        head.extend_from_slice(b"\r\n");
        encode_fields(&mut head, &self.fields, self.minor_version);
        head.extend_from_slice(b"\r\n");
        head
    }
}

/// A response to forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// End-to-end fields, in order.
    pub fields: Vec<Field>,
    /// The body's framing.
    pub body: Body,
    /// Whether the origin keeps the connection open after this response.
    pub keep_alive: bool,
}

impl Response {
    /// An interim (1xx) response: another response follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }

    /// The head to send the client, as HTTP/1.1, with `Via`; `Connection: close` when the
    /// client connection closes after it, `Connection: keep-alive` when it stays open for an
    /// HTTP/1.0 client (which would otherwise take it as closing).
    pub fn encode(&self, close: bool, to_http_1_0: bool) -> Vec<u8> {
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", self.status, self.reason).as_bytes());
        encode_fields(&mut head, &self.fields, self.minor_version);
        if !self.is_interim() {
            if close {
                head.extend_from_slice(b"Connection: close\r\n");
            } else if to_http_1_0 {
                head.extend_from_slice(b"Connection: keep-alive\r\n");
            }
        }
        head.extend_from_slice(b"\r\n");
        head
    }
}

fn encode_fields(head: &mut Vec<u8>, fields: &[Field], minor_version: u8) {
    let mut via_done = false;
    for field in fields {
        head.extend_from_slice(field.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(&field.value);
        if !via_done && field.name.eq_ignore_ascii_case("via") {
            // Appended to the first Via field, so the chain keeps its order.
            head.extend_from_slice(format!(", 1.{minor_version} fyntr").as_bytes());
            via_done = true;
        }
        head.extend_from_slice(b"\r\n");
    }
    if !via_done {
        head.extend_from_slice(format!("Via: 1.{minor_version} fyntr\r\n").as_bytes());
    }
}

/// Fields that describe one hop, never forwarded (RFC 9110 section 7.6.1), beside those the
/// `Connection` field names.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
    "host",
];

/// What the framing and connection fields of a head say.
struct Framing {
    fields: Vec<Field>,
    body_length: Option<u64>,
    chunked: bool,
    close: bool,
    keep_alive_token: bool,
}

/// Splits `headers` into end-to-end fields and framing, refusing ambiguous framing.
fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, HttpError> {
    let mut named_by_connection: Vec<String> = Vec::new();
    let mut close = false;
    let mut keep_alive_token = false;
    for header in headers {
        if header.name.eq_ignore_ascii_case("connection")
            || header.name.eq_ignore_ascii_case("proxy-connection")
        {
            let value = std::str::from_utf8(header.value)
                .map_err(|_| HttpError::Malformed("Connection is not text"))?;
            for token in value
                .split(',')
                .map(|token| token.trim().to_ascii_lowercase())
            {
                match token.as_str() {
                    "close" => close = true,
                    "keep-alive" => keep_alive_token = true,
                    "" => {}
                    _ => named_by_connection.push(token),
                }
            }
        }
    }
    let mut body_length: Option<u64> = None;
    let mut chunked = false;
    let mut codings_seen = false;
    let mut fields = Vec::with_capacity(headers.len());
    for header in headers {
        let lower = header.name.to_ascii_lowercase();
        if lower == "content-length" {
            let text = std::str::from_utf8(header.value)
                .map_err(|_| HttpError::Malformed("Content-Length is not a number"))?;
            // A list of equal values is one length (RFC 9110 section 8.6); anything else
            // could be read two ways.
            for value in text.split(',').map(str::trim) {
                if value.is_empty()
                    || value.len() > 18
                    || !value.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(HttpError::Malformed("Content-Length is not a number"));
                }
                let length: u64 = value.parse().expect("digits");
                if body_length.is_some_and(|seen| seen != length) {
                    return Err(HttpError::Malformed("differing Content-Length values"));
                }
                body_length = Some(length);
            }
        } else if lower == "transfer-encoding" {
            let text = std::str::from_utf8(header.value)
                .map_err(|_| HttpError::Malformed("Transfer-Encoding is not text"))?;
            for coding in text
                .split(',')
                .map(|coding| coding.trim().to_ascii_lowercase())
            {
                if coding.is_empty() {
                    continue;
                }
                if chunked || coding != "chunked" {
                    return Err(HttpError::UnsupportedCoding(coding));
                }
                chunked = true;
            }
            codings_seen = true;
        }
        if HOP_BY_HOP.contains(&lower.as_str()) || named_by_connection.contains(&lower) {
            continue;
        }
        fields.push(Field {
            name: header.name.to_string(),
            value: header.value.to_vec(),
        });
    }
    if codings_seen && !chunked {
        return Err(HttpError::Malformed("empty Transfer-Encoding"));
    }
    Ok(Framing {
        fields,
        body_length,
        chunked,
        close,
        keep_alive_token,
    })
}

/// Parses a request head to forward; `Err(NotAbsolute)` for one that is not a proxy request.
pub fn parse_request(received: &[u8]) -> Result<Parse<Request>, HttpError> {
    let Some(head_len) = check_limits(received).map_err(HttpError::Limits)? else {
        return Ok(Parse::Partial);
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_LINES];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(&received[..head_len]) {
        Ok(status) if status.is_complete() => {}
        Ok(_) => return Err(HttpError::Malformed("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::Limits(super::RequestError::TooManyLines))
        }
        Err(_) => return Err(HttpError::Malformed("invalid request line or header")),
    }
    let method = parsed.method.unwrap_or_default().to_string();
    let minor_version = parsed.version.unwrap_or(1);
    let (target, authority, path) = parse_absolute(parsed.path.unwrap_or_default())?;
    let framing = framing(parsed.headers)?;
    if framing.chunked && framing.body_length.is_some() {
        return Err(HttpError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    let body = if framing.chunked {
        Body::Chunked
    } else {
        match framing.body_length {
            Some(0) | None => Body::Empty,
            Some(length) => Body::Length(length),
        }
    };
    let keep_alive = if minor_version == 0 {
        framing.keep_alive_token && !framing.close
    } else {
        !framing.close
    };
    // A request's own framing field stays (the origin needs it); it was kept by `framing`.
    Ok(Parse::Complete {
        value: Request {
            method,
            target,
            path,
            authority,
            minor_version,
            fields: framing.fields,
            body,
            keep_alive,
        },
        consumed: head_len,
    })
}

/// Parses an origin's response head to the request `for_head` says is HEAD or not.
pub fn parse_response(received: &[u8], for_head: bool) -> Result<Parse<Response>, HttpError> {
    let limits = check_limits(received).map_err(|_| HttpError::BadResponse("head too large"))?;
    let Some(head_len) = limits else {
        return Ok(Parse::Partial);
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_LINES];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(&received[..head_len]) {
        Ok(status) if status.is_complete() => {}
        _ => return Err(HttpError::BadResponse("invalid status line or header")),
    }
    let status = parsed.code.unwrap_or_default();
    let minor_version = parsed.version.unwrap_or(1);
    let reason = parsed.reason.unwrap_or_default().to_string();
    let framing = framing(parsed.headers).map_err(|error| match error {
        HttpError::Malformed(why) => HttpError::BadResponse(why),
        _ => HttpError::BadResponse("unsupported transfer coding"),
    })?;
    let no_body = for_head || (100..200).contains(&status) || status == 204 || status == 304;
    let body = if no_body {
        Body::Empty
    } else if framing.chunked {
        // Transfer-Encoding overrides Content-Length in a response (RFC 9112 section 6.3).
        Body::Chunked
    } else {
        match framing.body_length {
            Some(0) => Body::Empty,
            Some(length) => Body::Length(length),
            None => Body::UntilClose,
        }
    };
    let mut fields = framing.fields;
    if framing.chunked && framing.body_length.is_some() {
        fields.retain(|field| !field.name.eq_ignore_ascii_case("content-length"));
    }
    let keep_alive = body != Body::UntilClose
        && if minor_version == 0 {
            framing.keep_alive_token && !framing.close
        } else {
            !framing.close
        };
    Ok(Parse::Complete {
        value: Response {
            status,
            reason,
            minor_version,
            fields,
            body,
            keep_alive,
        },
        consumed: head_len,
    })
}

/// Splits an absolute-form `http://authority/path?query` target.
fn parse_absolute(target: &str) -> Result<(Target, String, String), HttpError> {
    let Some(scheme_end) = target.find("://") else {
        return Err(HttpError::NotAbsolute(
            "the target is not an absolute http:// URL",
        ));
    };
    if !target[..scheme_end].eq_ignore_ascii_case("http") {
        return Err(HttpError::Malformed(
            "only http:// URLs are forwarded; use CONNECT for https",
        ));
    }
    let rest = &target[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let mut path = rest[authority_end..].to_string();
    if let Some(fragment) = path.find('#') {
        path.truncate(fragment);
    }
    if path.is_empty() || path.starts_with('?') {
        path.insert(0, '/');
    }
    if authority.is_empty() || authority.contains('@') {
        return Err(HttpError::Malformed(
            "empty authority or userinfo in the URL",
        ));
    }
    let (host, port) = split_authority(authority)?;
    Ok((Target { host, port }, authority.to_string(), path))
}

fn split_authority(authority: &str) -> Result<(Host, u16), HttpError> {
    let bad = |_| HttpError::Malformed("invalid host or port in the URL");
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (literal, after) = bracketed
            .split_once(']')
            .ok_or(HttpError::Malformed("unclosed IPv6 bracket"))?;
        let ip: std::net::Ipv6Addr = literal
            .parse()
            .map_err(|_| HttpError::Malformed("invalid IPv6 literal"))?;
        let port = match after.strip_prefix(':') {
            Some(port) => parse_port(port).map_err(bad)?,
            None if after.is_empty() => HTTP_PORT,
            None => return Err(HttpError::Malformed("junk after the IPv6 literal")),
        };
        return Ok((Host::Ip(IpAddr::V6(ip)), port));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, parse_port(port).map_err(bad)?),
        None => (authority, HTTP_PORT),
    };
    Ok((parse_host(host).map_err(bad)?, port))
}

/// Follows a chunked body as it streams by, to find where it ends and to refuse malformed
/// chunk sizes; the bytes themselves are forwarded unchanged.
#[derive(Debug, Default)]
pub struct ChunkedBody {
    state: ChunkState,
    /// The chunk-size or trailer line being read.
    line: Vec<u8>,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line.
    #[default]
    Size,
    /// Inside chunk data: this many bytes to go.
    Data(u64),
    /// After chunk data: expecting CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailer,
    /// The body is complete.
    Done,
}

impl ChunkedBody {
    /// Looks at the next `bytes` of the body; returns how many of them belong to it (fewer
    /// than given only when it ended).
    pub fn advance(&mut self, bytes: &[u8]) -> Result<usize, HttpError> {
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                ChunkState::Done => return Ok(at),
                ChunkState::Data(left) => {
                    let take = (left.min((bytes.len() - at) as u64)) as usize;
                    at += take;
                    self.state = if left == take as u64 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - take as u64)
                    };
                }
                ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailer => {
                    let byte = bytes[at];
                    at += 1;
                    if byte != b'\n' {
                        self.line.push(byte);
                        if self.line.len() > MAX_CHUNK_LINE {
                            return Err(HttpError::BadChunk("chunk line too long"));
                        }
                        continue;
                    }
                    let line = std::mem::take(&mut self.line);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    self.state = match self.state {
                        ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
                        ChunkState::DataEnd => {
                            return Err(HttpError::BadChunk("chunk data longer than its size"))
                        }
                        ChunkState::Trailer if line.is_empty() => ChunkState::Done,
                        ChunkState::Trailer => ChunkState::Trailer,
                        _ => match parse_chunk_size(line)? {
                            0 => ChunkState::Trailer,
                            size => ChunkState::Data(size),
                        },
                    };
                }
            }
        }
        Ok(at)
    }

    /// Whether the whole body has gone by.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// A chunk-size line: hexadecimal digits, then optional `;extensions`.
fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let size = line.split(|&byte| byte == b';').next().unwrap_or_default();
    let size = size.trim_ascii_end();
    if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(HttpError::BadChunk("chunk size is not hexadecimal"));
    }
    Ok(u64::from_str_radix(std::str::from_utf8(size).expect("hex digits"), 16).expect("fits"))
}

#[cfg(test)]
mod tests;
