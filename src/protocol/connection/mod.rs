//! The sans-IO state of one client connection, on the broker's side.
//!
//! Methods fall into four groups, as in quinn-proto's `Connection`:
//! - getters: [`Connection::version`], [`Connection::client_id`], [`Connection::is_closed`], ...
//! - inputs, each taking `now`: [`Connection::handle_bytes`],
//!   [`Connection::handle_completion`], [`Connection::handle_write_progress`],
//!   [`Connection::handle_timeout`], [`Connection::handle_transport_closed`];
//! - commands from the broker: [`Connection::accept_connect`],
//!   [`Connection::reject_connect`], [`Connection::accept_publish`],
//!   [`Connection::send_suback`], [`Connection::send_unsuback`], [`Connection::send_auth`],
//!   [`Connection::deliver`], [`Connection::disconnect`];
//! - outputs: [`Connection::poll_transmit`], [`Connection::poll_event`],
//!   [`Connection::poll_timeout`].
//!
//! A driver feeds inputs, then drains outputs in this order: events (the broker may answer
//! them with commands), transmits until `None`, and finally `poll_timeout` to arm its timer.
//! When [`Connection::is_closed`] is true and no transmit is outstanding, the driver closes
//! the transport and calls [`Connection::into_session`].
//!
//! Lifecycle:
//! ```text
//!  AwaitConnect ──CONNECT──► AwaitDecision ──accept_connect──► Established
//!       │                        │ reject_connect                    │ DISCONNECT, error,
//!       │ timeout, error          ▼                                   │ keep-alive, takeover
//!       └──────────────────► Closing (last frames flushing) ◄────────┘
//!                                 │ outbox empty, writer idle (or transport gone)
//!                                 ▼
//!                               Closed
//! ```

#[cfg(test)]
mod conservation;
mod inbound;
mod lanes;
mod outbound;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::codec::Decoder;
use super::error::{CloseReason, ConnectionError};
use super::frame::{FrameMeta, SendCompletion, Transmit, TransportFault};
use super::packet::{
    Auth, Connect, Disconnect, Packet, Publish, SubAck, Subscribe, UnsubAck, Unsubscribe, Will,
};
use super::session::{DropReason, QueueLimit, QueuePolicy, SessionState};
use super::types::{
    MqttString, PacketId, ProtocolVersion, QoS, ReasonCode, TopicFilter, TopicName,
};
use super::writer::CompletionError;
use lanes::Lane;

/// Limits and capabilities one connection enforces and advertises.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Largest packet accepted from the client (advertised in CONNACK).
    pub max_packet_size: u32,
    /// Inbound QoS 1/2 publishes the client may have unacknowledged (advertised).
    pub receive_maximum: u16,
    /// Cap on outbound QoS 1/2 messages in flight, whatever the client allows.
    pub max_inflight: u16,
    /// Messages queued for the client behind its window, and which goes when full.
    pub max_queued_messages: usize,
    pub queue_full_policy: QueuePolicy,
    /// Inbound topic aliases accepted (advertised; 0 turns them off).
    pub topic_alias_maximum: u16,
    /// Longest keep-alive allowed; a larger or zero request is replaced by this value via
    /// the v5 server keep alive property.
    pub max_keep_alive: Option<u16>,
    pub maximum_qos: QoS,
    pub retain_available: bool,
    /// Time allowed from the first byte to CONNECT.
    pub connect_timeout: Duration,
    /// A write that makes no progress for this long is a stalled transport.
    pub send_timeout: Duration,
    /// Coalescing limit: frames ready together are written in batches of about this size.
    pub max_batch_bytes: usize,
    /// Stop decoding input while this many bytes wait to be written (backpressure).
    pub max_outbox_bytes: usize,
}

