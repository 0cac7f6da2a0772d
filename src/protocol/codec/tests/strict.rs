//! One test per strictness rule: the bytes, the error, the reason code.

use super::*;
use crate::protocol::packet::PacketType;
use crate::protocol::types::StringError;

const MALFORMED: ReasonCode = ReasonCode::MalformedPacket;
const PROTOCOL: ReasonCode = ReasonCode::ProtocolError;

/// A v5 CONNECT with client id "c" whose property section is `props` (length included).
fn connect_v5_with_properties(props: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C];
    body.extend_from_slice(props);
    body.extend_from_slice(&[0x00, 0x01, b'c']);
    with_header(0x10, &body)
}

/// A v5 QoS 0 PUBLISH to `topic` whose property section is `props` (length included).
fn publish_v5_with_properties(topic: &[u8], props: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, topic.len() as u8];
    body.extend_from_slice(topic);
    body.extend_from_slice(props);
    with_header(0x30, &body)
}

fn with_header(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut wire = vec![first, body.len() as u8];
    wire.extend_from_slice(body);
    wire
}

#[test]
fn packet_type_zero_is_malformed() {
    let err = decode_err(V5, &[0x00, 0x00], MALFORMED);
    assert_eq!(err, DecodeError::ReservedPacketType);
}

#[test]
fn publish_qos_3_is_malformed() {
    let err = decode_err(V5, &[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01], MALFORMED);
    assert!(matches!(err, DecodeError::InvalidQoS { .. }));
}

#[test]
fn publish_dup_with_qos_0_is_malformed() {
    // [MQTT-3.3.1-2]
    let err = decode_err(V3, &[0x38, 0x03, 0x00, 0x01, b't'], MALFORMED);
    assert_eq!(err, DecodeError::DupWithQoS0);
}

#[test]
fn fixed_header_flags_must_match_the_packet_type() {
    // [MQTT-2.2.2-2]: PUBREL, SUBSCRIBE, UNSUBSCRIBE need 0b0010, everything else 0b0000.
    for (first, packet_type) in [
        (0x11u8, PacketType::Connect),
        (0x28, PacketType::ConnAck),
        (0x41, PacketType::PubAck),
        (0x52, PacketType::PubRec),
        (0x60, PacketType::PubRel),
        (0x63, PacketType::PubRel),
        (0x74, PacketType::PubComp),
        (0x80, PacketType::Subscribe),
        (0x9F, PacketType::SubAck),
        (0xA0, PacketType::Unsubscribe),
        (0xB2, PacketType::UnsubAck),
        (0xC2, PacketType::PingReq),
        (0xD1, PacketType::PingResp),
        (0xE2, PacketType::Disconnect),
        (0xF1, PacketType::Auth),
    ] {
        let flags = first & 0x0F;
        let err = decode_err(V5, &[first, 0x00], MALFORMED);
        assert_eq!(err, DecodeError::InvalidFlags { packet_type, flags });
    }
}

#[test]
fn auth_does_not_exist_in_v311() {
    let err = decode_err(V3, &[0xF0, 0x00], MALFORMED);
    assert_eq!(
        err,
        DecodeError::PacketTypeNotInVersion {
            packet_type: PacketType::Auth,
            version: V3
        }
    );
}

#[test]
fn first_packet_must_be_connect() {
    // [MQTT-3.1.0-1]; refused on the first byte, before the rest arrives.
    let mut decoder = Decoder::new(1024);
    let err = decoder
        .decode(&mut BytesMut::from(&[0x30][..]))
        .expect_err("not CONNECT");
    assert_eq!(
        err,
        DecodeError::ExpectedConnect {
            packet_type: PacketType::Publish
        }
    );
    assert_eq!(err.reason_code(), PROTOCOL);
}

