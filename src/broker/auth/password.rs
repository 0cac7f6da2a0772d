//! Password files in mosquitto's format, so that files made with `mosquitto_passwd` work
//! unchanged and `twinmq passwd` files work in mosquitto.
//!
//! One user per line, `username:hash`; blank lines and lines starting with `#` are skipped.
//! Two hash formats, each with base64 (standard alphabet, padded) salt and hash:
//!
//! ```text
//! alice:$7$101$<salt>$<hash>    PBKDF2-HMAC-SHA512, 101 iterations, 64-byte hash
//!                               (mosquitto 2.x; what `twinmq passwd` writes)
//! carol:$6$<salt>$<hash>        SHA-512 over the password bytes followed by the salt bytes
//!                               (mosquitto 1.x, `mosquitto_passwd -H sha512`)
//! ```
//!
//! mosquitto writes 12-byte salts; any non-empty salt is accepted here. The password is the
//! CONNECT password's bytes as sent [MQTT-3.1.3.5].

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use ring::rand::SecureRandom;
use ring::{digest, pbkdf2};

use super::AuthError;

/// mosquitto 2.x's default PBKDF2 iteration count (`PW_DEFAULT_ITERATIONS`), which
/// `mosquitto_passwd` and `twinmq passwd` write unless told otherwise.
pub const DEFAULT_ITERATIONS: NonZeroU32 = match NonZeroU32::new(101) {
    Some(n) => n,
    None => unreachable!(),
};

/// The salt length mosquitto writes.
pub const SALT_LEN: usize = 12;

/// Both formats store a SHA-512-sized hash.
const HASH_LEN: usize = 64;

/// One user's stored password hash.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$6$salt$hash`: SHA-512(password ‖ salt).
    Sha512 { salt: Vec<u8>, hash: [u8; HASH_LEN] },
    /// `$7$iterations$salt$hash`: PBKDF2-HMAC-SHA512(password, salt, iterations), 64 bytes.
    Pbkdf2Sha512 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: [u8; HASH_LEN],
    },
}

impl PasswordHash {
    /// Parses the part of a password-file line after `username:`. The error says what is
    /// wrong, without the file and line (the caller adds those).
    pub fn parse(s: &str) -> Result<PasswordHash, String> {
        let mut fields = s.split('$');
        if fields.next() != Some("") {
            return Err(
                "the hash does not start with `$` (plain-text passwords are not \
                        accepted; hash them with `twinmq passwd`)"
                    .to_string(),
            );
        }
        let kind = fields.next().unwrap_or_default();
        let parsed = match kind {
            "6" => {
                let salt = decode_salt(fields.next())?;
                let hash = decode_hash(fields.next())?;
                PasswordHash::Sha512 { salt, hash }
            }
            "7" => {
                let iterations = fields
                    .next()
                    .and_then(|n| n.parse::<NonZeroU32>().ok())
                    .ok_or_else(|| "missing or invalid iteration count after `$7$`".to_string())?;
                let salt = decode_salt(fields.next())?;
                let hash = decode_hash(fields.next())?;
                PasswordHash::Pbkdf2Sha512 {
                    iterations,
                    salt,
                    hash,
                }
            }
            other => {
                return Err(format!(
                    "unsupported hash type `${other}$`: expected `$7$` (PBKDF2-SHA512) or \
                     `$6$` (SHA-512)"
                ))
            }
        };
        if fields.next().is_some() {
            return Err("unexpected `$` field after the hash".to_string());
        }
        Ok(parsed)
    }

    /// A new `$7$` hash of `password` with a fresh random salt of [`SALT_LEN`] bytes.
    pub fn new_pbkdf2(
        password: &[u8],
        iterations: NonZeroU32,
        rng: &dyn SecureRandom,
    ) -> Result<PasswordHash, AuthError> {
        let mut salt = vec![0; SALT_LEN];
        rng.fill(&mut salt).map_err(|_| AuthError::Random)?;
        let mut hash = [0; HASH_LEN];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA512,
            iterations,
            &salt,
            password,
            &mut hash,
        );
        Ok(PasswordHash::Pbkdf2Sha512 {
            iterations,
            salt,
            hash,
        })
    }

    /// Whether `password` hashes to this hash. The comparison takes the same time wherever
    /// the hashes differ.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Sha512 { salt, hash } => {
                let mut ctx = digest::Context::new(&digest::SHA512);
                ctx.update(password);
                ctx.update(salt);
                constant_time_eq(ctx.finish().as_ref(), hash)
            }
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => pbkdf2::verify(
                pbkdf2::PBKDF2_HMAC_SHA512,
                *iterations,
                salt,
                password,
                hash,
            )
            .is_ok(),
        }
    }
}

