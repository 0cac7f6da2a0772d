//! Configuration: typed settings loaded in layers with figment.
//!
//! ```text
//!  embedded defaults ──► --config FILE ──► TWINMQ_* environment ──► command-line overrides
//!  (config/twinmq.toml)   (TOML)            (nested keys split on "__")   (key=value)
//!                                   last layer wins, key by key
//! ```
//!
//! [`Config::load`] merges the layers, deserializes them into [`Config`] (unknown keys are
//! errors), then checks the rules that span keys ([`Config::validate`]). Every error names
//! the dotted key, the value and the layer it came from ([`Origin`]): a file path, an
//! environment variable, or an override. [`Config::check`] additionally loads the TLS
//! material and files the configuration names, for `twinmq check-config`.
//!
//! Durations are written as `"10s"`, `"500ms"`, `"2m"` or integer seconds; sizes as integer
//! bytes or `"4MiB"` ([`units`]). Paths are used as written: relative paths are resolved
//! against the working directory.

pub mod certs;
mod error;
mod load;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod units;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::{ConnectionConfig, QoS, QueuePolicy};

pub use certs::{ensure_dev_certs, generate_cert_set, CertSet, ClientCertPaths, DevCerts};
pub use error::{ConfigError, Origin};
pub use load::{Loader, Overrides, ENV_PREFIX};
pub use tls::{quic_server_crypto, server_tls_config, TlsSettings};
pub use validate::CheckReport;

/// The embedded defaults; the same text ships as `config/twinmq.toml`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config/twinmq.toml");

/// The whole broker configuration. See `docs/configuration.md` for every key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Durable state and generated development certificates live here.
    pub data_dir: PathBuf,
    pub listeners: Listeners,
    pub mqtt: MqttSettings,
    pub limits: Limits,
    pub auth: AuthSettings,
    pub storage: StorageSettings,
    pub sys: SysSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    pub tcp: TcpListenerSettings,
    pub tls: TlsListenerSettings,
    pub quic: QuicListenerSettings,
}

/// `listeners.tcp`: plain MQTT over TCP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpListenerSettings {
    pub enabled: bool,
    pub bind: SocketAddr,
}

/// `listeners.tls`: MQTT over TLS 1.2/1.3 on TCP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerSettings {
    pub enabled: bool,
    pub bind: SocketAddr,
    /// Certificate chain (PEM); unset: the development certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// CA certificates client certificates are verified against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse clients without a certificate.
    pub require_client_cert: bool,
    /// ALPN protocols the server offers; empty: no negotiation.
    pub alpn: Vec<String>,
}

/// `listeners.quic`: MQTT over QUIC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicListenerSettings {
    pub enabled: bool,
    pub bind: SocketAddr,
    /// Unset: `listeners.tls.cert` (or the development certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    pub alpn: Vec<String>,
    /// Unset: three `keep_alive_interval`s (the server PINGs at that interval, so MQTT
    /// keep-alive decides when a quiet client is gone).
    #[serde(
        default,
        with = "units::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    #[serde(with = "units::duration")]
    pub keep_alive_interval: Duration,
    pub max_bidi_streams: u32,
    #[serde(deserialize_with = "units::size")]
    pub stream_receive_window: u64,
    #[serde(deserialize_with = "units::size")]
    pub receive_window: u64,
    pub congestion: Congestion,
    #[serde(deserialize_with = "units::size")]
    pub socket_send_buffer: usize,
    #[serde(deserialize_with = "units::size")]
    pub socket_receive_buffer: usize,
    pub enable_0rtt: bool,
}

/// QUIC congestion controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    Cubic,
    Bbr,
    NewReno,
}

/// `mqtt`: protocol limits and capabilities, mapped onto [`ConnectionConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSettings {
    #[serde(deserialize_with = "units::size")]
    pub max_packet_size: u32,
    /// Zero: no limit.
    #[serde(with = "units::duration")]
    pub max_keepalive: Duration,
    pub receive_maximum: u16,
    pub max_inflight: u16,
    pub max_queued_messages: usize,
    pub queue_full_policy: QueueFullPolicy,
    pub topic_alias_maximum: u16,
    pub maximum_qos: u8,
    pub retain_available: bool,
    #[serde(with = "units::duration")]
    pub connect_timeout: Duration,
    #[serde(with = "units::duration")]
    pub send_timeout: Duration,
}

/// What a full session queue drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// Refuse the message that does not fit.
    DropNew,
    /// Make room by dropping the oldest queued message.
    DropOldest,
}

/// `limits`: broker-wide admission limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_connections: usize,
    #[serde(with = "units::duration")]
    pub handshake_timeout: Duration,
    /// New connections per second over all listeners; unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_rate: Option<u32>,
}

/// `auth`: who may connect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Unset: allowed only while every enabled listener is on loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_file: Option<PathBuf>,
}

/// `storage`: durability of sessions and messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub durability: Durability,
    pub group_commit_ms: u64,
    #[serde(deserialize_with = "units::size")]
    pub max_store_bytes: u64,
    pub full_policy: StoreFullPolicy,
}

/// What a store at `max_store_bytes` does with a new QoS 1/2 publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreFullPolicy {
    /// Refuse it (v5 reason 0x97 quota exceeded).
    Reject,
    /// Make room by dropping the oldest messages queued for offline sessions.
    DropOldest,
}

/// When a QoS 1/2 publish is acknowledged relative to its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Each acknowledgement waits for its own commit.
    Sync,
    /// Acknowledgements wait for a group commit (at most `group_commit_ms` later).
    Group,
    /// Memory only: nothing survives a restart.
    None,
}

