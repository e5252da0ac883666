//! The bytes fyntr answers a CONNECT (or a refused plain HTTP request) with.

/// The whole success response. Nothing else may follow it: Go's net/http, for one, requires
/// status 200 and reads nothing after the head.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// Every error status fyntr sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// 400: the request head is malformed or its target is not a valid authority.
    BadRequest,
    /// 403: the destination policy refuses the target.
    Forbidden,
    /// 405: a method other than CONNECT.
    MethodNotAllowed,
    /// 408: the head did not arrive within the handshake timeout.
    RequestTimeout,
    /// 414: the request line is too long.
    UriTooLong,
    /// 431: a header line, the header count or the whole head is too large.
    HeaderFieldsTooLarge,
    /// 501: a transfer coding fyntr does not forward (plain HTTP).
    NotImplemented,
    /// 502: the upstream refused, was unreachable or could not be resolved.
    BadGateway,
    /// 503: the connection cap is reached.
    ServiceUnavailable,
    /// 504: the upstream did not answer in time.
    GatewayTimeout,
}

impl Status {
    /// The numeric status code.
    pub fn code(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Forbidden => 403,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::UriTooLong => 414,
            Self::HeaderFieldsTooLarge => 431,
            Self::NotImplemented => 501,
            Self::BadGateway => 502,
            Self::ServiceUnavailable => 503,
            Self::GatewayTimeout => 504,
        }
    }

    /// The complete response: status line, `Content-Length: 0`, `Connection: close` (and the
    /// `Allow` header RFC 9110 requires with 405), then the connection closes.
    pub fn response(self) -> &'static [u8] {
        match self {
            Self::BadRequest => b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Self::Forbidden => b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Self::MethodNotAllowed => b"HTTP/1.1 405 Method Not Allowed\r\nAllow: CONNECT\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Self::RequestTimeout => b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Self::UriTooLong => b"HTTP/1.1 414 URI Too Long\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Self::HeaderFieldsTooLarge => b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Self::NotImplemented => b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Self::BadGateway => b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Self::ServiceUnavailable => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Self::GatewayTimeout => b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_response_starts_with_its_code_and_is_a_complete_head() {
        for status in [
            Status::BadRequest,
            Status::Forbidden,
            Status::MethodNotAllowed,
            Status::RequestTimeout,
            Status::UriTooLong,
            Status::HeaderFieldsTooLarge,
            Status::NotImplemented,
            Status::BadGateway,
            Status::ServiceUnavailable,
            Status::GatewayTimeout,
        ] {
            let text = std::str::from_utf8(status.response()).unwrap();
            assert!(text.starts_with(&format!("HTTP/1.1 {} ", status.code())));
            assert!(text.contains("\r\nContent-Length: 0\r\n"));
            assert!(text.contains("\r\nConnection: close\r\n"));
            assert!(text.ends_with("\r\n\r\n"));
        }
    }
}
