//! The broker over real loopback sockets: rumqttc (a client we did not write) over TLS in
//! both versions, and a raw codec-level peer for the protocol rules a client library hides,
//! including the failures users reported in rumqttd.

mod common;

use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use bytes::Bytes;
use common::{
    connect, pid, publish_packet, subscribe_packet, subscribe_with, tls_client_config, RawClient,
    TestBroker, WAIT,
};
use twinmq::protocol::{
    Ack, Disconnect, MqttString, Packet, Properties, ProtocolVersion, Publish, QoS, QosPid,
    ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions, TopicFilter, TopicName,
    Unsubscribe, Will,
};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

fn publish(topic: &str, qos_pid: QosPid, payload: &'static [u8], retain: bool) -> Packet {
    publish_packet(topic, qos_pid, Bytes::from_static(payload), retain)
}

fn subscribe(filter: &str, qos: QoS, id: u16) -> Packet {
    subscribe_packet(filter, qos, id)
}

/// Connects a raw client and checks the CONNACK.
async fn raw(broker: &TestBroker, version: ProtocolVersion, id: &str, clean: bool) -> RawClient {
    let mut client = RawClient::connect(broker.tcp, version).await;
    let mut c = connect(version, id, clean, 30);
    if version == V5 && !clean {
        c.properties.session_expiry_interval = Some(300);
    }
    let connack = client.handshake(c).await;
    assert!(
        matches!(&connack, Packet::ConnAck(c) if c.reason == ReasonCode::Success),
        "{connack:?}"
    );
    client
}

/// Subscribes and waits for the SUBACK (so later publishes are routed to it).
async fn subscribed(client: &mut RawClient, packet: Packet) -> SubAck {
    client.send(&packet).await;
    match client.recv().await {
        Some(Packet::SubAck(s)) => s,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

async fn recv_publish(client: &mut RawClient) -> Publish {
    match client.recv().await {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Publishes QoS 1 from a throwaway client and waits for PUBACK: once it is back, the
/// broker has routed the message to every subscriber.
async fn publish_acked(broker: &TestBroker, topic: &str, payload: &'static [u8], retain: bool) {
    let mut p = raw(broker, V5, "", true).await;
    p.send(&publish(
        topic,
        QosPid::AtLeastOnce(pid(1)),
        payload,
        retain,
    ))
    .await;
    match p.recv().await {
        Some(Packet::PubAck(a)) if a.packet_id == pid(1) => {}
        other => panic!("expected PUBACK, got {other:?}"),
    }
    p.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
        .await;
}

// ----- clients we did not write -----

async fn rumqttc_v311_roundtrip(broker: &TestBroker) {
    use rumqttc::{
        AsyncClient, Event, MqttOptions, Packet as RPacket, TlsConfiguration, Transport,
    };
    let mut options = MqttOptions::new("rumqttc-v311", "localhost", broker.tls.port());
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        tls_client_config(&broker.ca),
    )));
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = AsyncClient::new(options, 16);
    client
        .subscribe("sensors/+/temp", rumqttc::QoS::ExactlyOnce)
        .await
        .expect("subscribe queued");
    let got = tokio::time::timeout(WAIT, async {
        let mut published = false;
        loop {
            match events.poll().await.expect("rumqttc event loop") {
                Event::Incoming(RPacket::SubAck(_)) if !published => {
                    published = true;
                    for qos in [
                        rumqttc::QoS::AtMostOnce,
                        rumqttc::QoS::AtLeastOnce,
                        rumqttc::QoS::ExactlyOnce,
                    ] {
                        client
                            .publish("sensors/a/temp", qos, false, format!("{qos:?}"))
                            .await
                            .expect("publish queued");
                    }
                }
                Event::Incoming(RPacket::Publish(p)) => return p,
                _ => {}
            }
        }
    })
    .await
    .expect("a message comes back in time");
    assert_eq!(got.topic, "sensors/a/temp");
    assert_eq!(got.payload, Bytes::from_static(b"AtMostOnce"));
}

#[tokio::test]
async fn rumqttc_v311_over_tls_round_trips_every_qos() {
    let broker = TestBroker::start("rumqttc311").await;
    rumqttc_v311_roundtrip(&broker).await;
}

#[tokio::test]
async fn rumqttc_v5_over_tls_round_trips_every_qos() {
    use rumqttc::v5::mqttbytes::v5::Packet as RPacket;
    use rumqttc::v5::mqttbytes::QoS as RQoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    use rumqttc::{TlsConfiguration, Transport};
    let broker = TestBroker::start("rumqttc5").await;
    let mut options = MqttOptions::new("rumqttc-v5", "localhost", broker.tls.port());
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        tls_client_config(&broker.ca),
    )));
    let (client, mut events) = AsyncClient::new(options, 16);
    client
        .subscribe("v5/#", RQoS::ExactlyOnce)
        .await
        .expect("subscribe queued");
    let payloads = tokio::time::timeout(WAIT, async {
        let mut seen = Vec::new();
        loop {
            match events.poll().await.expect("rumqttc v5 event loop") {
                Event::Incoming(RPacket::SubAck(_)) => {
                    for qos in [RQoS::AtMostOnce, RQoS::AtLeastOnce, RQoS::ExactlyOnce] {
                        client
                            .publish("v5/x", qos, false, format!("{qos:?}"))
                            .await
                            .expect("publish queued");
                    }
                }
                Event::Incoming(RPacket::Publish(p)) => {
                    seen.push((p.payload.clone(), p.qos));
                    if seen.len() == 3 {
                        return seen;
                    }
                }
                _ => {}
            }
        }
    })
    .await
    .expect("three messages in time");
    assert_eq!(
        payloads,
        vec![
            (Bytes::from_static(b"AtMostOnce"), RQoS::AtMostOnce),
            (Bytes::from_static(b"AtLeastOnce"), RQoS::AtLeastOnce),
            (Bytes::from_static(b"ExactlyOnce"), RQoS::ExactlyOnce),
        ]
    );
}

