//! Loader, validation and mapping tests. The environment is always injected
//! ([`Loader::env_vars`]) so tests never race on the process's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::protocol::QoS;

fn temp_file(tag: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twinmq-config-unit-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{tag}.toml"));
    std::fs::write(&path, contents).expect("temp file is writable");
    path
}

fn load_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Loader::new()
        .env_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .load()
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

#[test]
fn defaults_have_the_documented_values() {
    let config = Config::defaults().expect("defaults load");
    assert_eq!(config.data_dir, PathBuf::from("./twinmq-data"));
    assert_eq!(config.listeners.tcp.bind, addr("127.0.0.1:1883"));
    assert_eq!(config.listeners.tls.bind, addr("127.0.0.1:8883"));
    assert_eq!(config.listeners.quic.bind, addr("127.0.0.1:14567"));
    assert!(config.listeners.tcp.enabled && config.listeners.tls.enabled);
    assert!(config.listeners.quic.enabled);
    assert_eq!(config.listeners.tls.cert, None);
    assert_eq!(config.listeners.quic.alpn, vec!["mqtt".to_string()]);
    assert_eq!(config.listeners.quic.congestion, Congestion::Cubic);
    assert_eq!(config.listeners.quic.socket_receive_buffer, 4 << 20);
    assert!(!config.listeners.quic.enable_0rtt);
    assert_eq!(config.listeners.quic.idle_timeout, None);
    assert_eq!(config.mqtt.max_packet_size, 1 << 20);
    assert_eq!(config.mqtt.max_keepalive, Duration::from_secs(3600));
    assert_eq!(config.mqtt.queue_full_policy, QueueFullPolicy::DropNew);
    assert_eq!(config.storage.durability, Durability::Group);
    assert_eq!(config.storage.full_policy, StoreFullPolicy::Reject);
    assert_eq!(config.auth.allow_anonymous, None);
    assert!(config.anonymous_allowed());
    assert_eq!(config.log.format, LogFormat::Text);
}

#[test]
fn every_layer_overrides_the_one_before() {
    let file = temp_file(
        "layers",
        "[mqtt]\nmax_inflight = 10\nreceive_maximum = 20\ntopic_alias_maximum = 30\n",
    );
    let overrides = Overrides::from_assignments(["mqtt.topic_alias_maximum=33"]).expect("ok");
    let config = Loader::new()
        .file(&file)
        .env_vars([
            ("TWINMQ_MQTT__RECEIVE_MAXIMUM", "22"),
            ("TWINMQ_MQTT__TOPIC_ALIAS_MAXIMUM", "32"),
        ])
        .overrides(overrides)
        .load()
        .expect("loads");
    assert_eq!(config.mqtt.max_inflight, 10, "file over defaults");
    assert_eq!(config.mqtt.receive_maximum, 22, "environment over file");
    assert_eq!(
        config.mqtt.topic_alias_maximum, 33,
        "override over environment"
    );
    assert_eq!(config.mqtt.max_queued_messages, 10_000, "untouched default");
}

#[test]
fn env_keys_nest_on_double_underscore_in_any_case() {
    let config = load_env(&[
        ("TWINMQ_LISTENERS__TLS__BIND", "127.0.0.1:9999"),
        ("twinmq_mqtt__max_inflight", "100"),
        ("TWINMQ_DATA_DIR", "/var/lib/twinmq"),
        ("TWINMQ_LISTENERS__QUIC__ALPN", "[mqtt, mqtt-x]"),
        ("TWINMQ_LISTENERS__QUIC__IDLE_TIMEOUT", "90s"),
        ("UNRELATED", "x"),
    ])
    .expect("loads");
    assert_eq!(config.listeners.tls.bind, addr("127.0.0.1:9999"));
    assert_eq!(config.mqtt.max_inflight, 100);
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/twinmq"));
    assert_eq!(config.listeners.quic.alpn, vec!["mqtt", "mqtt-x"]);
    assert_eq!(
        config.listeners.quic.idle_timeout,
        Some(Duration::from_secs(90))
    );
}

#[test]
fn a_bad_file_value_names_key_value_and_file() {
    let file = temp_file("bad-value", "[mqtt]\nmax_inflight = \"abc\"\n");
    let err = Loader::new()
        .without_env()
        .file(&file)
        .load()
        .expect_err("refused");
    let message = err.to_string();
    assert_eq!(
        message,
        format!(
            "invalid value \"abc\" for mqtt.max_inflight in {}: expected u16",
            file.display()
        )
    );
}

#[test]
fn an_out_of_range_value_names_key_and_value() {
    let file = temp_file("range", "[mqtt]\nmax_inflight = 70000\n");
    let message = Loader::new()
        .without_env()
        .file(&file)
        .load()
        .expect_err("refused")
        .to_string();
    assert!(message.contains("70000"), "{message}");
    assert!(message.contains("mqtt.max_inflight"), "{message}");
}