#[test]
fn remaining_length_of_five_bytes_is_malformed() {
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF][..]);
    let err = Decoder::with_version(V5, u32::MAX)
        .decode(&mut buf)
        .expect_err("too long");
    assert_eq!(err, DecodeError::VarIntTooLong);
    assert_eq!(err.reason_code(), MALFORMED);
}

#[test]
fn remaining_length_must_be_minimal() {
    // [MQTT-1.5.5-1]: 0 in two bytes.
    let err = decode_err(V5, &[0xC0, 0x80, 0x00], MALFORMED);
    assert_eq!(err, DecodeError::VarIntNotMinimal);
}

#[test]
fn bytes_after_the_content_are_malformed() {
    let err = decode_err(V5, &[0xC0, 0x01, 0x00], MALFORMED);
    assert_eq!(
        err,
        DecodeError::TrailingBytes {
            packet_type: PacketType::PingReq,
            extra: 1
        }
    );
    // 3.1.1 PUBACK is exactly the packet identifier.
    let err = decode_err(V3, &[0x40, 0x03, 0x00, 0x01, 0x00], MALFORMED);
    assert!(matches!(err, DecodeError::TrailingBytes { extra: 1, .. }));
    // 3.1.1 DISCONNECT is empty.
    let err = decode_err(V3, &[0xE0, 0x01, 0x00], MALFORMED);
    assert!(matches!(err, DecodeError::TrailingBytes { extra: 1, .. }));
}

#[test]
fn content_running_past_the_remaining_length_is_malformed_not_incomplete() {
    // The filter claims 5 bytes, the remaining length leaves none; more input would not help.
    let wire = [
        0x82, 0x04, 0x00, 0x01, 0x00, 0x05, b'a', b'b', b'c', b'd', b'e', 0x00,
    ];
    let err = decode_err(V3, &wire[..6], MALFORMED);
    assert_eq!(
        err,
        DecodeError::Truncated {
            field: "topic filter"
        }
    );
}

#[test]
fn packet_too_large_is_refused_from_the_fixed_header_alone() {
    let mut decoder = Decoder::with_version(V5, 10);
    let mut buf = BytesMut::from(&[0x30, 0x7F][..]);
    let err = decoder.decode(&mut buf).expect_err("too large");
    assert_eq!(err, DecodeError::PacketTooLarge { size: 129, max: 10 });
    assert_eq!(err.reason_code(), ReasonCode::PacketTooLarge);
    // Exactly at the limit is fine.
    let mut decoder = Decoder::with_version(V5, 2);
    assert_eq!(
        decoder.decode(&mut BytesMut::from(&[0xC0, 0x00][..])),
        Ok(Some(Packet::PingReq))
    );
}

#[test]
fn mqtt_3_1_and_unknown_levels_are_unsupported_versions() {
    let mqisdp = [
        0x10, 0x0F, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3C, 0x00,
        0x01, b'c',
    ];
    let err = decode_err(V5, &mqisdp, ReasonCode::UnsupportedProtocolVersion);
    assert_eq!(err, DecodeError::UnsupportedProtocolVersion { level: 3 });
    for level in [0u8, 3, 6, 255] {
        let wire = [
            0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', level, 0x02, 0x00, 0x3C, 0x00, 0x01,
            b'c',
        ];
        let mut decoder = Decoder::new(1024);
        let err = decoder
            .decode(&mut BytesMut::from(&wire[..]))
            .expect_err("unsupported");
        assert_eq!(err, DecodeError::UnsupportedProtocolVersion { level });
    }
}

#[test]
fn other_protocol_names_are_a_protocol_error() {
    let wire = [
        0x10, 0x0D, 0x00, 0x04, b'H', b'T', b'T', b'P', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x01, b'c',
    ];
    let err = decode_err(V3, &wire, PROTOCOL);
    assert_eq!(
        err,
        DecodeError::InvalidProtocolName {
            name: Bytes::from_static(b"HTTP")
        }
    );
}

