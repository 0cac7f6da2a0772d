//! Codec throughput: decode and encode of PUBLISH (16 B and 4 KiB payloads, MQTT 3.1.1 and 5)
//! and of a v5 CONNECT carrying every common property, plus a read buffer holding 1000
//! small PUBLISHes back to back.
//!
//! Each measured operation is an `#[inline(never)]` function (`op_*`), so the same code can
//! be timed by criterion and counted by valgrind:
//!
//! ```text
//! cargo bench --bench codec                                  # wall clock (criterion)
//! TWINMQ_BENCH_COUNT=decode/publish/v5/16B:10000 \
//!   valgrind --tool=callgrind --toggle-collect='*op_*' target/release/deps/codec-<hash>
//!                                                            # instructions per operation
//! ```
//!
//! With `TWINMQ_BENCH_COUNT=<bench id>:<n>` the binary skips criterion and runs that one
//! operation `n` times over inputs prepared beforehand; docs/performance.md has the recipe.

use std::hint::black_box;
use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput};

use twinmq::protocol::codec::{self, Decoder};
use twinmq::protocol::{
    Connect, MqttString, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, QosPid,
    TopicName, Will,
};

/// Big enough for every packet here; the limit itself is not under test.
const MAX_PACKET: u32 = 1024 * 1024;
const TOPIC: &str = "sensors/plant-7/line-3/temperature";
const STREAM_PACKETS: usize = 1000;

fn main() {
    if let Ok(spec) = std::env::var("TWINMQ_BENCH_COUNT") {
        count_mode(&spec);
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    for case in cases() {
        bench_case(&mut c, &case);
    }
    c.final_summary();
}

// ----- the workloads -----

/// One packet, in one protocol version, with a name for reports.
struct Case {
    name: &'static str,
    version: ProtocolVersion,
    packet: Packet,
}

impl Case {
    fn wire(&self) -> Bytes {
        codec::encode_to_bytes(&self.packet, self.version).expect("bench packets encode")
    }

    /// A server-side decoder for CONNECT, a versioned one for everything else.
    fn decoder(&self) -> Option<ProtocolVersion> {
        match self.packet {
            Packet::Connect(_) => None,
            _ => Some(self.version),
        }
    }
}

fn cases() -> Vec<Case> {
    use ProtocolVersion::{V311, V5};
    vec![
        Case {
            name: "publish/v311/16B",
            version: V311,
            packet: publish(V311, 1, 16),
        },
        Case {
            name: "publish/v5/16B",
            version: V5,
            packet: publish(V5, 1, 16),
        },
        Case {
            name: "publish/v311/4KiB",
            version: V311,
            packet: publish(V311, 1, 4096),
        },
        Case {
            name: "publish/v5/4KiB",
            version: V5,
            packet: publish(V5, 1, 4096),
        },
        Case {
            name: "connect/v5/props",
            version: V5,
            packet: Packet::Connect(Box::new(connect_v5())),
        },
    ]
}

/// A QoS 1 PUBLISH; the v5 one carries a message expiry and a content type.
fn publish(version: ProtocolVersion, id: u16, payload_len: usize) -> Packet {
    let properties = match version {
        ProtocolVersion::V5 => Properties {
            message_expiry_interval: Some(300),
            content_type: Some(MqttString::from_static("application/octet-stream")),
            ..Properties::default()
        },
        ProtocolVersion::V311 => Properties::default(),
    };
    Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::AtLeastOnce(PacketId::new(id).expect("non-zero id")),
        retain: false,
        topic: TopicName::new(TOPIC).expect("valid topic"),
        payload: Bytes::from(vec![0xA5; payload_len]),
        properties,
    })
}