/// The form written to a password file, after `username:`.
impl fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Sha512 { salt, hash } => {
                write!(f, "$6${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
            }
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${iterations}${}${}",
                STANDARD.encode(salt),
                STANDARD.encode(hash)
            ),
        }
    }
}

/// Never prints the hash or salt.
impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Sha512 { .. } => f.write_str("PasswordHash::Sha512(..)"),
            PasswordHash::Pbkdf2Sha512 { iterations, .. } => {
                write!(f, "PasswordHash::Pbkdf2Sha512({iterations} iterations, ..)")
            }
        }
    }
}

/// A parsed password file: user name to hash.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    users: HashMap<String, PasswordHash>,
}

impl PasswordFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<PasswordFile, AuthError> {
        let text = read(path)?;
        PasswordFile::parse(&text, path)
    }

    /// Parses password-file text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<PasswordFile, AuthError> {
        let mut users = HashMap::new();
        let mut first_line = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let error = |reason: String| AuthError::PasswordFile {
                path: path.to_path_buf(),
                line,
                reason,
            };
            let Some(entry) = parse_line(raw) else {
                continue;
            };
            let (name, hash) = entry.map_err(&error)?;
            let hash = PasswordHash::parse(hash)
                .map_err(|reason| error(format!("user {name:?}: {reason}")))?;
            if let Some(previous) = first_line.insert(name.to_string(), line) {
                return Err(error(format!(
                    "user {name:?} is already defined on line {previous}"
                )));
            }
            users.insert(name.to_string(), hash);
        }
        Ok(PasswordFile { users })
    }

    pub fn get(&self, username: &str) -> Option<&PasswordHash> {
        self.users.get(username)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Checks a user name for a password file: non-empty, at most 65535 bytes (an MQTT string),
/// no `:` and no control characters (the rules of `mosquitto_passwd`).
pub fn validate_username(name: &str) -> Result<(), AuthError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > 65535 {
        "it is longer than 65535 bytes"
    } else if name.contains(':') {
        "it contains `:`"
    } else if name.chars().any(char::is_control) {
        "it contains a control character"
    } else if name.trim() != name {
        "it starts or ends with white space"
    } else {
        return Ok(());
    };
    Err(AuthError::InvalidUserName {
        name: name.to_string(),
        reason,
    })
}

/// `text` with `username`'s line replaced by `username:hash`, or the line appended if the
/// user is new. Every other line, comments included, is kept as it was.
pub fn upsert_user(text: &str, username: &str, hash: &PasswordHash) -> String {
    let new_line = format!("{username}:{hash}");
    let mut out = String::with_capacity(text.len() + new_line.len() + 1);
    let mut replaced = false;
    for raw in text.lines() {
        if line_user(raw) == Some(username) {
            if !replaced {
                out.push_str(&new_line);
                out.push('\n');
                replaced = true;
            }
        } else {
            out.push_str(raw);
            out.push('\n');
        }
    }
    if !replaced {
        out.push_str(&new_line);
        out.push('\n');
    }
    out
}

/// `text` without `username`'s line; `None` if the user is not there.
pub fn remove_user(text: &str, username: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut found = false;
    for raw in text.lines() {
        if line_user(raw) == Some(username) {
            found = true;
        } else {
            out.push_str(raw);
            out.push('\n');
        }
    }
    found.then_some(out)
}

/// Sets `username`'s password in the file at `path` (created if absent, or replaced when
/// `create` is set), with a fresh salt. The file is rewritten through a temporary file
/// beside it and a rename, keeping its permissions; a new file is readable by its owner
/// only.
pub fn set_password(
    path: &Path,
    username: &str,
    password: &[u8],
    iterations: NonZeroU32,
    create: bool,
    rng: &dyn SecureRandom,
) -> Result<(), AuthError> {
    validate_username(username)?;
    let existing = if create { None } else { read_optional(path)? };
    if let Some(text) = &existing {
        // Refuse to rewrite a file we could not load: its other lines would be kept as
        // they are and the broker would still refuse it.
        PasswordFile::parse(text, path)?;
    }
    let hash = PasswordHash::new_pbkdf2(password, iterations, rng)?;
    let text = upsert_user(existing.as_deref().unwrap_or_default(), username, &hash);
    write_replacing(path, &text)
}

/// Removes `username` from the file at `path`.
pub fn delete_user(path: &Path, username: &str) -> Result<(), AuthError> {
    let text = read(path)?;
    let text = remove_user(&text, username).ok_or_else(|| AuthError::NoSuchUser {
        path: path.to_path_buf(),
        name: username.to_string(),
    })?;
    write_replacing(path, &text)
}

