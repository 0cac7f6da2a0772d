//! Certificate generation (rcgen): the development CA created on first start, and the
//! CA/server/client sets of `twinmq certs`.
//!
//! All keys are ECDSA P-256. Server certificates are valid for 800 days (clients such as
//! Apple's refuse TLS server certificates valid for more than 825). The development CA's
//! private key is not kept: it signs the one server certificate and is dropped, so a copy
//! of `ca.pem` trusted somewhere can never vouch for anything else. When the development
//! server certificate nears expiry the whole set is regenerated.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::RootCertStore;

use super::error::ConfigError;
use super::tls::{load_certs, load_private_key, ring_provider};

/// The development certificates live in this directory under the data directory.
pub const CERTS_DIR: &str = "certs";
pub const CA_CERT_FILE: &str = "ca.pem";
pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server.key";

/// Names the development server certificate is valid for.
pub const DEV_SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

const SERVER_VALIDITY_DAYS: u64 = 800;
const CA_VALIDITY_DAYS: u64 = 3650;
/// Development certificates expiring within this margin are replaced at start.
const RENEW_MARGIN: Duration = Duration::from_secs(30 * 86_400);

/// The development certificate files, which exist and are usable when returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCerts {
    /// `<data_dir>/certs`.
    pub dir: PathBuf,
    /// The development CA certificate: what clients pass as `--cafile`.
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    /// Mode 0600 on Unix.
    pub server_key: PathBuf,
    /// True when this call created them (false: reused from an earlier start).
    pub generated: bool,
}

/// The files written by [`generate_cert_set`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSet {
    pub ca_cert: PathBuf,
    /// Keep it secret: it can sign more certificates.
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub clients: Vec<ClientCertPaths>,
}

/// One client certificate of a [`CertSet`]; its subject CN is `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertPaths {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Returns the development CA and server certificate in `<data_dir>/certs`, generating them
/// when absent, unparseable, mismatched or expiring within 30 days, and reusing them
/// otherwise (same files, same bytes).
pub fn ensure_dev_certs(data_dir: &Path) -> Result<DevCerts, ConfigError> {
    let paths = dev_paths(data_dir);
    match usable(&paths) {
        Ok(()) => return Ok(paths),
        Err(reason) if paths.ca_cert.exists() || paths.server_cert.exists() => {
            tracing::warn!(dir = %paths.dir.display(), %reason, "regenerating development certificates");
        }
        Err(_) => {}
    }
    fs::create_dir_all(&paths.dir)
        .map_err(|e| ConfigError::io("create directory", &paths.dir, e))?;

    let now = SystemTime::now();
    let (ca_params, ca_key) = ca("twinmq development CA", now)?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| ConfigError::tls("generating the development CA", e))?;
    let issuer = Issuer::new(ca_params, ca_key);
    let names: Vec<String> = DEV_SERVER_NAMES.iter().map(|s| s.to_string()).collect();
    let (server_cert, server_key) = server(&names, &issuer, now)?;

    // The key and certificate are written before the CA, and each file atomically, so an
    // interrupted first start leaves no CA that vouches for a missing certificate.
    write_file(
        &paths.server_key,
        server_key.serialize_pem().as_bytes(),
        true,
    )?;
    write_file(&paths.server_cert, server_cert.pem().as_bytes(), false)?;
    write_file(&paths.ca_cert, ca_cert.pem().as_bytes(), false)?;
    Ok(DevCerts {
        generated: true,
        ..paths
    })
}

/// The development certificates if they exist and are usable, without writing anything.
pub(crate) fn existing_dev_certs(data_dir: &Path) -> Option<DevCerts> {
    let paths = dev_paths(data_dir);
    usable(&paths).ok().map(|()| paths)
}

