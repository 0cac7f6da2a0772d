//! Property test of the conservation invariant (DESIGN §3): for any interleaving of
//! deliveries, peer packets, completions (good, failed, forged), progress reports, timeouts
//! and transport loss, every frame handed out is completed exactly once or reported
//! abandoned at close, and every QoS 1/2 message accepted is acknowledged by the peer,
//! still held by the session, or dropped and counted; never two of these, never none.
//! A second connection then resumes the session and must finish every held message.
//!
//! Some deliveries are stored (`Delivery::row`): a model store records their steps in any
//! order, late or never, and a stored QoS 2 PUBLISH or PUBREL must never reach the peer
//! before the store has recorded the step it waits for; every row is finished at most
//! once, and only for a message the peer finished or that was dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::tests::{connect_packet, pid, Harness};
use super::*;
use crate::protocol::frame::{FrameBatch, OutboundFrame, SendTicket};
use crate::protocol::packet::{Ack, Properties, Publish};
use crate::protocol::session::Delivery;
use crate::protocol::types::QosPid;

#[derive(Debug, Clone)]
enum Op {
    Deliver {
        qos: u8,
        big: bool,
        stored: bool,
    },
    /// The store records one of the steps waiting for it.
    Record {
        pick: u8,
    },
    Transmit,
    Complete,
    Fail,
    Progress,
    ForgedCompletion,
    PeerAck,
    PeerPublish {
        qos: u8,
    },
    BrokerAccept,
    Ping,
    Advance {
        secs: u8,
    },
    TransportClosed,
    OpenLane {
        lane: u8,
    },
    SubscribeOnLane {
        lane: u8,
    },
    CloseLane {
        lane: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, proptest::bool::weighted(0.1), proptest::bool::ANY)
            .prop_map(|(qos, big, stored)| Op::Deliver { qos, big, stored }),
        4 => any::<u8>().prop_map(|pick| Op::Record { pick }),
        6 => Just(Op::Transmit),
        6 => Just(Op::Complete),
        1 => Just(Op::Fail),
        2 => Just(Op::Progress),
        1 => Just(Op::ForgedCompletion),
        6 => Just(Op::PeerAck),
        3 => (0u8..3).prop_map(|qos| Op::PeerPublish { qos }),
        3 => Just(Op::BrokerAccept),
        1 => Just(Op::Ping),
        1 => (0u8..120).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::TransportClosed),
        2 => (1u8..3).prop_map(|lane| Op::OpenLane { lane }),
        2 => (1u8..3).prop_map(|lane| Op::SubscribeOnLane { lane }),
        1 => (1u8..3).prop_map(|lane| Op::CloseLane { lane }),
    ]
}

/// What the model peer and the test know, outside the connection.
#[derive(Default)]
struct Ledger {
    accepted: BTreeSet<String>,
    /// QoS 1/2 messages the peer has finished (sent PUBACK / PUBCOMP, processed).
    finished: BTreeSet<String>,
    dropped: BTreeSet<String>,
    /// Every PUBLISH the peer received, by topic.
    received: BTreeSet<String>,
    qos0_accepted: u64,
    qos0_received: u64,
    qos0_dropped_events: u64,
    /// Publishes the peer holds unanswered, and QoS 2 ids it has released.
    unanswered: Vec<(PacketId, QoS, String)>,
    releases: BTreeMap<PacketId, String>,
    next: u32,
    /// Stored messages: name -> row, and the steps the store has recorded.
    row_of: BTreeMap<String, u64>,
    recorded_sending: BTreeSet<u64>,
    recorded_received: BTreeSet<u64>,
    finished_rows: BTreeSet<u64>,
    /// Steps waiting for the store.
    steps: Vec<FlowStep>,
    violations: Vec<String>,
}

