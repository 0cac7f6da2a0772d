//! The connection driven by a scripted peer on a manual clock.

use std::num::{NonZeroU16, NonZeroU32};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::protocol::codec::{encode_to_bytes, Decoder};
use crate::protocol::error::Violation;
use crate::protocol::frame::{FrameBatch, OutboundFrame, SendTicket};
use crate::protocol::packet::SubAck;
use crate::protocol::packet::{Ack, PacketType, Properties, Publish, Subscribe};
use crate::protocol::session::{OutState, QueuePolicy, Resend};
use crate::protocol::types::{QosPid, SubscriptionOptions, TopicFilter};

/// A client on the far side of a perfect transport: what the connection writes is decoded
/// into `received`; writes complete only when the test says so.
pub(crate) struct Harness {
    pub conn: Connection,
    pub now: Instant,
    pub version: ProtocolVersion,
    peer: Decoder,
    /// Per lane: a multi-stream peer decodes each stream separately.
    peer_bufs: std::collections::HashMap<LaneId, BytesMut>,
    pub received: Vec<Packet>,
    /// Every packet received, with the lane it came on.
    pub received_on: Vec<(LaneId, PacketType, Option<u16>)>,
    pub events: Vec<Event>,
    /// Frames handed out by `poll_transmit`, and frames handed back in valid completions.
    pub handed_out: usize,
    pub completed: usize,
}

pub(crate) fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("test ids are non-zero")
}

pub(crate) fn topic(s: &str) -> TopicName {
    TopicName::new(s).expect("test topics are valid")
}

pub(crate) fn connect_packet(version: ProtocolVersion, client_id: &str) -> Connect {
    Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 60,
        client_id: MqttString::new(client_id).expect("valid id"),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

pub(crate) fn delivery(t: &str, qos: QoS, payload: &'static [u8]) -> Delivery {
    Delivery::new(topic(t), payload, qos)
}

pub(crate) fn publish(t: &str, qos_pid: QosPid, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos_pid,
        retain: false,
        topic: topic(t),
        payload: Bytes::from_static(payload),
        properties: Properties::default(),
    }
}

impl Harness {
    pub fn new(config: ConnectionConfig, version: ProtocolVersion) -> Harness {
        let now = Instant::now();
        Harness {
            conn: Connection::new(config, now),
            now,
            version,
            peer: Decoder::with_version(version, u32::MAX),
            peer_bufs: Default::default(),
            received: Vec::new(),
            received_on: Vec::new(),
            events: Vec::new(),
            handed_out: 0,
            completed: 0,
        }
    }

    /// Connects with `connect` and accepts it with `session`.
    pub fn connected(config: ConnectionConfig, connect: Connect, session: SessionState) -> Harness {
        let mut h = Harness::new(config, connect.protocol);
        h.send(&Packet::Connect(Box::new(connect)));
        assert!(
            matches!(h.events.last(), Some(Event::Connect(_))),
            "expected a CONNECT event, got {:?}",
            h.events
        );
        h.conn
            .accept_connect(
                h.now,
                ConnectAccept {
                    session,
                    session_present: false,
                    assigned_client_id: None,
                },
            )
            .expect("awaiting a decision");
        h.flush();
        assert!(
            matches!(h.received.first(), Some(Packet::ConnAck(c)) if c.reason == ReasonCode::Success)
        );
        // Keep what followed the CONNACK (resent flows of a resumed session).
        h.received.remove(0);
        h.received_on.remove(0);
        h
    }

    pub fn v5() -> Harness {
        Harness::connected(
            ConnectionConfig::default(),
            connect_packet(ProtocolVersion::V5, "c1"),
            SessionState::new(),
        )
    }

    /// The client sends `packet`.
    pub fn send(&mut self, packet: &Packet) {
        let bytes = encode_to_bytes(packet, self.version).expect("test packets encode");
        self.conn.handle_bytes(self.now, &bytes);
        self.drain_events();
    }

    /// The client sends `packet` on a data stream.
    pub fn send_on(&mut self, lane: LaneId, packet: &Packet) {
        let bytes = encode_to_bytes(packet, self.version).expect("test packets encode");
        self.conn.handle_lane_bytes(self.now, lane, &bytes);
        self.drain_events();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.conn.handle_bytes(self.now, bytes);
        self.drain_events();
    }

    pub fn drain_events(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            self.events.push(event);
        }
    }

    /// Takes the next write, if any, without completing it.
    pub fn take_transmit(&mut self) -> Option<Transmit> {
        let t = self.conn.poll_transmit(self.now)?;
        self.handed_out += t.frames.frame_count();
        Some(t)
    }

    /// Completes a write as written and lets the peer read it.
    pub fn complete(&mut self, t: Transmit) {
        let bytes = t.frames.to_contiguous();
        let lane = t.lane;
        let count = t.frames.frame_count();
        self.conn
            .handle_completion(
                self.now,
                SendCompletion::Written {
                    ticket: t.ticket,
                    frames: t.frames,
                },
            )
            .expect("valid completion");
        self.completed += count;
        self.peer_read(lane, &bytes);
        self.drain_events();
    }

    pub fn fail(&mut self, t: Transmit, cause: TransportFault) {
        let count = t.frames.frame_count();
        self.conn
            .handle_completion(
                self.now,
                SendCompletion::Failed {
                    ticket: t.ticket,
                    frames: t.frames,
                    cause,
                },
            )
            .expect("valid completion");
        self.completed += count;
        self.drain_events();
    }

    fn peer_read(&mut self, lane: LaneId, bytes: &[u8]) {
        let buf = self.peer_bufs.entry(lane).or_default();
        buf.extend_from_slice(bytes);
        while let Some(p) = self.peer.decode(buf).expect("broker output decodes") {
            self.received_on
                .push((lane, p.packet_type(), p.packet_id().map(PacketId::get)));
            self.received.push(p);
        }
    }

    /// Writes everything the connection has to send, bounded so a livelock fails the test.
    pub fn flush(&mut self) {
        for _ in 0..10_000 {
            match self.take_transmit() {
                Some(t) => self.complete(t),
                None => return,
            }
        }
        panic!("connection kept producing transmits: livelock");
    }

    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.conn.handle_timeout(self.now);
        self.drain_events();
    }

    pub fn take_received(&mut self) -> Vec<Packet> {
        std::mem::take(&mut self.received)
    }

    pub fn closed_reason(&self) -> Option<&CloseReason> {
        self.events.iter().find_map(|e| match e {
            Event::Closed(reason) => Some(reason),
            _ => None,
        })
    }

    /// Inbound publish events with their acks taken out.
    pub fn take_publishes(&mut self) -> Vec<(Publish, Option<InboundAck>)> {
        let mut out = Vec::new();
        let mut rest = Vec::new();
        for e in std::mem::take(&mut self.events) {
            match e {
                Event::Publish { message, ack } => out.push((message, ack)),
                other => rest.push(other),
            }
        }
        self.events = rest;
        out
    }
}

