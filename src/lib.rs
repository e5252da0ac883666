//! # fyntr: a forward proxy that tunnels CONNECT and paces bursts of TLS flows
//!
//! A map of the crate, from the wire inwards:
//!
//! - [`server`]: workers, the accept loop, admission under the connection cap, graceful
//!   shutdown. [`server::run`] is the entry point (the binary and the tests both call it).
//! - [`tunnel`](crate::tunnel) (private): one client: read the head within the handshake timeout,
//!   check the [`policy`], [`dial`] the upstream, answer 200, then [`relay`].
//! - [`relay`]: both directions of an established tunnel, with half-close and idle timeout;
//!   every write is granted by the worker's scheduler.
//! - [`sched`]: the sans-io Deficit Round-Robin scheduler (no I/O, no clock inside).
//! - [`proto`]: the sans-io CONNECT head parser and the responses.
//! - [`policy`]: destination ports, CIDRs and domains.
//! - [`config`], [`limits`]: the validated configuration and the file-descriptor guard.
//! - [`backend`]: picking io_uring or Tokio once at start (with a probe), then running the
//!   server monomorphised for it.
//!
//! Bytes move through the backend crate `fyntr-platform`; this crate is generic over its
//! [`Backend`](fyntr_platform::Backend) trait and is monomorphised per backend.

pub mod backend;
pub mod config;
pub mod dial;
mod gate;
pub mod limits;
pub mod policy;
pub mod proto;
pub mod relay;
pub mod sched;
mod send_queue;
pub mod server;
mod tunnel;
pub mod units;

pub use fyntr_platform as platform;
