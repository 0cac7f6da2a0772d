//! Frames to the client: encoding into the outbox, the outbound QoS window, topic aliases,
//! and what each frame's completion means for its flow.

use std::num::{NonZeroU16, NonZeroU32};
use std::time::{Duration, Instant};

use super::{Connection, DeliverOutcome, Event, FlowStep, LaneId, State};
use crate::protocol::frame::{FrameError, OutboundFrame};
use crate::protocol::packet::{Ack, ConnAck, Packet, PacketType, Properties, Publish};
use crate::protocol::session::{needs_record, Delivery, DropReason, OutState, Resend};
use crate::protocol::types::{
    MqttString, PacketId, ProtocolVersion, QoS, QosPid, ReasonCode, TopicName,
};

impl Connection {
    /// Encodes a control packet into the outbox. A packet over the client's maximum size
    /// loses its reason string and user properties first, as the spec asks
    /// [MQTT-3.1.2-25]; if it still does not fit, the connection ends.
    pub(super) fn enqueue_packet(&mut self, packet: &Packet) -> bool {
        self.enqueue_packet_on(LaneId::CONTROL, packet)
    }

    /// Queues a reply on the lane of the packet being handled.
    pub(super) fn reply(&mut self, packet: &Packet) -> bool {
        let lane = self.open_or_control(self.current_lane);
        self.enqueue_packet_on(lane, packet)
    }

    pub(super) fn enqueue_packet_on(&mut self, lane: LaneId, packet: &Packet) -> bool {
        match self.encode(packet) {
            Ok(frame) => {
                self.push_frame(lane, frame);
                true
            }
            Err(FrameError::TooLarge { .. }) => {
                let mut trimmed = packet.clone();
                strip_optional_properties(&mut trimmed);
                match self.encode(&trimmed) {
                    Ok(frame) => {
                        self.push_frame(lane, frame);
                        true
                    }
                    Err(err) => self.on_unencodable(packet.packet_type(), err),
                }
            }
            Err(err) => self.on_unencodable(packet.packet_type(), err),
        }
    }

    fn on_unencodable(&mut self, packet_type: PacketType, err: FrameError) -> bool {
        tracing::error!(connection = self.id, ?packet_type, error = %err, "cannot encode a packet for the client");
        self.close_now(crate::protocol::error::CloseReason::Broker {
            reason: ReasonCode::ImplementationSpecificError,
        });
        false
    }

    fn encode(&mut self, packet: &Packet) -> Result<OutboundFrame, FrameError> {
        let version = self.version.unwrap_or(ProtocolVersion::V311);
        OutboundFrame::encode(
            packet,
            version,
            self.peer_max_packet_size,
            &mut self.scratch,
        )
    }

    pub(super) fn push_frame(&mut self, lane: LaneId, frame: OutboundFrame) {
        let lane = self.open_or_control(lane);
        if let Some(l) = self.lanes.get_mut(&lane) {
            self.outbox_bytes += frame.wire_len();
            l.outbox.push_back(frame);
        }
    }

    /// Outbound QoS 1/2 messages allowed in flight: the client's receive maximum, capped by
    /// the broker's own limit.
    fn window(&self) -> usize {
        usize::from(
            self.peer_receive_maximum
                .min(self.config.max_inflight)
                .max(1),
        )
    }