fn connect_v3_with_flags(flags: u8) -> Vec<u8> {
    vec![
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, flags, 0x00, 0x3C, 0x00, 0x01, b'c',
    ]
}

#[test]
fn connect_reserved_flag_is_malformed() {
    // [MQTT-3.1.2-3]
    let err = decode_err(V3, &connect_v3_with_flags(0x03), MALFORMED);
    assert_eq!(err, DecodeError::ReservedConnectFlag);
}

#[test]
fn will_qos_and_retain_need_the_will_flag() {
    // [MQTT-3.1.2-11, -13, -15]
    for flags in [0b0000_1010, 0b0001_0010, 0b0010_0010] {
        let err = decode_err(V3, &connect_v3_with_flags(flags), MALFORMED);
        assert_eq!(err, DecodeError::WillFlagsWithoutWill { flags });
    }
}

#[test]
fn will_qos_3_is_malformed() {
    let err = decode_err(V3, &connect_v3_with_flags(0b0001_1110), MALFORMED);
    assert_eq!(err, DecodeError::InvalidQoS { field: "will" });
}

#[test]
fn v311_password_without_user_name_is_malformed_but_v5_allows_it() {
    // [MQTT-3.1.2-22]
    let err = decode_err(V3, &connect_v3_with_flags(0b0100_0010), MALFORMED);
    assert_eq!(err, DecodeError::PasswordWithoutUsername);
    #[rustfmt::skip]
    let v5 = [
        0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0b0100_0010, 0x00, 0x3C, 0x00,
        0x00, 0x01, b'c', 0x00, 0x01, 0xFF,
    ];
    let Ok(Packet::Connect(c)) = decode(V5, &v5) else {
        panic!("v5 allows a password alone");
    };
    assert_eq!(c.username, None);
    assert_eq!(c.password, Some(Bytes::from_static(&[0xFF])));
}

#[test]
fn empty_client_id_is_left_to_the_connection() {
    let wire = [
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00,
    ];
    let Ok(Packet::Connect(c)) = decode(V3, &wire) else {
        panic!("empty client id decodes");
    };
    assert!(c.client_id.is_empty());
}

#[test]
fn property_length_beyond_the_packet_is_malformed() {
    let err = decode_err(V5, &connect_v5_with_properties(&[0x20]), MALFORMED);
    assert!(matches!(
        err,
        DecodeError::PropertyLengthOverrun { length: 32, .. }
    ));
}

#[test]
fn unknown_property_is_malformed() {
    let err = decode_err(
        V5,
        &connect_v5_with_properties(&[0x02, 0x05, 0x00]),
        MALFORMED,
    );
    assert_eq!(err, DecodeError::UnknownProperty { id: 5 });
}

#[test]
fn property_not_allowed_in_the_packet_type_is_malformed() {
    // Topic alias in CONNECT.
    let err = decode_err(
        V5,
        &connect_v5_with_properties(&[0x03, 0x23, 0x00, 0x01]),
        MALFORMED,
    );
    assert_eq!(
        err,
        DecodeError::PropertyNotAllowed {
            context: "CONNECT",
            id: 0x23
        }
    );
    // Session expiry in PUBACK.
    let wire = [
        0x40, 0x09, 0x00, 0x01, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x01,
    ];
    let err = decode_err(V5, &wire, MALFORMED);
    assert!(matches!(
        err,
        DecodeError::PropertyNotAllowed {
            context: "PUBACK",
            id: 0x11
        }
    ));
}

#[test]
fn repeated_property_is_a_protocol_error() {
    let props = [0x0A, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2];
    let err = decode_err(V5, &connect_v5_with_properties(&props), PROTOCOL);
    assert_eq!(err, DecodeError::DuplicateProperty { id: 0x11 });
    // SUBSCRIBE takes one subscription identifier...
    let wire = [
        0x82, 0x0B, 0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, b'a', 0x00,
    ];
    let err = decode_err(V5, &wire, PROTOCOL);
    assert_eq!(err, DecodeError::DuplicateProperty { id: 0x0B });
}

