//! Sessions that outlive connections: the offline queue of a persistent session over every
//! transport, resending with DUP after an abrupt reconnect (through a proxy that swallows
//! acks and then cuts the connection), exactly-once delivery to the application across a
//! reconnect, keep-alive noticing a dead path, and giving up after the configured attempts.

mod client_util;
mod common;

use std::time::Duration;

use bytes::Bytes;
use client_util::proxy::{Dir, Proxy};
use client_util::{next_event, next_message, options, within, TRANSPORTS};
use common::TestBroker;
use twinmq::client::{Client, ClientError, ClientOptions, Event, Reconnect, Transport};
use twinmq::protocol::{Packet, PacketType, ProtocolVersion, QoS};

/// Options for a persistent-session client that goes through `proxy` to the broker's TCP
/// listener.
fn via(proxy: &Proxy, id: &str) -> ClientOptions {
    ClientOptions::new("127.0.0.1")
        .port(proxy.addr.port())
        .client_id(id)
        .persistent_session(Duration::from_secs(300))
        .connect_timeout(Duration::from_secs(5))
        .reconnect(Some(Reconnect::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
        )))
}

fn publishes<'a>(
    seen: &'a [Packet],
    topic: &'a str,
) -> impl Iterator<Item = &'a twinmq::protocol::Publish> {
    seen.iter().filter_map(move |p| match p {
        Packet::Publish(p) if p.topic.as_str() == topic => Some(p),
        _ => None,
    })
}

async fn expect_reconnect(incoming: &mut twinmq::client::Incoming, session_present: bool) {
    match next_event(incoming).await {
        Event::ConnectionLost {
            reconnecting: true, ..
        } => {}
        other => panic!("expected a lost connection, got {other:?}"),
    }
    match next_event(incoming).await {
        Event::Reconnected {
            session_present: present,
        } => assert_eq!(present, session_present),
        other => panic!("expected a reconnection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_persistent_session_receives_what_was_queued_while_offline() {
    let broker = TestBroker::start("client-offline").await;
    for transport in TRANSPORTS {
        for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
            let id = format!("offline-{transport}-{version}");
            let opts = options(&broker, transport)
                .version(version)
                .client_id(&id)
                .persistent_session(Duration::from_secs(300));
            let (client, _events) = within("connect", Client::connect(opts.clone()))
                .await
                .expect("connects");
            assert!(!client.session_present());
            within("SUBACK", client.subscribe("off/#", QoS::ExactlyOnce))
                .await
                .expect("subscribed");
            within("disconnect", client.disconnect()).await.expect("ok");

            let (publisher, _p) = within("connect", Client::connect(options(&broker, transport)))
                .await
                .expect("publisher connects");
            for (i, qos) in [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce]
                .into_iter()
                .enumerate()
            {
                within(
                    "publish",
                    publisher.publish("off/x", format!("queued-{i}"), qos, false),
                )
                .await
                .expect("published");
            }
            within("disconnect", publisher.disconnect())
                .await
                .expect("ok");

            let (back, mut incoming) = within("reconnect", Client::connect(opts))
                .await
                .expect("connects again");
            assert!(back.session_present(), "{transport} {version}");
            for i in 0..3 {
                let m = next_message(&mut incoming).await;
                assert_eq!(
                    m.payload,
                    Bytes::from(format!("queued-{i}")),
                    "{transport} {version}"
                );
            }
            within("disconnect", back.disconnect()).await.expect("ok");
        }
    }
}

/// QoS 1 and 2: the broker got the PUBLISH but its ack never reached us; the connection
/// drops; the client reconnects, resumes the session, and sends the PUBLISH again with DUP
/// and the same packet id. `publish()` completes; a QoS 2 message still arrives once.
#[tokio::test]
async fn an_unacknowledged_publish_is_resent_with_dup_after_an_abrupt_reconnect() {
    let broker = TestBroker::start("client-dup").await;
    let proxy = Proxy::start(broker.tcp).await;
    let (observer, mut observed) =
        within("connect", Client::connect(options(&broker, Transport::Tcp)))
            .await
            .expect("observer connects");
    within("SUBACK", observer.subscribe("dup/#", QoS::ExactlyOnce))
        .await
        .expect("subscribed");
    let (client, mut incoming) = within("connect", Client::connect(via(&proxy, "dup-client")))
        .await
        .expect("connects through the proxy");

    for (qos, topic) in [(QoS::AtLeastOnce, "dup/1"), (QoS::ExactlyOnce, "dup/2")] {
        proxy.hold(Dir::Down, true);
        let publishing = {
            let client = client.clone();
            tokio::spawn(async move { client.publish(topic, "once", qos, false).await })
        };
        let seen = proxy
            .wait_for("the PUBLISH", |seen| publishes(seen, topic).count() == 1)
            .await;
        let first = publishes(&seen, topic).next().expect("one").clone();
        assert!(!first.dup);
        // The broker has it (the observer gets it); only the ack is missing.
        assert_eq!(
            next_message(&mut observed).await.payload,
            Bytes::from("once")
        );
        assert!(!publishing.is_finished());

        proxy.cut();
        within("the resent flow", publishing)
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("{qos:?}: {e}"));
        expect_reconnect(&mut incoming, true).await;
        let seen = proxy.seen();
        let again: Vec<_> = publishes(&seen, topic).collect();
        assert_eq!(again.len(), 2, "{qos:?}: {again:?}");
        assert!(again[1].dup, "resent with DUP");
        assert_eq!(again[1].qos_pid, first.qos_pid, "same packet id");

        // Anything the broker forwards twice is QoS 1's right; QoS 2 arrives once.
        within(
            "marker",
            client.publish("dup/marker", "marker", QoS::ExactlyOnce, false),
        )
        .await
        .expect("marker");
        let next = next_message(&mut observed).await;
        if qos == QoS::ExactlyOnce {
            assert_eq!(next.payload, Bytes::from("marker"), "no duplicate of QoS 2");
        } else if next.payload != "marker" {
            assert_eq!(
                next_message(&mut observed).await.payload,
                Bytes::from("marker")
            );
        }
    }
    assert_eq!(client.connections(), 3);
    within("disconnect", client.disconnect()).await.expect("ok");
}

