//! Loading the configuration in layers, as `twinmq serve --config FILE` does. The
//! environment is injected so these tests never read or race on the process's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use twinmq::config::{
    generate_cert_set, Config, ConfigError, Loader, Origin, Overrides, DEFAULT_CONFIG_TOML,
};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twinmq-config-load-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("temp file");
    path
}

fn shipped_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/twinmq.toml")
}

#[test]
fn defaults_load_and_equal_the_shipped_file() {
    let on_disk = std::fs::read_to_string(shipped_file()).expect("config/twinmq.toml");
    assert_eq!(
        on_disk, DEFAULT_CONFIG_TOML,
        "the embedded defaults are the shipped file"
    );

    let defaults = Config::defaults().expect("defaults load");
    let from_file = Loader::new()
        .without_env()
        .file(shipped_file())
        .load()
        .expect("shipped file loads");
    assert_eq!(defaults, from_file);
    assert_eq!(defaults.listeners.tcp.bind.to_string(), "127.0.0.1:1883");
    assert_eq!(defaults.listeners.tls.bind.to_string(), "127.0.0.1:8883");
    assert_eq!(defaults.listeners.quic.bind.to_string(), "127.0.0.1:14567");
    assert_eq!(defaults.data_dir, PathBuf::from("./twinmq-data"));
}

#[test]
fn a_file_overrides_the_defaults_key_by_key() {
    let dir = temp_dir("file");
    let file = write(
        &dir,
        "twinmq.toml",
        r#"
data_dir = "/srv/twinmq"
[listeners.quic]
enabled = false
congestion = "bbr"
[mqtt]
max_inflight = 100
connect_timeout = 5
[log]
format = "json"
"#,
    );
    let config = Loader::new()
        .without_env()
        .file(&file)
        .load()
        .expect("loads");
    assert_eq!(config.data_dir, PathBuf::from("/srv/twinmq"));
    assert!(!config.listeners.quic.enabled);
    assert_eq!(
        config.listeners.quic.congestion,
        twinmq::config::Congestion::Bbr
    );
    assert_eq!(config.mqtt.max_inflight, 100);
    assert_eq!(config.mqtt.connect_timeout, Duration::from_secs(5));
    assert_eq!(config.log.format, twinmq::config::LogFormat::Json);
    // Untouched keys keep their defaults.
    assert!(config.listeners.tls.enabled);
    assert_eq!(config.mqtt.receive_maximum, 1024);
}

#[test]
fn the_environment_overrides_the_file_and_overrides_win() {
    let dir = temp_dir("env");
    let file = write(
        &dir,
        "twinmq.toml",
        "[listeners.tls]\nbind = \"127.0.0.1:8000\"\n[mqtt]\nmax_inflight = 100\n",
    );
    let config = Loader::new()
        .file(&file)
        .env_vars([
            ("TWINMQ_LISTENERS__TLS__BIND", "127.0.0.1:9999"),
            ("TWINMQ_MQTT__MAX_INFLIGHT", "200"),
        ])
        .overrides(Overrides::from_assignments(["mqtt.max_inflight=300"]).expect("ok"))
        .load()
        .expect("loads");
    assert_eq!(config.listeners.tls.bind.to_string(), "127.0.0.1:9999");
    assert_eq!(config.mqtt.max_inflight, 300);
}

#[test]
fn a_bad_value_names_key_value_and_file() {
    let dir = temp_dir("bad");
    let file = write(&dir, "twinmq.toml", "[mqtt]\nmax_inflight = \"abc\"\n");
    let err = Config::load(Some(&file), &Overrides::new());
    // Config::load reads the process environment; the message is the same either way.
    let message = err.expect_err("refused").to_string();
    assert_eq!(
        message,
        format!(
            "invalid value \"abc\" for mqtt.max_inflight in {}: expected u16",
            file.display()
        )
    );
}