// ----- sessions -----

#[tokio::test]
async fn a_duplicate_client_id_kicks_the_old_connection_with_0x8e() {
    let broker = TestBroker::start("takeover").await;
    let mut first = raw(&broker, V5, "dup", false).await;
    let _second = raw(&broker, V5, "dup", false).await;
    let seen = first.expect_closed().await;
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::SessionTakenOver),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_taken_over_v311_session_is_resumed_by_the_new_connection() {
    let broker = TestBroker::start("takeover311").await;
    let mut first = raw(&broker, V311, "dup311", false).await;
    subscribed(&mut first, subscribe("t/#", QoS::AtLeastOnce, 1)).await;
    let mut second = RawClient::connect(broker.tcp, V311).await;
    let connack = second.handshake(connect(V311, "dup311", false, 30)).await;
    assert!(matches!(connack, Packet::ConnAck(c) if c.session_present));
    assert!(
        first.expect_closed().await.is_empty(),
        "v3.1.1 has no DISCONNECT from the server"
    );
    publish_acked(&broker, "t/1", b"after takeover", false).await;
    assert_eq!(
        recv_publish(&mut second).await.payload,
        Bytes::from_static(b"after takeover")
    );
}

#[tokio::test]
async fn messages_published_while_offline_are_queued_and_delivered_on_resume() {
    let broker = TestBroker::start("offline").await;
    let mut sub = raw(&broker, V5, "offline-sub", false).await;
    subscribed(&mut sub, subscribe("q/#", QoS::ExactlyOnce, 1)).await;
    sub.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
        .await;
    assert!(sub.expect_closed().await.is_empty());
    for payload in [&b"one"[..], b"two", b"three"] {
        let mut p = raw(&broker, V5, "", true).await;
        p.send(&Packet::Publish(Publish {
            dup: false,
            qos_pid: QosPid::AtLeastOnce(pid(1)),
            retain: false,
            topic: TopicName::new("q/x").expect("topic"),
            payload: Bytes::copy_from_slice(payload),
            properties: Properties::default(),
        }))
        .await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    }
    let mut back = RawClient::connect(broker.tcp, V5).await;
    let mut c = connect(V5, "offline-sub", false, 30);
    c.properties.session_expiry_interval = Some(300);
    assert!(matches!(back.handshake(c).await, Packet::ConnAck(c) if c.session_present));
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = recv_publish(&mut back).await;
        assert_eq!(p.qos(), QoS::AtLeastOnce);
        got.push(p.payload);
    }
    assert_eq!(
        got,
        vec![
            Bytes::from_static(b"one"),
            Bytes::from_static(b"two"),
            Bytes::from_static(b"three")
        ]
    );
}

