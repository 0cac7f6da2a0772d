//! An async MQTT 3.1.1/5.0 client over TCP, TLS and QUIC (single and multi-stream), used by
//! `twinmq pub|sub` and the tests, and for anyone who wants a QUIC MQTT client.
//!
//! ```text
//!  Client (cloneable handle) ──Command──► driver task ◄──LaneEvent── lanes (one per stream)
//!  publish / subscribe / ...              │ Session (sans IO): packet ids,   reader + writer
//!  ◄── result when the QoS flow is done   │ QoS flows, resend on resume      tasks each
//!  Incoming ◄──────── Event ──────────────┘ keep-alive, reconnect + backoff
//! ```
//!
//! - [`Client::connect`] dials once (fails fast with a typed [`ClientError`]: refused,
//!   unknown CA, wrong name, ALPN mismatch, CONNACK refusal) and returns the handle and
//!   the [`Incoming`] stream of [`Event`]s.
//! - [`Client::publish`] completes when the QoS flow does: written (QoS 0), PUBACK (QoS 1),
//!   PUBCOMP (QoS 2). Publishes made while reconnecting wait and go out on the next
//!   connection; unacknowledged ones are resent with DUP when the session resumes.
//! - Over multi-stream QUIC the caller picks a stream with a [`StreamKey`]
//!   ([`Client::subscribe_on`], [`Client::publish_on`]); without one, each topic filter
//!   gets its own data stream and publishes share one. The control stream carries CONNECT,
//!   PINGREQ and DISCONNECT.
//! - [`Client::rebind`] moves a QUIC client to a new local UDP port mid-session, as a phone
//!   changing networks does; the session continues without a new CONNECT.
//!
//! Session state (in-flight messages, QoS 2 ids) lives in memory: it survives reconnects,
//! not the process.
//!
//! ```no_run
//! # async fn demo() -> Result<(), twinmq::client::ClientError> {
//! use twinmq::client::{Client, ClientOptions, Event, Transport};
//! use twinmq::protocol::QoS;
//!
//! let options = ClientOptions::new("localhost")
//!     .transport(Transport::Quic)
//!     .ca_file("ca.pem");
//! let (client, mut incoming) = Client::connect(options).await?;
//! client.subscribe("sensors/#", QoS::AtLeastOnce).await?;
//! client.publish("sensors/1", "21.5", QoS::ExactlyOnce, false).await?;
//! while let Some(event) = incoming.recv().await {
//!     if let Event::Message(m) = event {
//!         println!("{} {:?}", m.topic, m.payload);
//!         break;
//!     }
//! }
//! client.disconnect().await
//! # }
//! ```

// Network input must never panic the client: no indexing, unwrap or panic outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable
    )
)]

pub mod cli;
mod dial;
mod driver;
mod error;
mod lane;
mod options;
mod session;
mod tls;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

pub use error::{CertificateProblem, ClientError};
pub use options::{ClientOptions, Reconnect, StreamMode, Transport};

use crate::protocol::{Properties, QoS, SubscriptionOptions, TopicFilter, TopicName};
use dial::Dialer;
use driver::{Command, Driver};
use session::OutMessage;

/// Names a data stream of a multi-stream QUIC connection. Packets with the same key share
/// a stream (and its ordering); different keys never block each other. Ignored over TCP,
/// TLS and single-stream QUIC.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StreamKey(Arc<str>);

