//! Codec unit tests: examples per packet type and version (here), one test per strictness
//! rule (`strict`), named regressions (`regressions`), encoder refusals (`encode_errors`)
//! and property tests (`proptests`).

mod encode_errors;
mod proptests;
mod regressions;
mod strict;

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::protocol::packet::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, Properties, Publish, SubAck, Subscribe,
    UnsubAck, Unsubscribe, Will,
};
use crate::protocol::types::{
    MqttString, PacketId, ProtocolVersion, QoS, QosPid, ReasonCode, RetainHandling,
    SubscriptionOptions, TopicFilter, TopicName,
};

const V3: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// Decodes `bytes` as one whole packet in `version` and checks it was consumed exactly.
fn decode(version: ProtocolVersion, bytes: &[u8]) -> Result<Packet, DecodeError> {
    let mut decoder = Decoder::with_version(version, u32::MAX);
    let mut buf = BytesMut::from(bytes);
    match decoder.decode(&mut buf)? {
        Some(packet) => {
            assert!(buf.is_empty(), "left over: {buf:?}");
            Ok(packet)
        }
        None => panic!("incomplete: {bytes:02x?}"),
    }
}

/// The error `bytes` decode to, and checks its reason code.
fn decode_err(version: ProtocolVersion, bytes: &[u8], reason: ReasonCode) -> DecodeError {
    let err = decode(version, bytes).expect_err("must be refused");
    assert_eq!(err.reason_code(), reason, "{err}");
    err
}

fn encode_bytes(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    encode_to_bytes(packet, version)
        .expect("encodable")
        .to_vec()
}

/// Encodes, checks the exact bytes, decodes them back and checks `encoded_len`.
fn assert_wire(packet: &Packet, version: ProtocolVersion, wire: &[u8]) {
    assert_eq!(encode_bytes(packet, version), wire, "{packet:?}");
    assert_eq!(encoded_len(packet, version), Ok(wire.len()));
    assert_eq!(decode(version, wire).as_ref(), Ok(packet));
}

fn pid(id: u16) -> PacketId {
    PacketId::new(id).expect("non-zero")
}

fn s(text: &str) -> MqttString {
    MqttString::new(text).expect("valid string")
}

fn topic(text: &str) -> TopicName {
    TopicName::new(text).expect("valid topic")
}

fn filter(text: &str) -> TopicFilter {
    TopicFilter::new(text).expect("valid filter")
}

fn minimal_connect(version: ProtocolVersion) -> Connect {
    Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 60,
        client_id: s("c"),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

#[test]
fn connect_v311_with_will_and_credentials() {
    let connect = Connect {
        will: Some(Will {
            topic: topic("w"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some(s("u")),
        password: Some(Bytes::from_static(b"p")),
        ..minimal_connect(V3)
    };
    #[rustfmt::skip]
    let wire = [
        0x10, 0x1B,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04,
        0b1110_1110, // user, password, will retain, will QoS 1, will, clean
        0x00, 0x3C,
        0x00, 0x01, b'c',
        0x00, 0x01, b'w', 0x00, 0x03, b'b', b'y', b'e',
        0x00, 0x01, b'u',
        0x00, 0x01, b'p',
    ];
    assert_wire(&Packet::Connect(Box::new(connect)), V3, &wire);
}

#[test]
fn connect_v5_with_properties_and_will_properties() {
    let connect = Connect {
        will: Some(Will {
            topic: topic("w"),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties {
                will_delay_interval: Some(5),
                ..Properties::default()
            },
        }),
        properties: Properties {
            session_expiry_interval: Some(10),
            receive_maximum: NonZeroU16::new(20),
            ..Properties::default()
        },
        ..minimal_connect(V5)
    };
    #[rustfmt::skip]
    let wire = [
        0x10, 0x21,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05,
        0b0000_0110, 0x00, 0x3C,
        0x08, 0x11, 0x00, 0x00, 0x00, 0x0A, 0x21, 0x00, 0x14,
        0x00, 0x01, b'c',
        0x05, 0x18, 0x00, 0x00, 0x00, 0x05,
        0x00, 0x01, b'w', 0x00, 0x00,
    ];
    assert_wire(&Packet::Connect(Box::new(connect)), V5, &wire);
}

#[test]
fn connack_both_versions() {
    let accepted = Packet::ConnAck(ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    });
    assert_wire(&accepted, V3, &[0x20, 0x02, 0x01, 0x00]);
    assert_wire(&accepted, V5, &[0x20, 0x03, 0x01, 0x00, 0x00]);
    let refused = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::NotAuthorized,
        properties: Properties::default(),
    });
    assert_wire(&refused, V3, &[0x20, 0x02, 0x00, 0x05]);
    assert_wire(&refused, V5, &[0x20, 0x03, 0x00, 0x87, 0x00]);
}

#[test]
fn publish_qos0_and_qos2_with_properties() {
    let qos0 = Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::AtMostOnce,
        retain: true,
        topic: topic("a/b"),
        payload: Bytes::from_static(b"hi"),
        properties: Properties::default(),
    });
    assert_wire(
        &qos0,
        V3,
        &[0x31, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'],
    );
    assert_wire(
        &qos0,
        V5,
        &[0x31, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x00, b'h', b'i'],
    );
    let qos2 = Packet::Publish(Publish {
        dup: true,
        qos_pid: QosPid::ExactlyOnce(pid(7)),
        retain: false,
        topic: topic("t"),
        payload: Bytes::new(),
        properties: Properties {
            payload_format_indicator: Some(true),
            subscription_identifiers: vec![NonZeroU32::MIN, NonZeroU32::new(200).expect("1")],
            ..Properties::default()
        },
    });
    #[rustfmt::skip]
    let wire = [
        0x3C, 0x0D,
        0x00, 0x01, b't', 0x00, 0x07,
        0x07, 0x01, 0x01, 0x0B, 0x01, 0x0B, 0xC8, 0x01,
    ];
    assert_wire(&qos2, V5, &wire);
}

