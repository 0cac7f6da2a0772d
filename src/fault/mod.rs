//! Fault injection, off by default, applied only at the IO seams (DESIGN §4).
//!
//! - [`schedule`]: seeded event schedules shared by twinmq and the reference model of the
//!   broken NanoMQ ack path, so both meet exactly the same sequence.
//! - [`stream`]: a wrapper over a byte stream (below TLS) that injects short writes,
//!   `Ok(0)` writes, write stalls, resets after N bytes and read corruption.
//! - [`udp`]: a wrapper over quinn's UDP socket that drops and delays datagrams.
//! - [`plan`]: the TOML plan that configures them (`twinmq serve --fault-plan FILE`).
//!
//! Faults at the completion seam need no wrapper: `SendTicket::forged` builds late,
//! duplicated and unknown completions, and the connection rejects them with a typed error.

pub mod link;
pub mod plan;
pub mod schedule;
pub mod stream;
pub mod udp;

pub use plan::{FaultPlan, FaultPlanError};