fn ids_of(packets: &[Packet]) -> Vec<(PacketType, Option<u16>)> {
    packets
        .iter()
        .map(|p| (p.packet_type(), p.packet_id().map(PacketId::get)))
        .collect()
}

// ----- connect -----

#[test]
fn v5_connack_advertises_the_broker_limits() {
    let config = ConnectionConfig {
        receive_maximum: 10,
        max_packet_size: 4096,
        topic_alias_maximum: 5,
        ..ConnectionConfig::default()
    };
    let mut h = Harness::new(config, ProtocolVersion::V5);
    h.send(&Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V5,
        "a",
    ))));
    h.conn
        .accept_connect(h.now, ConnectAccept::default())
        .expect("awaiting decision");
    h.flush();
    let Some(Packet::ConnAck(connack)) = h.received.first() else {
        panic!("no CONNACK: {:?}", h.received)
    };
    assert_eq!(connack.properties.receive_maximum, NonZeroU16::new(10));
    assert_eq!(
        connack.properties.maximum_packet_size,
        NonZeroU32::new(4096)
    );
    assert_eq!(connack.properties.topic_alias_maximum, Some(5));
    assert!(h.conn.is_established());
}

#[test]
fn first_packet_other_than_connect_closes() {
    let mut h = Harness::new(ConnectionConfig::default(), ProtocolVersion::V311);
    h.send_raw(&[0xC0, 0x00]); // PINGREQ
    h.flush();
    assert!(h.conn.is_closed());
    assert!(
        h.received.is_empty(),
        "nothing is sent to a client that never connected"
    );
    assert!(matches!(
        h.closed_reason(),
        Some(CloseReason::ProtocolViolation {
            violation: Violation::FirstPacketNotConnect,
            ..
        })
    ));
}

#[test]
fn connect_timeout_closes_a_silent_connection() {
    let mut h = Harness::new(ConnectionConfig::default(), ProtocolVersion::V5);
    let deadline = h.conn.poll_timeout().expect("connect deadline armed");
    assert_eq!(
        deadline,
        h.now + ConnectionConfig::default().connect_timeout
    );
    h.advance(ConnectionConfig::default().connect_timeout);
    assert_eq!(h.closed_reason(), Some(&CloseReason::ConnectTimeout));
}

#[test]
fn v311_empty_client_id_without_clean_session_is_refused_with_return_code_2() {
    let mut h = Harness::new(ConnectionConfig::default(), ProtocolVersion::V311);
    let mut connect = connect_packet(ProtocolVersion::V311, "");
    connect.clean_start = false;
    h.send(&Packet::Connect(Box::new(connect)));
    h.flush();
    assert!(matches!(
        h.received.as_slice(),
        [Packet::ConnAck(c)] if c.reason == ReasonCode::ClientIdentifierNotValid
    ));
    assert!(h.conn.is_closed());
}

#[test]
fn unsupported_protocol_level_gets_return_code_1() {
    let mut h = Harness::new(ConnectionConfig::default(), ProtocolVersion::V311);
    // CONNECT, protocol "MQTT" level 6.
    h.send_raw(&[
        0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 60, 0, 1, b'x',
    ]);
    h.flush();
    assert!(matches!(
        h.received.as_slice(),
        [Packet::ConnAck(c)] if c.reason == ReasonCode::UnsupportedProtocolVersion
    ));
    assert!(h.conn.is_closed());
}

#[test]
fn reject_connect_sends_the_reason_then_closes() {
    let mut h = Harness::new(ConnectionConfig::default(), ProtocolVersion::V5);
    h.send(&Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V5,
        "a",
    ))));
    assert_eq!(
        h.conn.reject_connect(h.now, ReasonCode::Success),
        Err(ConnectionError::NotARefusal(ReasonCode::Success))
    );
    h.conn
        .reject_connect(h.now, ReasonCode::NotAuthorized)
        .expect("awaiting decision");
    assert!(
        !h.conn.is_closed(),
        "stays open until the CONNACK is written"
    );
    h.flush();
    assert!(
        matches!(h.received.as_slice(), [Packet::ConnAck(c)] if c.reason == ReasonCode::NotAuthorized)
    );
    assert!(h.conn.is_closed());
}

#[test]
fn packets_sent_right_behind_connect_wait_for_the_decision() {
    let mut h = Harness::new(ConnectionConfig::default(), ProtocolVersion::V5);
    let mut bytes = encode_to_bytes(
        &Packet::Connect(Box::new(connect_packet(ProtocolVersion::V5, "a"))),
        ProtocolVersion::V5,
    )
    .expect("encodes")
    .to_vec();
    bytes.extend_from_slice(
        &encode_to_bytes(&Packet::PingReq, ProtocolVersion::V5).expect("encodes"),
    );
    h.send_raw(&bytes);
    h.flush();
    assert!(h.received.is_empty());
    h.conn
        .accept_connect(h.now, ConnectAccept::default())
        .expect("awaiting");
    h.flush();
    assert_eq!(
        ids_of(&h.received),
        vec![(PacketType::ConnAck, None), (PacketType::PingResp, None)]
    );
}

// ----- inbound QoS -----

#[test]
fn inbound_qos0_is_an_event_without_ack() {
    let mut h = Harness::v5();
    h.send(&Packet::Publish(publish("a/b", QosPid::AtMostOnce, b"x")));
    let publishes = h.take_publishes();
    assert_eq!(publishes.len(), 1);
    assert!(publishes[0].1.is_none());
    h.flush();
    assert!(h.received.is_empty());
}

#[test]
fn inbound_qos1_is_acknowledged_only_when_the_broker_accepts() {
    let mut h = Harness::v5();
    h.send(&Packet::Publish(publish(
        "a",
        QosPid::AtLeastOnce(pid(7)),
        b"x",
    )));
    h.flush();
    assert!(h.received.is_empty(), "no PUBACK before the broker accepts");
    let (_, ack) = h.take_publishes().pop().expect("one publish");
    h.conn
        .accept_publish(h.now, ack.expect("QoS 1 has an ack"), ReasonCode::Success);
    h.flush();
    assert_eq!(ids_of(&h.received), vec![(PacketType::PubAck, Some(7))]);
}

#[test]
fn inbound_qos2_is_delivered_once_and_released() {
    let mut h = Harness::v5();
    let p = publish("a", QosPid::ExactlyOnce(pid(3)), b"x");
    h.send(&Packet::Publish(p.clone()));
    let (_, ack) = h.take_publishes().pop().expect("one publish");
    h.conn
        .accept_publish(h.now, ack.expect("ack"), ReasonCode::Success);
    h.flush();
    assert_eq!(
        ids_of(&h.take_received()),
        vec![(PacketType::PubRec, Some(3))]
    );
    // The client did not see PUBREC and resends: acknowledged again, not delivered again.
    let mut dup = p;
    dup.dup = true;
    h.send(&Packet::Publish(dup));
    assert!(h.take_publishes().is_empty());
    h.flush();
    assert_eq!(
        ids_of(&h.take_received()),
        vec![(PacketType::PubRec, Some(3))]
    );
    h.send(&Packet::PubRel(Ack::new(pid(3))));
    h.flush();
    assert!(matches!(h.take_received().as_slice(),
        [Packet::PubComp(a)] if a.packet_id == pid(3) && a.reason == ReasonCode::Success));
    assert_eq!(h.conn.session().awaiting_pubrel().count(), 0);
}