/// `sys`: the `$SYS/broker/...` topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysSettings {
    /// Zero turns the publications off.
    #[serde(with = "units::duration")]
    pub interval: Duration,
}

/// `log`: diagnostics output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// A level or `tracing` filter directives.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// Loads the embedded defaults, then `file`, then the process environment (`TWINMQ_*`),
    /// then `overrides`, and validates the result. See [`Loader`] to inject the environment.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut loader = Loader::new().overrides(overrides.clone());
        if let Some(file) = file {
            loader = loader.file(file);
        }
        loader.load()
    }

    /// For `twinmq check-config`: [`Config::load`], then read the certificates, keys and
    /// files the configuration names, without writing anything. The report lists notes
    /// such as "development certificates will be generated".
    pub fn check(file: Option<&Path>, overrides: &Overrides) -> Result<CheckReport, ConfigError> {
        let config = Config::load(file, overrides)?;
        validate::check_files(config)
    }

    /// The embedded defaults alone, without the environment.
    pub fn defaults() -> Result<Config, ConfigError> {
        Loader::new().without_env().load()
    }

    /// The rules that span keys (ranges, conflicts, the anonymous-access safety rule).
    /// [`Config::load`] applies them; call this after changing a `Config` in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::validate(self, &|_: &str| Origin::Code)
    }

    /// Whether clients without credentials may connect: `auth.allow_anonymous`, or when
    /// unset, whether every enabled listener binds a loopback address.
    pub fn anonymous_allowed(&self) -> bool {
        self.auth.allow_anonymous.unwrap_or_else(|| {
            self.enabled_binds()
                .all(|(_, addr)| addr.ip().is_loopback())
        })
    }

    /// The enabled listeners as `(key, address)`, e.g. `("listeners.tls", 127.0.0.1:8883)`.
    pub fn enabled_binds(&self) -> impl Iterator<Item = (&'static str, SocketAddr)> + '_ {
        let l = &self.listeners;
        [
            ("listeners.tcp", l.tcp.enabled, l.tcp.bind),
            ("listeners.tls", l.tls.enabled, l.tls.bind),
            ("listeners.quic", l.quic.enabled, l.quic.bind),
        ]
        .into_iter()
        .filter(|(_, enabled, _)| *enabled)
        .map(|(key, _, addr)| (key, addr))
    }

    /// Where the development certificates live: `<data_dir>/certs`.
    pub fn certs_dir(&self) -> PathBuf {
        self.data_dir.join(certs::CERTS_DIR)
    }

    /// The per-connection limits of the protocol layer, from `mqtt.*`.
    pub fn connection_config(&self) -> ConnectionConfig {
        let mqtt = &self.mqtt;
        let max_keep_alive = match mqtt.max_keepalive.as_secs() {
            0 => None,
            secs => Some(u16::try_from(secs).unwrap_or(u16::MAX)),
        };
        ConnectionConfig {
            max_packet_size: mqtt.max_packet_size,
            receive_maximum: mqtt.receive_maximum,
            max_inflight: mqtt.max_inflight,
            max_queued_messages: mqtt.max_queued_messages,
            queue_full_policy: match mqtt.queue_full_policy {
                QueueFullPolicy::DropNew => QueuePolicy::DropNew,
                QueueFullPolicy::DropOldest => QueuePolicy::DropOldest,
            },
            topic_alias_maximum: mqtt.topic_alias_maximum,
            max_keep_alive,
            maximum_qos: QoS::from_bits(mqtt.maximum_qos.min(2)).unwrap_or(QoS::ExactlyOnce),
            retain_available: mqtt.retain_available,
            connect_timeout: mqtt.connect_timeout,
            send_timeout: mqtt.send_timeout,
            ..ConnectionConfig::default()
        }
    }

    /// TLS material for the TLS listener: the configured files, or the development
    /// certificates (generated into [`Config::certs_dir`] on first use).
    pub fn tls_settings(&self) -> Result<TlsSettings, ConfigError> {
        let tls = &self.listeners.tls;
        let (cert, key) = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => {
                let dev = ensure_dev_certs(&self.data_dir)?;
                (dev.server_cert, dev.server_key)
            }
        };
        Ok(TlsSettings {
            cert,
            key,
            client_ca: tls.client_ca.clone(),
            require_client_cert: tls.require_client_cert,
            alpn: tls.alpn.clone(),
        })
    }

    /// TLS material for the QUIC listener: `listeners.quic.cert`/`key`, else the TLS
    /// listener's; client authentication follows `listeners.tls`; ALPN from
    /// `listeners.quic.alpn`.
    pub fn quic_tls_settings(&self) -> Result<TlsSettings, ConfigError> {
        let quic = &self.listeners.quic;
        let mut settings = match (&quic.cert, &quic.key) {
            (Some(cert), Some(key)) => TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.listeners.tls.client_ca.clone(),
                require_client_cert: self.listeners.tls.require_client_cert,
                alpn: Vec::new(),
            },
            _ => self.tls_settings()?,
        };
        settings.alpn = quic.alpn.clone();
        Ok(settings)
    }
}

impl QuicListenerSettings {
    /// The idle timeout before the client's CONNECT is known (the endpoint default):
    /// `idle_timeout` when set, else three QUIC keep-alive intervals.
    pub fn handshake_idle_timeout(&self) -> Duration {
        self.idle_timeout.unwrap_or(self.keep_alive_interval * 3)
    }
}