#[test]
fn a_bad_env_value_names_the_variable() {
    let err = load_env(&[("TWINMQ_MQTT__MAX_INFLIGHT", "lots")]).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "invalid value \"lots\" for mqtt.max_inflight in environment variable \
         TWINMQ_MQTT__MAX_INFLIGHT: expected u16"
    );
}

#[test]
fn a_bad_duration_and_enum_are_explained() {
    let err = load_env(&[("TWINMQ_MQTT__CONNECT_TIMEOUT", "10 parsecs")]).expect_err("refused");
    let message = err.to_string();
    assert!(message.contains("\"10 parsecs\""), "{message}");
    assert!(message.contains("mqtt.connect_timeout"), "{message}");
    assert!(message.contains("duration"), "{message}");

    let err = load_env(&[("TWINMQ_STORAGE__DURABILITY", "fsync")]).expect_err("refused");
    let message = err.to_string();
    assert!(message.contains("storage.durability"), "{message}");
    assert!(
        message.contains("\"sync\", \"group\", \"none\""),
        "{message}"
    );
}

#[test]
fn unknown_keys_are_reported_with_their_origin() {
    let file = temp_file("unknown", "[mqtt]\nmax_infight = 10\n");
    let err = Loader::new()
        .without_env()
        .file(&file)
        .load()
        .expect_err("refused");
    match &err {
        ConfigError::UnknownKey { key, origin, .. } => {
            assert_eq!(key, "mqtt.max_infight");
            assert_eq!(origin, &Origin::File(file.clone()));
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("max_inflight"), "lists the keys");

    let err = load_env(&[("TWINMQ_LISTENERS__TLS__CERTIFICATE", "x.pem")]).expect_err("refused");
    match err {
        ConfigError::UnknownKey { key, origin, .. } => {
            assert_eq!(key, "listeners.tls.certificate");
            assert_eq!(
                origin,
                Origin::Env("TWINMQ_LISTENERS__TLS__CERTIFICATE".into())
            );
        }
        other => panic!("unexpected {other}"),
    }

    let err = load_env(&[("TWINMQ_NOPE__X", "1")]).expect_err("refused");
    assert!(
        matches!(err, ConfigError::UnknownKey { ref key, .. } if key == "nope"),
        "{err}"
    );
    // Variables that name no section belong to other tools (TWINMQ_LOG, TWINMQ_PYTHON).
    assert!(load_env(&[
        ("TWINMQ_PYTHON", "/usr/bin/python3"),
        ("TWINMQ_LOG", "debug")
    ])
    .is_ok());
}

#[test]
fn a_missing_config_file_is_an_error_naming_it() {
    let path = std::env::temp_dir().join("twinmq-does-not-exist.toml");
    let err = Config::load(Some(&path), &Overrides::new()).expect_err("refused");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_toml_syntax_error_names_the_file() {
    let file = temp_file("syntax", "[mqtt\nmax_inflight = 1\n");
    let err = Loader::new()
        .without_env()
        .file(&file)
        .load()
        .expect_err("refused");
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}

#[test]
fn non_loopback_without_anonymous_decision_is_refused() {
    let err = load_env(&[("TWINMQ_LISTENERS__TLS__BIND", "0.0.0.0:8883")]).expect_err("refused");
    let message = err.to_string();
    assert!(message.contains("auth.allow_anonymous"), "{message}");
    assert!(message.contains("listeners.tls.bind"), "{message}");
    assert!(message.contains("TWINMQ_LISTENERS__TLS__BIND"), "{message}");

    let config = load_env(&[
        ("TWINMQ_LISTENERS__TLS__BIND", "0.0.0.0:8883"),
        ("TWINMQ_AUTH__ALLOW_ANONYMOUS", "true"),
    ])
    .expect("explicit opt-in");
    assert!(config.anonymous_allowed());

    let config = load_env(&[
        ("TWINMQ_LISTENERS__TLS__BIND", "0.0.0.0:8883"),
        ("TWINMQ_AUTH__PASSWORD_FILE", "/etc/twinmq/passwords"),
    ])
    .expect("password file");
    assert!(!config.anonymous_allowed());

    let config = load_env(&[
        ("TWINMQ_LISTENERS__TLS__BIND", "0.0.0.0:8883"),
        ("TWINMQ_LISTENERS__TLS__ENABLED", "false"),
    ])
    .expect("disabled listeners do not count");
    assert!(config.anonymous_allowed());
}

#[test]
fn semantic_rules_name_key_value_and_origin() {
    let cases: &[(&str, &str, &str)] = &[
        ("TWINMQ_MQTT__RECEIVE_MAXIMUM", "0", "mqtt.receive_maximum"),
        ("TWINMQ_MQTT__MAX_PACKET_SIZE", "1", "mqtt.max_packet_size"),
        (
            "TWINMQ_MQTT__MAX_PACKET_SIZE",
            "268435461",
            "mqtt.max_packet_size",
        ),
        ("TWINMQ_MQTT__MAXIMUM_QOS", "3", "mqtt.maximum_qos"),
        ("TWINMQ_MQTT__MAX_KEEPALIVE", "1d", "mqtt.max_keepalive"),
        ("TWINMQ_MQTT__SEND_TIMEOUT", "0", "mqtt.send_timeout"),
        (
            "TWINMQ_LIMITS__MAX_CONNECTIONS",
            "0",
            "limits.max_connections",
        ),
        ("TWINMQ_LISTENERS__QUIC__ALPN", "[]", "listeners.quic.alpn"),
        (
            "TWINMQ_LISTENERS__QUIC__MAX_BIDI_STREAMS",
            "0",
            "listeners.quic.max_bidi_streams",
        ),
        (
            "TWINMQ_LISTENERS__TLS__CERT",
            "/x/server.pem",
            "listeners.tls.cert",
        ),
        (
            "TWINMQ_LISTENERS__QUIC__KEY",
            "/x/server.key",
            "listeners.quic.key",
        ),
        (
            "TWINMQ_LISTENERS__TLS__REQUIRE_CLIENT_CERT",
            "true",
            "listeners.tls.require_client_cert",
        ),
        (
            "TWINMQ_LISTENERS__TLS__BIND",
            "127.0.0.1:1883",
            "listeners.tls.bind",
        ),
        ("TWINMQ_SYS__INTERVAL", "100ms", "sys.interval"),
        (
            "TWINMQ_STORAGE__GROUP_COMMIT_MS",
            "5000",
            "storage.group_commit_ms",
        ),
    ];
    for (var, value, key) in cases {
        let err = load_env(&[(var, value)]).expect_err(var);
        let message = err.to_string();
        assert!(message.contains(key), "{var}={value}: {message}");
        if !matches!(err, ConfigError::InvalidValue { .. }) {
            panic!("{var}={value}: unexpected {message}");
        }
        if let ConfigError::InvalidValue { origin, .. } = &err {
            assert_eq!(origin, &Origin::Env(var.to_string()), "{message}");
        }
    }
}

#[test]
fn ports_may_repeat_across_tcp_and_udp_or_when_ephemeral() {
    load_env(&[("TWINMQ_LISTENERS__QUIC__BIND", "127.0.0.1:8883")]).expect("UDP vs TCP");
    load_env(&[
        ("TWINMQ_LISTENERS__TCP__BIND", "127.0.0.1:0"),
        ("TWINMQ_LISTENERS__TLS__BIND", "127.0.0.1:0"),
    ])
    .expect("ephemeral ports");
    load_env(&[("TWINMQ_LISTENERS__TLS__BIND", "127.0.0.2:1883")]).expect("other address");
    let err = load_env(&[
        ("TWINMQ_LISTENERS__TCP__BIND", "0.0.0.0:1883"),
        ("TWINMQ_LISTENERS__TLS__BIND", "127.0.0.1:1883"),
        ("TWINMQ_AUTH__ALLOW_ANONYMOUS", "true"),
    ])
    .expect_err("wildcard overlaps");
    assert!(err.to_string().contains("listeners.tcp.bind"), "{err}");
}

#[test]
fn no_enabled_listener_is_refused() {
    let err = load_env(&[
        ("TWINMQ_LISTENERS__TCP__ENABLED", "false"),
        ("TWINMQ_LISTENERS__TLS__ENABLED", "false"),
        ("TWINMQ_LISTENERS__QUIC__ENABLED", "false"),
    ])
    .expect_err("refused");
    assert!(matches!(err, ConfigError::NoListener));
}

#[test]
fn overrides_accept_assignments_and_typed_values() {
    #[derive(serde::Serialize)]
    struct Flags {
        mqtt: MqttFlags,
    }
    #[derive(serde::Serialize)]
    struct MqttFlags {
        #[serde(skip_serializing_if = "Option::is_none")]
        max_inflight: Option<u16>,
        #[serde(skip_serializing_if = "Option::is_none")]
        receive_maximum: Option<u16>,
    }

    let mut overrides = Overrides::new()
        .set("listeners.quic.enable_0rtt", true)
        .expect("serializable")
        .set("data_dir", "/srv/twinmq")
        .expect("serializable");
    overrides
        .parse_assignment("listeners.tcp.bind = 127.0.0.1:2883")
        .expect("key=value");
    overrides
        .merge_serialized(&Flags {
            mqtt: MqttFlags {
                max_inflight: Some(7),
                receive_maximum: None,
            },
        })
        .expect("struct");
    let config = Loader::new()
        .without_env()
        .overrides(overrides)
        .load()
        .expect("loads");
    assert!(config.listeners.quic.enable_0rtt);
    assert_eq!(config.data_dir, PathBuf::from("/srv/twinmq"));
    assert_eq!(config.listeners.tcp.bind, addr("127.0.0.1:2883"));
    assert_eq!(config.mqtt.max_inflight, 7);
    assert_eq!(config.mqtt.receive_maximum, 1024);

    for bad in ["novalue", "=3", "a..b=1"] {
        assert!(
            matches!(
                Overrides::from_assignments([bad]),
                Err(ConfigError::BadOverride { .. })
            ),
            "{bad}"
        );
    }

    let err = Loader::new()
        .without_env()
        .overrides(Overrides::from_assignments(["mqtt.max_inflight=x"]).expect("shape ok"))
        .load()
        .expect_err("bad value");
    assert_eq!(
        err.to_string(),
        "invalid value \"x\" for mqtt.max_inflight in command-line override \
         mqtt.max_inflight: expected u16"
    );
}

#[test]
fn connection_config_maps_mqtt_settings() {
    let config = load_env(&[
        ("TWINMQ_MQTT__MAX_PACKET_SIZE", "64KiB"),
        ("TWINMQ_MQTT__MAX_KEEPALIVE", "2m"),
        ("TWINMQ_MQTT__RECEIVE_MAXIMUM", "11"),
        ("TWINMQ_MQTT__MAX_INFLIGHT", "12"),
        ("TWINMQ_MQTT__MAX_QUEUED_MESSAGES", "13"),
        ("TWINMQ_MQTT__TOPIC_ALIAS_MAXIMUM", "0"),
        ("TWINMQ_MQTT__MAXIMUM_QOS", "1"),
        ("TWINMQ_MQTT__RETAIN_AVAILABLE", "false"),
        ("TWINMQ_MQTT__CONNECT_TIMEOUT", "3s"),
        ("TWINMQ_MQTT__SEND_TIMEOUT", "1500ms"),
    ])
    .expect("loads");
    let c = config.connection_config();
    assert_eq!(c.max_packet_size, 65_536);
    assert_eq!(c.max_keep_alive, Some(120));
    assert_eq!(c.receive_maximum, 11);
    assert_eq!(c.max_inflight, 12);
    assert_eq!(c.max_queued_messages, 13);
    assert_eq!(c.topic_alias_maximum, 0);
    assert_eq!(c.maximum_qos, QoS::AtLeastOnce);
    assert!(!c.retain_available);
    assert_eq!(c.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.send_timeout, Duration::from_millis(1500));

    let unlimited = load_env(&[("TWINMQ_MQTT__MAX_KEEPALIVE", "0")]).expect("loads");
    assert_eq!(unlimited.connection_config().max_keep_alive, None);
}

#[test]
fn quic_idle_timeout_is_three_keep_alive_intervals_unless_set() {
    let mut quic = Config::defaults().expect("defaults").listeners.quic;
    quic.keep_alive_interval = Duration::from_secs(10);
    assert_eq!(quic.handshake_idle_timeout(), Duration::from_secs(30));
    quic.idle_timeout = Some(Duration::from_secs(45));
    assert_eq!(quic.handshake_idle_timeout(), Duration::from_secs(45));
}

#[test]
fn validate_in_code_reports_code_origin() {
    let mut config = Config::defaults().expect("defaults");
    config.mqtt.receive_maximum = 0;
    match config.validate() {
        Err(ConfigError::InvalidValue { origin, key, .. }) => {
            assert_eq!(key, "mqtt.receive_maximum");
            assert_eq!(origin, Origin::Code);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn the_example_keys_in_the_shipped_file_are_valid_and_complete() {
    // Uncommenting every `# key = value` example must give a file that deserializes, and
    // that sets every optional key: the shipped file documents them all.
    let uncommented: String = DEFAULT_CONFIG_TOML
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if is_example(rest) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let file = temp_file("examples", &uncommented);
    let config = Loader::new()
        .without_env()
        .file(&file)
        .figment()
        .expect("layers")
        .extract::<Config>()
        .expect("examples deserialize");
    let tls = &config.listeners.tls;
    let quic = &config.listeners.quic;
    assert!(tls.cert.is_some() && tls.key.is_some() && tls.client_ca.is_some());
    assert!(quic.cert.is_some() && quic.key.is_some() && quic.idle_timeout.is_some());
    assert!(config.limits.max_connection_rate.is_some());
    assert!(config.auth.allow_anonymous.is_some());
    assert!(config.auth.password_file.is_some() && config.auth.acl_file.is_some());
}

/// `key = value` with a lowercase snake_case key: an example, not prose.
pub(crate) fn is_example(line: &str) -> bool {
    match line.split_once(" = ") {
        Some((key, _)) => {
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        }
        None => false,
    }
}