#[test]
fn pubrel_for_an_unknown_id_gets_pubcomp_not_found() {
    let mut h = Harness::v5();
    h.send(&Packet::PubRel(Ack::new(pid(9))));
    h.flush();
    assert!(matches!(h.received.as_slice(),
        [Packet::PubComp(a)] if a.reason == ReasonCode::PacketIdentifierNotFound));
}

#[test]
fn exceeding_the_receive_maximum_disconnects_with_0x93() {
    let config = ConnectionConfig {
        receive_maximum: 2,
        ..ConnectionConfig::default()
    };
    let mut h = Harness::connected(
        config,
        connect_packet(ProtocolVersion::V5, "c"),
        SessionState::new(),
    );
    for id in 1..=3 {
        h.send(&Packet::Publish(publish(
            "a",
            QosPid::AtLeastOnce(pid(id)),
            b"x",
        )));
    }
    h.flush();
    assert_eq!(h.take_publishes().len(), 2);
    assert!(matches!(h.received.as_slice(),
        [Packet::Disconnect(d)] if d.reason == ReasonCode::ReceiveMaximumExceeded));
    assert!(h.conn.is_closed());
}

#[test]
fn ack_released_in_time_keeps_the_client_within_its_quota() {
    let config = ConnectionConfig {
        receive_maximum: 1,
        ..ConnectionConfig::default()
    };
    let mut h = Harness::connected(
        config,
        connect_packet(ProtocolVersion::V5, "c"),
        SessionState::new(),
    );
    for id in 1..=5 {
        h.send(&Packet::Publish(publish(
            "a",
            QosPid::AtLeastOnce(pid(id)),
            b"x",
        )));
        let (_, ack) = h.take_publishes().pop().expect("publish event");
        h.conn
            .accept_publish(h.now, ack.expect("ack"), ReasonCode::Success);
    }
    h.flush();
    assert_eq!(h.received.len(), 5);
    assert!(h.conn.is_established());
}

// ----- outbound QoS -----

#[test]
fn outbound_qos1_waits_for_puback_after_being_written() {
    let mut h = Harness::v5();
    assert_eq!(
        h.conn.deliver(h.now, delivery("t", QoS::AtLeastOnce, b"m")),
        DeliverOutcome::Accepted
    );
    let t = h.take_transmit().expect("a PUBLISH to write");
    assert_eq!(h.conn.session().outbound[&pid(1)].state, OutState::Sending);
    h.complete(t);
    assert_eq!(
        h.conn.session().outbound[&pid(1)].state,
        OutState::AwaitPuback
    );
    h.send(&Packet::PubAck(Ack::new(pid(1))));
    assert_eq!(h.conn.session().inflight_len(), 0);
}

#[test]
fn outbound_qos2_walks_every_flow_state() {
    let mut h = Harness::v5();
    h.conn.deliver(h.now, delivery("t", QoS::ExactlyOnce, b"m"));
    h.flush();
    assert_eq!(
        h.conn.session().outbound[&pid(1)].state,
        OutState::AwaitPubrec
    );
    h.send(&Packet::PubRec(Ack::new(pid(1))));
    assert_eq!(
        h.conn.session().outbound[&pid(1)].state,
        OutState::Releasing
    );
    h.flush();
    assert_eq!(
        h.conn.session().outbound[&pid(1)].state,
        OutState::AwaitPubcomp
    );
    h.send(&Packet::PubComp(Ack::new(pid(1))));
    assert_eq!(h.conn.session().inflight_len(), 0);
    assert_eq!(
        ids_of(&h.received),
        vec![
            (PacketType::Publish, Some(1)),
            (PacketType::PubRel, Some(1))
        ]
    );
}

#[test]
fn the_client_receive_maximum_bounds_messages_in_flight() {
    let mut connect = connect_packet(ProtocolVersion::V5, "c");
    connect.properties.receive_maximum = NonZeroU16::new(2);
    let mut h = Harness::connected(ConnectionConfig::default(), connect, SessionState::new());
    for _ in 0..5 {
        h.conn.deliver(h.now, delivery("t", QoS::AtLeastOnce, b"m"));
    }
    h.flush();
    assert_eq!(
        ids_of(&h.take_received()),
        vec![
            (PacketType::Publish, Some(1)),
            (PacketType::Publish, Some(2))
        ]
    );
    assert_eq!(h.conn.session().queued_len(), 3);
    h.send(&Packet::PubAck(Ack::new(pid(1))));
    h.flush();
    assert_eq!(
        ids_of(&h.take_received()),
        vec![(PacketType::Publish, Some(3))]
    );
}

#[test]
fn qos0_behind_a_full_window_keeps_its_order() {
    let mut connect = connect_packet(ProtocolVersion::V5, "c");
    connect.properties.receive_maximum = NonZeroU16::new(1);
    let mut h = Harness::connected(ConnectionConfig::default(), connect, SessionState::new());
    h.conn.deliver(h.now, delivery("t", QoS::AtLeastOnce, b"1"));
    h.conn.deliver(h.now, delivery("t", QoS::AtLeastOnce, b"2"));
    h.conn.deliver(h.now, delivery("t", QoS::AtMostOnce, b"3"));
    h.flush();
    assert_eq!(h.take_received().len(), 1);
    h.send(&Packet::PubAck(Ack::new(pid(1))));
    h.flush();
    let payloads: Vec<Bytes> = h
        .take_received()
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.payload),
            _ => None,
        })
        .collect();
    assert_eq!(
        payloads,
        vec![Bytes::from_static(b"2"), Bytes::from_static(b"3")]
    );
}

#[test]
fn an_ack_that_overtakes_the_write_completion_does_not_free_the_id_early() {
    let mut connect = connect_packet(ProtocolVersion::V5, "c");
    connect.properties.receive_maximum = NonZeroU16::new(1);
    let mut h = Harness::connected(ConnectionConfig::default(), connect, SessionState::new());
    h.conn.deliver(h.now, delivery("t", QoS::AtLeastOnce, b"1"));
    let t = h.take_transmit().expect("PUBLISH 1");
    // The peer acks before the driver reports the write.
    h.send(&Packet::PubAck(Ack::new(pid(1))));
    assert_eq!(h.conn.session().outbound[&pid(1)].state, OutState::Done);
    h.conn.deliver(h.now, delivery("t", QoS::AtLeastOnce, b"2"));
    // The finished flow still holds its id and its window slot until its frame completes.
    assert_eq!(h.conn.session().queued_len(), 1);
    h.complete(t);
    assert!(!h.conn.session().outbound.contains_key(&pid(1)));
    assert_eq!(h.conn.session().queued_len(), 0);
    h.flush();
    let ids: Vec<_> = ids_of(&h.received);
    assert_eq!(
        ids,
        vec![
            (PacketType::Publish, Some(1)),
            (PacketType::Publish, Some(2))
        ]
    );
}

