//! The task behind a [`Client`](super::Client): it owns the [`Session`] and the lanes of
//! the current connection, turns commands into packets, packets into events, sends
//! PINGREQs, and reconnects with backoff when the connection is lost.
//!
//! ```text
//!            install(link)                         connection lost (retryable)
//!   start ───────────────► Serving ─────────────────────────────► Reconnecting ──┐
//!                            │  ▲          dial ok: install(link)      │  backoff │
//!        disconnect() /      │  └──────────────────────────────────────┘  ◄──────┘
//!        handles dropped     ▼                                 fatal / gave up / disconnect()
//!                          Closed ◄────────────────────────────────────┘
//! ```
//!
//! The driver never awaits network IO while serving: lanes write and read in their own
//! tasks, so a slow stream delays neither commands nor keep-alive.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::dial::Link;
use super::error::ClientError;
use super::lane::{Frame, Lane, LaneEvent, LaneId};
use super::options::{ClientOptions, Reconnect, StreamMode};
use super::session::{Done, OutMessage, Route, Session};
use super::{Event, Message, Shared, StreamKey};
use crate::protocol::codec::{self, Decoder};
use crate::protocol::{Disconnect, Packet, Publish, ReasonCode, SubscriptionOptions, TopicFilter};

/// How long a graceful disconnect waits for the broker to close its side.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The data stream publishes share over multi-stream QUIC when the caller names none.
const PUBLISH_STREAM: &str = "publish";

/// What a [`Client`](super::Client) handle asks of the driver.
// Publish is the common command and is moved once; boxing it would add an allocation each.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    Publish {
        message: OutMessage,
        stream: Option<StreamKey>,
        done: Done<()>,
    },
    Subscribe {
        filters: Vec<(TopicFilter, SubscriptionOptions)>,
        stream: Option<StreamKey>,
        done: Done<Vec<ReasonCode>>,
    },
    Unsubscribe {
        filters: Vec<TopicFilter>,
        done: Done<Vec<ReasonCode>>,
    },
    Disconnect {
        done: Done<()>,
    },
}

pub(crate) struct Driver {
    options: ClientOptions,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    events: EventQueue,
    session: Session,
    lane_tx: mpsc::Sender<LaneEvent>,
    lane_rx: mpsc::Receiver<LaneEvent>,
    next_lane: u64,
    scratch: BytesMut,
    conn: Option<Conn>,
    noise: u64,
}

/// The current connection.
struct Conn {
    quic: Option<quinn::Connection>,
    lanes: HashMap<Route, Lane>,
    routes: HashMap<LaneId, Route>,
    control: LaneId,
    keep_alive: Option<Duration>,
    /// Last write on the control lane (the one that carries PINGREQ).
    last_sent: Instant,
    ping_sent: Option<Instant>,
}

impl Conn {
    fn deadline(&self) -> Option<Instant> {
        let keep_alive = self.keep_alive?;
        Some(match self.ping_sent {
            Some(sent) => sent + keep_alive,
            None => self.last_sent + keep_alive,
        })
    }
}

enum End {
    /// Disconnected on purpose; every pending operation has been answered.
    Closed,
    Lost(ClientError),
}

impl Driver {
    pub fn new(
        options: ClientOptions,
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
    ) -> Driver {
        let (lane_tx, lane_rx) = mpsc::channel(256);
        let session = Session::new(options.version, options.max_inflight);
        let limit = options.incoming_capacity;
        Driver {
            options,
            shared,
            commands,
            events: EventQueue {
                tx: events,
                backlog: VecDeque::new(),
                limit,
                closed: false,
            },
            session,
            lane_tx,
            lane_rx,
            next_lane: 0,
            scratch: BytesMut::new(),
            conn: None,
            noise: seed(),
        }
    }

    /// Installs the first connection (so the handle sees its CONNACK at once) and spawns
    /// the driver.
    pub fn start(mut self, link: Link) {
        self.install(link);
        tokio::spawn(self.run());
    }

    async fn run(mut self) {
        loop {
            let error = match self.serve().await {
                End::Closed => break,
                End::Lost(error) => error,
            };
            self.teardown();
            let policy = self.options.reconnect.filter(|_| error.is_retryable());
            tracing::info!(%error, reconnecting = policy.is_some(), "MQTT connection lost");
            self.events.push(Event::ConnectionLost {
                error: error.clone(),
                reconnecting: policy.is_some(),
            });
            let Some(policy) = policy else {
                self.session.fail_all(&error);
                break;
            };
            match self.reconnect(policy).await {
                Ok(link) => {
                    let session_present = link.connack.session_present;
                    self.install(link);
                    self.events.push(Event::Reconnected { session_present });
                }
                Err(None) => break,
                Err(Some(error)) => {
                    tracing::warn!(%error, "giving up reconnecting");
                    self.events.push(Event::ConnectionLost {
                        error: error.clone(),
                        reconnecting: false,
                    });
                    self.session.fail_all(&error);
                    break;
                }
            }
        }
        self.events.drain().await;
    }

