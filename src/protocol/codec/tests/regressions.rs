//! Regression tests, each named for the bug it pins (several are bugs of other MQTT codecs
//! that twinmq must not repeat).

use super::*;

#[test]
fn v5_connack_without_properties_still_writes_property_length() {
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    });
    assert_wire(&connack, V5, &[0x20, 0x03, 0x00, 0x00, 0x00]);
}

#[test]
fn v5_connack_without_property_length_is_malformed() {
    // What mqttbytes 0.6 writes for a CONNACK without properties.
    let err = decode_err(V5, &[0x20, 0x02, 0x00, 0x00], ReasonCode::MalformedPacket);
    assert_eq!(
        err,
        DecodeError::Truncated {
            field: "property length"
        }
    );
}

#[test]
fn v5_connack_with_properties_round_trips() {
    let connack = Packet::ConnAck(ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: Properties {
            assigned_client_identifier: Some(s("auto-1")),
            topic_alias_maximum: Some(10),
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            server_keep_alive: Some(30),
            ..Properties::default()
        },
    });
    #[rustfmt::skip]
    let wire = [
        0x20, 0x16, 0x01, 0x00, 0x13,
        0x12, 0x00, 0x06, b'a', b'u', b't', b'o', b'-', b'1',
        0x13, 0x00, 0x1E,
        0x22, 0x00, 0x0A,
        0x24, 0x01,
        0x25, 0x00,
    ];
    assert_wire(&connack, V5, &wire);
}

#[test]
fn v5_disconnect_e0_00_is_normal_disconnection() {
    assert_eq!(
        decode(V5, &[0xE0, 0x00]),
        Ok(Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
    );
    assert_eq!(
        encode_bytes(
            &Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
            V5
        ),
        [0xE0, 0x00]
    );
}

#[test]
fn v5_disconnect_e0_01_8e_is_session_taken_over_not_incomplete() {
    assert_eq!(
        decode(V5, &[0xE0, 0x01, 0x8E]),
        Ok(Packet::Disconnect(Disconnect::new(
            ReasonCode::SessionTakenOver
        )))
    );
}

#[test]
fn v5_puback_short_forms_decode_and_encode() {
    assert_eq!(
        decode(V5, &[0x40, 0x02, 0x00, 0x05]),
        Ok(Packet::PubAck(Ack::new(pid(5))))
    );
    assert_eq!(
        decode(V5, &[0x50, 0x03, 0x00, 0x05, 0x10]),
        Ok(Packet::PubRec(Ack::with_reason(
            pid(5),
            ReasonCode::NoMatchingSubscribers
        )))
    );
    // The full form with an empty property section means the same thing.
    assert_eq!(
        decode(V5, &[0x40, 0x04, 0x00, 0x05, 0x00, 0x00]),
        Ok(Packet::PubAck(Ack::new(pid(5))))
    );
    assert_eq!(
        encode_bytes(&Packet::PubAck(Ack::new(pid(5))), V5),
        [0x40, 0x02, 0x00, 0x05]
    );
}

#[test]
fn auth_round_trips_including_the_empty_form() {
    let success = Packet::Auth(Auth {
        reason: ReasonCode::Success,
        properties: Properties::default(),
    });
    assert_wire(&success, V5, &[0xF0, 0x00]);
    let reauth = Packet::Auth(Auth {
        reason: ReasonCode::ReAuthenticate,
        properties: Properties {
            authentication_method: Some(s("SCRAM-SHA-1")),
            ..Properties::default()
        },
    });
    let wire = encode_bytes(&reauth, V5);
    assert_eq!(wire.get(2), Some(&0x19));
    assert_eq!(decode(V5, &wire), Ok(reauth));
    // The reason alone (no property length) is read like DISCONNECT's short form.
    assert_eq!(
        decode(V5, &[0xF0, 0x01, 0x18]),
        Ok(Packet::Auth(Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties: Properties::default()
        }))
    );
}

