//! MQTT 5 properties (§2.2.2): the property length, then identifier/value pairs. Each packet
//! type allows its own subset; the same tables drive decoding (reject) and encoding (refuse),
//! so a packet that encodes always decodes.

use std::num::{NonZeroU16, NonZeroU32};

use super::error::{DecodeError, EncodeError};
use super::primitives::{Counter, Reader, Sink, MAX_VARINT};
use crate::protocol::packet::{PacketType, Properties};
use crate::protocol::types::{QoS, StringError, TopicName};

pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// Which properties one packet type (or the will) may carry (§2.2.2.2 table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PropertySet {
    pub(crate) name: &'static str,
    pub(crate) packet_type: PacketType,
    allowed: u64,
    /// PUBLISH may carry several subscription identifiers [MQTT-3.3.4-3]; SUBSCRIBE one.
    many_subscription_ids: bool,
    /// CONNECT and AUTH: authentication data needs a method (§3.1.2.11.10, §3.15.2.2.3).
    data_needs_method: bool,
}

impl PropertySet {
    const fn new(name: &'static str, packet_type: PacketType, ids: &[u8]) -> PropertySet {
        let mut allowed = 0u64;
        let mut rest = ids;
        while let [id, tail @ ..] = rest {
            allowed |= 1 << *id;
            rest = tail;
        }
        PropertySet {
            name,
            packet_type,
            allowed,
            many_subscription_ids: false,
            data_needs_method: false,
        }
    }

    pub(crate) fn allows(self, id: u8) -> bool {
        id < 64 && self.allowed & (1 << id) != 0
    }

    /// The set for the acknowledgement-shaped packets (reason string, user properties).
    pub(crate) fn for_ack(packet_type: PacketType) -> PropertySet {
        match packet_type {
            PacketType::PubAck => PUBACK,
            PacketType::PubRec => PUBREC,
            PacketType::PubRel => PUBREL,
            PacketType::PubComp => PUBCOMP,
            PacketType::SubAck => SUBACK,
            _ => UNSUBACK,
        }
    }
}

const ACK_IDS: &[u8] = &[REASON_STRING, USER_PROPERTY];

pub(crate) const CONNECT: PropertySet = PropertySet {
    data_needs_method: true,
    ..PropertySet::new(
        "CONNECT",
        PacketType::Connect,
        &[
            SESSION_EXPIRY_INTERVAL,
            RECEIVE_MAXIMUM,
            MAXIMUM_PACKET_SIZE,
            TOPIC_ALIAS_MAXIMUM,
            REQUEST_RESPONSE_INFORMATION,
            REQUEST_PROBLEM_INFORMATION,
            USER_PROPERTY,
            AUTHENTICATION_METHOD,
            AUTHENTICATION_DATA,
        ],
    )
};
pub(crate) const WILL: PropertySet = PropertySet::new(
    "will properties",
    PacketType::Connect,
    &[
        WILL_DELAY_INTERVAL,
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        CONTENT_TYPE,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        USER_PROPERTY,
    ],
);
pub(crate) const CONNACK: PropertySet = PropertySet::new(
    "CONNACK",
    PacketType::ConnAck,
    &[
        SESSION_EXPIRY_INTERVAL,
        RECEIVE_MAXIMUM,
        MAXIMUM_QOS,
        RETAIN_AVAILABLE,
        MAXIMUM_PACKET_SIZE,
        ASSIGNED_CLIENT_IDENTIFIER,
        TOPIC_ALIAS_MAXIMUM,
        REASON_STRING,
        USER_PROPERTY,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        SHARED_SUBSCRIPTION_AVAILABLE,
        SERVER_KEEP_ALIVE,
        RESPONSE_INFORMATION,
        SERVER_REFERENCE,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
    ],
);
pub(crate) const PUBLISH: PropertySet = PropertySet {
    many_subscription_ids: true,
    ..PropertySet::new(
        "PUBLISH",
        PacketType::Publish,
        &[
            PAYLOAD_FORMAT_INDICATOR,
            MESSAGE_EXPIRY_INTERVAL,
            TOPIC_ALIAS,
            RESPONSE_TOPIC,
            CORRELATION_DATA,
            USER_PROPERTY,
            SUBSCRIPTION_IDENTIFIER,
            CONTENT_TYPE,
        ],
    )
};
pub(crate) const PUBACK: PropertySet = PropertySet::new("PUBACK", PacketType::PubAck, ACK_IDS);
pub(crate) const PUBREC: PropertySet = PropertySet::new("PUBREC", PacketType::PubRec, ACK_IDS);
pub(crate) const PUBREL: PropertySet = PropertySet::new("PUBREL", PacketType::PubRel, ACK_IDS);
pub(crate) const PUBCOMP: PropertySet = PropertySet::new("PUBCOMP", PacketType::PubComp, ACK_IDS);
pub(crate) const SUBACK: PropertySet = PropertySet::new("SUBACK", PacketType::SubAck, ACK_IDS);
pub(crate) const UNSUBACK: PropertySet =
    PropertySet::new("UNSUBACK", PacketType::UnsubAck, ACK_IDS);
