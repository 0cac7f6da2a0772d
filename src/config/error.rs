//! The configuration layer's error type, and where a value came from.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The layer that supplied a configuration value, as named in error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The embedded defaults (`config/twinmq.toml`).
    Defaults,
    /// The file given with `--config`.
    File(PathBuf),
    /// An environment variable, by its full name (`TWINMQ_MQTT__MAX_INFLIGHT`).
    Env(String),
    /// A command-line override, by its dotted key.
    Override(String),
    /// A `Config` built or changed in code, not loaded.
    Code,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Defaults => f.write_str("the embedded defaults"),
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Override(key) => write!(f, "command-line override {key}"),
            Origin::Code => f.write_str("the configuration set in code"),
        }
    }
}

/// Everything that can go wrong loading the configuration or the TLS material it names.
///
/// Messages name the dotted key, the value and its [`Origin`], or the file path involved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse or breaks a rule.
    #[error("invalid value {value} for {key} in {origin}: {reason}")]
    InvalidValue {
        key: String,
        value: String,
        origin: Origin,
        reason: String,
    },

    /// A key the configuration does not have (often a typo).
    #[error("unknown key {key} in {origin}; expected one of: {expected}")]
    UnknownKey {
        key: String,
        origin: Origin,
        expected: String,
    },

    /// A required key is absent (only possible when the defaults are bypassed).
    #[error("missing key {key}")]
    MissingKey { key: String },

    /// The safety rule of DESIGN §6: anonymous clients on a non-loopback address need an
    /// explicit decision.
    #[error(
        "refusing to start: {listener} binds {addr} (set in {origin}), which is not a loopback \
         address, and auth.allow_anonymous is not set; set auth.allow_anonymous = true to \
         accept anonymous clients there, or configure auth.password_file"
    )]
    AnonymousNotLoopback {
        listener: String,
        addr: SocketAddr,
        origin: Origin,
    },

    /// No listener is enabled.
    #[error("no listener is enabled: set listeners.tcp.enabled, listeners.tls.enabled or listeners.quic.enabled to true")]
    NoListener,

    /// A TOML file that does not parse.
    #[error("cannot parse {origin}: {message}")]
    Syntax { origin: Origin, message: String },

    /// A `key=value` override that is not of that shape.
    #[error("invalid override {text:?}: expected key=value, e.g. mqtt.max_inflight=100")]
    BadOverride { text: String },

    /// Any other error reported by the configuration loader.
    #[error("{message}")]
    Other { message: String },

    /// A file that cannot be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A PEM file without the expected content, or with content that does not parse.
    #[error("{}: {problem}", path.display())]
    Pem { path: PathBuf, problem: String },

    /// A private key that does not belong to the certificate.
    #[error("private key {} does not match certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },

    /// Certificate generation or TLS setup failed.
    #[error("{context}: {message}")]
    Tls { context: String, message: String },
}

impl ConfigError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ConfigError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn tls(context: impl Into<String>, message: impl fmt::Display) -> Self {
        ConfigError::Tls {
            context: context.into(),
            message: message.to_string(),
        }
    }
}
