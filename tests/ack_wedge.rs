//! The TLS ack wedge of NanoMQ 0.21.8, reproduced on a reference model of its broken ack
//! path, and twinmq's send-completion machine driven by the same schedules.
//!
//! The model below is **the broken design, kept on purpose**: it exists to show that the
//! schedules really trigger the wedge, so that twinmq surviving them means something.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use twinmq::fault::schedule::{ack_burst_schedule, AckEvent};
use twinmq::protocol::codec::{encode_to_bytes, Decoder};
use twinmq::protocol::{
    ConnectAccept, Connection, ConnectionConfig, Event, Packet, PacketId, Properties,
    ProtocolVersion, Publish, QosPid, ReasonCode, SendCompletion, TopicName, Transmit,
};

/// NanoMQ 0.21.8's TLS ack path, modelled (BROKEN ON PURPOSE). The ack being sent is held
/// by the I/O object, a `busy` flag sits beside it, and acks that arrive while busy wait in
/// a queue: three fields updated separately. When a write completes and an ack is queued,
/// the next one is started and then the in-flight pointer is cleared, so the next
/// completion finds no message ("NULL msg detected in send_cb"), returns early with
/// `busy` still set, and every later ack waits forever (nanomq issues 1749 and 1760).
#[derive(Debug, Default)]
struct NanoMqTlsAckPath {
    in_flight: Option<u16>,
    busy: bool,
    pending: VecDeque<u16>,
    written: Vec<u16>,
    null_msg_seen: usize,
}

impl NanoMqTlsAckPath {
    fn send_ack(&mut self, id: u16) {
        if self.busy {
            self.pending.push_back(id);
        } else {
            self.busy = true;
            self.in_flight = Some(id);
        }
    }

    /// A partial write resubmits the same I/O object: no change to the three fields.
    fn write_progress(&mut self) {}

    /// `send_cb`: the write of the in-flight ack finished.
    fn send_cb(&mut self) {
        if !self.busy {
            return; // nothing was being written
        }
        let Some(done) = self.in_flight.take() else {
            self.null_msg_seen += 1;
            return; // "NULL msg detected in send_cb": busy stays true
        };
        self.written.push(done);
        match self.pending.pop_front() {
            Some(next) => {
                self.in_flight = Some(next);
                // The bug: the pointer is cleared after the queued send is started.
                self.in_flight = None;
            }
            None => self.busy = false,
        }
    }

    fn is_wedged(&self) -> bool {
        self.busy && self.in_flight.is_none()
    }
}

/// twinmq's connection with a client that publishes QoS 1 and a transport that completes
/// writes only when the schedule says so.
struct Twinmq {
    conn: Connection,
    now: Instant,
    outstanding: Option<Transmit>,
    next_id: u16,
    acks_seen: Vec<u16>,
    peer: Decoder,
}

impl Twinmq {
    fn connected() -> Twinmq {
        let now = Instant::now();
        let mut conn = Connection::new(ConnectionConfig::default(), now);
        let connect = twinmq::protocol::Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 0,
            client_id: twinmq::protocol::MqttString::new("burst").expect("id"),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        };
        let bytes = encode_to_bytes(&Packet::Connect(Box::new(connect)), ProtocolVersion::V5)
            .expect("encodes");
        conn.handle_bytes(now, &bytes);
        while conn.poll_event().is_some() {}
        conn.accept_connect(now, ConnectAccept::default())
            .expect("awaiting");
        let mut t = Twinmq {
            conn,
            now,
            outstanding: None,
            next_id: 1,
            acks_seen: Vec::new(),
            peer: Decoder::with_version(ProtocolVersion::V5, u32::MAX),
        };
        // Write the CONNACK out of the way.
        t.start_write();
        t.complete_write();
        t
    }

    fn start_write(&mut self) {
        if self.outstanding.is_none() {
            self.outstanding = self.conn.poll_transmit(self.now);
        }
    }

    fn ack_due(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let publish = Publish {
            dup: false,
            qos_pid: QosPid::AtLeastOnce(PacketId::new(id).expect("non-zero")),
            retain: false,
            topic: TopicName::new("burst").expect("topic"),
            payload: Bytes::from_static(b"m"),
            properties: Properties::default(),
        };
        let bytes =
            encode_to_bytes(&Packet::Publish(publish), ProtocolVersion::V5).expect("encodes");
        self.conn.handle_bytes(self.now, &bytes);
        while let Some(event) = self.conn.poll_event() {
            if let Event::Publish { ack: Some(ack), .. } = event {
                self.conn.accept_publish(self.now, ack, ReasonCode::Success);
            }
        }
        self.start_write();
    }

    fn write_progress(&mut self) {
        if let Some(t) = &self.outstanding {
            let _ = self.conn.handle_write_progress(self.now, t.ticket.id(), 1);
        }
    }

    fn complete_write(&mut self) {
        let Some(t) = self.outstanding.take() else {
            return;
        };
        let bytes = t.frames.to_contiguous();
        self.conn
            .handle_completion(
                self.now,
                SendCompletion::Written {
                    ticket: t.ticket,
                    frames: t.frames,
                },
            )
            .expect("a completion for the write in progress");
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        while let Some(p) = self.peer.decode(&mut buf).expect("valid output") {
            if let Packet::PubAck(a) = p {
                self.acks_seen.push(a.packet_id.get());
            }
        }
        self.start_write();
    }
}