#[test]
fn frames_ready_together_are_written_as_one_batch() {
    let mut h = Harness::v5();
    for _ in 0..10 {
        h.conn
            .deliver(h.now, delivery("t", QoS::AtMostOnce, b"small"));
    }
    let t = h.take_transmit().expect("one batch");
    assert_eq!(t.frames.frame_count(), 10);
    h.complete(t);
    assert!(h.take_transmit().is_none());
    assert_eq!(h.received.len(), 10);
}

// ----- resume -----

#[test]
fn resume_resends_publish_with_dup_then_pubrel_in_original_order() {
    let mut h = Harness::v5();
    h.conn.deliver(h.now, delivery("t", QoS::ExactlyOnce, b"a"));
    h.conn.deliver(h.now, delivery("t", QoS::AtLeastOnce, b"b"));
    h.flush();
    h.send(&Packet::PubRec(Ack::new(pid(1))));
    h.flush();
    h.conn
        .handle_transport_closed(h.now, TransportFault::PeerClosed);
    let (session, _) = h.conn.into_session();

    let mut h2 = Harness::new(ConnectionConfig::default(), ProtocolVersion::V5);
    let mut connect = connect_packet(ProtocolVersion::V5, "c1");
    connect.clean_start = false;
    h2.send(&Packet::Connect(Box::new(connect)));
    h2.conn
        .accept_connect(
            h2.now,
            ConnectAccept {
                session,
                session_present: true,
                assigned_client_id: None,
            },
        )
        .expect("awaiting");
    h2.flush();
    let got = h2.take_received();
    assert!(matches!(&got[0], Packet::ConnAck(c) if c.session_present));
    assert!(matches!(&got[1], Packet::PubRel(a) if a.packet_id == pid(1)));
    assert!(
        matches!(&got[2], Packet::Publish(p) if p.dup && p.qos_pid == QosPid::AtLeastOnce(pid(2)))
    );
    assert_eq!(got.len(), 3);
}

#[test]
fn frames_never_handed_out_are_resent_without_dup() {
    let mut h = Harness::v5();
    h.conn.deliver(h.now, delivery("t", QoS::AtLeastOnce, b"a"));
    // Connection dies before the driver ever took the frame.
    h.conn
        .handle_transport_closed(h.now, TransportFault::PeerClosed);
    let (session, report) = h.conn.into_session();
    assert_eq!(report.unsent, 1);
    let mut connect = connect_packet(ProtocolVersion::V5, "c1");
    connect.clean_start = false;
    let mut h2 = Harness::new(ConnectionConfig::default(), ProtocolVersion::V5);
    h2.send(&Packet::Connect(Box::new(connect)));
    h2.conn
        .accept_connect(
            h2.now,
            ConnectAccept {
                session,
                session_present: true,
                assigned_client_id: None,
            },
        )
        .expect("awaiting");
    h2.flush();
    assert!(matches!(&h2.received[1], Packet::Publish(p) if !p.dup));
}

// ----- keep-alive -----

#[test]
fn keep_alive_expiry_disconnects_v5_with_0x8d_after_one_and_a_half_intervals() {
    let mut h = Harness::v5();
    let deadline = h.conn.poll_timeout().expect("keep-alive armed");
    assert_eq!(deadline, h.now + Duration::from_secs(90));
    h.advance(Duration::from_secs(89));
    assert!(h.conn.is_established());
    h.advance(Duration::from_secs(1));
    h.flush();
    assert!(
        matches!(h.received.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::KeepAliveTimeout)
    );
    assert!(h.conn.is_closed());
    assert_eq!(h.closed_reason(), Some(&CloseReason::KeepAliveTimeout));
}

#[test]
fn keep_alive_expiry_closes_v311_without_a_packet() {
    let mut h = Harness::connected(
        ConnectionConfig::default(),
        connect_packet(ProtocolVersion::V311, "c"),
        SessionState::new(),
    );
    h.advance(Duration::from_secs(90));
    h.flush();
    assert!(h.received.is_empty());
    assert!(h.conn.is_closed());
}

#[test]
fn any_packet_resets_the_keep_alive() {
    let mut h = Harness::v5();
    h.advance(Duration::from_secs(80));
    h.send(&Packet::PingReq);
    h.advance(Duration::from_secs(80));
    assert!(h.conn.is_established());
    h.flush();
    assert_eq!(ids_of(&h.received), vec![(PacketType::PingResp, None)]);
}

#[test]
fn server_keep_alive_replaces_a_longer_request() {
    let config = ConnectionConfig {
        max_keep_alive: Some(30),
        ..ConnectionConfig::default()
    };
    let mut h = Harness::new(config, ProtocolVersion::V5);
    h.send(&Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V5,
        "a",
    ))));
    h.conn
        .accept_connect(h.now, ConnectAccept::default())
        .expect("awaiting");
    h.flush();
    assert!(
        matches!(h.received.as_slice(), [Packet::ConnAck(c)] if c.properties.server_keep_alive == Some(30))
    );
    assert_eq!(h.conn.keep_alive(), 30);
}

// ----- aliases -----

#[test]
fn inbound_topic_alias_is_set_then_used() {
    let mut h = Harness::v5();
    let mut first = publish("long/topic", QosPid::AtMostOnce, b"1");
    first.properties.topic_alias = NonZeroU16::new(3);
    h.send(&Packet::Publish(first));
    let mut second = publish("x", QosPid::AtMostOnce, b"2");
    second.topic = TopicName::empty_for_alias();
    second.properties.topic_alias = NonZeroU16::new(3);
    h.send(&Packet::Publish(second));
    let got = h.take_publishes();
    assert_eq!(got[1].0.topic.as_str(), "long/topic");
    assert_eq!(
        got[1].0.properties.topic_alias, None,
        "the alias does not leak to the broker"
    );
    assert_eq!(h.conn.inbound_alias(3), Some(&topic("long/topic")));
}

#[test]
fn topic_alias_above_the_maximum_disconnects_with_0x94() {
    let mut h = Harness::v5();
    let mut p = publish("a", QosPid::AtMostOnce, b"1");
    p.properties.topic_alias = NonZeroU16::new(65);
    h.send(&Packet::Publish(p));
    h.flush();
    assert!(
        matches!(h.received.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::TopicAliasInvalid)
    );
}

#[test]
fn an_alias_never_set_is_a_protocol_error() {
    let mut h = Harness::v5();
    let mut p = publish("a", QosPid::AtMostOnce, b"1");
    p.topic = TopicName::empty_for_alias();
    p.properties.topic_alias = NonZeroU16::new(1);
    h.send(&Packet::Publish(p));
    h.flush();
    assert!(
        matches!(h.received.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::ProtocolError)
    );
}