#[tokio::test]
async fn unacknowledged_qos1_and_qos2_are_redelivered_with_dup_on_reconnect() {
    let broker = TestBroker::start("redeliver").await;
    let mut sub = raw(&broker, V5, "redeliver", false).await;
    subscribed(&mut sub, subscribe("r/#", QoS::ExactlyOnce, 1)).await;
    publish_acked(&broker, "r/1", b"q1", false).await;
    let mut p = raw(&broker, V5, "", true).await;
    p.send(&publish("r/2", QosPid::ExactlyOnce(pid(2)), b"q2", false))
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(_))));
    let first = recv_publish(&mut sub).await;
    let second = recv_publish(&mut sub).await;
    // Drop the connection without acknowledging either.
    drop(sub);
    let mut back = RawClient::connect(broker.tcp, V5).await;
    let mut c = connect(V5, "redeliver", false, 30);
    c.properties.session_expiry_interval = Some(300);
    assert!(matches!(back.handshake(c).await, Packet::ConnAck(c) if c.session_present));
    let again1 = recv_publish(&mut back).await;
    let again2 = recv_publish(&mut back).await;
    assert!(
        again1.dup && again2.dup,
        "redeliveries carry DUP [MQTT-3.3.1-1]"
    );
    assert_eq!(again1.qos_pid, first.qos_pid);
    assert_eq!(again2.qos_pid, second.qos_pid);
    assert_eq!(again1.payload, first.payload);
}

