//! proptest strategies for arbitrary valid packets of either version, and the normalisation
//! that says what a packet looks like after a 3.1.1 round trip (v5-only fields dropped).

use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use super::primitives::MAX_VARINT;
use super::properties::{self as ids, PropertySet};
use super::reason;
use crate::protocol::packet::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, PacketType, Properties, Publish, SubAck,
    Subscribe, UnsubAck, Unsubscribe, Will,
};
use crate::protocol::types::{
    MqttString, PacketId, ProtocolVersion, QoS, QosPid, ReasonCode, RetainHandling,
    SubscriptionOptions, TopicFilter, TopicName,
};

/// Any valid packet of `version`, every packet type equally likely.
pub(crate) fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    let mut choices: Vec<BoxedStrategy<Packet>> = vec![
        connect(version)
            .prop_map(|c| Packet::Connect(Box::new(c)))
            .boxed(),
        connack().prop_map(Packet::ConnAck).boxed(),
        publish(version).prop_map(Packet::Publish).boxed(),
        ack(PacketType::PubAck).prop_map(Packet::PubAck).boxed(),
        ack(PacketType::PubRec).prop_map(Packet::PubRec).boxed(),
        ack(PacketType::PubRel).prop_map(Packet::PubRel).boxed(),
        ack(PacketType::PubComp).prop_map(Packet::PubComp).boxed(),
        subscribe().prop_map(Packet::Subscribe).boxed(),
        suback().prop_map(Packet::SubAck).boxed(),
        unsubscribe().prop_map(Packet::Unsubscribe).boxed(),
        unsuback(v5).prop_map(Packet::UnsubAck).boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect().prop_map(Packet::Disconnect).boxed(),
    ];
    if v5 {
        choices.push(auth().prop_map(Packet::Auth).boxed());
    }
    proptest::strategy::Union::new(choices).boxed()
}

/// What `packet` decodes to after being encoded in `version`: for 3.1.1, properties, ack
/// and DISCONNECT reasons, UNSUBACK reasons and v5 subscription options are not on the
/// wire, CONNACK and SUBACK reasons go through the 3.1.1 code tables.
pub(crate) fn normalize(packet: Packet, version: ProtocolVersion) -> Packet {
    if version.is_v5() {
        return packet;
    }
    let none = Properties::default;
    match packet {
        Packet::Connect(mut c) => {
            c.properties = none();
            if let Some(will) = &mut c.will {
                will.properties = none();
            }
            Packet::Connect(c)
        }
        Packet::ConnAck(c) => Packet::ConnAck(ConnAck {
            reason: reason::connack_from_v3(reason::connack_to_v3(c.reason))
                .unwrap_or(ReasonCode::UnspecifiedError),
            properties: none(),
            ..c
        }),
        Packet::Publish(p) => Packet::Publish(Publish {
            properties: none(),
            ..p
        }),
        Packet::PubAck(a) => Packet::PubAck(Ack::new(a.packet_id)),
        Packet::PubRec(a) => Packet::PubRec(Ack::new(a.packet_id)),
        Packet::PubRel(a) => Packet::PubRel(Ack::new(a.packet_id)),
        Packet::PubComp(a) => Packet::PubComp(Ack::new(a.packet_id)),
        Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            filters: s
                .filters
                .into_iter()
                .map(|(f, o)| (f, SubscriptionOptions::qos(o.qos)))
                .collect(),
            properties: none(),
            ..s
        }),
        Packet::SubAck(s) => Packet::SubAck(SubAck {
            reasons: s
                .reasons
                .into_iter()
                .map(|r| {
                    reason::suback_from_v3(reason::suback_to_v3(r))
                        .unwrap_or(ReasonCode::UnspecifiedError)
                })
                .collect(),
            properties: none(),
            ..s
        }),
        Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            properties: none(),
            ..u
        }),
        Packet::UnsubAck(u) => Packet::UnsubAck(UnsubAck {
            reasons: Vec::new(),
            properties: none(),
            ..u
        }),
        Packet::Disconnect(_) => Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
        other => other,
    }
}

