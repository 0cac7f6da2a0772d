//! # twinmq
//!
//! An MQTT 3.1.1 and 5.0 broker that serves the same sessions over TLS/TCP and QUIC.
//!
//! ```text
//!            bytes, completions, now                       frames, timers, events
//! transport ────────────────────────► protocol::Connection ─────────────────────► transport
//! (tcp, tls,                           (sans-IO: no tokio,                          / broker
//!  quic)                                no sockets, no clock)
//! ```
//!
//! - [`protocol`]: the codec for every MQTT packet and the sans-IO [`protocol::Connection`],
//!   built on the send-completion state machine in which an empty frame cannot be expressed
//!   and every completion hands back, by value, the frames it completed.
//!
//! Layering rule: `protocol` knows nothing of tokio, sockets or the clock; later layers
//! (`transport`, `broker`, `store`, `fault`, `bench`, `client`, `config`) build on it.

pub mod bench;
pub mod broker;
pub mod client;
pub mod config;
pub mod fault;
pub mod protocol;
pub mod server;
pub mod store;
pub mod transport;