#[test]
fn outbound_aliases_are_assigned_up_to_the_client_maximum() {
    let mut connect = connect_packet(ProtocolVersion::V5, "c");
    connect.properties.topic_alias_maximum = Some(1);
    let mut h = Harness::connected(ConnectionConfig::default(), connect, SessionState::new());
    for t in ["a/1", "a/1", "b/2", "a/1"] {
        h.conn.deliver(h.now, delivery(t, QoS::AtMostOnce, b"m"));
    }
    h.flush();
    let seen: Vec<(String, Option<u16>)> = h
        .received
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((
                p.topic.as_str().to_string(),
                p.properties.topic_alias.map(|a| a.get()),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("a/1".to_string(), Some(1)),
            (String::new(), Some(1)),
            ("b/2".to_string(), None),
            (String::new(), Some(1)),
        ]
    );
}

// ----- limits -----

#[test]
fn a_message_over_the_client_maximum_packet_size_is_dropped_and_counted() {
    let mut connect = connect_packet(ProtocolVersion::V5, "c");
    connect.properties.maximum_packet_size = NonZeroU32::new(64);
    let mut h = Harness::connected(ConnectionConfig::default(), connect, SessionState::new());
    static BIG: [u8; 100] = [7; 100];
    h.conn.deliver(h.now, delivery("t", QoS::AtLeastOnce, &BIG));
    h.conn
        .deliver(h.now, delivery("t", QoS::AtLeastOnce, b"small"));
    h.drain_events();
    h.flush();
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::Dropped {
            reason: DropReason::TooLarge,
            ..
        }
    )));
    assert_eq!(h.conn.session().drops().too_large, 1);
    // The small one still goes out, and takes packet id 1: the big one never held an id.
    assert!(
        matches!(h.received.as_slice(), [Packet::Publish(p)] if p.qos_pid == QosPid::AtLeastOnce(pid(1)))
    );
}

#[test]
fn expired_messages_are_dropped_and_the_rest_carry_the_remaining_expiry() {
    let mut h = Harness::v5();
    let mut soon = delivery("t", QoS::AtMostOnce, b"soon");
    soon.expires_at = Some(h.now + Duration::from_secs(1));
    let mut later = delivery("t", QoS::AtMostOnce, b"later");
    later.expires_at = Some(h.now + Duration::from_secs(100));
    // Queue both behind a write in flight, then let time pass.
    h.conn
        .deliver(h.now, delivery("t", QoS::AtMostOnce, b"first"));
    let t = h.take_transmit().expect("first write");
    h.conn.session.queue.push_back(soon);
    h.conn.session.queue.push_back(later);
    h.now += Duration::from_secs(10);
    h.complete(t);
    h.flush();
    let expiries: Vec<Option<u32>> = h
        .received
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.properties.message_expiry_interval),
            _ => None,
        })
        .collect();
    assert_eq!(expiries, vec![None, Some(90)]);
    assert_eq!(h.conn.session().drops().expired, 1);
}

#[test]
fn a_client_that_does_not_read_stops_being_read() {
    let config = ConnectionConfig {
        max_outbox_bytes: 16,
        ..ConnectionConfig::default()
    };
    let mut h = Harness::connected(
        config,
        connect_packet(ProtocolVersion::V5, "c"),
        SessionState::new(),
    );
    for _ in 0..20 {
        h.send(&Packet::PingReq);
    }
    assert!(!h.conn.wants_read(), "output is backed up");
    h.flush();
    assert!(h.conn.wants_read());
    assert_eq!(
        h.received.len(),
        20,
        "every PINGREQ was answered once the output drained"
    );
}

// ----- the send seam -----

#[test]
fn write_zero_ends_the_connection_and_keeps_qos1_for_the_next() {
    let mut h = Harness::v5();
    h.conn.deliver(h.now, delivery("t", QoS::AtLeastOnce, b"m"));
    let t = h.take_transmit().expect("write");
    h.fail(t, TransportFault::WriteZero);
    assert_eq!(
        h.closed_reason(),
        Some(&CloseReason::Transport(TransportFault::WriteZero))
    );
    let (mut session, _) = h.conn.into_session();
    assert_eq!(session.inflight_len(), 1);
    assert_eq!(
        session.next_queued_flow(),
        Some((pid(1), Resend::Publish { dup: true }))
    );
}

#[test]
fn a_stalled_write_surfaces_through_poll_timeout() {
    let mut h = Harness::v5();
    h.conn.deliver(h.now, delivery("t", QoS::AtLeastOnce, b"m"));
    let t = h.take_transmit().expect("write");
    let stall = ConnectionConfig::default().send_timeout;
    assert_eq!(h.conn.poll_timeout(), Some(h.now + stall));
    h.advance(stall);
    assert_eq!(
        h.closed_reason(),
        Some(&CloseReason::Transport(TransportFault::Stalled))
    );
    // The transport's late completion is still accepted and nothing is counted twice.
    h.complete(t);
    let (session, report) = h.conn.into_session();
    assert!(report.abandoned.is_empty());
    assert_eq!(session.inflight_len(), 1);
}

#[test]
fn unknown_and_duplicate_completions_are_rejected_loudly() {
    let mut h = Harness::v5();
    h.conn.deliver(h.now, delivery("t", QoS::AtMostOnce, b"m"));
    let t = h.take_transmit().expect("write");
    let forged = SendCompletion::Written {
        ticket: SendTicket::forged(t.ticket.id() + 1),
        frames: t.frames.clone(),
    };
    assert!(matches!(
        h.conn.handle_completion(h.now, forged),
        Err(CompletionError::UnknownTicket { .. })
    ));
    h.drain_events();
    assert!(matches!(h.closed_reason(), Some(CloseReason::SendSeam(_))));
    // The real completion still ends the write exactly once; a repeat is refused.
    let id = t.ticket.id();
    let frames = t.frames.clone();
    h.complete(t);
    let again = SendCompletion::Written {
        ticket: SendTicket::forged(id),
        frames,
    };
    assert!(h.conn.handle_completion(h.now, again).is_err());
}

// ----- will, disconnect -----