    /// Serves one connection until it ends.
    async fn serve(&mut self) -> End {
        loop {
            let deadline = self.conn.as_ref().and_then(Conn::deadline);
            let reading = !self.events.is_full();
            let timer = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Disconnect { done }) => {
                        self.close().await;
                        let _ = done.send(Ok(()));
                        return End::Closed;
                    }
                    Some(command) => self.on_command(command),
                    None => {
                        self.close().await;
                        return End::Closed;
                    }
                },
                event = self.lane_rx.recv(), if reading => {
                    if let Some(event) = event {
                        if let Err(error) = self.on_lane_event(event) {
                            return End::Lost(error);
                        }
                    }
                }
                () = self.events.flush_one(), if self.events.has_backlog() => {}
                () = timer => {
                    if let Err(error) = self.on_timer(reading) {
                        return End::Lost(error);
                    }
                }
            }
            self.flush();
        }
    }

    /// Backoff and dial until a connection is up. `Err(None)`: the client was closed
    /// meanwhile; `Err(Some(e))`: a fatal error or the attempts ran out.
    async fn reconnect(&mut self, policy: Reconnect) -> Result<Link, Option<ClientError>> {
        let mut attempt = 0u32;
        loop {
            let delay = policy.delay(attempt, self.next_noise());
            if !self.wait_offline(delay).await {
                return Err(None);
            }
            let clean_start = !self.options.session_outlives_connection();
            let client_id = self.client_id();
            let connect = self
                .options
                .connect_packet(&client_id, clean_start)
                .map_err(Some)?;
            let dialer = Arc::clone(&self.shared.dialer);
            let dial = async move { dialer.dial(&connect).await };
            tokio::pin!(dial);
            let result = loop {
                tokio::select! {
                    result = &mut dial => break result,
                    command = self.commands.recv() => {
                        if !self.on_offline_command(command) {
                            return Err(None);
                        }
                    }
                    () = self.events.flush_one(), if self.events.has_backlog() => {}
                }
            };
            match result {
                Ok(link) => return Ok(link),
                Err(error) => {
                    attempt = attempt.saturating_add(1);
                    tracing::info!(%error, attempt, "reconnect attempt failed");
                    if !error.is_retryable() {
                        return Err(Some(error));
                    }
                    if policy.attempts_limit().is_some_and(|max| attempt >= max) {
                        return Err(Some(ClientError::GaveUp {
                            attempts: attempt,
                            last: Box::new(error),
                        }));
                    }
                }
            }
        }
    }

    /// Waits `delay` while queueing commands; false if the client was closed meanwhile.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                command = self.commands.recv() => {
                    if !self.on_offline_command(command) {
                        return false;
                    }
                }
                () = self.events.flush_one(), if self.events.has_backlog() => {}
            }
        }
    }

    /// A command while there is no connection; false when it ends the client.
    fn on_offline_command(&mut self, command: Option<Command>) -> bool {
        match command {
            Some(Command::Disconnect { done }) => {
                self.session.fail_all(&ClientError::Closed);
                let _ = done.send(Ok(()));
                false
            }
            None => {
                self.session.fail_all(&ClientError::Closed);
                false
            }
            Some(command) => {
                self.on_command(command);
                true
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Publish {
                message,
                stream,
                done,
            } => {
                let route = self.route(stream, || StreamKey::new(PUBLISH_STREAM));
                self.session.publish(message, route, done);
            }
            Command::Subscribe {
                filters,
                stream,
                done,
            } => {
                let first = filters.first().map(|(f, _)| f.as_str().to_string());
                let route = self.route(stream, || {
                    StreamKey::new(first.as_deref().unwrap_or(PUBLISH_STREAM))
                });
                self.session.subscribe(filters, route, done);
            }
            Command::Unsubscribe { filters, done } => {
                let known = filters.first().and_then(|f| self.session.route_of(f));
                let route = match known {
                    Some(route) => route,
                    None => self.route(None, || StreamKey::new(PUBLISH_STREAM)),
                };
                self.session.unsubscribe(filters, route, done);
            }
            Command::Disconnect { done } => {
                // Handled by the callers; answering keeps the contract if one slips by.
                let _ = done.send(Ok(()));
            }
        }
    }

    /// The lane a request goes on: the only stream, or in multi-stream mode the named
    /// data stream (`default` when unnamed).
    fn route(&self, stream: Option<StreamKey>, default: impl FnOnce() -> StreamKey) -> Route {
        match self.options.streams {
            StreamMode::Multi if self.options.transport == super::Transport::Quic => {
                Some(stream.unwrap_or_else(default))
            }
            _ => None,
        }
    }

    fn on_lane_event(&mut self, event: LaneEvent) -> Result<(), ClientError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        match event {
            LaneEvent::Packet(id, packet) => {
                // Events from a lane of an earlier connection are stale.
                let Some(route) = conn.routes.get(&id).cloned() else {
                    return Ok(());
                };
                match packet {
                    Packet::PingResp => conn.ping_sent = None,
                    Packet::Disconnect(d) => {
                        return Err(ClientError::ServerDisconnect {
                            reason: d.reason,
                            reason_string: d.properties.reason_string.map(|s| s.to_string()),
                        })
                    }
                    packet => {
                        if let Some(publish) = self.session.handle(packet, &route)? {
                            self.events.push(Event::Message(message(publish, route)));
                        }
                    }
                }
                Ok(())
            }
            LaneEvent::Ended(id, cause) => {
                let Some(route) = conn.routes.remove(&id) else {
                    return Ok(());
                };
                if id == conn.control {
                    return Err(cause.unwrap_or(ClientError::ConnectionClosed));
                }
                if let Some(reason) = conn.quic.as_ref().and_then(quinn::Connection::close_reason) {
                    return Err(ClientError::QuicLost(reason));
                }
                tracing::info!(stream = ?route, cause = ?cause, "data stream ended; resending what was in flight on it");
                conn.lanes.remove(&route);
                self.session.on_route_lost(&route);
                Ok(())
            }
        }
    }

    fn on_timer(&mut self, reading: bool) -> Result<(), ClientError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let Some(keep_alive) = conn.keep_alive else {
            return Ok(());
        };
        let now = Instant::now();
        match conn.ping_sent {
            Some(sent) if now >= sent + keep_alive => {
                if !reading {
                    // Not reading (the application is behind): a PINGRESP may be waiting
                    // unread, so silence proves nothing.
                    conn.ping_sent = Some(now);
                    return Ok(());
                }
                Err(ClientError::KeepAliveTimeout(keep_alive))
            }
            Some(_) => Ok(()),
            None if now >= conn.last_sent + keep_alive => {
                self.send(None, Packet::PingReq, None);
                if let Some(conn) = self.conn.as_mut() {
                    conn.ping_sent = Some(now);
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Hands every packet the session has ready to its lane.
    fn flush(&mut self) {
        while let Some(out) = self.session.poll_outgoing() {
            self.send(out.route, out.packet, out.written);
        }
    }

    fn send(&mut self, route: Route, packet: Packet, written: Option<Done<()>>) {
        let Some(conn) = self.conn.as_mut() else {
            if let Some(done) = written {
                let _ = done.send(Err(ClientError::NotWritten));
            }
            return;
        };
        let encoded = match codec::encode(&packet, self.options.version, &mut self.scratch) {
            Ok(encoded) => encoded,
            Err(err) => {
                tracing::error!(error = %err, packet = ?packet.packet_type(), "cannot encode");
                if let Some(done) = written {
                    let _ = done.send(Err(ClientError::Encode(err)));
                }
                return;
            }
        };
        if !conn.lanes.contains_key(&route) {
            let (Some(quic), Some(key)) = (&conn.quic, &route) else {
                tracing::error!(stream = ?route, "no lane for this route");
                return;
            };
            self.next_lane += 1;
            let id = LaneId(self.next_lane);
            tracing::debug!(stream = %key, "opening a data stream");
            let decoder = Decoder::with_version(self.options.version, self.options.max_packet_size);
            let lane = Lane::spawn_quic(id, quic.clone(), decoder, self.lane_tx.clone());
            conn.routes.insert(id, route.clone());
            conn.lanes.insert(route.clone(), lane);
        }
        if let Some(lane) = conn.lanes.get(&route) {
            if lane.id == conn.control {
                conn.last_sent = Instant::now();
            }
            lane.send(Frame { encoded, written });
        }
    }

    fn install(&mut self, link: Link) {
        let connack = link.connack;
        self.next_lane += 1;
        let control = LaneId(self.next_lane);
        let decoder = Decoder::with_version(self.options.version, self.options.max_packet_size);
        let lane = Lane::spawn(
            control,
            link.read,
            link.write,
            link.leftover,
            decoder,
            self.lane_tx.clone(),
        );
        let keep_alive_secs = connack
            .properties
            .server_keep_alive
            .map_or(self.options.keep_alive.as_secs(), u64::from);
        if let Some(id) = &connack.properties.assigned_client_identifier {
            *self
                .shared
                .client_id
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = id.to_string();
        }
        self.shared.connections.fetch_add(1, Ordering::Relaxed);
        self.shared
            .session_present
            .store(connack.session_present, Ordering::Relaxed);
        self.conn = Some(Conn {
            quic: link.quic,
            lanes: HashMap::from([(None, lane)]),
            routes: HashMap::from([(control, None)]),
            control,
            keep_alive: (keep_alive_secs > 0).then(|| Duration::from_secs(keep_alive_secs)),
            last_sent: Instant::now(),
            ping_sent: None,
        });
        self.session.on_connected(&connack, u32::MAX);
        self.flush();
    }

    /// Drops the connection (its lanes and their tasks) without ceremony.
    fn teardown(&mut self) {
        if let Some(conn) = self.conn.take() {
            if let Some(quic) = &conn.quic {
                quic.close(0u32.into(), b"connection lost");
            }
        }
        self.session.on_disconnected();
    }

    /// DISCONNECT on the control lane, end our side, wait (bounded) for the broker to end
    /// its side, then close. Pending operations fail with [`ClientError::Closed`].
    async fn close(&mut self) {
        self.flush();
        self.send(
            None,
            Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
            None,
        );
        if let Some(conn) = self.conn.take() {
            if let Some(lane) = conn.lanes.get(&None) {
                lane.finish();
            }
            let control = conn.control;
            let lane_rx = &mut self.lane_rx;
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                while let Some(event) = lane_rx.recv().await {
                    if matches!(event, LaneEvent::Ended(id, _) if id == control) {
                        return;
                    }
                }
            })
            .await;
            if let Some(quic) = &conn.quic {
                quic.close(0u32.into(), b"");
                if let Some(endpoint) = self.shared.dialer.endpoint() {
                    let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
                }
            }
        }
        self.session.fail_all(&ClientError::Closed);
    }

    fn client_id(&self) -> String {
        self.shared
            .client_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// xorshift64: jitter for the backoff, no dependency needed.
    fn next_noise(&mut self) -> u64 {
        let mut x = self.noise;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.noise = x;
        x
    }
}

/// Events on their way to [`Incoming`](super::Incoming): a bounded channel, plus a backlog
/// the driver keeps when the channel is full (and stops reading the network while the
/// backlog is at its limit).
struct EventQueue {
    tx: mpsc::Sender<Event>,
    backlog: VecDeque<Event>,
    limit: usize,
    /// The application dropped `Incoming`: events are discarded.
    closed: bool,
}

impl EventQueue {
    fn push(&mut self, event: Event) {
        if self.closed {
            return;
        }
        if !self.backlog.is_empty() {
            self.backlog.push_back(event);
            return;
        }
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => self.backlog.push_back(event),
            Err(mpsc::error::TrySendError::Closed(_)) => self.closed = true,
        }
    }

    fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    fn is_full(&self) -> bool {
        self.backlog.len() >= self.limit
    }

    /// Moves one backlog event into the channel once there is room. Cancel-safe: a
    /// reserved slot is only used once the event is taken.
    async fn flush_one(&mut self) {
        match self.tx.reserve().await {
            Ok(permit) => {
                if let Some(event) = self.backlog.pop_front() {
                    permit.send(event);
                }
            }
            Err(_) => {
                self.closed = true;
                self.backlog.clear();
            }
        }
    }

    /// The client is ending: hand over what is left (the application may still read it).
    async fn drain(&mut self) {
        while let Some(event) = self.backlog.pop_front() {
            if self.tx.send(event).await.is_err() {
                return;
            }
        }
    }
}

fn message(publish: Publish, stream: Route) -> Message {
    Message {
        qos: publish.qos(),
        topic: publish.topic,
        payload: publish.payload,
        retain: publish.retain,
        dup: publish.dup,
        properties: publish.properties,
        stream,
    }
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x9E37_79B9_7F4A_7C15);
    hasher.finish() | 1
}
