//! Rules that deserialization alone cannot express, and the file checks of
//! `twinmq check-config`.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::certs::{self, DevCerts};
use super::error::{ConfigError, Origin};
use super::tls::{quic_server_crypto, server_tls_config};
use super::units::format_duration;
use super::Config;

/// MQTT's largest packet: a 4-byte remaining length of 268,435,455 plus the fixed header.
const MAX_PACKET_SIZE_LIMIT: u32 = 268_435_460;
/// QUIC variable-length integers top out at 2^62 - 1.
const QUIC_VARINT_MAX: u64 = (1 << 62) - 1;
/// Socket buffer sizes are passed to setsockopt as a C int.
const SOCKET_BUFFER_MAX: usize = i32::MAX as usize;

/// What `twinmq check-config` found beyond errors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckReport {
    /// Human-readable observations, one per line ("development certificates will be
    /// generated in ...").
    pub notes: Vec<String>,
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("configuration is valid")?;
        for note in &self.notes {
            write!(f, "\n- {note}")?;
        }
        Ok(())
    }
}

/// Applies every rule; the first violation is returned. `origin` names the layer that
/// supplied a dotted key.
pub(crate) fn validate(
    config: &Config,
    origin: &dyn Fn(&str) -> Origin,
) -> Result<(), ConfigError> {
    let v = Validator { origin };
    v.general(config)?;
    v.listeners(config)?;
    v.mqtt(config)?;
    v.limits_storage(config)?;
    v.anonymous_safety(config)
}

struct Validator<'a> {
    origin: &'a dyn Fn(&str) -> Origin,
}

