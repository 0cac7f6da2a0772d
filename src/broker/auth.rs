//! Authentication and authorisation (DESIGN §6): who a client is, and what it may do.
//!
//! ```text
//!  start:   AuthSettings ──► Authenticator::load      Acl::from_settings
//!                            (password file, files     (acl file, or allow-all)
//!                             read once)
//!  CONNECT: username, password, verified cert CN ──► Authenticator::authenticate
//!             ──► Ok(Identity) ──► Acl::for_client(identity, client id) ──► ClientAcl
//!             └─► Err(ReasonCode) for CONNACK
//!  PUBLISH, SUBSCRIBE, each delivery:  ClientAcl::check(Action, topic or filter) ──► bool
//! ```
//!
//! - [`password`]: mosquitto's password-file format (`$7$` PBKDF2-SHA512, `$6$` SHA-512),
//!   so `mosquitto_passwd` files work unchanged; also what `twinmq passwd` edits.
//! - [`acl`]: mosquitto's `acl_file` format and evaluation order.
//!
//! Everything here is plain logic: the files are read at start, and no check does IO.
//! [`Authenticator::authenticate`] costs one hash of the password (PBKDF2 at the file's
//! iteration count, 101 by default); the ACL checks walk a handful of rules.

pub mod acl;
pub mod password;
mod topic;

use std::path::PathBuf;

use crate::config::AuthSettings;
use crate::protocol::ReasonCode;

pub use acl::{Acl, Action, ClientAcl};
pub use password::{PasswordFile, PasswordHash, DEFAULT_ITERATIONS};

/// Who a connected client is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// No credentials (or a user name nobody could check, with no password file); allowed
    /// only with anonymous access on.
    Anonymous,
    /// A user of the password file, or the common name of a verified client certificate.
    User(String),
}

impl Identity {
    /// The user name the ACL knows the client by; `None` for anonymous clients.
    pub fn username(&self) -> Option<&str> {
        match self {
            Identity::Anonymous => None,
            Identity::User(name) => Some(name),
        }
    }
}

/// Failures loading the auth files or editing a password file. Messages name the file, and
/// the line where there is one.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("password file {}, line {line}: {reason}", path.display())]
    PasswordFile {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error("ACL file {}, line {line}: {reason}", path.display())]
    AclFile {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error("invalid user name {name:?}: {reason}")]
    InvalidUserName { name: String, reason: &'static str },

    #[error("user {name:?} is not in {}", path.display())]
    NoSuchUser { path: PathBuf, name: String },

    #[error("the system random number generator failed")]
    Random,
}

/// Decides who a connecting client is. Built once at start; shared read-only.
#[derive(Debug, Clone)]
pub struct Authenticator {
    /// `None`: no password file is configured.
    users: Option<PasswordFile>,
    anonymous_allowed: bool,
    /// Hashed against when the user is unknown, so that an unknown user takes about as long
    /// to refuse as a wrong password.
    decoy: PasswordHash,
}

impl Authenticator {
    /// Reads `auth.password_file` if set. `anonymous_allowed` is
    /// [`Config::anonymous_allowed`](crate::config::Config::anonymous_allowed).
    pub fn load(settings: &AuthSettings, anonymous_allowed: bool) -> Result<Self, AuthError> {
        let users = settings
            .password_file
            .as_deref()
            .map(PasswordFile::load)
            .transpose()?;
        Ok(Authenticator::new(users, anonymous_allowed))
    }

    /// From an already parsed password file (`None`: no password file).
    pub fn new(users: Option<PasswordFile>, anonymous_allowed: bool) -> Self {
        Authenticator {
            users,
            anonymous_allowed,
            decoy: PasswordHash::Pbkdf2Sha512 {
                iterations: DEFAULT_ITERATIONS,
                salt: vec![0; password::SALT_LEN],
                hash: [0; 64],
            },
        }
    }

    pub fn is_anonymous_allowed(&self) -> bool {
        self.anonymous_allowed
    }