#[test]
fn the_will_is_kept_for_abrupt_closes_and_dropped_on_normal_disconnect() {
    let will = Will {
        topic: topic("will"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    };
    let cases = [
        (None, true),
        (Some(ReasonCode::Success), false),
        (Some(ReasonCode::DisconnectWithWill), true),
    ];
    for (disconnect, expect_will) in cases {
        let mut connect = connect_packet(ProtocolVersion::V5, "c");
        connect.will = Some(will.clone());
        let mut h = Harness::connected(ConnectionConfig::default(), connect, SessionState::new());
        match disconnect {
            Some(reason) => h.send(&Packet::Disconnect(Disconnect::new(reason))),
            None => h
                .conn
                .handle_transport_closed(h.now, TransportFault::PeerClosedMidPacket),
        }
        let (_, report) = h.conn.into_session();
        assert_eq!(report.will.is_some(), expect_will, "{disconnect:?}");
    }
}

#[test]
fn disconnect_may_not_set_a_session_expiry_after_connect_set_zero() {
    let mut h = Harness::v5();
    let mut d = Disconnect::new(ReasonCode::Success);
    d.properties.session_expiry_interval = Some(60);
    h.send(&Packet::Disconnect(d));
    h.flush();
    assert!(
        matches!(h.received.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::ProtocolError)
    );
}

#[test]
fn broker_disconnect_tells_v5_clients_why() {
    let mut h = Harness::v5();
    h.conn.disconnect(h.now, ReasonCode::SessionTakenOver);
    h.flush();
    assert!(
        matches!(h.received.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::SessionTakenOver)
    );
    assert_eq!(
        h.closed_reason(),
        Some(&CloseReason::Broker {
            reason: ReasonCode::SessionTakenOver
        })
    );
}

#[test]
fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let mut h = Harness::v5();
    let mut options = SubscriptionOptions::qos(QoS::AtMostOnce);
    options.no_local = true;
    h.send(&Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: vec![(TopicFilter::new("$share/g/a").expect("valid"), options)],
        properties: Properties::default(),
    }));
    h.flush();
    assert!(
        matches!(h.received.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::ProtocolError)
    );
}

#[test]
fn a_batch_is_never_empty() {
    // The only way to build a batch is from a frame, and a frame only from encoding.
    let frame = OutboundFrame::encode(
        &Packet::PingResp,
        ProtocolVersion::V311,
        2,
        &mut BytesMut::new(),
    )
    .expect("PINGRESP fits in 2 bytes");
    let batch = FrameBatch::new(frame);
    assert_eq!(batch.frame_count(), 1);
    assert_eq!(batch.wire_len(), 2);
    assert!(matches!(
        OutboundFrame::encode(
            &Packet::PingResp,
            ProtocolVersion::V311,
            1,
            &mut BytesMut::new()
        ),
        Err(crate::protocol::frame::FrameError::TooLarge { .. })
    ));
}

#[test]
fn a_client_publish_with_a_subscription_identifier_is_a_protocol_error() {
    let mut h = Harness::v5();
    let mut p = publish("a", QosPid::AtMostOnce, b"1");
    p.properties.subscription_identifiers = vec![NonZeroU32::new(4).expect("non-zero")];
    h.send(&Packet::Publish(p));
    h.flush();
    assert!(matches!(h.received.as_slice(),
        [Packet::Disconnect(d)] if d.reason == ReasonCode::ProtocolError));
}

#[test]
fn a_payload_declared_utf8_that_is_not_gets_0x99() {
    let mut h = Harness::v5();
    let mut p = publish("a", QosPid::AtMostOnce, &[0xFF, 0xFE]);
    p.properties.payload_format_indicator = Some(true);
    h.send(&Packet::Publish(p));
    h.flush();
    assert!(matches!(h.received.as_slice(),
        [Packet::Disconnect(d)] if d.reason == ReasonCode::PayloadFormatInvalid));
}

#[test]
fn a_full_queue_drops_the_new_or_the_oldest_message_as_configured() {
    for (policy, expected) in [
        (QueuePolicy::DropNew, [&b"1"[..], b"2"]),
        (QueuePolicy::DropOldest, [&b"2"[..], b"3"]),
    ] {
        let config = ConnectionConfig {
            max_queued_messages: 2,
            queue_full_policy: policy,
            ..ConnectionConfig::default()
        };
        let mut connect = connect_packet(ProtocolVersion::V5, "c");
        connect.properties.receive_maximum = NonZeroU16::new(1);
        let mut h = Harness::connected(config, connect, SessionState::new());
        // One in flight holds the window; the next three compete for two queue slots.
        h.conn.deliver(h.now, delivery("t", QoS::AtLeastOnce, b"0"));
        for payload in [&b"1"[..], b"2", b"3"] {
            let d = Delivery {
                payload: Bytes::copy_from_slice(payload),
                ..delivery("t", QoS::AtLeastOnce, b"")
            };
            h.conn.deliver(h.now, d);
        }
        let queued: Vec<&[u8]> = h
            .conn
            .session()
            .queued()
            .map(|d| d.payload.as_ref())
            .collect();
        assert_eq!(queued, expected, "{policy:?}");
        assert_eq!(h.conn.session().drops().queue_full, 1);
        h.drain_events();
        assert_eq!(
            h.events
                .iter()
                .filter(|e| matches!(
                    e,
                    Event::Dropped {
                        reason: DropReason::QueueFull,
                        ..
                    }
                ))
                .count(),
            1
        );
    }
}

// ----- lanes (multi-stream QUIC) -----

const DATA: LaneId = LaneId(4);
const DATA2: LaneId = LaneId(8);

#[test]
fn a_data_lane_opened_before_connack_waits_for_it() {
    let mut h = Harness::new(ConnectionConfig::default(), ProtocolVersion::V5);
    h.conn.open_lane(DATA);
    h.send_on(DATA, &Packet::PingReq);
    h.send(&Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V5,
        "m",
    ))));
    h.flush();
    assert!(h.received.is_empty(), "nothing before the broker accepts");
    h.conn
        .accept_connect(h.now, ConnectAccept::default())
        .expect("awaiting");
    h.flush();
    assert_eq!(
        h.received_on,
        vec![
            (LaneId::CONTROL, PacketType::ConnAck, None),
            (DATA, PacketType::PingResp, None)
        ]
    );
}

#[test]
fn replies_and_deliveries_follow_the_lane_of_their_request() {
    let mut h = Harness::v5();
    h.conn.open_lane(DATA);
    h.conn.open_lane(DATA2);
    h.send_on(
        DATA,
        &Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![(
                TopicFilter::new("a/#").expect("filter"),
                SubscriptionOptions::qos(QoS::AtLeastOnce),
            )],
            properties: Properties::default(),
        }),
    );
    let Some(Event::Subscribe(sub)) = h.events.pop() else {
        panic!("subscribe event: {:?}", h.events)
    };
    h.conn.send_suback(
        h.now,
        SubAck {
            packet_id: sub.packet_id,
            reasons: vec![ReasonCode::GrantedQoS1],
            properties: Properties::default(),
        },
    );
    h.conn
        .deliver(h.now, delivery("a/1", QoS::AtLeastOnce, b"x"));
    h.conn
        .deliver(h.now, delivery("other", QoS::AtMostOnce, b"y"));
    h.send_on(
        DATA2,
        &Packet::Publish(publish("in", QosPid::AtLeastOnce(pid(5)), b"z")),
    );
    let (_, ack) = h.take_publishes().pop().expect("publish");
    h.conn
        .accept_publish(h.now, ack.expect("ack"), ReasonCode::Success);
    h.send(&Packet::PingReq);
    h.flush();
    let mut got = h.received_on.clone();
    got.sort_by_key(|(lane, kind, id)| (*lane, *kind as u8, *id));
    assert_eq!(
        got,
        vec![
            (LaneId::CONTROL, PacketType::Publish, None),
            (LaneId::CONTROL, PacketType::PingResp, None),
            (DATA, PacketType::Publish, Some(1)),
            (DATA, PacketType::SubAck, Some(1)),
            (DATA2, PacketType::PubAck, Some(5)),
        ]
    );
}