/// For `twinmq certs`: writes into `out_dir` a CA (`ca.pem`, `ca.key`), a server
/// certificate for `names` (`server.pem`, `server.key`; DNS names or IP addresses; empty:
/// localhost, 127.0.0.1, ::1) and one client certificate per entry of `client_names`
/// (`client-<name>.pem`, `client-<name>.key`, subject CN = the name, for mTLS). Keys are
/// mode 0600. Refuses to overwrite any existing file.
pub fn generate_cert_set(
    out_dir: &Path,
    names: &[String],
    client_names: &[String],
) -> Result<CertSet, ConfigError> {
    let names: Vec<String> = if names.is_empty() {
        DEV_SERVER_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        names.to_vec()
    };
    for name in client_names {
        check_client_name(name)?;
    }
    let set = CertSet {
        ca_cert: out_dir.join("ca.pem"),
        ca_key: out_dir.join("ca.key"),
        server_cert: out_dir.join("server.pem"),
        server_key: out_dir.join("server.key"),
        clients: client_names
            .iter()
            .map(|name| ClientCertPaths {
                name: name.clone(),
                cert: out_dir.join(format!("client-{name}.pem")),
                key: out_dir.join(format!("client-{name}.key")),
            })
            .collect(),
    };
    let mut targets = vec![&set.ca_cert, &set.ca_key, &set.server_cert, &set.server_key];
    targets.extend(set.clients.iter().flat_map(|c| [&c.cert, &c.key]));
    if let Some(existing) = targets.iter().find(|p| p.exists()) {
        return Err(ConfigError::io(
            "overwrite",
            existing.as_path(),
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "file exists; choose another directory or remove it",
            ),
        ));
    }
    fs::create_dir_all(out_dir).map_err(|e| ConfigError::io("create directory", out_dir, e))?;

    let now = SystemTime::now();
    let (ca_params, ca_key) = ca("twinmq CA", now)?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| ConfigError::tls("generating the CA", e))?;
    write_file(&set.ca_key, ca_key.serialize_pem().as_bytes(), true)?;
    write_file(&set.ca_cert, ca_cert.pem().as_bytes(), false)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let (server_cert, server_key) = server(&names, &issuer, now)?;
    write_file(&set.server_key, server_key.serialize_pem().as_bytes(), true)?;
    write_file(&set.server_cert, server_cert.pem().as_bytes(), false)?;

    for client in &set.clients {
        let (cert, key) = client_cert(&client.name, &issuer, now)?;
        write_file(&client.key, key.serialize_pem().as_bytes(), true)?;
        write_file(&client.cert, cert.pem().as_bytes(), false)?;
    }
    Ok(set)
}

fn dev_paths(data_dir: &Path) -> DevCerts {
    let dir = data_dir.join(CERTS_DIR);
    DevCerts {
        ca_cert: dir.join(CA_CERT_FILE),
        server_cert: dir.join(SERVER_CERT_FILE),
        server_key: dir.join(SERVER_KEY_FILE),
        dir,
        generated: false,
    }
}

/// Whether the development files parse, match, and verify for `localhost` against the CA
/// until at least [`RENEW_MARGIN`] from now. The error says why not.
fn usable(paths: &DevCerts) -> Result<(), String> {
    let ca = load_certs(&paths.ca_cert).map_err(|e| e.to_string())?;
    let chain = load_certs(&paths.server_cert).map_err(|e| e.to_string())?;
    let key = load_private_key(&paths.server_key).map_err(|e| e.to_string())?;
    let provider = ring_provider();
    rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider)
        .map_err(|e| format!("{}: {e}", paths.server_key.display()))?;

    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())?;
    let (leaf, intermediates) = chain.split_first().ok_or("empty certificate chain")?;
    let horizon = SystemTime::now() + RENEW_MARGIN;
    let horizon = horizon
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(
            leaf,
            intermediates,
            &name,
            &[],
            UnixTime::since_unix_epoch(horizon),
        )
        .map_err(|e| format!("{}: {e}", paths.server_cert.display()))?;
    Ok(())
}

fn new_key() -> Result<KeyPair, ConfigError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| ConfigError::tls("generating an ECDSA P-256 key", e))
}

fn ca(common_name: &str, now: SystemTime) -> Result<(CertificateParams, KeyPair), ConfigError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "twinmq");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, now, CA_VALIDITY_DAYS);
    Ok((params, new_key()?))
}