pub(crate) const SUBSCRIBE: PropertySet = PropertySet::new(
    "SUBSCRIBE",
    PacketType::Subscribe,
    &[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY],
);
pub(crate) const UNSUBSCRIBE: PropertySet =
    PropertySet::new("UNSUBSCRIBE", PacketType::Unsubscribe, &[USER_PROPERTY]);
pub(crate) const DISCONNECT: PropertySet = PropertySet::new(
    "DISCONNECT",
    PacketType::Disconnect,
    &[
        SESSION_EXPIRY_INTERVAL,
        REASON_STRING,
        USER_PROPERTY,
        SERVER_REFERENCE,
    ],
);
pub(crate) const AUTH: PropertySet = PropertySet {
    data_needs_method: true,
    ..PropertySet::new(
        "AUTH",
        PacketType::Auth,
        &[
            AUTHENTICATION_METHOD,
            AUTHENTICATION_DATA,
            REASON_STRING,
            USER_PROPERTY,
        ],
    )
};

/// Every identifier this version of the spec defines.
const KNOWN: PropertySet = PropertySet::new(
    "any packet",
    PacketType::Connect,
    &[
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        CONTENT_TYPE,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        SUBSCRIPTION_IDENTIFIER,
        SESSION_EXPIRY_INTERVAL,
        ASSIGNED_CLIENT_IDENTIFIER,
        SERVER_KEEP_ALIVE,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
        REQUEST_PROBLEM_INFORMATION,
        WILL_DELAY_INTERVAL,
        REQUEST_RESPONSE_INFORMATION,
        RESPONSE_INFORMATION,
        SERVER_REFERENCE,
        REASON_STRING,
        RECEIVE_MAXIMUM,
        TOPIC_ALIAS_MAXIMUM,
        TOPIC_ALIAS,
        MAXIMUM_QOS,
        RETAIN_AVAILABLE,
        USER_PROPERTY,
        MAXIMUM_PACKET_SIZE,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        SHARED_SUBSCRIPTION_AVAILABLE,
    ],
);