/// A v5 CONNECT as a well-configured device sends it: session expiry, flow-control limits,
/// user properties, a will with its own properties, username and binary password.
fn connect_v5() -> Connect {
    let user =
        |k: &'static str, v: &'static str| (MqttString::from_static(k), MqttString::from_static(v));
    Connect {
        protocol: ProtocolVersion::V5,
        clean_start: false,
        keep_alive: 60,
        client_id: MqttString::from_static("plant-7-line-3-gateway-0042"),
        will: Some(Will {
            topic: TopicName::new("status/plant-7/line-3/gateway-0042").expect("valid topic"),
            payload: Bytes::from_static(b"{\"online\":false}"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties {
                will_delay_interval: Some(30),
                payload_format_indicator: Some(true),
                content_type: Some(MqttString::from_static("application/json")),
                message_expiry_interval: Some(3600),
                ..Properties::default()
            },
        }),
        username: Some(MqttString::from_static("gateway-0042")),
        password: Some(Bytes::from_static(&[
            0x00, 0x9F, 0x3C, 0xFF, 0x10, 0x42, 0x7E, 0x01,
        ])),
        properties: Properties {
            session_expiry_interval: Some(86_400),
            receive_maximum: NonZeroU16::new(100),
            maximum_packet_size: NonZeroU32::new(256 * 1024),
            topic_alias_maximum: Some(32),
            request_problem_information: Some(true),
            user_properties: vec![user("site", "plant-7"), user("fw", "4.2.1")],
            ..Properties::default()
        },
    }
}

/// `STREAM_PACKETS` small QoS 1 PUBLISHes with ids 1, 2, ... in one read buffer.
fn stream(version: ProtocolVersion) -> Bytes {
    let mut buf = BytesMut::new();
    for id in 1..=STREAM_PACKETS {
        let id = u16::try_from(id).expect("fewer than 65536 packets");
        let packet = publish(version, id, 16);
        buf.extend_from_slice(&codec::encode_to_bytes(&packet, version).expect("encodes"));
    }
    buf.freeze()
}

// ----- the measured operations -----

/// Decodes one whole packet from `buf`, as the read loop does.
#[inline(never)]
fn op_decode(version: Option<ProtocolVersion>, buf: &mut BytesMut) -> Packet {
    let mut decoder = match version {
        Some(version) => Decoder::with_version(version, MAX_PACKET),
        None => Decoder::new(MAX_PACKET),
    };
    decoder
        .decode(buf)
        .expect("valid packet")
        .expect("whole packet")
}

/// Encodes `packet` into the reused `scratch` and drops the result, as the steady state of
/// a writer that releases frames as fast as it makes them: `scratch` reclaims its
/// allocation, so nothing is allocated.
#[inline(never)]
fn op_encode(packet: &Packet, version: ProtocolVersion, scratch: &mut BytesMut) -> usize {
    codec::encode(packet, version, scratch)
        .expect("bench packets encode")
        .wire_len()
}

/// Decodes every packet in `buf` and drops each one; returns how many there were.
#[inline(never)]
fn op_decode_stream(version: ProtocolVersion, buf: &mut BytesMut) -> usize {
    let mut decoder = Decoder::with_version(version, MAX_PACKET);
    let mut count = 0;
    while let Some(packet) = decoder.decode(buf).expect("valid stream") {
        black_box(&packet);
        count += 1;
    }
    count
}

// ----- criterion -----

fn bench_case(c: &mut Criterion, case: &Case) {
    let wire = case.wire();
    let decoder = case.decoder();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function(case.name, |b| {
        // The input buffer is made, and the packet dropped, outside the measurement.
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut buf| {
                let packet = op_decode(decoder, &mut buf);
                (packet, buf)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    let mut scratch = BytesMut::new();
    group.bench_function(case.name, |b| {
        b.iter(|| op_encode(black_box(&case.packet), case.version, &mut scratch))
    });
    group.finish();

    // After the last PUBLISH case, the stream of small ones.
    if case.name == "publish/v5/4KiB" {
        bench_streams(c);
    }
}

fn bench_streams(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_stream");
    for (name, version) in [
        ("1000x_publish/v311/16B", ProtocolVersion::V311),
        ("1000x_publish/v5/16B", ProtocolVersion::V5),
    ] {
        let wire = stream(version);
        group.throughput(Throughput::ElementsAndBytes {
            elements: STREAM_PACKETS as u64,
            bytes: wire.len() as u64,
        });
        group.bench_function(name, |b| {
            b.iter_batched(
                || BytesMut::from(&wire[..]),
                |mut buf| {
                    let n = op_decode_stream(version, &mut buf);
                    assert_eq!(n, STREAM_PACKETS);
                    buf
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

// ----- instruction counting -----

/// Runs one operation `n` times with no criterion machinery, for valgrind. `spec` is
/// `<group>/<case name>:<n>`, e.g. `encode/publish/v5/16B:10000`.
fn count_mode(spec: &str) {
    let (id, n) = spec
        .rsplit_once(':')
        .expect("TWINMQ_BENCH_COUNT is <bench id>:<iterations>");
    let n: usize = n.parse().expect("iterations is a number");
    let (group, name) = id.split_once('/').expect("<group>/<case>");
    match group {
        "decode" | "encode" => {
            let case = cases()
                .into_iter()
                .find(|case| case.name == name)
                .unwrap_or_else(|| panic!("no case named {name}"));
            let wire = case.wire();
            if group == "decode" {
                let mut inputs: Vec<BytesMut> = (0..n).map(|_| BytesMut::from(&wire[..])).collect();
                let packets: Vec<Packet> = inputs
                    .iter_mut()
                    .map(|buf| op_decode(case.decoder(), buf))
                    .collect();
                black_box(packets);
            } else {
                let mut scratch = BytesMut::new();
                for _ in 0..n {
                    black_box(op_encode(&case.packet, case.version, &mut scratch));
                }
            }
        }
        "decode_stream" => {
            let version = if name.contains("v311") {
                ProtocolVersion::V311
            } else {
                ProtocolVersion::V5
            };
            let wire = stream(version);
            let mut inputs: Vec<BytesMut> = (0..n).map(|_| BytesMut::from(&wire[..])).collect();
            for buf in &mut inputs {
                black_box(op_decode_stream(version, buf));
            }
        }
        other => panic!("unknown group {other}"),
    }
}