/// Splits a line into user name and hash; `None` for blank and comment lines.
fn parse_line(raw: &str) -> Option<Result<(&str, &str), String>> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let Some((name, hash)) = line.split_once(':') else {
        return Some(Err("expected `username:hash`, found no `:`".to_string()));
    };
    let (name, hash) = (name.trim(), hash.trim());
    if name.is_empty() {
        return Some(Err("empty user name before `:`".to_string()));
    }
    if hash.is_empty() {
        return Some(Err(format!("user {name:?} has no password hash")));
    }
    Some(Ok((name, hash)))
}

/// The user a line defines, if it is a user line at all.
fn line_user(raw: &str) -> Option<&str> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    line.split_once(':').map(|(name, _)| name.trim())
}

fn decode_salt(field: Option<&str>) -> Result<Vec<u8>, String> {
    let field = field.ok_or_else(|| "missing salt".to_string())?;
    let salt = LENIENT
        .decode(field)
        .map_err(|err| format!("invalid base64 in the salt: {err}"))?;
    if salt.is_empty() {
        return Err("empty salt".to_string());
    }
    Ok(salt)
}

fn decode_hash(field: Option<&str>) -> Result<[u8; HASH_LEN], String> {
    let field = field.ok_or_else(|| "missing hash".to_string())?;
    let bytes = LENIENT
        .decode(field)
        .map_err(|err| format!("invalid base64 in the hash: {err}"))?;
    <[u8; HASH_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| format!("the hash is {} bytes, expected {HASH_LEN}", bytes.len()))
}

/// Standard alphabet, padding optional: OpenSSL's decoder (which mosquitto uses) does not
/// insist on it either.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Equal-length comparison whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8; HASH_LEN]) -> bool {
    if a.len() != HASH_LEN {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}

