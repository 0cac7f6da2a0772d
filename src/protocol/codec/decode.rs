//! Decoding: the first byte of the fixed header, then one body decoder per packet type. Each
//! body decoder gets a [`Reader`] over exactly the remaining length; the caller checks that
//! it was consumed to the last byte.

use super::error::DecodeError;
use super::primitives::Reader;
use super::properties::{self, decode_properties, PropertySet};
use super::reason;
use crate::protocol::packet::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, PacketType, Properties, Publish, SubAck,
    Subscribe, UnsubAck, Unsubscribe, Will,
};
use crate::protocol::types::{
    MqttString, PacketId, ProtocolVersion, QoS, QosPid, ReasonCode, RetainHandling, StringError,
    SubscriptionOptions, TopicFilter, TopicName,
};

/// Checks the first byte of the fixed header: a known type, allowed in `version` (`None`:
/// only CONNECT may come first [MQTT-3.1.0-1]), with the flags that type requires
/// [MQTT-2.2.2-1, MQTT-2.2.2-2]. Returns the type and the flags nibble.
pub(crate) fn first_byte(
    byte: u8,
    version: Option<ProtocolVersion>,
) -> Result<(PacketType, u8), DecodeError> {
    let flags = byte & 0x0F;
    let packet_type = PacketType::from_nibble(byte >> 4).ok_or(DecodeError::ReservedPacketType)?;
    match version {
        None if packet_type != PacketType::Connect => {
            return Err(DecodeError::ExpectedConnect { packet_type })
        }
        Some(ProtocolVersion::V311) if packet_type == PacketType::Auth => {
            return Err(DecodeError::PacketTypeNotInVersion {
                packet_type,
                version: ProtocolVersion::V311,
            })
        }
        _ => {}
    }
    let valid = match packet_type {
        PacketType::Publish => {
            let qos = QoS::from_bits((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS {
                field: "PUBLISH fixed header",
            })?;
            // [MQTT-3.3.1-2]: DUP must be 0 for QoS 0.
            if flags & 0b1000 != 0 && qos == QoS::AtMostOnce {
                return Err(DecodeError::DupWithQoS0);
            }
            true
        }
        PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => flags == 0b0010,
        _ => flags == 0,
    };
    if valid {
        Ok((packet_type, flags))
    } else {
        Err(DecodeError::InvalidFlags { packet_type, flags })
    }
}

/// Decodes a CONNECT body; its protocol level decides the version.
pub(crate) fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary("protocol name")?;
    let level = r.u8("protocol level")?;
    let protocol = match (name.as_ref(), level) {
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        // MQTT 3.1 ("MQIsdp", level 3) and unknown levels get CONNACK 0x84 / return code 1
        // [MQTT-3.1.2-2].
        (b"MQTT" | b"MQIsdp", _) => return Err(DecodeError::UnsupportedProtocolVersion { level }),
        _ => return Err(DecodeError::InvalidProtocolName { name }),
    };
    let flags = r.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ReservedConnectFlag); // [MQTT-3.1.2-3]
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos_bits = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    // [MQTT-3.1.2-11, -13, -15]: without a will, will QoS and will retain are 0.
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        return Err(DecodeError::WillFlagsWithoutWill { flags });
    }
    let will_qos =
        QoS::from_bits(will_qos_bits).ok_or(DecodeError::InvalidQoS { field: "will" })?;
    // [MQTT-3.1.2-22] in 3.1.1; MQTT 5 allows a password without a user name.
    if protocol == ProtocolVersion::V311 && password_flag && !username_flag {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16("keep alive")?;
    let properties = v5_properties(r, protocol, properties::CONNECT)?;
    // May be empty; whether that is acceptable is the connection's decision.
    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let properties = v5_properties(r, protocol, properties::WILL)?;
        let topic = topic_name(r.string("will topic")?, "will topic")?;
        let payload = r.binary("will payload")?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = optional(username_flag, || r.string("user name"))?;
    // Binary data, so any bytes are a valid password [MQTT-3.1.3.5].
    let password = optional(password_flag, || r.binary("password"))?;
    Ok(Connect {
        protocol,
        clean_start: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// Decodes the body of any packet but CONNECT, in the connection's `version`.
pub(crate) fn packet(
    packet_type: PacketType,
    flags: u8,
    version: ProtocolVersion,
    r: &mut Reader,
) -> Result<Packet, DecodeError> {
    Ok(match packet_type {
        PacketType::Connect => Packet::Connect(Box::new(connect(r)?)),
        PacketType::ConnAck => Packet::ConnAck(connack(r, version)?),
        PacketType::Publish => Packet::Publish(publish(r, flags, version)?),
        PacketType::PubAck => Packet::PubAck(ack(r, packet_type, version)?),
        PacketType::PubRec => Packet::PubRec(ack(r, packet_type, version)?),
        PacketType::PubRel => Packet::PubRel(ack(r, packet_type, version)?),
        PacketType::PubComp => Packet::PubComp(ack(r, packet_type, version)?),
        PacketType::Subscribe => Packet::Subscribe(subscribe(r, version)?),
        PacketType::SubAck => Packet::SubAck(suback(r, version)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(unsubscribe(r, version)?),
        PacketType::UnsubAck => Packet::UnsubAck(unsuback(r, version)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect(disconnect(r, version)?),
        PacketType::Auth => Packet::Auth(auth(r)?),
    })
}

fn connack(r: &mut Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("CONNACK flags")?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::ReservedConnAckFlags { flags });
    }
    let code = r.u8("CONNACK reason code")?;
    let reason = match version {
        ProtocolVersion::V311 => reason::connack_from_v3(code)?,
        ProtocolVersion::V5 => reason::decode(PacketType::ConnAck, code)?,
    };
    let session_present = flags & 0x01 != 0;
    // [MQTT-3.2.2-6] (v5), [MQTT-3.2.2-4] (3.1.1).
    if session_present && reason.is_error() {
        return Err(DecodeError::SessionPresentWithError { reason });
    }
    // The property length is mandatory in v5, even when zero. mqttbytes 0.6 omits it when
    // there are no properties; such a CONNACK is malformed and we reject it.
    let properties = v5_properties(r, version, properties::CONNACK)?;
    Ok(ConnAck {
        session_present,
        reason,
        properties,
    })
}

fn publish(r: &mut Reader, flags: u8, version: ProtocolVersion) -> Result<Publish, DecodeError> {
    // first_byte() already refused QoS 3.
    let qos = QoS::from_bits((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS {
        field: "PUBLISH fixed header",
    })?;
    let raw_topic = r.string("topic name")?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        _ => Some(packet_id(r, PacketType::Publish)?),
    };
    let qos_pid = QosPid::from_parts(qos, packet_id).ok_or(DecodeError::ZeroPacketId {
        packet_type: PacketType::Publish,
    })?;
    let properties = v5_properties(r, version, properties::PUBLISH)?;
    let topic = if raw_topic.is_empty() {
        match version {
            ProtocolVersion::V311 => {
                return Err(DecodeError::EmptyTopicName {
                    field: "topic name",
                })
            }
            // An empty topic only stands for the one a topic alias maps [MQTT-3.3.2-1].
            ProtocolVersion::V5 if properties.topic_alias.is_some() => TopicName::empty_for_alias(),
            ProtocolVersion::V5 => return Err(DecodeError::EmptyTopicWithoutAlias),
        }
    } else {
        topic_name(raw_topic, "topic name")?
    };
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos_pid,
        retain: flags & 0b0001 != 0,
        topic,
        payload: r.rest(),
        properties,
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. In v5 the reason code is absent when the remaining
/// length is 2 (Success) and the property length when it is 3 (§3.4.2.1, §3.4.2.2.1).
fn ack(
    r: &mut Reader,
    packet_type: PacketType,
    version: ProtocolVersion,
) -> Result<Ack, DecodeError> {
    let packet_id = packet_id(r, packet_type)?;
    if version == ProtocolVersion::V311 || r.is_empty() {
        return Ok(Ack::new(packet_id));
    }
    let reason = reason::decode(packet_type, r.u8("reason code")?)?;
    let properties = short_form_properties(r, PropertySet::for_ack(packet_type))?;
    Ok(Ack {
        packet_id,
        reason,
        properties,
    })
}

fn subscribe(r: &mut Reader, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r, PacketType::Subscribe)?;
    let properties = v5_properties(r, version, properties::SUBSCRIBE)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = topic_filter(r)?;
        let options = subscription_options(r.u8("subscription options")?, version)?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        // [MQTT-3.8.3-2]
        return Err(DecodeError::NoTopicFilters {
            packet_type: PacketType::Subscribe,
        });
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn suback(r: &mut Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r, PacketType::SubAck)?;
    let properties = v5_properties(r, version, properties::SUBACK)?;
    let mut reasons = Vec::new();
    while !r.is_empty() {
        let code = r.u8("SUBACK reason code")?;
        reasons.push(match version {
            ProtocolVersion::V311 => reason::suback_from_v3(code)?,
            ProtocolVersion::V5 => reason::decode(PacketType::SubAck, code)?,
        });
    }
    // One reason per filter, and a SUBSCRIBE has at least one [MQTT-3.9.3-1].
    if reasons.is_empty() {
        return Err(DecodeError::NoReasonCodes {
            packet_type: PacketType::SubAck,
        });
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

fn unsubscribe(r: &mut Reader, version: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r, PacketType::Unsubscribe)?;
    let properties = v5_properties(r, version, properties::UNSUBSCRIBE)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(topic_filter(r)?);
    }
    if filters.is_empty() {
        // [MQTT-3.10.3-2]
        return Err(DecodeError::NoTopicFilters {
            packet_type: PacketType::Unsubscribe,
        });
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn unsuback(r: &mut Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r, PacketType::UnsubAck)?;
    let mut unsuback = UnsubAck {
        packet_id,
        reasons: Vec::new(),
        properties: Properties::default(),
    };
    // 3.1.1 UNSUBACK is the packet identifier alone.
    if version == ProtocolVersion::V311 {
        return Ok(unsuback);
    }
    unsuback.properties = decode_properties(r, properties::UNSUBACK)?;
    while !r.is_empty() {
        let code = r.u8("UNSUBACK reason code")?;
        unsuback
            .reasons
            .push(reason::decode(PacketType::UnsubAck, code)?);
    }
    // One reason per filter [MQTT-3.11.3-1], and an UNSUBSCRIBE has at least one.
    if unsuback.reasons.is_empty() {
        return Err(DecodeError::NoReasonCodes {
            packet_type: PacketType::UnsubAck,
        });
    }
    Ok(unsuback)
}

/// In v5 a remaining length of 0 is a normal disconnection and 1 a reason without
/// properties (§3.14.2.1, §3.14.2.2.1). 3.1.1 DISCONNECT has no body.
fn disconnect(r: &mut Reader, version: ProtocolVersion) -> Result<Disconnect, DecodeError> {
    if version == ProtocolVersion::V311 || r.is_empty() {
        return Ok(Disconnect::new(ReasonCode::Success));
    }
    let reason = reason::decode(PacketType::Disconnect, r.u8("DISCONNECT reason code")?)?;
    let properties = short_form_properties(r, properties::DISCONNECT)?;
    Ok(Disconnect { reason, properties })
}

/// A remaining length of 0 is Success without properties (§3.15.2.1). The spec does not
/// mention a remaining length of 1; it is unambiguous, so it is read like DISCONNECT's.
fn auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    if r.is_empty() {
        return Ok(Auth {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        });
    }
    let reason = reason::decode(PacketType::Auth, r.u8("AUTH reason code")?)?;
    let properties = short_form_properties(r, properties::AUTH)?;
    Ok(Auth { reason, properties })
}

fn v5_properties(
    r: &mut Reader,
    version: ProtocolVersion,
    set: PropertySet,
) -> Result<Properties, DecodeError> {
    match version {
        ProtocolVersion::V311 => Ok(Properties::default()),
        ProtocolVersion::V5 => decode_properties(r, set),
    }
}

/// Properties after a reason code, where the packet may end before the property length.
fn short_form_properties(r: &mut Reader, set: PropertySet) -> Result<Properties, DecodeError> {
    if r.is_empty() {
        Ok(Properties::default())
    } else {
        decode_properties(r, set)
    }
}

fn packet_id(r: &mut Reader, packet_type: PacketType) -> Result<PacketId, DecodeError> {
    PacketId::new(r.u16("packet identifier")?).ok_or(DecodeError::ZeroPacketId { packet_type })
}

/// A non-empty topic name without wildcards [MQTT-3.3.2-2, MQTT-4.7.3-1].
fn topic_name(s: MqttString, field: &'static str) -> Result<TopicName, DecodeError> {
    TopicName::from_string(s).map_err(|error| match error {
        StringError::EmptyTopic => DecodeError::EmptyTopicName { field },
        error => DecodeError::InvalidTopicName { field, error },
    })
}

fn topic_filter(r: &mut Reader) -> Result<TopicFilter, DecodeError> {
    TopicFilter::from_string(r.string("topic filter")?)
        .map_err(|error| DecodeError::InvalidTopicFilter { error })
}

/// The options byte of a SUBSCRIBE entry (§3.8.3.1). Reserved bits must be 0
/// [MQTT-3.8.3-5] (3.1.1: bits 2-7 [MQTT-3-8.3-4]).
pub(crate) fn subscription_options(
    options: u8,
    version: ProtocolVersion,
) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = match version {
        ProtocolVersion::V311 => 0b1111_1100,
        ProtocolVersion::V5 => 0b1100_0000,
    };
    if options & reserved != 0 {
        return Err(DecodeError::ReservedSubscriptionBits { options });
    }
    let qos = QoS::from_bits(options & 0b11).ok_or(DecodeError::InvalidQoS {
        field: "subscription options",
    })?;
    let retain_handling = RetainHandling::from_bits((options >> 4) & 0b11)
        .ok_or(DecodeError::InvalidRetainHandling { options })?;
    Ok(SubscriptionOptions {
        qos,
        no_local: options & 0b0100 != 0,
        retain_as_published: options & 0b1000 != 0,
        retain_handling,
    })
}

fn optional<T>(
    present: bool,
    read: impl FnOnce() -> Result<T, DecodeError>,
) -> Result<Option<T>, DecodeError> {
    if present {
        read().map(Some)
    } else {
        Ok(None)
    }
}