#[tokio::test]
async fn an_empty_client_id_follows_the_spec_in_each_version() {
    let broker = TestBroker::start("emptyid").await;
    let mut v5 = RawClient::connect(broker.tcp, V5).await;
    match v5.handshake(connect(V5, "", true, 30)).await {
        Packet::ConnAck(c) => {
            let assigned = c
                .properties
                .assigned_client_identifier
                .expect("assigned id");
            assert!(!assigned.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let mut v3 = RawClient::connect(broker.tcp, V311).await;
    assert!(
        matches!(v3.handshake(connect(V311, "", true, 30)).await, Packet::ConnAck(c) if c.reason == ReasonCode::Success)
    );
    let mut v3_persistent = RawClient::connect(broker.tcp, V311).await;
    let refused = v3_persistent.handshake(connect(V311, "", false, 30)).await;
    assert!(
        matches!(refused, Packet::ConnAck(c) if c.reason == ReasonCode::ClientIdentifierNotValid)
    );
    assert!(v3_persistent.expect_closed().await.is_empty());
}

// ----- keep-alive and wills (rumqttd regressions) -----

#[tokio::test]
async fn keep_alive_expiry_closes_the_socket() {
    let broker = TestBroker::start("keepalive").await;
    let mut v3 = RawClient::connect(broker.tcp, V311).await;
    assert!(matches!(
        v3.handshake(connect(V311, "ka3", true, 1)).await,
        Packet::ConnAck(_)
    ));
    let mut v5 = RawClient::connect(broker.tcp, V5).await;
    assert!(matches!(
        v5.handshake(connect(V5, "ka5", true, 1)).await,
        Packet::ConnAck(_)
    ));
    // Silent clients: the broker must close both sockets after 1.5 s.
    assert!(v3.expect_closed().await.is_empty());
    let seen = v5.expect_closed().await;
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::KeepAliveTimeout)
    );
}

fn will(topic: &str, payload: &'static [u8]) -> Will {
    Will {
        topic: TopicName::new(topic).expect("topic"),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    }
}

#[tokio::test]
async fn the_will_is_published_on_abrupt_close_and_on_0x04_but_not_on_normal_disconnect() {
    let broker = TestBroker::start("will").await;
    let mut watcher = raw(&broker, V5, "watcher", true).await;
    subscribed(&mut watcher, subscribe("wills/#", QoS::AtLeastOnce, 1)).await;

    for (id, ending) in [
        ("abrupt", None),
        ("normal", Some(ReasonCode::Success)),
        ("with-will", Some(ReasonCode::DisconnectWithWill)),
    ] {
        let mut c = connect(V5, id, true, 30);
        c.will = Some(will(&format!("wills/{id}"), b"gone"));
        let mut client = RawClient::connect(broker.tcp, V5).await;
        assert!(matches!(client.handshake(c).await, Packet::ConnAck(_)));
        match ending {
            None => drop(client),
            Some(reason) => {
                client
                    .send(&Packet::Disconnect(Disconnect::new(reason)))
                    .await;
                assert!(client.expect_closed().await.is_empty());
            }
        }
    }
    // A sentinel published after all three: every will that is coming has been routed.
    publish_acked(&broker, "wills/sentinel", b"end", false).await;
    let mut topics = Vec::new();
    loop {
        let p = recv_publish(&mut watcher).await;
        if let Some(id) = p.qos_pid.packet_id() {
            watcher.send(&Packet::PubAck(Ack::new(id))).await;
        }
        if p.topic.as_str() == "wills/sentinel" {
            break;
        }
        topics.push(p.topic.as_str().to_string());
    }
    topics.sort();
    assert_eq!(topics, vec!["wills/abrupt", "wills/with-will"]);
}

#[tokio::test]
async fn a_delayed_will_is_not_published_if_the_client_returns_in_time() {
    let broker = TestBroker::start("willdelay").await;
    let mut watcher = raw(&broker, V5, "watcher", true).await;
    subscribed(&mut watcher, subscribe("wd/#", QoS::AtMostOnce, 1)).await;
    let mut c = connect(V5, "delayed", false, 30);
    c.properties.session_expiry_interval = Some(60);
    let mut w = will("wd/delayed", b"gone");
    w.properties.will_delay_interval = Some(2);
    c.will = Some(w);
    let mut client = RawClient::connect(broker.tcp, V5).await;
    assert!(matches!(
        client.handshake(c.clone()).await,
        Packet::ConnAck(_)
    ));
    drop(client);
    let mut back = RawClient::connect(broker.tcp, V5).await;
    c.will = None;
    assert!(matches!(back.handshake(c).await, Packet::ConnAck(_)));
    // Past the delay: only the sentinel arrives.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    publish_acked(&broker, "wd/sentinel", b"end", false).await;
    assert_eq!(
        recv_publish(&mut watcher).await.topic.as_str(),
        "wd/sentinel"
    );
}

// ----- retained -----

#[tokio::test]
async fn retained_messages_are_set_replaced_cleared_and_sent_per_retain_handling() {
    let broker = TestBroker::start("retained").await;
    publish_acked(&broker, "ret/a", b"first", true).await;
    publish_acked(&broker, "ret/a", b"second", true).await;
    publish_acked(&broker, "ret/b", b"gone", true).await;
    publish_acked(&broker, "ret/b", b"", true).await;

    let mut sub = raw(&broker, V5, "ret-sub", true).await;
    subscribed(&mut sub, subscribe("ret/#", QoS::AtLeastOnce, 1)).await;
    let p = recv_publish(&mut sub).await;
    assert_eq!(
        (p.topic.as_str(), p.payload.as_ref(), p.retain),
        ("ret/a", &b"second"[..], true)
    );

    // Retain handling 2: nothing on subscribe. 1: only for a new subscription.
    let mut options = SubscriptionOptions::qos(QoS::AtMostOnce);
    options.retain_handling = RetainHandling::DoNotSend;
    let mut rh2 = raw(&broker, V5, "rh2", true).await;
    subscribed(&mut rh2, subscribe_with("ret/#", options, 1)).await;
    options.retain_handling = RetainHandling::SendIfNew;
    let mut rh1 = raw(&broker, V5, "rh1", true).await;
    subscribed(&mut rh1, subscribe_with("ret/#", options, 1)).await;
    assert_eq!(recv_publish(&mut rh1).await.payload.as_ref(), b"second");
    subscribed(&mut rh1, subscribe_with("ret/#", options, 2)).await;
    publish_acked(&broker, "ret/sentinel", b"end", false).await;
    assert_eq!(recv_publish(&mut rh1).await.topic.as_str(), "ret/sentinel");
    assert_eq!(recv_publish(&mut rh2).await.topic.as_str(), "ret/sentinel");
}

#[tokio::test]
async fn retained_messages_reach_a_resumed_session_that_subscribes_with_retain_handling_0() {
    let broker = TestBroker::start("retresume").await;
    let mut sub = raw(&broker, V5, "resumer", false).await;
    subscribed(&mut sub, subscribe("rr/#", QoS::AtLeastOnce, 1)).await;
    sub.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
        .await;
    assert!(sub.expect_closed().await.is_empty());
    publish_acked(&broker, "rr/state", b"on", true).await;
    let mut back = RawClient::connect(broker.tcp, V5).await;
    let mut c = connect(V5, "resumer", false, 30);
    c.properties.session_expiry_interval = Some(300);
    assert!(matches!(back.handshake(c).await, Packet::ConnAck(c) if c.session_present));
    // The queued copy arrives first (not retained: it was routed live).
    let queued = recv_publish(&mut back).await;
    assert_eq!(
        (queued.payload.as_ref(), queued.retain),
        (&b"on"[..], false)
    );
    back.send(&Packet::PubAck(Ack::new(
        queued.qos_pid.packet_id().expect("QoS 1"),
    )))
    .await;
    back.send(&subscribe("rr/#", QoS::AtLeastOnce, 7)).await;
    let mut saw_suback = false;
    let mut retained = None;
    while !(saw_suback && retained.is_some()) {
        match back.recv().await {
            Some(Packet::SubAck(_)) => saw_suback = true,
            Some(Packet::Publish(p)) => retained = Some(p),
            other => panic!("{other:?}"),
        }
    }
    let retained = retained.expect("retained message");
    assert!(retained.retain && retained.payload.as_ref() == b"on");
}

// ----- protocol details -----

#[tokio::test]
async fn a_v5_pubrel_with_properties_completes_the_flow() {
    let broker = TestBroker::start("pubrel").await;
    let mut c = raw(&broker, V5, "pubrel", true).await;
    c.send(&publish("p/q2", QosPid::ExactlyOnce(pid(9)), b"x", false))
        .await;
    assert!(matches!(c.recv().await, Some(Packet::PubRec(a)) if a.packet_id == pid(9)));
    let mut pubrel = Ack::new(pid(9));
    pubrel.properties.reason_string = Some(MqttString::new("because").expect("string"));
    pubrel.properties.user_properties = vec![(
        MqttString::new("k").expect("k"),
        MqttString::new("v").expect("v"),
    )];
    c.send(&Packet::PubRel(pubrel)).await;
    assert!(
        matches!(c.recv().await, Some(Packet::PubComp(a)) if a.packet_id == pid(9) && a.reason == ReasonCode::Success)
    );
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_the_highest_qos_with_every_identifier() {
    let broker = TestBroker::start("overlap").await;
    let mut sub = raw(&broker, V5, "overlap", true).await;
    for (filter, qos, id) in [
        ("o/+", QoS::AtMostOnce, 11u32),
        ("o/#", QoS::AtLeastOnce, 22),
    ] {
        let mut s = Subscribe {
            packet_id: pid(id as u16),
            filters: vec![(
                TopicFilter::new(filter).expect("filter"),
                SubscriptionOptions::qos(qos),
            )],
            properties: Properties::default(),
        };
        s.properties.subscription_identifiers = vec![NonZeroU32::new(id).expect("non-zero")];
        subscribed(&mut sub, Packet::Subscribe(s)).await;
    }
    publish_acked(&broker, "o/x", b"once", false).await;
    let p = recv_publish(&mut sub).await;
    assert_eq!(p.qos(), QoS::AtLeastOnce);
    assert_eq!(
        p.properties.subscription_identifiers,
        vec![
            NonZeroU32::new(11).expect("11"),
            NonZeroU32::new(22).expect("22")
        ]
    );
    sub.send(&Packet::PubAck(Ack::new(
        p.qos_pid.packet_id().expect("id"),
    )))
    .await;
    publish_acked(&broker, "o/sentinel", b"end", false).await;
    assert_eq!(
        recv_publish(&mut sub).await.topic.as_str(),
        "o/sentinel",
        "no second copy"
    );
}

#[tokio::test]
async fn no_local_keeps_a_clients_own_messages_from_it() {
    let broker = TestBroker::start("nolocal").await;
    let mut c = raw(&broker, V5, "nl", true).await;
    let mut options = SubscriptionOptions::qos(QoS::AtMostOnce);
    options.no_local = true;
    subscribed(&mut c, subscribe_with("nl/#", options, 1)).await;
    c.send(&publish("nl/own", QosPid::AtMostOnce, b"mine", false))
        .await;
    publish_acked(&broker, "nl/other", b"theirs", false).await;
    assert_eq!(recv_publish(&mut c).await.topic.as_str(), "nl/other");
}

#[tokio::test]
async fn sys_topics_are_not_matched_by_a_leading_wildcard() {
    let broker = TestBroker::start_with("sys", &["sys.interval=1s"]).await;
    let mut all = raw(&broker, V5, "all", true).await;
    subscribed(&mut all, subscribe("#", QoS::AtMostOnce, 1)).await;
    let mut sys = raw(&broker, V5, "sys", true).await;
    subscribed(
        &mut sys,
        subscribe("$SYS/broker/version", QoS::AtMostOnce, 1),
    )
    .await;
    let version = recv_publish(&mut sys).await;
    assert!(String::from_utf8_lossy(&version.payload).starts_with("twinmq"));
    publish_acked(&broker, "plain", b"x", false).await;
    assert_eq!(recv_publish(&mut all).await.topic.as_str(), "plain");
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_reports_missing_subscriptions() {
    let broker = TestBroker::start("unsub").await;
    let mut c = raw(&broker, V5, "unsub", true).await;
    subscribed(&mut c, subscribe("u/a", QoS::AtMostOnce, 1)).await;
    subscribed(&mut c, subscribe("u/b", QoS::AtMostOnce, 2)).await;
    c.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(3),
        filters: vec![
            TopicFilter::new("u/a").expect("f"),
            TopicFilter::new("u/zzz").expect("f"),
        ],
        properties: Properties::default(),
    }))
    .await;
    match c.recv().await {
        Some(Packet::UnsubAck(u)) => assert_eq!(
            u.reasons,
            vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
        ),
        other => panic!("{other:?}"),
    }
    publish_acked(&broker, "u/a", b"no", false).await;
    publish_acked(&broker, "u/b", b"yes", false).await;
    assert_eq!(recv_publish(&mut c).await.topic.as_str(), "u/b");
}