    /// Moves what the window and the outbox allow from the session into the outbox: first
    /// the flows left over from an earlier connection, in their original order
    /// [MQTT-4.6.0-1], then queued messages in arrival order.
    pub(super) fn pump(&mut self, now: Instant) {
        if !matches!(self.state, State::Established) {
            return;
        }
        let window = self.window();
        let mut used = self.session.window_used();
        while self.outbox_bytes < self.config.max_outbox_bytes {
            // Behind a message waiting for the store, only messages that wait too may start:
            // nothing overtakes it on the wire.
            let held = self.session.recording > 0;
            if let Some((id, resend)) = self.session.next_queued_flow() {
                match resend {
                    Resend::Pubrel => self.send_pubrel(id),
                    Resend::Publish { dup } => {
                        let records = self
                            .session
                            .outbound
                            .get(&id)
                            .is_some_and(|f| f.awaits_record().is_some());
                        // Still queued: next_queued_flow left maybe_queued set.
                        if used >= window || (held && !records) {
                            return;
                        }
                        if self.resend_publish(now, id, dup) {
                            used += 1;
                        }
                    }
                }
                continue;
            }
            let Some(front) = self.session.queue.front() else {
                return;
            };
            if front.is_expired(now) {
                if let Some(expired) = self.session.queue.pop_front() {
                    self.drop_delivery(&expired, DropReason::Expired);
                }
                continue;
            }
            if held && !needs_record(front) {
                return;
            }
            if front.qos == QoS::AtMostOnce {
                if let Some(delivery) = self.session.queue.pop_front() {
                    self.send_fresh(now, delivery, QosPid::AtMostOnce);
                }
                continue;
            }
            if used >= window {
                return;
            }
            let Some(id) = self.session.free_packet_id() else {
                return;
            };
            let Some(delivery) = self.session.queue.pop_front() else {
                return;
            };
            let qos_pid = match delivery.qos {
                QoS::AtLeastOnce => QosPid::AtLeastOnce(id),
                _ => QosPid::ExactlyOnce(id),
            };
            if self.send_fresh(now, delivery, qos_pid) {
                used += 1;
            }
        }
    }

    /// Sends a message for the first time, with a topic alias where the client allows.
    /// Returns whether a QoS 1/2 flow started.
    fn send_fresh(&mut self, now: Instant, delivery: Delivery, qos_pid: QosPid) -> bool {
        if let Some(id) = qos_pid.packet_id().filter(|_| needs_record(&delivery)) {
            // No frame (and no topic alias) until the store holds the packet id; but a
            // message the client cannot take is dropped now, not after a record.
            let check = publish_for(&delivery, qos_pid, false, now);
            if let Err(err) = self.encode(&Packet::Publish(check)) {
                self.on_publish_unencodable(&delivery, err);
                return false;
            }
            let lane = self.lane_for_topic(&delivery.topic);
            self.session.start_flow(id, delivery, lane);
            self.request_record(id, false);
            return true;
        }
        let mut publish = publish_for(&delivery, qos_pid, false, now);
        let new_alias = self.apply_alias(&mut publish);
        let frame = match self.encode(&Packet::Publish(publish)) {
            Ok(frame) => frame,
            Err(err) => {
                self.on_publish_unencodable(&delivery, err);
                return false;
            }
        };
        if let Some((topic, alias)) = new_alias {
            self.aliases_out.insert(topic, alias);
        }
        let lane = self.lane_for_topic(&delivery.topic);
        match qos_pid.packet_id() {
            None => {
                self.push_frame(lane, frame);
                false
            }
            Some(id) => {
                let seq = self.session.start_flow(id, delivery, lane);
                self.push_frame(lane, frame.for_flow(seq));
                true
            }
        }
    }

    /// Resends the PUBLISH of a flow left from an earlier connection (full topic: aliases
    /// do not outlive a connection). Returns whether it was sent.
    fn resend_publish(&mut self, now: Instant, id: PacketId, dup: bool) -> bool {
        self.request_record(id, dup) || self.push_publish(now, id, dup)
    }

    /// Holds flow `id`'s PUBLISH and asks the broker to record its packet id, if it awaits
    /// one ([`FlowStep::Sending`]). Returns whether it did.
    fn request_record(&mut self, id: PacketId, dup: bool) -> bool {
        let Some(row) = self.session.await_record(id, dup) else {
            return false;
        };
        self.events
            .push_back(Event::Flow(FlowStep::Sending { row, packet_id: id }));
        true
    }