pub(crate) fn mqtt_string() -> impl Strategy<Value = MqttString> {
    "[a-zA-Z0-9 /_é€😀$+#-]{0,10}".prop_map(|s| MqttString::new(&s).expect("no NUL"))
}

pub(crate) fn topic_name() -> impl Strategy<Value = TopicName> {
    "[a-z0-9/é€ $_-]{1,12}".prop_map(|s| TopicName::new(&s).expect("no wildcards"))
}

pub(crate) fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    let level = prop_oneof![
        Just(String::new()),
        Just("+".to_string()),
        "[a-z0-9é$]{1,5}",
    ];
    (vec(level, 1..4), any::<bool>()).prop_map(|(mut levels, hash)| {
        if hash {
            levels.push("#".to_string());
        }
        let text = levels.join("/");
        // A single empty level would be the empty filter, which is not a filter.
        let text = if text.is_empty() { "/" } else { &text };
        TopicFilter::new(text).expect("whole-level wildcards")
    })
}

pub(crate) fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

pub(crate) fn packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|id| PacketId::new(id).expect("non-zero"))
}

pub(crate) fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// A reason code `packet_type` may carry; Success often, as the short forms depend on it.
pub(crate) fn reason_for(packet_type: PacketType) -> impl Strategy<Value = ReasonCode> {
    let any_code = proptest::sample::select(reason::table(packet_type))
        .prop_map(|code| ReasonCode::from_u8(code).expect("table entry"));
    prop_oneof![1 => Just(ReasonCode::Success), 2 => any_code]
}

fn non_zero_u16() -> impl Strategy<Value = NonZeroU16> {
    (1..=u16::MAX).prop_map(|v| NonZeroU16::new(v).expect("non-zero"))
}

fn subscription_id() -> impl Strategy<Value = NonZeroU32> {
    (1..=MAX_VARINT).prop_map(|v| NonZeroU32::new(v).expect("non-zero"))
}

/// Arbitrary properties, then only those `set` allows, with the constraints between them
/// (one subscription identifier outside PUBLISH, authentication data needs a method).
pub(crate) fn properties(set: PropertySet) -> BoxedStrategy<Properties> {
    let message = (
        option::of(any::<bool>()),
        option::of(any::<u32>()),
        option::of(mqtt_string()),
        option::of(topic_name()),
        option::of(binary()),
        vec(subscription_id(), 0..3),
        option::of(non_zero_u16()),
    )
        .boxed();
    let session = (
        option::of(any::<u32>()),
        option::of(mqtt_string()),
        option::of(any::<u16>()),
        option::of(mqtt_string()),
        option::of(binary()),
        option::of(any::<bool>()),
        option::of(any::<u32>()),
        option::of(any::<bool>()),
        option::of(mqtt_string()),
        option::of(mqtt_string()),
        option::of(mqtt_string()),
    )
        .boxed();
    let limits = (
        option::of(non_zero_u16()),
        option::of(any::<u16>()),
        option::of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
        option::of(any::<bool>()),
        vec((mqtt_string(), mqtt_string()), 0..3),
        option::of((1..=u32::MAX).prop_map(|v| NonZeroU32::new(v).expect("non-zero"))),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
    )
        .boxed();
    let any = (message, session, limits).prop_map(move |(m, s, l)| {
        let p = Properties {
            payload_format_indicator: m.0,
            message_expiry_interval: m.1,
            content_type: m.2,
            response_topic: m.3,
            correlation_data: m.4,
            subscription_identifiers: m.5,
            topic_alias: m.6,
            session_expiry_interval: s.0,
            assigned_client_identifier: s.1,
            server_keep_alive: s.2,
            authentication_method: s.3,
            authentication_data: s.4,
            request_problem_information: s.5,
            will_delay_interval: s.6,
            request_response_information: s.7,
            response_information: s.8,
            server_reference: s.9,
            reason_string: s.10,
            receive_maximum: l.0,
            topic_alias_maximum: l.1,
            maximum_qos: l.2,
            retain_available: l.3,
            user_properties: l.4,
            maximum_packet_size: l.5,
            wildcard_subscription_available: l.6,
            subscription_identifier_available: l.7,
            shared_subscription_available: l.8,
        };
        restrict(p, set)
    });
    // No properties at all is the common case, and selects the short forms.
    prop_oneof![1 => Just(Properties::default()), 2 => any].boxed()
}

