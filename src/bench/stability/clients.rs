//! The client population of a run: how a bench client connects over each transport, and
//! the publisher and subscriber loops that feed the [`Ledger`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::ledger::Ledger;
use super::TransportKind;
use crate::client::{
    Client, ClientError, ClientOptions, Event, Incoming, Reconnect, StreamKey, StreamMode,
    Transport,
};
use crate::fault::schedule::Rng;
use crate::protocol::QoS;

/// How bench clients reach and trust the broker.
#[derive(Debug, Clone)]
pub struct Dial {
    pub transport: TransportKind,
    pub ca: PathBuf,
    pub server_name: String,
    /// MQTT keep-alive: after an unnoticed address change, a client that only receives
    /// is silent for up to this long (until its next PINGREQ).
    pub keep_alive: Duration,
}

impl Dial {
    /// Options for a client `id` connecting to `addr` (the broker or a relay in front).
    pub fn options(&self, addr: SocketAddr, id: &str) -> ClientOptions {
        let options = ClientOptions::new(addr.ip().to_string())
            .port(addr.port())
            .ca_file(&self.ca)
            .server_name(&self.server_name)
            .client_id(id)
            .persistent_session(Duration::from_secs(300))
            .keep_alive(self.keep_alive)
            .reconnect(Some(Reconnect::new(
                Duration::from_millis(100),
                Duration::from_secs(2),
            )))
            .connect_timeout(Duration::from_secs(10))
            .max_inflight(1024)
            .incoming_capacity(4096);
        match self.transport {
            TransportKind::Tls => options.transport(Transport::Tls),
            TransportKind::QuicSingle => options
                .transport(Transport::Quic)
                .streams(StreamMode::Single),
            TransportKind::QuicMulti => options
                .transport(Transport::Quic)
                .streams(StreamMode::Multi),
        }
    }
}

/// How a publisher paces its messages.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Evenly, this many per second.
    Rate(f64),
    /// Every `every`, a burst of `min..=max` messages published at once.
    Bursts {
        every: Duration,
        min: u64,
        max: u64,
        seed: u64,
    },
}

/// One publishing client.
pub struct Publisher {
    pub id: u32,
    pub client: Client,
    pub topic: String,
    pub qos: QoS,
    pub payload_len: usize,
    pub pace: Pace,
}

/// What a publisher left behind.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishOutcome {
    /// Publishes still unanswered at the drain deadline.
    pub pending: u64,
}

impl Publisher {
    /// Publishes until `until` (and at most `max_messages`), then waits for the answers
    /// until `drain_until`. Each publish runs in its own task, so a slow acknowledgement
    /// never slows the pace.
    pub async fn run(
        self,
        ledger: Arc<Ledger>,
        until: Instant,
        drain_until: Instant,
        max_messages: u64,
    ) -> PublishOutcome {
        let mut inflight = JoinSet::new();
        let start = Instant::now();
        let mut seq = 0u64;
        let mut tick = 0u64;
        let mut rng = match self.pace {
            Pace::Bursts { seed, .. } => Rng::new(seed),
            Pace::Rate(_) => Rng::new(0),
        };
        while seq < max_messages {
            let (at, count) = match self.pace {
                Pace::Rate(hz) => (
                    start + Duration::from_secs_f64(tick as f64 / hz.max(0.001)),
                    1,
                ),
                Pace::Bursts {
                    every, min, max, ..
                } => (
                    start + every.saturating_mul(tick as u32),
                    min + rng.below(max.saturating_sub(min) + 1),
                ),
            };
            if at >= until {
                break;
            }
            tokio::time::sleep_until(at).await;
            tick += 1;
            for _ in 0..count.min(max_messages - seq) {
                let stamp = ledger.stamp(self.id, seq);
                let payload = stamp.payload(self.payload_len);
                let client = self.client.clone();
                let topic = self.topic.clone();
                let qos = self.qos;
                let ledger = Arc::clone(&ledger);
                let (id, n) = (self.id, seq);
                let mut publish = Box::pin(async move {
                    match client.publish(&topic, payload, qos, false).await {
                        Ok(()) => ledger.on_acked(id, n),
                        Err(_) => ledger.on_failed(id),
                    }
                });
                // One poll hands the PUBLISH to the client (or queues for its command
                // channel, whose waiters are served in order), so messages leave in
                // sequence order; the task then only waits for the acknowledgement.
                if poll_once(publish.as_mut()).await.is_pending() {
                    inflight.spawn(publish);
                }
                seq += 1;
            }
            // Reap what has finished, so the set stays small.
            while inflight.try_join_next().is_some() {}
        }
        let drained = tokio::time::timeout_at(drain_until, async {
            while inflight.join_next().await.is_some() {}
        })
        .await;
        let pending = if drained.is_ok() {
            0
        } else {
            inflight.len() as u64
        };
        inflight.abort_all();
        PublishOutcome { pending }
    }
}

/// Reads a subscriber's events into the ledger until `stop` turns true or the client ends.
pub async fn subscribe_loop(
    id: u32,
    mut incoming: Incoming,
    ledger: Arc<Ledger>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            event = incoming.recv() => match event {
                Some(Event::Message(m)) => ledger.on_message(id, &m, Instant::now()),
                Some(Event::ConnectionLost { .. }) => ledger.on_connection_lost(id),
                Some(Event::Reconnected { .. }) => {}
                None => return,
            },
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

/// Subscribes `client` to `filter`, on the data stream `stream` when it is named (over
/// multi-stream QUIC each filter gets its own stream either way).
pub async fn subscribe(
    client: &Client,
    filter: &str,
    stream: Option<&str>,
) -> Result<QoS, ClientError> {
    match stream {
        Some(name) => {
            client
                .subscribe_on(StreamKey::new(name), filter, QoS::ExactlyOnce)
                .await
        }
        None => client.subscribe(filter, QoS::ExactlyOnce).await,
    }
}

/// Disconnects every client, all at once, each bounded.
pub async fn disconnect_all(clients: Vec<Client>) {
    let mut set = JoinSet::new();
    for client in clients {
        set.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(3), client.disconnect()).await;
        });
    }
    while set.join_next().await.is_some() {}
}

/// Polls `future` once.
async fn poll_once<F: Future>(mut future: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
}