pub(super) fn read(path: &Path) -> Result<String, AuthError> {
    fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, AuthError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AuthError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `text` to a temporary file beside `path`, then renames it over `path`, so a reader
/// sees the old file or the new one and never half of one.
fn write_replacing(path: &Path, text: &str) -> Result<(), AuthError> {
    let write_error = |source| AuthError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = temporary_path(path);
    let result = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        if let Ok(meta) = fs::metadata(path) {
            fs::set_permissions(&tmp, meta.permissions())?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(write_error)
}

fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;

    use super::*;

    /// Made with mosquitto 2.0.11: `mosquitto_passwd -c -b pw alice 'correct horse'`.
    const ALICE_PBKDF2: &str = "$7$101$r5hJ01YX2tTF162V$2DtQcTRPoeYNWMWWe6WdBMCPx23wwbfxKoT7NHtBQlFMGXcH15zyaiK1+GWiFPBnqW9lkcXfb6kjPXuDZ+sFmw==";
    /// `mosquitto_passwd -H sha512 -b pw carol s3cret` (mosquitto 2.0.11).
    const CAROL_SHA512: &str = "$6$3hdxIlP/L2qfi7wK$eg+6J9FWxy4bmejfvZEwerhSiUNkbmmpR/Wp1QubEfU1Tbhr8L+z+5tQjGCsCpYvdmdR9OpcQYROtyRAfSanIA==";
    /// `mosquitto_passwd -I 1000 -b pw dave 'pässwörd'` (mosquitto 2.0.11): UTF-8 bytes.
    const DAVE_PBKDF2_1000: &str = "$7$1000$9BHD8dglajwk96cx$B6rCiJScq4ZBN7vNTs1Wm//x6qy4h/rogPj/SvZ05mlSfzTttG+tKBgc0OOx7Zm9iOYmfWX9R98/wNAfUp4cEQ==";

    #[test]
    fn accepts_the_mosquitto_pbkdf2_known_answer() {
        let hash = PasswordHash::parse(ALICE_PBKDF2).unwrap();
        assert!(matches!(
            hash,
            PasswordHash::Pbkdf2Sha512 { iterations, ref salt, .. }
                if iterations.get() == 101 && salt.len() == SALT_LEN
        ));
        assert!(hash.verify(b"correct horse"));
        assert!(!hash.verify(b"correct horse "));
        assert!(!hash.verify(b""));
    }

    #[test]
    fn accepts_the_mosquitto_sha512_known_answer() {
        let hash = PasswordHash::parse(CAROL_SHA512).unwrap();
        assert!(matches!(hash, PasswordHash::Sha512 { .. }));
        assert!(hash.verify(b"s3cret"));
        assert!(!hash.verify(b"s3cre"));
    }

    #[test]
    fn honours_the_iteration_count_and_utf8_bytes() {
        let hash = PasswordHash::parse(DAVE_PBKDF2_1000).unwrap();
        assert!(hash.verify("pässwörd".as_bytes()));
        assert!(!hash.verify(b"passwort"));
    }

    #[test]
    fn round_trips_through_display() {
        for s in [ALICE_PBKDF2, CAROL_SHA512, DAVE_PBKDF2_1000] {
            assert_eq!(PasswordHash::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn a_new_hash_verifies_and_is_salted() {
        let rng = SystemRandom::new();
        let a = PasswordHash::new_pbkdf2(b"pw", DEFAULT_ITERATIONS, &rng).unwrap();
        let b = PasswordHash::new_pbkdf2(b"pw", DEFAULT_ITERATIONS, &rng).unwrap();
        assert!(a.verify(b"pw"));
        assert!(!a.verify(b"pW"));
        assert_ne!(a, b, "two hashes of one password share a salt");
        assert!(a.to_string().starts_with("$7$101$"));
        assert_eq!(PasswordHash::parse(&a.to_string()).unwrap(), a);
    }

    #[test]
    fn debug_does_not_print_the_hash() {
        let hash = PasswordHash::parse(ALICE_PBKDF2).unwrap();
        let shown = format!("{hash:?}");
        assert!(!shown.contains("r5hJ01YX"), "{shown}");
    }

    #[test]
    fn rejects_malformed_hashes_with_a_reason() {
        for (input, expect) in [
            ("secret", "plain-text"),
            ("$5$abc$def", "unsupported hash type"),
            ("$7$0$r5hJ01YX2tTF162V$AAAA", "iteration count"),
            ("$7$x$r5hJ01YX2tTF162V$AAAA", "iteration count"),
            ("$7$101$r5hJ01YX2tTF162V", "missing hash"),
            ("$7$101$!!!$AAAA", "base64 in the salt"),
            ("$6$r5hJ01YX2tTF162V$AAAA", "3 bytes, expected 64"),
            ("$6$$AAAA", "empty salt"),
        ] {
            let err = PasswordHash::parse(input).unwrap_err();
            assert!(err.contains(expect), "{input}: {err}");
        }
    }

    #[test]
    fn parses_a_file_with_comments_blank_lines_and_crlf() {
        let text =
            format!("# users\r\n\r\nalice:{ALICE_PBKDF2}\r\n  carol : {CAROL_SHA512}  \n\n# end\n");
        let file = PasswordFile::parse(&text, Path::new("pw")).unwrap();
        assert_eq!(file.len(), 2);
        assert!(file.get("alice").unwrap().verify(b"correct horse"));
        assert!(file.get("carol").unwrap().verify(b"s3cret"));
        assert!(file.get("bob").is_none());
    }

    #[test]
    fn load_errors_name_the_file_and_line() {
        let cases = [
            (format!("alice:{ALICE_PBKDF2}\nbob\n"), 2, "no `:`"),
            (format!("# c\n:{ALICE_PBKDF2}\n"), 2, "empty user name"),
            ("alice:\n".to_string(), 1, "no password hash"),
            ("\n\nalice:plain\n".to_string(), 3, "plain-text"),
            (
                format!("alice:{ALICE_PBKDF2}\n#\nalice:{CAROL_SHA512}\n"),
                3,
                "already defined on line 1",
            ),
        ];
        for (text, line, reason) in cases {
            let err = PasswordFile::parse(&text, Path::new("/etc/twinmq/pw")).unwrap_err();
            let shown = err.to_string();
            assert!(
                shown.contains("/etc/twinmq/pw") && shown.contains(&format!("line {line}")),
                "{shown}"
            );
            assert!(shown.contains(reason), "{shown}");
            assert!(
                matches!(err, AuthError::PasswordFile { line: l, .. } if l == line),
                "{err:?}"
            );
        }
    }

    #[test]
    fn upsert_replaces_in_place_and_keeps_other_lines() {
        let hash = PasswordHash::parse(CAROL_SHA512).unwrap();
        let text = "# keep me\nalice:$7$1$AA$AA\nbob:x\n";
        let out = upsert_user(text, "alice", &hash);
        assert_eq!(out, format!("# keep me\nalice:{CAROL_SHA512}\nbob:x\n"));
        let out = upsert_user(text.trim_end(), "dave", &hash);
        assert_eq!(
            out,
            format!("# keep me\nalice:$7$1$AA$AA\nbob:x\ndave:{CAROL_SHA512}\n")
        );
        assert_eq!(upsert_user("", "e", &hash), format!("e:{CAROL_SHA512}\n"));
    }

    #[test]
    fn remove_reports_a_missing_user() {
        assert_eq!(
            remove_user("# c\nalice:h\nbob:h\n", "alice").as_deref(),
            Some("# c\nbob:h\n")
        );
        assert_eq!(remove_user("alice:h\n", "bob"), None);
    }

    #[test]
    fn user_names_follow_mosquitto_passwd_rules() {
        assert!(validate_username("alice").is_ok());
        assert!(validate_username("ünïcode user").is_ok());
        for bad in ["", "a:b", "a\nb", "a\tb", " lead", "trail "] {
            assert!(validate_username(bad).is_err(), "{bad:?}");
        }
    }
}
