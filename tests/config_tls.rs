//! Generated certificates against real rustls handshakes over an in-memory pair, and the
//! errors for unusable PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use twinmq::config::tls::{load_certs, load_private_key, ring_provider};
use twinmq::config::{
    ensure_dev_certs, generate_cert_set, quic_server_crypto, server_tls_config, Config,
    ConfigError, Overrides, TlsSettings,
};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twinmq-config-tls-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    alpn: &[&str],
    tls13_only: bool,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca).expect("ca") {
        roots.add(cert).expect("ca is a trust anchor");
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12]
    };
    let builder = ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                load_certs(cert).expect("cert"),
                load_private_key(key).expect("key"),
            )
            .expect("client identity"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Runs a handshake between the two ends by shuttling bytes until neither has anything to
/// say; returns the first error.
fn handshake(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
) -> Result<(), rustls::Error> {
    for _ in 0..32 {
        let mut moved = false;
        while client.wants_write() {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).expect("in-memory write");
            moved |= !buf.is_empty();
            let mut slice = buf.as_slice();
            while !slice.is_empty() {
                server.read_tls(&mut slice).expect("in-memory read");
            }
            server.process_new_packets()?;
        }
        while server.wants_write() {
            let mut buf = Vec::new();
            server.write_tls(&mut buf).expect("in-memory write");
            moved |= !buf.is_empty();
            let mut slice = buf.as_slice();
            while !slice.is_empty() {
                client.read_tls(&mut slice).expect("in-memory read");
            }
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
        if !moved {
            break;
        }
    }
    Err(rustls::Error::General("handshake made no progress".into()))
}

fn connect(
    server_config: Arc<ServerConfig>,
    client_config: Arc<ClientConfig>,
    name: &str,
) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
    let name = ServerName::try_from(name.to_string()).expect("server name");
    let mut client = ClientConnection::new(client_config, name)?;
    let mut server = ServerConnection::new(server_config)?;
    handshake(&mut client, &mut server)?;
    Ok((client, server))
}

fn settings(cert: &Path, key: &Path) -> TlsSettings {
    TlsSettings {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        client_ca: None,
        require_client_cert: false,
        alpn: Vec::new(),
    }
}

#[test]
fn the_dev_server_certificate_verifies_for_localhost_over_tls12_and_tls13() {
    let dir = temp_dir("dev");
    let dev = ensure_dev_certs(&dir).expect("dev certs");
    let server = server_tls_config(&settings(&dev.server_cert, &dev.server_key)).expect("server");
    for tls13 in [true, false] {
        let client = client_config(&dev.ca_cert, None, &[], tls13);
        let (client, _server) = connect(server.clone(), client, "localhost").expect("handshake");
        let expected = if tls13 {
            rustls::ProtocolVersion::TLSv1_3
        } else {
            rustls::ProtocolVersion::TLSv1_2
        };
        assert_eq!(client.protocol_version(), Some(expected));
    }
    for ip in ["127.0.0.1", "::1"] {
        let client = client_config(&dev.ca_cert, None, &[], true);
        connect(server.clone(), client, ip).expect("IP SAN");
    }
    let client = client_config(&dev.ca_cert, None, &[], true);
    let err = connect(server, client, "example.com").expect_err("wrong name");
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "unexpected {err}"
    );
}

#[test]
fn dev_certs_are_generated_once_and_reused_byte_for_byte() {
    let dir = temp_dir("reuse");
    let first = ensure_dev_certs(&dir).expect("first");
    assert!(first.generated);
    assert_eq!(first.dir, dir.join("certs"));
    let read = |p: &Path| std::fs::read(p).expect("readable");
    let before: Vec<Vec<u8>> = [&first.ca_cert, &first.server_cert, &first.server_key]
        .map(|p| read(p))
        .into();
    let second = ensure_dev_certs(&dir).expect("second");
    assert!(!second.generated);
    let after: Vec<Vec<u8>> = [&second.ca_cert, &second.server_cert, &second.server_key]
        .map(|p| read(p))
        .into();
    assert_eq!(before, after);
}

#[test]
fn config_tls_settings_use_the_dev_certs_when_unconfigured() {
    let dir = temp_dir("config");
    let overrides = Overrides::new()
        .set("data_dir", dir.display().to_string())
        .expect("override");
    let config = twinmq::config::Loader::new()
        .without_env()
        .overrides(overrides)
        .load()
        .expect("config");
    let tls = config.tls_settings().expect("dev certs");
    assert_eq!(tls.cert, config.certs_dir().join("server.pem"));
    let quic = config.quic_tls_settings().expect("quic");
    assert_eq!(quic.cert, tls.cert);
    assert_eq!(quic.alpn, vec!["mqtt".to_string()]);
    assert!(Config::validate(&config).is_ok());
}