/// Clears every property `set` does not allow and repairs the cross-property constraints.
pub(crate) fn restrict(mut p: Properties, set: PropertySet) -> Properties {
    fn keep<T>(set: PropertySet, id: u8, field: &mut Option<T>) {
        if !set.allows(id) {
            *field = None;
        }
    }
    keep(
        set,
        ids::PAYLOAD_FORMAT_INDICATOR,
        &mut p.payload_format_indicator,
    );
    keep(
        set,
        ids::MESSAGE_EXPIRY_INTERVAL,
        &mut p.message_expiry_interval,
    );
    keep(set, ids::CONTENT_TYPE, &mut p.content_type);
    keep(set, ids::RESPONSE_TOPIC, &mut p.response_topic);
    keep(set, ids::CORRELATION_DATA, &mut p.correlation_data);
    keep(
        set,
        ids::SESSION_EXPIRY_INTERVAL,
        &mut p.session_expiry_interval,
    );
    keep(
        set,
        ids::ASSIGNED_CLIENT_IDENTIFIER,
        &mut p.assigned_client_identifier,
    );
    keep(set, ids::SERVER_KEEP_ALIVE, &mut p.server_keep_alive);
    keep(
        set,
        ids::AUTHENTICATION_METHOD,
        &mut p.authentication_method,
    );
    keep(set, ids::AUTHENTICATION_DATA, &mut p.authentication_data);
    keep(
        set,
        ids::REQUEST_PROBLEM_INFORMATION,
        &mut p.request_problem_information,
    );
    keep(set, ids::WILL_DELAY_INTERVAL, &mut p.will_delay_interval);
    keep(
        set,
        ids::REQUEST_RESPONSE_INFORMATION,
        &mut p.request_response_information,
    );
    keep(set, ids::RESPONSE_INFORMATION, &mut p.response_information);
    keep(set, ids::SERVER_REFERENCE, &mut p.server_reference);
    keep(set, ids::REASON_STRING, &mut p.reason_string);
    keep(set, ids::RECEIVE_MAXIMUM, &mut p.receive_maximum);
    keep(set, ids::TOPIC_ALIAS_MAXIMUM, &mut p.topic_alias_maximum);
    keep(set, ids::TOPIC_ALIAS, &mut p.topic_alias);
    keep(set, ids::MAXIMUM_QOS, &mut p.maximum_qos);
    keep(set, ids::RETAIN_AVAILABLE, &mut p.retain_available);
    keep(set, ids::MAXIMUM_PACKET_SIZE, &mut p.maximum_packet_size);
    keep(
        set,
        ids::WILDCARD_SUBSCRIPTION_AVAILABLE,
        &mut p.wildcard_subscription_available,
    );
    keep(
        set,
        ids::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        &mut p.subscription_identifier_available,
    );
    keep(
        set,
        ids::SHARED_SUBSCRIPTION_AVAILABLE,
        &mut p.shared_subscription_available,
    );
    if !set.allows(ids::USER_PROPERTY) {
        p.user_properties.clear();
    }
    if !set.allows(ids::SUBSCRIPTION_IDENTIFIER) {
        p.subscription_identifiers.clear();
    } else if set.packet_type != PacketType::Publish {
        p.subscription_identifiers.truncate(1);
    }
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        p.authentication_method = Some(MqttString::from_static("SCRAM-SHA-256"));
    }
    p
}

pub(crate) fn subscription_options() -> impl Strategy<Value = SubscriptionOptions> {
    let retain_handling = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend),
    ];
    (qos(), any::<bool>(), any::<bool>(), retain_handling).prop_map(|(qos, nl, rap, rh)| {
        SubscriptionOptions {
            qos,
            no_local: nl,
            retain_as_published: rap,
            retain_handling: rh,
        }
    })
}