fn subscribe_on(h: &mut Harness, lane: LaneId, filter: &str, qos: QoS) {
    h.send_on(
        lane,
        &Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![(
                TopicFilter::new(filter).expect("filter"),
                SubscriptionOptions::qos(qos),
            )],
            properties: Properties::default(),
        }),
    );
    h.events.clear();
    h.conn.send_suback(
        h.now,
        SubAck {
            packet_id: pid(1),
            reasons: vec![ReasonCode::granted(qos)],
            properties: Properties::default(),
        },
    );
    h.flush();
    h.received_on.clear();
    h.received.clear();
}

#[test]
fn a_data_lane_reset_mid_qos2_flow_completes_on_the_control_lane_without_loss() {
    let mut h = Harness::v5();
    h.conn.open_lane(DATA);
    subscribe_on(&mut h, DATA, "q/#", QoS::ExactlyOnce);
    h.conn
        .deliver(h.now, delivery("q/1", QoS::ExactlyOnce, b"once"));
    h.flush();
    assert_eq!(h.received_on, vec![(DATA, PacketType::Publish, Some(1))]);
    h.received.clear();
    // The client's stream is reset before it could answer.
    h.conn
        .handle_lane_closed(h.now, DATA, TransportFault::StreamReset(0));
    assert!(
        h.conn.is_established(),
        "a data lane's end is not the connection's"
    );
    h.flush();
    let resent = h.take_received();
    assert!(matches!(resent.as_slice(),
        [Packet::Publish(p)] if p.dup && p.qos_pid == QosPid::ExactlyOnce(pid(1))));
    assert_eq!(h.received_on.last().map(|r| r.0), Some(LaneId::CONTROL));
    // The client recognises packet id 1 (it dedups QoS 2 by id) and finishes the flow.
    h.send(&Packet::PubRec(Ack::new(pid(1))));
    h.flush();
    h.send(&Packet::PubComp(Ack::new(pid(1))));
    assert_eq!(h.conn.session().inflight_len(), 0);
    assert_eq!(h.conn.session().drops().total(), 0);
}

#[test]
fn a_stalled_data_lane_is_reset_alone_and_never_delays_the_control_lane() {
    let mut h = Harness::v5();
    h.conn.open_lane(DATA);
    subscribe_on(&mut h, DATA, "big/#", QoS::AtLeastOnce);
    h.conn
        .deliver(h.now, delivery("big/1", QoS::AtLeastOnce, b"payload"));
    let stuck = h.take_transmit().expect("a write on the data lane");
    assert_eq!(stuck.lane, DATA);
    // While that write hangs, the control lane answers a PINGREQ at once.
    h.send(&Packet::PingReq);
    let ping = h.take_transmit().expect("the control lane is not blocked");
    assert_eq!(ping.lane, LaneId::CONTROL);
    h.complete(ping);
    h.advance(ConnectionConfig::default().send_timeout);
    assert_eq!(h.conn.poll_lane_reset(), Some(DATA));
    assert!(h.conn.is_established());
    h.flush();
    let resent: Vec<_> = h
        .received_on
        .iter()
        .filter(|r| r.1 == PacketType::Publish)
        .cloned()
        .collect();
    assert_eq!(
        resent,
        vec![(LaneId::CONTROL, PacketType::Publish, Some(1))]
    );
    // The stuck write's late completion is accepted once, then refused.
    let id = stuck.ticket.id();
    let frames = stuck.frames.clone();
    h.complete(stuck);
    let again = SendCompletion::Written {
        ticket: SendTicket::forged(id),
        frames,
    };
    assert!(h.conn.handle_completion(h.now, again).is_err());
}

// ----- stored flows: the store records each QoS 2 step before the packet leaves -----

fn stored(t: &str, qos: QoS, payload: &'static [u8], row: u64) -> Delivery {
    Delivery {
        row: Some(row),
        ..delivery(t, qos, payload)
    }
}

fn flow_steps(h: &mut Harness) -> Vec<FlowStep> {
    let mut steps = Vec::new();
    h.events.retain(|e| match e {
        Event::Flow(step) => {
            steps.push(*step);
            false
        }
        _ => true,
    });
    steps
}

/// The one step waiting for the store must be `step`: record it and write what waited.
fn record_only(h: &mut Harness, step: FlowStep) {
    assert_eq!(flow_steps(h), vec![step]);
    let (FlowStep::Sending { row, packet_id } | FlowStep::Received { row, packet_id }) = step
    else {
        panic!("{step:?} waits for nothing");
    };
    h.conn.flow_recorded(h.now, packet_id, row);
    h.flush();
}

#[test]
fn a_stored_qos2_publish_and_pubrel_wait_for_the_store_and_nothing_overtakes_them() {
    let mut h = Harness::v5();
    h.conn
        .deliver(h.now, stored("t", QoS::ExactlyOnce, b"a", 10));
    h.conn
        .deliver(h.now, stored("t", QoS::ExactlyOnce, b"b", 11));
    h.conn
        .deliver(h.now, stored("t", QoS::AtLeastOnce, b"c", 12));
    h.conn.deliver(h.now, delivery("t", QoS::AtMostOnce, b"d"));
    h.drain_events();
    h.flush();
    assert!(h.take_received().is_empty(), "nothing before the store");
    assert_eq!(
        flow_steps(&mut h),
        vec![
            FlowStep::Sending {
                row: 10,
                packet_id: pid(1)
            },
            FlowStep::Sending {
                row: 11,
                packet_id: pid(2)
            },
        ],
        "both QoS 2 ids go to the store together; QoS 1 and 0 wait behind them"
    );
    // Recorded out of order: the second waits for the first.
    h.conn.flow_recorded(h.now, pid(2), 11);
    h.flush();
    assert!(h.take_received().is_empty());
    // A wrong row for the id changes nothing.
    h.conn.flow_recorded(h.now, pid(1), 99);
    h.flush();
    assert!(h.take_received().is_empty());
    h.conn.flow_recorded(h.now, pid(1), 10);
    h.drain_events();
    h.flush();
    let got = h.take_received();
    let payloads: Vec<&[u8]> = got
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.payload.as_ref()),
            _ => None,
        })
        .collect();
    assert_eq!(payloads, vec![&b"a"[..], b"b", b"c", b"d"], "routing order");

    // PUBREC: the PUBREL waits for the store too.
    h.send(&Packet::PubRec(Ack::new(pid(1))));
    h.flush();
    assert!(h.take_received().is_empty());
    record_only(
        &mut h,
        FlowStep::Received {
            row: 10,
            packet_id: pid(1),
        },
    );
    assert_eq!(
        ids_of(&h.take_received()),
        vec![(PacketType::PubRel, Some(1))]
    );
    h.send(&Packet::PubComp(Ack::new(pid(1))));
    h.send(&Packet::PubAck(Ack::new(pid(3))));
    assert_eq!(
        flow_steps(&mut h),
        vec![
            FlowStep::Finished { row: 10 },
            FlowStep::Finished { row: 12 }
        ]
    );
}