#[test]
fn user_properties_and_publish_subscription_identifiers_may_repeat() {
    #[rustfmt::skip]
    let props = [0x0E, 0x26, 0, 1, b'k', 0, 0, 0x26, 0, 1, b'k', 0, 0, 0x0B, 0x01];
    let Ok(Packet::Publish(p)) = decode(V5, &publish_v5_with_properties(b"t", &props)) else {
        panic!("repeats allowed");
    };
    assert_eq!(p.properties.user_properties.len(), 2);
    assert_eq!(p.properties.subscription_identifiers, vec![NonZeroU32::MIN]);
    let props = [0x04, 0x0B, 0x01, 0x0B, 0x02];
    let Ok(Packet::Publish(p)) = decode(V5, &publish_v5_with_properties(b"t", &props)) else {
        panic!("several subscription identifiers in PUBLISH");
    };
    assert_eq!(p.properties.subscription_identifiers.len(), 2);
}

#[test]
fn out_of_range_property_values_are_protocol_errors() {
    for (props, id, value) in [
        (vec![0x02, 0x17, 0x02], 0x17u8, 2u32),
        (vec![0x02, 0x19, 0x02], 0x19, 2),
        (vec![0x03, 0x21, 0x00, 0x00], 0x21, 0),
        (vec![0x05, 0x27, 0, 0, 0, 0], 0x27, 0),
    ] {
        let err = decode_err(V5, &connect_v5_with_properties(&props), PROTOCOL);
        assert_eq!(err, DecodeError::InvalidPropertyValue { id, value });
    }
    let err = decode_err(
        V5,
        &publish_v5_with_properties(b"t", &[0x02, 0x01, 0x02]),
        PROTOCOL,
    );
    assert_eq!(
        err,
        DecodeError::InvalidPropertyValue { id: 0x01, value: 2 }
    );
    let err = decode_err(
        V5,
        &publish_v5_with_properties(b"t", &[0x02, 0x0B, 0x00]),
        PROTOCOL,
    );
    assert_eq!(
        err,
        DecodeError::InvalidPropertyValue { id: 0x0B, value: 0 }
    );
    for id in [0x24u8, 0x25, 0x28, 0x29, 0x2A] {
        let wire = [0x20, 0x05, 0x00, 0x00, 0x02, id, 0x02];
        let err = decode_err(V5, &wire, PROTOCOL);
        assert_eq!(err, DecodeError::InvalidPropertyValue { id, value: 2 });
    }
}

#[test]
fn topic_alias_zero_is_topic_alias_invalid() {
    // [MQTT-3.3.2-8]
    let wire = publish_v5_with_properties(b"t", &[0x03, 0x23, 0x00, 0x00]);
    let err = decode_err(V5, &wire, ReasonCode::TopicAliasInvalid);
    assert_eq!(err, DecodeError::TopicAliasZero);
}

#[test]
fn subscription_identifier_longer_than_four_bytes_is_malformed() {
    let wire = publish_v5_with_properties(b"t", &[0x06, 0x0B, 0x80, 0x80, 0x80, 0x80, 0x01]);
    let err = decode_err(V5, &wire, MALFORMED);
    assert_eq!(err, DecodeError::VarIntTooLong);
}

#[test]
fn authentication_data_without_method_is_a_protocol_error() {
    let props = [0x04, 0x16, 0x00, 0x01, 0xAA];
    let err = decode_err(V5, &connect_v5_with_properties(&props), PROTOCOL);
    assert_eq!(err, DecodeError::AuthenticationDataWithoutMethod);
    let wire = [0xF0, 0x06, 0x18, 0x04, 0x16, 0x00, 0x01, 0xAA];
    let err = decode_err(V5, &wire, PROTOCOL);
    assert_eq!(err, DecodeError::AuthenticationDataWithoutMethod);
}

