//! The auth files as the server will load them, from `auth.*` settings, and the decisions a
//! connection makes with them: CONNECT, then PUBLISH, SUBSCRIBE and each delivery.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use twinmq::broker::auth::{Acl, Action, AuthError, Authenticator, Identity};
use twinmq::config::{AuthSettings, Config, Overrides};
use twinmq::protocol::ReasonCode;

/// `mosquitto_passwd -b pw alice 'correct horse'` and `-b pw bob hunter2` (mosquitto 2.0.11).
const PASSWORDS: &str = "\
alice:$7$101$r5hJ01YX2tTF162V$2DtQcTRPoeYNWMWWe6WdBMCPx23wwbfxKoT7NHtBQlFMGXcH15zyaiK1+GWiFPBnqW9lkcXfb6kjPXuDZ+sFmw==
bob:$7$101$4uk2KmBHt/9WLKKb$emtfF5U6ilwdwTWcYTpGsLE01DMOn8t9EXVPLHEy+1Er7GFo5NV5KxcKylb7sKvPxSh6r9ZXpLXquYyXD+uo7w==
";

const ACL: &str = "\
# Anonymous clients may only read the public tree.
topic read public/#

user alice
topic readwrite home/#
topic deny home/vault/#

user bob
topic read home/lights/+

# Every client: its own inbox, by client identifier; its own tree, by user name.
pattern readwrite inbox/%c/#
pattern write users/%u/status
";

#[test]
fn a_connection_from_connect_to_delivery() {
    let dir = temp_dir("flow");
    let config = config_with(&dir, Some(PASSWORDS), Some(ACL), true);
    let auth = Authenticator::load(&config.auth, config.anonymous_allowed()).unwrap();
    let acl = Acl::from_settings(&config.auth).unwrap();

    // CONNECT
    let alice = auth
        .authenticate(Some("alice"), Some(b"correct horse"), None)
        .unwrap();
    assert_eq!(alice, Identity::User("alice".into()));
    let alice_acl = acl.for_client(&alice, "alice-phone");

    // PUBLISH
    assert!(alice_acl.check(Action::Publish, "home/kitchen/light"));
    assert!(!alice_acl.check(Action::Publish, "home/vault/door"));
    assert!(alice_acl.check(Action::Publish, "inbox/alice-phone/x"));
    assert!(alice_acl.check(Action::Publish, "users/alice/status"));
    assert!(!alice_acl.check(Action::Publish, "users/bob/status"));
    assert!(!alice_acl.check(Action::Publish, "public/news"));

    // SUBSCRIBE, then each delivery
    assert!(alice_acl.check(Action::Subscribe, "home/#"));
    assert!(alice_acl.check(Action::Receive, "home/kitchen/light"));
    assert!(!alice_acl.check(Action::Receive, "home/vault/door"));
    assert!(!alice_acl.check(Action::Subscribe, "home/vault/+"));
    assert!(!alice_acl.check(Action::Subscribe, "public/#"));

    let bob = auth
        .authenticate(Some("bob"), Some(b"hunter2"), None)
        .unwrap();
    let bob_acl = acl.for_client(&bob, "b1");
    assert!(bob_acl.check(Action::Subscribe, "home/#"));
    assert!(bob_acl.check(Action::Receive, "home/lights/porch"));
    assert!(!bob_acl.check(Action::Receive, "home/kitchen/light"));
    assert!(!bob_acl.check(Action::Publish, "home/lights/porch"));

    let guest = auth.authenticate(None, None, None).unwrap();
    assert_eq!(guest, Identity::Anonymous);
    let guest_acl = acl.for_client(&guest, "g1");
    assert!(guest_acl.check(Action::Receive, "public/news"));
    assert!(!guest_acl.check(Action::Publish, "public/news"));
    assert!(guest_acl.check(Action::Publish, "inbox/g1/hello"));
    assert!(!guest_acl.check(Action::Publish, "users//status"));

    assert_eq!(
        auth.authenticate(Some("alice"), Some(b"hunter2"), None),
        Err(ReasonCode::BadUserNameOrPassword)
    );
}

#[test]
fn without_files_everything_is_allowed_and_anonymous_follows_the_config() {
    let dir = temp_dir("none");
    let config = config_with(&dir, None, None, false);
    let auth = Authenticator::load(&config.auth, config.anonymous_allowed()).unwrap();
    assert!(!auth.is_anonymous_allowed());
    assert_eq!(
        auth.authenticate(None, None, None),
        Err(ReasonCode::NotAuthorized)
    );
    assert_eq!(
        auth.authenticate(None, None, Some("device-1")),
        Ok(Identity::User("device-1".into()))
    );

    let acl = Acl::from_settings(&config.auth).unwrap();
    assert!(acl.is_allow_all());
    assert!(acl.check(&Identity::Anonymous, "c", Action::Publish, "$SYS/x"));

    // Loopback-only defaults: anonymous allowed when the key is unset.
    let defaults = Config::load(None, &Overrides::new()).unwrap();
    let auth = Authenticator::load(&defaults.auth, defaults.anonymous_allowed()).unwrap();
    assert!(auth.is_anonymous_allowed());
}

#[test]
fn load_errors_name_the_file_and_the_line() {
    let dir = temp_dir("errors");

    let pw = dir.join("passwords");
    std::fs::write(
        &pw,
        format!("{PASSWORDS}\n# a comment\nmallory:plaintext\n"),
    )
    .unwrap();
    let settings = AuthSettings {
        allow_anonymous: None,
        password_file: Some(pw.clone()),
        acl_file: None,
    };
    let err = Authenticator::load(&settings, false).unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains(&pw.display().to_string()), "{shown}");
    assert!(shown.contains("line 5"), "{shown}");
    assert!(shown.contains("mallory"), "{shown}");

    let acl = dir.join("acl");
    std::fs::write(&acl, "user alice\ntopic read a/#\ntopic raed b\n").unwrap();
    let err = Acl::load(&acl).unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains(&acl.display().to_string()), "{shown}");
    assert!(shown.contains("line 3"), "{shown}");
    assert!(shown.contains("\"raed\""), "{shown}");

    let missing = dir.join("absent");
    let err = Acl::load(&missing).unwrap_err();
    assert!(matches!(err, AuthError::Read { ref path, .. } if path == &missing));
    assert!(err.to_string().contains("absent"), "{err}");
    let settings = AuthSettings {
        allow_anonymous: None,
        password_file: Some(missing.clone()),
        acl_file: None,
    };
    let err = Authenticator::load(&settings, true).unwrap_err();
    assert!(matches!(err, AuthError::Read { ref path, .. } if path == &missing));
}

/// The configuration as the server would load it, with the files written to `dir`.
fn config_with(dir: &Path, passwords: Option<&str>, acl: Option<&str>, anonymous: bool) -> Config {
    let mut assignments = vec![format!("auth.allow_anonymous={anonymous}")];
    if let Some(text) = passwords {
        let path = dir.join("passwords");
        std::fs::write(&path, text).unwrap();
        assignments.push(format!("auth.password_file={}", path.display()));
    }
    if let Some(text) = acl {
        let path = dir.join("acl");
        std::fs::write(&path, text).unwrap();
        assignments.push(format!("auth.acl_file={}", path.display()));
    }
    let overrides = Overrides::from_assignments(assignments).unwrap();
    Config::load(None, &overrides).unwrap()
}

fn temp_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "twinmq-auth-files-{tag}-{}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
