//! The encoder refuses what the decoder would refuse, and `encoded_len` refuses the same.

use super::*;
use crate::protocol::packet::PacketType;

fn refuse(packet: &Packet, version: ProtocolVersion) -> EncodeError {
    let err = encode_to_bytes(packet, version).expect_err("must be refused");
    assert_eq!(encoded_len(packet, version), Err(err.clone()));
    assert_eq!(
        encode(packet, version, &mut BytesMut::new()).map(|_| ()),
        Err(err.clone())
    );
    err
}

fn publish(topic: TopicName, qos_pid: QosPid, properties: Properties) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos_pid,
        retain: false,
        topic,
        payload: Bytes::new(),
        properties,
    })
}

#[test]
fn auth_is_not_in_v311() {
    let auth = Packet::Auth(Auth {
        reason: ReasonCode::Success,
        properties: Properties::default(),
    });
    assert_eq!(
        refuse(&auth, V3),
        EncodeError::NotInVersion {
            packet_type: PacketType::Auth,
            version: V3
        }
    );
}

#[test]
fn connect_must_match_the_encoding_version() {
    let connect = Packet::Connect(Box::new(minimal_connect(V5)));
    assert_eq!(
        refuse(&connect, V3),
        EncodeError::ConnectVersionMismatch {
            connect: V5,
            version: V3
        }
    );
}

#[test]
fn v311_password_needs_a_user_name() {
    let connect = Packet::Connect(Box::new(Connect {
        password: Some(Bytes::from_static(b"p")),
        ..minimal_connect(V3)
    }));
    assert_eq!(refuse(&connect, V3), EncodeError::PasswordWithoutUsername);
}

#[test]
fn empty_subscribe_unsubscribe_suback_unsuback() {
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: Vec::new(),
        properties: Properties::default(),
    });
    assert_eq!(refuse(&subscribe, V5), EncodeError::EmptySubscribe);
    let unsubscribe = Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(1),
        filters: Vec::new(),
        properties: Properties::default(),
    });
    assert_eq!(refuse(&unsubscribe, V3), EncodeError::EmptyUnsubscribe);
    let suback = Packet::SubAck(SubAck {
        packet_id: pid(1),
        reasons: Vec::new(),
        properties: Properties::default(),
    });
    assert_eq!(refuse(&suback, V3), EncodeError::EmptySubAck);
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: pid(1),
        reasons: Vec::new(),
        properties: Properties::default(),
    });
    assert_eq!(refuse(&unsuback, V5), EncodeError::EmptyUnsubAck);
    // 3.1.1 UNSUBACK has no reason codes at all.
    assert_eq!(encode_bytes(&unsuback, V3), [0xB0, 0x02, 0x00, 0x01]);
}

#[test]
fn reason_code_must_be_valid_for_the_packet_type() {
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::SessionTakenOver,
        properties: Properties::default(),
    });
    for version in [V3, V5] {
        assert_eq!(
            refuse(&connack, version),
            EncodeError::InvalidReasonCode {
                packet_type: PacketType::ConnAck,
                reason: ReasonCode::SessionTakenOver
            }
        );
    }
    let pubrel = Packet::PubRel(Ack::with_reason(pid(1), ReasonCode::QuotaExceeded));
    assert!(matches!(
        refuse(&pubrel, V5),
        EncodeError::InvalidReasonCode { .. }
    ));
    // 3.1.1 PUBREL has no reason code to get wrong.
    assert_eq!(encode_bytes(&pubrel, V3), [0x62, 0x02, 0x00, 0x01]);
}

#[test]
fn v311_connack_maps_every_refusal_to_a_return_code() {
    for (reason, code) in [
        (ReasonCode::Banned, 5u8),
        (ReasonCode::ServerBusy, 3),
        (ReasonCode::BadAuthenticationMethod, 4),
        (ReasonCode::QoSNotSupported, 5),
        (ReasonCode::UnspecifiedError, 3),
    ] {
        let connack = Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties: Properties::default(),
        });
        assert_eq!(
            encode_bytes(&connack, V3),
            [0x20, 0x02, 0x00, code],
            "{reason}"
        );
    }
}

#[test]
fn session_present_only_with_success() {
    let connack = Packet::ConnAck(ConnAck {
        session_present: true,
        reason: ReasonCode::Banned,
        properties: Properties::default(),
    });
    assert_eq!(
        refuse(&connack, V3),
        EncodeError::SessionPresentWithError {
            reason: ReasonCode::Banned
        }
    );
}