    /// Decides a CONNECT.
    ///
    /// - `cert_identity`, the common name of a client certificate the TLS layer verified,
    ///   wins: the client is that user, whatever CONNECT's user name and password say
    ///   (mosquitto's `use_identity_as_username`).
    /// - A user name is checked against the password file: a match is that user; an unknown
    ///   user, a wrong or missing password, or no password file at all (nothing to check a
    ///   user name against) is `BadUserNameOrPassword` (v3.1.1 return code 4) — except that
    ///   with no password file and anonymous access on, the client is let in as
    ///   [`Identity::Anonymous`], its unchecked user name ignored.
    /// - No user name: [`Identity::Anonymous`] if anonymous access is on, otherwise
    ///   `NotAuthorized` (v3.1.1 return code 5). A password without a user name (v5 only)
    ///   is ignored.
    ///
    /// CPU-bound for the length of one PBKDF2 (about 0.1 ms at 101 iterations); with files
    /// using large iteration counts, call it from a blocking-capable thread.
    pub fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        cert_identity: Option<&str>,
    ) -> Result<Identity, ReasonCode> {
        if let Some(name) = cert_identity {
            return Ok(Identity::User(name.to_string()));
        }
        let Some(name) = username else {
            return self.anonymous();
        };
        let Some(users) = &self.users else {
            return if self.anonymous_allowed {
                Ok(Identity::Anonymous)
            } else {
                Err(ReasonCode::BadUserNameOrPassword)
            };
        };
        let attempt = password.unwrap_or_default();
        let verified = match users.get(name) {
            Some(hash) => hash.verify(attempt) && password.is_some(),
            None => {
                let _ = self.decoy.verify(attempt);
                false
            }
        };
        if verified {
            Ok(Identity::User(name.to_string()))
        } else {
            Err(ReasonCode::BadUserNameOrPassword)
        }
    }

    fn anonymous(&self) -> Result<Identity, ReasonCode> {
        if self.anonymous_allowed {
            Ok(Identity::Anonymous)
        } else {
            Err(ReasonCode::NotAuthorized)
        }
    }
}

/// The subject common name of a DER-encoded X.509 certificate (the first one if there are
/// several), for [`Authenticator::authenticate`]'s `cert_identity`. Only pass certificates
/// the TLS layer has verified against `listeners.tls.client_ca`.
pub fn certificate_common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const ALICE: &str = "alice:$7$101$r5hJ01YX2tTF162V$2DtQcTRPoeYNWMWWe6WdBMCPx23wwbfxKoT7NHtBQlFMGXcH15zyaiK1+GWiFPBnqW9lkcXfb6kjPXuDZ+sFmw==\n";

    fn with_file(anonymous: bool) -> Authenticator {
        let users = PasswordFile::parse(ALICE, Path::new("pw")).unwrap();
        Authenticator::new(Some(users), anonymous)
    }

    #[test]
    fn a_password_file_user_is_that_user() {
        let auth = with_file(false);
        assert_eq!(
            auth.authenticate(Some("alice"), Some(b"correct horse"), None),
            Ok(Identity::User("alice".to_string()))
        );
    }

    #[test]
    fn wrong_unknown_or_missing_passwords_are_bad_credentials() {
        for anonymous in [false, true] {
            let auth = with_file(anonymous);
            for (user, pass) in [
                ("alice", Some(&b"wrong"[..])),
                ("alice", None),
                ("alice", Some(&b""[..])),
                ("mallory", Some(&b"correct horse"[..])),
            ] {
                assert_eq!(
                    auth.authenticate(Some(user), pass, None),
                    Err(ReasonCode::BadUserNameOrPassword),
                    "{user} {pass:?} anonymous={anonymous}"
                );
            }
        }
    }

    #[test]
    fn no_user_name_is_anonymous_if_allowed() {
        assert_eq!(
            with_file(true).authenticate(None, None, None),
            Ok(Identity::Anonymous)
        );
        assert_eq!(
            with_file(false).authenticate(None, None, None),
            Err(ReasonCode::NotAuthorized)
        );
        assert_eq!(
            with_file(false).authenticate(None, Some(b"correct horse"), None),
            Err(ReasonCode::NotAuthorized)
        );
    }

    #[test]
    fn without_a_password_file_user_names_are_not_identities() {
        let open = Authenticator::new(None, true);
        assert_eq!(
            open.authenticate(Some("alice"), Some(b"x"), None),
            Ok(Identity::Anonymous)
        );
        let closed = Authenticator::new(None, false);
        assert_eq!(
            closed.authenticate(Some("alice"), Some(b"x"), None),
            Err(ReasonCode::BadUserNameOrPassword)
        );
        assert_eq!(
            closed.authenticate(None, None, None),
            Err(ReasonCode::NotAuthorized)
        );
    }

    #[test]
    fn a_verified_certificate_names_the_user() {
        for auth in [with_file(false), Authenticator::new(None, false)] {
            assert_eq!(
                auth.authenticate(Some("alice"), Some(b"wrong"), Some("device-7")),
                Ok(Identity::User("device-7".to_string()))
            );
            assert_eq!(
                auth.authenticate(None, None, Some("device-7")),
                Ok(Identity::User("device-7".to_string()))
            );
        }
    }

    #[test]
    fn common_name_from_a_generated_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "twinmq");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sensor-42");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            certificate_common_name(cert.der()).as_deref(),
            Some("sensor-42")
        );
        assert_eq!(certificate_common_name(b"not a certificate"), None);
    }

    #[test]
    fn identity_username() {
        assert_eq!(Identity::Anonymous.username(), None);
        assert_eq!(Identity::User("u".into()).username(), Some("u"));
    }
}
