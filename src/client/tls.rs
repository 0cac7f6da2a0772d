//! rustls client configurations for the TLS and QUIC transports (ring provider only).
//!
//! The certificate verifier is wrapped so that the reason it rejected a certificate is kept:
//! over QUIC the handshake error reaches us only as a TLS alert number and a string, and a
//! user needs to hear "unknown CA" or "wrong name", not "alert 48".

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::error::ClientError;
use super::options::TlsOptions;
use crate::config::tls::{load_certs, load_private_key, ring_provider};

/// System CA bundles tried when no CA file is given (Debian/Ubuntu/Alpine, Fedora/RHEL,
/// openSUSE).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A client configuration and the log of its verifier's last rejection.
#[derive(Clone)]
pub(crate) struct TlsSetup {
    pub config: Arc<rustls::ClientConfig>,
    pub rejections: VerifyLog,
}

/// The last certificate rejection, for turning a handshake failure into a typed error.
/// One client dials one connection at a time, so one slot suffices; it is cleared before
/// each attempt.
#[derive(Clone, Default, Debug)]
pub(crate) struct VerifyLog(Arc<Mutex<Option<rustls::Error>>>);

impl VerifyLog {
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    pub fn take(&self) -> Option<rustls::Error> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn record(&self, err: &rustls::Error) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(err.clone());
    }
}

/// Builds the configuration: TLS 1.2 and 1.3 for TLS, 1.3 only for QUIC (which requires it).
pub(crate) fn client_config(
    options: &TlsOptions,
    alpn: &[String],
    quic: bool,
) -> Result<TlsSetup, ClientError> {
    let provider = ring_provider();
    let rejections = VerifyLog::default();
    let inner: Arc<dyn ServerCertVerifier> = if options.insecure {
        Arc::new(AcceptAnyServerCert {
            provider: Arc::clone(&provider),
        })
    } else {
        let roots = trust_anchors(options.ca_file.as_deref())?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| ClientError::TlsConfig(format!("certificate verifier: {e}")))?
    };
    let verifier = Arc::new(LoggingVerifier {
        inner,
        log: rejections.clone(),
    });
    let versions: &[&'static rustls::SupportedProtocolVersion] = if quic {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| ClientError::TlsConfig(format!("protocol versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &options.client_cert {
        Some((cert, key)) => {
            let chain = load_certs(cert).map_err(|e| ClientError::TlsConfig(e.to_string()))?;
            let key = load_private_key(key).map_err(|e| ClientError::TlsConfig(e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::TlsConfig(format!("client certificate: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(TlsSetup {
        config: Arc::new(config),
        rejections,
    })
}

/// The name the server's certificate must carry.
pub(crate) fn server_name(name: &str) -> Result<ServerName<'static>, ClientError> {
    let trimmed = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(trimmed.to_string())
        .map_err(|e| ClientError::InvalidOption(format!("server name {name:?}: {e}")))
}

fn trust_anchors(ca_file: Option<&Path>) -> Result<RootCertStore, ClientError> {
    let owned;
    let path = match ca_file {
        Some(path) => path,
        None => {
            owned = system_bundle().ok_or_else(|| {
                ClientError::TlsConfig(
                    "no CA certificates: pass --cafile FILE (or --insecure, for testing only)"
                        .into(),
                )
            })?;
            owned.as_path()
        }
    };
    let mut roots = RootCertStore::empty();
    let certs = load_certs(path).map_err(|e| ClientError::TlsConfig(e.to_string()))?;
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ClientError::TlsConfig(format!(
            "{}: no usable CA certificate",
            path.display()
        )));
    }
    Ok(roots)
}

fn system_bundle() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("SSL_CERT_FILE") {
        return Some(path.into());
    }
    SYSTEM_BUNDLES
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
}

/// Delegates to the real verifier and remembers why it said no.
#[derive(Debug)]
struct LoggingVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    log: VerifyLog,
}

impl ServerCertVerifier for LoggingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .inspect_err(|e| self.log.record(e))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls12_signature(message, cert, dss)
            .inspect_err(|e| self.log.record(e))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls13_signature(message, cert, dss)
            .inspect_err(|e| self.log.record(e))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `--insecure`: **for testing only**. Accepts any certificate for any name, so the
/// connection is encrypted but not authenticated: anyone on the path can impersonate the
/// broker. The handshake signatures are still verified (they prove possession of the key
/// of whatever certificate was presented).
#[derive(Debug)]
struct AcceptAnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
