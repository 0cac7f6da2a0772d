//! Differential tests against mqttbytes 0.6 (its `v4` module speaks 3.1.1, `v5` speaks 5.0).
//!
//! Each case generates a twinmq packet, maps it field by field onto mqttbytes' types, and
//! checks both directions: bytes twinmq encodes, mqttbytes decodes to the mapped packet; bytes
//! mqttbytes encodes from the mapped packet, twinmq decodes to the original.
//!
//! The generators stay inside what mqttbytes 0.6 handles correctly. Excluded, each a bug or
//! gap of mqttbytes and each covered by twinmq's own regression tests:
//! - v5 CONNACK without properties: mqttbytes omits the mandatory property length, so the
//!   generated v5 CONNACKs always carry a property (twinmq -> mqttbytes is also checked
//!   without properties in `v5_connack_without_properties_is_read_by_mqttbytes`).
//! - v5 DISCONNECT without properties: mqttbytes refuses `e0 00` and the reason-only form
//!   when reading them, so generated v5 DISCONNECTs always carry a property.
//! - AUTH: mqttbytes has no AUTH packet.
//! - Non-UTF-8 or empty passwords and empty user names: mqttbytes holds them as `String`
//!   and drops empty ones, so generated credentials are non-empty text.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use mqttbytes::{v4, v5};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use twinmq::protocol::codec::{encode_to_bytes, Decoder};
use twinmq::protocol::{
    Ack, ConnAck, Connect, Disconnect, MqttString, Packet, PacketId, Properties, ProtocolVersion,
    Publish, QoS, QosPid, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions,
    TopicFilter, TopicName, UnsubAck, Unsubscribe, Will,
};