#[test]
fn mutual_tls_with_a_generated_cert_set() {
    let dir = temp_dir("mtls");
    let set = generate_cert_set(
        &dir,
        &["broker.test".to_string(), "10.0.0.7".to_string()],
        &["sensor-1".to_string()],
    )
    .expect("cert set");
    let client = &set.clients[0];
    assert_eq!(client.name, "sensor-1");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in [&set.ca_key, &set.server_key, &client.key] {
            let mode = std::fs::metadata(key).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
    }

    let mut required = settings(&set.server_cert, &set.server_key);
    required.client_ca = Some(set.ca_cert.clone());
    required.require_client_cert = true;
    let server = server_tls_config(&required).expect("server");

    let with_identity = client_config(&set.ca_cert, Some((&client.cert, &client.key)), &[], true);
    let (_client, server_conn) =
        connect(server.clone(), with_identity, "broker.test").expect("mTLS handshake");
    let peer = server_conn
        .peer_certificates()
        .expect("client presented a certificate");
    assert_eq!(peer.len(), 1);
    let pem = std::fs::read(&client.cert).expect("client cert");
    let der = load_certs(&client.cert).expect("parse");
    assert_eq!(peer[0], der[0]);
    assert!(String::from_utf8_lossy(&pem).contains("BEGIN CERTIFICATE"));

    let anonymous = client_config(&set.ca_cert, None, &[], true);
    assert!(
        connect(server, anonymous.clone(), "10.0.0.7").is_err(),
        "a required client certificate is enforced"
    );

    let mut optional = settings(&set.server_cert, &set.server_key);
    optional.client_ca = Some(set.ca_cert.clone());
    let server = server_tls_config(&optional).expect("server");
    connect(server, anonymous, "10.0.0.7").expect("optional client auth");

    let again = generate_cert_set(&dir, &[], &[]).expect_err("refuses to overwrite");
    assert!(err_mentions(&again, &set.ca_cert), "{again}");
}

#[test]
fn alpn_is_negotiated_as_configured() {
    let dir = temp_dir("alpn");
    let dev = ensure_dev_certs(&dir).expect("dev certs");
    let mut with_alpn = settings(&dev.server_cert, &dev.server_key);
    with_alpn.alpn = vec!["mqtt".into()];
    let server = server_tls_config(&with_alpn).expect("server");
    let client = client_config(&dev.ca_cert, None, &["mqtt"], true);
    let (client, _) = connect(server.clone(), client, "localhost").expect("handshake");
    assert_eq!(client.alpn_protocol(), Some(&b"mqtt"[..]));
    let wrong = client_config(&dev.ca_cert, None, &["h2"], true);
    assert!(
        connect(server, wrong, "localhost").is_err(),
        "ALPN mismatch refused"
    );
}

#[test]
fn quic_crypto_is_tls13_only_and_accepted_by_quinn() {
    let dir = temp_dir("quic");
    let dev = ensure_dev_certs(&dir).expect("dev certs");
    let quic = quic_server_crypto(&settings(&dev.server_cert, &dev.server_key), false)
        .expect("quic crypto");
    assert_eq!(quic.alpn_protocols, vec![b"mqtt".to_vec()]);
    assert_eq!(quic.max_early_data_size, 0);
    quinn::crypto::rustls::QuicServerConfig::try_from(quic.clone()).expect("quinn accepts it");

    let early = quic_server_crypto(&settings(&dev.server_cert, &dev.server_key), true)
        .expect("quic crypto");
    assert_eq!(early.max_early_data_size, u32::MAX);
    quinn::crypto::rustls::QuicServerConfig::try_from(early).expect("quinn accepts 0-RTT");

    let tls12_client = client_config(&dev.ca_cert, None, &["mqtt"], false);
    assert!(
        connect(quic, tls12_client, "localhost").is_err(),
        "no TLS 1.2 on the QUIC configuration"
    );
}

#[test]
fn unusable_files_are_named_in_errors() {
    let dir = temp_dir("errors");
    let dev = ensure_dev_certs(&dir.join("data")).expect("dev certs");

    let missing = dir.join("missing.pem");
    let err = server_tls_config(&settings(&missing, &dev.server_key)).expect_err("missing");
    assert!(matches!(err, ConfigError::Io { .. }), "{err}");
    assert!(err_mentions(&err, &missing), "{err}");

    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "nothing here\n").expect("write");
    let err = server_tls_config(&settings(&empty, &dev.server_key)).expect_err("no cert");
    assert!(err_mentions(&err, &empty), "{err}");
    assert!(err.to_string().contains("no certificate"), "{err}");

    let err = server_tls_config(&settings(&dev.server_cert, &dev.server_cert)).expect_err("no key");
    assert!(err_mentions(&err, &dev.server_cert), "{err}");
    assert!(err.to_string().contains("no private key"), "{err}");

    let other = generate_cert_set(&dir.join("other"), &[], &[]).expect("other set");
    let err =
        server_tls_config(&settings(&dev.server_cert, &other.server_key)).expect_err("mismatch");
    assert!(matches!(err, ConfigError::KeyMismatch { .. }), "{err}");
    assert!(err_mentions(&err, &other.server_key), "{err}");
    assert!(err_mentions(&err, &dev.server_cert), "{err}");

    let mut bad_ca = settings(&dev.server_cert, &dev.server_key);
    bad_ca.client_ca = Some(empty.clone());
    let err = server_tls_config(&bad_ca).expect_err("no CA");
    assert!(err_mentions(&err, &empty), "{err}");
}

fn err_mentions(err: &ConfigError, path: &Path) -> bool {
    err.to_string().contains(&path.display().to_string())
}
