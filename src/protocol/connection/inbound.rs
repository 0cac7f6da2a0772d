//! Packets from the client: decoding, validation against the connection's state, QoS
//! receive flows, topic aliases and the receive maximum.

use std::time::Instant;

use super::{Connection, Event, InboundAck, LaneId, State};
use crate::protocol::codec::DecodeError;
use crate::protocol::error::{CloseReason, Violation};
use crate::protocol::packet::{Ack, Connect, Disconnect, Packet, Publish, Subscribe};
#[cfg(test)]
use crate::protocol::types::TopicName;
use crate::protocol::types::{ProtocolVersion, QoS, QosPid, ReasonCode};

impl Connection {
    /// Decodes and handles every whole packet in the read buffer, as far as the state
    /// allows: nothing is decoded while the broker decides on CONNECT (except AUTH during
    /// enhanced authentication), while closing, or while output is backed up.
    pub(super) fn process_input(&mut self, now: Instant) {
        // Data lanes wait for CONNACK; until then only the control lane is read.
        let lanes: Vec<LaneId> = if self.is_established() {
            self.lanes.keys().copied().collect()
        } else {
            vec![LaneId::CONTROL]
        };
        for id in lanes {
            loop {
                let may_decode = match self.state {
                    State::AwaitConnect { .. } | State::Established => self.wants_read(),
                    State::AwaitDecision => self.has_auth_method(),
                    State::Closing(_) | State::Closed => false,
                };
                if !may_decode {
                    return;
                }
                let Some(lane) = self.lanes.get_mut(&id) else {
                    break;
                };
                self.current_lane = id;
                match self.decoder.decode(&mut lane.read_buf) {
                    Ok(Some(packet)) => self.handle_packet(now, packet),
                    Ok(None) => break,
                    Err(err) => {
                        self.on_decode_error(now, err);
                        return;
                    }
                }
            }
        }
    }

    fn has_auth_method(&self) -> bool {
        self.connect
            .as_ref()
            .is_some_and(|c| c.properties.authentication_method.is_some())
    }

    fn on_decode_error(&mut self, now: Instant, err: DecodeError) {
        let code = err.reason_code();
        tracing::warn!(connection = self.id, error = %err, reason = %code, "bad packet from client");
        let violation = match err {
            DecodeError::ExpectedConnect { .. } => Violation::FirstPacketNotConnect,
            err => Violation::Decode(err),
        };
        let reason = CloseReason::ProtocolViolation {
            reason: code,
            violation,
        };
        match self.state {
            State::AwaitConnect { .. } if code == ReasonCode::UnsupportedProtocolVersion => {
                // Answer in the 3.1.1 format every version can read: return code 1
                // [MQTT-3.1.2-2].
                self.version = Some(ProtocolVersion::V311);
                self.refuse_connect(now, reason, code);
            }
            _ => self.violation(now, reason, code),
        }
    }

    /// The client broke the protocol: v5 clients get DISCONNECT with the reason first.
    pub(super) fn violation(&mut self, now: Instant, reason: CloseReason, code: ReasonCode) {
        self.close_with(now, reason, code);
    }

    fn protocol_violation(&mut self, now: Instant, violation: Violation, code: ReasonCode) {
        tracing::warn!(connection = self.id, %violation, reason = %code, "protocol violation");
        self.violation(
            now,
            CloseReason::ProtocolViolation {
                reason: code,
                violation,
            },
            code,
        );
    }

