//! MQTT over QUIC against real quinn connections on loopback UDP, with the test's own
//! dev CA: single-stream sessions (the EMQX convention), ALPN, and sessions that move
//! between TLS and QUIC.

mod common;

use bytes::Bytes;
use common::quic::{self, QuicStream};
use common::{connect, pid, publish_packet, subscribe_packet, RawClient, TestBroker, WAIT};
use twinmq::protocol::{Ack, Packet, ProtocolVersion, QoS, QosPid, ReasonCode};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn publish(topic: &str, qos_pid: QosPid, payload: &'static [u8]) -> Packet {
    publish_packet(topic, qos_pid, Bytes::from_static(payload), false)
}

fn subscribe(filter: &str, qos: QoS) -> Packet {
    subscribe_packet(filter, qos, 1)
}

async fn quic_connect(broker: &TestBroker, endpoint: &quinn::Endpoint) -> quinn::Connection {
    quic::connect(broker, endpoint).await
}

fn client_endpoint(ca: &std::path::Path, alpn: &[&str]) -> quinn::Endpoint {
    quic::client_endpoint(ca, alpn, None)
}

#[tokio::test]
async fn a_single_stream_session_round_trips_every_qos() {
    let broker = TestBroker::start("quic-single").await;
    let endpoint = client_endpoint(&broker.ca, &["mqtt"]);
    let connection = quic_connect(&broker, &endpoint).await;
    let mut s = QuicStream::open(&connection).await;
    let mut c = connect(V5, "quic-1", true, 30);
    c.properties.session_expiry_interval = Some(0);
    s.send(&Packet::Connect(Box::new(c))).await;
    assert!(matches!(s.recv().await, Some(Packet::ConnAck(c)) if c.reason == ReasonCode::Success));
    s.send(&subscribe("q/#", QoS::ExactlyOnce)).await;
    assert!(matches!(s.recv().await, Some(Packet::SubAck(_))));

    s.send(&publish("q/0", QosPid::AtMostOnce, b"zero")).await;
    s.send(&publish("q/1", QosPid::AtLeastOnce(pid(2)), b"one"))
        .await;
    s.send(&publish("q/2", QosPid::ExactlyOnce(pid(3)), b"two"))
        .await;
    let mut delivered = Vec::new();
    let mut acked = Vec::new();
    while delivered.len() < 3 || acked.len() < 2 {
        match s.recv().await.expect("stream open") {
            Packet::Publish(p) => {
                match p.qos_pid {
                    QosPid::AtLeastOnce(id) => s.send(&Packet::PubAck(Ack::new(id))).await,
                    QosPid::ExactlyOnce(id) => s.send(&Packet::PubRec(Ack::new(id))).await,
                    QosPid::AtMostOnce => {}
                }
                let qos = p.qos();
                delivered.push((p.payload, qos));
            }
            Packet::PubAck(a) => acked.push(a.packet_id),
            Packet::PubRec(a) => {
                acked.push(a.packet_id);
                s.send(&Packet::PubRel(Ack::new(a.packet_id))).await;
            }
            Packet::PubRel(a) => s.send(&Packet::PubComp(Ack::new(a.packet_id))).await,
            Packet::PubComp(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    delivered.sort_by_key(|(_, q)| *q);
    assert_eq!(
        delivered,
        vec![
            (Bytes::from_static(b"zero"), QoS::AtMostOnce),
            (Bytes::from_static(b"one"), QoS::AtLeastOnce),
            (Bytes::from_static(b"two"), QoS::ExactlyOnce),
        ]
    );
    s.send(&Packet::Disconnect(twinmq::protocol::Disconnect::new(
        ReasonCode::Success,
    )))
    .await;
    let _ = s.send.finish();
    // Acks still in flight may arrive; then the broker ends the stream.
    while let Some(p) = s.recv().await {
        assert!(matches!(p, Packet::PubComp(_) | Packet::PubRel(_)), "{p:?}");
    }
}

#[tokio::test]
async fn a_client_offering_another_alpn_is_refused() {
    let broker = TestBroker::start("quic-alpn").await;
    let endpoint = client_endpoint(&broker.ca, &["not-mqtt"]);
    let result = tokio::time::timeout(
        WAIT,
        endpoint.connect(broker.quic, "localhost").expect("config"),
    )
    .await
    .expect("answer in time");
    let err = result.expect_err("ALPN mismatch must fail the handshake");
    assert!(
        err.to_string().contains("120") || err.to_string().to_lowercase().contains("application"),
        "{err}"
    );
}

#[tokio::test]
async fn a_session_moves_between_tls_and_quic_in_both_directions() {
    let broker = TestBroker::start("quic-cross").await;
    // Persistent session over TCP (TLS is the same driver), subscribe, leave.
    let mut tcp = RawClient::connect(broker.tcp, V5).await;
    let mut c = connect(V5, "roamer", false, 30);
    c.properties.session_expiry_interval = Some(300);
    assert!(matches!(tcp.handshake(c.clone()).await, Packet::ConnAck(_)));
    tcp.send(&subscribe("roam/#", QoS::AtLeastOnce)).await;
    assert!(matches!(tcp.recv().await, Some(Packet::SubAck(_))));
    tcp.send(&Packet::Disconnect(twinmq::protocol::Disconnect::new(
        ReasonCode::Success,
    )))
    .await;
    assert!(tcp.expect_closed().await.is_empty());

    // Queued while away; picked up over QUIC.
    let mut publisher = RawClient::connect(broker.tcp, V5).await;
    assert!(matches!(
        publisher.handshake(connect(V5, "pub", true, 30)).await,
        Packet::ConnAck(_)
    ));
    publisher
        .send(&publish("roam/1", QosPid::AtLeastOnce(pid(1)), b"for quic"))
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));

    let endpoint = client_endpoint(&broker.ca, &["mqtt"]);
    let connection = quic_connect(&broker, &endpoint).await;
    let mut q = QuicStream::open(&connection).await;
    q.send(&Packet::Connect(Box::new(c.clone()))).await;
    assert!(matches!(q.recv().await, Some(Packet::ConnAck(c)) if c.session_present));
    let p = match q.recv().await {
        Some(Packet::Publish(p)) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(p.payload.as_ref(), b"for quic");
    q.send(&Packet::PubAck(Ack::new(
        p.qos_pid.packet_id().expect("id"),
    )))
    .await;
    q.send(&Packet::Disconnect(twinmq::protocol::Disconnect::new(
        ReasonCode::Success,
    )))
    .await;
    let _ = q.send.finish();
    assert!(q.recv().await.is_none());

    // And back to TCP/TLS.
    publisher
        .send(&publish("roam/2", QosPid::AtLeastOnce(pid(2)), b"for tls"))
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    let mut back = RawClient::connect(broker.tcp, V5).await;
    assert!(matches!(back.handshake(c).await, Packet::ConnAck(c) if c.session_present));
    match back.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(p.payload.as_ref(), b"for tls"),
        other => panic!("{other:?}"),
    }
}