pub(crate) fn connect(version: ProtocolVersion) -> impl Strategy<Value = Connect> {
    let will = (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        properties(ids::WILL),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    (
        any::<bool>(),
        any::<u16>(),
        mqtt_string(),
        option::of(will),
        option::of(mqtt_string()),
        option::of(binary()),
        properties(ids::CONNECT),
    )
        .prop_map(
            move |(
                clean_start,
                keep_alive,
                client_id,
                will,
                mut username,
                password,
                properties,
            )| {
                // 3.1.1 has no password without a user name [MQTT-3.1.2-22].
                if version == ProtocolVersion::V311 && password.is_some() && username.is_none() {
                    username = Some(MqttString::from_static("user"));
                }
                Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }
            },
        )
}

pub(crate) fn connack() -> impl Strategy<Value = ConnAck> {
    (
        any::<bool>(),
        reason_for(PacketType::ConnAck),
        properties(ids::CONNACK),
    )
        .prop_map(|(session_present, reason, properties)| ConnAck {
            // Session present only with success [MQTT-3.2.2-6].
            session_present: session_present && !reason.is_error(),
            reason,
            properties,
        })
}

pub(crate) fn publish(version: ProtocolVersion) -> impl Strategy<Value = Publish> {
    let qos_pid = prop_oneof![
        Just(QosPid::AtMostOnce),
        packet_id().prop_map(QosPid::AtLeastOnce),
        packet_id().prop_map(QosPid::ExactlyOnce),
    ];
    (
        any::<bool>(),
        qos_pid,
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        vec(any::<u8>(), 0..48).prop_map(Bytes::from),
        properties(ids::PUBLISH),
    )
        .prop_map(
            move |(dup, qos_pid, retain, topic, empty, payload, properties)| {
                // The empty topic exists only in v5, and only next to a topic alias.
                let aliased = version.is_v5() && properties.topic_alias.is_some();
                Publish {
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
                }
            },
        )
}

pub(crate) fn ack(packet_type: PacketType) -> impl Strategy<Value = Ack> {
    (
        packet_id(),
        reason_for(packet_type),
        properties(PropertySet::for_ack(packet_type)),
    )
        .prop_map(|(packet_id, reason, properties)| Ack {
            packet_id,
            reason,
            properties,
        })
}

pub(crate) fn subscribe() -> impl Strategy<Value = Subscribe> {
    (
        packet_id(),
        vec((topic_filter(), subscription_options()), 1..4),
        properties(ids::SUBSCRIBE),
    )
        .prop_map(|(packet_id, filters, properties)| Subscribe {
            packet_id,
            filters,
            properties,
        })
}

pub(crate) fn suback() -> impl Strategy<Value = SubAck> {
    (
        packet_id(),
        vec(reason_for(PacketType::SubAck), 1..5),
        properties(ids::SUBACK),
    )
        .prop_map(|(packet_id, reasons, properties)| SubAck {
            packet_id,
            reasons,
            properties,
        })
}

pub(crate) fn unsubscribe() -> impl Strategy<Value = Unsubscribe> {
    (
        packet_id(),
        vec(topic_filter(), 1..4),
        properties(ids::UNSUBSCRIBE),
    )
        .prop_map(|(packet_id, filters, properties)| Unsubscribe {
            packet_id,
            filters,
            properties,
        })
}

/// `v5`: UNSUBACK carries at least one reason; 3.1.1 ignores them, so any number goes.
pub(crate) fn unsuback(v5: bool) -> impl Strategy<Value = UnsubAck> {
    let min = usize::from(v5);
    (
        packet_id(),
        vec(reason_for(PacketType::UnsubAck), min..5),
        properties(ids::UNSUBACK),
    )
        .prop_map(|(packet_id, reasons, properties)| UnsubAck {
            packet_id,
            reasons,
            properties,
        })
}

pub(crate) fn disconnect() -> impl Strategy<Value = Disconnect> {
    (
        reason_for(PacketType::Disconnect),
        properties(ids::DISCONNECT),
    )
        .prop_map(|(reason, properties)| Disconnect { reason, properties })
}

pub(crate) fn auth() -> impl Strategy<Value = Auth> {
    (reason_for(PacketType::Auth), properties(ids::AUTH))
        .prop_map(|(reason, properties)| Auth { reason, properties })
}