impl Ledger {
    /// Reads what the peer received and the broker was told since the last look; returns
    /// the acks of inbound publishes for the broker to give back.
    fn absorb(&mut self, h: &mut Harness) -> Vec<InboundAck> {
        for packet in h.take_received() {
            match packet {
                Packet::Publish(p) => {
                    let name = p.topic.as_str().to_string();
                    if let (QoS::ExactlyOnce, Some(row)) = (p.qos(), self.row_of.get(&name)) {
                        if !self.recorded_sending.contains(row) {
                            self.violations
                                .push(format!("{name} sent before its packet id was stored"));
                        }
                    }
                    match p.qos_pid {
                        QosPid::AtMostOnce => self.qos0_received += 1,
                        QosPid::AtLeastOnce(id) | QosPid::ExactlyOnce(id) => {
                            self.unanswered.retain(|(i, _, _)| *i != id);
                            self.unanswered.push((id, p.qos(), name.clone()));
                        }
                    }
                    self.received.insert(name);
                }
                Packet::PubRel(a) => {
                    // A PUBREL resent on a new connection names a flow this peer model
                    // has not seen; it completes it all the same.
                    let name = self.releases.get(&a.packet_id).cloned().unwrap_or_default();
                    if let Some(row) = self.row_of.get(&name) {
                        if !self.recorded_received.contains(row) {
                            self.violations
                                .push(format!("{name} released before its PUBREC was stored"));
                        }
                    }
                    self.unanswered.push((a.packet_id, QoS::AtMostOnce, name));
                }
                _ => {}
            }
        }
        let mut acks = Vec::new();
        for event in std::mem::take(&mut h.events) {
            match event {
                Event::Dropped { topic, qos, .. } => {
                    if qos == QoS::AtMostOnce {
                        self.qos0_dropped_events += 1;
                    }
                    self.dropped.insert(topic.as_str().to_string());
                }
                Event::Publish { ack: Some(ack), .. } => acks.push(ack),
                Event::Flow(FlowStep::Finished { row }) => {
                    let again = !self.finished_rows.insert(row);
                    self.violations
                        .extend(again.then(|| format!("row {row} finished twice")));
                }
                Event::Flow(step) => self.steps.push(step),
                _ => {}
            }
        }
        acks
    }

    /// The store records the `pick`th waiting step and tells the connection.
    fn record(&mut self, h: &mut Harness, pick: usize) {
        if self.steps.is_empty() {
            return;
        }
        let step = self.steps.remove(pick % self.steps.len());
        let (row, packet_id) = match step {
            FlowStep::Sending { row, packet_id } => {
                self.recorded_sending.insert(row);
                (row, packet_id)
            }
            FlowStep::Received { row, packet_id } => {
                self.recorded_received.insert(row);
                (row, packet_id)
            }
            FlowStep::Finished { .. } => return,
        };
        h.conn.flow_recorded(h.now, packet_id, row);
        h.drain_events();
    }

    /// The peer answers its oldest unanswered packet: PUBACK, PUBREC, or (for a PUBREL,
    /// recorded with QoS 0 here) PUBCOMP.
    fn answer(&mut self, h: &mut Harness) {
        if self.unanswered.is_empty() || !h.conn.is_established() || !h.conn.wants_read() {
            return;
        }
        let (id, qos, name) = self.unanswered.remove(0);
        let packet = match qos {
            QoS::AtLeastOnce => {
                self.finished.insert(name);
                Packet::PubAck(Ack::new(id))
            }
            QoS::ExactlyOnce => {
                self.releases.insert(id, name);
                Packet::PubRec(Ack::new(id))
            }
            QoS::AtMostOnce => {
                self.releases.remove(&id);
                if !name.is_empty() {
                    self.finished.insert(name);
                }
                Packet::PubComp(Ack::new(id))
            }
        };
        h.send(&packet);
    }
}

fn placeholder_publish() -> Publish {
    Publish {
        dup: false,
        qos_pid: QosPid::AtMostOnce,
        retain: false,
        topic: super::tests::topic("in"),
        payload: Bytes::new(),
        properties: Properties::default(),
    }
}

