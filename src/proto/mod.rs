//! Sans-io protocol code: parsing CONNECT request heads and SOCKS5 handshakes, and the answers
//! fyntr sends.

pub mod connect;
pub mod http;
pub mod idna;
pub mod response;
pub mod socks5;

pub use connect::{parse, ConnectRequest, Host, Parse, RequestError, Target};
pub use response::Status;
