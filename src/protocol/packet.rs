//! The MQTT control packets as data. Both versions share these types: fields that only exist
//! in MQTT 5 (properties, most reason codes) are ignored when a v3.1.1 packet is encoded and
//! take their defaults when one is decoded.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;

use super::types::{
    MqttString, PacketId, ProtocolVersion, QoS, QosPid, ReasonCode, SubscriptionOptions,
    TopicFilter, TopicName,
};

/// One MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

/// The packet type from the high nibble of the fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    pub fn from_nibble(nibble: u8) -> Option<PacketType> {
        Some(match nibble {
            1 => PacketType::Connect,
            2 => PacketType::ConnAck,
            3 => PacketType::Publish,
            4 => PacketType::PubAck,
            5 => PacketType::PubRec,
            6 => PacketType::PubRel,
            7 => PacketType::PubComp,
            8 => PacketType::Subscribe,
            9 => PacketType::SubAck,
            10 => PacketType::Unsubscribe,
            11 => PacketType::UnsubAck,
            12 => PacketType::PingReq,
            13 => PacketType::PingResp,
            14 => PacketType::Disconnect,
            15 => PacketType::Auth,
            _ => return None,
        })
    }
}

impl Packet {
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// The packet identifier, for the packet types that carry one.
    pub fn packet_id(&self) -> Option<PacketId> {
        match self {
            Packet::Publish(p) => p.qos_pid.packet_id(),
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
                Some(a.packet_id)
            }
            Packet::Subscribe(s) => Some(s.packet_id),
            Packet::SubAck(s) => Some(s.packet_id),
            Packet::Unsubscribe(u) => Some(u.packet_id),
            Packet::UnsubAck(u) => Some(u.packet_id),
            _ => None,
        }
    }
}

/// CONNECT (§3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// Clean Start (v5) / Clean Session (v3.1.1).
    pub clean_start: bool,
    /// Seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    /// May be empty: the server then assigns one (v5) or, in v3.1.1, requires clean session.
    pub client_id: MqttString,
    pub will: Option<Will>,
    pub username: Option<MqttString>,
    /// Binary data, not a string [MQTT-3.1.3.5].
    pub password: Option<Bytes>,
    pub properties: Properties,
}

/// The will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Will properties: will delay, payload format, message expiry, content type, response
    /// topic, correlation data, user properties.
    pub properties: Properties,
}

/// CONNACK (§3.2). For v3.1.1 the reason maps to a return code: Success=0,
/// UnsupportedProtocolVersion=1, ClientIdentifierNotValid=2, ServerUnavailable=3,
/// BadUserNameOrPassword=4, NotAuthorized=5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// PUBLISH (§3.3). `payload` is a slice of the read buffer when decoded, and one shared
/// allocation across every subscriber when routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos_pid: QosPid,
    pub retain: bool,
    /// Empty only on the wire, in a v5 PUBLISH that carries a topic alias.
    pub topic: TopicName,
    pub payload: Bytes,
    pub properties: Properties,
}

impl Publish {
    pub fn qos(&self) -> QoS {
        self.qos_pid.qos()
    }
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share this shape (§3.4 to §3.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: PacketId,
    pub reason: ReasonCode,
    /// Reason string and user properties only.
    pub properties: Properties,
}

impl Ack {
    pub fn new(packet_id: PacketId) -> Ack {
        Ack {
            packet_id,
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }
    }

    pub fn with_reason(packet_id: PacketId, reason: ReasonCode) -> Ack {
        Ack {
            packet_id,
            reason,
            properties: Properties::default(),
        }
    }
}

/// SUBSCRIBE (§3.8). Never empty on the wire [MQTT-3.8.3-2].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: PacketId,
    pub filters: Vec<(TopicFilter, SubscriptionOptions)>,
    /// Subscription identifier (at most one) and user properties.
    pub properties: Properties,
}

/// SUBACK (§3.9): one reason code per filter, in order. v3.1.1 maps 0x00..0x02 to granted
/// QoS and every error code to 0x80.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: PacketId,
    pub reasons: Vec<ReasonCode>,
    pub properties: Properties,
}

/// UNSUBSCRIBE (§3.10). Never empty on the wire [MQTT-3.10.3-2].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: PacketId,
    pub filters: Vec<TopicFilter>,
    pub properties: Properties,
}

/// UNSUBACK (§3.11). `reasons` is empty for v3.1.1, which has no payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: PacketId,
    pub reasons: Vec<ReasonCode>,
    pub properties: Properties,
}

/// DISCONNECT (§3.14). v3.1.1 has neither reason nor properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl Disconnect {
    pub fn new(reason: ReasonCode) -> Disconnect {
        Disconnect {
            reason,
            properties: Properties::default(),
        }
    }
}

/// AUTH (§3.15), v5 only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// Every MQTT 5 property (§2.2.2.2). One struct serves all packets; the codec rejects a
/// property the packet type does not allow, or one that appears twice, as malformed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    /// 0x01: false = unspecified bytes, true = UTF-8 payload.
    pub payload_format_indicator: Option<bool>,
    /// 0x02, seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03.
    pub content_type: Option<MqttString>,
    /// 0x08.
    pub response_topic: Option<TopicName>,
    /// 0x09.
    pub correlation_data: Option<Bytes>,
    /// 0x0B, 1..=268435455; PUBLISH may carry several, SUBSCRIBE at most one.
    pub subscription_identifiers: Vec<NonZeroU32>,
    /// 0x11, seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12.
    pub assigned_client_identifier: Option<MqttString>,
    /// 0x13, seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15.
    pub authentication_method: Option<MqttString>,
    /// 0x16.
    pub authentication_data: Option<Bytes>,
    /// 0x17.
    pub request_problem_information: Option<bool>,
    /// 0x18, seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19.
    pub request_response_information: Option<bool>,
    /// 0x1A.
    pub response_information: Option<MqttString>,
    /// 0x1C.
    pub server_reference: Option<MqttString>,
    /// 0x1F.
    pub reason_string: Option<MqttString>,
    /// 0x21; zero is a protocol error, hence `NonZeroU16`.
    pub receive_maximum: Option<NonZeroU16>,
    /// 0x22.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23; zero is a protocol error.
    pub topic_alias: Option<NonZeroU16>,
    /// 0x24; only 0 or 1 on the wire.
    pub maximum_qos: Option<QoS>,
    /// 0x25.
    pub retain_available: Option<bool>,
    /// 0x26, in order, repeats allowed.
    pub user_properties: Vec<(MqttString, MqttString)>,
    /// 0x27; zero is a protocol error.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// 0x28.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29.
    pub subscription_identifier_available: Option<bool>,
    /// 0x2A.
    pub shared_subscription_available: Option<bool>,
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }
}