impl ConnectionConfig {
    pub fn queue_limit(&self) -> QueueLimit {
        QueueLimit {
            max: self.max_queued_messages,
            policy: self.queue_full_policy,
        }
    }
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_packet_size: 1024 * 1024,
            receive_maximum: 1024,
            max_inflight: 1024,
            max_queued_messages: 10_000,
            queue_full_policy: QueuePolicy::DropNew,
            topic_alias_maximum: 64,
            max_keep_alive: Some(3600),
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            connect_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            max_batch_bytes: 64 * 1024,
            max_outbox_bytes: 4 * 1024 * 1024,
        }
    }
}

/// The broker's answer to a CONNECT it accepts.
#[derive(Debug, Clone, Default)]
pub struct ConnectAccept {
    /// The resumed session (its flows are resent), or a new one.
    pub session: SessionState,
    pub session_present: bool,
    /// Set when the client sent an empty client id (v5).
    pub assigned_client_id: Option<MqttString>,
}

/// Something the broker must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A valid CONNECT: answer with `accept_connect` or `reject_connect`.
    Connect(Box<Connect>),
    /// An application message from the client. The topic alias is already resolved. QoS
    /// 1/2 carry an ack: call `accept_publish` once the message is safe.
    Publish {
        message: Publish,
        ack: Option<InboundAck>,
    },
    /// Answer with `send_suback`.
    Subscribe(Subscribe),
    /// Answer with `send_unsuback`.
    Unsubscribe(Unsubscribe),
    /// Enhanced authentication; answer with `send_auth` or `disconnect`.
    Auth(Auth),
    /// A message for the client was dropped instead of sent (a stored one also gets
    /// [`FlowStep::Finished`]).
    Dropped {
        topic: TopicName,
        qos: QoS,
        reason: DropReason,
    },
    /// A step of an outbound flow whose message is stored ([`Delivery::row`]).
    Flow(FlowStep),
    /// With [`Connection::record_releases`] on: the client released an inbound QoS 2
    /// packet id (PUBREL). Forget it in the store, then call
    /// [`Connection::release_recorded`]; the PUBCOMP waits for that.
    Released { packet_id: PacketId },
    /// The connection ended; emitted once.
    Closed(CloseReason),
}

/// What the store must learn of a stored outbound message, so that a restart resumes its
/// flow where it was: a QoS 2 message is never sent under a packet id the store does not
/// hold, and its PUBREL never leaves before the store knows the PUBREC came (else a restart
/// would send the PUBLISH again under an id the client has already forgotten, and it would
/// be delivered twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowStep {
    /// A QoS 2 message takes `packet_id`. Its PUBLISH waits for
    /// [`Connection::flow_recorded`].
    Sending { row: u64, packet_id: PacketId },
    /// The client's PUBREC came. The PUBREL waits for [`Connection::flow_recorded`].
    Received { row: u64, packet_id: PacketId },
    /// The flow ended (PUBACK, PUBCOMP, a refusing PUBREC) or the message was dropped:
    /// the row can go. Nothing waits for it.
    Finished { row: u64 },
}

/// The right to acknowledge one inbound QoS 1/2 publish. Not `Clone`: one ack per publish.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an inbound QoS 1/2 publish waits for accept_publish"]
pub struct InboundAck {
    connection: u64,
    packet_id: PacketId,
    qos: QoS,
    /// The lane the publish came on: its ack goes back there.
    lane: LaneId,
}

impl InboundAck {
    pub fn packet_id(&self) -> PacketId {
        self.packet_id
    }

    pub fn qos(&self) -> QoS {
        self.qos
    }
}

/// What happened to a message handed to [`Connection::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliverOutcome {
    /// Encoded for sending, or queued behind the window.
    Accepted,
    Dropped(DropReason),
}

/// What the broker needs when a connection has ended.
#[derive(Debug)]
pub struct CloseReport {
    pub reason: CloseReason,
    /// The will to publish (the broker applies the will delay), if the close calls for it.
    pub will: Option<Will>,
    /// Session expiry in seconds as it stands at close (DISCONNECT may have changed it).
    pub session_expiry: u32,
    /// Frames handed to the transport whose completion never came.
    pub abandoned: Vec<FrameMeta>,
    /// Frames encoded but never handed to the transport.
    pub unsent: usize,
}