impl StreamKey {
    pub fn new(name: impl AsRef<str>) -> StreamKey {
        StreamKey(Arc::from(name.as_ref()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for StreamKey {
    fn from(name: &str) -> StreamKey {
        StreamKey::new(name)
    }
}

impl fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The broker may have sent it before (QoS 1 can arrive twice; QoS 2 never does).
    pub dup: bool,
    pub properties: Properties,
    /// The data stream it came on over multi-stream QUIC; `None` for the only stream (or
    /// the control stream).
    pub stream: Option<StreamKey>,
}

/// What [`Incoming`] yields.
// Messages are the common case; boxing them would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Event {
    Message(Message),
    /// The connection was lost. With `reconnecting`, the client is trying again (with
    /// backoff); otherwise it has ended and the stream of events ends after this.
    ConnectionLost {
        error: ClientError,
        reconnecting: bool,
    },
    /// A new connection is up after a loss.
    Reconnected {
        session_present: bool,
    },
}

/// The events of one client, in order. Read it promptly or drop it: once
/// [`ClientOptions::incoming_capacity`] events are waiting the client stops reading from
/// the network, so the broker's messages (and acks for our own publishes) wait too.
/// Dropped, messages are acknowledged and discarded.
pub struct Incoming {
    rx: mpsc::Receiver<Event>,
}

impl Incoming {
    /// The next event; `None` once the client has ended. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next message, skipping connection events; `None` once the client has ended.
    /// Cancel-safe.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            if let Event::Message(m) = self.rx.recv().await? {
                return Some(m);
            }
        }
    }
}

/// `filter` as a topic filter, or the client's error naming it.
fn parse_filter(filter: &str) -> Result<TopicFilter, ClientError> {
    TopicFilter::new(filter).map_err(|source| ClientError::InvalidTopic {
        topic: filter.to_string(),
        source,
    })
}

/// State the driver shares with the handles.
struct Shared {
    connections: AtomicU64,
    session_present: AtomicBool,
    client_id: Mutex<String>,
    dialer: Arc<Dialer>,
}