#[test]
fn an_unknown_key_is_reported() {
    let dir = temp_dir("unknown");
    let file = write(
        &dir,
        "twinmq.toml",
        "[listeners.tls]\nrequire_client_certs = true\n",
    );
    let err = Loader::new()
        .without_env()
        .file(&file)
        .load()
        .expect_err("refused");
    match &err {
        ConfigError::UnknownKey { key, origin, .. } => {
            assert_eq!(key, "listeners.tls.require_client_certs");
            assert_eq!(origin, &Origin::File(file.clone()));
        }
        other => panic!("unexpected error {other}"),
    }
    let message = err.to_string();
    assert!(message.contains("require_client_cert"), "{message}");
    assert!(message.contains(&file.display().to_string()), "{message}");
}

#[test]
fn a_public_bind_needs_an_explicit_anonymous_decision() {
    let dir = temp_dir("public");
    let file = write(
        &dir,
        "twinmq.toml",
        "[listeners.quic]\nbind = \"0.0.0.0:14567\"\n",
    );
    let err = Loader::new()
        .without_env()
        .file(&file)
        .load()
        .expect_err("refused");
    let message = err.to_string();
    assert!(message.contains("auth.allow_anonymous"), "{message}");
    assert!(message.contains("listeners.quic.bind"), "{message}");
    assert!(message.contains(&file.display().to_string()), "{message}");

    let opted_in = write(
        &dir,
        "opted-in.toml",
        "[listeners.quic]\nbind = \"0.0.0.0:14567\"\n[auth]\nallow_anonymous = true\n",
    );
    let config = Loader::new()
        .without_env()
        .file(&opted_in)
        .load()
        .expect("opt-in");
    assert!(config.anonymous_allowed());

    let ipv6 = write(&dir, "v6.toml", "[listeners.tcp]\nbind = \"[::]:1883\"\n");
    assert!(matches!(
        Loader::new().without_env().file(&ipv6).load(),
        Err(ConfigError::AnonymousNotLoopback { .. })
    ));
    let loopback6 = write(&dir, "lo6.toml", "[listeners.tcp]\nbind = \"[::1]:1883\"\n");
    let config = Loader::new()
        .without_env()
        .file(&loopback6)
        .load()
        .expect("::1");
    assert!(config.anonymous_allowed());
}

#[test]
fn check_loads_the_named_certificates() {
    let dir = temp_dir("check");
    let set = generate_cert_set(&dir.join("pki"), &[], &["alice".to_string()]).expect("certs");
    let file = write(
        &dir,
        "twinmq.toml",
        &format!(
            "data_dir = {:?}\n[listeners.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
            dir.join("data"),
            set.server_cert,
            set.server_key,
            set.ca_cert
        ),
    );
    let report = Config::check(Some(&file), &Overrides::new()).expect("valid");
    let text = report.to_string();
    assert!(text.starts_with("configuration is valid"), "{text}");
    assert!(
        text.contains("listeners.tls certificate and key load and match"),
        "{text}"
    );
    assert!(text.contains("listeners.quic"), "{text}");
    assert!(!dir.join("data").exists(), "check writes nothing");

    // The CA key is not the server key: check names both files.
    let mismatched = write(
        &dir,
        "mismatched.toml",
        &format!(
            "data_dir = {:?}\n[listeners.tls]\ncert = {:?}\nkey = {:?}\n",
            dir.join("data"),
            set.server_cert,
            set.ca_key
        ),
    );
    let err = Config::check(Some(&mismatched), &Overrides::new()).expect_err("mismatch");
    assert!(matches!(err, ConfigError::KeyMismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&set.ca_key.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&set.server_cert.display().to_string()),
        "{message}"
    );

    let missing = write(
        &dir,
        "missing.toml",
        &format!(
            "[listeners.tls]\ncert = {:?}\nkey = {:?}\n",
            dir.join("nope.pem"),
            set.server_key
        ),
    );
    let err = Config::check(Some(&missing), &Overrides::new()).expect_err("missing");
    assert!(err.to_string().contains("nope.pem"), "{err}");
}

#[test]
fn check_notes_development_certificates() {
    let dir = temp_dir("check-dev");
    let report = Config::check(
        None,
        &Overrides::new()
            .set("data_dir", dir.join("data").display().to_string())
            .expect("override"),
    )
    .expect("valid");
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("development certificates will be generated")),
        "{report}"
    );
}