#[test]
fn binary_non_utf8_password_is_accepted() {
    let connect = Packet::Connect(Box::new(Connect {
        username: Some(s("u")),
        password: Some(Bytes::from_static(&[0xFF, 0x00, 0xC3, 0x28])),
        ..minimal_connect(V3)
    }));
    let wire = encode_bytes(&connect, V3);
    assert_eq!(
        wire.get(wire.len() - 6..),
        Some(&[0x00, 0x04, 0xFF, 0x00, 0xC3, 0x28][..])
    );
    assert_eq!(decode(V3, &wire), Ok(connect));
}

/// One packet of each type and version; every strict prefix is incomplete and consumes
/// nothing.
#[test]
fn incomplete_input_returns_none_for_every_prefix_and_consumes_nothing() {
    let mut packets: Vec<(ProtocolVersion, Packet)> = Vec::new();
    for version in [V3, V5] {
        packets.push((version, Packet::Connect(Box::new(minimal_connect(version)))));
        packets.push((
            version,
            Packet::Subscribe(Subscribe {
                packet_id: pid(1),
                filters: vec![(filter("a/#"), SubscriptionOptions::qos(QoS::AtLeastOnce))],
                properties: Properties::default(),
            }),
        ));
        packets.push((
            version,
            Packet::Publish(Publish {
                dup: false,
                qos_pid: QosPid::AtLeastOnce(pid(1)),
                retain: false,
                topic: topic("t"),
                payload: Bytes::from(vec![1u8; 300]),
                properties: Properties::default(),
            }),
        ));
        packets.push((version, Packet::PubRel(Ack::new(pid(9)))));
        packets.push((version, Packet::PingReq));
        packets.push((
            version,
            Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
        ));
    }
    packets.push((
        V5,
        Packet::Disconnect(Disconnect::new(ReasonCode::SessionTakenOver)),
    ));
    packets.push((
        V5,
        Packet::PubAck(Ack::with_reason(pid(2), ReasonCode::QuotaExceeded)),
    ));
    packets.push((
        V5,
        Packet::Auth(Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties: Properties {
                authentication_method: Some(s("m")),
                ..Properties::default()
            },
        }),
    ));
    for (version, packet) in packets {
        let wire = encode_bytes(&packet, version);
        for len in 0..wire.len() {
            for mut decoder in [
                Decoder::with_version(version, u32::MAX),
                Decoder::new(u32::MAX),
            ] {
                if decoder.version().is_none() && !matches!(packet, Packet::Connect(_)) {
                    continue;
                }
                let mut buf = BytesMut::from(&wire[..len]);
                assert_eq!(
                    decoder.decode(&mut buf),
                    Ok(None),
                    "{packet:?} prefix {len}"
                );
                assert_eq!(buf.as_ref(), &wire[..len]);
            }
        }
        assert_eq!(decode(version, &wire), Ok(packet));
    }
}

#[test]
fn huge_remaining_length_does_not_allocate_before_the_bytes_arrive() {
    let mut decoder = Decoder::with_version(V5, u32::MAX);
    let mut buf = BytesMut::with_capacity(8);
    buf.extend_from_slice(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F, 0x00]);
    let capacity = buf.capacity();
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert_eq!(buf.capacity(), capacity);
    assert_eq!(buf.len(), 6);
}

#[test]
fn many_empty_user_properties_are_bounded_by_the_packet() {
    // Each user property costs 5 bytes on the wire, so the vector grows with input, not
    // with a length field.
    let mut props = Vec::new();
    for _ in 0..20 {
        props.extend_from_slice(&[0x26, 0x00, 0x00, 0x00, 0x00]);
    }
    let mut body = vec![0x00, 0x01, b't', props.len() as u8];
    body.extend_from_slice(&props);
    let wire = [&[0x30, body.len() as u8][..], &body].concat();
    let Ok(Packet::Publish(p)) = decode(V5, &wire) else {
        panic!("valid publish");
    };
    assert_eq!(p.properties.user_properties.len(), 20);
}
