//! Arbitrary bytes from a client into a broker-side `Connection`, driven the way the
//! transport driver drives it: every CONNECT accepted (or refused), every publish accepted,
//! SUBSCRIBE and UNSUBSCRIBE answered, messages delivered to the client, every write
//! completed, the clock moved on, and finally the session taken back.
//!
//! Input layout: `[read size, flags, client bytes...]`.
//! - read size: bytes per `handle_bytes` call (0 = all at once), so packets split across
//!   reads at every offset;
//! - flags: bit 0 keeps one write outstanding while the next read is handled (completions
//!   interleave with input), bit 1 delivers messages to the client, bit 2 refuses the
//!   CONNECT, bit 3 moves the clock 10 s per read (keep-alive and the send deadline fire),
//!   bit 4 fails the last write instead of completing it, bit 5 ends with the client
//!   hanging up rather than with the broker disconnecting, bit 6 makes the session a
//!   stored one (deliveries with store rows, PUBCOMP after a recorded release; the model
//!   store records every step at once).
//!
//! Checked on every input, besides "never panics":
//! - every write the connection hands out decodes, in the connection's version, into whole
//!   packets (what we send, a client can read);
//! - every valid completion is accepted;
//! - conservation: frames handed out = frames completed + frames reported abandoned.

#![no_main]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

use twinmq::protocol::codec::Decoder;
use twinmq::protocol::{
    ConnectAccept, Connection, ConnectionConfig, Delivery, Event, FlowStep, Properties,
    ProtocolVersion, QoS, ReasonCode, SendCompletion, SubAck, TopicName, Transmit, TransportFault,
    UnsubAck,
};

fuzz_target!(|data: &[u8]| {
    let (read_size, flags, input) = match data {
        [read_size, flags, input @ ..] => (usize::from(*read_size), Flags(*flags), input),
        _ => return,
    };
    let mut driver = Driver::new();
    let reads: Vec<&[u8]> = if read_size == 0 {
        vec![input]
    } else {
        input.chunks(read_size).collect()
    };
    for read in reads {
        driver.read(read, flags);
        if flags.has(3) {
            driver.advance(Duration::from_secs(10));
        }
    }
    driver.finish(flags);
});

#[derive(Clone, Copy)]
struct Flags(u8);

impl Flags {
    fn has(self, bit: u8) -> bool {
        self.0 & (1 << bit) != 0
    }
}

/// Small limits, so that flow control, the outbox bound and batching are all reachable.
fn config() -> ConnectionConfig {
    ConnectionConfig {
        max_packet_size: 2048,
        receive_maximum: 4,
        max_inflight: 4,
        max_queued_messages: 8,
        topic_alias_maximum: 4,
        max_batch_bytes: 256,
        max_outbox_bytes: 4096,
        ..ConnectionConfig::default()
    }
}

struct Driver {
    conn: Connection,
    now: Instant,
    /// A write handed out and not yet completed.
    outstanding: Option<Transmit>,
    handed_out: usize,
    completed: usize,
}

impl Driver {
    fn new() -> Driver {
        let now = Instant::now();
        Driver {
            conn: Connection::new(config(), now),
            now,
            outstanding: None,
            handed_out: 0,
            completed: 0,
        }
    }

    fn read(&mut self, bytes: &[u8], flags: Flags) {
        self.conn.handle_bytes(self.now, bytes);
        self.answer_events(flags);
        self.write(flags.has(0));
        self.answer_events(flags);
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.conn.poll_timeout().is_some_and(|at| at <= self.now) {
            self.conn.handle_timeout(self.now);
        }
    }

