//! What a client connects to and how: [`ClientOptions`], built with chained setters and
//! checked when [`Client::connect`](super::Client::connect) turns it into a CONNECT packet.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;

use super::error::ClientError;
use crate::protocol::{
    Connect, MqttString, Properties, ProtocolVersion, QoS, TopicName, Will as WillPacket,
};

/// The network under the MQTT byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plain TCP, default port 1883.
    Tcp,
    /// TLS over TCP, default port 8883.
    Tls,
    /// QUIC with ALPN `mqtt`, default UDP port 14567.
    Quic,
}

impl Transport {
    /// The port the transport uses when none is given (the twinmq and EMQX defaults).
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tcp => 1883,
            Transport::Tls => 8883,
            Transport::Quic => 14567,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Quic => "quic",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Transport, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" | "mqtt" => Ok(Transport::Tcp),
            "tls" | "mqtts" | "ssl" => Ok(Transport::Tls),
            "quic" => Ok(Transport::Quic),
            other => Err(format!(
                "unknown transport {other:?} (expected tcp, tls or quic)"
            )),
        }
    }
}

/// How a QUIC client maps MQTT onto streams (ignored over TCP and TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StreamMode {
    /// One bidirectional stream carries the whole session (the EMQX convention).
    #[default]
    Single,
    /// The first stream is the control stream (CONNECT, PINGREQ, DISCONNECT); SUBSCRIBEs
    /// and PUBLISHes go on data streams the client opens on demand, one per
    /// [`StreamKey`](super::StreamKey).
    Multi,
}

impl FromStr for StreamMode {
    type Err = String;

    fn from_str(s: &str) -> Result<StreamMode, String> {
        match s.to_ascii_lowercase().as_str() {
            "single" => Ok(StreamMode::Single),
            "multi" => Ok(StreamMode::Multi),
            other => Err(format!(
                "unknown stream mode {other:?} (expected single or multi)"
            )),
        }
    }
}

/// Reconnecting after a lost connection: exponential backoff from `initial`, doubling up to
/// `max`, with ±25% jitter so that many clients cut off together do not return together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    initial: Duration,
    max: Duration,
    max_attempts: Option<u32>,
}

impl Reconnect {
    /// Backoff from `initial` to `max`, attempts unlimited.
    pub fn new(initial: Duration, max: Duration) -> Reconnect {
        Reconnect {
            initial,
            max: max.max(initial),
            max_attempts: None,
        }
    }

    /// Give up (failing every pending operation) after `attempts` failed attempts in a row.
    pub fn max_attempts(mut self, attempts: u32) -> Reconnect {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    pub fn attempts_limit(&self) -> Option<u32> {
        self.max_attempts
    }

    /// The delay before attempt `attempt` (0-based), without jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before attempt `attempt`, jittered by `noise` (any u64).
    pub(crate) fn delay(&self, attempt: u32, noise: u64) -> Duration {
        let base = self.base_delay(attempt);
        // 75% .. 125% of the base.
        let per_mille = 750 + (noise % 501);
        base.saturating_mul(per_mille as u32) / 1000
    }
}

impl Default for Reconnect {
    /// 100 ms doubling to 30 s, attempts unlimited.
    fn default() -> Reconnect {
        Reconnect::new(Duration::from_millis(100), Duration::from_secs(30))
    }
}

/// TLS settings (TLS and QUIC transports).
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsOptions {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub insecure: bool,
    pub server_name: Option<String>,
    pub alpn: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
struct WillOptions {
    topic: String,
    payload: Bytes,
    qos: QoS,
    retain: bool,
}

/// Everything [`Client::connect`](super::Client::connect) needs.
///
/// ```
/// use std::time::Duration;
/// use twinmq::client::{ClientOptions, StreamMode, Transport};
///
/// let options = ClientOptions::new("localhost")
///     .transport(Transport::Quic)
///     .streams(StreamMode::Single)
///     .ca_file("certs/ca.pem")
///     .client_id("sensor-17")
///     .persistent_session(Duration::from_secs(3600))
///     .keep_alive(Duration::from_secs(30));
/// assert_eq!(options.port_or_default(), 14567);
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
    pub(crate) transport: Transport,
    pub(crate) streams: StreamMode,
    pub(crate) version: ProtocolVersion,
    pub(crate) client_id: Option<String>,
    pub(crate) clean_start: bool,
    pub(crate) session_expiry: u32,
    pub(crate) keep_alive: Duration,
    username: Option<String>,
    password: Option<Bytes>,
    will: Option<WillOptions>,
    pub(crate) tls: TlsOptions,
    pub(crate) reconnect: Option<Reconnect>,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_inflight: u16,
    pub(crate) incoming_capacity: usize,
    pub(crate) max_packet_size: u32,
}

impl ClientOptions {
    /// Options for `host` (a DNS name or an IP address) with the defaults: TCP on the
    /// transport's default port, MQTT 5, a generated client id, clean start, keep-alive 60 s,
    /// reconnect with [`Reconnect::default`], a 10 s connect timeout.
    pub fn new(host: impl Into<String>) -> ClientOptions {
        ClientOptions {
            host: host.into(),
            port: None,
            transport: Transport::Tcp,
            streams: StreamMode::Single,
            version: ProtocolVersion::V5,
            client_id: None,
            clean_start: true,
            session_expiry: 0,
            keep_alive: Duration::from_secs(60),
            username: None,
            password: None,
            will: None,
            tls: TlsOptions::default(),
            reconnect: Some(Reconnect::default()),
            connect_timeout: Duration::from_secs(10),
            max_inflight: 1024,
            incoming_capacity: 1024,
            max_packet_size: crate::protocol::codec::MAX_REMAINING_LENGTH as u32 + 5,
        }
    }

