//! The client's typed errors, each provoked for real: refused TCP, unknown CA and wrong
//! name (TLS and QUIC), ALPN mismatch both ways, a silent UDP port, CONNACK refusals,
//! mTLS, and `insecure`.

mod client_util;
mod common;

use std::time::Duration;

use bytes::BytesMut;
use client_util::{options, within};
use common::{temp_dir, TestBroker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use twinmq::client::{CertificateProblem, Client, ClientError, ClientOptions, Transport};
use twinmq::protocol::codec::{encode_to_bytes, Decoder};
use twinmq::protocol::{ConnAck, Packet, Properties, ProtocolVersion, QoS, ReasonCode};

async fn connect_err(options: ClientOptions) -> ClientError {
    match within("connect to fail", Client::connect(options)).await {
        Ok(_) => panic!("the connection should have failed"),
        Err(err) => err,
    }
}

#[tokio::test]
async fn a_closed_tcp_port_is_connection_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let err = connect_err(ClientOptions::new("127.0.0.1").port(port)).await;
    assert!(
        matches!(err, ClientError::ConnectionRefused { addr } if addr.port() == port),
        "{err}"
    );
    assert!(err.to_string().contains("connection refused"), "{err}");
}

#[tokio::test]
async fn an_unknown_ca_is_reported_over_tls_and_quic() {
    let broker = TestBroker::start("client-unknown-ca").await;
    let dir = temp_dir("client-other-ca");
    let other = twinmq::config::certs::generate_cert_set(&dir, &[], &[]).expect("certs");
    for transport in [Transport::Tls, Transport::Quic] {
        let err = connect_err(options(&broker, transport).ca_file(&other.ca_cert)).await;
        assert!(
            matches!(
                &err,
                ClientError::Certificate {
                    problem: CertificateProblem::UnknownIssuer,
                    ..
                }
            ),
            "{transport}: {err:?}"
        );
        assert!(err.to_string().contains("unknown CA"), "{err}");
        assert!(!err.is_retryable());
    }
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_name_mismatch() {
    let broker = TestBroker::start("client-name").await;
    for transport in [Transport::Tls, Transport::Quic] {
        let err = connect_err(options(&broker, transport).server_name("broker.example")).await;
        match &err {
            ClientError::Certificate {
                server,
                problem: CertificateProblem::NameMismatch { presented },
            } => {
                assert_eq!(server, "broker.example");
                assert!(
                    presented.iter().any(|n| n.contains("localhost")),
                    "{presented:?}"
                );
            }
            other => panic!("{transport}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn insecure_accepts_any_certificate() {
    let broker = TestBroker::start("client-insecure").await;
    for transport in [Transport::Tls, Transport::Quic] {
        let opts = ClientOptions::new("127.0.0.1")
            .transport(transport)
            .port(match transport {
                Transport::Tls => broker.tls.port(),
                _ => broker.quic.port(),
            })
            .server_name("not-the-broker.example")
            .insecure(true);
        let (client, _events) = within("insecure connect", Client::connect(opts))
            .await
            .expect("insecure skips verification");
        within("publish", client.publish("a", "x", QoS::AtLeastOnce, false))
            .await
            .expect("works");
        within("disconnect", client.disconnect()).await.expect("ok");
    }
}

#[tokio::test]
async fn a_client_offering_another_alpn_gets_alpn_mismatch() {
    let broker = TestBroker::start("client-alpn-client").await;
    let err = connect_err(options(&broker, Transport::Quic).alpn(["other"])).await;
    assert!(matches!(err, ClientError::AlpnMismatch { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("does not speak MQTT over QUIC with ALPN \"other\""),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_with_another_alpn_gets_alpn_mismatch() {
    let broker =
        TestBroker::start_with("client-alpn-server", &["listeners.quic.alpn=[\"other\"]"]).await;
    let err = connect_err(options(&broker, Transport::Quic)).await;
    assert!(matches!(err, ClientError::AlpnMismatch { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("does not speak MQTT over QUIC with ALPN \"mqtt\""),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_silent_udp_port_times_out_within_the_connect_timeout() {
    // A bound UDP socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let dir = temp_dir("client-silent");
    let set = twinmq::config::certs::generate_cert_set(&dir, &[], &[]).expect("certs");
    let opts = ClientOptions::new("127.0.0.1")
        .transport(Transport::Quic)
        .port(port)
        .ca_file(&set.ca_cert)
        .connect_timeout(Duration::from_millis(300));
    let err = connect_err(opts).await;
    assert!(
        matches!(
            err,
            ClientError::Timeout {
                transport: "quic",
                ..
            }
        ),
        "{err:?}"
    );
}

/// A fake broker that answers CONNECT with `reason`, for refusals the real broker has no
/// configuration to produce.
async fn refusing_server(version: ProtocolVersion, reason: ReasonCode) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        let mut decoder = Decoder::new(1 << 20);
        let mut buf = BytesMut::new();
        loop {
            if let Ok(Some(Packet::Connect(_))) = decoder.decode(&mut buf) {
                break;
            }
            match tcp.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let mut properties = Properties::default();
        if version.is_v5() {
            properties.reason_string = Some(twinmq::protocol::MqttString::from_static("go away"));
        }
        let connack = Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties,
        });
        let bytes = encode_to_bytes(&connack, version).expect("encodes");
        let _ = tcp.write_all(&bytes).await;
        let _ = tcp.shutdown().await;
    });
    port
}

#[tokio::test]
async fn a_connack_refusal_carries_its_reason_code() {
    for (version, reason) in [
        (ProtocolVersion::V5, ReasonCode::NotAuthorized),
        (ProtocolVersion::V311, ReasonCode::BadUserNameOrPassword),
    ] {
        let port = refusing_server(version, reason).await;
        let err = connect_err(ClientOptions::new("127.0.0.1").port(port).version(version)).await;
        match &err {
            ClientError::Refused {
                reason: got,
                reason_string,
            } => {
                assert_eq!(*got, reason);
                if version.is_v5() {
                    assert_eq!(reason_string.as_deref(), Some("go away"));
                }
            }
            other => panic!("{other:?}"),
        }
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("refused the connection"), "{err}");
    }
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let dir = temp_dir("client-mtls-ca");
    let clients = twinmq::config::certs::generate_cert_set(&dir, &[], &["device-1".to_string()])
        .expect("certs");
    let client_ca = format!("listeners.tls.client_ca={}", clients.ca_cert.display());
    let broker = TestBroker::start_with(
        "client-mtls",
        &[&client_ca, "listeners.tls.require_client_cert=true"],
    )
    .await;
    for transport in [Transport::Tls, Transport::Quic] {
        let err = connect_err(options(&broker, transport)).await;
        assert!(
            matches!(err, ClientError::ClientCertificateRejected { .. }),
            "{transport}: {err:?}"
        );
        let cert = &clients.clients[0];
        let (client, _events) = within(
            "mTLS connect",
            Client::connect(options(&broker, transport).client_cert(&cert.cert, &cert.key)),
        )
        .await
        .unwrap_or_else(|e| panic!("{transport}: {e}"));
        within("publish", client.publish("m", "x", QoS::ExactlyOnce, false))
            .await
            .expect("works");
        within("disconnect", client.disconnect()).await.expect("ok");
    }
}

#[tokio::test]
async fn bad_names_are_refused_before_anything_is_sent() {
    let broker = TestBroker::start("client-bad-names").await;
    let (client, _events) = within("connect", Client::connect(options(&broker, Transport::Tcp)))
        .await
        .expect("connects");
    assert!(matches!(
        client.publish("a/#", "x", QoS::AtMostOnce, false).await,
        Err(ClientError::InvalidTopic { .. })
    ));
    assert!(matches!(
        client.subscribe("a/#/b", QoS::AtMostOnce).await,
        Err(ClientError::InvalidTopic { .. })
    ));
    assert!(matches!(client.rebind(), Err(ClientError::NotQuic)));
    within("disconnect", client.disconnect()).await.expect("ok");
}
