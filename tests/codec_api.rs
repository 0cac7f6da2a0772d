//! The codec through its public API, as the connection and clients use it: a session's byte
//! stream cut at arbitrary points, a scratch buffer reused across encodes, and the decoder's
//! settings.

use bytes::{Bytes, BytesMut};

use twinmq::protocol::codec::{self, Decoder};
use twinmq::protocol::{
    Ack, Connect, DecodeError, Disconnect, MqttString, Packet, PacketId, Properties,
    ProtocolVersion, Publish, QoS, QosPid, ReasonCode, Subscribe, SubscriptionOptions, TopicFilter,
    TopicName,
};

fn session(version: ProtocolVersion) -> Vec<Packet> {
    let pid = PacketId::new(7).expect("non-zero");
    let publish = |len: usize| {
        Packet::Publish(Publish {
            dup: false,
            qos_pid: QosPid::AtLeastOnce(pid),
            retain: false,
            topic: TopicName::new("sensors/1").expect("valid"),
            payload: Bytes::from(vec![0xA5; len]),
            properties: Properties::default(),
        })
    };
    vec![
        Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: true,
            keep_alive: 30,
            client_id: MqttString::new("client-1").expect("valid"),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })),
        Packet::Subscribe(Subscribe {
            packet_id: pid,
            filters: vec![(
                TopicFilter::new("sensors/+").expect("valid"),
                SubscriptionOptions::qos(QoS::AtLeastOnce),
            )],
            properties: Properties::default(),
        }),
        // One-, two- and three-byte remaining lengths.
        publish(10),
        publish(200),
        publish(20_000),
        Packet::PubAck(Ack::new(pid)),
        Packet::PingReq,
        Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
    ]
}

fn stream(version: ProtocolVersion) -> (Vec<Packet>, Vec<u8>) {
    let packets = session(version);
    let mut bytes = Vec::new();
    for p in &packets {
        bytes.extend_from_slice(&codec::encode_to_bytes(p, version).expect("encodes"));
    }
    (packets, bytes)
}

/// Feeds `bytes` in chunks of the given sizes (cycled) to a server-side decoder.
fn decode_in_chunks(bytes: &[u8], sizes: &[usize]) -> Vec<Packet> {
    let mut decoder = Decoder::new(64 * 1024);
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut rest = bytes;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        buf.extend_from_slice(chunk);
        while let Some(packet) = decoder.decode(&mut buf).expect("valid stream") {
            packets.push(packet);
        }
    }
    assert!(buf.is_empty());
    packets
}

#[test]
fn a_session_stream_decodes_the_same_however_it_is_cut() {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let (packets, bytes) = stream(version);
        for sizes in [&[1][..], &[2, 3], &[7, 1, 5], &[4096], &[bytes.len()]] {
            assert_eq!(
                decode_in_chunks(&bytes, sizes),
                packets,
                "{version} {sizes:?}"
            );
        }
    }
}

#[test]
fn encoded_heads_stay_valid_while_the_scratch_buffer_is_reused() {
    let version = ProtocolVersion::V5;
    let packets = session(version);
    let mut scratch = BytesMut::with_capacity(4096);
    let encoded: Vec<codec::Encoded> = packets
        .iter()
        .map(|p| codec::encode(p, version, &mut scratch).expect("encodes"))
        .collect();
    for (p, e) in packets.iter().zip(&encoded) {
        let whole = codec::encode_to_bytes(p, version).expect("encodes");
        assert_eq!([&e.head[..], &e.payload[..]].concat(), whole.to_vec());
        assert!(!e.head.is_empty());
    }
}

#[test]
fn maximum_packet_size_can_change_between_packets() {
    let version = ProtocolVersion::V311;
    let (_, bytes) = stream(version);
    let mut decoder = Decoder::with_version(version, u32::MAX);
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(
        decoder.decode(&mut buf),
        Ok(Some(Packet::Connect(_)))
    ));
    decoder.set_max_packet_size(16);
    assert!(matches!(
        decoder.decode(&mut buf),
        Ok(Some(Packet::Subscribe(_)))
    ));
    // The PUBLISH with 10 payload bytes is 25 bytes on the wire.
    let err = decoder.decode(&mut buf).expect_err("too large");
    assert_eq!(err, DecodeError::PacketTooLarge { size: 25, max: 16 });
    assert_eq!(err.reason_code(), ReasonCode::PacketTooLarge);
}

#[test]
fn a_client_decoder_is_told_its_version() {
    let mut decoder = Decoder::new(1024);
    let mut connack = BytesMut::from(&[0x20, 0x03, 0x00, 0x00, 0x00][..]);
    assert!(matches!(
        decoder.decode(&mut connack.clone()),
        Err(DecodeError::ExpectedConnect { .. })
    ));
    decoder.set_version(ProtocolVersion::V5);
    assert_eq!(decoder.version(), Some(ProtocolVersion::V5));
    assert!(matches!(
        decoder.decode(&mut connack),
        Ok(Some(Packet::ConnAck(_)))
    ));
}
