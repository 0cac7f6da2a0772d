//! The broker: what happens to a message between the connection that published it and the
//! connections that receive it.
//!
//! - [`index`]: the subscription index, a persistent topic trie (`+`, `#`, `$`-topics,
//!   `$share/<group>/...`) read without locks while writers publish new snapshots.
//! - [`retained`]: the retained-message store, a topic trie with message expiry.
//!
//! Both are plain data structures: no IO, no tokio, no clock reads (`now` is passed in).

pub mod auth;
pub mod client;
pub mod core;
pub mod index;
pub mod persist;
pub mod retained;
pub mod session;

pub use client::{serve, BrokerService};
pub use core::{Broker, BrokerConfig, Stats};
