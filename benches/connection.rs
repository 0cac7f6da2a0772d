//! The sans-IO connection end to end, without sockets: messages through the
//! send-completion state machine.
//!
//! - `outbound/qos1/<n>`: n QoS 1 messages delivered to a connected v5 client; every write
//!   handed out by `poll_transmit` is completed as `Written`, then the client's n PUBACKs
//!   are read back in, which finishes every flow.
//! - `inbound/qos1/<n>`: n QoS 1 PUBLISHes read from the client in 16 KiB reads; each is
//!   accepted (`accept_publish`) and its PUBACK written and completed.
//!
//! n is 1000 (the figure the issue asks for) and 100: the per-message cost should not
//! depend on how many messages are in flight, and the pair shows whether it does.
//!
//! Setup (connecting, accepting the CONNECT, preparing input bytes) is not measured. As in
//! benches/codec.rs, `TWINMQ_BENCH_COUNT=<bench id>:<n>` runs the measured function `n`
//! times without criterion, for valgrind (see docs/performance.md).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput};

use twinmq::protocol::codec;
use twinmq::protocol::{
    Ack, Connect, ConnectAccept, Connection, ConnectionConfig, Delivery, Event, MqttString, Packet,
    PacketId, Properties, ProtocolVersion, Publish, QoS, QosPid, ReasonCode, SendCompletion,
    TopicName,
};

/// Messages per iteration: the figure asked for, and a tenth of it to show scaling.
const SIZES: [usize; 2] = [100, 1000];
const TOPIC: &str = "sensors/plant-7/line-3/temperature";
const PAYLOAD: usize = 16;
/// Bytes per `handle_bytes` call: what one socket read typically returns.
const READ_SIZE: usize = 16 * 1024;

