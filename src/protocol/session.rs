//! The protocol state of a session that outlives one connection: outbound QoS 1/2 flows,
//! messages queued for the client, inbound QoS 2 packet ids awaiting PUBREL, and packet-id
//! allocation. A [`Connection`](super::Connection) owns it while connected and hands it
//! back when it ends; the broker keeps it (and queues into it) while the client is away.
//!
//! Outbound flow of one QoS 1/2 message (DESIGN §3: written is not acknowledged):
//! ```text
//!                 window has room
//!  queue ──────────────────────────► Sending ──written──► AwaitPuback ──PUBACK──► (gone)
//!  (Delivery,                          │     (QoS 1)
//!   no id yet)                         │
//!                                      └─────written──► AwaitPubrec ──PUBREC──► Releasing
//!                                            (QoS 2)                              │ written
//!                                                                                 ▼
//!                        (gone) ◄──PUBCOMP── AwaitPubcomp ◄──────────────────────┘
//!
//!  A stored QoS 2 message (`Delivery::row`) waits in Recording before its PUBLISH and in
//!  RecordingRelease before its PUBREL, until the broker has recorded the step.
//!
//!  A peer ack that overtakes our write completion moves the flow to Done; the id is freed
//!  when the last frame of the flow completes, so an id is never reused while in flight.
//!  When a connection ends, every live flow becomes Queued and is resent on the next
//!  connection: PUBLISH with DUP=1 if it may have been written, else PUBREL [MQTT-4.4.0-1].
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::connection::LaneId;
use super::packet::Properties;
use super::types::{PacketId, QoS, TopicFilter, TopicName};

/// One message for one subscriber, as the broker hands it to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: TopicName,
    /// Shared with every other subscriber of the same publish.
    pub payload: Bytes,
    /// Already the minimum of the publish QoS and the granted QoS.
    pub qos: QoS,
    pub retain: bool,
    /// Properties forwarded to every subscriber of the publish (payload format, content
    /// type, response topic, correlation data, user properties): shared, not copied. The
    /// message expiry interval is rewritten from `expires_at` when the message is sent.
    pub properties: Arc<Properties>,
    /// The identifiers of this subscriber's matching subscriptions [MQTT-3.3.4-3].
    pub subscription_ids: Vec<NonZeroU32>,
    /// The shared subscription (`$share/<group>/<filter>`) this message was routed by, so
    /// it can go to another member if this session ends without it [MQTT-4.8.2].
    pub shared: Option<TopicFilter>,
    /// When the message expires [MQTT-3.3.2-5]; it is dropped, not sent, after that.
    pub expires_at: Option<Instant>,
    /// The store row of this copy, for a persistent session on a broker with a store.
    /// The connection reports each step of its flow with it ([`FlowStep`]) and holds a
    /// QoS 2 PUBLISH or PUBREL until the broker says the step is recorded.
    pub row: Option<u64>,
}

impl Delivery {
    /// A message on `topic` at `qos`, with nothing else: not retained, no properties,
    /// subscription identifiers, shared subscription, expiry or store row.
    pub fn new(topic: TopicName, payload: impl Into<Bytes>, qos: QoS) -> Delivery {
        Delivery {
            topic,
            payload: payload.into(),
            qos,
            retain: false,
            properties: Arc::default(),
            subscription_ids: Vec::new(),
            shared: None,
            expires_at: None,
            row: None,
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// What to send again for a flow that was live when a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resend {
    /// The PUBLISH; `dup` when it may have reached the peer.
    Publish { dup: bool },
    /// The PUBREL of a QoS 2 flow whose PUBREC arrived.
    Pubrel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutState {
    /// Waiting to be (re)sent on this or the next connection.
    Queued(Resend),
    /// A stored QoS 2 message waits for the store to record its packet id before its
    /// PUBLISH (`dup` as it will be sent).
    Recording {
        dup: bool,
    },
    /// The PUBLISH frame is in the outbox or being written.
    Sending,
    AwaitPuback,
    AwaitPubrec,
    /// A stored QoS 2 message's PUBREC came; the PUBREL waits for the store to record it.
    RecordingRelease,
    /// The PUBREL frame is in the outbox or being written.
    Releasing,
    AwaitPubcomp,
    /// The peer finished the flow while one of its frames was still being written.
    Done,
}

#[derive(Debug, Clone)]
pub(crate) struct OutFlow {
    /// Order of first sending, kept across reconnects [MQTT-4.6.0-1]; also the guard that
    /// stops a late frame completion from touching a newer flow with the same packet id.
    pub seq: u64,
    pub message: Delivery,
    pub state: OutState,
    /// Frames of this flow handed to the outbox and not yet completed.
    pub frames_pending: u32,
    /// The lane its frames go on (and its acks are expected on) in this connection.
    pub lane: LaneId,
    /// The store holds this flow's packet id (a stored QoS 2 message may be sent).
    pub recorded: bool,
}

impl OutFlow {
    /// The row whose packet id the store must record before this flow's PUBLISH may go
    /// out: a stored QoS 2 message not recorded yet.
    pub(crate) fn awaits_record(&self) -> Option<u64> {
        if self.recorded || !needs_record(&self.message) {
            return None;
        }
        self.message.row
    }
}

/// Why a message for a session was dropped instead of queued or sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    QueueFull,
    Expired,
    /// Larger than the client's maximum packet size [MQTT-3.1.2-24].
    TooLarge,
    /// QoS 0 that was queued or being written when the connection ended.
    ConnectionClosed,
}

/// Which message goes when a session's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueuePolicy {
    /// Refuse the new message (mosquitto's behaviour).
    #[default]
    DropNew,
    /// Evict the oldest queued message to make room.
    DropOldest,
}

/// The bound on a session's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimit {
    pub max: usize,
    pub policy: QueuePolicy,
}

