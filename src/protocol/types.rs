//! Domain newtypes shared by the codec and the connection: versions, QoS, packet ids,
//! validated strings, topic names and filters, reason codes.

use std::fmt;
use std::num::NonZeroU16;

use bytes::Bytes;

/// The MQTT protocol level carried in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte written in CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// Whether this version carries properties and reason codes.
    pub fn is_v5(self) -> bool {
        matches!(self, ProtocolVersion::V5)
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProtocolVersion::V311 => "3.1.1",
            ProtocolVersion::V5 => "5.0",
        })
    }
}

/// Quality of service of a message or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses the two QoS bits; 3 is not a QoS.
    pub fn from_bits(bits: u8) -> Option<QoS> {
        match bits {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    pub fn bits(self) -> u8 {
        self as u8
    }
}

/// A packet identifier. Zero is not a packet identifier [MQTT-2.2.1-3], so the type cannot
/// hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    pub fn new(value: u16) -> Option<PacketId> {
        NonZeroU16::new(value).map(PacketId)
    }

    pub fn get(self) -> u16 {
        self.0.get()
    }

    /// The identifier after this one, wrapping from 65535 to 1.
    pub fn next(self) -> PacketId {
        match NonZeroU16::new(self.0.get().wrapping_add(1)) {
            Some(n) => PacketId(n),
            None => PacketId(NonZeroU16::MIN),
        }
    }

    pub const MIN: PacketId = PacketId(NonZeroU16::MIN);
}

impl fmt::Display for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The QoS of a PUBLISH together with its packet identifier: QoS 0 has none, QoS 1 and 2
/// always have one, so "QoS 1 without an id" cannot be expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosPid {
    AtMostOnce,
    AtLeastOnce(PacketId),
    ExactlyOnce(PacketId),
}

impl QosPid {
    pub fn qos(self) -> QoS {
        match self {
            QosPid::AtMostOnce => QoS::AtMostOnce,
            QosPid::AtLeastOnce(_) => QoS::AtLeastOnce,
            QosPid::ExactlyOnce(_) => QoS::ExactlyOnce,
        }
    }

    pub fn packet_id(self) -> Option<PacketId> {
        match self {
            QosPid::AtMostOnce => None,
            QosPid::AtLeastOnce(id) | QosPid::ExactlyOnce(id) => Some(id),
        }
    }

    /// Combines a QoS with an id; `None` when QoS 0 gets an id or QoS 1/2 gets none.
    pub fn from_parts(qos: QoS, id: Option<PacketId>) -> Option<QosPid> {
        match (qos, id) {
            (QoS::AtMostOnce, None) => Some(QosPid::AtMostOnce),
            (QoS::AtLeastOnce, Some(id)) => Some(QosPid::AtLeastOnce(id)),
            (QoS::ExactlyOnce, Some(id)) => Some(QosPid::ExactlyOnce(id)),
            _ => None,
        }
    }
}

/// Why a string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StringError {
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("string contains U+0000")]
    NullCharacter,
    #[error("string is longer than 65535 bytes")]
    TooLong,
    #[error("topic name is empty")]
    EmptyTopic,
    #[error("topic name contains a wildcard")]
    WildcardInTopic,
    #[error("topic filter is empty")]
    EmptyFilter,
    #[error("topic filter has a wildcard that does not fill a whole level or '#' not last")]
    InvalidFilter,
}

/// A UTF-8 string as MQTT defines it [MQTT-1.5.4-1..3]: valid UTF-8, no U+0000, at most
/// 65535 bytes. Backed by `Bytes`, so decoded strings are slices of the read buffer.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MqttString(Bytes);

impl MqttString {
    /// Validates `bytes` as an MQTT string without copying it.
    pub fn from_bytes(bytes: Bytes) -> Result<MqttString, StringError> {
        if bytes.len() > u16::MAX as usize {
            return Err(StringError::TooLong);
        }
        // Rust's UTF-8 validation already rejects surrogates and over-long forms.
        let s = std::str::from_utf8(&bytes).map_err(|_| StringError::InvalidUtf8)?;
        if s.contains('\0') {
            return Err(StringError::NullCharacter);
        }
        Ok(MqttString(bytes))
    }

