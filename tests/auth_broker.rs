//! Authentication and authorisation through the running broker: a mosquitto-format
//! password file (written by `twinmq passwd`), anonymous access turned off, an ACL that
//! limits publish, subscribe and receive, and client certificates as identities (mTLS).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{temp_dir, TestBroker, WAIT};
use twinmq::client::{Client, ClientError, ClientOptions, Transport};
use twinmq::protocol::{ProtocolVersion, QoS, ReasonCode};

fn passwd(file: &Path, user: &str, password: &str) {
    let status = Command::new(env!("CARGO_BIN_EXE_twinmq"))
        .args(["passwd", "-b"])
        .arg(file)
        .args([user, password])
        .status()
        .expect("twinmq passwd runs");
    assert!(status.success());
}

fn options(broker: &TestBroker, id: &str) -> ClientOptions {
    broker.tls_client(id).connect_timeout(WAIT)
}

async fn broker_with_auth(tag: &str) -> TestBroker {
    let dir = temp_dir(tag);
    let passwords = dir.join("passwords");
    passwd(&passwords, "alice", "wonderland");
    passwd(&passwords, "bob", "builder");
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        "user alice\ntopic readwrite alice/#\ntopic read shared/#\n\nuser bob\ntopic readwrite shared/#\n",
    )
    .expect("write acl");
    TestBroker::start_with(
        tag,
        &[
            "auth.allow_anonymous=false",
            &format!("auth.password_file={}", passwords.display()),
            &format!("auth.acl_file={}", acl.display()),
        ],
    )
    .await
}

#[tokio::test]
async fn credentials_decide_who_connects() {
    let broker = broker_with_auth("auth-connect").await;
    for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let anonymous = Client::connect(options(&broker, "anon").version(version))
            .await
            .err();
        assert!(
            matches!(
                anonymous,
                Some(ClientError::Refused {
                    reason: ReasonCode::NotAuthorized,
                    ..
                })
            ),
            "{version}: {anonymous:?}"
        );
        let wrong = Client::connect(
            options(&broker, "wrong")
                .version(version)
                .username("alice")
                .password("nope"),
        )
        .await
        .err();
        assert!(
            matches!(
                wrong,
                Some(ClientError::Refused {
                    reason: ReasonCode::BadUserNameOrPassword,
                    ..
                })
            ),
            "{version}: {wrong:?}"
        );
        let (alice, _) = Client::connect(
            options(&broker, "alice-1")
                .version(version)
                .username("alice")
                .password("wonderland"),
        )
        .await
        .expect("alice connects");
        alice.disconnect().await.expect("disconnect");
    }
}

#[tokio::test]
async fn the_acl_limits_publish_subscribe_and_receive() {
    let broker = broker_with_auth("auth-acl").await;
    let (alice, mut alice_in) = Client::connect(
        options(&broker, "alice")
            .username("alice")
            .password("wonderland"),
    )
    .await
    .expect("alice");
    let (bob, _) = Client::connect(options(&broker, "bob").username("bob").password("builder"))
        .await
        .expect("bob");

    // Subscribe: alice may read alice/# and shared/#, not bob's topics.
    assert_eq!(
        alice
            .subscribe("alice/#", QoS::AtLeastOnce)
            .await
            .expect("allowed"),
        QoS::AtLeastOnce
    );
    alice
        .subscribe("shared/#", QoS::AtLeastOnce)
        .await
        .expect("allowed");
    let refused = alice.subscribe("secret/#", QoS::AtLeastOnce).await;
    assert!(
        matches!(
            refused,
            Err(ClientError::SubscribeRefused {
                reason: ReasonCode::NotAuthorized,
                ..
            })
        ),
        "{refused:?}"
    );

    // Publish: bob may write shared/# only; alice may not write shared/#.
    bob.publish("shared/news", "hello", QoS::AtLeastOnce, false)
        .await
        .expect("bob writes shared");
    let denied = bob
        .publish("alice/inbox", "sneaky", QoS::AtLeastOnce, false)
        .await;
    assert!(
        matches!(
            denied,
            Err(ClientError::PublishRefused {
                reason: ReasonCode::NotAuthorized,
                ..
            })
        ),
        "{denied:?}"
    );
    let denied = alice
        .publish("shared/news", "no", QoS::AtLeastOnce, false)
        .await;
    assert!(
        matches!(denied, Err(ClientError::PublishRefused { .. })),
        "{denied:?}"
    );
    let denied = alice
        .publish("$SYS/broker/version", "fake", QoS::AtLeastOnce, false)
        .await;
    assert!(
        matches!(denied, Err(ClientError::PublishRefused { .. })),
        "clients never write $SYS: {denied:?}"
    );
    alice
        .publish("alice/notes", "mine", QoS::AtLeastOnce, false)
        .await
        .expect("alice writes her own");

    // Receive: exactly bob's shared/news and alice's own note reached alice.
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(WAIT, alice_in.next_message())
            .await
            .expect("in time")
            .expect("message");
        got.push(m.topic.to_string());
    }
    got.sort();
    assert_eq!(got, vec!["alice/notes", "shared/news"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), alice_in.next_message())
            .await
            .is_err(),
        "nothing else arrives"
    );
}

#[tokio::test]
async fn a_verified_client_certificate_is_the_identity() {
    let dir = temp_dir("auth-mtls");
    let certs = dir.join("certs");
    let set = twinmq::config::generate_cert_set(
        &certs,
        &["localhost".to_string(), "127.0.0.1".to_string()],
        &["carol".to_string()],
    )
    .expect("certificates");
    let acl = dir.join("acl");
    std::fs::write(&acl, "user carol\ntopic readwrite carol/#\n").expect("acl");
    let broker = TestBroker::start_with(
        "auth-mtls",
        &[
            "auth.allow_anonymous=false",
            &format!("auth.acl_file={}", acl.display()),
            &format!("listeners.tls.cert={}", set.server_cert.display()),
            &format!("listeners.tls.key={}", set.server_key.display()),
            &format!("listeners.tls.client_ca={}", set.ca_cert.display()),
            "listeners.tls.require_client_cert=true",
            &format!("listeners.quic.cert={}", set.server_cert.display()),
            &format!("listeners.quic.key={}", set.server_key.display()),
        ],
    )
    .await;
    let carol = &set.clients[0];
    let base = |transport: Transport, port: u16| {
        ClientOptions::new("localhost")
            .port(port)
            .transport(transport)
            .ca_file(&set.ca_cert)
            .client_cert(&carol.cert, &carol.key)
            .client_id("carol")
            .reconnect(None)
            .connect_timeout(WAIT)
    };
    for (transport, port) in [
        (Transport::Tls, broker.tls.port()),
        (Transport::Quic, broker.quic.port()),
    ] {
        let (client, _) = Client::connect(base(transport, port))
            .await
            .expect("carol connects by certificate");
        client
            .publish("carol/x", "ok", QoS::AtLeastOnce, false)
            .await
            .expect("carol's own topic");
        let denied = client
            .publish("dave/x", "no", QoS::AtLeastOnce, false)
            .await;
        assert!(
            matches!(denied, Err(ClientError::PublishRefused { .. })),
            "{transport:?}: {denied:?}"
        );
        client.disconnect().await.expect("disconnect");
    }
}
