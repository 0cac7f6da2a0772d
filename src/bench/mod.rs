//! Benchmarks behind `twinmq bench` (DESIGN §7).
//!
//! - [`stability`]: the same client population over TLS, QUIC single-stream and QUIC
//!   multi-stream under faults (`twinmq bench stability`, docs/stability.md).
//! - [`path`]: loopback relays that impair a path (loss, reordering, delay, rate caps,
//!   outages, rebinding, resets) while it carries traffic.
//! - [`proc`]: broker CPU, resident memory and UDP drop counters from `/proc`.

pub mod path;
pub mod proc;
pub mod stability;
