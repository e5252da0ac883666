//! Sans-io protocol code: parsing CONNECT request heads and SOCKS5 handshakes, and the answers
//! fyntr sends.

pub mod connect;
pub mod http;
pub mod idna;
pub mod response;
pub mod socks5;

pub use connect::{parse, ConnectRequest, Host, Parse, RequestError, Target};
pub use response::Status;

/// The outcome of looking at the bytes of a SOCKS5 or plain HTTP message received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress<T> {
    /// Not complete yet; read more.
    Partial,
    /// Complete: what was parsed and how many bytes it used.
    Complete {
        /// What was parsed.
        value: T,
        /// Bytes used; anything after them comes next (a body, a tunnel's bytes).
        consumed: usize,
    },
}