impl Validator<'_> {
    fn fail(&self, key: &str, value: impl fmt::Display, reason: impl Into<String>) -> ConfigError {
        ConfigError::InvalidValue {
            key: key.into(),
            value: value.to_string(),
            origin: (self.origin)(key),
            reason: reason.into(),
        }
    }

    fn require(
        &self,
        ok: bool,
        key: &str,
        value: impl fmt::Display,
        reason: &str,
    ) -> Result<(), ConfigError> {
        if ok {
            Ok(())
        } else {
            Err(self.fail(key, value, reason))
        }
    }

    fn positive_duration(&self, key: &str, value: Duration) -> Result<(), ConfigError> {
        self.require(
            !value.is_zero(),
            key,
            quoted_duration(value),
            "must be greater than zero",
        )
    }

    fn path(&self, key: &str, path: Option<&Path>) -> Result<(), ConfigError> {
        match path {
            Some(path) if path.as_os_str().is_empty() => {
                Err(self.fail(key, "\"\"", "must be a path; remove the key to unset it"))
            }
            _ => Ok(()),
        }
    }

    fn general(&self, config: &Config) -> Result<(), ConfigError> {
        self.require(
            !config.data_dir.as_os_str().is_empty(),
            "data_dir",
            "\"\"",
            "must be a directory path",
        )?;
        self.require(
            !config.log.level.trim().is_empty(),
            "log.level",
            "\"\"",
            "must be a level such as \"info\" or filter directives",
        )?;
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&config.log.level) {
            return Err(self.fail(
                "log.level",
                format!("{:?}", config.log.level),
                e.to_string(),
            ));
        }
        if config.sys.interval > Duration::ZERO && config.sys.interval < Duration::from_secs(1) {
            return Err(self.fail(
                "sys.interval",
                quoted_duration(config.sys.interval),
                "must be at least 1s, or 0s to turn $SYS publications off",
            ));
        }
        let auth = &config.auth;
        self.path("auth.password_file", auth.password_file.as_deref())?;
        self.path("auth.acl_file", auth.acl_file.as_deref())
    }

    fn listeners(&self, config: &Config) -> Result<(), ConfigError> {
        let l = &config.listeners;
        if config.enabled_binds().next().is_none() {
            return Err(ConfigError::NoListener);
        }

        let tls = &l.tls;
        self.path("listeners.tls.cert", tls.cert.as_deref())?;
        self.path("listeners.tls.key", tls.key.as_deref())?;
        self.path("listeners.tls.client_ca", tls.client_ca.as_deref())?;
        self.cert_key_pair("listeners.tls", tls.cert.as_deref(), tls.key.as_deref())?;
        if tls.require_client_cert && tls.client_ca.is_none() {
            return Err(self.fail(
                "listeners.tls.require_client_cert",
                true,
                "needs listeners.tls.client_ca, the CA client certificates are verified against",
            ));
        }
        self.alpn("listeners.tls.alpn", &tls.alpn)?;

        let quic = &l.quic;
        self.path("listeners.quic.cert", quic.cert.as_deref())?;
        self.path("listeners.quic.key", quic.key.as_deref())?;
        self.cert_key_pair("listeners.quic", quic.cert.as_deref(), quic.key.as_deref())?;
        self.alpn("listeners.quic.alpn", &quic.alpn)?;
        if quic.alpn.is_empty() {
            return Err(self.fail(
                "listeners.quic.alpn",
                "[]",
                "QUIC requires at least one ALPN protocol (EMQX-compatible clients use \"mqtt\")",
            ));
        }
        self.positive_duration(
            "listeners.quic.keep_alive_interval",
            quic.keep_alive_interval,
        )?;
        if let Some(idle) = quic.idle_timeout {
            self.positive_duration("listeners.quic.idle_timeout", idle)?;
            self.require(
                quic.keep_alive_interval < idle,
                "listeners.quic.keep_alive_interval",
                quoted_duration(quic.keep_alive_interval),
                &format!(
                    "must be shorter than listeners.quic.idle_timeout ({}), or pings cannot \
                     keep the connection alive",
                    format_duration(idle)
                ),
            )?;
        }
        self.require(
            quic.max_bidi_streams >= 1,
            "listeners.quic.max_bidi_streams",
            quic.max_bidi_streams,
            "must be at least 1 (the control stream)",
        )?;
        for (key, window) in [
            (
                "listeners.quic.stream_receive_window",
                quic.stream_receive_window,
            ),
            ("listeners.quic.receive_window", quic.receive_window),
        ] {
            self.require(
                (1..=QUIC_VARINT_MAX).contains(&window),
                key,
                window,
                "must be between 1 and 2^62 - 1 bytes",
            )?;
        }
        for (key, size) in [
            ("listeners.quic.socket_send_buffer", quic.socket_send_buffer),
            (
                "listeners.quic.socket_receive_buffer",
                quic.socket_receive_buffer,
            ),
        ] {
            self.require(
                size <= SOCKET_BUFFER_MAX,
                key,
                size,
                "must be at most 2147483647 bytes",
            )?;
        }

        // tcp and tls are both TCP: they cannot share a port on overlapping addresses. QUIC
        // is UDP and may use the same port number as either.
        if l.tcp.enabled && l.tls.enabled && tcp_conflict(l.tcp.bind, l.tls.bind) {
            return Err(self.fail(
                "listeners.tls.bind",
                format!("\"{}\"", l.tls.bind),
                format!(
                    "conflicts with listeners.tcp.bind ({}): both are TCP",
                    l.tcp.bind
                ),
            ));
        }
        Ok(())
    }

    fn cert_key_pair(
        &self,
        listener: &str,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<(), ConfigError> {
        match (cert, key) {
            (Some(cert), None) => Err(self.fail(
                &format!("{listener}.cert"),
                format!("{:?}", cert.display().to_string()),
                format!("needs {listener}.key, the certificate's private key"),
            )),
            (None, Some(key)) => Err(self.fail(
                &format!("{listener}.key"),
                format!("{:?}", key.display().to_string()),
                format!("needs {listener}.cert, the certificate the key belongs to"),
            )),
            _ => Ok(()),
        }
    }

    fn alpn(&self, key: &str, protocols: &[String]) -> Result<(), ConfigError> {
        for protocol in protocols {
            self.require(
                (1..=255).contains(&protocol.len()),
                key,
                format!("{protocol:?}"),
                "each ALPN protocol must be 1 to 255 bytes",
            )?;
        }
        Ok(())
    }

    fn mqtt(&self, config: &Config) -> Result<(), ConfigError> {
        let m = &config.mqtt;
        self.require(
            (2..=MAX_PACKET_SIZE_LIMIT).contains(&m.max_packet_size),
            "mqtt.max_packet_size",
            m.max_packet_size,
            "must be between 2 and 268435460 bytes",
        )?;
        let keepalive = m.max_keepalive;
        self.require(
            keepalive.subsec_nanos() == 0 && keepalive.as_secs() <= u64::from(u16::MAX),
            "mqtt.max_keepalive",
            quoted_duration(keepalive),
            "must be whole seconds up to 65535s (18h12m15s), or 0s for no limit",
        )?;
        self.require(
            m.receive_maximum >= 1,
            "mqtt.receive_maximum",
            m.receive_maximum,
            "must be at least 1 [MQTT-3.2.2.3.3]",
        )?;
        self.require(
            m.max_inflight >= 1,
            "mqtt.max_inflight",
            m.max_inflight,
            "must be at least 1",
        )?;
        self.require(
            m.maximum_qos <= 2,
            "mqtt.maximum_qos",
            m.maximum_qos,
            "must be 0, 1 or 2",
        )?;
        self.positive_duration("mqtt.connect_timeout", m.connect_timeout)?;
        self.positive_duration("mqtt.send_timeout", m.send_timeout)
    }

    fn limits_storage(&self, config: &Config) -> Result<(), ConfigError> {
        let limits = &config.limits;
        self.require(
            limits.max_connections >= 1,
            "limits.max_connections",
            limits.max_connections,
            "must be at least 1",
        )?;
        self.positive_duration("limits.handshake_timeout", limits.handshake_timeout)?;
        if let Some(rate) = limits.max_connection_rate {
            self.require(
                rate >= 1,
                "limits.max_connection_rate",
                rate,
                "must be at least 1 per second; remove the key for no limit",
            )?;
        }
        let storage = &config.storage;
        self.require(
            storage.group_commit_ms <= 1000,
            "storage.group_commit_ms",
            storage.group_commit_ms,
            "must be at most 1000 (acknowledgements wait this long)",
        )?;
        self.require(
            storage.max_store_bytes >= 1 << 20,
            "storage.max_store_bytes",
            storage.max_store_bytes,
            "must be at least 1MiB",
        )
    }

    fn anonymous_safety(&self, config: &Config) -> Result<(), ConfigError> {
        if config.auth.allow_anonymous.is_some() || config.auth.password_file.is_some() {
            return Ok(());
        }
        match config
            .enabled_binds()
            .find(|(_, addr)| !addr.ip().is_loopback())
        {
            Some((listener, addr)) => Err(ConfigError::AnonymousNotLoopback {
                listener: format!("{listener}.bind"),
                addr,
                origin: (self.origin)(&format!("{listener}.bind")),
            }),
            None => Ok(()),
        }
    }
}

