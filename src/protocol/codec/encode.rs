//! Encoding: the first byte of the fixed header, and one body writer per packet type that
//! runs over any [`Sink`]. Run over a [`Counter`](super::primitives::Counter) it measures the
//! body (and does every check), run over a buffer it writes it; the PUBLISH payload is never
//! written here, so it can go out as its own shared `Bytes`.

use super::error::EncodeError;
use super::primitives::Sink;
use super::properties::{self, write_properties, PropertySet};
use super::reason;
use crate::protocol::packet::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, PacketType, Properties, Publish, SubAck,
    Subscribe, UnsubAck, Unsubscribe,
};
use crate::protocol::types::{ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};

/// The first byte of the fixed header: type in the high nibble, then the flags
/// [MQTT-2.2.2-1]; PUBREL, SUBSCRIBE and UNSUBSCRIBE carry 0b0010.
pub(crate) fn first_byte(packet: &Packet) -> u8 {
    let packet_type = packet.packet_type();
    let flags = match packet {
        Packet::Publish(p) => {
            (u8::from(p.dup) << 3) | (p.qos_pid.qos().bits() << 1) | u8::from(p.retain)
        }
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
        _ => 0,
    };
    ((packet_type as u8) << 4) | flags
}

/// Writes everything after the fixed header except a PUBLISH payload, or refuses with the
/// first reason the packet cannot be encoded in `version`.
pub(crate) fn body<S: Sink>(
    packet: &Packet,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(c) => connect(c, version, sink),
        Packet::ConnAck(c) => connack(c, version, sink),
        Packet::Publish(p) => publish(p, version, sink),
        Packet::PubAck(a) => ack(a, PacketType::PubAck, version, sink),
        Packet::PubRec(a) => ack(a, PacketType::PubRec, version, sink),
        Packet::PubRel(a) => ack(a, PacketType::PubRel, version, sink),
        Packet::PubComp(a) => ack(a, PacketType::PubComp, version, sink),
        Packet::Subscribe(s) => subscribe(s, version, sink),
        Packet::SubAck(s) => suback(s, version, sink),
        Packet::Unsubscribe(u) => unsubscribe(u, version, sink),
        Packet::UnsubAck(u) => unsuback(u, version, sink),
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(d) => disconnect(d, version, sink),
        Packet::Auth(a) => auth(a, version, sink),
    }
}