    fn handle_packet(&mut self, now: Instant, packet: Packet) {
        if let State::AwaitConnect { .. } = self.state {
            match packet {
                Packet::Connect(connect) => self.on_connect(now, connect),
                _ => self.protocol_violation(
                    now,
                    Violation::FirstPacketNotConnect,
                    ReasonCode::ProtocolError,
                ),
            }
            return;
        }
        // Any packet proves the client alive [MQTT-3.1.2-22].
        self.touch_keep_alive(now);
        match packet {
            Packet::Connect(_) => {
                self.protocol_violation(now, Violation::SecondConnect, ReasonCode::ProtocolError)
            }
            Packet::Publish(publish) => self.on_publish(now, publish),
            Packet::PubAck(ack) => self.on_puback(now, ack),
            Packet::PubRec(ack) => self.on_pubrec(now, ack),
            Packet::PubRel(ack) => self.on_pubrel(now, ack),
            Packet::PubComp(ack) => self.on_pubcomp(now, ack),
            Packet::Subscribe(subscribe) => self.on_subscribe(now, subscribe),
            Packet::Unsubscribe(unsubscribe) => {
                self.reply_lanes
                    .insert(unsubscribe.packet_id, self.current_lane);
                for filter in &unsubscribe.filters {
                    self.unbind_filter(filter);
                }
                self.events.push_back(Event::Unsubscribe(unsubscribe))
            }
            Packet::PingReq => {
                self.reply(&Packet::PingResp);
            }
            Packet::Disconnect(disconnect) => self.on_disconnect(now, disconnect),
            Packet::Auth(auth) => {
                if self.has_auth_method() {
                    self.events.push_back(Event::Auth(auth));
                } else {
                    self.protocol_violation(
                        now,
                        Violation::UnexpectedAuth,
                        ReasonCode::ProtocolError,
                    );
                }
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                let kind = packet.packet_type();
                self.protocol_violation(
                    now,
                    Violation::UnexpectedPacket(kind),
                    ReasonCode::ProtocolError,
                )
            }
        }
    }

    fn on_connect(&mut self, now: Instant, connect: Box<Connect>) {
        let version = connect.protocol;
        self.version = Some(version);
        if version == ProtocolVersion::V311 && connect.client_id.is_empty() && !connect.clean_start
        {
            self.connect = Some(connect);
            self.refuse_connect(
                now,
                CloseReason::ProtocolViolation {
                    reason: ReasonCode::ClientIdentifierNotValid,
                    violation: Violation::EmptyClientIdWithoutCleanSession,
                },
                ReasonCode::ClientIdentifierNotValid,
            );
            return;
        }
        let props = &connect.properties;
        self.peer_max_packet_size = props.maximum_packet_size.map_or(u32::MAX, |m| m.get());
        self.peer_receive_maximum = props.receive_maximum.map_or(u16::MAX, |m| m.get());
        self.peer_topic_alias_maximum = props.topic_alias_maximum.unwrap_or(0);
        self.session_expiry = match version {
            ProtocolVersion::V5 => props.session_expiry_interval.unwrap_or(0),
            // 3.1.1 sessions without clean session last until a clean connect.
            ProtocolVersion::V311 if connect.clean_start => 0,
            ProtocolVersion::V311 => u32::MAX,
        };
        self.keep_alive = match self.config.max_keep_alive {
            Some(max)
                if version.is_v5() && (connect.keep_alive == 0 || connect.keep_alive > max) =>
            {
                max
            }
            _ => connect.keep_alive,
        };
        self.events.push_back(Event::Connect(connect.clone()));
        self.connect = Some(connect);
        self.state = State::AwaitDecision;
    }