    /// The port; unset: [`Transport::default_port`].
    pub fn port(mut self, port: u16) -> ClientOptions {
        self.port = Some(port);
        self
    }

    pub fn transport(mut self, transport: Transport) -> ClientOptions {
        self.transport = transport;
        self
    }

    /// Single or multi-stream QUIC (ignored over TCP and TLS).
    pub fn streams(mut self, streams: StreamMode) -> ClientOptions {
        self.streams = streams;
        self
    }

    pub fn version(mut self, version: ProtocolVersion) -> ClientOptions {
        self.version = version;
        self
    }

    /// The client id; unset: `twinmq-` and random hex.
    pub fn client_id(mut self, id: impl Into<String>) -> ClientOptions {
        self.client_id = Some(id.into());
        self
    }

    /// Clean start (v5) / clean session (v3.1.1) on the first connection. Reconnections
    /// resume the session whenever it outlives a connection.
    pub fn clean_start(mut self, clean: bool) -> ClientOptions {
        self.clean_start = clean;
        self
    }

    /// Session expiry interval (v5): how long the broker keeps the session after a
    /// disconnect. `u32::MAX` seconds or more means never.
    pub fn session_expiry(mut self, expiry: Duration) -> ClientOptions {
        self.session_expiry = u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX);
        self
    }

    /// A session that survives disconnects: clean start off, and (v5) this session expiry.
    pub fn persistent_session(self, expiry: Duration) -> ClientOptions {
        self.clean_start(false).session_expiry(expiry)
    }

    /// MQTT keep-alive, whole seconds up to 65535; zero turns PINGREQs off.
    pub fn keep_alive(mut self, keep_alive: Duration) -> ClientOptions {
        self.keep_alive = keep_alive;
        self
    }

    pub fn username(mut self, username: impl Into<String>) -> ClientOptions {
        self.username = Some(username.into());
        self
    }

    /// Binary in MQTT 5; MQTT 3.1.1 also needs a user name with it.
    pub fn password(mut self, password: impl Into<Bytes>) -> ClientOptions {
        self.password = Some(password.into());
        self
    }