    /// Encodes a flow's PUBLISH into the outbox (full topic). Returns whether it was sent.
    fn push_publish(&mut self, now: Instant, id: PacketId, dup: bool) -> bool {
        let Some(flow) = self.session.outbound.get(&id) else {
            return false;
        };
        let qos_pid = match flow.message.qos {
            QoS::AtLeastOnce => QosPid::AtLeastOnce(id),
            _ => QosPid::ExactlyOnce(id),
        };
        let publish = publish_for(&flow.message, qos_pid, dup, now);
        let seq = flow.seq;
        let lane = self.lane_for_topic(&flow.message.topic);
        if matches!(flow.state, OutState::Recording { .. }) {
            self.session.recording = self.session.recording.saturating_sub(1);
        }
        match self.encode(&Packet::Publish(publish)) {
            Ok(frame) => {
                if let Some(flow) = self.session.outbound.get_mut(&id) {
                    flow.state = OutState::Sending;
                    flow.frames_pending += 1;
                    flow.lane = lane;
                }
                self.push_frame(lane, frame.for_flow(seq));
                true
            }
            Err(err) => {
                if let Some(flow) = self.session.outbound.remove(&id) {
                    self.on_publish_unencodable(&flow.message, err);
                }
                false
            }
        }
    }

    fn send_pubrel(&mut self, id: PacketId) {
        let Some((seq, lane)) = self
            .session
            .outbound
            .get(&id)
            .map(|f| (f.seq, self.lane_for_topic(&f.message.topic)))
        else {
            return;
        };
        match self.encode(&Packet::PubRel(Ack::new(id))) {
            Ok(frame) => {
                if let Some(flow) = self.session.outbound.get_mut(&id) {
                    flow.state = OutState::Releasing;
                    flow.frames_pending += 1;
                    flow.lane = lane;
                }
                self.push_frame(lane, frame.for_flow(seq));
            }
            Err(err) => {
                self.on_unencodable(PacketType::PubRel, err);
            }
        }
    }

    /// The store holds the step the flow of `row` waited for: send what waited.
    pub(super) fn on_flow_recorded(&mut self, now: Instant, id: PacketId, row: u64) {
        let Some(flow) = self
            .session
            .outbound
            .get_mut(&id)
            .filter(|f| f.message.row == Some(row))
        else {
            return;
        };
        flow.recorded = true;
        match flow.state {
            OutState::Recording { .. } => {
                // Recorded flows leave in routing order: up to the first still waiting.
                while let Some((first, flow)) = self.session.first_recording() {
                    let OutState::Recording { dup } = flow.state else {
                        break;
                    };
                    if !flow.recorded {
                        break;
                    }
                    self.push_publish(now, first, dup);
                }
                self.pump(now);
            }
            OutState::RecordingRelease => self.send_pubrel(id),
            _ => {}
        }
    }

    fn on_publish_unencodable(&mut self, delivery: &Delivery, err: FrameError) {
        // Too large for this client: dropped and counted, never truncated [MQTT-3.1.2-24].
        tracing::debug!(connection = self.id, topic = %delivery.topic, error = %err, "message not sent");
        self.drop_delivery(delivery, DropReason::TooLarge);
    }

    pub(super) fn drop_delivery(
        &mut self,
        delivery: &Delivery,
        reason: DropReason,
    ) -> DeliverOutcome {
        self.session.drops.count(reason);
        self.report_drop(delivery.topic.clone(), delivery.qos, delivery.row, reason);
        DeliverOutcome::Dropped(reason)
    }

    /// Tells the broker a message was dropped, and that its row can go.
    pub(super) fn report_drop(
        &mut self,
        topic: TopicName,
        qos: QoS,
        row: Option<u64>,
        reason: DropReason,
    ) {
        self.events.push_back(Event::Dropped { topic, qos, reason });
        if let Some(row) = row {
            self.events
                .push_back(Event::Flow(FlowStep::Finished { row }));
        }
    }

    /// Uses or assigns an outbound topic alias; returns a new assignment to record once
    /// the frame is encoded.
    fn apply_alias(&self, publish: &mut Publish) -> Option<(TopicName, NonZeroU16)> {
        if self.version != Some(ProtocolVersion::V5) || self.peer_topic_alias_maximum == 0 {
            return None;
        }
        if let Some(alias) = self.aliases_out.get(&publish.topic) {
            publish.properties.topic_alias = Some(*alias);
            publish.topic = TopicName::empty_for_alias();
            return None;
        }
        let next = u16::try_from(self.aliases_out.len() + 1).ok()?;
        if next > self.peer_topic_alias_maximum {
            return None;
        }
        let alias = NonZeroU16::new(next)?;
        publish.properties.topic_alias = Some(alias);
        Some((publish.topic.clone(), alias))
    }