fn server(
    names: &[String],
    issuer: &Issuer<'_, KeyPair>,
    now: SystemTime,
) -> Result<(rcgen::Certificate, KeyPair), ConfigError> {
    let mut params = CertificateParams::new(names.to_vec())
        .map_err(|e| ConfigError::tls(format!("server certificate names {names:?}"), e))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let common_name = names.first().map(String::as_str).unwrap_or("localhost");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now, SERVER_VALIDITY_DAYS);
    let key = new_key()?;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|e| ConfigError::tls("signing the server certificate", e))?;
    Ok((cert, key))
}

fn client_cert(
    name: &str,
    issuer: &Issuer<'_, KeyPair>,
    now: SystemTime,
) -> Result<(rcgen::Certificate, KeyPair), ConfigError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now, SERVER_VALIDITY_DAYS);
    let key = new_key()?;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|e| ConfigError::tls(format!("signing the client certificate {name:?}"), e))?;
    Ok((cert, key))
}

/// Valid from yesterday (tolerates clock skew) for `days`.
fn set_validity(params: &mut CertificateParams, now: SystemTime, days: u64) {
    let today = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(today.saturating_sub(1));
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(today + days);
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(days: u64) -> (i32, u8, u8) {
    // Howard Hinnant's algorithm, restricted to dates after the epoch.
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

fn check_client_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::tls(
            format!("client name {name:?}"),
            "use 1 to 64 letters, digits, '-', '_', '.' or '@', not starting with '.'",
        ))
    }
}

/// Writes `contents` to a temporary file beside `path` and renames it into place, so
/// readers never see half a file; `private` files get mode 0600 from creation.
fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), ConfigError> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(&tmp)
        .map_err(|e| ConfigError::io("create", &tmp, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| ConfigError::io("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| ConfigError::io("rename into place", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
    }

    #[test]
    fn client_names_are_checked() {
        for good in ["sensor-1", "alice@example", "gw_2.a"] {
            assert!(check_client_name(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "sp ace"] {
            assert!(check_client_name(bad).is_err(), "{bad}");
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "twinmq-certs-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn dev_certs_are_generated_once_then_reused() -> Result<(), ConfigError> {
        let dir = temp_dir("reuse");
        let first = ensure_dev_certs(&dir)?;
        assert!(first.generated);
        let bytes = |p: &Path| fs::read(p).map_err(|e| ConfigError::io("read", p, e));
        let before = (
            bytes(&first.ca_cert)?,
            bytes(&first.server_cert)?,
            bytes(&first.server_key)?,
        );
        let second = ensure_dev_certs(&dir)?;
        assert!(!second.generated);
        assert_eq!(second.ca_cert, first.ca_cert);
        let after = (
            bytes(&second.ca_cert)?,
            bytes(&second.server_cert)?,
            bytes(&second.server_key)?,
        );
        assert_eq!(before, after);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&first.server_key)
                .map_err(|e| ConfigError::io("stat", &first.server_key, e))?
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn a_broken_dev_set_is_regenerated() -> Result<(), ConfigError> {
        let dir = temp_dir("broken");
        let first = ensure_dev_certs(&dir)?;
        fs::write(&first.server_cert, b"not a certificate")
            .map_err(|e| ConfigError::io("write", &first.server_cert, e))?;
        assert!(existing_dev_certs(&dir).is_none());
        let second = ensure_dev_certs(&dir)?;
        assert!(second.generated);
        assert!(existing_dev_certs(&dir).is_some());
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn a_mismatched_key_is_regenerated() -> Result<(), ConfigError> {
        let dir = temp_dir("mismatch");
        let first = ensure_dev_certs(&dir)?;
        let other = new_key()?;
        fs::write(&first.server_key, other.serialize_pem())
            .map_err(|e| ConfigError::io("write", &first.server_key, e))?;
        assert!(existing_dev_certs(&dir).is_none());
        assert!(ensure_dev_certs(&dir)?.generated);
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}