#[derive(Debug)]
enum State {
    AwaitConnect { deadline: Instant },
    AwaitDecision,
    Established,
    Closing(CloseReason),
    Closed,
}

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// One client connection. See the module docs for the polling order.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    config: ConnectionConfig,
    state: State,
    decoder: Decoder,
    scratch: BytesMut,
    /// The control lane, and data lanes on multi-stream QUIC.
    lanes: BTreeMap<LaneId, Lane>,
    /// Bytes waiting in every lane's outbox.
    outbox_bytes: usize,
    next_ticket: u64,
    /// Writes of data lanes that died, by ticket: their late completion is accepted once
    /// and ignored (what they held was rescued); the rest are reported at close.
    abandoned: HashMap<u64, Vec<FrameMeta>>,
    /// Latest first-to-last: deliveries for a filter go to the lane its SUBSCRIBE came on.
    sub_lanes: Vec<(TopicFilter, LaneId)>,
    /// Replies the broker decides later (SUBACK, UNSUBACK, a PUBCOMP waiting for
    /// `release_recorded`), by packet id: the lane their request came on. The client's
    /// packet ids are one space, so they never collide.
    reply_lanes: HashMap<PacketId, LaneId>,
    /// The lane of the packet being handled: replies go back on it.
    current_lane: LaneId,
    lane_resets: VecDeque<LaneId>,
    /// Where the round robin over lanes' transmits resumes.
    transmit_cursor: LaneId,
    events: VecDeque<Event>,
    session: SessionState,
    /// The CONNECT as accepted; `None` before.
    connect: Option<Box<Connect>>,
    version: Option<ProtocolVersion>,
    /// Keep-alive in force (seconds, 0 = off) and when it runs out.
    keep_alive: u16,
    keep_alive_deadline: Option<Instant>,
    session_expiry: u32,
    /// Peer limits, from CONNECT.
    peer_max_packet_size: u32,
    peer_receive_maximum: u16,
    peer_topic_alias_maximum: u16,
    /// Inbound QoS 1 ids awaiting `accept_publish`.
    inbound_qos1: BTreeSet<PacketId>,
    /// Inbound QoS 2 ids handed to the broker, awaiting `accept_publish`.
    inbound_qos2_pending: BTreeSet<PacketId>,
    /// Whether a PUBCOMP waits for the broker to record the release (`record_releases`).
    record_releases: bool,
    aliases_in: HashMap<u16, TopicName>,
    aliases_out: HashMap<TopicName, NonZeroU16>,
    close_reason: Option<CloseReason>,
    closed_event_sent: bool,
}

impl Connection {
    /// A connection whose first byte arrived at `now`.
    pub fn new(config: ConnectionConfig, now: Instant) -> Connection {
        let decoder = Decoder::new(config.max_packet_size);
        let mut lanes = BTreeMap::new();
        lanes.insert(LaneId::CONTROL, Lane::new(config.send_timeout));
        let deadline = now + config.connect_timeout;
        Connection {
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            config,
            state: State::AwaitConnect { deadline },
            decoder,
            scratch: BytesMut::new(),
            lanes,
            outbox_bytes: 0,
            next_ticket: 1,
            abandoned: HashMap::new(),
            sub_lanes: Vec::new(),
            reply_lanes: HashMap::new(),
            current_lane: LaneId::CONTROL,
            lane_resets: VecDeque::new(),
            // The first round starts with the control lane (CONNACK before anything else).
            transmit_cursor: LaneId(u64::MAX),
            events: VecDeque::new(),
            session: SessionState::new(),
            connect: None,
            version: None,
            keep_alive: 0,
            keep_alive_deadline: None,
            session_expiry: 0,
            peer_max_packet_size: u32::MAX,
            peer_receive_maximum: u16::MAX,
            peer_topic_alias_maximum: 0,
            inbound_qos1: BTreeSet::new(),
            inbound_qos2_pending: BTreeSet::new(),
            record_releases: false,
            aliases_in: HashMap::new(),
            aliases_out: HashMap::new(),
            close_reason: None,
            closed_event_sent: false,
        }
    }

