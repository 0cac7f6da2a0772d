//! rustls server configurations for the TLS and QUIC listeners, from PEM files.
//!
//! Always the ring provider, passed explicitly: nothing here relies on a process-wide
//! default provider being installed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::error::ConfigError;

/// The ALPN protocol of MQTT over QUIC (EMQX convention).
pub const MQTT_ALPN: &str = "mqtt";

/// Resolved TLS material for one listener: files that exist (configured or generated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// The leaf's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) client certificates are verified against; unset: no client
    /// authentication.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse clients that present no certificate.
    pub require_client_cert: bool,
    /// ALPN protocols offered, in preference order; empty: none.
    pub alpn: Vec<String>,
}

/// The crypto provider of every twinmq TLS configuration.
pub fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS 1.2 + 1.3 server configuration for the TLS listener: the certificate and key of
/// `settings`, optional or required client authentication against `client_ca`, ALPN as
/// configured, and stateless session tickets for resumption.
pub fn server_tls_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, ConfigError> {
    let mut config = build(
        settings,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        settings.alpn.clone(),
    )?;
    config.ticketer = stateless_ticketer()?;
    Ok(Arc::new(config))
}

/// A TLS-1.3-only server configuration for QUIC, accepted by
/// `quinn::crypto::rustls::QuicServerConfig::try_from`. ALPN defaults to `["mqtt"]` when
/// `settings.alpn` is empty. Session tickets are issued; 0-RTT early data is accepted only
/// with `enable_0rtt` (QUIC allows `max_early_data_size` of 0 or `u32::MAX` only).
pub fn quic_server_crypto(
    settings: &TlsSettings,
    enable_0rtt: bool,
) -> Result<Arc<ServerConfig>, ConfigError> {
    let alpn = if settings.alpn.is_empty() {
        vec![MQTT_ALPN.to_string()]
    } else {
        settings.alpn.clone()
    };
    let mut config = build(settings, &[&rustls::version::TLS13], alpn)?;
    if enable_0rtt {
        // rustls accepts early data only on stateful resumption (RFC 8446 section 8.1):
        // tickets are single-use keys into this server's session cache, so a replayed
        // ClientHello finds its ticket already taken. With a stateless ticketer it issues
        // tickets without the early_data extension and 0-RTT never happens.
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(QUIC_SESSION_CACHE);
        config.max_early_data_size = u32::MAX;
    } else {
        config.ticketer = stateless_ticketer()?;
        config.max_early_data_size = 0;
    }
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file; an error names the file when it cannot be read, is not
/// PEM, or holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error(
            path,
            "no certificate found (expected a \"BEGIN CERTIFICATE\" block)",
        ));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => pem_error(
            path,
            "no private key found (expected a \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" \
             or \"BEGIN EC PRIVATE KEY\" block)",
        ),
        e => pem_error(path, format!("invalid PEM: {e}")),
    })
}

/// The trust anchors for client certificates.
pub(crate) fn load_client_roots(path: &Path) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| pem_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn build(
    settings: &TlsSettings,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: Vec<String>,
) -> Result<ServerConfig, ConfigError> {
    let provider = ring_provider();
    let certs = load_certs(&settings.cert)?;
    let key = load_private_key(&settings.key)?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| ConfigError::tls("TLS protocol versions", e))?;
    let builder = match &settings.client_ca {
        Some(ca) => {
            let roots = load_client_roots(ca)?;
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if !settings.require_client_cert {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| ConfigError::tls(format!("client CA {}", ca.display()), e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => ConfigError::KeyMismatch {
            cert: settings.cert.clone(),
            key: settings.key.clone(),
        },
        e => pem_error(&settings.key, format!("unusable private key: {e}")),
    })?;
    config.alpn_protocols = alpn.into_iter().map(String::into_bytes).collect();
    Ok(config)
}

/// Sessions remembered for 0-RTT resumption (each connection is issued two tickets).
const QUIC_SESSION_CACHE: usize = 8192;

fn stateless_ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, ConfigError> {
    rustls::crypto::ring::Ticketer::new().map_err(|e| ConfigError::tls("TLS session ticketer", e))
}

fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::io("read", path, e))
}

fn pem_error(path: &Path, problem: impl Into<String>) -> ConfigError {
    ConfigError::Pem {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}