/// Reads the property length and the properties it covers.
pub(crate) fn decode_properties(
    r: &mut Reader,
    set: PropertySet,
) -> Result<Properties, DecodeError> {
    let length = r.varint("property length")?;
    let available = r.len();
    let section = usize::try_from(length)
        .ok()
        .filter(|&len| len <= available)
        .ok_or(DecodeError::PropertyLengthOverrun { length, available })?;
    let mut r = Reader::new(r.take(section, "properties")?);
    let mut props = Properties::default();
    let mut seen = 0u64;
    while !r.is_empty() {
        // The identifier is a variable byte integer; every defined one fits in a byte.
        let raw = r.varint("property identifier")?;
        let id = u8::try_from(raw)
            .ok()
            .filter(|&id| KNOWN.allows(id))
            .ok_or(DecodeError::UnknownProperty { id: raw })?;
        if !set.allows(id) {
            return Err(DecodeError::PropertyNotAllowed {
                context: set.name,
                id,
            });
        }
        let repeatable =
            id == USER_PROPERTY || (id == SUBSCRIPTION_IDENTIFIER && set.many_subscription_ids);
        if !repeatable && seen & (1 << id) != 0 {
            return Err(DecodeError::DuplicateProperty { id });
        }
        seen |= 1 << id;
        read_value(&mut r, id, &mut props)?;
    }
    if set.data_needs_method
        && props.authentication_data.is_some()
        && props.authentication_method.is_none()
    {
        return Err(DecodeError::AuthenticationDataWithoutMethod);
    }
    Ok(props)
}

/// Writes the property length and the properties, refusing any the set does not allow.
pub(crate) fn write_properties<S: Sink>(
    sink: &mut S,
    props: &Properties,
    set: PropertySet,
) -> Result<(), EncodeError> {
    let mut counter = Counter::default();
    write_list(&mut counter, props, set)?;
    let length = u32::try_from(counter.0)
        .ok()
        .filter(|&len| len <= MAX_VARINT)
        .ok_or(EncodeError::RemainingLengthTooLarge {
            packet_type: set.packet_type,
            remaining_length: counter.0,
        })?;
    sink.put_varint(length);
    write_list(sink, props, set)
}

fn flag(id: u8, value: u8) -> Result<bool, DecodeError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue {
            id,
            value: u32::from(value),
        }),
    }
}

fn zero(id: u8) -> DecodeError {
    DecodeError::InvalidPropertyValue { id, value: 0 }
}

