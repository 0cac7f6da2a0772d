//! Drivers that pump a [`protocol::Connection`](crate::protocol::Connection) over real IO,
//! and the accept loops that feed them.
//!
//! - [`driver`]: one connection over any `AsyncRead + AsyncWrite` (TCP, TLS, a QUIC stream),
//!   through the send-completion seam.
//! - [`listener`]: TCP and TLS accept loops. The loop itself never awaits a handshake: each
//!   accepted socket gets its own task, which enforces the handshake timeout.

pub mod driver;
pub mod listener;
pub mod quic;

pub use driver::{drive, now, Command, EventSink};
pub use listener::{PeerInfo, Service, TransportKind};
#[cfg(test)]
mod tests;