fn main() {
    if let Ok(spec) = std::env::var("TWINMQ_BENCH_COUNT") {
        count_mode(&spec);
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let acks = PubackTable::new();
    let mut group = c.benchmark_group("connection");
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("outbound/qos1/{n}"), |b| {
            b.iter_batched(
                || Outbound::new(n),
                |setup| op_outbound(setup, &acks),
                BatchSize::LargeInput,
            )
        });
        let wire = inbound_wire(n);
        group.bench_function(format!("inbound/qos1/{n}"), |b| {
            b.iter_batched(
                || connected(Instant::now()),
                |(conn, now)| op_inbound(conn, now, &wire, n),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
    c.final_summary();
}

// ----- setup -----

/// A v5 connection past CONNECT/CONNACK, and the `now` it was made at.
fn connected(now: Instant) -> (Connection, Instant) {
    let mut conn = Connection::new(ConnectionConfig::default(), now);
    let connect = Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: MqttString::from_static("bench-client"),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    let wire = codec::encode_to_bytes(&Packet::Connect(Box::new(connect)), ProtocolVersion::V5)
        .expect("CONNECT encodes");
    conn.handle_bytes(now, &wire);
    match conn.poll_event() {
        Some(Event::Connect(_)) => {}
        other => panic!("expected a CONNECT event, got {other:?}"),
    }
    conn.accept_connect(now, ConnectAccept::default())
        .expect("awaiting the decision");
    let written = complete_all(&mut conn, now);
    assert_eq!(written, 1, "only the CONNACK");
    (conn, now)
}

struct Outbound {
    conn: Connection,
    now: Instant,
    deliveries: Vec<Delivery>,
}

impl Outbound {
    fn new(messages: usize) -> Outbound {
        let (conn, now) = connected(Instant::now());
        let payload = Bytes::from(vec![0xA5; PAYLOAD]);
        let topic = TopicName::new(TOPIC).expect("valid topic");
        // One publish fanned out: topic, payload and properties are shared, not copied.
        let properties = Arc::new(Properties::default());
        let deliveries = (0..messages)
            .map(|_| Delivery {
                properties: Arc::clone(&properties),
                ..Delivery::new(topic.clone(), payload.clone(), QoS::AtLeastOnce)
            })
            .collect();
        Outbound {
            conn,
            now,
            deliveries,
        }
    }
}

/// The v5 PUBACK for every packet id, encoded once, so the client's side costs a copy.
struct PubackTable(Vec<Bytes>);

impl PubackTable {
    fn new() -> PubackTable {
        let acks = (0..=u16::MAX)
            .map(|id| match PacketId::new(id) {
                Some(id) => {
                    codec::encode_to_bytes(&Packet::PubAck(Ack::new(id)), ProtocolVersion::V5)
                        .expect("PUBACK encodes")
                }
                None => Bytes::new(),
            })
            .collect();
        PubackTable(acks)
    }

    fn get(&self, id: PacketId) -> &[u8] {
        self.0.get(usize::from(id.get())).map_or(&[], |b| &b[..])
    }
}

/// `messages` QoS 1 PUBLISHes from the client, ids 1, 2, ..., back to back.
fn inbound_wire(messages: usize) -> Bytes {
    let mut buf = BytesMut::new();
    let topic = TopicName::new(TOPIC).expect("valid topic");
    for id in 1..=messages {
        let id = u16::try_from(id).expect("fewer than 65536 messages");
        let publish = Publish {
            dup: false,
            qos_pid: QosPid::AtLeastOnce(PacketId::new(id).expect("non-zero id")),
            retain: false,
            topic: topic.clone(),
            payload: Bytes::from(vec![0xA5; PAYLOAD]),
            properties: Properties::default(),
        };
        let wire = codec::encode_to_bytes(&Packet::Publish(publish), ProtocolVersion::V5)
            .expect("PUBLISH encodes");
        buf.extend_from_slice(&wire);
    }
    buf.freeze()
}

/// Completes every write the connection hands out as fully written, as a transport whose
/// socket always has room would; returns how many frames went out.
fn complete_all(conn: &mut Connection, now: Instant) -> usize {
    let mut frames = 0;
    while let Some(transmit) = conn.poll_transmit(now) {
        frames += transmit.frames.frame_count();
        black_box(transmit.frames.io_slices().len());
        conn.handle_completion(
            now,
            SendCompletion::Written {
                ticket: transmit.ticket,
                frames: transmit.frames,
            },
        )
        .expect("the completion matches the write");
    }
    frames
}

// ----- the measured operations -----

/// Delivers every message, writes what the connection hands out, then reads the client's
/// PUBACKs for the packet ids it saw. Returns the connection so that dropping it is not
/// measured.
#[inline(never)]
fn op_outbound(setup: Outbound, acks: &PubackTable) -> Connection {
    let Outbound {
        mut conn,
        now,
        deliveries,
    } = setup;
    let messages = deliveries.len();
    for delivery in deliveries {
        conn.deliver(now, delivery);
    }
    let mut client_read = Vec::with_capacity(messages * 4);
    let mut sent = 0;
    while let Some(transmit) = conn.poll_transmit(now) {
        for frame in transmit.frames.iter() {
            if let Some(id) = frame.packet_id() {
                client_read.extend_from_slice(acks.get(id));
            }
            sent += 1;
        }
        conn.handle_completion(
            now,
            SendCompletion::Written {
                ticket: transmit.ticket,
                frames: transmit.frames,
            },
        )
        .expect("the completion matches the write");
    }
    assert_eq!(sent, messages);
    conn.handle_bytes(now, &client_read);
    assert_eq!(conn.session().inflight_len(), 0, "every flow finished");
    assert_eq!(complete_all(&mut conn, now), 0, "nothing answers a PUBACK");
    conn
}

/// Reads the client's PUBLISHes, accepts each, and writes the PUBACKs.
#[inline(never)]
fn op_inbound(mut conn: Connection, now: Instant, wire: &[u8], messages: usize) -> Connection {
    let mut accepted = 0;
    let mut acked = 0;
    for read in wire.chunks(READ_SIZE) {
        conn.handle_bytes(now, read);
        while let Some(event) = conn.poll_event() {
            match event {
                Event::Publish { ack: Some(ack), .. } => {
                    conn.accept_publish(now, ack, ReasonCode::Success);
                    accepted += 1;
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
        acked += complete_all(&mut conn, now);
    }
    assert_eq!((accepted, acked), (messages, messages));
    conn
}

// ----- instruction counting -----

/// Runs one operation `n` times with no criterion machinery, for valgrind. `spec` is
/// `<bench id>:<n>`, e.g. `connection/outbound/qos1/1000:5`.
fn count_mode(spec: &str) {
    let (id, n) = spec
        .rsplit_once(':')
        .expect("TWINMQ_BENCH_COUNT is <bench id>:<iterations>");
    let n: usize = n.parse().expect("iterations is a number");
    let (kind, messages) = id
        .rsplit_once('/')
        .expect("<bench id> ends with the message count");
    let messages: usize = messages.parse().expect("message count is a number");
    let mut done = Vec::with_capacity(n);
    match kind {
        "connection/outbound/qos1" => {
            let acks = PubackTable::new();
            let setups: Vec<Outbound> = (0..n).map(|_| Outbound::new(messages)).collect();
            for setup in setups {
                done.push(op_outbound(setup, &acks));
            }
        }
        "connection/inbound/qos1" => {
            let wire = inbound_wire(messages);
            let now = Instant::now();
            let setups: Vec<(Connection, Instant)> = (0..n).map(|_| connected(now)).collect();
            for (conn, now) in setups {
                done.push(op_inbound(conn, now, &wire, messages));
            }
        }
        other => panic!("unknown bench {other}"),
    }
    black_box(done);
}