fn connect<S: Sink>(
    c: &Connect,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    if c.protocol != version {
        return Err(EncodeError::ConnectVersionMismatch {
            connect: c.protocol,
            version,
        });
    }
    // [MQTT-3.1.2-22] in 3.1.1: no password without a user name.
    if version == ProtocolVersion::V311 && c.password.is_some() && c.username.is_none() {
        return Err(EncodeError::PasswordWithoutUsername);
    }
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(will) = &c.will {
        flags |= 0x04 | (will.qos.bits() << 3) | (u8::from(will.retain) << 5);
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    sink.put_u16(4);
    sink.put_slice(b"MQTT");
    sink.put_u8(version.level());
    sink.put_u8(flags);
    sink.put_u16(c.keep_alive);
    v5_properties(sink, version, &c.properties, properties::CONNECT)?;
    sink.put_string(&c.client_id);
    if let Some(will) = &c.will {
        v5_properties(sink, version, &will.properties, properties::WILL)?;
        if will.topic.is_empty() {
            return Err(EncodeError::EmptyTopicName {
                field: "will topic",
            });
        }
        sink.put_string(will.topic.as_mqtt_string());
        sink.put_binary("will payload", &will.payload)?;
    }
    if let Some(username) = &c.username {
        sink.put_string(username);
    }
    if let Some(password) = &c.password {
        sink.put_binary("password", password)?;
    }
    Ok(())
}

fn connack<S: Sink>(
    c: &ConnAck,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    let code = reason::check(PacketType::ConnAck, c.reason)?;
    if c.session_present && c.reason.is_error() {
        return Err(EncodeError::SessionPresentWithError { reason: c.reason });
    }
    sink.put_u8(u8::from(c.session_present));
    match version {
        ProtocolVersion::V311 => sink.put_u8(reason::connack_to_v3(c.reason)),
        ProtocolVersion::V5 => {
            sink.put_u8(code);
            // Always present in v5, even when empty (§3.2.2.3.1).
            write_properties(sink, &c.properties, properties::CONNACK)?;
        }
    }
    Ok(())
}

fn publish<S: Sink>(
    p: &Publish,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    if p.dup && p.qos_pid.qos() == QoS::AtMostOnce {
        return Err(EncodeError::DupWithQoS0); // [MQTT-3.3.1-2]
    }
    let aliased = version.is_v5() && p.properties.topic_alias.is_some();
    if p.topic.is_empty() && !aliased {
        return Err(EncodeError::EmptyTopicName {
            field: "topic name",
        });
    }
    sink.put_string(p.topic.as_mqtt_string());
    if let Some(id) = p.qos_pid.packet_id() {
        sink.put_u16(id.get());
    }
    v5_properties(sink, version, &p.properties, properties::PUBLISH)
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP in the shortest form that carries the reason and
/// properties: 2 bytes for Success without properties, 3 for a reason alone.
fn ack<S: Sink>(
    a: &Ack,
    packet_type: PacketType,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    sink.put_u16(a.packet_id.get());
    if version == ProtocolVersion::V311 {
        return Ok(());
    }
    let code = reason::check(packet_type, a.reason)?;
    reason_and_properties(
        sink,
        code,
        &a.properties,
        PropertySet::for_ack(packet_type),
        true,
    )
}

fn subscribe<S: Sink>(
    s: &Subscribe,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    if s.filters.is_empty() {
        return Err(EncodeError::EmptySubscribe); // [MQTT-3.8.3-2]
    }
    sink.put_u16(s.packet_id.get());
    v5_properties(sink, version, &s.properties, properties::SUBSCRIBE)?;
    for (filter, options) in &s.filters {
        sink.put_string(filter.as_mqtt_string());
        sink.put_u8(options_byte(options, version));
    }
    Ok(())
}

fn suback<S: Sink>(s: &SubAck, version: ProtocolVersion, sink: &mut S) -> Result<(), EncodeError> {
    if s.reasons.is_empty() {
        return Err(EncodeError::EmptySubAck);
    }
    sink.put_u16(s.packet_id.get());
    v5_properties(sink, version, &s.properties, properties::SUBACK)?;
    for &reason in &s.reasons {
        let code = reason::check(PacketType::SubAck, reason)?;
        sink.put_u8(match version {
            ProtocolVersion::V311 => reason::suback_to_v3(reason),
            ProtocolVersion::V5 => code,
        });
    }
    Ok(())
}

fn unsubscribe<S: Sink>(
    u: &Unsubscribe,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    if u.filters.is_empty() {
        return Err(EncodeError::EmptyUnsubscribe); // [MQTT-3.10.3-2]
    }
    sink.put_u16(u.packet_id.get());
    v5_properties(sink, version, &u.properties, properties::UNSUBSCRIBE)?;
    for filter in &u.filters {
        sink.put_string(filter.as_mqtt_string());
    }
    Ok(())
}

fn unsuback<S: Sink>(
    u: &UnsubAck,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    sink.put_u16(u.packet_id.get());
    // 3.1.1 UNSUBACK is the packet identifier alone.
    if version == ProtocolVersion::V311 {
        return Ok(());
    }
    if u.reasons.is_empty() {
        return Err(EncodeError::EmptyUnsubAck);
    }
    write_properties(sink, &u.properties, properties::UNSUBACK)?;
    for &reason in &u.reasons {
        sink.put_u8(reason::check(PacketType::UnsubAck, reason)?);
    }
    Ok(())
}

/// `e0 00` for a normal disconnection without properties, as 3.1.1 always writes it.
fn disconnect<S: Sink>(
    d: &Disconnect,
    version: ProtocolVersion,
    sink: &mut S,
) -> Result<(), EncodeError> {
    if version == ProtocolVersion::V311 {
        return Ok(());
    }
    let code = reason::check(PacketType::Disconnect, d.reason)?;
    reason_and_properties(sink, code, &d.properties, properties::DISCONNECT, true)
}

/// Remaining length 0 for Success without properties; otherwise reason code and properties.
fn auth<S: Sink>(a: &Auth, version: ProtocolVersion, sink: &mut S) -> Result<(), EncodeError> {
    if version == ProtocolVersion::V311 {
        return Err(EncodeError::NotInVersion {
            packet_type: PacketType::Auth,
            version,
        });
    }
    let code = reason::check(PacketType::Auth, a.reason)?;
    // AUTH has no reason-only form in the spec, unlike DISCONNECT (§3.15.2.1).
    reason_and_properties(sink, code, &a.properties, properties::AUTH, false)
}

/// The tail shared by the acknowledgements, DISCONNECT and AUTH: nothing when the reason is
/// Success and there are no properties; the reason alone when there are no properties and
/// `reason_only` allows it; otherwise the reason and the properties.
fn reason_and_properties<S: Sink>(
    sink: &mut S,
    code: u8,
    props: &Properties,
    set: PropertySet,
    reason_only: bool,
) -> Result<(), EncodeError> {
    let no_properties = props.is_empty();
    if no_properties && code == ReasonCode::Success.to_u8() {
        return Ok(());
    }
    sink.put_u8(code);
    if no_properties && reason_only {
        return Ok(());
    }
    write_properties(sink, props, set)
}

fn v5_properties<S: Sink>(
    sink: &mut S,
    version: ProtocolVersion,
    props: &Properties,
    set: PropertySet,
) -> Result<(), EncodeError> {
    match version {
        // 3.1.1 has no properties; the fields are ignored (see `packet`).
        ProtocolVersion::V311 => Ok(()),
        ProtocolVersion::V5 => write_properties(sink, props, set),
    }
}

/// The options byte (§3.8.3.1); 3.1.1 has only the QoS bits.
pub(crate) fn options_byte(options: &SubscriptionOptions, version: ProtocolVersion) -> u8 {
    let qos = options.qos.bits();
    match version {
        ProtocolVersion::V311 => qos,
        ProtocolVersion::V5 => {
            qos | (u8::from(options.no_local) << 2)
                | (u8::from(options.retain_as_published) << 3)
                | ((options.retain_handling as u8) << 4)
        }
    }
}