fn read_value(r: &mut Reader, id: u8, p: &mut Properties) -> Result<(), DecodeError> {
    match id {
        PAYLOAD_FORMAT_INDICATOR => {
            p.payload_format_indicator = Some(flag(id, r.u8("payload format indicator")?)?)
        }
        MESSAGE_EXPIRY_INTERVAL => {
            p.message_expiry_interval = Some(r.u32("message expiry interval")?)
        }
        CONTENT_TYPE => p.content_type = Some(r.string("content type")?),
        RESPONSE_TOPIC => {
            let field = "response topic";
            // [MQTT-3.3.2-14]: a topic name, so no wildcards and not empty.
            let topic = TopicName::from_string(r.string(field)?).map_err(|error| match error {
                StringError::EmptyTopic => DecodeError::EmptyTopicName { field },
                error => DecodeError::InvalidTopicName { field, error },
            })?;
            p.response_topic = Some(topic);
        }
        CORRELATION_DATA => p.correlation_data = Some(r.binary("correlation data")?),
        SUBSCRIPTION_IDENTIFIER => {
            let value = r.varint("subscription identifier")?;
            p.subscription_identifiers
                .push(NonZeroU32::new(value).ok_or(zero(id))?);
        }
        SESSION_EXPIRY_INTERVAL => {
            p.session_expiry_interval = Some(r.u32("session expiry interval")?)
        }
        ASSIGNED_CLIENT_IDENTIFIER => {
            p.assigned_client_identifier = Some(r.string("assigned client identifier")?)
        }
        SERVER_KEEP_ALIVE => p.server_keep_alive = Some(r.u16("server keep alive")?),
        AUTHENTICATION_METHOD => p.authentication_method = Some(r.string("authentication method")?),
        AUTHENTICATION_DATA => p.authentication_data = Some(r.binary("authentication data")?),
        REQUEST_PROBLEM_INFORMATION => {
            p.request_problem_information = Some(flag(id, r.u8("request problem information")?)?)
        }
        WILL_DELAY_INTERVAL => p.will_delay_interval = Some(r.u32("will delay interval")?),
        REQUEST_RESPONSE_INFORMATION => {
            p.request_response_information = Some(flag(id, r.u8("request response information")?)?)
        }
        RESPONSE_INFORMATION => p.response_information = Some(r.string("response information")?),
        SERVER_REFERENCE => p.server_reference = Some(r.string("server reference")?),
        REASON_STRING => p.reason_string = Some(r.string("reason string")?),
        RECEIVE_MAXIMUM => {
            p.receive_maximum = Some(NonZeroU16::new(r.u16("receive maximum")?).ok_or(zero(id))?)
        }
        TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = Some(r.u16("topic alias maximum")?),
        TOPIC_ALIAS => {
            // [MQTT-3.3.2-8]: 0 is not a topic alias; the receiver answers 0x94.
            let alias =
                NonZeroU16::new(r.u16("topic alias")?).ok_or(DecodeError::TopicAliasZero)?;
            p.topic_alias = Some(alias);
        }
        MAXIMUM_QOS => {
            let value = r.u8("maximum QoS")?;
            p.maximum_qos = Some(if flag(id, value)? {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            });
        }
        RETAIN_AVAILABLE => p.retain_available = Some(flag(id, r.u8("retain available")?)?),
        USER_PROPERTY => {
            let key = r.string("user property name")?;
            let value = r.string("user property value")?;
            p.user_properties.push((key, value));
        }
        MAXIMUM_PACKET_SIZE => {
            p.maximum_packet_size =
                Some(NonZeroU32::new(r.u32("maximum packet size")?).ok_or(zero(id))?)
        }
        WILDCARD_SUBSCRIPTION_AVAILABLE => {
            p.wildcard_subscription_available =
                Some(flag(id, r.u8("wildcard subscription available")?)?)
        }
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
            p.subscription_identifier_available =
                Some(flag(id, r.u8("subscription identifier available")?)?)
        }
        SHARED_SUBSCRIPTION_AVAILABLE => {
            p.shared_subscription_available =
                Some(flag(id, r.u8("shared subscription available")?)?)
        }
        // The caller only passes identifiers in KNOWN.
        _ => return Err(DecodeError::UnknownProperty { id: u32::from(id) }),
    }
    Ok(())
}

/// Writes each present property as identifier + value, in identifier order.
struct ListWriter<'a, S> {
    sink: &'a mut S,
    set: PropertySet,
}

impl<S: Sink> ListWriter<'_, S> {
    fn id(&mut self, id: u8) -> Result<&mut S, EncodeError> {
        if !self.set.allows(id) {
            return Err(EncodeError::PropertyNotAllowed {
                context: self.set.name,
                id,
            });
        }
        self.sink.put_u8(id);
        Ok(self.sink)
    }
}