// ----- shared subscriptions -----

#[tokio::test]
async fn shared_subscriptions_take_turns_and_fail_over_when_a_member_leaves() {
    let broker = TestBroker::start("shared").await;
    let mut a = raw(&broker, V5, "member-a", true).await;
    let mut b = raw(&broker, V5, "member-b", true).await;
    subscribed(&mut a, subscribe("$share/g/jobs/#", QoS::AtLeastOnce, 1)).await;
    subscribed(&mut b, subscribe("$share/g/jobs/#", QoS::AtLeastOnce, 1)).await;
    for _ in 0..4 {
        publish_acked(&broker, "jobs/x", b"job", false).await;
    }
    let mut per_member = [0, 0];
    for (i, client) in [&mut a, &mut b].into_iter().enumerate() {
        for _ in 0..2 {
            let p = recv_publish(client).await;
            client
                .send(&Packet::PubAck(Ack::new(
                    p.qos_pid.packet_id().expect("id"),
                )))
                .await;
            per_member[i] += 1;
        }
    }
    assert_eq!(per_member, [2, 2]);

    // A receives a job and vanishes without acknowledging it: it goes to B.
    publish_acked(&broker, "jobs/x", b"stranded-or-b", false).await;
    publish_acked(&broker, "jobs/x", b"stranded-or-b", false).await;
    let to_a = recv_publish(&mut a).await;
    assert_eq!(to_a.qos(), QoS::AtLeastOnce);
    drop(a);
    let mut got_b = 0;
    while got_b < 2 {
        let p = recv_publish(&mut b).await;
        b.send(&Packet::PubAck(Ack::new(
            p.qos_pid.packet_id().expect("id"),
        )))
        .await;
        got_b += 1;
    }
}

