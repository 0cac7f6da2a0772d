//! Why a connection ended, and the errors of the connection's API.

use super::codec::DecodeError;
use super::frame::TransportFault;
use super::packet::PacketType;
use super::types::ReasonCode;
use super::writer::CompletionError;

/// Who ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    Client,
    Broker,
    Transport,
}

/// Why a connection ended; recorded once, when it ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    /// The client sent DISCONNECT with this reason (0x00 normal, 0x04 with will, ...).
    #[error("client disconnected: {reason}")]
    ClientDisconnected { reason: ReasonCode },
    /// The client broke the protocol; the broker closed (v5: after DISCONNECT/CONNACK with
    /// `reason`).
    #[error("protocol violation ({reason}): {violation}")]
    ProtocolViolation {
        reason: ReasonCode,
        violation: Violation,
    },
    /// The broker chose to end it: refused CONNECT, takeover, shutdown, administration.
    #[error("closed by the broker: {reason}")]
    Broker { reason: ReasonCode },
    /// No packet within 1.5 times the keep-alive [MQTT-3.1.2-22].
    #[error("keep-alive expired")]
    KeepAliveTimeout,
    /// No CONNECT within the connect timeout.
    #[error("no CONNECT before the connect timeout")]
    ConnectTimeout,
    /// The transport failed or the peer went away.
    #[error("transport: {0}")]
    Transport(TransportFault),
    /// The transport driver broke the send seam (unknown or duplicate completion): a bug in
    /// the driver, ended loudly rather than guessed around.
    #[error("send seam violated: {0}")]
    SendSeam(CompletionError),
}

impl CloseReason {
    pub fn initiator(&self) -> Initiator {
        match self {
            CloseReason::ClientDisconnected { .. } => Initiator::Client,
            CloseReason::ProtocolViolation { .. }
            | CloseReason::Broker { .. }
            | CloseReason::KeepAliveTimeout
            | CloseReason::ConnectTimeout
            | CloseReason::SendSeam(_) => Initiator::Broker,
            CloseReason::Transport(_) => Initiator::Transport,
        }
    }

    /// Whether the will message is to be published: always, except after a DISCONNECT
    /// with reason 0x00 [MQTT-3.1.2-8, MQTT-3.14.4-3].
    pub fn publishes_will(&self) -> bool {
        !matches!(
            self,
            CloseReason::ClientDisconnected {
                reason: ReasonCode::Success
            }
        )
    }
}

/// What the client did wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("malformed or invalid packet: {0}")]
    Decode(DecodeError),
    #[error("the first packet was not CONNECT [MQTT-3.1.0-1]")]
    FirstPacketNotConnect,
    #[error("a second CONNECT [MQTT-3.1.0-2]")]
    SecondConnect,
    #[error("a client may not send {0:?}")]
    UnexpectedPacket(PacketType),
    #[error("more than receive maximum ({0}) QoS 1/2 publishes unacknowledged")]
    ReceiveMaximumExceeded(u16),
    #[error("topic alias {alias} outside 1..={maximum}")]
    TopicAliasOutOfRange { alias: u16, maximum: u16 },
    #[error("PUBLISH with an empty topic and topic alias {0} that was never set")]
    UnknownTopicAlias(u16),
    #[error("PUBLISH with QoS {0} above the maximum QoS granted")]
    QosNotSupported(u8),
    #[error("retained PUBLISH while retain is not available")]
    RetainNotSupported,
    #[error("DISCONNECT sets a session expiry after CONNECT set zero [MQTT-3.14.2-2]")]
    SessionExpiryFromZero,
    #[error("no local on a shared subscription [MQTT-3.8.3-4]")]
    NoLocalOnSharedSubscription,
    #[error("v3.1.1 CONNECT with an empty client id and clean session 0 [MQTT-3.1.3-8]")]
    EmptyClientIdWithoutCleanSession,
    #[error("AUTH without an authentication method in CONNECT")]
    UnexpectedAuth,
    #[error("PUBLISH from a client with a subscription identifier [MQTT-3.3.4-6]")]
    SubscriptionIdentifierFromClient,
    #[error("payload format indicator says UTF-8 but the payload is not [MQTT-3.3.2-4]")]
    PayloadNotUtf8,
}

/// A command the connection could not carry out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    #[error("the connection is not waiting for a decision on its CONNECT")]
    NotAwaitingConnect,
    #[error("the connection is closed")]
    Closed,
    #[error("a refused CONNECT needs an error reason code, not {0}")]
    NotARefusal(ReasonCode),
}
