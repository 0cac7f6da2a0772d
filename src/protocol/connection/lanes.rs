//! Lanes: the byte streams of one connection. TCP, TLS and single-stream QUIC have one,
//! the control lane. Multi-stream QUIC adds a data lane per client-opened stream, each
//! with its own read buffer, writer and outbox, so a stalled stream never holds up the
//! others (DESIGN §1):
//!
//! ```text
//!   control lane 0: CONNECT/CONNACK, PINGREQ/PINGRESP, DISCONNECT, AUTH, and anything
//!                   whose lane is gone
//!   data lane n:    replies to requests that came on n (SUBACK, PUBACK, ...), and the
//!                   PUBLISH/PUBREL of messages matching a subscription made on n
//! ```
//!
//! A data lane that dies (reset by the client, or given up on by us after a stalled
//! write) does not end the connection: its unfinished QoS 1/2 flows go back to the
//! session and are resent on the control lane, its pending replies move to the control
//! lane, and its subscriptions deliver there from then on. EMQX loses that state.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::{Connection, State};
use crate::protocol::frame::{FrameBatch, OutboundFrame, TransportFault};
use crate::protocol::packet::PacketType;
use crate::protocol::session::{DropReason, OutState, Resend};
use crate::protocol::types::{QoS, TopicFilter, TopicName};
use crate::protocol::writer::Writer;

/// Names a lane. Drivers choose the numbers for data lanes (QUIC: the stream id); the
/// control lane is always [`LaneId::CONTROL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LaneId(pub u64);

impl LaneId {
    pub const CONTROL: LaneId = LaneId(0);

    pub fn is_control(self) -> bool {
        self == LaneId::CONTROL
    }
}

impl fmt::Display for LaneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lane {}", self.0)
    }
}

#[derive(Debug)]
pub(super) struct Lane {
    pub read_buf: BytesMut,
    pub writer: Writer,
    pub outbox: VecDeque<OutboundFrame>,
    /// A copy of the batch a data lane is writing (shared bytes, no copy of the data), so
    /// that if the lane dies its replies can be resent on the control lane.
    pub in_flight: Option<FrameBatch>,
}

impl Lane {
    pub fn new(send_timeout: Duration) -> Lane {
        Lane {
            read_buf: BytesMut::new(),
            writer: Writer::new(send_timeout),
            outbox: VecDeque::new(),
            in_flight: None,
        }
    }
}

impl Connection {
    /// The client opened a data stream. Its packets are read once the connection is
    /// established (streams opened before CONNACK wait).
    pub fn open_lane(&mut self, lane: LaneId) {
        if lane.is_control() || matches!(self.state, State::Closing(_) | State::Closed) {
            return;
        }
        let send_timeout = self.config.send_timeout;
        self.lanes
            .entry(lane)
            .or_insert_with(|| Lane::new(send_timeout));
    }

    /// Bytes read from a lane's stream.
    pub fn handle_lane_bytes(&mut self, now: Instant, lane: LaneId, bytes: &[u8]) {
        if matches!(self.state, State::Closing(_) | State::Closed) {
            return;
        }
        match self.lanes.get_mut(&lane) {
            Some(l) => l.read_buf.extend_from_slice(bytes),
            None => return,
        }
        self.process_input(now);
    }

    /// A lane's stream ended (reset, stopped or finished by the client). The control
    /// lane's end is the connection's end; a data lane's is not.
    pub fn handle_lane_closed(&mut self, now: Instant, lane: LaneId, fault: TransportFault) {
        if lane.is_control() {
            self.handle_transport_closed(now, fault);
        } else {
            tracing::debug!(connection = self.id, %lane, %fault, "data lane closed");
            self.fail_lane(now, lane);
        }
    }

    /// A data lane this connection gave up on (its write stalled): the driver resets the
    /// stream. Poll after every input, like transmits.
    pub fn poll_lane_reset(&mut self) -> Option<LaneId> {
        self.lane_resets.pop_front()
    }

    /// Number of open lanes, the control lane included.
    pub fn lane_count(&self) -> usize {
        self.lanes.len()
    }

    /// The lane for a message on `topic`: that of the latest subscription matching it,
    /// if that lane is still open; the control lane otherwise.
    pub(super) fn lane_for_topic(&self, topic: &TopicName) -> LaneId {
        if self.lanes.len() == 1 {
            return LaneId::CONTROL;
        }
        self.sub_lanes
            .iter()
            .rev()
            .find(|(filter, lane)| self.lanes.contains_key(lane) && filter_matches(filter, topic))
            .map_or(LaneId::CONTROL, |(_, lane)| *lane)
    }

    /// The lane to answer on, if it is still open; else the control lane.
    pub(super) fn open_or_control(&self, lane: LaneId) -> LaneId {
        if self.lanes.contains_key(&lane) {
            lane
        } else {
            LaneId::CONTROL
        }
    }