const V3: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;
const MAX: usize = 1 << 20;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn v311_twinmq_encodes_mqttbytes_decodes(packet in packet(V3)) {
        let bytes = encode_to_bytes(&packet, V3).expect("generated packets encode");
        let mut buf = BytesMut::from(&bytes[..]);
        let theirs = v4::read(&mut buf, MAX);
        prop_assert_eq!(theirs, Ok(to_v4(&packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn v311_mqttbytes_encodes_twinmq_decodes(packet in packet(V3)) {
        let bytes = write_v4(&to_v4(&packet));
        prop_assert_eq!(decode(V3, &bytes), packet);
    }

    #[test]
    fn v5_twinmq_encodes_mqttbytes_decodes(packet in packet(V5)) {
        let bytes = encode_to_bytes(&packet, V5).expect("generated packets encode");
        let mut buf = BytesMut::from(&bytes[..]);
        let theirs = v5::read(&mut buf, MAX);
        prop_assert_eq!(theirs, Ok(to_v5(&packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn v5_mqttbytes_encodes_twinmq_decodes(packet in packet(V5)) {
        let bytes = write_v5(&to_v5(&packet));
        prop_assert_eq!(decode(V5, &bytes), packet);
    }
}

#[test]
fn v5_connack_without_properties_is_read_by_mqttbytes() {
    let connack = Packet::ConnAck(ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    });
    let bytes = encode_to_bytes(&connack, V5).expect("encodes");
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(v5::read(&mut buf, MAX), Ok(to_v5(&connack)));
}

#[test]
fn v5_short_disconnect_written_by_mqttbytes_is_read_by_twinmq() {
    for reason in [ReasonCode::Success, ReasonCode::SessionTakenOver] {
        let disconnect = Packet::Disconnect(Disconnect::new(reason));
        let bytes = write_v5(&to_v5(&disconnect));
        assert_eq!(decode(V5, &bytes), disconnect);
    }
}

/// Decodes one whole packet, which must consume `bytes` exactly.
fn decode(version: ProtocolVersion, bytes: &[u8]) -> Packet {
    let mut decoder = Decoder::with_version(version, u32::MAX);
    let mut buf = BytesMut::from(bytes);
    let packet = decoder.decode(&mut buf).expect("valid").expect("whole");
    assert!(buf.is_empty(), "left over: {buf:?}");
    packet
}

// ---- generators: valid twinmq packets within mqttbytes' reach -------------------------

fn text() -> impl Strategy<Value = MqttString> {
    "[a-zA-Z0-9 /é€]{0,8}".prop_map(|s| MqttString::new(&s).expect("valid"))
}

fn non_empty_text() -> impl Strategy<Value = MqttString> {
    "[a-zA-Z0-9é]{1,8}".prop_map(|s| MqttString::new(&s).expect("valid"))
}

fn topic() -> impl Strategy<Value = TopicName> {
    "[a-z0-9/é]{1,8}".prop_map(|s| TopicName::new(&s).expect("valid"))
}

fn filter() -> impl Strategy<Value = TopicFilter> {
    prop::sample::select(vec!["a", "a/+", "#", "+/b/#", "/", "é/+/c", "$share/g/x"])
        .prop_map(|s| TopicFilter::new(s).expect("valid"))
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..8).prop_map(Bytes::from)
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|id| PacketId::new(id).expect("non-zero"))
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn reason(codes: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    prop::sample::select(codes).prop_map(|c| ReasonCode::from_u8(c).expect("defined"))
}

fn user_properties() -> impl Strategy<Value = Vec<(MqttString, MqttString)>> {
    vec((text(), text()), 0..3)
}

fn nz16() -> impl Strategy<Value = NonZeroU16> {
    (1..=u16::MAX).prop_map(|v| NonZeroU16::new(v).expect("non-zero"))
}

fn nz32(max: u32) -> impl Strategy<Value = NonZeroU32> {
    (1..=max).prop_map(|v| NonZeroU32::new(v).expect("non-zero"))
}

/// Properties for `version`: none at all in 3.1.1.
fn props(
    version: ProtocolVersion,
    v5: impl Strategy<Value = Properties> + 'static,
) -> BoxedStrategy<Properties> {
    match version {
        ProtocolVersion::V311 => Just(Properties::default()).boxed(),
        ProtocolVersion::V5 => v5.boxed(),
    }
}

/// Makes sure at least one property is present (see the module docs).
fn non_empty(mut p: Properties) -> Properties {
    if p.is_empty() {
        p.reason_string = Some(MqttString::from_static("r"));
    }
    p
}

fn ack_props() -> impl Strategy<Value = Properties> {
    (option::of(text()), user_properties()).prop_map(|(reason_string, user_properties)| {
        Properties {
            reason_string,
            user_properties,
            ..Properties::default()
        }
    })
}

fn connect_props() -> impl Strategy<Value = Properties> {
    (
        option::of(any::<u32>()),
        option::of(nz16()),
        option::of(nz32(u32::MAX)),
        option::of(any::<u16>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        user_properties(),
        option::of((non_empty_text(), option::of(binary()))),
    )
        .prop_map(
            |(sei, rm, mps, tam, rri, rpi, user_properties, auth)| Properties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                user_properties,
                authentication_method: auth.as_ref().map(|(m, _)| m.clone()),
                authentication_data: auth.and_then(|(_, d)| d),
                ..Properties::default()
            },
        )
}

fn will_props() -> impl Strategy<Value = Properties> {
    (
        option::of(any::<u32>()),
        option::of(any::<bool>()),
        option::of(any::<u32>()),
        option::of(text()),
        option::of(topic()),
        option::of(binary()),
        user_properties(),
    )
        .prop_map(|(wdi, pfi, mei, ct, rt, cd, user_properties)| Properties {
            will_delay_interval: wdi,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties,
            ..Properties::default()
        })
}

fn connack_props() -> impl Strategy<Value = Properties> {
    let limits = (
        option::of(any::<u32>()),
        option::of(nz16()),
        option::of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
        option::of(any::<bool>()),
        option::of(nz32(u32::MAX)),
        option::of(any::<u16>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<u16>()),
    );
    let texts = (
        option::of(text()),
        option::of(text()),
        user_properties(),
        option::of(text()),
        option::of(text()),
        option::of((non_empty_text(), option::of(binary()))),
    );
    (limits, texts).prop_map(|(l, t)| Properties {
        session_expiry_interval: l.0,
        receive_maximum: l.1,
        maximum_qos: l.2,
        retain_available: l.3,
        maximum_packet_size: l.4,
        topic_alias_maximum: l.5,
        wildcard_subscription_available: l.6,
        subscription_identifier_available: l.7,
        shared_subscription_available: l.8,
        server_keep_alive: l.9,
        assigned_client_identifier: t.0,
        reason_string: t.1,
        user_properties: t.2,
        response_information: t.3,
        server_reference: t.4,
        authentication_method: t.5.as_ref().map(|(m, _)| m.clone()),
        authentication_data: t.5.and_then(|(_, d)| d),
        ..Properties::default()
    })
}

fn publish_props() -> impl Strategy<Value = Properties> {
    (
        option::of(any::<bool>()),
        option::of(any::<u32>()),
        option::of(nz16()),
        option::of(topic()),
        option::of(binary()),
        user_properties(),
        vec(nz32(268_435_455), 0..3),
        option::of(text()),
    )
        .prop_map(
            |(pfi, mei, ta, rt, cd, user_properties, ids, ct)| Properties {
                payload_format_indicator: pfi,
                message_expiry_interval: mei,
                topic_alias: ta,
                response_topic: rt,
                correlation_data: cd,
                user_properties,
                subscription_identifiers: ids,
                content_type: ct,
                ..Properties::default()
            },
        )
}

fn subscribe_props() -> impl Strategy<Value = Properties> {
    (option::of(nz32(268_435_455)), user_properties()).prop_map(|(id, user_properties)| {
        Properties {
            subscription_identifiers: id.into_iter().collect(),
            user_properties,
            ..Properties::default()
        }
    })
}

fn disconnect_props() -> impl Strategy<Value = Properties> {
    (
        option::of(any::<u32>()),
        option::of(text()),
        user_properties(),
        option::of(text()),
    )
        .prop_map(|(sei, rs, user_properties, sr)| Properties {
            session_expiry_interval: sei,
            reason_string: rs,
            user_properties,
            server_reference: sr,
            ..Properties::default()
        })
}

const CONNACK_V3: &[u8] = &[0x00, 0x84, 0x85, 0x88, 0x86, 0x87];
const CONNACK_V5: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const PUBACK: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL: &[u8] = &[0x00, 0x92];
const SUBACK_V3: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const SUBACK_V5: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const UNSUBACK: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];

fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    let will = (
        topic(),
        binary(),
        qos(),
        any::<bool>(),
        props(version, will_props()),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    let connect = (
        any::<bool>(),
        any::<u16>(),
        text(),
        option::of(will),
        option::of(non_empty_text()),
        option::of(non_empty_text()),
        props(version, connect_props()),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // 3.1.1 has no password without a user name.
                let username = match (&username, &password) {
                    (None, Some(_)) if !v5 => Some(MqttString::from_static("u")),
                    _ => username,
                };
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password: password.map(|p| p.as_bytes().clone()),
                    properties,
                }))
            },
        );
    let connack_reasons = if v5 { CONNACK_V5 } else { CONNACK_V3 };
    let connack = (
        any::<bool>(),
        reason(connack_reasons),
        props(version, connack_props()),
    )
        .prop_map(move |(session_present, reason, properties)| {
            Packet::ConnAck(ConnAck {
                session_present: session_present && !reason.is_error(),
                reason,
                properties: if v5 {
                    non_empty(properties)
                } else {
                    properties
                },
            })
        });
    let publish = (
        any::<bool>(),
        prop_oneof![
            Just(QosPid::AtMostOnce),
            packet_id().prop_map(QosPid::AtLeastOnce),
            packet_id().prop_map(QosPid::ExactlyOnce),
        ],
        any::<bool>(),
        topic(),
        any::<bool>(),
        binary(),
        props(version, publish_props()),
    )
        .prop_map(
            |(dup, qos_pid, retain, topic, empty, payload, properties)| {
                let aliased = properties.topic_alias.is_some();
                Packet::Publish(Publish {
                    dup: dup && qos_pid != QosPid::AtMostOnce,
                    qos_pid,
                    retain,
                    topic: if empty && aliased {
                        TopicName::empty_for_alias()
                    } else {
                        topic
                    },
                    payload,
                    properties,
                })
            },
        );
    let ack = |codes: &'static [u8]| {
        (packet_id(), reason(codes), props(version, ack_props())).prop_map(
            move |(packet_id, reason, properties)| Ack {
                packet_id,
                reason: if v5 { reason } else { ReasonCode::Success },
                properties,
            },
        )
    };
    let options =
        (qos(), any::<bool>(), any::<bool>(), 0..3u8).prop_map(move |(qos, nl, rap, rh)| {
            if !v5 {
                return SubscriptionOptions::qos(qos);
            }
            SubscriptionOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: RetainHandling::from_bits(rh).expect("0..3"),
            }
        });
    let subscribe = (
        packet_id(),
        vec((filter(), options), 1..4),
        props(version, subscribe_props()),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        });
    let suback_reasons = if v5 { SUBACK_V5 } else { SUBACK_V3 };
    let suback = (
        packet_id(),
        vec(reason(suback_reasons), 1..4),
        props(version, ack_props()),
    )
        .prop_map(|(packet_id, reasons, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reasons,
                properties,
            })
        });
    let unsubscribe = (
        packet_id(),
        vec(filter(), 1..4),
        props(
            version,
            user_properties().prop_map(|user_properties| Properties {
                user_properties,
                ..Properties::default()
            }),
        ),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        });
    let unsuback = (
        packet_id(),
        vec(reason(UNSUBACK), 1..4),
        props(version, ack_props()),
    )
        .prop_map(move |(packet_id, reasons, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reasons: if v5 { reasons } else { Vec::new() },
                properties,
            })
        });
    let disconnect =
        (reason(DISCONNECT), disconnect_props()).prop_map(move |(reason, properties)| {
            Packet::Disconnect(if v5 {
                Disconnect {
                    reason,
                    properties: non_empty(properties),
                }
            } else {
                Disconnect::new(ReasonCode::Success)
            })
        });
    prop_oneof![
        connect,
        connack,
        publish,
        ack(PUBACK).prop_map(Packet::PubAck),
        ack(PUBACK).prop_map(Packet::PubRec),
        ack(PUBREL).prop_map(Packet::PubRel),
        ack(PUBREL).prop_map(Packet::PubComp),
        subscribe,
        suback,
        unsubscribe,
        unsuback,
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect,
    ]
    .boxed()
}