    /// The will message the broker publishes if this client goes away without DISCONNECT.
    pub fn will(
        mut self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> ClientOptions {
        self.will = Some(WillOptions {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
        });
        self
    }

    /// CA certificates (PEM) to verify the server with. Unset: the system bundle
    /// (`SSL_CERT_FILE`, or the usual Linux locations).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> ClientOptions {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// A client certificate chain and its private key (PEM), for brokers that require mTLS.
    pub fn client_cert(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> ClientOptions {
        self.tls.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// **For testing only**: accept any server certificate, so anyone on the path can read
    /// and change the traffic. Signatures in the handshake are still checked.
    pub fn insecure(mut self, insecure: bool) -> ClientOptions {
        self.tls.insecure = insecure;
        self
    }

    /// The name the server certificate must carry; unset: the host.
    pub fn server_name(mut self, name: impl Into<String>) -> ClientOptions {
        self.tls.server_name = Some(name.into());
        self
    }

    /// ALPN protocols offered; unset: `["mqtt"]` over QUIC, none over TLS.
    pub fn alpn<S: Into<String>>(
        mut self,
        protocols: impl IntoIterator<Item = S>,
    ) -> ClientOptions {
        self.tls.alpn = Some(protocols.into_iter().map(Into::into).collect());
        self
    }

    /// Reconnect policy; `None`: a lost connection ends the client.
    pub fn reconnect(mut self, reconnect: Option<Reconnect>) -> ClientOptions {
        self.reconnect = reconnect;
        self
    }

    /// Bound on the transport handshake plus CONNECT/CONNACK.
    pub fn connect_timeout(mut self, timeout: Duration) -> ClientOptions {
        self.connect_timeout = timeout;
        self
    }

    /// QoS 1/2 publishes in flight at once (further ones wait); the server's receive
    /// maximum lowers it.
    pub fn max_inflight(mut self, max: u16) -> ClientOptions {
        self.max_inflight = max.max(1);
        self
    }

    /// Events buffered for [`Incoming`](super::Incoming) before the client stops reading
    /// from the network (and the broker feels the backpressure).
    pub fn incoming_capacity(mut self, capacity: usize) -> ClientOptions {
        self.incoming_capacity = capacity.max(1);
        self
    }

    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or_else(|| self.transport.default_port())
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn transport_kind(&self) -> Transport {
        self.transport
    }

    /// Whether the broker keeps the session after a connection ends, so a reconnection
    /// can resume it.
    pub(crate) fn session_outlives_connection(&self) -> bool {
        match self.version {
            ProtocolVersion::V5 => self.session_expiry > 0,
            ProtocolVersion::V311 => !self.clean_start,
        }
    }

    pub(crate) fn keep_alive_secs(&self) -> Result<u16, ClientError> {
        let secs = self.keep_alive.as_secs();
        u16::try_from(secs)
            .map_err(|_| ClientError::InvalidOption(format!("keep-alive {secs}s exceeds 65535s")))
    }

    /// The CONNECT packet for the first connection (`clean_start` as configured) or a
    /// reconnection.
    pub(crate) fn connect_packet(
        &self,
        client_id: &str,
        clean_start: bool,
    ) -> Result<Connect, ClientError> {
        let invalid = |what: &str, e: crate::protocol::StringError| {
            ClientError::InvalidOption(format!("{what}: {e}"))
        };
        let client_id = MqttString::new(client_id).map_err(|e| invalid("client id", e))?;
        let username = match &self.username {
            Some(u) => Some(MqttString::new(u).map_err(|e| invalid("user name", e))?),
            None => None,
        };
        if self.password.is_some() && username.is_none() && self.version == ProtocolVersion::V311 {
            return Err(ClientError::InvalidOption(
                "MQTT 3.1.1 needs a user name with a password".into(),
            ));
        }
        let will = match &self.will {
            Some(w) => Some(WillPacket {
                topic: TopicName::new(&w.topic).map_err(|source| ClientError::InvalidTopic {
                    topic: w.topic.clone(),
                    source,
                })?,
                payload: w.payload.clone(),
                qos: w.qos,
                retain: w.retain,
                properties: Properties::default(),
            }),
            None => None,
        };
        let mut properties = Properties::default();
        if self.version.is_v5() && self.session_expiry > 0 {
            properties.session_expiry_interval = Some(self.session_expiry);
        }
        Ok(Connect {
            protocol: self.version,
            clean_start,
            keep_alive: self.keep_alive_secs()?,
            client_id,
            will,
            username,
            password: self.password.clone(),
            properties,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_bound() {
        let r = Reconnect::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..6).map(|a| r.base_delay(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(r.base_delay(u32::MAX), Duration::from_secs(1));
        for noise in [0, 250, 500, u64::MAX] {
            let d = r.delay(2, noise).as_millis();
            assert!((300..=500).contains(&d), "{d}");
        }
    }

    #[test]
    fn persistent_sessions_outlive_connections_in_both_versions() {
        let v5 = ClientOptions::new("h").persistent_session(Duration::from_secs(60));
        assert!(v5.session_outlives_connection());
        let v5_clean = ClientOptions::new("h");
        assert!(!v5_clean.session_outlives_connection());
        let v3 = ClientOptions::new("h")
            .version(ProtocolVersion::V311)
            .clean_start(false);
        assert!(v3.session_outlives_connection());
    }

    #[test]
    fn default_ports_follow_the_transport() {
        assert_eq!(ClientOptions::new("h").port_or_default(), 1883);
        let tls = ClientOptions::new("h").transport(Transport::Tls);
        assert_eq!(tls.port_or_default(), 8883);
        assert_eq!(tls.port(9).port_or_default(), 9);
        assert_eq!("QUIC".parse::<Transport>(), Ok(Transport::Quic));
        assert!("udp".parse::<Transport>().is_err());
    }

    #[test]
    fn connect_packet_carries_the_session_expiry_only_for_v5() {
        let opts = ClientOptions::new("h").persistent_session(Duration::from_secs(30));
        let c = opts.connect_packet("id", false).expect("valid");
        assert_eq!(c.properties.session_expiry_interval, Some(30));
        let v3 = opts.version(ProtocolVersion::V311);
        let c = v3.connect_packet("id", false).expect("valid");
        assert_eq!(c.properties.session_expiry_interval, None);
        assert!(!c.clean_start);
        let too_long = ClientOptions::new("h").keep_alive(Duration::from_secs(70_000));
        assert!(matches!(
            too_long.connect_packet("id", true),
            Err(ClientError::InvalidOption(_))
        ));
    }
}