#[test]
fn response_topic_must_be_a_topic_name() {
    let wire = publish_v5_with_properties(b"t", &[0x04, 0x08, 0x00, 0x01, b'#']);
    let err = decode_err(V5, &wire, ReasonCode::TopicNameInvalid);
    assert_eq!(
        err,
        DecodeError::InvalidTopicName {
            field: "response topic",
            error: StringError::WildcardInTopic
        }
    );
}

#[test]
fn strings_must_be_utf8_without_nul() {
    // [MQTT-1.5.4-1, -2]
    let err = decode_err(V3, &[0x30, 0x03, 0x00, 0x01, 0xC0], MALFORMED);
    assert_eq!(
        err,
        DecodeError::InvalidString {
            field: "topic name",
            error: StringError::InvalidUtf8
        }
    );
    let err = decode_err(V3, &[0x30, 0x03, 0x00, 0x01, 0x00], MALFORMED);
    assert_eq!(
        err,
        DecodeError::InvalidString {
            field: "topic name",
            error: StringError::NullCharacter
        }
    );
}

#[test]
fn topic_name_with_wildcard_is_topic_name_invalid() {
    // [MQTT-3.3.2-2]
    let err = decode_err(
        V5,
        &publish_v5_with_properties(b"a/+", &[0x00]),
        ReasonCode::TopicNameInvalid,
    );
    assert!(matches!(
        err,
        DecodeError::InvalidTopicName {
            field: "topic name",
            ..
        }
    ));
}

#[test]
fn empty_topic_is_malformed_in_v311() {
    let err = decode_err(V3, &[0x30, 0x02, 0x00, 0x00], MALFORMED);
    assert_eq!(
        err,
        DecodeError::EmptyTopicName {
            field: "topic name"
        }
    );
}

#[test]
fn empty_topic_in_v5_needs_a_topic_alias() {
    let err = decode_err(V5, &publish_v5_with_properties(b"", &[0x00]), PROTOCOL);
    assert_eq!(err, DecodeError::EmptyTopicWithoutAlias);
    let wire = publish_v5_with_properties(b"", &[0x03, 0x23, 0x00, 0x07]);
    let Ok(Packet::Publish(p)) = decode(V5, &wire) else {
        panic!("aliased publish decodes");
    };
    assert_eq!(p.topic, TopicName::empty_for_alias());
    assert_eq!(p.properties.topic_alias, NonZeroU16::new(7));
}

#[test]
fn subscribe_and_unsubscribe_need_a_filter() {
    // [MQTT-3.8.3-2], [MQTT-3.10.3-2]
    for version in [V3, V5] {
        let props: &[u8] = if version.is_v5() { &[0x00] } else { &[] };
        for first in [0x82u8, 0xA2] {
            let wire = with_header(first, &[&[0x00, 0x01][..], props].concat());
            let err = decode_err(version, &wire, PROTOCOL);
            assert!(matches!(err, DecodeError::NoTopicFilters { .. }), "{err}");
        }
    }
}

#[test]
fn invalid_topic_filters_are_topic_filter_invalid() {
    for (text, error) in [
        (&b"a/#/b"[..], StringError::InvalidFilter),
        (b"a+", StringError::InvalidFilter),
        (b"", StringError::EmptyFilter),
    ] {
        let mut body = vec![0x00, 0x01, 0x00, text.len() as u8];
        body.extend_from_slice(text);
        body.push(0x00);
        let err = decode_err(
            V3,
            &with_header(0x82, &body),
            ReasonCode::TopicFilterInvalid,
        );
        assert_eq!(err, DecodeError::InvalidTopicFilter { error });
        // UNSUBSCRIBE too.
        body.pop();
        let err = decode_err(
            V3,
            &with_header(0xA2, &body),
            ReasonCode::TopicFilterInvalid,
        );
        assert_eq!(err, DecodeError::InvalidTopicFilter { error });
    }
}