impl QueueLimit {
    pub fn drop_new(max: usize) -> QueueLimit {
        QueueLimit {
            max,
            policy: QueuePolicy::DropNew,
        }
    }
}

/// Counters of dropped messages, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    pub queue_full: u64,
    pub expired: u64,
    pub too_large: u64,
    pub connection_closed: u64,
}

impl DropCounts {
    pub(crate) fn count(&mut self, reason: DropReason) {
        let slot = match reason {
            DropReason::QueueFull => &mut self.queue_full,
            DropReason::Expired => &mut self.expired,
            DropReason::TooLarge => &mut self.too_large,
            DropReason::ConnectionClosed => &mut self.connection_closed,
        };
        *slot += 1;
    }

    pub fn total(&self) -> u64 {
        self.queue_full + self.expired + self.too_large + self.connection_closed
    }
}

/// Session state that survives the connection.
#[derive(Debug, Clone)]
pub struct SessionState {
    next_packet_id: PacketId,
    next_seq: u64,
    pub(crate) outbound: BTreeMap<PacketId, OutFlow>,
    pub(crate) queue: VecDeque<Delivery>,
    /// Inbound QoS 2 publishes the broker has taken, awaiting the client's PUBREL.
    pub(crate) inbound_qos2: BTreeSet<PacketId>,
    pub(crate) drops: DropCounts,
    /// False when no outbound flow is `Queued`: then the window is every flow and there is
    /// nothing to resend, both known without walking the flows (the publish hot path).
    /// Set by whatever queues a flow; cleared by a resend scan that finds none.
    pub(crate) maybe_queued: bool,
    /// Flows in `Recording`: while any is, no PUBLISH may overtake it, so messages go out
    /// in the order they were routed.
    pub(crate) recording: usize,
}

/// A session as plain data, for the store: what a restarted broker needs to resume it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSnapshot {
    /// Unfinished outbound QoS 1/2 messages in their original order, with their packet id
    /// and what to resend.
    pub inflight: Vec<InflightMessage>,
    /// Messages waiting for the client, oldest first.
    pub queue: Vec<Delivery>,
    /// Inbound QoS 2 packet ids taken by the broker and awaiting PUBREL (exactly-once
    /// across a restart).
    pub awaiting_pubrel: Vec<PacketId>,
}

/// One unfinished outbound QoS 1/2 message of a [`SessionSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InflightMessage {
    pub packet_id: PacketId,
    pub message: Delivery,
    /// True once the client's PUBREC arrived (QoS 2): resend PUBREL, not the PUBLISH.
    pub released: bool,
}

impl SessionState {
    /// The session as plain data, as it would resume on the next connection.
    pub fn snapshot(&self) -> SessionSnapshot {
        let mut flows: Vec<(&PacketId, &OutFlow)> = self
            .outbound
            .iter()
            .filter(|(_, f)| f.state != OutState::Done)
            .collect();
        flows.sort_by_key(|(_, f)| f.seq);
        SessionSnapshot {
            inflight: flows
                .into_iter()
                .map(|(id, f)| InflightMessage {
                    packet_id: *id,
                    message: f.message.clone(),
                    released: matches!(
                        f.state,
                        OutState::Releasing
                            | OutState::AwaitPubcomp
                            | OutState::Queued(Resend::Pubrel)
                    ),
                })
                .collect(),
            queue: self.queue.iter().cloned().collect(),
            awaiting_pubrel: self.inbound_qos2.iter().copied().collect(),
        }
    }