    // ----- getters -----

    /// The protocol version, once CONNECT has been read.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// The client id from CONNECT (or the assigned one), once accepted.
    pub fn client_id(&self) -> Option<&MqttString> {
        self.connect.as_ref().map(|c| &c.client_id)
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established)
    }

    /// The connection has ended: no more input is read, and once no transmit is
    /// outstanding the transport should close.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether the driver should keep reading: false while closing or while too much
    /// output is waiting (a client that does not read its acks cannot flood us).
    pub fn wants_read(&self) -> bool {
        match self.state {
            State::AwaitConnect { .. } | State::Established => {
                let in_flight: usize = self
                    .lanes
                    .values()
                    .map(|l| l.writer.bytes_in_flight())
                    .sum();
                self.outbox_bytes + in_flight < self.config.max_outbox_bytes
            }
            State::AwaitDecision => self
                .control()
                .is_some_and(|l| l.read_buf.len() < self.config.max_packet_size as usize),
            State::Closing(_) | State::Closed => false,
        }
    }

    /// Keep-alive in force, in seconds (0 = off), after any server override.
    pub fn keep_alive(&self) -> u16 {
        self.keep_alive
    }

    pub fn session(&self) -> &SessionState {
        &self.session
    }

    /// Whether a write is outstanding on any lane (handed out, not yet completed).
    pub fn is_sending(&self) -> bool {
        self.lanes.values().any(|l| !l.writer.is_idle())
    }

    /// Whether an outstanding write has passed its stall deadline: a closed connection
    /// stops waiting for it (its frames are reported abandoned).
    pub fn is_write_stalled(&self, now: Instant) -> bool {
        self.lanes.values().any(|l| l.writer.is_stalled(now))
    }

    // ----- inputs -----

    /// Bytes read from the transport (the control lane). Every whole packet in them is
    /// processed.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        self.handle_lane_bytes(now, LaneId::CONTROL, bytes);
    }

    /// The end of a write handed out by `poll_transmit`. A completion that does not match
    /// the write in progress ends the connection loudly and is returned as an error.
    pub fn handle_completion(
        &mut self,
        now: Instant,
        completion: SendCompletion,
    ) -> Result<(), CompletionError> {
        let ticket = completion.ticket().id();
        let lane_id = self
            .lanes
            .iter()
            .find(|(_, l)| l.writer.ticket() == Some(ticket))
            .map(|(id, _)| *id);
        let result = match lane_id.and_then(|id| self.lanes.get_mut(&id)) {
            Some(lane) => lane
                .writer
                .complete(completion)
                .inspect(|_| lane.in_flight = None),
            // The late end of a write on a lane that died: what it held was rescued then.
            None if self.abandoned.remove(&ticket).is_some() => return Ok(()),
            None => Err(CompletionError::UnknownTicket {
                got: ticket,
                expected: None,
            }),
        };
        let completed = match result {
            Ok(completed) => completed,
            Err(err) => {
                if !matches!(self.state, State::Closed) {
                    tracing::error!(connection = self.id, error = %err, "send seam violated");
                    self.close_now(CloseReason::SendSeam(err.clone()));
                }
                return Err(err);
            }
        };
        for frame in completed.frames.into_frames() {
            self.on_frame_completed(&frame, completed.outcome.is_ok());
        }
        match (completed.outcome, lane_id) {
            (Ok(()), _) => self.after_write(now),
            (Err(_), Some(lane)) if !lane.is_control() => self.fail_lane(now, lane),
            (Err(cause), _) => self.close_now(CloseReason::Transport(cause)),
        }
        Ok(())
    }

    /// `bytes` more bytes of the write with this ticket number were accepted; restarts its
    /// stall deadline. Progress is not completion: the frames stay the transport's.
    pub fn handle_write_progress(
        &mut self,
        now: Instant,
        ticket: u64,
        bytes: usize,
    ) -> Result<(), CompletionError> {
        match self
            .lanes
            .values_mut()
            .find(|l| l.writer.ticket() == Some(ticket))
        {
            Some(lane) => lane.writer.progress(now, ticket, bytes),
            None => Err(CompletionError::UnknownTicket {
                got: ticket,
                expected: None,
            }),
        }
    }

    /// Time has reached a deadline returned by `poll_timeout` (or later).
    pub fn handle_timeout(&mut self, now: Instant) {
        let stalled: Vec<LaneId> = self
            .lanes
            .iter()
            .filter(|(_, l)| l.writer.is_stalled(now))
            .map(|(id, _)| *id)
            .collect();
        for lane in stalled {
            if matches!(self.state, State::Closed) {
                break;
            }
            if lane.is_control() {
                tracing::warn!(connection = self.id, "write stalled past its deadline");
                self.close_now(CloseReason::Transport(TransportFault::Stalled));
                return;
            }
            // Only that stream is given up on (DESIGN §3); the driver resets it.
            tracing::warn!(connection = self.id, %lane, "data stream write stalled; resetting it");
            self.fail_lane(now, lane);
            self.lane_resets.push_back(lane);
        }
        match self.state {
            State::AwaitConnect { deadline } if now >= deadline => {
                self.close_now(CloseReason::ConnectTimeout);
            }
            State::Established if self.keep_alive_deadline.is_some_and(|d| now >= d) => {
                // v5 tells the client why before closing [MQTT-3.1.2-22].
                self.close_with(
                    now,
                    CloseReason::KeepAliveTimeout,
                    ReasonCode::KeepAliveTimeout,
                );
            }
            _ => {}
        }
    }

    /// The transport's read side ended (EOF or error).
    pub fn handle_transport_closed(&mut self, _now: Instant, fault: TransportFault) {
        if matches!(self.state, State::Closed) {
            return;
        }
        // A clean EOF with half a packet buffered is not a clean close.
        let fault = match fault {
            TransportFault::PeerClosed
                if self.control().is_some_and(|l| !l.read_buf.is_empty()) =>
            {
                TransportFault::PeerClosedMidPacket
            }
            fault => fault,
        };
        let reason = match self.state.closing_reason() {
            // We were already closing; the peer hanging up is the expected end.
            Some(reason) => reason,
            None => CloseReason::Transport(fault),
        };
        self.close_now(reason);
    }

    // ----- commands -----

    /// Accepts the CONNECT reported by `Event::Connect`: CONNACK is queued and the
    /// session's unfinished flows are resent.
    pub fn accept_connect(
        &mut self,
        now: Instant,
        accept: ConnectAccept,
    ) -> Result<(), ConnectionError> {
        if !matches!(self.state, State::AwaitDecision) {
            return Err(ConnectionError::NotAwaitingConnect);
        }
        let Some(connect) = self.connect.as_mut() else {
            return Err(ConnectionError::NotAwaitingConnect);
        };
        if let Some(id) = &accept.assigned_client_id {
            connect.client_id = id.clone();
        }
        // Deliveries that reached this connection before the decision join the session.
        self.session
            .absorb_into(accept.session, self.config.queue_limit());
        let connack = self.build_connack(accept.session_present, accept.assigned_client_id);
        self.enqueue_packet(&Packet::ConnAck(connack));
        self.state = State::Established;
        self.touch_keep_alive(now);
        self.pump(now);
        // Packets the client sent right behind CONNECT wait in the read buffer.
        self.process_input(now);
        Ok(())
    }

    /// Refuses the CONNECT with `reason` (an error code); the connection then closes.
    pub fn reject_connect(
        &mut self,
        now: Instant,
        reason: ReasonCode,
    ) -> Result<(), ConnectionError> {
        if !matches!(self.state, State::AwaitDecision) {
            return Err(ConnectionError::NotAwaitingConnect);
        }
        if !reason.is_error() {
            return Err(ConnectionError::NotARefusal(reason));
        }
        self.refuse_connect(now, CloseReason::Broker { reason }, reason);
        Ok(())
    }

    /// Acknowledges an inbound QoS 1/2 publish once the broker holds it safely. `reason`
    /// is the v5 reason code (0x00, 0x10 no matching subscribers, or an error).
    pub fn accept_publish(&mut self, now: Instant, ack: InboundAck, reason: ReasonCode) {
        if ack.connection != self.id || !self.is_established() {
            // The connection this ack belongs to is gone; the client resends with DUP.
            return;
        }
        self.on_publish_accepted(now, ack, reason);
    }

    /// The broker routed the publish behind `ack` (its ack may still wait for the store).
    /// A QoS 2 id is taken from here on: should the connection end before the PUBREC goes
    /// out, a DUP resend on the next connection is acknowledged, not routed again
    /// [MQTT-4.3.3-9]. An id the broker refused instead is free again when the connection
    /// ends, so the client's resend is routed.
    pub fn publish_routed(&mut self, ack: &InboundAck) {
        if ack.connection == self.id
            && ack.qos == QoS::ExactlyOnce
            && self.inbound_qos2_pending.contains(&ack.packet_id)
        {
            self.session.inbound_qos2.insert(ack.packet_id);
        }
    }

    /// Makes each PUBREL of the client wait for the broker ([`Event::Released`], then
    /// [`Connection::release_recorded`]) before the PUBCOMP: for a session whose inbound
    /// QoS 2 packet ids are stored, so a stored id is never left behind once the client
    /// may reuse it.
    pub fn record_releases(&mut self, on: bool) {
        self.record_releases = on;
    }

    /// The store has forgotten a released inbound QoS 2 id: send its PUBCOMP.
    pub fn release_recorded(&mut self, now: Instant, packet_id: PacketId) {
        if !self.reply_lanes.contains_key(&packet_id) || !self.is_established() {
            return;
        }
        self.session.inbound_qos2.remove(&packet_id);
        let lane = self.reply_lane(packet_id);
        self.enqueue_packet_on(lane, &Packet::PubComp(super::packet::Ack::new(packet_id)));
        self.pump(now);
    }

    /// The store has recorded the step ([`FlowStep::Sending`] or [`FlowStep::Received`])
    /// of the flow of `row` under `packet_id`: send the PUBLISH or PUBREL that waited.
    pub fn flow_recorded(&mut self, now: Instant, packet_id: PacketId, row: u64) {
        if self.is_established() {
            self.on_flow_recorded(now, packet_id, row);
        }
    }

    pub fn send_suback(&mut self, now: Instant, suback: SubAck) {
        if self.is_established() {
            let lane = self.reply_lane(suback.packet_id);
            self.enqueue_packet_on(lane, &Packet::SubAck(suback));
            self.pump(now);
        }
    }

    pub fn send_unsuback(&mut self, now: Instant, unsuback: UnsubAck) {
        if self.is_established() {
            let lane = self.reply_lane(unsuback.packet_id);
            self.enqueue_packet_on(lane, &Packet::UnsubAck(unsuback));
            self.pump(now);
        }
    }

    pub fn send_auth(&mut self, now: Instant, auth: Auth) {
        if matches!(self.state, State::AwaitDecision | State::Established)
            && self.version == Some(ProtocolVersion::V5)
        {
            self.enqueue_packet(&Packet::Auth(auth));
            self.pump(now);
        }
    }

    /// Hands a message for the client to the session: sent when the window allows, queued
    /// otherwise (also while the connection ends: it goes back to the broker with the
    /// session), dropped and reported when the queue is full.
    pub fn deliver(&mut self, now: Instant, delivery: Delivery) -> DeliverOutcome {
        let (topic, qos) = (delivery.topic.clone(), delivery.qos);
        let row = delivery.row;
        match self.session.enqueue(delivery, self.config.queue_limit()) {
            Ok(evicted) => {
                if let Some(old) = evicted {
                    self.report_drop(old.topic, old.qos, old.row, DropReason::QueueFull);
                }
                self.pump(now);
                DeliverOutcome::Accepted
            }
            Err(reason) => {
                self.report_drop(topic, qos, row, reason);
                DeliverOutcome::Dropped(reason)
            }
        }
    }

    /// Ends the connection from the broker's side (takeover 0x8E, shutdown 0x8B, ...).
    /// v5 clients are told the reason in a DISCONNECT first.
    pub fn disconnect(&mut self, now: Instant, reason: ReasonCode) {
        match self.state {
            State::Established => self.close_with(now, CloseReason::Broker { reason }, reason),
            State::AwaitConnect { .. } | State::AwaitDecision => {
                self.close_now(CloseReason::Broker { reason })
            }
            State::Closing(_) | State::Closed => {}
        }
    }

    // ----- outputs -----

    /// The next write for the transport: a batch of the frames waiting on a lane whose
    /// writer is idle. Lanes take turns, so one busy stream does not starve the others.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let order: Vec<LaneId> = self
            .lanes
            .range(self.transmit_cursor..)
            .skip(1)
            .chain(self.lanes.range(..=self.transmit_cursor))
            .map(|(id, _)| *id)
            .collect();
        let limit = self.config.max_batch_bytes;
        for id in order {
            let Some(lane) = self.lanes.get_mut(&id) else {
                continue;
            };
            let outbox = &mut lane.outbox;
            let outbox_bytes = &mut self.outbox_bytes;
            let started = lane.writer.try_start(now, self.next_ticket, || {
                let first = outbox.pop_front()?;
                *outbox_bytes -= first.wire_len();
                let mut size = first.wire_len();
                let mut batch = super::frame::FrameBatch::new(first);
                while let Some(next) = outbox.front() {
                    if size + next.wire_len() > limit {
                        break;
                    }
                    size += next.wire_len();
                    *outbox_bytes -= next.wire_len();
                    if let Some(frame) = outbox.pop_front() {
                        batch.push(frame);
                    }
                }
                Some(batch)
            });
            if let Some((ticket, frames)) = started {
                self.next_ticket += 1;
                self.transmit_cursor = id;
                if !id.is_control() {
                    lane.in_flight = Some(frames.clone());
                }
                return Some(Transmit {
                    ticket: super::frame::SendTicket::new(ticket),
                    frames,
                    lane: id,
                });
            }
        }
        None
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest deadline: the write stall deadline, CONNECT timeout or keep-alive.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let state_deadline = match self.state {
            State::AwaitConnect { deadline } => Some(deadline),
            State::Established => self.keep_alive_deadline,
            _ => None,
        };
        let writers = self.lanes.values().filter_map(|l| l.writer.deadline());
        std::iter::once(state_deadline)
            .flatten()
            .chain(writers)
            .min()
    }

    /// Ends the connection (if it has not ended) and hands back the session, with every
    /// unfinished flow queued for the next connection, and what the broker must do.
    pub fn into_session(mut self) -> (SessionState, CloseReport) {
        if !matches!(self.state, State::Closed) {
            let reason = self
                .state
                .closing_reason()
                .unwrap_or(CloseReason::Transport(TransportFault::PeerClosed));
            self.close_now(reason);
        }
        // Writes of lanes that died earlier were accounted for then.
        let mut abandoned: Vec<FrameMeta> = self.abandoned.drain().flat_map(|(_, m)| m).collect();
        let mut unsent = 0;
        let lanes = std::mem::take(&mut self.lanes);
        for (_, mut lane) in lanes {
            for meta in lane.writer.abandon().unwrap_or_default() {
                if meta.packet_type == super::packet::PacketType::Publish
                    && meta.packet_id.is_none()
                {
                    self.session.drops.count(DropReason::ConnectionClosed);
                }
                abandoned.push(meta);
            }
            unsent += lane.outbox.len();
            // Frames never handed out never reached the peer: their flows resend without DUP.
            for frame in std::mem::take(&mut lane.outbox) {
                self.on_unsent_frame(&frame);
            }
        }
        // Inbound QoS 2 ids still awaiting their ack are not carried over: those the broker
        // routed are in the session already (`publish_routed`); the others were refused.
        self.session.requeue_all();
        let reason = self
            .close_reason
            .clone()
            .unwrap_or(CloseReason::Transport(TransportFault::PeerClosed));
        let will = self
            .connect
            .as_mut()
            .and_then(|c| c.will.take())
            .filter(|_| reason.publishes_will());
        let report = CloseReport {
            reason,
            will,
            session_expiry: self.session_expiry,
            abandoned,
            unsent,
        };
        (self.session, report)
    }

    // ----- transitions -----

    /// Closes after telling the client why (v5 DISCONNECT); v3.1.1 closes at once.
    fn close_with(&mut self, now: Instant, reason: CloseReason, code: ReasonCode) {
        if matches!(self.state, State::Closing(_) | State::Closed) {
            return;
        }
        tracing::debug!(connection = self.id, %reason, "closing");
        if self.version == Some(ProtocolVersion::V5) && matches!(self.state, State::Established) {
            self.enqueue_packet(&Packet::Disconnect(Disconnect::new(code)));
            self.state = State::Closing(reason);
            self.after_write(now);
        } else {
            self.close_now(reason);
        }
    }

    /// Refuses a CONNECT: CONNACK with the reason (both versions), then close.
    fn refuse_connect(&mut self, now: Instant, reason: CloseReason, code: ReasonCode) {
        let connack = super::packet::ConnAck {
            session_present: false,
            reason: code,
            properties: Default::default(),
        };
        self.enqueue_packet(&Packet::ConnAck(connack));
        self.state = State::Closing(reason);
        self.after_write(now);
    }

    /// Enters `Closed` at once; frames still queued are accounted for in `into_session`.
    fn close_now(&mut self, reason: CloseReason) {
        if matches!(self.state, State::Closed) {
            return;
        }
        tracing::debug!(connection = self.id, %reason, "connection closed");
        self.state = State::Closed;
        self.close_reason = Some(reason.clone());
        if !self.closed_event_sent {
            self.closed_event_sent = true;
            self.events.push_back(Event::Closed(reason));
        }
    }

    /// After a write completes: a closing connection closes once everything is written;
    /// otherwise more input may now be read and more messages sent.
    fn after_write(&mut self, now: Instant) {
        if let State::Closing(reason) = &self.state {
            if self.outbox_bytes == 0 && !self.is_sending() {
                let reason = reason.clone();
                self.close_now(reason);
            }
            return;
        }
        self.pump(now);
        self.process_input(now);
    }

    fn touch_keep_alive(&mut self, now: Instant) {
        // 1.5 times the keep-alive without a packet ends the connection [MQTT-3.1.2-22].
        self.keep_alive_deadline = (self.keep_alive > 0)
            .then(|| now + Duration::from_millis(u64::from(self.keep_alive) * 1500));
    }
}

impl Connection {
    fn control(&self) -> Option<&Lane> {
        self.lanes.get(&LaneId::CONTROL)
    }

    /// The lane a SUBACK/UNSUBACK goes on: that of its request, if still open.
    fn reply_lane(&mut self, packet_id: PacketId) -> LaneId {
        let lane = self
            .reply_lanes
            .remove(&packet_id)
            .unwrap_or(LaneId::CONTROL);
        self.open_or_control(lane)
    }
}

impl State {
    fn closing_reason(&self) -> Option<CloseReason> {
        match self {
            State::Closing(reason) => Some(reason.clone()),
            _ => None,
        }
    }
}

pub use super::session::Delivery;
pub use lanes::LaneId;