fn subscribe_with_options(version: ProtocolVersion, options: u8) -> Vec<u8> {
    let props: &[u8] = if version.is_v5() { &[0x00] } else { &[] };
    let body = [&[0x00, 0x01][..], props, &[0x00, 0x01, b'a', options]].concat();
    with_header(0x82, &body)
}

#[test]
fn subscription_option_bits() {
    // v5: bits 6-7 reserved [MQTT-3.8.3-5]; retain handling 3 is a protocol error.
    for options in [0b0100_0000, 0b1000_0000] {
        let err = decode_err(V5, &subscribe_with_options(V5, options), MALFORMED);
        assert_eq!(err, DecodeError::ReservedSubscriptionBits { options });
    }
    let err = decode_err(V5, &subscribe_with_options(V5, 0b0011_0000), PROTOCOL);
    assert_eq!(
        err,
        DecodeError::InvalidRetainHandling {
            options: 0b0011_0000
        }
    );
    let err = decode_err(V5, &subscribe_with_options(V5, 0x03), MALFORMED);
    assert!(matches!(err, DecodeError::InvalidQoS { .. }));
    // 3.1.1: bits 2-7 reserved [MQTT-3-8.3-4].
    for options in [0x04u8, 0x08, 0x10, 0x80] {
        let err = decode_err(V3, &subscribe_with_options(V3, options), MALFORMED);
        assert_eq!(err, DecodeError::ReservedSubscriptionBits { options });
    }
    let err = decode_err(V3, &subscribe_with_options(V3, 0x03), MALFORMED);
    assert!(matches!(err, DecodeError::InvalidQoS { .. }));
}

/// Every byte value, in every packet type with a reason code: accepted exactly when the
/// packet type's table (§3.x.2.1) lists it.
#[test]
fn reason_codes_must_be_valid_for_the_packet_type() {
    for code in 0..=255u8 {
        let cases: [(PacketType, Vec<u8>); 8] = [
            (PacketType::ConnAck, vec![0x20, 0x03, 0x00, code, 0x00]),
            (PacketType::PubAck, vec![0x40, 0x03, 0x00, 0x01, code]),
            (PacketType::PubRec, vec![0x50, 0x03, 0x00, 0x01, code]),
            (PacketType::PubRel, vec![0x62, 0x03, 0x00, 0x01, code]),
            (PacketType::PubComp, vec![0x70, 0x03, 0x00, 0x01, code]),
            (PacketType::SubAck, vec![0x90, 0x04, 0x00, 0x01, 0x00, code]),
            (
                PacketType::UnsubAck,
                vec![0xB0, 0x04, 0x00, 0x01, 0x00, code],
            ),
            (PacketType::Disconnect, vec![0xE0, 0x01, code]),
        ];
        for (packet_type, wire) in cases
            .into_iter()
            .chain([(PacketType::Auth, vec![0xF0, 0x02, code, 0x00])])
        {
            let valid = reason::table(packet_type).contains(&code);
            match decode(V5, &wire) {
                Ok(_) => assert!(valid, "{packet_type:?} accepted {code:#x}"),
                Err(err) => {
                    assert!(!valid, "{packet_type:?} refused {code:#x}: {err}");
                    assert_eq!(err, DecodeError::InvalidReasonCode { packet_type, code });
                    assert_eq!(err.reason_code(), MALFORMED);
                }
            }
        }
    }
}