/// QoS 2 with PUBREC through and PUBCOMP lost: after the reconnect the client sends PUBREL
/// again (not the PUBLISH).
#[tokio::test]
async fn a_pubrel_without_pubcomp_is_resent_after_a_reconnect() {
    let broker = TestBroker::start("client-pubrel").await;
    let proxy = Proxy::start(broker.tcp).await;
    let (client, mut incoming) = within("connect", Client::connect(via(&proxy, "rel-client")))
        .await
        .expect("connects");
    proxy.hold_after(PacketType::PubRel, Dir::Down);
    let publishing = {
        let client = client.clone();
        tokio::spawn(async move { client.publish("rel/x", "x", QoS::ExactlyOnce, false).await })
    };
    proxy
        .wait_for("PUBREL", |seen| {
            seen.iter().any(|p| matches!(p, Packet::PubRel(_)))
        })
        .await;
    proxy.cut();
    within("the flow", publishing)
        .await
        .expect("task")
        .expect("completes after the PUBREL is resent");
    expect_reconnect(&mut incoming, true).await;
    let seen = proxy.seen();
    let rels = seen
        .iter()
        .filter(|p| matches!(p, Packet::PubRel(_)))
        .count();
    assert_eq!(rels, 2, "{seen:?}");
    assert_eq!(
        publishes(&seen, "rel/x").count(),
        1,
        "the PUBLISH is not repeated"
    );
    within("disconnect", client.disconnect()).await.expect("ok");
}