    /// The broker's side of the events: what a real broker would answer.
    fn answer_events(&mut self, flags: Flags) {
        while let Some(event) = self.conn.poll_event() {
            let now = self.now;
            match event {
                Event::Connect(_) if flags.has(2) => {
                    self.conn
                        .reject_connect(now, ReasonCode::NotAuthorized)
                        .expect("a CONNECT event means a decision is awaited");
                }
                Event::Connect(_) => {
                    self.conn
                        .accept_connect(now, ConnectAccept::default())
                        .expect("a CONNECT event means a decision is awaited");
                    // Bit 6: a persistent session with a store (stored deliveries, recorded
                    // releases; the model store records every step at once).
                    self.conn.record_releases(flags.has(6));
                    if flags.has(1) {
                        for (row, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
                            .into_iter()
                            .enumerate()
                        {
                            let mut d = delivery(qos);
                            d.row = flags.has(6).then_some(row as u64);
                            self.conn.deliver(now, d);
                        }
                    }
                }
                Event::Publish { ack: Some(ack), .. } => {
                    self.conn.accept_publish(now, ack, ReasonCode::Success)
                }
                Event::Publish { ack: None, .. } => {}
                Event::Flow(
                    FlowStep::Sending { row, packet_id } | FlowStep::Received { row, packet_id },
                ) => self.conn.flow_recorded(now, packet_id, row),
                Event::Flow(FlowStep::Finished { .. }) => {}
                Event::Released { packet_id } => self.conn.release_recorded(now, packet_id),
                Event::Subscribe(subscribe) => {
                    let reasons = subscribe
                        .filters
                        .iter()
                        .map(|(_, options)| ReasonCode::granted(options.qos))
                        .collect();
                    self.conn.send_suback(
                        now,
                        SubAck {
                            packet_id: subscribe.packet_id,
                            reasons,
                            properties: Properties::default(),
                        },
                    );
                    if flags.has(1) {
                        self.conn.deliver(now, delivery(QoS::AtLeastOnce));
                    }
                }
                Event::Unsubscribe(unsubscribe) => {
                    let reasons = match self.conn.version() {
                        Some(ProtocolVersion::V5) => {
                            vec![ReasonCode::Success; unsubscribe.filters.len()]
                        }
                        _ => Vec::new(),
                    };
                    self.conn.send_unsuback(
                        now,
                        UnsubAck {
                            packet_id: unsubscribe.packet_id,
                            reasons,
                            properties: Properties::default(),
                        },
                    );
                }
                Event::Auth(_) => self
                    .conn
                    .disconnect(now, ReasonCode::BadAuthenticationMethod),
                Event::Dropped { .. } | Event::Closed(_) => {}
            }
        }
    }

    /// Completes the outstanding write, then writes everything else; with `hold`, the
    /// last write handed out stays outstanding.
    fn write(&mut self, hold: bool) {
        if let Some(transmit) = self.outstanding.take() {
            self.complete(transmit);
        }
        while let Some(transmit) = self.conn.poll_transmit(self.now) {
            self.handed_out += transmit.frames.frame_count();
            check_decodes(&transmit, self.conn.version());
            if hold {
                self.outstanding = Some(transmit);
                return;
            }
            self.complete(transmit);
        }
    }

    fn complete(&mut self, transmit: Transmit) {
        self.completed += transmit.frames.frame_count();
        let completion = SendCompletion::Written {
            ticket: transmit.ticket,
            frames: transmit.frames,
        };
        // The writer gives up on a write only in into_session, so even a closed
        // connection must take back the write it handed out.
        if let Err(err) = self.conn.handle_completion(self.now, completion) {
            panic!("valid completion refused: {err}");
        }
    }

    fn finish(mut self, flags: Flags) {
        if flags.has(4) {
            if let Some(transmit) = self.outstanding.take() {
                self.completed += transmit.frames.frame_count();
                let failed = SendCompletion::Failed {
                    ticket: transmit.ticket,
                    frames: transmit.frames,
                    cause: TransportFault::WriteZero,
                };
                if let Err(err) = self.conn.handle_completion(self.now, failed) {
                    panic!("valid failed completion refused: {err}");
                }
            }
        }
        if flags.has(5) {
            self.conn
                .handle_transport_closed(self.now, TransportFault::PeerClosed);
        } else {
            self.conn
                .disconnect(self.now, ReasonCode::ServerShuttingDown);
        }
        self.answer_events(Flags(0));
        // Flush what the close produced (a v5 DISCONNECT), keeping any outstanding write
        // outstanding: into_session must account for it as abandoned.
        let held = self.outstanding.is_some();
        if !held {
            self.write(false);
        }
        let handed_out = self.handed_out;
        let completed = self.completed;
        let (_session, report) = self.conn.into_session();
        assert_eq!(
            handed_out,
            completed + report.abandoned.len(),
            "frames handed out were neither completed nor reported abandoned"
        );
    }
}

fn delivery(qos: QoS) -> Delivery {
    Delivery::new(
        TopicName::new("fuzz/out").expect("valid topic"),
        &b"payload"[..],
        qos,
    )
}

/// What the broker writes must be readable by a client of the connection's version.
fn check_decodes(transmit: &Transmit, version: Option<ProtocolVersion>) {
    let version = version.expect("nothing is written before CONNECT is read");
    let mut buf = BytesMut::from(&transmit.frames.to_contiguous()[..]);
    let mut decoder = Decoder::with_version(version, u32::MAX);
    for frame in transmit.frames.iter() {
        match decoder.decode(&mut buf) {
            Ok(Some(packet)) => assert_eq!(
                packet.packet_type(),
                frame.packet_type(),
                "frame metadata disagrees with its bytes"
            ),
            other => panic!("broker output does not decode in {version}: {other:?}"),
        }
    }
    assert!(
        buf.is_empty(),
        "broker output has {} trailing bytes",
        buf.len()
    );
}
