//! Fault injection, off by default, applied only at the IO seams (DESIGN §4).
//!
//! - [`schedule`]: seeded event schedules shared by twinmq and the reference model of the
//!   broken NanoMQ ack path, so both meet exactly the same sequence.
//! - [`stream`]: a wrapper over a byte stream (below TLS) that injects short writes,
//!   `Ok(0)` writes, write stalls, resets after N bytes and read corruption.

pub mod schedule;
pub mod stream;
