//! Field-by-field mapping of twinmq packets onto mqttbytes 0.6's types, and writing those
//! with mqttbytes' own encoders.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::BytesMut;
use mqttbytes::{v4, v5};

use twinmq::protocol::{
    Connect, MqttString, Packet, PacketId, Properties, Publish, QoS, ReasonCode, RetainHandling,
};

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

pub fn to_v4(packet: &Packet) -> v4::Packet {
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

pub fn write_v4(packet: &v4::Packet) -> BytesMut {
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

pub fn to_v5(packet: &Packet) -> v5::Packet {
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

pub fn write_v5(packet: &v5::Packet) -> BytesMut {
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
