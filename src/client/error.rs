//! The client's one error type. Every variant says who failed (the network, TLS, the broker,
//! the caller) in words a command-line user can act on.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::{DecodeError, EncodeError, QoS, ReasonCode, StringError};

/// Why a client operation failed. Cheap to clone (IO errors are shared), because one
/// connection loss fails every operation waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A [`ClientOptions`](super::ClientOptions) value cannot be used.
    #[error("invalid client option: {0}")]
    InvalidOption(String),
    #[error("cannot resolve host {host:?}: {reason}")]
    Resolve { host: String, reason: String },
    /// Nothing listens on the TCP port (RST to our SYN).
    #[error("connection refused by {addr}: is an MQTT broker listening on that port?")]
    ConnectionRefused { addr: SocketAddr },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: Arc<std::io::Error>,
    },
    /// The transport handshake or CONNACK did not complete in time. Over QUIC a closed UDP
    /// port looks like this: nothing answers.
    #[error("no answer from {addr} within {timeout:?}: is an MQTT broker listening there ({transport})?")]
    Timeout {
        addr: SocketAddr,
        timeout: Duration,
        transport: &'static str,
    },
    /// The server's certificate was not accepted.
    #[error("TLS: the certificate of {server} {problem}")]
    Certificate {
        server: String,
        problem: CertificateProblem,
    },
    /// The QUIC server answered the handshake with `no_application_protocol` (TLS alert 120).
    #[error("the server at {addr} does not speak MQTT over QUIC with ALPN {alpn:?} (TLS alert no_application_protocol)")]
    AlpnMismatch { addr: SocketAddr, alpn: String },
    /// The server refused our client certificate, or wanted one we did not send.
    #[error(
        "the server at {addr} rejected the client certificate ({alert}): check --cert and --key"
    )]
    ClientCertificateRejected { addr: SocketAddr, alert: String },
    /// Another TLS failure during the handshake.
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    /// The TLS material named in the options could not be loaded.
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// Another QUIC failure while connecting.
    #[error("QUIC connection to {addr} failed: {reason}")]
    Quic { addr: SocketAddr, reason: String },
    /// CONNACK carried a failure reason code.
    #[error("the server refused the connection: {reason}{}", suffix(.reason_string))]
    Refused {
        reason: ReasonCode,
        reason_string: Option<String>,
    },
    /// The server sent DISCONNECT (v5).
    #[error("the server disconnected us: {reason}{}", suffix(.reason_string))]
    ServerDisconnect {
        reason: ReasonCode,
        reason_string: Option<String>,
    },
    /// The byte stream ended without a DISCONNECT.
    #[error("the server closed the connection")]
    ConnectionClosed,
    #[error("connection lost: {0}")]
    Io(Arc<std::io::Error>),
    #[error("QUIC connection lost: {0}")]
    QuicLost(quinn::ConnectionError),
    /// The server broke the protocol (an unexpected packet, an unknown packet id...).
    #[error("protocol error from the server: {0}")]
    Protocol(String),
    /// The server sent bytes that are not MQTT.
    #[error("malformed packet from the server: {0}")]
    Decode(DecodeError),
    /// A PINGREQ went unanswered: the path is dead even if the socket looks open.
    #[error("keep-alive: no PINGRESP within {0:?}")]
    KeepAliveTimeout(Duration),
    /// PUBACK or PUBREC carried a failure reason code (v5).
    #[error("publish to {topic} refused: {reason}")]
    PublishRefused { topic: String, reason: ReasonCode },
    /// SUBACK carried a failure reason code for this filter.
    #[error("subscription to {filter} refused: {reason}")]
    SubscribeRefused { filter: String, reason: ReasonCode },
    #[error("invalid topic {topic:?}: {source}")]
    InvalidTopic { topic: String, source: StringError },
    #[error("cannot encode the packet: {0}")]
    Encode(EncodeError),
    /// The server's CONNACK announced a smaller maximum packet size (v5).
    #[error("a packet of {size} bytes exceeds the server's maximum packet size of {max}")]
    PacketTooLarge { size: usize, max: u32 },
    /// The server's CONNACK announced a lower maximum QoS (v5).
    #[error("QoS {requested:?} exceeds the server's maximum QoS {max:?}")]
    QosNotSupported { requested: QoS, max: QoS },
    /// The server's CONNACK said retained messages are not available (v5).
    #[error("the server does not support retained messages")]
    RetainNotSupported,
    /// [`Client::rebind`](super::Client::rebind) on a TCP or TLS client.
    #[error("only a QUIC client can rebind its socket")]
    NotQuic,
    #[error("cannot rebind the UDP socket: {0}")]
    Rebind(Arc<std::io::Error>),
    /// A QoS 0 publish was still queued when its connection was lost.
    #[error("the connection was lost before the message was written")]
    NotWritten,
    /// The client was disconnected (by [`Client::disconnect`](super::Client::disconnect) or
    /// after a fatal error) before the operation completed.
    #[error("the client is closed")]
    Closed,
    /// Reconnecting was given up after the configured number of attempts.
    #[error("gave up reconnecting after {attempts} attempts: {last}")]
    GaveUp {
        attempts: u32,
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// Whether reconnecting after this error can help. Configuration, certificate and ALPN
    /// problems, refusals that credentials cause, and a session taken over by another
    /// connection with our client id are final: retrying would fail the same way or fight
    /// the other client.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Refused { reason, .. } => matches!(
                reason,
                ReasonCode::ServerUnavailable
                    | ReasonCode::ServerBusy
                    | ReasonCode::ConnectionRateExceeded
                    | ReasonCode::QuotaExceeded
                    | ReasonCode::UnspecifiedError
                    | ReasonCode::ImplementationSpecificError
            ),
            ClientError::ServerDisconnect { reason, .. } => !matches!(
                reason,
                ReasonCode::SessionTakenOver
                    | ReasonCode::NotAuthorized
                    | ReasonCode::Banned
                    | ReasonCode::BadAuthenticationMethod
            ),
            ClientError::InvalidOption(_)
            | ClientError::Certificate { .. }
            | ClientError::AlpnMismatch { .. }
            | ClientError::ClientCertificateRejected { .. }
            | ClientError::TlsConfig(_)
            | ClientError::Closed
            | ClientError::GaveUp { .. } => false,
            _ => true,
        }
    }
}

