//! Helpers shared by the `client_*` integration tests: options pointing a
//! `twinmq::client` at a [`TestBroker`], and bounded waits.
#![allow(dead_code)]

pub mod proxy;

use std::future::Future;
use std::time::Duration;

use twinmq::client::{ClientOptions, Event, Incoming, Message, Reconnect, Transport};

use crate::common::{TestBroker, WAIT};

pub const TRANSPORTS: [Transport; 3] = [Transport::Tcp, Transport::Tls, Transport::Quic];

/// Options for `transport` on the test broker: its CA, its port, fast reconnects.
pub fn options(broker: &TestBroker, transport: Transport) -> ClientOptions {
    let port = match transport {
        Transport::Tcp => broker.tcp.port(),
        Transport::Tls => broker.tls.port(),
        Transport::Quic => broker.quic.port(),
    };
    ClientOptions::new("localhost")
        .transport(transport)
        .port(port)
        .ca_file(&broker.ca)
        .connect_timeout(Duration::from_secs(5))
        .reconnect(Some(Reconnect::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
        )))
}

/// Awaits `future`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// The next message, bounded.
pub async fn next_message(incoming: &mut Incoming) -> Message {
    within("a message", incoming.next_message())
        .await
        .expect("the client is still running")
}

/// The next event, bounded.
pub async fn next_event(incoming: &mut Incoming) -> Event {
    within("an event", incoming.recv())
        .await
        .expect("the client is still running")
}