#[test]
fn a_stored_qos2_flow_cut_before_its_record_is_recorded_again_on_the_next_connection() {
    let mut h = Harness::v5();
    h.conn
        .deliver(h.now, stored("t", QoS::ExactlyOnce, b"a", 7));
    h.drain_events();
    assert_eq!(flow_steps(&mut h).len(), 1);
    h.conn
        .handle_transport_closed(h.now, TransportFault::PeerClosed);
    let (session, _) = h.conn.into_session();
    // Written whole as the session goes offline: in flight under id 1.
    assert_eq!(session.snapshot().inflight[0].packet_id, pid(1));

    let mut connect = connect_packet(ProtocolVersion::V5, "c1");
    connect.clean_start = false;
    let mut h2 = Harness::connected(ConnectionConfig::default(), connect, session);
    assert!(h2.take_received().is_empty(), "not sent before the record");
    record_only(
        &mut h2,
        FlowStep::Sending {
            row: 7,
            packet_id: pid(1),
        },
    );
    assert!(matches!(h2.take_received().as_slice(),
        [Packet::Publish(p)] if p.qos_pid == QosPid::ExactlyOnce(pid(1)) && !p.dup));
}

#[test]
fn a_restored_flow_is_already_recorded_and_a_dropped_stored_message_frees_its_row() {
    let mut state = SessionState::new();
    let mut snapshot = state.snapshot();
    snapshot.inflight.push(crate::protocol::InflightMessage {
        packet_id: pid(4),
        message: stored("t", QoS::ExactlyOnce, b"a", 3),
        released: false,
    });
    state = SessionState::restore(snapshot);
    let mut connect = connect_packet(ProtocolVersion::V5, "c1");
    connect.clean_start = false;
    let mut h = Harness::connected(ConnectionConfig::default(), connect, state);
    assert!(matches!(h.take_received().as_slice(),
        [Packet::Publish(p)] if p.dup && p.qos_pid == QosPid::ExactlyOnce(pid(4))));
    assert!(flow_steps(&mut h).is_empty());

    let mut expired = stored("t", QoS::AtLeastOnce, b"old", 5);
    expired.expires_at = Some(h.now);
    h.conn.deliver(h.now, expired);
    h.drain_events();
    assert_eq!(flow_steps(&mut h), vec![FlowStep::Finished { row: 5 }]);
}

#[test]
fn with_recorded_releases_pubcomp_waits_for_the_store_and_the_id_stays_taken() {
    let mut h = Harness::v5();
    h.conn.record_releases(true);
    let p = publish("a", QosPid::ExactlyOnce(pid(3)), b"x");
    h.send(&Packet::Publish(p.clone()));
    let (_, ack) = h.take_publishes().pop().expect("one publish");
    h.conn
        .accept_publish(h.now, ack.expect("ack"), ReasonCode::Success);
    h.send(&Packet::PubRel(Ack::new(pid(3))));
    h.send(&Packet::PubRel(Ack::new(pid(3))));
    h.flush();
    assert_eq!(
        ids_of(&h.take_received()),
        vec![(PacketType::PubRec, Some(3))]
    );
    let released: Vec<&Event> = h
        .events
        .iter()
        .filter(|e| matches!(e, Event::Released { .. }))
        .collect();
    assert_eq!(released.len(), 1, "a repeated PUBREL asks once");
    // Until the store has forgotten it, a resent PUBLISH is still a duplicate.
    let mut dup = p;
    dup.dup = true;
    h.send(&Packet::Publish(dup));
    assert!(h.take_publishes().is_empty());
    h.conn.release_recorded(h.now, pid(3));
    h.flush();
    let got = h.take_received();
    assert!(matches!(got.last(),
        Some(Packet::PubComp(a)) if a.packet_id == pid(3) && a.reason == ReasonCode::Success));
    assert_eq!(h.conn.session().awaiting_pubrel().count(), 0);
}

#[test]
fn an_inbound_qos2_id_routed_but_not_yet_acknowledged_stays_taken_after_a_close() {
    let mut h = Harness::v5();
    h.send(&Packet::Publish(publish(
        "a",
        QosPid::ExactlyOnce(pid(8)),
        b"x",
    )));
    let (_, ack) = h.take_publishes().pop().expect("one publish");
    h.conn.publish_routed(&ack.expect("ack"));
    h.conn
        .handle_transport_closed(h.now, TransportFault::PeerClosed);
    let (session, _) = h.conn.into_session();
    assert_eq!(session.awaiting_pubrel().collect::<Vec<_>>(), vec![pid(8)]);
}

#[test]
fn an_inbound_qos2_id_not_routed_is_free_after_a_close() {
    // Refused by the broker (store full), its refusal still queued behind other acks when
    // the connection ends: the client's resend must be routed, not answered as a copy.
    let mut h = Harness::v5();
    h.send(&Packet::Publish(publish(
        "a",
        QosPid::ExactlyOnce(pid(8)),
        b"x",
    )));
    assert_eq!(h.take_publishes().len(), 1);
    h.conn
        .handle_transport_closed(h.now, TransportFault::PeerClosed);
    let (session, _) = h.conn.into_session();
    assert_eq!(session.awaiting_pubrel().count(), 0);
}

#[test]
fn a_refusing_pubrec_frees_the_id_even_if_it_was_routed() {
    let mut h = Harness::v5();
    h.send(&Packet::Publish(publish(
        "a",
        QosPid::ExactlyOnce(pid(9)),
        b"x",
    )));
    let ack = h
        .take_publishes()
        .pop()
        .expect("one publish")
        .1
        .expect("ack");
    h.conn.publish_routed(&ack);
    h.conn
        .accept_publish(h.now, ack, ReasonCode::ImplementationSpecificError);
    h.flush();
    assert!(matches!(h.take_received().last(),
        Some(Packet::PubRec(a)) if a.reason == ReasonCode::ImplementationSpecificError));
    assert_eq!(h.conn.session().awaiting_pubrel().count(), 0);
}

#[test]
fn a_stored_qos2_message_too_large_for_the_client_is_dropped_before_any_record() {
    let mut connect = connect_packet(ProtocolVersion::V5, "c1");
    connect.properties.maximum_packet_size = NonZeroU32::new(64);
    let mut h = Harness::connected(ConnectionConfig::default(), connect, SessionState::new());
    static BIG: [u8; 100] = [7; 100];
    h.conn
        .deliver(h.now, stored("t", QoS::ExactlyOnce, &BIG, 4));
    h.drain_events();
    assert_eq!(flow_steps(&mut h), vec![FlowStep::Finished { row: 4 }]);
    assert_eq!(h.conn.session().drops().too_large, 1);
    assert_eq!(h.conn.session().inflight_len(), 0);
}