    fn on_publish(&mut self, now: Instant, mut publish: Publish) {
        if publish.qos() > self.config.maximum_qos {
            let qos = publish.qos().bits();
            return self.protocol_violation(
                now,
                Violation::QosNotSupported(qos),
                ReasonCode::QoSNotSupported,
            );
        }
        if publish.retain && !self.config.retain_available {
            return self.protocol_violation(
                now,
                Violation::RetainNotSupported,
                ReasonCode::RetainNotSupported,
            );
        }
        if !publish.properties.subscription_identifiers.is_empty() {
            // Only the server sets subscription identifiers [MQTT-3.3.4-6].
            return self.protocol_violation(
                now,
                Violation::SubscriptionIdentifierFromClient,
                ReasonCode::ProtocolError,
            );
        }
        if publish.properties.payload_format_indicator == Some(true)
            && std::str::from_utf8(&publish.payload).is_err()
        {
            // The client declared a UTF-8 payload that is not [MQTT-3.3.2-4].
            return self.protocol_violation(
                now,
                Violation::PayloadNotUtf8,
                ReasonCode::PayloadFormatInvalid,
            );
        }
        if let Err((violation, code)) = self.resolve_alias(&mut publish) {
            return self.protocol_violation(now, violation, code);
        }
        match publish.qos_pid {
            QosPid::AtMostOnce => self.events.push_back(Event::Publish {
                message: publish,
                ack: None,
            }),
            QosPid::AtLeastOnce(id) => {
                if self.inbound_qos1.contains(&id) {
                    // A resend of one the broker has not yet acknowledged: the ack to come
                    // covers it.
                    return;
                }
                if !self.inbound_quota_left(now) {
                    return;
                }
                self.inbound_qos1.insert(id);
                let ack = self.inbound_ack(id, QoS::AtLeastOnce);
                self.events.push_back(Event::Publish {
                    message: publish,
                    ack: Some(ack),
                });
            }
            QosPid::ExactlyOnce(id) => {
                if self.inbound_qos2_pending.contains(&id) {
                    // A resend of one the broker has not yet acknowledged: the ack to come
                    // covers it.
                    return;
                }
                if self.session.inbound_qos2.contains(&id) {
                    // Already taken: acknowledge again, never deliver twice [MQTT-4.3.3-9].
                    self.reply(&Packet::PubRec(Ack::new(id)));
                    return;
                }
                if !self.inbound_quota_left(now) {
                    return;
                }
                self.inbound_qos2_pending.insert(id);
                let ack = self.inbound_ack(id, QoS::ExactlyOnce);
                self.events.push_back(Event::Publish {
                    message: publish,
                    ack: Some(ack),
                });
            }
        }
    }

    fn inbound_ack(&self, packet_id: crate::protocol::types::PacketId, qos: QoS) -> InboundAck {
        InboundAck {
            connection: self.id,
            packet_id,
            qos,
            lane: self.current_lane,
        }
    }

    /// Receive maximum: a client with that many QoS 1/2 publishes unacknowledged may send
    /// no more [MQTT-3.3.4-9]; one that does is disconnected with 0x93.
    fn inbound_quota_left(&mut self, now: Instant) -> bool {
        let used = self.inbound_qos1.len()
            + self.inbound_qos2_pending.len()
            + self.session.inbound_qos2.len();
        if used >= usize::from(self.config.receive_maximum) {
            let max = self.config.receive_maximum;
            self.protocol_violation(
                now,
                Violation::ReceiveMaximumExceeded(max),
                ReasonCode::ReceiveMaximumExceeded,
            );
            return false;
        }
        true
    }

    /// Replaces an aliased topic with its name and records new aliases [MQTT-3.3.2-12].
    fn resolve_alias(&mut self, publish: &mut Publish) -> Result<(), (Violation, ReasonCode)> {
        let Some(alias) = publish.properties.topic_alias.take() else {
            return Ok(());
        };
        let alias = alias.get();
        if alias > self.config.topic_alias_maximum {
            return Err((
                Violation::TopicAliasOutOfRange {
                    alias,
                    maximum: self.config.topic_alias_maximum,
                },
                ReasonCode::TopicAliasInvalid,
            ));
        }
        if publish.topic.is_empty() {
            match self.aliases_in.get(&alias) {
                Some(topic) => publish.topic = topic.clone(),
                None => {
                    return Err((
                        Violation::UnknownTopicAlias(alias),
                        ReasonCode::ProtocolError,
                    ))
                }
            }
        } else {
            self.aliases_in.insert(alias, publish.topic.clone());
        }
        Ok(())
    }