fn qos_of(n: u8) -> QoS {
    QoS::from_bits(n).unwrap_or(QoS::AtMostOnce)
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut connect = connect_packet(ProtocolVersion::V5, "prop");
    connect.properties.receive_maximum = std::num::NonZeroU16::new(3);
    connect.properties.maximum_packet_size = std::num::NonZeroU32::new(256);
    connect.properties.topic_alias_maximum = Some(2);
    let config = ConnectionConfig {
        max_queued_messages: 8,
        max_batch_bytes: 64,
        ..ConnectionConfig::default()
    };
    let mut h = Harness::connected(config.clone(), connect.clone(), SessionState::new());
    let mut ledger = Ledger::default();
    // At most one write per lane is outstanding; the driver holds them.
    let mut held: Vec<Transmit> = Vec::new();
    let mut inbound_acks: Vec<InboundAck> = Vec::new();
    let mut next_inbound = 1u16;
    static BIG: [u8; 300] = [1; 300];

    for op in ops {
        match op {
            Op::Record { pick } => ledger.record(&mut h, usize::from(pick)),
            Op::Deliver { qos, big, stored } => {
                ledger.next += 1;
                let name = format!("m/{}", ledger.next);
                let qos = qos_of(qos);
                let payload = if big { &BIG[..] } else { &b"p"[..] };
                let delivery = Delivery {
                    row: stored.then_some(u64::from(ledger.next)),
                    ..Delivery::new(super::tests::topic(&name), payload, qos)
                };
                if stored {
                    ledger.row_of.insert(name.clone(), u64::from(ledger.next));
                }
                if h.conn.deliver(h.now, delivery) == DeliverOutcome::Accepted {
                    if qos == QoS::AtMostOnce {
                        ledger.qos0_accepted += 1;
                    } else {
                        ledger.accepted.insert(name);
                    }
                } else if qos == QoS::AtMostOnce {
                    // A refused QoS 0 delivery is reported by a Dropped event; balance it.
                    ledger.qos0_accepted += 1;
                }
            }
            Op::Transmit => {
                if let Some(t) = h.take_transmit() {
                    prop_assert!(
                        held.iter().all(|other| other.lane != t.lane),
                        "a second write started on {}",
                        t.lane
                    );
                    held.push(t);
                }
            }
            Op::Complete => {
                if !held.is_empty() {
                    let t = held.remove(0);
                    h.complete(t);
                }
            }
            Op::Fail => {
                if !held.is_empty() {
                    let t = held.remove(0);
                    h.fail(t, TransportFault::WriteZero);
                }
            }
            Op::Progress => {
                if let Some(t) = held.first() {
                    let _ = h.conn.handle_write_progress(h.now, t.ticket.id(), 1);
                }
            }
            Op::OpenLane { lane } => h.conn.open_lane(LaneId(u64::from(lane) * 4)),
            Op::SubscribeOnLane { lane } => {
                if h.conn.is_established() && h.conn.wants_read() {
                    let lane = LaneId(u64::from(lane) * 4);
                    h.send_on(
                        lane,
                        &Packet::Subscribe(crate::protocol::packet::Subscribe {
                            packet_id: pid(1),
                            filters: vec![(
                                crate::protocol::types::TopicFilter::new("m/#")
                                    .map_err(|e| TestCaseError::fail(e.to_string()))?,
                                crate::protocol::types::SubscriptionOptions::qos(QoS::ExactlyOnce),
                            )],
                            properties: Properties::default(),
                        }),
                    );
                }
            }
            Op::CloseLane { lane } => {
                let lane = LaneId(u64::from(lane) * 4);
                // The driver drops a dead stream's write: it never completes.
                held.retain(|t| t.lane != lane);
                h.conn
                    .handle_lane_closed(h.now, lane, TransportFault::StreamReset(0));
            }
            Op::ForgedCompletion => {
                let forged = SendCompletion::Written {
                    ticket: SendTicket::forged(u64::MAX),
                    frames: FrameBatch::new(
                        OutboundFrame::encode(
                            &Packet::PingResp,
                            ProtocolVersion::V5,
                            2,
                            &mut bytes::BytesMut::new(),
                        )
                        .map_err(|e| TestCaseError::fail(e.to_string()))?,
                    ),
                };
                prop_assert!(h.conn.handle_completion(h.now, forged).is_err());
            }
            Op::PeerAck => ledger.answer(&mut h),
            Op::PeerPublish { qos } => {
                if h.conn.is_established() && h.conn.wants_read() {
                    let id = pid(next_inbound);
                    next_inbound = next_inbound % 1000 + 1;
                    let qos_pid = QosPid::from_parts(qos_of(qos), (qos > 0).then_some(id))
                        .unwrap_or(QosPid::AtMostOnce);
                    h.send(&Packet::Publish(Publish {
                        qos_pid,
                        ..placeholder_publish()
                    }));
                }
            }
            Op::BrokerAccept => {
                if let Some(ack) = inbound_acks.pop() {
                    h.conn.accept_publish(h.now, ack, ReasonCode::Success);
                }
            }
            Op::Ping => {
                if h.conn.is_established() && h.conn.wants_read() {
                    h.send(&Packet::PingReq);
                }
            }
            Op::Advance { secs } => h.advance(Duration::from_secs(u64::from(secs))),
            Op::TransportClosed => h
                .conn
                .handle_transport_closed(h.now, TransportFault::PeerClosed),
        }
        while let Some(lane) = h.conn.poll_lane_reset() {
            held.retain(|t| t.lane != lane);
        }
        h.drain_events();
        inbound_acks.extend(ledger.absorb(&mut h));
    }

    // The end of the connection: whatever is outstanding is abandoned.
    h.conn
        .handle_transport_closed(h.now, TransportFault::PeerClosed);
    h.drain_events();
    let _ = ledger.absorb(&mut h);
    let handed_out = h.handed_out;
    let completed = h.completed;
    let conn = std::mem::replace(&mut h.conn, Connection::new(config.clone(), h.now));
    let (session, report) = conn.into_session();
    drop(held);
    prop_assert_eq!(
        handed_out,
        completed + report.abandoned.len(),
        "frames handed out vs completed + abandoned"
    );

    // Every accepted QoS 1/2 message is in exactly one place.
    let mut held_by_session: Vec<String> = session
        .queued()
        .map(|d| d.topic.as_str().to_string())
        .collect();
    held_by_session.extend(
        session
            .outbound
            .values()
            .map(|f| f.message.topic.as_str().to_string()),
    );
    let held_set: BTreeSet<String> = held_by_session.iter().cloned().collect();
    prop_assert_eq!(
        held_set.len(),
        held_by_session.len(),
        "a message held twice"
    );
    for name in &ledger.accepted {
        let places = [
            held_set.contains(name),
            ledger.finished.contains(name),
            ledger.dropped.contains(name),
        ];
        prop_assert_eq!(
            places.iter().filter(|p| **p).count(),
            1,
            "{} is in {:?}",
            name,
            places
        );
    }
    let drops = session.drops();
    prop_assert_eq!(
        ledger.qos0_accepted,
        ledger.qos0_received
            + drops.connection_closed
            + ledger.qos0_dropped_events
            + session
                .queued()
                .filter(|d| d.qos == QoS::AtMostOnce)
                .count() as u64,
        "QoS 0 conservation"
    );

    // Resume: a new connection finishes everything the session holds.
    let mut resumed = connect;
    resumed.clean_start = false;
    let mut h2 = Harness::connected(config, resumed, session);
    // What the store recorded stays recorded; steps that waited on the old connection
    // are asked again by the new one.
    let mut ledger2 = Ledger {
        received: BTreeSet::new(),
        row_of: ledger.row_of.clone(),
        recorded_sending: ledger.recorded_sending.clone(),
        recorded_received: ledger.recorded_received.clone(),
        finished_rows: ledger.finished_rows.clone(),
        ..Ledger::default()
    };
    for _ in 0..1000 {
        h2.flush();
        let _ = ledger2.absorb(&mut h2);
        while !ledger2.steps.is_empty() {
            ledger2.record(&mut h2, 0);
            h2.flush();
            let _ = ledger2.absorb(&mut h2);
        }
        if ledger2.unanswered.is_empty() {
            break;
        }
        while !ledger2.unanswered.is_empty() {
            ledger2.answer(&mut h2);
            h2.flush();
            let _ = ledger2.absorb(&mut h2);
        }
    }
    prop_assert!(
        ledger.violations.is_empty() && ledger2.violations.is_empty(),
        "{:?} {:?}",
        ledger.violations,
        ledger2.violations
    );
    for (name, row) in &ledger.row_of {
        if ledger.finished_rows.contains(row) {
            prop_assert!(
                ledger.finished.contains(name) || ledger.dropped.contains(name),
                "row of {} finished while its message was neither finished nor dropped",
                name
            );
            prop_assert!(
                !held_set.contains(name),
                "row of {} finished but held",
                name
            );
        }
    }
    prop_assert_eq!(
        h2.conn.session().inflight_len(),
        0,
        "flows left after resume"
    );
    let still_queued: Vec<_> = h2
        .conn
        .session()
        .queued()
        .filter(|d| d.qos != QoS::AtMostOnce)
        .collect();
    prop_assert!(
        still_queued.is_empty(),
        "messages left after resume: {:?}",
        still_queued
    );
    for name in &held_set {
        prop_assert!(
            ledger2.received.contains(name)
                || ledger2.dropped.contains(name)
                || ledger.received.contains(name),
            "{} was never delivered",
            name
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("TWINMQ_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2048), ..ProptestConfig::default() })]

    #[test]
    fn every_frame_and_message_is_accounted_for(ops in proptest::collection::vec(op(), 1..150)) {
        run(ops)?;
    }
}