// ----- limits and shutdown -----

#[tokio::test]
async fn graceful_shutdown_tells_v5_clients_0x8b() {
    let broker = TestBroker::start("shutdown").await;
    let mut c = raw(&broker, V5, "leaving", true).await;
    let server = broker.server;
    let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(5)));
    let seen = c.expect_closed().await;
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::ServerShuttingDown)
    );
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown ends")
        .expect("no panic");
}

#[tokio::test]
async fn connections_past_max_connections_are_refused() {
    let broker = TestBroker::start_with("maxconn", &["limits.max_connections=1"]).await;
    let _first = raw(&broker, V5, "only", true).await;
    let mut second = RawClient::connect(broker.tcp, V5).await;
    second
        .send(&Packet::Connect(Box::new(connect(V5, "second", true, 30))))
        .await;
    assert!(second.expect_closed().await.is_empty());
}

#[tokio::test]
async fn a_receive_maximum_from_the_client_limits_messages_in_flight() {
    let broker = TestBroker::start("rxmax").await;
    let mut c = RawClient::connect(broker.tcp, V5).await;
    let mut conn = connect(V5, "rxmax", true, 30);
    conn.properties.receive_maximum = NonZeroU16::new(1);
    assert!(matches!(c.handshake(conn).await, Packet::ConnAck(_)));
    subscribed(&mut c, subscribe("rx/#", QoS::AtLeastOnce, 1)).await;
    publish_acked(&broker, "rx/1", b"1", false).await;
    publish_acked(&broker, "rx/2", b"2", false).await;
    let first = recv_publish(&mut c).await;
    // The second waits for our PUBACK; acknowledging releases it.
    c.send(&Packet::PubAck(Ack::new(
        first.qos_pid.packet_id().expect("id"),
    )))
    .await;
    let second = recv_publish(&mut c).await;
    assert_eq!(
        (first.payload.as_ref(), second.payload.as_ref()),
        (&b"1"[..], &b"2"[..])
    );
}