    pub fn new(s: &str) -> Result<MqttString, StringError> {
        MqttString::from_bytes(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// A `'static` string known to be valid (literals in code).
    pub fn from_static(s: &'static str) -> MqttString {
        debug_assert!(s.len() <= u16::MAX as usize && !s.contains('\0'));
        MqttString(Bytes::from_static(s.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor validated the bytes as UTF-8 and they are immutable.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A topic name: an MQTT string without `+` or `#` [MQTT-3.3.2-2].
///
/// The empty topic name exists only on the wire, in a v5 PUBLISH that carries a topic
/// alias; the codec builds it with [`TopicName::empty_for_alias`] and the connection replaces
/// it with the aliased name before anything else sees it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(MqttString);

impl TopicName {
    pub fn from_string(s: MqttString) -> Result<TopicName, StringError> {
        if s.is_empty() {
            return Err(StringError::EmptyTopic);
        }
        if s.as_bytes().iter().any(|&b| b == b'+' || b == b'#') {
            return Err(StringError::WildcardInTopic);
        }
        Ok(TopicName(s))
    }

    pub fn new(s: &str) -> Result<TopicName, StringError> {
        TopicName::from_string(MqttString::new(s)?)
    }

    /// The zero-length topic of a PUBLISH that relies on a topic alias.
    pub fn empty_for_alias() -> TopicName {
        TopicName(MqttString::default())
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn as_mqtt_string(&self) -> &MqttString {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A topic filter: non-empty; `+` and `#` fill whole levels and `#` is last
/// [MQTT-4.7.1-1, MQTT-4.7.1-2]. `$share/...` filters are valid filters; the broker parses
/// the share group.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(MqttString);

impl TopicFilter {
    pub fn from_string(s: MqttString) -> Result<TopicFilter, StringError> {
        if s.is_empty() {
            return Err(StringError::EmptyFilter);
        }
        let mut levels = s.as_str().split('/').peekable();
        while let Some(level) = levels.next() {
            let is_last = levels.peek().is_none();
            let valid = match level {
                "#" => is_last,
                "+" => true,
                other => !other.contains(['+', '#']),
            };
            if !valid {
                return Err(StringError::InvalidFilter);
            }
        }
        Ok(TopicFilter(s))
    }

    pub fn new(s: &str) -> Result<TopicFilter, StringError> {
        TopicFilter::from_string(MqttString::new(s)?)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn as_mqtt_string(&self) -> &MqttString {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the filter contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.0.as_bytes().iter().any(|&b| b == b'+' || b == b'#')
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Retain handling subscription option (v5 §3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Send them only if the subscription did not exist before.
    SendIfNew = 1,
    /// Never send retained messages for this subscription.
    DoNotSend = 2,
}

impl RetainHandling {
    pub fn from_bits(bits: u8) -> Option<RetainHandling> {
        match bits {
            0 => Some(RetainHandling::SendAtSubscribe),
            1 => Some(RetainHandling::SendIfNew),
            2 => Some(RetainHandling::DoNotSend),
            _ => None,
        }
    }
}

/// The options byte of one SUBSCRIBE entry. For v3.1.1 only `qos` is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    pub fn qos(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }
    }
}

macro_rules! reason_codes {
    ($($name:ident = $value:literal, $text:literal;)*) => {
        /// An MQTT 5 reason code (§2.4). v3.1.1 CONNACK return codes and SUBACK results map
        /// onto these in the codec.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ReasonCode {
            $($name,)*
        }

        impl ReasonCode {
            pub fn from_u8(value: u8) -> Option<ReasonCode> {
                match value {
                    $($value => Some(ReasonCode::$name),)*
                    _ => None,
                }
            }

            pub fn to_u8(self) -> u8 {
                match self {
                    $(ReasonCode::$name => $value,)*
                }
            }

            /// The spec's name for the code.
            pub fn text(self) -> &'static str {
                match self {
                    $(ReasonCode::$name => $text,)*
                }
            }
        }
    };
}

// 0x00 means Success, Normal disconnection or Granted QoS 0 depending on the packet; the codec
// knows which packets may carry which codes.
reason_codes! {
    Success = 0x00, "success";
    GrantedQoS1 = 0x01, "granted QoS 1";
    GrantedQoS2 = 0x02, "granted QoS 2";
    DisconnectWithWill = 0x04, "disconnect with will message";
    NoMatchingSubscribers = 0x10, "no matching subscribers";
    NoSubscriptionExisted = 0x11, "no subscription existed";
    ContinueAuthentication = 0x18, "continue authentication";
    ReAuthenticate = 0x19, "re-authenticate";
    UnspecifiedError = 0x80, "unspecified error";
    MalformedPacket = 0x81, "malformed packet";
    ProtocolError = 0x82, "protocol error";
    ImplementationSpecificError = 0x83, "implementation specific error";
    UnsupportedProtocolVersion = 0x84, "unsupported protocol version";
    ClientIdentifierNotValid = 0x85, "client identifier not valid";
    BadUserNameOrPassword = 0x86, "bad user name or password";
    NotAuthorized = 0x87, "not authorized";
    ServerUnavailable = 0x88, "server unavailable";
    ServerBusy = 0x89, "server busy";
    Banned = 0x8A, "banned";
    ServerShuttingDown = 0x8B, "server shutting down";
    BadAuthenticationMethod = 0x8C, "bad authentication method";
    KeepAliveTimeout = 0x8D, "keep alive timeout";
    SessionTakenOver = 0x8E, "session taken over";
    TopicFilterInvalid = 0x8F, "topic filter invalid";
    TopicNameInvalid = 0x90, "topic name invalid";
    PacketIdentifierInUse = 0x91, "packet identifier in use";
    PacketIdentifierNotFound = 0x92, "packet identifier not found";
    ReceiveMaximumExceeded = 0x93, "receive maximum exceeded";
    TopicAliasInvalid = 0x94, "topic alias invalid";
    PacketTooLarge = 0x95, "packet too large";
    MessageRateTooHigh = 0x96, "message rate too high";
    QuotaExceeded = 0x97, "quota exceeded";
    AdministrativeAction = 0x98, "administrative action";
    PayloadFormatInvalid = 0x99, "payload format invalid";
    RetainNotSupported = 0x9A, "retain not supported";
    QoSNotSupported = 0x9B, "QoS not supported";
    UseAnotherServer = 0x9C, "use another server";
    ServerMoved = 0x9D, "server moved";
    SharedSubscriptionsNotSupported = 0x9E, "shared subscriptions not supported";
    ConnectionRateExceeded = 0x9F, "connection rate exceeded";
    MaximumConnectTime = 0xA0, "maximum connect time";
    SubscriptionIdentifiersNotSupported = 0xA1, "subscription identifiers not supported";
    WildcardSubscriptionsNotSupported = 0xA2, "wildcard subscriptions not supported";
}

impl ReasonCode {
    /// Codes of 0x80 and above report failure [MQTT-2.4].
    pub fn is_error(self) -> bool {
        self.to_u8() >= 0x80
    }

    /// The SUBACK code granting `qos`.
    pub fn granted(qos: QoS) -> ReasonCode {
        match qos {
            QoS::AtMostOnce => ReasonCode::Success,
            QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
            QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
        }
    }

    /// The QoS a SUBACK reason grants (the inverse of [`ReasonCode::granted`]); `None` for
    /// a refusal.
    pub fn granted_qos(self) -> Option<QoS> {
        match self {
            ReasonCode::Success => Some(QoS::AtMostOnce),
            ReasonCode::GrantedQoS1 => Some(QoS::AtLeastOnce),
            ReasonCode::GrantedQoS2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:02X} {}", self.to_u8(), self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_granted_qos_reads_back_from_its_reason_code() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            assert_eq!(ReasonCode::granted(qos).granted_qos(), Some(qos));
        }
        assert_eq!(ReasonCode::NotAuthorized.granted_qos(), None);
    }

    #[test]
    fn packet_id_wraps_past_zero() {
        let last = PacketId::new(u16::MAX).expect("non-zero");
        assert_eq!(last.next(), PacketId::MIN);
        assert!(PacketId::new(0).is_none());
    }

    #[test]
    fn strings_reject_nul_and_invalid_utf8() {
        assert_eq!(MqttString::new("a\0b"), Err(StringError::NullCharacter));
        // An encoded surrogate half (U+D800) is not UTF-8 [MQTT-1.5.4-1].
        let surrogate = Bytes::from_static(&[0xED, 0xA0, 0x80]);
        assert_eq!(
            MqttString::from_bytes(surrogate),
            Err(StringError::InvalidUtf8)
        );
        assert!(MqttString::new("température/°C").is_ok());
    }

    #[test]
    fn topic_names_reject_wildcards_and_empty() {
        assert_eq!(TopicName::new("a/+/c"), Err(StringError::WildcardInTopic));
        assert_eq!(TopicName::new("a/#"), Err(StringError::WildcardInTopic));
        assert_eq!(TopicName::new(""), Err(StringError::EmptyTopic));
        assert!(TopicName::new("/").is_ok());
    }

    #[test]
    fn filters_need_whole_level_wildcards_with_hash_last() {
        for ok in [
            "#",
            "+",
            "a/+/b",
            "a/#",
            "+/+",
            "/",
            "$share/g/a/#",
            "sport/+",
        ] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+/b", "a/b+", "##", "a/#/#"] {
            assert!(TopicFilter::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reason_codes_round_trip() {
        for v in 0..=255u8 {
            if let Some(code) = ReasonCode::from_u8(v) {
                assert_eq!(code.to_u8(), v);
            }
        }
        assert!(ReasonCode::from_u8(0x03).is_none());
    }
}