fn run(schedule: &[AckEvent]) -> (NanoMqTlsAckPath, Twinmq, usize) {
    let mut model = NanoMqTlsAckPath::default();
    let mut twin = Twinmq::connected();
    let mut due = 0u16;
    for event in schedule {
        match event {
            AckEvent::AckDue => {
                due += 1;
                model.send_ack(due);
                twin.ack_due();
            }
            AckEvent::WritePartial => {
                model.write_progress();
                twin.write_progress();
            }
            AckEvent::WriteComplete => {
                model.send_cb();
                twin.complete_write();
            }
        }
    }
    // Afterwards the network is healthy: every write completes, as often as needed.
    for _ in 0..(due as usize + 8) {
        model.send_cb();
        twin.complete_write();
    }
    twin.now += Duration::from_secs(1);
    (model, twin, due as usize)
}

#[test]
fn the_nanomq_model_wedges_and_twinmq_delivers_every_ack_on_the_same_schedule() {
    let schedule = ack_burst_schedule(0x5EED, 40, 6);
    let (model, twin, due) = run(&schedule);
    assert!(
        model.is_wedged(),
        "the schedule must trigger the wedge in the broken model"
    );
    assert!(
        model.null_msg_seen > 0,
        "the model logs 'NULL msg detected in send_cb'"
    );
    assert!(
        model.written.len() < due,
        "acks stuck behind the wedge: {} of {due}",
        model.written.len()
    );
    let expected: Vec<u16> = (1..=due as u16).collect();
    assert_eq!(
        twin.acks_seen, expected,
        "twinmq delivers every ack, in order"
    );
    assert!(!twin.conn.is_sending(), "nothing left in flight");
}

#[test]
fn on_every_seeded_schedule_twinmq_delivers_all_acks_while_the_model_wedges_whenever_acks_queue() {
    let mut wedged = 0;
    for seed in 0..200u64 {
        let schedule = ack_burst_schedule(seed, 20, 6);
        let (model, twin, due) = run(&schedule);
        assert_eq!(twin.acks_seen.len(), due, "seed {seed}: twinmq lost an ack");
        if model.is_wedged() {
            wedged += 1;
            assert!(model.written.len() < due, "seed {seed}");
        }
    }
    assert!(
        wedged > 150,
        "the schedule family triggers the wedge ({wedged}/200)"
    );
}

#[test]
fn a_schedule_without_bursts_does_not_wedge_the_model() {
    // One ack at a time, each written before the next arrives: the bug needs a queue.
    let schedule: Vec<AckEvent> = (0..20)
        .flat_map(|_| [AckEvent::AckDue, AckEvent::WriteComplete])
        .collect();
    let (model, twin, due) = run(&schedule);
    assert!(!model.is_wedged());
    assert_eq!(model.written.len(), due);
    assert_eq!(twin.acks_seen.len(), due);
}