/// The broker's QoS 2 PUBLISH reaches the application, our PUBREC is lost, the connection
/// drops; the broker resends the PUBLISH (DUP) on the resumed session and the client
/// acknowledges it without delivering it again.
#[tokio::test]
async fn an_inbound_qos2_message_reaches_the_application_once_across_a_reconnect() {
    let broker = TestBroker::start("client-in-qos2").await;
    let proxy = Proxy::start(broker.tcp).await;
    let (client, mut incoming) = within("connect", Client::connect(via(&proxy, "in-client")))
        .await
        .expect("connects");
    within("SUBACK", client.subscribe("in/#", QoS::ExactlyOnce))
        .await
        .expect("subscribed");
    let (publisher, _p) = within("connect", Client::connect(options(&broker, Transport::Tcp)))
        .await
        .expect("publisher connects");

    proxy.hold(Dir::Up, true);
    within(
        "publish",
        publisher.publish("in/x", "only once", QoS::ExactlyOnce, false),
    )
    .await
    .expect("published");
    let m = next_message(&mut incoming).await;
    assert_eq!(m.payload, Bytes::from("only once"));
    proxy
        .wait_for("our PUBREC", |seen| {
            seen.iter().any(|p| matches!(p, Packet::PubRec(_)))
        })
        .await;
    proxy.cut();
    expect_reconnect(&mut incoming, true).await;
    proxy
        .wait_for("the flow to complete", |seen| {
            seen.iter().any(|p| matches!(p, Packet::PubComp(_)))
        })
        .await;
    let recs = proxy
        .seen()
        .iter()
        .filter(|p| matches!(p, Packet::PubRec(_)))
        .count();
    assert_eq!(recs, 2, "the resent PUBLISH was acknowledged again");
    within(
        "marker",
        publisher.publish("in/x", "marker", QoS::ExactlyOnce, false),
    )
    .await
    .expect("published");
    assert_eq!(
        next_message(&mut incoming).await.payload,
        Bytes::from("marker"),
        "no second delivery of the QoS 2 message"
    );
    within("disconnect", client.disconnect()).await.expect("ok");
}

/// A path that silently drops everything (no FIN, no RST) is found by keep-alive.
#[tokio::test]
async fn keep_alive_notices_a_dead_path_and_reconnects() {
    let broker = TestBroker::start("client-keepalive").await;
    let proxy = Proxy::start(broker.tcp).await;
    let (client, mut incoming) = within(
        "connect",
        Client::connect(via(&proxy, "ka-client").keep_alive(Duration::from_secs(1))),
    )
    .await
    .expect("connects");
    within("SUBACK", client.subscribe("ka/#", QoS::AtLeastOnce))
        .await
        .expect("subscribed");
    proxy.hold(Dir::Up, true);
    proxy.hold(Dir::Down, true);
    match next_event(&mut incoming).await {
        Event::ConnectionLost {
            error: ClientError::KeepAliveTimeout(_),
            reconnecting: true,
        } => {}
        other => panic!("expected a keep-alive timeout, got {other:?}"),
    }
    match next_event(&mut incoming).await {
        Event::Reconnected { .. } => {}
        other => panic!("expected a reconnection, got {other:?}"),
    }
    let pings = proxy
        .seen()
        .iter()
        .filter(|p| matches!(p, Packet::PingReq))
        .count();
    assert!(pings >= 1);
    within(
        "publish",
        client.publish("ka/x", "alive", QoS::AtLeastOnce, false),
    )
    .await
    .expect("works after the reconnect");
    assert_eq!(
        next_message(&mut incoming).await.payload,
        Bytes::from("alive")
    );
    within("disconnect", client.disconnect()).await.expect("ok");
}

/// With a bounded number of attempts, a broker that stays away ends the client: the last
/// event says so, pending operations fail, and `Incoming` ends.
#[tokio::test]
async fn reconnecting_gives_up_after_the_configured_attempts() {
    let broker = TestBroker::start("client-give-up").await;
    let proxy = Proxy::start(broker.tcp).await;
    let opts = via(&proxy, "give-up").reconnect(Some(
        Reconnect::new(Duration::from_millis(10), Duration::from_millis(40)).max_attempts(3),
    ));
    let (client, mut incoming) = within("connect", Client::connect(opts))
        .await
        .expect("connects");
    proxy.stop();
    match next_event(&mut incoming).await {
        Event::ConnectionLost {
            reconnecting: true, ..
        } => {}
        other => panic!("{other:?}"),
    }
    match next_event(&mut incoming).await {
        Event::ConnectionLost {
            error: ClientError::GaveUp { attempts: 3, last },
            reconnecting: false,
        } => assert!(
            matches!(*last, ClientError::ConnectionRefused { .. }),
            "{last}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(within("end", incoming.recv()).await.is_none());
    assert!(matches!(
        client.publish("x", "y", QoS::AtLeastOnce, false).await,
        Err(ClientError::Closed)
    ));
}