#[test]
fn dup_with_qos0_and_empty_topics() {
    let dup = Packet::Publish(Publish {
        dup: true,
        qos_pid: QosPid::AtMostOnce,
        retain: false,
        topic: topic("t"),
        payload: Bytes::new(),
        properties: Properties::default(),
    });
    assert_eq!(refuse(&dup, V5), EncodeError::DupWithQoS0);
    let alias = Properties {
        topic_alias: NonZeroU16::new(1),
        ..Properties::default()
    };
    let aliased = publish(TopicName::empty_for_alias(), QosPid::AtMostOnce, alias);
    assert!(encode_to_bytes(&aliased, V5).is_ok());
    // 3.1.1 has no topic alias, so the empty topic cannot be sent.
    let field = "topic name";
    assert_eq!(refuse(&aliased, V3), EncodeError::EmptyTopicName { field });
    let bare = publish(
        TopicName::empty_for_alias(),
        QosPid::AtMostOnce,
        Properties::default(),
    );
    assert_eq!(refuse(&bare, V5), EncodeError::EmptyTopicName { field });
}

#[test]
fn properties_not_allowed_or_out_of_range() {
    let session = Properties {
        session_expiry_interval: Some(1),
        ..Properties::default()
    };
    let p = publish(topic("t"), QosPid::AtMostOnce, session);
    assert_eq!(
        refuse(&p, V5),
        EncodeError::PropertyNotAllowed {
            context: "PUBLISH",
            id: 0x11
        }
    );
    // Ignored in 3.1.1, which has no properties.
    assert!(encode_to_bytes(&p, V3).is_ok());
    let two_ids = Properties {
        subscription_identifiers: vec![NonZeroU32::MIN, NonZeroU32::MIN],
        ..Properties::default()
    };
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: vec![(filter("a"), SubscriptionOptions::qos(QoS::AtMostOnce))],
        properties: two_ids,
    });
    assert_eq!(
        refuse(&subscribe, V5),
        EncodeError::TooManySubscriptionIdentifiers { count: 2 }
    );
    let too_big = Properties {
        subscription_identifiers: vec![NonZeroU32::new(268_435_456).expect("non-zero")],
        ..Properties::default()
    };
    assert_eq!(
        refuse(&publish(topic("t"), QosPid::AtMostOnce, too_big), V5),
        EncodeError::InvalidPropertyValue {
            id: 0x0B,
            value: 268_435_456
        }
    );
    let qos2 = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: Properties {
            maximum_qos: Some(QoS::ExactlyOnce),
            ..Properties::default()
        },
    });
    assert_eq!(
        refuse(&qos2, V5),
        EncodeError::InvalidPropertyValue { id: 0x24, value: 2 }
    );
    let data_only = Packet::Auth(Auth {
        reason: ReasonCode::ContinueAuthentication,
        properties: Properties {
            authentication_data: Some(Bytes::from_static(b"x")),
            ..Properties::default()
        },
    });
    assert_eq!(
        refuse(&data_only, V5),
        EncodeError::AuthenticationDataWithoutMethod
    );
    let response_topic = Properties {
        response_topic: Some(TopicName::empty_for_alias()),
        ..Properties::default()
    };
    assert_eq!(
        refuse(&publish(topic("t"), QosPid::AtMostOnce, response_topic), V5),
        EncodeError::EmptyTopicName {
            field: "response topic"
        }
    );
}

#[test]
fn binary_data_longer_than_65535_bytes() {
    let connect = Packet::Connect(Box::new(Connect {
        username: Some(s("u")),
        password: Some(Bytes::from(vec![0u8; 65_536])),
        ..minimal_connect(V3)
    }));
    assert_eq!(
        refuse(&connect, V3),
        EncodeError::BinaryTooLong {
            field: "password",
            len: 65_536
        }
    );
}

#[test]
fn remaining_length_too_large() {
    // Zeroed memory is mapped lazily, so this does not touch 256 MiB.
    let payload = Bytes::from(vec![0u8; MAX_REMAINING_LENGTH]);
    let p = Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::AtMostOnce,
        retain: false,
        topic: topic("t"),
        payload,
        properties: Properties::default(),
    });
    assert_eq!(
        refuse(&p, V3),
        EncodeError::RemainingLengthTooLarge {
            packet_type: PacketType::Publish,
            remaining_length: MAX_REMAINING_LENGTH + 3
        }
    );
}
