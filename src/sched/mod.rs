//! Sans-io Deficit Round-Robin scheduling of the chunks every tunnel wants to write.
//!
//! Each direction of each tunnel is a flow ([`FlowId`]). A relay direction that has read a chunk
//! calls [`Scheduler::handle_enqueue`], then writes it only once [`Scheduler::poll_grant`] has
//! granted it, and reports [`Scheduler::handle_complete`] when the write finished.
//!
//! - **DRR**: backlogged flows form a round. A visit adds the flow's quantum to its deficit and
//!   grants chunks while the head chunk fits; a flow whose queue empties loses its deficit (no
//!   banked credit), so a flow that was quiet cannot burst later at others' expense.
//! - **Adaptive quantum** ([`quantum`]): each flow's quantum follows its recent chunk sizes, so a
//!   chatty flow's small chunk is granted on its first visit and rounds stay short.
//! - **In-flight window**: bytes granted but not yet written are bounded per worker. While the
//!   window is open every grant is immediate, so an uncongested proxy runs at full speed; once it
//!   is full, DRR decides who goes next.
//! - **Stalled writes**: a grant still unwritten after [`SchedulerConfig::stall_after`] is blocked
//!   by its own peer (a client that stopped reading), not by the shared path, so its bytes leave
//!   the window. One stuck peer can never hold up the other flows.
//!
//! - **Pacing** ([`pacer`]): with `--upload-rate` / `--download-rate`, a grant also needs the
//!   shared pacer's admission, so the total leaves at the rate, in small bursts, and DRR decides
//!   which flow's chunk uses each slot.
//!
//! No I/O and no clock inside: time comes in as `now`, so the behaviour is tested with a virtual
//! clock (see the simulation tests).

pub mod autorate;
mod drr;
pub mod pacer;
pub mod quantum;

pub use drr::{FlowId, Grant, Scheduler, SchedulerConfig};