    pub(super) fn on_puback(&mut self, now: Instant, ack: Ack) {
        let id = ack.packet_id;
        let finished = self.session.outbound.get(&id).is_some_and(|f| {
            f.message.qos == QoS::AtLeastOnce
                && matches!(
                    f.state,
                    OutState::Sending | OutState::AwaitPuback | OutState::Queued(_)
                )
        });
        if finished {
            self.finish_flow(id);
            self.pump(now);
        } else {
            tracing::debug!(connection = self.id, packet_id = %id, "PUBACK for no QoS 1 flow");
        }
    }

    pub(super) fn on_pubrec(&mut self, now: Instant, ack: Ack) {
        let id = ack.packet_id;
        let state = self
            .session
            .outbound
            .get(&id)
            .filter(|f| f.message.qos == QoS::ExactlyOnce)
            .map(|f| f.state);
        match state {
            Some(
                OutState::Sending
                | OutState::AwaitPubrec
                | OutState::Queued(Resend::Publish { .. }),
            ) => {
                let row = self.session.outbound.get(&id).and_then(|f| f.message.row);
                if ack.reason.is_error() {
                    // The client refused it: the flow ends here [MQTT-4.3.3].
                    self.finish_flow(id);
                    self.pump(now);
                } else if let Some(row) = row {
                    // The store learns of the PUBREC before the PUBREL leaves.
                    if let Some(flow) = self.session.outbound.get_mut(&id) {
                        flow.state = OutState::RecordingRelease;
                    }
                    self.events
                        .push_back(Event::Flow(FlowStep::Received { row, packet_id: id }));
                } else {
                    self.send_pubrel(id);
                }
            }
            Some(OutState::AwaitPubcomp | OutState::Queued(Resend::Pubrel)) => self.send_pubrel(id),
            Some(_) => {}
            None => {
                self.reply(&Packet::PubRel(Ack::with_reason(
                    id,
                    ReasonCode::PacketIdentifierNotFound,
                )));
            }
        }
    }

    pub(super) fn on_pubcomp(&mut self, now: Instant, ack: Ack) {
        let id = ack.packet_id;
        let finished = self.session.outbound.get(&id).is_some_and(|f| {
            matches!(
                f.state,
                OutState::Releasing | OutState::AwaitPubcomp | OutState::Queued(Resend::Pubrel)
            )
        });
        if finished {
            self.finish_flow(id);
            self.pump(now);
        } else {
            tracing::debug!(connection = self.id, packet_id = %id, "PUBCOMP for no released flow");
        }
    }

    /// The peer finished a flow. Its id is freed now, or when the last of its frames still
    /// being written completes.
    fn finish_flow(&mut self, id: PacketId) {
        let (pending, row) = self
            .session
            .outbound
            .get(&id)
            .map_or((0, None), |f| (f.frames_pending, f.message.row));
        if let Some(row) = row {
            self.events
                .push_back(Event::Flow(FlowStep::Finished { row }));
        }
        if pending == 0 {
            self.session.outbound.remove(&id);
        } else if let Some(flow) = self.session.outbound.get_mut(&id) {
            flow.state = OutState::Done;
        }
    }