    /// A session rebuilt from a snapshot: every in-flight message is resent (with DUP,
    /// or as PUBREL) on the next connection.
    pub fn restore(snapshot: SessionSnapshot) -> SessionState {
        let mut state = SessionState::new();
        for (seq, m) in snapshot.inflight.into_iter().enumerate() {
            let resend = if m.released {
                Resend::Pubrel
            } else {
                Resend::Publish { dup: true }
            };
            state.next_packet_id = m.packet_id.next();
            state.outbound.insert(
                m.packet_id,
                OutFlow {
                    seq: seq as u64,
                    message: m.message,
                    state: OutState::Queued(resend),
                    frames_pending: 0,
                    lane: LaneId::CONTROL,
                    // It comes from the store, packet id and all.
                    recorded: true,
                },
            );
            state.next_seq = seq as u64 + 1;
        }
        state.maybe_queued = !state.outbound.is_empty();
        state.queue = snapshot.queue.into();
        state.inbound_qos2 = snapshot.awaiting_pubrel.into_iter().collect();
        state
    }
}

/// Whether a message's PUBLISH must wait for the store to record its packet id: a stored
/// QoS 2 message (QoS 1 may be resent under another id after a restart).
pub(crate) fn needs_record(message: &Delivery) -> bool {
    message.row.is_some() && message.qos == QoS::ExactlyOnce
}

impl Default for SessionState {
    fn default() -> Self {
        SessionState::new()
    }
}

impl SessionState {
    pub fn new() -> SessionState {
        SessionState {
            next_packet_id: PacketId::MIN,
            next_seq: 0,
            outbound: BTreeMap::new(),
            queue: VecDeque::new(),
            inbound_qos2: BTreeSet::new(),
            drops: DropCounts::default(),
            maybe_queued: false,
            recording: 0,
        }
    }

    /// Queues a message while the client is away (or behind its window). A full queue
    /// drops the new message or the oldest one, as `limit` says; either way the drop is
    /// counted. Returns the message evicted to make room, if any.
    pub fn enqueue(
        &mut self,
        delivery: Delivery,
        limit: QueueLimit,
    ) -> Result<Option<Delivery>, DropReason> {
        if self.queue.len() < limit.max {
            self.queue.push_back(delivery);
            return Ok(None);
        }
        self.drops.count(DropReason::QueueFull);
        match limit.policy {
            QueuePolicy::DropNew => Err(DropReason::QueueFull),
            QueuePolicy::DropOldest => {
                let evicted = self.queue.pop_front();
                self.queue.push_back(delivery);
                Ok(evicted)
            }
        }
    }

    /// Drops the oldest queued message if it is the one in store row `row`, counting it
    /// as a full-queue drop.
    pub fn drop_oldest_if(&mut self, row: u64) -> Option<Delivery> {
        if self.queue.front()?.row != Some(row) {
            return None;
        }
        self.drops.count(DropReason::QueueFull);
        self.queue.pop_front()
    }

