//! The codec's two error types. Every decode error names one kind of violation and maps to
//! the MQTT 5 reason code the connection sends when it closes because of it.

use bytes::Bytes;

use crate::protocol::packet::PacketType;
use crate::protocol::types::{ProtocolVersion, ReasonCode, StringError};

/// Why the bytes on the wire are not a valid MQTT packet. After an error the stream cannot be
/// resynchronised: the connection closes (v5: DISCONNECT or CONNACK with
/// [`DecodeError::reason_code`] first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet type 0 is reserved")]
    ReservedPacketType,
    #[error("{packet_type:?} does not exist in MQTT {version}")]
    PacketTypeNotInVersion {
        packet_type: PacketType,
        version: ProtocolVersion,
    },
    #[error("expected CONNECT as the first packet, got {packet_type:?}")]
    ExpectedConnect { packet_type: PacketType },
    #[error("fixed header flags {flags:#06b} are invalid for {packet_type:?}")]
    InvalidFlags { packet_type: PacketType, flags: u8 },
    #[error("QoS 3 in {field}")]
    InvalidQoS { field: &'static str },
    #[error("PUBLISH with DUP set and QoS 0")]
    DupWithQoS0,
    #[error("variable byte integer longer than 4 bytes")]
    VarIntTooLong,
    #[error("variable byte integer not minimally encoded")]
    VarIntNotMinimal,
    #[error("packet of {size} bytes exceeds the maximum packet size {max}")]
    PacketTooLarge { size: usize, max: u32 },
    #[error("packet ended inside {field}")]
    Truncated { field: &'static str },
    #[error("{extra} bytes left over after the end of {packet_type:?}")]
    TrailingBytes {
        packet_type: PacketType,
        extra: usize,
    },
    #[error("protocol name {name:?} is not MQTT")]
    InvalidProtocolName { name: Bytes },
    #[error("unsupported protocol level {level}")]
    UnsupportedProtocolVersion { level: u8 },
    #[error("CONNECT reserved flag is set")]
    ReservedConnectFlag,
    #[error("CONNECT flags {flags:#010b} set will QoS or retain without the will flag")]
    WillFlagsWithoutWill { flags: u8 },
    #[error("CONNECT has the password flag without the user name flag")]
    PasswordWithoutUsername,
    #[error("CONNACK reserved flags {flags:#010b} are set")]
    ReservedConnAckFlags { flags: u8 },
    #[error("CONNACK has session present with failure reason {reason}")]
    SessionPresentWithError { reason: ReasonCode },
    #[error("invalid {field}: {error}")]
    InvalidString {
        field: &'static str,
        error: StringError,
    },
    #[error("invalid {field}: {error}")]
    InvalidTopicName {
        field: &'static str,
        error: StringError,
    },
    #[error("empty {field}")]
    EmptyTopicName { field: &'static str },
    #[error("PUBLISH with an empty topic name and no topic alias")]
    EmptyTopicWithoutAlias,
    #[error("invalid topic filter: {error}")]
    InvalidTopicFilter { error: StringError },
    #[error("{packet_type:?} has packet identifier 0")]
    ZeroPacketId { packet_type: PacketType },
    #[error("{packet_type:?} has no topic filters")]
    NoTopicFilters { packet_type: PacketType },
    #[error("{packet_type:?} has no reason codes")]
    NoReasonCodes { packet_type: PacketType },
    #[error("subscription options {options:#010b} set reserved bits")]
    ReservedSubscriptionBits { options: u8 },
    #[error("subscription options {options:#010b} have retain handling 3")]
    InvalidRetainHandling { options: u8 },
    #[error("reason code {code:#04x} is not valid in {packet_type:?}")]
    InvalidReasonCode { packet_type: PacketType, code: u8 },
    #[error("property length {length} exceeds the {available} bytes left in the packet")]
    PropertyLengthOverrun { length: u32, available: usize },
    #[error("unknown property identifier {id:#04x}")]
    UnknownProperty { id: u32 },
    #[error("property {id:#04x} is not allowed in {context}")]
    PropertyNotAllowed { context: &'static str, id: u8 },
    #[error("property {id:#04x} appears more than once")]
    DuplicateProperty { id: u8 },
    #[error("property {id:#04x} has invalid value {value}")]
    InvalidPropertyValue { id: u8, value: u32 },
    #[error("topic alias 0")]
    TopicAliasZero,
    #[error("authentication data without an authentication method")]
    AuthenticationDataWithoutMethod,
}

impl DecodeError {
    /// The MQTT 5 reason code to send in DISCONNECT / CONNACK for this error.
    ///
    /// Choices where the spec leaves room:
    /// - A topic filter with misplaced wildcards or no characters maps to 0x8F Topic Filter
    ///   invalid, matching 0x90 for topic names with wildcards; only ill-formed UTF-8 or
    ///   U+0000 in a filter is 0x81 [MQTT-1.5.4-1].
    /// - A reason code the packet type does not define, a property the packet type does not
    ///   allow and an unknown property are malformed (the bytes cannot be parsed as that
    ///   packet); a repeated property or an out-of-range value is a protocol error, as the
    ///   spec words each property's description.
    /// - A protocol name other than "MQTT"/"MQIsdp" is a protocol error [MQTT-3.1.2-1];
    ///   "MQIsdp" or an unknown level is 0x84 so the connection can answer with CONNACK.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocolVersion { .. } => ReasonCode::UnsupportedProtocolVersion,
            InvalidTopicName { .. } => ReasonCode::TopicNameInvalid,
            InvalidTopicFilter { .. } => ReasonCode::TopicFilterInvalid,
            TopicAliasZero => ReasonCode::TopicAliasInvalid,
            ExpectedConnect { .. }
            | InvalidProtocolName { .. }
            | SessionPresentWithError { .. }
            | EmptyTopicWithoutAlias
            | NoTopicFilters { .. }
            | NoReasonCodes { .. }
            | InvalidRetainHandling { .. }
            | DuplicateProperty { .. }
            | InvalidPropertyValue { .. }
            | AuthenticationDataWithoutMethod => ReasonCode::ProtocolError,
            ReservedPacketType
            | PacketTypeNotInVersion { .. }
            | InvalidFlags { .. }
            | InvalidQoS { .. }
            | DupWithQoS0
            | VarIntTooLong
            | VarIntNotMinimal
            | Truncated { .. }
            | TrailingBytes { .. }
            | ReservedConnectFlag
            | WillFlagsWithoutWill { .. }
            | PasswordWithoutUsername
            | ReservedConnAckFlags { .. }
            | InvalidString { .. }
            | EmptyTopicName { .. }
            | ZeroPacketId { .. }
            | ReservedSubscriptionBits { .. }
            | InvalidReasonCode { .. }
            | PropertyLengthOverrun { .. }
            | UnknownProperty { .. }
            | PropertyNotAllowed { .. } => ReasonCode::MalformedPacket,
        }
    }
}

/// Why a [`Packet`](crate::protocol::Packet) cannot be put on the wire in the requested
/// version. Encoding checks everything the decoder checks, so whatever encodes also decodes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{packet_type:?} remaining length {remaining_length} exceeds 268435455")]
    RemainingLengthTooLarge {
        packet_type: PacketType,
        remaining_length: usize,
    },
    #[error("{packet_type:?} does not exist in MQTT {version}")]
    NotInVersion {
        packet_type: PacketType,
        version: ProtocolVersion,
    },
    #[error("CONNECT for MQTT {connect} encoded as MQTT {version}")]
    ConnectVersionMismatch {
        connect: ProtocolVersion,
        version: ProtocolVersion,
    },
    #[error("3.1.1 CONNECT with a password but no user name")]
    PasswordWithoutUsername,
    #[error("SUBSCRIBE without topic filters")]
    EmptySubscribe,
    #[error("UNSUBSCRIBE without topic filters")]
    EmptyUnsubscribe,
    #[error("SUBACK without reason codes")]
    EmptySubAck,
    #[error("UNSUBACK without reason codes")]
    EmptyUnsubAck,
    #[error("reason code {reason} is not valid in {packet_type:?}")]
    InvalidReasonCode {
        packet_type: PacketType,
        reason: ReasonCode,
    },
    #[error("CONNACK has session present with failure reason {reason}")]
    SessionPresentWithError { reason: ReasonCode },
    #[error("PUBLISH with DUP set and QoS 0")]
    DupWithQoS0,
    #[error("empty {field}")]
    EmptyTopicName { field: &'static str },
    #[error("{field} of {len} bytes does not fit a two-byte length")]
    BinaryTooLong { field: &'static str, len: usize },
    #[error("property {id:#04x} is not allowed in {context}")]
    PropertyNotAllowed { context: &'static str, id: u8 },
    #[error("{count} subscription identifiers in SUBSCRIBE; at most one is allowed")]
    TooManySubscriptionIdentifiers { count: usize },
    #[error("property {id:#04x} has invalid value {value}")]
    InvalidPropertyValue { id: u8, value: u32 },
    #[error("authentication data without an authentication method")]
    AuthenticationDataWithoutMethod,
}