#[test]
fn acks_both_versions_and_forms() {
    for (make, first) in [
        (Packet::PubAck as fn(Ack) -> Packet, 0x40u8),
        (Packet::PubRec, 0x50),
        (Packet::PubRel, 0x62),
        (Packet::PubComp, 0x70),
    ] {
        let ok = make(Ack::new(pid(1)));
        assert_wire(&ok, V3, &[first, 0x02, 0x00, 0x01]);
        assert_wire(&ok, V5, &[first, 0x02, 0x00, 0x01]);
    }
    let not_found = Packet::PubComp(Ack::with_reason(
        pid(1),
        ReasonCode::PacketIdentifierNotFound,
    ));
    assert_wire(&not_found, V5, &[0x70, 0x03, 0x00, 0x01, 0x92]);
    let with_string = Packet::PubAck(Ack {
        packet_id: pid(258),
        reason: ReasonCode::Success,
        properties: Properties {
            reason_string: Some(s("ok")),
            ..Properties::default()
        },
    });
    assert_wire(
        &with_string,
        V5,
        &[
            0x40, 0x09, 0x01, 0x02, 0x00, 0x05, 0x1F, 0x00, 0x02, b'o', b'k',
        ],
    );
}

#[test]
fn subscribe_and_suback_both_versions() {
    let options = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
    };
    let v5 = Packet::Subscribe(Subscribe {
        packet_id: pid(2),
        filters: vec![
            (filter("a/+"), options),
            (filter("#"), SubscriptionOptions::qos(QoS::AtMostOnce)),
        ],
        properties: Properties {
            subscription_identifiers: vec![NonZeroU32::new(3).expect("1")],
            ..Properties::default()
        },
    });
    #[rustfmt::skip]
    let wire = [
        0x82, 0x0F, 0x00, 0x02, 0x02, 0x0B, 0x03,
        0x00, 0x03, b'a', b'/', b'+', 0b0010_1110,
        0x00, 0x01, b'#', 0x00,
    ];
    assert_wire(&v5, V5, &wire);
    let v3 = Packet::Subscribe(Subscribe {
        packet_id: pid(2),
        filters: vec![(filter("a/+"), SubscriptionOptions::qos(QoS::AtLeastOnce))],
        properties: Properties::default(),
    });
    assert_wire(
        &v3,
        V3,
        &[0x82, 0x08, 0x00, 0x02, 0x00, 0x03, b'a', b'/', b'+', 0x01],
    );
    let suback = Packet::SubAck(SubAck {
        packet_id: pid(2),
        reasons: vec![ReasonCode::GrantedQoS2, ReasonCode::UnspecifiedError],
        properties: Properties::default(),
    });
    assert_wire(&suback, V3, &[0x90, 0x04, 0x00, 0x02, 0x02, 0x80]);
    assert_wire(&suback, V5, &[0x90, 0x05, 0x00, 0x02, 0x00, 0x02, 0x80]);
}

