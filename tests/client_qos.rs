//! `twinmq::client` against the real broker: every QoS in both directions over TCP, TLS and
//! single-stream QUIC, in MQTT 5 and 3.1.1.

mod client_util;
mod common;

use bytes::Bytes;
use client_util::{next_message, options, within, TRANSPORTS};
use common::TestBroker;
use twinmq::client::{Client, ClientError, Transport};
use twinmq::protocol::{ProtocolVersion, QoS};

async fn round_trip_every_qos(transport: Transport, version: ProtocolVersion) {
    let tag = format!("client-qos-{transport}-{version}");
    let broker = TestBroker::start(&tag).await;
    let (sub, mut incoming) = within(
        "subscriber connect",
        Client::connect(
            options(&broker, transport)
                .version(version)
                .client_id("sub"),
        ),
    )
    .await
    .expect("subscriber connects");
    let granted = within("SUBACK", sub.subscribe("qos/#", QoS::ExactlyOnce))
        .await
        .expect("subscribed");
    assert_eq!(granted, QoS::ExactlyOnce);
    let (publisher, _events) = within(
        "publisher connect",
        Client::connect(
            options(&broker, transport)
                .version(version)
                .client_id("pub"),
        ),
    )
    .await
    .expect("publisher connects");

    for (qos, payload) in [
        (QoS::AtMostOnce, "zero"),
        (QoS::AtLeastOnce, "one"),
        (QoS::ExactlyOnce, "two"),
    ] {
        within(
            "the QoS flow",
            publisher.publish("qos/x", payload, qos, false),
        )
        .await
        .unwrap_or_else(|e| panic!("{transport} {version} QoS {qos:?}: {e}"));
        let m = next_message(&mut incoming).await;
        assert_eq!(m.payload, Bytes::from(payload), "{transport} {version}");
        assert_eq!(m.qos, qos, "{transport} {version}");
        assert_eq!(m.topic.as_str(), "qos/x");
        assert!(!m.dup);
    }

    // Retained, and delivered to a later subscriber.
    within(
        "retained publish",
        publisher.publish("qos/kept", "kept", QoS::AtLeastOnce, true),
    )
    .await
    .expect("retained publish");
    let live = next_message(&mut incoming).await;
    assert_eq!(live.payload, Bytes::from("kept"));
    let (late, mut late_incoming) = within(
        "late connect",
        Client::connect(options(&broker, transport).version(version)),
    )
    .await
    .expect("late subscriber connects");
    within("SUBACK", late.subscribe("qos/kept", QoS::AtLeastOnce))
        .await
        .expect("subscribed");
    let retained = next_message(&mut late_incoming).await;
    assert!(retained.retain);
    assert_eq!(retained.payload, Bytes::from("kept"));

    within("UNSUBACK", sub.unsubscribe("qos/#"))
        .await
        .expect("unsubscribed");
    for client in [&sub, &publisher, &late] {
        within("disconnect", client.disconnect())
            .await
            .expect("clean disconnect");
    }
    assert!(
        within("end of events", incoming.recv()).await.is_none(),
        "Incoming ends after disconnect"
    );
    assert!(matches!(
        sub.publish("qos/x", "late", QoS::AtMostOnce, false).await,
        Err(ClientError::Closed)
    ));
}

#[tokio::test]
async fn every_qos_round_trips_over_tcp_v5() {
    round_trip_every_qos(Transport::Tcp, ProtocolVersion::V5).await;
}

#[tokio::test]
async fn every_qos_round_trips_over_tls_v5() {
    round_trip_every_qos(Transport::Tls, ProtocolVersion::V5).await;
}

#[tokio::test]
async fn every_qos_round_trips_over_quic_v5() {
    round_trip_every_qos(Transport::Quic, ProtocolVersion::V5).await;
}

#[tokio::test]
async fn every_qos_round_trips_over_tcp_v311() {
    round_trip_every_qos(Transport::Tcp, ProtocolVersion::V311).await;
}

#[tokio::test]
async fn every_qos_round_trips_over_tls_v311() {
    round_trip_every_qos(Transport::Tls, ProtocolVersion::V311).await;
}

#[tokio::test]
async fn every_qos_round_trips_over_quic_v311() {
    round_trip_every_qos(Transport::Quic, ProtocolVersion::V311).await;
}

/// Many publishes in flight at once from clones of one handle: ids are managed, every flow
/// completes, nothing is lost.
#[tokio::test]
async fn concurrent_publishes_from_clones_all_complete() {
    let broker = TestBroker::start("client-concurrent").await;
    for transport in TRANSPORTS {
        let (sub, mut incoming) = within("connect", Client::connect(options(&broker, transport)))
            .await
            .expect("connects");
        within("SUBACK", sub.subscribe("many/#", QoS::ExactlyOnce))
            .await
            .expect("subscribed");
        let (publisher, _events) = within(
            "connect",
            Client::connect(options(&broker, transport).max_inflight(8)),
        )
        .await
        .expect("connects");
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            let p = publisher.clone();
            let qos = if i % 2 == 0 {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            };
            tasks.spawn(async move { p.publish("many/x", i.to_string(), qos, false).await });
        }
        while let Some(done) = within("publishes", tasks.join_next()).await {
            done.expect("task").expect("publish completes");
        }
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 200 {
            let m = next_message(&mut incoming).await;
            let n: u32 = std::str::from_utf8(&m.payload)
                .expect("utf8")
                .parse()
                .expect("number");
            seen.insert(n);
        }
        within("disconnect", sub.disconnect()).await.expect("ok");
        within("disconnect", publisher.disconnect())
            .await
            .expect("ok");
    }
}

/// A subscriber that does not read for a while: the client stops reading from the network
/// once `incoming_capacity` events wait (the broker holds the rest), and nothing is lost
/// or reordered when the application catches up.
#[tokio::test]
async fn a_slow_reader_loses_nothing() {
    let broker = TestBroker::start("client-slow-reader").await;
    let (sub, mut incoming) = within(
        "connect",
        Client::connect(options(&broker, Transport::Quic).incoming_capacity(2)),
    )
    .await
    .expect("connects");
    within("SUBACK", sub.subscribe("slow/#", QoS::AtLeastOnce))
        .await
        .expect("subscribed");
    let (publisher, _p) = within("connect", Client::connect(options(&broker, Transport::Tcp)))
        .await
        .expect("connects");
    for i in 0..100u32 {
        within(
            "publish",
            publisher.publish("slow/x", i.to_string(), QoS::AtLeastOnce, false),
        )
        .await
        .expect("published");
    }
    for i in 0..100u32 {
        let m = next_message(&mut incoming).await;
        assert_eq!(m.payload, Bytes::from(i.to_string()));
    }
    within("disconnect", sub.disconnect()).await.expect("ok");
    within("disconnect", publisher.disconnect())
        .await
        .expect("ok");
}