// ---- mapping twinmq packets onto mqttbytes' types ------------------------------------

fn string(s: &MqttString) -> String {
    s.as_str().to_string()
}

fn opt_string(s: &Option<MqttString>) -> Option<String> {
    s.as_ref().map(string)
}

fn users(p: &Properties) -> Vec<(String, String)> {
    p.user_properties
        .iter()
        .map(|(k, v)| (string(k), string(v)))
        .collect()
}

fn their_qos(qos: QoS) -> mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => mqttbytes::QoS::ExactlyOnce,
    }
}

/// mqttbytes writes credentials as strings and leaves out empty ones.
fn login(c: &Connect) -> Option<(String, String)> {
    if c.username.is_none() && c.password.is_none() {
        return None;
    }
    let password = c
        .password
        .as_ref()
        .map(|p| String::from_utf8(p.to_vec()).expect("generated as text"));
    Some((
        opt_string(&c.username).unwrap_or_default(),
        password.unwrap_or_default(),
    ))
}

fn publish_parts(p: &Publish) -> (mqttbytes::QoS, u16) {
    (
        their_qos(p.qos_pid.qos()),
        p.qos_pid.packet_id().map_or(0, PacketId::get),
    )
}

fn to_v4(packet: &Packet) -> v4::Packet {
    match packet {
        Packet::Connect(c) => v4::Packet::Connect(v4::Connect {
            protocol: mqttbytes::Protocol::V4,
            keep_alive: c.keep_alive,
            client_id: string(&c.client_id),
            clean_session: c.clean_start,
            last_will: c.will.as_ref().map(|w| v4::LastWill {
                topic: w.topic.as_str().to_string(),
                message: w.payload.clone(),
                qos: their_qos(w.qos),
                retain: w.retain,
            }),
            login: login(c).map(|(username, password)| v4::Login { username, password }),
        }),
        Packet::ConnAck(c) => v4::Packet::ConnAck(v4::ConnAck {
            session_present: c.session_present,
            code: match c.reason {
                ReasonCode::Success => v4::ConnectReturnCode::Success,
                ReasonCode::UnsupportedProtocolVersion => {
                    v4::ConnectReturnCode::RefusedProtocolVersion
                }
                ReasonCode::ClientIdentifierNotValid => v4::ConnectReturnCode::BadClientId,
                ReasonCode::ServerUnavailable => v4::ConnectReturnCode::ServiceUnavailable,
                ReasonCode::BadUserNameOrPassword => v4::ConnectReturnCode::BadUserNamePassword,
                _ => v4::ConnectReturnCode::NotAuthorized,
            },
        }),
        Packet::Publish(p) => {
            let (qos, pkid) = publish_parts(p);
            v4::Packet::Publish(v4::Publish {
                dup: p.dup,
                qos,
                retain: p.retain,
                topic: p.topic.as_str().to_string(),
                pkid,
                payload: p.payload.clone(),
            })
        }
        Packet::PubAck(a) => v4::Packet::PubAck(v4::PubAck::new(a.packet_id.get())),
        Packet::PubRec(a) => v4::Packet::PubRec(v4::PubRec::new(a.packet_id.get())),
        Packet::PubRel(a) => v4::Packet::PubRel(v4::PubRel::new(a.packet_id.get())),
        Packet::PubComp(a) => v4::Packet::PubComp(v4::PubComp::new(a.packet_id.get())),
        Packet::Subscribe(s) => v4::Packet::Subscribe(v4::Subscribe {
            pkid: s.packet_id.get(),
            filters: s
                .filters
                .iter()
                .map(|(f, o)| v4::SubscribeFilter::new(f.as_str().to_string(), their_qos(o.qos)))
                .collect(),
        }),
        Packet::SubAck(s) => v4::Packet::SubAck(v4::SubAck {
            pkid: s.packet_id.get(),
            return_codes: s
                .reasons
                .iter()
                .map(|r| match r {
                    ReasonCode::Success => {
                        v4::SubscribeReasonCode::Success(mqttbytes::QoS::AtMostOnce)
                    }
                    ReasonCode::GrantedQoS1 => {
                        v4::SubscribeReasonCode::Success(mqttbytes::QoS::AtLeastOnce)
                    }
                    ReasonCode::GrantedQoS2 => {
                        v4::SubscribeReasonCode::Success(mqttbytes::QoS::ExactlyOnce)
                    }
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        }),
        Packet::Unsubscribe(u) => v4::Packet::Unsubscribe(v4::Unsubscribe {
            pkid: u.packet_id.get(),
            topics: u.filters.iter().map(|f| f.as_str().to_string()).collect(),
        }),
        Packet::UnsubAck(u) => v4::Packet::UnsubAck(v4::UnsubAck::new(u.packet_id.get())),
        Packet::PingReq => v4::Packet::PingReq,
        Packet::PingResp => v4::Packet::PingResp,
        Packet::Disconnect(_) => v4::Packet::Disconnect,
        Packet::Auth(_) => unreachable!("not generated for 3.1.1"),
    }
}

fn write_v4(packet: &v4::Packet) -> BytesMut {
    let mut buf = BytesMut::new();
    let written = match packet {
        v4::Packet::Connect(p) => p.write(&mut buf),
        v4::Packet::ConnAck(p) => p.write(&mut buf),
        v4::Packet::Publish(p) => p.write(&mut buf),
        v4::Packet::PubAck(p) => p.write(&mut buf),
        v4::Packet::PubRec(p) => p.write(&mut buf),
        v4::Packet::PubRel(p) => p.write(&mut buf),
        v4::Packet::PubComp(p) => p.write(&mut buf),
        v4::Packet::Subscribe(p) => p.write(&mut buf),
        v4::Packet::SubAck(p) => p.write(&mut buf),
        v4::Packet::Unsubscribe(p) => p.write(&mut buf),
        v4::Packet::UnsubAck(p) => p.write(&mut buf),
        v4::Packet::PingReq => v4::PingReq.write(&mut buf),
        v4::Packet::PingResp => v4::PingResp.write(&mut buf),
        v4::Packet::Disconnect => v4::Disconnect.write(&mut buf),
    };
    written.expect("mqttbytes encodes");
    buf
}

/// `None` for no properties, as mqttbytes reads an empty property section.
fn some_if<T>(p: &Properties, f: impl FnOnce(&Properties) -> T) -> Option<T> {
    (!p.is_empty()).then(|| f(p))
}

fn ack_properties<T>(
    p: &Properties,
    make: impl FnOnce(Option<String>, Vec<(String, String)>) -> T,
) -> Option<T> {
    some_if(p, |p| make(opt_string(&p.reason_string), users(p)))
}

fn to_v5(packet: &Packet) -> v5::Packet {
    match packet {
        Packet::Connect(c) => v5::Packet::Connect(v5::Connect {
            protocol: mqttbytes::Protocol::V5,
            keep_alive: c.keep_alive,
            client_id: string(&c.client_id),
            clean_session: c.clean_start,
            last_will: c.will.as_ref().map(|w| v5::LastWill {
                topic: w.topic.as_str().to_string(),
                message: w.payload.clone(),
                qos: their_qos(w.qos),
                retain: w.retain,
                properties: some_if(&w.properties, |p| v5::WillProperties {
                    delay_interval: p.will_delay_interval,
                    payload_format_indicator: p.payload_format_indicator.map(u8::from),
                    message_expiry_interval: p.message_expiry_interval,
                    content_type: opt_string(&p.content_type),
                    response_topic: p.response_topic.as_ref().map(|t| t.as_str().to_string()),
                    correlation_data: p.correlation_data.clone(),
                    user_properties: users(p),
                }),
            }),
            login: login(c).map(|(username, password)| v5::Login { username, password }),
            properties: some_if(&c.properties, |p| v5::ConnectProperties {
                session_expiry_interval: p.session_expiry_interval,
                receive_maximum: p.receive_maximum.map(NonZeroU16::get),
                max_packet_size: p.maximum_packet_size.map(NonZeroU32::get),
                topic_alias_max: p.topic_alias_maximum,
                request_response_info: p.request_response_information.map(u8::from),
                request_problem_info: p.request_problem_information.map(u8::from),
                user_properties: users(p),
                authentication_method: opt_string(&p.authentication_method),
                authentication_data: p.authentication_data.clone(),
            }),
        }),
        Packet::ConnAck(c) => v5::Packet::ConnAck(v5::ConnAck {
            session_present: c.session_present,
            code: connack_code(c.reason),
            properties: some_if(&c.properties, |p| v5::ConnAckProperties {
                session_expiry_interval: p.session_expiry_interval,
                receive_max: p.receive_maximum.map(NonZeroU16::get),
                max_qos: p.maximum_qos.map(QoS::bits),
                retain_available: p.retain_available.map(u8::from),
                max_packet_size: p.maximum_packet_size.map(NonZeroU32::get),
                assigned_client_identifier: opt_string(&p.assigned_client_identifier),
                topic_alias_max: p.topic_alias_maximum,
                reason_string: opt_string(&p.reason_string),
                user_properties: users(p),
                wildcard_subscription_available: p.wildcard_subscription_available.map(u8::from),
                subscription_identifiers_available: p
                    .subscription_identifier_available
                    .map(u8::from),
                shared_subscription_available: p.shared_subscription_available.map(u8::from),
                server_keep_alive: p.server_keep_alive,
                response_information: opt_string(&p.response_information),
                server_reference: opt_string(&p.server_reference),
                authentication_method: opt_string(&p.authentication_method),
                authentication_data: p.authentication_data.clone(),
            }),
        }),
        Packet::Publish(p) => {
            let (qos, pkid) = publish_parts(p);
            v5::Packet::Publish(v5::Publish {
                dup: p.dup,
                qos,
                retain: p.retain,
                topic: p.topic.as_str().to_string(),
                pkid,
                payload: p.payload.clone(),
                properties: some_if(&p.properties, |p| v5::PublishProperties {
                    payload_format_indicator: p.payload_format_indicator.map(u8::from),
                    message_expiry_interval: p.message_expiry_interval,
                    topic_alias: p.topic_alias.map(NonZeroU16::get),
                    response_topic: p.response_topic.as_ref().map(|t| t.as_str().to_string()),
                    correlation_data: p.correlation_data.clone(),
                    user_properties: users(p),
                    subscription_identifiers: p
                        .subscription_identifiers
                        .iter()
                        .map(|id| id.get() as usize)
                        .collect(),
                    content_type: opt_string(&p.content_type),
                }),
            })
        }
        Packet::PubAck(a) => v5::Packet::PubAck(v5::PubAck {
            pkid: a.packet_id.get(),
            reason: puback_reason(a.reason),
            properties: ack_properties(&a.properties, |reason_string, user_properties| {
                v5::PubAckProperties {
                    reason_string,
                    user_properties,
                }
            }),
        }),
        Packet::PubRec(a) => v5::Packet::PubRec(v5::PubRec {
            pkid: a.packet_id.get(),
            reason: pubrec_reason(a.reason),
            properties: ack_properties(&a.properties, |reason_string, user_properties| {
                v5::PubRecProperties {
                    reason_string,
                    user_properties,
                }
            }),
        }),
        Packet::PubRel(a) => v5::Packet::PubRel(v5::PubRel {
            pkid: a.packet_id.get(),
            reason: match a.reason {
                ReasonCode::Success => v5::PubRelReason::Success,
                _ => v5::PubRelReason::PacketIdentifierNotFound,
            },
            properties: ack_properties(&a.properties, |reason_string, user_properties| {
                v5::PubRelProperties {
                    reason_string,
                    user_properties,
                }
            }),
        }),
        Packet::PubComp(a) => v5::Packet::PubComp(v5::PubComp {
            pkid: a.packet_id.get(),
            reason: match a.reason {
                ReasonCode::Success => v5::PubCompReason::Success,
                _ => v5::PubCompReason::PacketIdentifierNotFound,
            },
            properties: ack_properties(&a.properties, |reason_string, user_properties| {
                v5::PubCompProperties {
                    reason_string,
                    user_properties,
                }
            }),
        }),
        Packet::Subscribe(s) => v5::Packet::Subscribe(v5::Subscribe {
            pkid: s.packet_id.get(),
            filters: s
                .filters
                .iter()
                .map(|(f, o)| v5::SubscribeFilter {
                    path: f.as_str().to_string(),
                    qos: their_qos(o.qos),
                    nolocal: o.no_local,
                    preserve_retain: o.retain_as_published,
                    retain_forward_rule: match o.retain_handling {
                        RetainHandling::SendAtSubscribe => v5::RetainForwardRule::OnEverySubscribe,
                        RetainHandling::SendIfNew => v5::RetainForwardRule::OnNewSubscribe,
                        RetainHandling::DoNotSend => v5::RetainForwardRule::Never,
                    },
                })
                .collect(),
            properties: some_if(&s.properties, |p| v5::SubscribeProperties {
                id: p
                    .subscription_identifiers
                    .first()
                    .map(|id| id.get() as usize),
                user_properties: users(p),
            }),
        }),
        Packet::SubAck(s) => v5::Packet::SubAck(v5::SubAck {
            pkid: s.packet_id.get(),
            return_codes: s.reasons.iter().map(|&r| suback_reason(r)).collect(),
            properties: ack_properties(&s.properties, |reason_string, user_properties| {
                v5::SubAckProperties {
                    reason_string,
                    user_properties,
                }
            }),
        }),
        Packet::Unsubscribe(u) => v5::Packet::Unsubscribe(v5::Unsubscribe {
            pkid: u.packet_id.get(),
            filters: u.filters.iter().map(|f| f.as_str().to_string()).collect(),
            properties: some_if(&u.properties, |p| v5::UnsubscribeProperties {
                user_properties: users(p),
            }),
        }),
        Packet::UnsubAck(u) => v5::Packet::UnsubAck(v5::UnsubAck {
            pkid: u.packet_id.get(),
            reasons: u.reasons.iter().map(|&r| unsuback_reason(r)).collect(),
            properties: ack_properties(&u.properties, |reason_string, user_properties| {
                v5::UnsubAckProperties {
                    reason_string,
                    user_properties,
                }
            }),
        }),
        Packet::PingReq => v5::Packet::PingReq,
        Packet::PingResp => v5::Packet::PingResp,
        Packet::Disconnect(d) => v5::Packet::Disconnect(v5::Disconnect {
            reason_code: disconnect_reason(d.reason),
            properties: some_if(&d.properties, |p| v5::DisconnectProperties {
                session_expiry_interval: p.session_expiry_interval,
                reason_string: opt_string(&p.reason_string),
                user_properties: users(p),
                server_reference: opt_string(&p.server_reference),
            }),
        }),
        Packet::Auth(_) => unreachable!("mqttbytes has no AUTH"),
    }
}

fn write_v5(packet: &v5::Packet) -> BytesMut {
    let mut buf = BytesMut::new();
    let written = match packet {
        v5::Packet::Connect(p) => p.write(&mut buf),
        v5::Packet::ConnAck(p) => p.write(&mut buf),
        v5::Packet::Publish(p) => p.write(&mut buf),
        v5::Packet::PubAck(p) => p.write(&mut buf),
        v5::Packet::PubRec(p) => p.write(&mut buf),
        v5::Packet::PubRel(p) => p.write(&mut buf),
        v5::Packet::PubComp(p) => p.write(&mut buf),
        v5::Packet::Subscribe(p) => p.write(&mut buf),
        v5::Packet::SubAck(p) => p.write(&mut buf),
        v5::Packet::Unsubscribe(p) => p.write(&mut buf),
        v5::Packet::UnsubAck(p) => p.write(&mut buf),
        v5::Packet::PingReq => v5::PingReq.write(&mut buf),
        v5::Packet::PingResp => v5::PingResp.write(&mut buf),
        v5::Packet::Disconnect(p) => p.write(&mut buf),
    };
    written.expect("mqttbytes encodes");
    buf
}

// mqttbytes' reason enums are `repr(u8)` with the spec's values but no public conversion
// from a byte, hence these tables (the generators only produce codes valid per packet).

fn connack_code(r: ReasonCode) -> v5::ConnectReturnCode {
    use v5::ConnectReturnCode as C;
    match r {
        ReasonCode::Success => C::Success,
        ReasonCode::UnspecifiedError => C::UnspecifiedError,
        ReasonCode::MalformedPacket => C::MalformedPacket,
        ReasonCode::ProtocolError => C::ProtocolError,
        ReasonCode::ImplementationSpecificError => C::ImplementationSpecificError,
        ReasonCode::UnsupportedProtocolVersion => C::UnsupportedProtocolVersion,
        ReasonCode::ClientIdentifierNotValid => C::ClientIdentifierNotValid,
        ReasonCode::BadUserNameOrPassword => C::BadUserNamePassword,
        ReasonCode::NotAuthorized => C::NotAuthorized,
        ReasonCode::ServerUnavailable => C::ServerUnavailable,
        ReasonCode::ServerBusy => C::ServerBusy,
        ReasonCode::Banned => C::Banned,
        ReasonCode::BadAuthenticationMethod => C::BadAuthenticationMethod,
        ReasonCode::TopicNameInvalid => C::TopicNameInvalid,
        ReasonCode::PacketTooLarge => C::PacketTooLarge,
        ReasonCode::QuotaExceeded => C::QuotaExceeded,
        ReasonCode::PayloadFormatInvalid => C::PayloadFormatInvalid,
        ReasonCode::RetainNotSupported => C::RetainNotSupported,
        ReasonCode::QoSNotSupported => C::QoSNotSupported,
        ReasonCode::UseAnotherServer => C::UseAnotherServer,
        ReasonCode::ServerMoved => C::ServerMoved,
        ReasonCode::ConnectionRateExceeded => C::ConnectionRateExceeded,
        other => unreachable!("{other} is not a CONNACK code"),
    }
}

macro_rules! puback_like {
    ($name:ident, $ty:ty) => {
        fn $name(r: ReasonCode) -> $ty {
            type C = $ty;
            match r {
                ReasonCode::Success => C::Success,
                ReasonCode::NoMatchingSubscribers => C::NoMatchingSubscribers,
                ReasonCode::UnspecifiedError => C::UnspecifiedError,
                ReasonCode::ImplementationSpecificError => C::ImplementationSpecificError,
                ReasonCode::NotAuthorized => C::NotAuthorized,
                ReasonCode::TopicNameInvalid => C::TopicNameInvalid,
                ReasonCode::PacketIdentifierInUse => C::PacketIdentifierInUse,
                ReasonCode::QuotaExceeded => C::QuotaExceeded,
                ReasonCode::PayloadFormatInvalid => C::PayloadFormatInvalid,
                other => unreachable!("{other} is not a PUBACK/PUBREC code"),
            }
        }
    };
}
puback_like!(puback_reason, v5::PubAckReason);
puback_like!(pubrec_reason, v5::PubRecReason);

fn suback_reason(r: ReasonCode) -> v5::SubscribeReasonCode {
    use v5::SubscribeReasonCode as C;
    match r {
        ReasonCode::Success => C::QoS0,
        ReasonCode::GrantedQoS1 => C::QoS1,
        ReasonCode::GrantedQoS2 => C::QoS2,
        ReasonCode::UnspecifiedError => C::Unspecified,
        ReasonCode::ImplementationSpecificError => C::ImplementationSpecific,
        ReasonCode::NotAuthorized => C::NotAuthorized,
        ReasonCode::TopicFilterInvalid => C::TopicFilterInvalid,
        ReasonCode::PacketIdentifierInUse => C::PkidInUse,
        ReasonCode::QuotaExceeded => C::QuotaExceeded,
        ReasonCode::SharedSubscriptionsNotSupported => C::SharedSubscriptionsNotSupported,
        ReasonCode::SubscriptionIdentifiersNotSupported => C::SubscriptionIdNotSupported,
        ReasonCode::WildcardSubscriptionsNotSupported => C::WildcardSubscriptionsNotSupported,
        other => unreachable!("{other} is not a SUBACK code"),
    }
}

fn unsuback_reason(r: ReasonCode) -> v5::UnsubAckReason {
    use v5::UnsubAckReason as C;
    match r {
        ReasonCode::Success => C::Success,
        ReasonCode::NoSubscriptionExisted => C::NoSubscriptionExisted,
        ReasonCode::UnspecifiedError => C::UnspecifiedError,
        ReasonCode::ImplementationSpecificError => C::ImplementationSpecificError,
        ReasonCode::NotAuthorized => C::NotAuthorized,
        ReasonCode::TopicFilterInvalid => C::TopicFilterInvalid,
        ReasonCode::PacketIdentifierInUse => C::PacketIdentifierInUse,
        other => unreachable!("{other} is not an UNSUBACK code"),
    }
}

fn disconnect_reason(r: ReasonCode) -> v5::DisconnectReasonCode {
    use v5::DisconnectReasonCode as C;
    match r {
        ReasonCode::Success => C::NormalDisconnection,
        ReasonCode::DisconnectWithWill => C::DisconnectWithWillMessage,
        ReasonCode::UnspecifiedError => C::UnspecifiedError,
        ReasonCode::MalformedPacket => C::MalformedPacket,
        ReasonCode::ProtocolError => C::ProtocolError,
        ReasonCode::ImplementationSpecificError => C::ImplementationSpecificError,
        ReasonCode::NotAuthorized => C::NotAuthorized,
        ReasonCode::ServerBusy => C::ServerBusy,
        ReasonCode::ServerShuttingDown => C::ServerShuttingDown,
        ReasonCode::KeepAliveTimeout => C::KeepAliveTimeout,
        ReasonCode::SessionTakenOver => C::SessionTakenOver,
        ReasonCode::TopicFilterInvalid => C::TopicFilterInvalid,
        ReasonCode::TopicNameInvalid => C::TopicNameInvalid,
        ReasonCode::ReceiveMaximumExceeded => C::ReceiveMaximumExceeded,
        ReasonCode::TopicAliasInvalid => C::TopicAliasInvalid,
        ReasonCode::PacketTooLarge => C::PacketTooLarge,
        ReasonCode::MessageRateTooHigh => C::MessageRateTooHigh,
        ReasonCode::QuotaExceeded => C::QuotaExceeded,
        ReasonCode::AdministrativeAction => C::AdministrativeAction,
        ReasonCode::PayloadFormatInvalid => C::PayloadFormatInvalid,
        ReasonCode::RetainNotSupported => C::RetainNotSupported,
        ReasonCode::QoSNotSupported => C::QoSNotSupported,
        ReasonCode::UseAnotherServer => C::UseAnotherServer,
        ReasonCode::ServerMoved => C::ServerMoved,
        ReasonCode::SharedSubscriptionsNotSupported => C::SharedSubscriptionNotSupported,
        ReasonCode::ConnectionRateExceeded => C::ConnectionRateExceeded,
        ReasonCode::MaximumConnectTime => C::MaximumConnectTime,
        ReasonCode::SubscriptionIdentifiersNotSupported => C::SubscriptionIdentifiersNotSupported,
        ReasonCode::WildcardSubscriptionsNotSupported => C::WildcardSubscriptionsNotSupported,
        other => unreachable!("{other} is not a DISCONNECT code"),
    }
}