    /// Messages waiting for the client, oldest first.
    pub fn queued(&self) -> impl Iterator<Item = &Delivery> {
        self.queue.iter()
    }

    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    /// Outbound QoS 1/2 messages with a packet id that the client has not finished.
    pub fn inflight_len(&self) -> usize {
        self.outbound.len()
    }

    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub fn awaiting_pubrel(&self) -> impl Iterator<Item = PacketId> + '_ {
        self.inbound_qos2.iter().copied()
    }

    pub fn drops(&self) -> DropCounts {
        self.drops
    }

    /// Drops expired messages from the queue (an offline session's queue does not grow
    /// with dead messages); returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.queue.len();
        self.queue.retain(|d| !d.is_expired(now));
        let dropped = before - self.queue.len();
        for _ in 0..dropped {
            self.drops.count(DropReason::Expired);
        }
        dropped
    }

    /// Makes `resumed` this session, keeping messages queued here first (they arrived
    /// while the resumed session was being handed over) behind its own queue.
    pub fn absorb_into(&mut self, resumed: SessionState, limit: QueueLimit) {
        let early = std::mem::replace(self, resumed).queue;
        for delivery in early {
            let _ = self.enqueue(delivery, limit);
        }
    }

    /// Every message the session still holds for its client, in the order it would send
    /// them: unfinished flows first (a QoS 2 flow already released is finished for the
    /// client's application, so it is not included), then the queue.
    pub fn into_messages(self) -> Vec<Delivery> {
        let mut flows: Vec<OutFlow> = self
            .outbound
            .into_values()
            .filter(|f| {
                !matches!(
                    f.state,
                    OutState::Releasing
                        | OutState::AwaitPubcomp
                        | OutState::Done
                        | OutState::Queued(Resend::Pubrel)
                )
            })
            .collect();
        flows.sort_by_key(|f| f.seq);
        flows
            .into_iter()
            .map(|f| f.message)
            .chain(self.queue)
            .collect()
    }

    /// Outbound flows that are live on a connection (not queued for resending).
    pub(crate) fn window_used(&self) -> usize {
        if !self.maybe_queued {
            return self.outbound.len();
        }
        self.outbound
            .values()
            .filter(|f| !matches!(f.state, OutState::Queued(_)))
            .count()
    }

    /// A packet id not held by any outbound flow, or `None` if all 65535 are.
    pub(crate) fn free_packet_id(&self) -> Option<PacketId> {
        let mut id = self.next_packet_id;
        for _ in 0..u16::MAX {
            if !self.outbound.contains_key(&id) {
                return Some(id);
            }
            id = id.next();
        }
        None
    }

    /// Starts a flow under `id`, `Sending` with its PUBLISH frame pushed (a stored QoS 2
    /// message then waits: [`SessionState::await_record`]).
    pub(crate) fn start_flow(&mut self, id: PacketId, message: Delivery, lane: LaneId) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.next_packet_id = id.next();
        self.outbound.insert(
            id,
            OutFlow {
                seq,
                message,
                state: OutState::Sending,
                frames_pending: 1,
                lane,
                recorded: false,
            },
        );
        seq
    }

    /// Holds flow `id`'s PUBLISH (no frame out) until the store records its packet id, if
    /// it [awaits one](OutFlow::awaits_record); returns the row to record.
    pub(crate) fn await_record(&mut self, id: PacketId, dup: bool) -> Option<u64> {
        let flow = self.outbound.get_mut(&id)?;
        let row = flow.awaits_record()?;
        flow.state = OutState::Recording { dup };
        flow.frames_pending = 0;
        self.recording += 1;
        Some(row)
    }

    /// The queued flow sent first on the earliest connection, if any.
    pub(crate) fn next_queued_flow(&mut self) -> Option<(PacketId, Resend)> {
        if !self.maybe_queued {
            return None;
        }
        let next = self
            .outbound
            .iter()
            .filter_map(|(id, f)| match f.state {
                OutState::Queued(resend) => Some((f.seq, *id, resend)),
                _ => None,
            })
            .min_by_key(|(seq, _, _)| *seq)
            .map(|(_, id, resend)| (id, resend));
        self.maybe_queued = next.is_some();
        next
    }

    /// The flow in `Recording` routed first, if any.
    pub(crate) fn first_recording(&self) -> Option<(PacketId, &OutFlow)> {
        if self.recording == 0 {
            return None;
        }
        self.outbound
            .iter()
            .filter(|(_, f)| matches!(f.state, OutState::Recording { .. }))
            .min_by_key(|(_, f)| f.seq)
            .map(|(id, f)| (*id, f))
    }

    /// Called when a connection ends: every live flow is queued for resending and flows the
    /// peer finished are released.
    pub(crate) fn requeue_all(&mut self) {
        self.maybe_queued = true;
        self.recording = 0;
        self.outbound.retain(|_, flow| {
            flow.frames_pending = 0;
            flow.state = match flow.state {
                OutState::Queued(resend) => OutState::Queued(resend),
                OutState::Recording { dup } => OutState::Queued(Resend::Publish { dup }),
                // The PUBREC is not recorded: the PUBLISH goes again and the client's
                // PUBREC comes again.
                OutState::Sending
                | OutState::AwaitPuback
                | OutState::AwaitPubrec
                | OutState::RecordingRelease => OutState::Queued(Resend::Publish { dup: true }),
                OutState::Releasing | OutState::AwaitPubcomp => OutState::Queued(Resend::Pubrel),
                OutState::Done => return false,
            };
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(topic: &str, qos: QoS) -> Delivery {
        Delivery::new(TopicName::new(topic).expect("topic"), &b"p"[..], qos)
    }

    #[test]
    fn a_snapshot_restores_to_the_same_snapshot() {
        let mut state = SessionState::new();
        let a = PacketId::new(7).expect("id");
        let b = PacketId::new(3).expect("id");
        state.start_flow(a, delivery("a", QoS::AtLeastOnce), LaneId::CONTROL);
        state.start_flow(b, delivery("b", QoS::ExactlyOnce), LaneId::CONTROL);
        if let Some(flow) = state.outbound.get_mut(&b) {
            flow.state = OutState::AwaitPubcomp;
        }
        state.queue.push_back(delivery("c", QoS::AtLeastOnce));
        state.inbound_qos2.insert(PacketId::new(9).expect("id"));
        let snapshot = state.snapshot();
        assert_eq!(snapshot.inflight[0].packet_id, a, "original order kept");
        assert!(snapshot.inflight[1].released);
        let mut restored = SessionState::restore(snapshot.clone());
        assert_eq!(restored.snapshot(), snapshot);
        assert_eq!(
            restored.next_queued_flow(),
            Some((a, Resend::Publish { dup: true }))
        );
    }
}