    /// A frame's write ended. A written PUBLISH/PUBREL moves its flow to the state that
    /// awaits the peer's answer; a flow the peer already finished is released.
    pub(super) fn on_frame_completed(&mut self, frame: &OutboundFrame, written: bool) {
        if !written && frame.packet_type() == PacketType::Publish && frame.qos() == QoS::AtMostOnce
        {
            self.session.drops.count(DropReason::ConnectionClosed);
        }
        let (Some(seq), Some(id)) = (frame.flow(), frame.packet_id()) else {
            return;
        };
        let Some(flow) = self.session.outbound.get_mut(&id).filter(|f| f.seq == seq) else {
            return;
        };
        flow.frames_pending = flow.frames_pending.saturating_sub(1);
        if written {
            flow.state = match (frame.packet_type(), flow.state) {
                (PacketType::Publish, OutState::Sending)
                    if flow.message.qos == QoS::AtLeastOnce =>
                {
                    OutState::AwaitPuback
                }
                (PacketType::Publish, OutState::Sending) => OutState::AwaitPubrec,
                (PacketType::PubRel, OutState::Releasing) => OutState::AwaitPubcomp,
                (_, state) => state,
            };
        }
        if flow.state == OutState::Done && flow.frames_pending == 0 {
            self.session.outbound.remove(&id);
        }
    }

    /// A frame still in the outbox when the connection ended never reached the client.
    pub(super) fn on_unsent_frame(&mut self, frame: &OutboundFrame) {
        if frame.packet_type() == PacketType::Publish && frame.qos() == QoS::AtMostOnce {
            self.session.drops.count(DropReason::ConnectionClosed);
            return;
        }
        let (Some(seq), Some(id)) = (frame.flow(), frame.packet_id()) else {
            return;
        };
        if let Some(flow) = self.session.outbound.get_mut(&id).filter(|f| f.seq == seq) {
            flow.frames_pending = flow.frames_pending.saturating_sub(1);
            if frame.packet_type() == PacketType::Publish && flow.state == OutState::Sending {
                flow.state = OutState::Queued(Resend::Publish { dup: false });
                self.session.maybe_queued = true;
            }
        }
    }

    pub(super) fn build_connack(
        &self,
        session_present: bool,
        assigned: Option<MqttString>,
    ) -> ConnAck {
        let mut properties = Properties::default();
        if self.version == Some(ProtocolVersion::V5) {
            properties.receive_maximum = NonZeroU16::new(self.config.receive_maximum);
            properties.maximum_packet_size = NonZeroU32::new(self.config.max_packet_size);
            if self.config.topic_alias_maximum > 0 {
                properties.topic_alias_maximum = Some(self.config.topic_alias_maximum);
            }
            if self.config.maximum_qos < QoS::ExactlyOnce {
                properties.maximum_qos = Some(self.config.maximum_qos);
            }
            if !self.config.retain_available {
                properties.retain_available = Some(false);
            }
            let requested = self.connect.as_ref().map_or(0, |c| c.keep_alive);
            if requested != self.keep_alive {
                properties.server_keep_alive = Some(self.keep_alive);
            }
            properties.assigned_client_identifier = assigned;
        }
        ConnAck {
            session_present,
            reason: ReasonCode::Success,
            properties,
        }
    }
}

/// The PUBLISH that carries `delivery`, with the message expiry rewritten to what is left
/// of it [MQTT-3.3.2-6].
fn publish_for(delivery: &Delivery, qos_pid: QosPid, dup: bool, now: Instant) -> Publish {
    let mut properties = Properties::clone(&delivery.properties);
    properties.topic_alias = None;
    properties.subscription_identifiers = delivery.subscription_ids.clone();
    properties.message_expiry_interval = delivery.expires_at.map(|at| {
        let left = at.saturating_duration_since(now) + Duration::from_millis(999);
        u32::try_from(left.as_secs()).unwrap_or(u32::MAX)
    });
    Publish {
        dup,
        qos_pid,
        retain: delivery.retain,
        topic: delivery.topic.clone(),
        payload: delivery.payload.clone(),
        properties,
    }
}

/// Drops the properties a sender may leave out when a packet would be too large.
fn strip_optional_properties(packet: &mut Packet) {
    let properties = match packet {
        Packet::ConnAck(p) => &mut p.properties,
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            &mut a.properties
        }
        Packet::SubAck(s) => &mut s.properties,
        Packet::UnsubAck(u) => &mut u.properties,
        Packet::Disconnect(d) => &mut d.properties,
        Packet::Auth(a) => &mut a.properties,
        _ => return,
    };
    properties.reason_string = None;
    properties.user_properties.clear();
}