    fn on_subscribe(&mut self, now: Instant, subscribe: Subscribe) {
        let shared_no_local = subscribe
            .filters
            .iter()
            .any(|(filter, options)| options.no_local && filter.as_str().starts_with("$share/"));
        if shared_no_local {
            return self.protocol_violation(
                now,
                Violation::NoLocalOnSharedSubscription,
                ReasonCode::ProtocolError,
            );
        }
        self.reply_lanes
            .insert(subscribe.packet_id, self.current_lane);
        let lane = self.current_lane;
        for (filter, _) in &subscribe.filters {
            self.bind_filter(filter, lane);
        }
        self.events.push_back(Event::Subscribe(subscribe));
    }

    fn on_disconnect(&mut self, now: Instant, disconnect: Disconnect) {
        if let Some(expiry) = disconnect.properties.session_expiry_interval {
            if self.session_expiry == 0 && expiry != 0 {
                return self.protocol_violation(
                    now,
                    Violation::SessionExpiryFromZero,
                    ReasonCode::ProtocolError,
                );
            }
            self.session_expiry = expiry;
        }
        self.close_now(CloseReason::ClientDisconnected {
            reason: disconnect.reason,
        });
    }

    /// The broker accepted (or refused) an inbound QoS 1/2 publish: queue its ack.
    pub(super) fn on_publish_accepted(
        &mut self,
        now: Instant,
        ack: InboundAck,
        reason: ReasonCode,
    ) {
        let id = ack.packet_id;
        let transient = matches!(
            reason,
            ReasonCode::QuotaExceeded
                | ReasonCode::ImplementationSpecificError
                | ReasonCode::UnspecifiedError
                | ReasonCode::ServerBusy
        );
        if transient && self.version == Some(ProtocolVersion::V311) {
            // MQTT 3.1.1 has no way to refuse a publish: a PUBACK/PUBREC would say it was
            // taken [MQTT-3.3.5-2]. For a refusal that may pass (store full or failing),
            // close instead: the client sends it again on its next connection. A permanent
            // one (not authorized) is acknowledged, so the client does not loop.
            tracing::info!(connection = self.id, packet_id = %id, %reason, "v3.1.1 publish refused: closing");
            self.disconnect(now, reason);
            return;
        }
        let lane = self.open_or_control(ack.lane);
        match ack.qos {
            QoS::AtLeastOnce => {
                if self.inbound_qos1.remove(&id) {
                    self.enqueue_packet_on(lane, &Packet::PubAck(Ack::with_reason(id, reason)));
                }
            }
            QoS::ExactlyOnce => {
                if self.inbound_qos2_pending.remove(&id) {
                    if reason.is_error() {
                        // A refusing PUBREC ends the flow: the client may reuse the id.
                        self.session.inbound_qos2.remove(&id);
                    } else {
                        self.session.inbound_qos2.insert(id);
                    }
                    self.enqueue_packet_on(lane, &Packet::PubRec(Ack::with_reason(id, reason)));
                }
            }
            QoS::AtMostOnce => {}
        }
        self.pump(now);
    }

    fn on_pubrel(&mut self, _now: Instant, ack: Ack) {
        let id = ack.packet_id;
        let known =
            self.session.inbound_qos2.contains(&id) || self.inbound_qos2_pending.remove(&id);
        if known && self.record_releases {
            // The id stays taken until the store has forgotten it; a repeated PUBREL
            // meanwhile changes nothing.
            if !self.reply_lanes.contains_key(&id) {
                self.session.inbound_qos2.insert(id);
                self.reply_lanes.insert(id, self.current_lane);
                self.events.push_back(Event::Released { packet_id: id });
            }
            return;
        }
        self.session.inbound_qos2.remove(&id);
        let reason = if known {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        self.reply(&Packet::PubComp(Ack::with_reason(id, reason)));
    }

    /// Used by tests and the broker to check an alias mapping.
    #[cfg(test)]
    pub(super) fn inbound_alias(&self, alias: u16) -> Option<&TopicName> {
        self.aliases_in.get(&alias)
    }
}