#[test]
fn unsubscribe_and_unsuback_both_versions() {
    let unsubscribe = Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(3),
        filters: vec![filter("a")],
        properties: Properties::default(),
    });
    assert_wire(
        &unsubscribe,
        V3,
        &[0xA2, 0x05, 0x00, 0x03, 0x00, 0x01, b'a'],
    );
    assert_wire(
        &unsubscribe,
        V5,
        &[0xA2, 0x06, 0x00, 0x03, 0x00, 0x00, 0x01, b'a'],
    );
    let v3 = Packet::UnsubAck(UnsubAck {
        packet_id: pid(3),
        reasons: Vec::new(),
        properties: Properties::default(),
    });
    assert_wire(&v3, V3, &[0xB0, 0x02, 0x00, 0x03]);
    let v5 = Packet::UnsubAck(UnsubAck {
        packet_id: pid(3),
        reasons: vec![ReasonCode::NoSubscriptionExisted],
        properties: Properties::default(),
    });
    assert_wire(&v5, V5, &[0xB0, 0x04, 0x00, 0x03, 0x00, 0x11]);
}

#[test]
fn ping_disconnect_auth() {
    for version in [V3, V5] {
        assert_wire(&Packet::PingReq, version, &[0xC0, 0x00]);
        assert_wire(&Packet::PingResp, version, &[0xD0, 0x00]);
        assert_wire(
            &Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
            version,
            &[0xE0, 0x00],
        );
    }
    assert_wire(
        &Packet::Disconnect(Disconnect::new(ReasonCode::ServerShuttingDown)),
        V5,
        &[0xE0, 0x01, 0x8B],
    );
    let auth = Packet::Auth(Auth {
        reason: ReasonCode::ContinueAuthentication,
        properties: Properties {
            authentication_method: Some(s("X")),
            authentication_data: Some(Bytes::from_static(&[0xFF])),
            ..Properties::default()
        },
    });
    #[rustfmt::skip]
    let wire = [0xF0, 0x0A, 0x18, 0x08, 0x15, 0x00, 0x01, b'X', 0x16, 0x00, 0x01, 0xFF];
    assert_wire(&auth, V5, &wire);
}

#[test]
fn encode_splits_the_publish_payload_off_without_copying() {
    let payload = Bytes::from(vec![7u8; 1000]);
    let packet = Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::AtLeastOnce(pid(9)),
        retain: false,
        topic: topic("t"),
        payload: payload.clone(),
        properties: Properties::default(),
    });
    let mut scratch = BytesMut::with_capacity(64);
    let encoded = encode(&packet, V5, &mut scratch).expect("encodable");
    assert_eq!(encoded.payload.as_ptr(), payload.as_ptr());
    assert_eq!(
        encoded.head.as_ref(),
        &[0x32, 0xEE, 0x07, 0x00, 0x01, b't', 0x00, 0x09, 0x00]
    );
    assert_eq!(
        encoded.wire_len(),
        encoded_len(&packet, V5).expect("encodable")
    );
    assert!(scratch.is_empty());
}

#[test]
fn encode_discards_leftover_scratch_contents() {
    let mut scratch = BytesMut::from(&b"junk"[..]);
    let encoded = encode(&Packet::PingReq, V3, &mut scratch).expect("encodable");
    assert_eq!(encoded.head.as_ref(), &[0xC0, 0x00]);
    assert!(encoded.payload.is_empty());
}

#[test]
fn decoded_strings_and_payload_share_the_read_buffer() {
    let wire = [0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'];
    let mut buf = BytesMut::from(&wire[..]);
    let start = buf.as_ptr() as usize;
    let mut decoder = Decoder::with_version(V3, 1024);
    let Some(Packet::Publish(p)) = decoder.decode(&mut buf).expect("valid") else {
        panic!("expected PUBLISH");
    };
    assert_eq!(
        p.topic.as_mqtt_string().as_bytes().as_ptr() as usize,
        start + 4
    );
    assert_eq!(p.payload.as_ptr() as usize, start + 7);
}

#[test]
fn decoder_learns_the_version_from_connect() {
    let mut decoder = Decoder::new(1024);
    assert_eq!(decoder.version(), None);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&encode_bytes(
        &Packet::Connect(Box::new(minimal_connect(V5))),
        V5,
    ));
    buf.extend_from_slice(&[0xE0, 0x01, 0x04]);
    assert!(matches!(
        decoder.decode(&mut buf),
        Ok(Some(Packet::Connect(_)))
    ));
    assert_eq!(decoder.version(), Some(V5));
    assert_eq!(
        decoder.decode(&mut buf),
        Ok(Some(Packet::Disconnect(Disconnect::new(
            ReasonCode::DisconnectWithWill
        ))))
    );
    assert_eq!(decoder.decode(&mut buf), Ok(None));
}

#[test]
fn decoder_decodes_back_to_back_packets_one_at_a_time() {
    let mut buf = BytesMut::from(&[0xC0, 0x00, 0xD0, 0x00, 0xC0][..]);
    let mut decoder = Decoder::with_version(V3, 16);
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Packet::PingReq)));
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Packet::PingResp)));
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert_eq!(buf.as_ref(), &[0xC0]);
}