    /// Records that deliveries for `filter` go to `lane` (a shared subscription delivers
    /// topics matching its inner filter).
    pub(super) fn bind_filter(&mut self, filter: &TopicFilter, lane: LaneId) {
        let inner = shared_inner(filter).unwrap_or_else(|| filter.clone());
        self.sub_lanes.retain(|(f, _)| *f != inner);
        if !lane.is_control() {
            self.sub_lanes.push((inner, lane));
        }
    }

    pub(super) fn unbind_filter(&mut self, filter: &TopicFilter) {
        let inner = shared_inner(filter).unwrap_or_else(|| filter.clone());
        self.sub_lanes.retain(|(f, _)| *f != inner);
    }

    /// Takes a data lane out of service; nothing it held is lost.
    pub(super) fn fail_lane(&mut self, now: Instant, id: LaneId) {
        if id.is_control() {
            return;
        }
        let Some(mut lane) = self.lanes.remove(&id) else {
            return;
        };
        if let Some(ticket) = lane.writer.ticket() {
            let metas = lane.writer.abandon().unwrap_or_default();
            self.abandoned.insert(ticket, metas);
        }
        if let Some(batch) = lane.in_flight.take() {
            for frame in batch.into_frames() {
                self.rescue_frame(frame, true);
            }
        }
        for frame in std::mem::take(&mut lane.outbox) {
            self.outbox_bytes -= frame.wire_len();
            self.rescue_frame(frame, false);
        }
        // Flows written on the lane and awaiting the client's answer there are resent:
        // the answer may have died with the stream.
        // So are flows whose last frame on it failed.
        self.session.maybe_queued = true;
        self.session.outbound.retain(|_, flow| {
            if flow.lane != id || flow.frames_pending > 0 {
                return true;
            }
            flow.state = match flow.state {
                OutState::Sending | OutState::AwaitPuback | OutState::AwaitPubrec => {
                    OutState::Queued(Resend::Publish { dup: true })
                }
                OutState::Releasing | OutState::AwaitPubcomp => OutState::Queued(Resend::Pubrel),
                OutState::Done => return false,
                state => state,
            };
            true
        });
        self.sub_lanes.retain(|(_, lane)| *lane != id);
        self.pump(now);
    }

    /// A frame of a lane that died: a message flow goes back to the session to be resent,
    /// a QoS 0 message is dropped (at most once), and a reply moves to the control lane.
    fn rescue_frame(&mut self, frame: OutboundFrame, maybe_sent: bool) {
        if frame.packet_type() == PacketType::Publish && frame.qos() == QoS::AtMostOnce {
            self.session.drops.count(DropReason::ConnectionClosed);
            return;
        }
        if let (Some(seq), Some(id)) = (frame.flow(), frame.packet_id()) {
            self.session.maybe_queued = true;
            if let Some(flow) = self.session.outbound.get_mut(&id).filter(|f| f.seq == seq) {
                flow.frames_pending = flow.frames_pending.saturating_sub(1);
                flow.state = match (frame.packet_type(), flow.state) {
                    (PacketType::Publish, OutState::Sending) => {
                        OutState::Queued(Resend::Publish { dup: maybe_sent })
                    }
                    (PacketType::PubRel, OutState::Releasing) => OutState::Queued(Resend::Pubrel),
                    (_, state) => state,
                };
                if flow.state == OutState::Done && flow.frames_pending == 0 {
                    self.session.outbound.remove(&id);
                }
            }
            return;
        }
        self.push_frame(LaneId::CONTROL, frame);
    }
}

/// The filter inside `$share/<group>/<filter>`.
fn shared_inner(filter: &TopicFilter) -> Option<TopicFilter> {
    let rest = filter.as_str().strip_prefix("$share/")?;
    let (_, inner) = rest.split_once('/')?;
    TopicFilter::new(inner).ok()
}

/// Topic matching for choosing a lane ([MQTT-4.7]; the broker's index decides delivery,
/// this only picks the stream among the client's own subscriptions).
pub(super) fn filter_matches(filter: &TopicFilter, topic: &TopicName) -> bool {
    let topic = topic.as_str();
    if topic.starts_with('$') && matches!(filter.as_str().as_bytes().first(), Some(b'+' | b'#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for f in filter.as_str().split('/') {
        match f {
            "#" => return true,
            "+" => {
                if levels.next().is_none() {
                    return false;
                }
            }
            exact => {
                if levels.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_topic_matching_follows_the_wildcard_rules() {
        let cases = [
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/+", "a/", true),
            ("a/+", "a/b/c", false),
            ("+/b", "a/b", true),
            ("#", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
        ];
        for (filter, topic, expected) in cases {
            let f = TopicFilter::new(filter).expect("filter");
            let t = TopicName::new(topic).expect("topic");
            assert_eq!(filter_matches(&f, &t), expected, "{filter} vs {topic}");
        }
    }

    #[test]
    fn the_inner_filter_of_a_shared_subscription() {
        let f = TopicFilter::new("$share/g/a/+").expect("filter");
        assert_eq!(
            shared_inner(&f).map(|f| f.as_str().to_string()),
            Some("a/+".to_string())
        );
    }
}