#[tokio::test]
async fn a_silent_tls_client_is_dropped_after_the_handshake_timeout_and_others_still_connect() {
    use tokio::io::AsyncReadExt;
    let broker = TestBroker::start_with("hstimeout", &["limits.handshake_timeout=3s"]).await;
    let mut silent = tokio::net::TcpStream::connect(broker.tls)
        .await
        .expect("tcp connect");
    // While it hangs in its handshake, the accept loop keeps serving others.
    rumqttc_v311_roundtrip(&broker).await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(
        n, 0,
        "the broker closes a client that never finishes its handshake"
    );
}

#[tokio::test]
async fn a_client_that_never_sends_connect_is_dropped_after_the_connect_timeout() {
    let broker = TestBroker::start_with("conntimeout", &["mqtt.connect_timeout=1s"]).await;
    let mut silent = RawClient::connect(broker.tcp, V5).await;
    assert!(silent.expect_closed().await.is_empty());
}

/// A clean session never touches the store: its CONNECT and its DISCONNECT write nothing.
#[tokio::test]
async fn clean_sessions_coming_and_going_write_nothing_to_the_store() {
    let broker = TestBroker::start("clean-nowrite").await;
    let stats = || {
        broker
            .server
            .broker
            .store_stats()
            .expect("the test broker has a store")
    };
    let before = stats();
    for n in 0..5 {
        let mut c = raw(&broker, V5, &format!("clean-{n}"), true).await;
        c.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
            .await;
        assert!(c.expect_closed().await.is_empty());
    }
    // One thread: once the count is down, each session's end has run whole.
    let connected = &broker.server.broker.stats.clients_connected;
    let deadline = tokio::time::Instant::now() + WAIT;
    while twinmq::broker::Stats::get(connected) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions never ended"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // A persistent session's CONNACK waits for its commit, so for all enqueued before.
    let mut persistent = connect(V5, "kept", false, 30);
    persistent.properties.session_expiry_interval = Some(60);
    let mut kept = RawClient::connect(broker.tcp, V5).await;
    assert!(matches!(
        kept.handshake(persistent).await,
        Packet::ConnAck(_)
    ));
    assert_eq!(
        stats().batches - before.batches,
        1,
        "only the persistent session was written"
    );
}