/// What is wrong with the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertificateProblem {
    /// Not signed by a CA we trust.
    UnknownIssuer,
    /// Valid, but not for the name we connected to.
    NameMismatch {
        presented: Vec<String>,
    },
    Expired,
    NotValidYet,
    Other(String),
}

impl fmt::Display for CertificateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertificateProblem::UnknownIssuer => {
                f.write_str("is signed by an unknown CA (pass --cafile with the CA that signed it)")
            }
            CertificateProblem::NameMismatch { presented } if presented.is_empty() => {
                f.write_str("is not valid for that name")
            }
            CertificateProblem::NameMismatch { presented } => write!(
                f,
                "is not valid for that name (it is for {})",
                presented.join(", ")
            ),
            CertificateProblem::Expired => f.write_str("has expired"),
            CertificateProblem::NotValidYet => f.write_str("is not valid yet"),
            CertificateProblem::Other(reason) => write!(f, "was rejected: {reason}"),
        }
    }
}

impl CertificateProblem {
    pub(crate) fn from_rustls(err: &rustls::Error) -> Option<CertificateProblem> {
        use rustls::CertificateError as C;
        let rustls::Error::InvalidCertificate(cert) = err else {
            return None;
        };
        Some(match cert {
            C::UnknownIssuer => CertificateProblem::UnknownIssuer,
            C::NotValidForName => CertificateProblem::NameMismatch {
                presented: Vec::new(),
            },
            C::NotValidForNameContext { presented, .. } => CertificateProblem::NameMismatch {
                presented: presented.clone(),
            },
            C::Expired | C::ExpiredContext { .. } => CertificateProblem::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => CertificateProblem::NotValidYet,
            other => CertificateProblem::Other(format!("{other:?}")),
        })
    }
}

fn suffix(text: &Option<String>) -> String {
    match text {
        Some(text) => format!(" ({text})"),
        None => String::new(),
    }
}
