//! `Config::load` against the real process environment, inside figment's `Jail`, which
//! serializes the tests that change the environment and the working directory. Every test
//! of this binary goes through a jail.

// `Jail::expect_with` fixes the closure's error type to figment's (large) `Error`.
#![allow(clippy::result_large_err)]

use figment::Jail;
use twinmq::config::{Config, ConfigError, Origin, Overrides};

#[test]
fn environment_variables_override_the_file() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "twinmq.toml",
            "[listeners.tls]\nbind = \"127.0.0.1:8000\"\n[mqtt]\nmax_inflight = 50\n",
        )?;
        jail.set_env("TWINMQ_LISTENERS__TLS__BIND", "127.0.0.1:9999");
        jail.set_env("TWINMQ_MQTT__MAX_INFLIGHT", "100");
        let file = jail.directory().join("twinmq.toml");
        let config = Config::load(Some(&file), &Overrides::new()).map_err(|e| e.to_string())?;
        assert_eq!(config.listeners.tls.bind.to_string(), "127.0.0.1:9999");
        assert_eq!(config.mqtt.max_inflight, 100);

        let overrides =
            Overrides::from_assignments(["mqtt.max_inflight=7"]).map_err(|e| e.to_string())?;
        let config = Config::load(Some(&file), &overrides).map_err(|e| e.to_string())?;
        assert_eq!(
            config.mqtt.max_inflight, 7,
            "command line beats environment"
        );
        Ok(())
    });
}

#[test]
fn a_bad_environment_value_names_the_variable() {
    Jail::expect_with(|jail| {
        jail.set_env("TWINMQ_LIMITS__HANDSHAKE_TIMEOUT", "soon");
        let err = Config::load(None, &Overrides::new()).expect_err("refused");
        match &err {
            ConfigError::InvalidValue {
                key, value, origin, ..
            } => {
                assert_eq!(key, "limits.handshake_timeout");
                assert_eq!(value, "\"soon\"");
                assert_eq!(
                    origin,
                    &Origin::Env("TWINMQ_LIMITS__HANDSHAKE_TIMEOUT".into())
                );
            }
            other => panic!("unexpected {other}"),
        }
        Ok(())
    });
}

#[test]
fn a_public_bind_from_the_environment_is_refused() {
    Jail::expect_with(|jail| {
        jail.set_env("TWINMQ_LISTENERS__TCP__BIND", "0.0.0.0:1883");
        let err = Config::load(None, &Overrides::new()).expect_err("refused");
        let message = err.to_string();
        assert!(message.contains("auth.allow_anonymous"), "{message}");
        assert!(message.contains("listeners.tcp.bind"), "{message}");

        jail.set_env("TWINMQ_AUTH__ALLOW_ANONYMOUS", "true");
        let config = Config::load(None, &Overrides::new()).map_err(|e| e.to_string())?;
        assert!(config.anonymous_allowed());
        Ok(())
    });
}