#[test]
fn v311_return_codes_outside_the_tables_are_malformed() {
    let err = decode_err(V3, &[0x20, 0x02, 0x00, 0x06], MALFORMED);
    assert_eq!(
        err,
        DecodeError::InvalidReasonCode {
            packet_type: PacketType::ConnAck,
            code: 6
        }
    );
    let err = decode_err(V3, &[0x90, 0x03, 0x00, 0x01, 0x03], MALFORMED);
    assert_eq!(
        err,
        DecodeError::InvalidReasonCode {
            packet_type: PacketType::SubAck,
            code: 3
        }
    );
    // 0x80 is 3.1.1's only failure code; it reads as Unspecified error.
    let Ok(Packet::SubAck(s)) = decode(V3, &[0x90, 0x03, 0x00, 0x01, 0x80]) else {
        panic!("0x80 is valid");
    };
    assert_eq!(s.reasons, vec![ReasonCode::UnspecifiedError]);
}

#[test]
fn connack_flags() {
    // Bits 7-1 reserved [MQTT-3.2.2-1 (3.1.1)].
    let err = decode_err(V3, &[0x20, 0x02, 0x02, 0x00], MALFORMED);
    assert_eq!(err, DecodeError::ReservedConnAckFlags { flags: 0x02 });
    // Session present only with success [MQTT-3.2.2-6].
    let err = decode_err(V5, &[0x20, 0x03, 0x01, 0x87, 0x00], PROTOCOL);
    assert_eq!(
        err,
        DecodeError::SessionPresentWithError {
            reason: ReasonCode::NotAuthorized
        }
    );
}

#[test]
fn suback_and_v5_unsuback_need_a_reason_code() {
    let err = decode_err(V3, &[0x90, 0x02, 0x00, 0x01], PROTOCOL);
    assert_eq!(
        err,
        DecodeError::NoReasonCodes {
            packet_type: PacketType::SubAck
        }
    );
    let err = decode_err(V5, &[0xB0, 0x03, 0x00, 0x01, 0x00], PROTOCOL);
    assert_eq!(
        err,
        DecodeError::NoReasonCodes {
            packet_type: PacketType::UnsubAck
        }
    );
}

#[test]
fn packet_identifier_zero_is_malformed() {
    for (version, wire, packet_type) in [
        (V3, vec![0x40, 0x02, 0x00, 0x00], PacketType::PubAck),
        (V5, vec![0x62, 0x02, 0x00, 0x00], PacketType::PubRel),
        (
            V3,
            vec![0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00],
            PacketType::Publish,
        ),
        (
            V3,
            vec![0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00],
            PacketType::Subscribe,
        ),
        (V3, vec![0x90, 0x03, 0x00, 0x00, 0x00], PacketType::SubAck),
        (
            V3,
            vec![0xA2, 0x05, 0x00, 0x00, 0x00, 0x01, b'a'],
            PacketType::Unsubscribe,
        ),
        (V3, vec![0xB0, 0x02, 0x00, 0x00], PacketType::UnsubAck),
    ] {
        let err = decode_err(version, &wire, MALFORMED);
        assert_eq!(err, DecodeError::ZeroPacketId { packet_type });
    }
}

/// A valid value for each property identifier, identifier included.
fn one_property(id: u8) -> Vec<u8> {
    let value: &[u8] = match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => &[1],
        0x02 | 0x11 | 0x18 | 0x27 => &[0, 0, 0, 1],
        0x13 | 0x21 | 0x22 | 0x23 => &[0, 1],
        0x0B => &[1],
        0x26 => &[0, 1, b'k', 0, 1, b'v'],
        // Strings and binary data; authentication data brings its method along.
        0x16 => return vec![0x15, 0, 1, b'm', 0x16, 0, 1, 0xFF],
        _ => &[0, 1, b'x'],
    };
    [&[id][..], value].concat()
}

/// A property section's name, allowed identifiers, and a packet built around it.
type PropertyCase = (&'static str, &'static [u8], fn(&[u8]) -> Vec<u8>);