fn write_list<S: Sink>(sink: &mut S, p: &Properties, set: PropertySet) -> Result<(), EncodeError> {
    if set.data_needs_method && p.authentication_data.is_some() && p.authentication_method.is_none()
    {
        return Err(EncodeError::AuthenticationDataWithoutMethod);
    }
    if !set.many_subscription_ids && p.subscription_identifiers.len() > 1 {
        return Err(EncodeError::TooManySubscriptionIdentifiers {
            count: p.subscription_identifiers.len(),
        });
    }
    let mut w = ListWriter { sink, set };
    if let Some(v) = p.payload_format_indicator {
        w.id(PAYLOAD_FORMAT_INDICATOR)?.put_u8(u8::from(v));
    }
    if let Some(v) = p.message_expiry_interval {
        w.id(MESSAGE_EXPIRY_INTERVAL)?.put_u32(v);
    }
    if let Some(v) = &p.content_type {
        w.id(CONTENT_TYPE)?.put_string(v);
    }
    if let Some(v) = &p.response_topic {
        if v.is_empty() {
            return Err(EncodeError::EmptyTopicName {
                field: "response topic",
            });
        }
        w.id(RESPONSE_TOPIC)?.put_string(v.as_mqtt_string());
    }
    if let Some(v) = &p.correlation_data {
        w.id(CORRELATION_DATA)?.put_binary("correlation data", v)?;
    }
    for v in &p.subscription_identifiers {
        if v.get() > MAX_VARINT {
            return Err(EncodeError::InvalidPropertyValue {
                id: SUBSCRIPTION_IDENTIFIER,
                value: v.get(),
            });
        }
        w.id(SUBSCRIPTION_IDENTIFIER)?.put_varint(v.get());
    }
    if let Some(v) = p.session_expiry_interval {
        w.id(SESSION_EXPIRY_INTERVAL)?.put_u32(v);
    }
    if let Some(v) = &p.assigned_client_identifier {
        w.id(ASSIGNED_CLIENT_IDENTIFIER)?.put_string(v);
    }
    if let Some(v) = p.server_keep_alive {
        w.id(SERVER_KEEP_ALIVE)?.put_u16(v);
    }
    if let Some(v) = &p.authentication_method {
        w.id(AUTHENTICATION_METHOD)?.put_string(v);
    }
    if let Some(v) = &p.authentication_data {
        w.id(AUTHENTICATION_DATA)?
            .put_binary("authentication data", v)?;
    }
    if let Some(v) = p.request_problem_information {
        w.id(REQUEST_PROBLEM_INFORMATION)?.put_u8(u8::from(v));
    }
    if let Some(v) = p.will_delay_interval {
        w.id(WILL_DELAY_INTERVAL)?.put_u32(v);
    }
    if let Some(v) = p.request_response_information {
        w.id(REQUEST_RESPONSE_INFORMATION)?.put_u8(u8::from(v));
    }
    if let Some(v) = &p.response_information {
        w.id(RESPONSE_INFORMATION)?.put_string(v);
    }
    if let Some(v) = &p.server_reference {
        w.id(SERVER_REFERENCE)?.put_string(v);
    }
    if let Some(v) = &p.reason_string {
        w.id(REASON_STRING)?.put_string(v);
    }
    if let Some(v) = p.receive_maximum {
        w.id(RECEIVE_MAXIMUM)?.put_u16(v.get());
    }
    if let Some(v) = p.topic_alias_maximum {
        w.id(TOPIC_ALIAS_MAXIMUM)?.put_u16(v);
    }
    if let Some(v) = p.topic_alias {
        w.id(TOPIC_ALIAS)?.put_u16(v.get());
    }
    if let Some(v) = p.maximum_qos {
        // Only 0 or 1 may be announced; a server supporting QoS 2 omits the property.
        if v == QoS::ExactlyOnce {
            return Err(EncodeError::InvalidPropertyValue {
                id: MAXIMUM_QOS,
                value: 2,
            });
        }
        w.id(MAXIMUM_QOS)?.put_u8(v.bits());
    }
    if let Some(v) = p.retain_available {
        w.id(RETAIN_AVAILABLE)?.put_u8(u8::from(v));
    }
    for (key, value) in &p.user_properties {
        let sink = w.id(USER_PROPERTY)?;
        sink.put_string(key);
        sink.put_string(value);
    }
    if let Some(v) = p.maximum_packet_size {
        w.id(MAXIMUM_PACKET_SIZE)?.put_u32(v.get());
    }
    if let Some(v) = p.wildcard_subscription_available {
        w.id(WILDCARD_SUBSCRIPTION_AVAILABLE)?.put_u8(u8::from(v));
    }
    if let Some(v) = p.subscription_identifier_available {
        w.id(SUBSCRIPTION_IDENTIFIER_AVAILABLE)?.put_u8(u8::from(v));
    }
    if let Some(v) = p.shared_subscription_available {
        w.id(SHARED_SUBSCRIPTION_AVAILABLE)?.put_u8(u8::from(v));
    }
    Ok(())
}