/// Two TCP binds collide when they share a non-zero port and an address (or either is the
/// unspecified address of the same family, which covers every address).
fn tcp_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

fn quoted_duration(duration: Duration) -> String {
    format!("\"{}\"", format_duration(duration))
}

/// Loads what the configuration names (certificates, keys, client CA, auth files) without
/// writing anything.
pub(crate) fn check_files(config: Config) -> Result<CheckReport, ConfigError> {
    let mut report = CheckReport::default();
    let tls = &config.listeners.tls;
    let quic = &config.listeners.quic;
    let needs_dev_certs = (tls.enabled && tls.cert.is_none())
        || (quic.enabled && quic.cert.is_none() && tls.cert.is_none());
    if needs_dev_certs {
        match certs::existing_dev_certs(&config.data_dir) {
            Some(DevCerts { ca_cert, .. }) => report.notes.push(format!(
                "development certificates in {} will be used (CA: {})",
                config.certs_dir().display(),
                ca_cert.display()
            )),
            None => report.notes.push(format!(
                "development certificates will be generated in {} on first start",
                config.certs_dir().display()
            )),
        }
    }
    if tls.enabled && tls.cert.is_some() {
        server_tls_config(&config.tls_settings()?)?;
        report
            .notes
            .push("listeners.tls certificate and key load and match".into());
    } else if tls.enabled && tls.client_ca.is_some() {
        if let Some(ca) = &tls.client_ca {
            super::tls::load_client_roots(ca)?;
        }
    }
    if quic.enabled && (quic.cert.is_some() || tls.cert.is_some()) {
        quic_server_crypto(&config.quic_tls_settings()?, quic.enable_0rtt)?;
        report
            .notes
            .push("listeners.quic certificate and key load and match".into());
    }
    for (key, path) in [
        ("auth.password_file", config.auth.password_file.as_deref()),
        ("auth.acl_file", config.auth.acl_file.as_deref()),
    ] {
        if let Some(path) = path {
            std::fs::File::open(path).map_err(|e| ConfigError::io("read", path, e))?;
            report
                .notes
                .push(format!("{key} {} is readable", path.display()));
        }
    }
    if !config.anonymous_allowed() {
        report
            .notes
            .push("anonymous clients are refused".to_string());
    } else if config.auth.allow_anonymous.is_none() {
        report.notes.push(
            "anonymous clients are allowed because every listener is on loopback".to_string(),
        );
    }
    Ok(report)
}
