//! Sans-io protocol code: parsing CONNECT request heads and the responses fyntr sends.

pub mod connect;
pub mod response;

pub use connect::{parse, ConnectRequest, Host, Parse, RequestError, Target};
pub use response::Status;