/// The allowed properties per packet, transcribed from the spec's table (§2.2.2.2) rather
/// than from `properties.rs`, so the two are checked against each other.
#[test]
fn each_packet_type_allows_exactly_its_properties() {
    const ACK: &[u8] = &[0x1F, 0x26];
    let cases: [PropertyCase; 14] = [
        (
            "CONNECT",
            &[0x11, 0x21, 0x27, 0x22, 0x19, 0x17, 0x26, 0x15, 0x16],
            |p| connect_v5_with_properties(p),
        ),
        ("will", &[0x18, 0x01, 0x02, 0x03, 0x08, 0x09, 0x26], |p| {
            let mut body = vec![
                0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x06, 0x00, 0x3C, 0x00,
            ];
            body.extend_from_slice(&[0x00, 0x01, b'c']);
            body.extend_from_slice(p);
            body.extend_from_slice(&[0x00, 0x01, b'w', 0x00, 0x00]);
            with_header(0x10, &body)
        }),
        (
            "CONNACK",
            &[
                0x11, 0x21, 0x24, 0x25, 0x27, 0x12, 0x22, 0x1F, 0x26, 0x28, 0x29, 0x2A, 0x13, 0x1A,
                0x1C, 0x15, 0x16,
            ],
            |p| with_header(0x20, &[&[0x00, 0x00][..], p].concat()),
        ),
        (
            "PUBLISH",
            &[0x01, 0x02, 0x23, 0x08, 0x09, 0x26, 0x0B, 0x03],
            |p| publish_v5_with_properties(b"t", p),
        ),
        ("PUBACK", ACK, |p| {
            with_header(0x40, &[&[0, 1, 0][..], p].concat())
        }),
        ("PUBREC", ACK, |p| {
            with_header(0x50, &[&[0, 1, 0][..], p].concat())
        }),
        ("PUBREL", ACK, |p| {
            with_header(0x62, &[&[0, 1, 0][..], p].concat())
        }),
        ("PUBCOMP", ACK, |p| {
            with_header(0x70, &[&[0, 1, 0][..], p].concat())
        }),
        ("SUBSCRIBE", &[0x0B, 0x26], |p| {
            with_header(0x82, &[&[0, 1][..], p, &[0, 1, b'a', 0]].concat())
        }),
        ("SUBACK", ACK, |p| {
            with_header(0x90, &[&[0, 1][..], p, &[0]].concat())
        }),
        ("UNSUBSCRIBE", &[0x26], |p| {
            with_header(0xA2, &[&[0, 1][..], p, &[0, 1, b'a']].concat())
        }),
        ("UNSUBACK", ACK, |p| {
            with_header(0xB0, &[&[0, 1][..], p, &[0]].concat())
        }),
        ("DISCONNECT", &[0x11, 0x1F, 0x26, 0x1C], |p| {
            with_header(0xE0, &[&[0][..], p].concat())
        }),
        ("AUTH", &[0x15, 0x16, 0x1F, 0x26], |p| {
            with_header(0xF0, &[&[0][..], p].concat())
        }),
    ];
    let known = [
        0x01u8, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A,
        0x1C, 0x1F, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A,
    ];
    for (name, allowed, build) in cases {
        for id in known {
            let property = one_property(id);
            let section = [&[property.len() as u8][..], &property].concat();
            let result = decode(V5, &build(&section));
            if allowed.contains(&id) {
                assert!(result.is_ok(), "{name} refused {id:#04x}: {result:?}");
            } else {
                let err = result.expect_err("not allowed");
                assert!(
                    matches!(err, DecodeError::PropertyNotAllowed { .. }),
                    "{name} {id:#04x}: {err}"
                );
                assert_eq!(err.reason_code(), MALFORMED);
            }
        }
    }
}

#[test]
fn v311_has_no_properties_so_the_bytes_are_payload() {
    let Ok(Packet::Publish(p)) = decode(V3, &[0x30, 0x05, 0x00, 0x01, b't', 0x00, 0x07]) else {
        panic!("valid 3.1.1 publish");
    };
    assert_eq!(p.payload.as_ref(), &[0x00, 0x07]);
    assert!(p.properties.is_empty());
}