/// A handle on a connected client; clones share the connection. Every async method is
/// cancel-safe in this sense: dropping its future never corrupts the session, but once the
/// request was handed to the driver (which happens before the first wait on the network)
/// it still goes out.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.client_id())
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects (transport, TLS, CONNECT/CONNACK) under the connect timeout, without retry:
    /// the first failure is returned as it is. Reconnection with backoff applies only to
    /// connections lost later.
    pub async fn connect(options: ClientOptions) -> Result<(Client, Incoming), ClientError> {
        let dialer = Arc::new(Dialer::new(&options)?);
        let client_id = options
            .client_id
            .clone()
            .unwrap_or_else(generated_client_id);
        let connect = options.connect_packet(&client_id, options.clean_start)?;
        let link = dialer.dial(&connect).await?;
        let client_id = link
            .connack
            .properties
            .assigned_client_identifier
            .as_ref()
            .map_or(client_id, |id| id.to_string());
        let shared = Arc::new(Shared {
            connections: AtomicU64::new(0),
            session_present: AtomicBool::new(false),
            client_id: Mutex::new(client_id),
            dialer: Arc::clone(&dialer),
        });
        let (commands, command_rx) = mpsc::channel(64);
        let (events, event_rx) = mpsc::channel(options.incoming_capacity);
        let driver = Driver::new(options, Arc::clone(&shared), command_rx, events);
        driver.start(link);
        Ok((Client { commands, shared }, Incoming { rx: event_rx }))
    }

    /// Publishes and waits for the QoS flow to complete: written (QoS 0), PUBACK (QoS 1),
    /// PUBCOMP (QoS 2). A v5 PUBACK/PUBREC with a failure code is
    /// [`ClientError::PublishRefused`]. Over multi-stream QUIC it goes on the shared
    /// publish stream.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<(), ClientError> {
        self.publish_inner(None, topic, payload.into(), qos, retain)
            .await
    }

    /// [`Client::publish`] on the data stream `stream` (multi-stream QUIC).
    pub async fn publish_on(
        &self,
        stream: StreamKey,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<(), ClientError> {
        self.publish_inner(Some(stream), topic, payload.into(), qos, retain)
            .await
    }

    /// Subscribes and returns the QoS the broker granted; a refusal is
    /// [`ClientError::SubscribeRefused`]. Over multi-stream QUIC the filter gets its own
    /// data stream, named after it.
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<QoS, ClientError> {
        self.subscribe_with(None, filter, SubscriptionOptions::qos(qos))
            .await
    }

    /// [`Client::subscribe`] on the data stream `stream`: the broker delivers the matching
    /// messages on that stream.
    pub async fn subscribe_on(
        &self,
        stream: StreamKey,
        filter: &str,
        qos: QoS,
    ) -> Result<QoS, ClientError> {
        self.subscribe_with(Some(stream), filter, SubscriptionOptions::qos(qos))
            .await
    }

    /// Subscribes with every v5 option (no local, retain as published, retain handling).
    pub async fn subscribe_with(
        &self,
        stream: Option<StreamKey>,
        filter: &str,
        options: SubscriptionOptions,
    ) -> Result<QoS, ClientError> {
        let topic_filter = parse_filter(filter)?;
        let (done, result) = oneshot::channel();
        self.send(Command::Subscribe {
            filters: vec![(topic_filter, options)],
            stream,
            done,
        })
        .await?;
        let reasons = result.await.map_err(|_| ClientError::Closed)??;
        let reason = reasons
            .first()
            .copied()
            .ok_or_else(|| ClientError::Protocol("SUBACK without a reason code".into()))?;
        reason
            .granted_qos()
            .ok_or_else(|| ClientError::SubscribeRefused {
                filter: filter.to_string(),
                reason,
            })
    }

    /// Unsubscribes (on the stream the filter was subscribed on).
    pub async fn unsubscribe(&self, filter: &str) -> Result<(), ClientError> {
        let topic_filter = parse_filter(filter)?;
        let (done, result) = oneshot::channel();
        self.send(Command::Unsubscribe {
            filters: vec![topic_filter],
            done,
        })
        .await?;
        let reasons = result.await.map_err(|_| ClientError::Closed)??;
        match reasons.first() {
            Some(reason) if reason.is_error() => Err(ClientError::SubscribeRefused {
                filter: filter.to_string(),
                reason: *reason,
            }),
            _ => Ok(()),
        }
    }

    /// Sends DISCONNECT, waits (briefly, bounded) for the broker to close, and ends the
    /// client: operations still pending fail with [`ClientError::Closed`], and
    /// [`Incoming`] ends. A persistent session stays on the broker.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        let (done, result) = oneshot::channel();
        if self.send(Command::Disconnect { done }).await.is_err() {
            return Ok(());
        }
        result.await.unwrap_or(Ok(()))
    }

    /// QUIC only: moves the client to a new local UDP socket (new port) mid-session, like
    /// a device changing networks; the connection migrates, no new CONNECT is sent.
    /// Returns the new local address.
    pub fn rebind(&self) -> Result<SocketAddr, ClientError> {
        self.shared.dialer.rebind()
    }

    /// The local UDP address of a QUIC client; `None` over TCP and TLS.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.dialer.endpoint()?.local_addr().ok()
    }

    /// How many connections (CONNACKs) this client has had: 1 until a reconnection.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Whether the broker had a session for us at the latest CONNACK.
    pub fn session_present(&self) -> bool {
        self.shared.session_present.load(Ordering::Relaxed)
    }

    /// The client id in use (the broker's assigned one if it assigned one).
    pub fn client_id(&self) -> String {
        self.shared
            .client_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn publish_inner(
        &self,
        stream: Option<StreamKey>,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) -> Result<(), ClientError> {
        let topic_name = TopicName::new(topic).map_err(|source| ClientError::InvalidTopic {
            topic: topic.to_string(),
            source,
        })?;
        let (done, result) = oneshot::channel();
        let message = OutMessage {
            topic: topic_name,
            payload,
            qos,
            retain,
            properties: Properties::default(),
        };
        self.send(Command::Publish {
            message,
            stream,
            done,
        })
        .await?;
        match result.await {
            Ok(result) => result,
            // A QoS 0 frame dropped with its stream was never written.
            Err(_) if qos == QoS::AtMostOnce => Err(ClientError::NotWritten),
            // The driver ended without answering.
            Err(_) => Err(ClientError::Closed),
        }
    }

    async fn send(&self, command: Command) -> Result<(), ClientError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| ClientError::Closed)
    }
}

/// `twinmq-` and 16 hex digits, unique enough per process and moment.
fn generated_client_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    format!("twinmq-{:016x}", hasher.finish())
}
