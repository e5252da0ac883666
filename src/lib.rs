//! # fyntr: a forward proxy that tunnels CONNECT and paces bursts of TLS flows
//!
//! A map of the crate, from the wire inwards:
//!
//! - [`server`]: workers, the accept loop, admission under the connection cap, graceful
//!   shutdown. [`server::run`] is the entry point (the binary and the tests both call it).
//! - `tunnel` (private): one client, on either front end (CONNECT or SOCKS5, see
//!   [`server::FrontEnd`]): read its request within the handshake timeout, connect the upstream,
//!   answer success, then [`relay`]; a plain HTTP request goes to `forward` (private) instead.
//!   `establish` (private) is the one path from a request to an upstream for all of them:
//!   threat feeds, connect pacing, the [`policy`], resolution and the [`dial`].
//! - [`run`]: the builder the binary and library users start a server from.
//! - [`metrics`]: per-worker counters summed on scrape, their Prometheus and JSON renderings,
//!   and the `/metrics` listener. [`reload`]: changing a running server's settings (SIGHUP).
//! - `worker` (private): what all workers share and what one worker's tasks share; it hands the
//!   relay only what the relay uses. `admission` (private, re-exported by [`server`]): the
//!   connection cap.
//! - [`relay`]: both directions of an established tunnel, with half-close and idle timeout;
//!   every write is granted by the worker's scheduler. `send_queue` (private) bounds what bulk
//!   sockets hold in the kernel, so that the scheduler, not the kernel, decides who goes.
//! - [`sched`]: the sans-io Deficit Round-Robin scheduler, the pacers and the `auto` rate
//!   controller (no I/O, no clock inside). `auto_pacing` (private) feeds the controller what
//!   the relays' upstream sockets report and sets the pacers' rates.
//! - [`proto`]: the sans-io CONNECT head and SOCKS5 handshake parsers and the answers.
//! - [`policy`]: destination ports, CIDRs and domains. [`threat`]: threat feeds and lookalike
//!   (mixed-script) names.
//! - [`config`], [`limits`], [`units`]: the validated configuration, the file-descriptor guard,
//!   and the byte units of sizes and rates.
//! - [`backend`]: picking io_uring or Tokio once at start (with a probe), then running the
//!   server monomorphised for it.
//!
//! Bytes move through the backend crate `fyntr-platform`; this crate is generic over its
//! [`Backend`](fyntr_platform::Backend) trait and is monomorphised per backend.

mod active_downloads;
mod admission;
mod auto_pacing;
pub mod backend;
pub mod config;
pub mod dial;
mod doze;
mod establish;
mod forward;
mod gate;
mod grace_over;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod proto;
pub mod relay;
pub mod reload;
pub mod run;
pub mod sched;
mod send_queue;
pub mod server;
pub mod threat;
mod tunnel;
pub mod units;
mod worker;

pub use fyntr_platform as platform;
