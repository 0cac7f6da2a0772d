//! The QUIC side of `twinmq::client`: migration to a new local UDP port mid-session
//! without a new CONNECT, and multi-stream mode (every QoS, deliveries on the stream of
//! their SUBSCRIBE, publishes on caller-chosen streams, a session resumed over streams).

mod client_util;
mod common;

use std::time::Duration;

use bytes::Bytes;
use client_util::{next_message, options, within};
use common::TestBroker;
use twinmq::broker::Stats;
use twinmq::client::{Client, ClientOptions, Event, Incoming, StreamKey, StreamMode, Transport};
use twinmq::protocol::QoS;

fn multi(broker: &TestBroker) -> ClientOptions {
    options(broker, Transport::Quic).streams(StreamMode::Multi)
}

/// Asserts nothing but messages arrived: no lost connection, no reconnection.
fn assert_no_connection_events(events: &[Event]) {
    for event in events {
        assert!(matches!(event, Event::Message(_)), "{event:?}");
    }
}

async fn messages(incoming: &mut Incoming, n: usize) -> Vec<Event> {
    let mut events = Vec::new();
    while events
        .iter()
        .filter(|e| matches!(e, Event::Message(_)))
        .count()
        < n
    {
        events.push(
            within("an event", incoming.recv())
                .await
                .expect("client running"),
        );
    }
    events
}

async fn migrate_and_keep_receiving(streams: StreamMode) {
    let broker = TestBroker::start(&format!("client-migrate-{streams:?}")).await;
    let (client, mut incoming) = within(
        "connect",
        Client::connect(options(&broker, Transport::Quic).streams(streams)),
    )
    .await
    .expect("connects over QUIC");
    within("SUBACK", client.subscribe("mig/#", QoS::AtLeastOnce))
        .await
        .expect("subscribed");
    let (publisher, _p) = within("connect", Client::connect(options(&broker, Transport::Tcp)))
        .await
        .expect("publisher connects");
    within(
        "publish",
        publisher.publish("mig/1", "before", QoS::AtLeastOnce, false),
    )
    .await
    .expect("published");
    let mut events = messages(&mut incoming, 1).await;

    let before = client
        .local_addr()
        .expect("a QUIC client has a local address");
    let after = client.rebind().expect("rebinds");
    assert_ne!(before.port(), after.port(), "a new local UDP port");
    assert_eq!(client.local_addr(), Some(after));

    for (payload, qos) in [("after-1", QoS::AtLeastOnce), ("after-2", QoS::AtMostOnce)] {
        within("publish", publisher.publish("mig/2", payload, qos, false))
            .await
            .expect("published");
    }
    events.extend(messages(&mut incoming, 2).await);
    // And the migrated client still publishes.
    within(
        "publish after migrating",
        client.publish("mig/3", "from the new port", QoS::ExactlyOnce, false),
    )
    .await
    .expect("the QoS 2 flow completes over the migrated path");
    events.extend(messages(&mut incoming, 1).await);

    let payloads: Vec<Bytes> = events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.payload.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        payloads,
        ["before", "after-1", "after-2", "from the new port"]
    );
    assert_no_connection_events(&events);
    assert_eq!(client.connections(), 1, "no new CONNECT from the client");
    assert_eq!(
        Stats::get(&broker.server.broker.stats.connections_total),
        2,
        "the broker accepted two connections: the subscriber's (once) and the publisher's"
    );
    within("disconnect", client.disconnect()).await.expect("ok");
    within("disconnect", publisher.disconnect())
        .await
        .expect("ok");
}

#[tokio::test]
async fn a_single_stream_client_migrates_to_a_new_port_without_reconnecting() {
    migrate_and_keep_receiving(StreamMode::Single).await;
}

#[tokio::test]
async fn a_multi_stream_client_migrates_to_a_new_port_without_reconnecting() {
    migrate_and_keep_receiving(StreamMode::Multi).await;
}

#[tokio::test]
async fn every_qos_round_trips_over_multi_stream() {
    let broker = TestBroker::start("client-multi-qos").await;
    let (sub, mut incoming) = within("connect", Client::connect(multi(&broker)))
        .await
        .expect("connects");
    within("SUBACK", sub.subscribe("mq/#", QoS::ExactlyOnce))
        .await
        .expect("subscribed");
    let (publisher, _p) = within("connect", Client::connect(multi(&broker)))
        .await
        .expect("connects");
    for (qos, payload) in [
        (QoS::AtMostOnce, "zero"),
        (QoS::AtLeastOnce, "one"),
        (QoS::ExactlyOnce, "two"),
    ] {
        within("publish", publisher.publish("mq/x", payload, qos, false))
            .await
            .unwrap_or_else(|e| panic!("{qos:?}: {e}"));
        let m = next_message(&mut incoming).await;
        assert_eq!((m.payload, m.qos), (Bytes::from(payload), qos));
        assert_eq!(
            m.stream,
            Some(StreamKey::new("mq/#")),
            "the filter's own stream"
        );
    }
    within("disconnect", sub.disconnect()).await.expect("ok");
    within("disconnect", publisher.disconnect())
        .await
        .expect("ok");
}

/// Deliveries come back on the stream their SUBSCRIBE went out on, whichever stream the
/// publisher used; publishes on several streams all complete.
#[tokio::test]
async fn deliveries_arrive_on_the_stream_of_their_subscribe() {
    let broker = TestBroker::start("client-multi-bind").await;
    let (sub, mut incoming) = within("connect", Client::connect(multi(&broker)))
        .await
        .expect("connects");
    let alerts = StreamKey::new("alerts");
    let bulk = StreamKey::new("bulk");
    within(
        "SUBACK",
        sub.subscribe_on(alerts.clone(), "alert/#", QoS::AtLeastOnce),
    )
    .await
    .expect("subscribed");
    within(
        "SUBACK",
        sub.subscribe_on(bulk.clone(), "bulk/#", QoS::ExactlyOnce),
    )
    .await
    .expect("subscribed");
    let (publisher, _p) = within("connect", Client::connect(multi(&broker)))
        .await
        .expect("connects");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10 {
        let p = publisher.clone();
        tasks.spawn(async move {
            p.publish_on(
                StreamKey::new("p-alert"),
                "alert/x",
                format!("a{i}"),
                QoS::AtLeastOnce,
                false,
            )
            .await
        });
        let p = publisher.clone();
        tasks.spawn(async move {
            p.publish_on(
                StreamKey::new("p-bulk"),
                "bulk/x",
                format!("b{i}"),
                QoS::ExactlyOnce,
                false,
            )
            .await
        });
    }
    while let Some(done) = within("publishes", tasks.join_next()).await {
        done.expect("task").expect("publish completes");
    }
    let mut per_stream = std::collections::HashMap::<StreamKey, Vec<String>>::new();
    for _ in 0..20 {
        let m = next_message(&mut incoming).await;
        let expected = if m.topic.as_str().starts_with("alert/") {
            &alerts
        } else {
            &bulk
        };
        assert_eq!(m.stream.as_ref(), Some(expected), "{}", m.topic);
        per_stream
            .entry(expected.clone())
            .or_default()
            .push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    assert_eq!(per_stream[&alerts].len(), 10);
    assert_eq!(per_stream[&bulk].len(), 10);
    within("disconnect", sub.disconnect()).await.expect("ok");
    within("disconnect", publisher.disconnect())
        .await
        .expect("ok");
}

/// A persistent session subscribed over a data stream gets what was queued while it was
/// away after reconnecting in multi-stream mode (on whichever stream the broker picks, the
/// old one being gone).
#[tokio::test]
async fn a_multi_stream_session_resumes_with_its_offline_queue() {
    let broker = TestBroker::start("client-multi-resume").await;
    let opts = multi(&broker)
        .client_id("multi-persistent")
        .persistent_session(Duration::from_secs(300));
    let (client, _e) = within("connect", Client::connect(opts.clone()))
        .await
        .expect("connects");
    within("SUBACK", client.subscribe("away/#", QoS::AtLeastOnce))
        .await
        .expect("subscribed");
    within("disconnect", client.disconnect()).await.expect("ok");
    let (publisher, _p) = within("connect", Client::connect(options(&broker, Transport::Tls)))
        .await
        .expect("connects");
    for i in 0..3 {
        within(
            "publish",
            publisher.publish("away/x", format!("q{i}"), QoS::AtLeastOnce, false),
        )
        .await
        .expect("published");
    }
    let (back, mut incoming) = within("reconnect", Client::connect(opts))
        .await
        .expect("connects again");
    assert!(back.session_present());
    for i in 0..3 {
        assert_eq!(
            next_message(&mut incoming).await.payload,
            Bytes::from(format!("q{i}"))
        );
    }
    // Live traffic after the resume still flows.
    within(
        "publish",
        publisher.publish("away/y", "live", QoS::AtLeastOnce, false),
    )
    .await
    .expect("published");
    assert_eq!(
        next_message(&mut incoming).await.payload,
        Bytes::from("live")
    );
    within("disconnect", back.disconnect()).await.expect("ok");
}

/// Dropping `Incoming` does not stop the client (its messages are acknowledged and
/// discarded); dropping every `Client` handle disconnects and ends `Incoming`.
#[tokio::test]
async fn dropping_incoming_keeps_the_client_and_dropping_the_client_ends_it() {
    let broker = TestBroker::start("client-drop").await;
    let (client, incoming) = within(
        "connect",
        Client::connect(options(&broker, Transport::Quic)),
    )
    .await
    .expect("connects");
    drop(incoming);
    within("SUBACK", client.subscribe("drop/#", QoS::AtLeastOnce))
        .await
        .expect("subscribed");
    for _ in 0..5 {
        within(
            "publish",
            client.publish("drop/x", "x", QoS::AtLeastOnce, false),
        )
        .await
        .expect("published");
    }
    within("disconnect", client.disconnect()).await.expect("ok");

    let (client, mut incoming) = within(
        "connect",
        Client::connect(options(&broker, Transport::Quic)),
    )
    .await
    .expect("connects");
    let clone = client.clone();
    drop(client);
    within(
        "publish",
        clone.publish("drop/y", "y", QoS::AtLeastOnce, false),
    )
    .await
    .expect("a clone keeps the client alive");
    drop(clone);
    assert!(
        within("the end of events", incoming.recv()).await.is_none(),
        "the client ended once every handle was gone"
    );
}

/// Over multi-stream QUIC, PINGREQ goes on the control stream and its PINGRESP comes back
/// there: an idle client with a 2 s keep-alive stays connected for several periods.
#[tokio::test]
async fn an_idle_multi_stream_client_is_kept_alive_on_the_control_stream() {
    let broker = TestBroker::start("client-multi-ka").await;
    let (client, mut incoming) = within(
        "connect",
        Client::connect(multi(&broker).keep_alive(Duration::from_secs(2))),
    )
    .await
    .expect("connects");
    within("SUBACK", client.subscribe("ka/#", QoS::AtLeastOnce))
        .await
        .expect("subscribed");
    // Two and a half keep-alive periods with nothing to say: any event here would be a
    // lost connection.
    let quiet = tokio::time::timeout(Duration::from_secs(5), incoming.recv()).await;
    assert!(quiet.is_err(), "{quiet:?}");
    assert_eq!(client.connections(), 1);
    within(
        "publish",
        client.publish("ka/x", "still here", QoS::AtLeastOnce, false),
    )
    .await
    .expect("published");
    assert_eq!(
        next_message(&mut incoming).await.payload,
        Bytes::from("still here")
    );
    within("disconnect", client.disconnect()).await.expect("ok");
}

/// UNSUBSCRIBE goes on the stream of its SUBSCRIBE and ends the deliveries there.
#[tokio::test]
async fn unsubscribing_on_a_data_stream_stops_its_deliveries() {
    let broker = TestBroker::start("client-multi-unsub").await;
    let (client, mut incoming) = within("connect", Client::connect(multi(&broker)))
        .await
        .expect("connects");
    within("SUBACK", client.subscribe("gone/#", QoS::AtLeastOnce))
        .await
        .expect("subscribed");
    within("SUBACK", client.subscribe("kept/#", QoS::AtLeastOnce))
        .await
        .expect("subscribed");
    within("UNSUBACK", client.unsubscribe("gone/#"))
        .await
        .expect("unsubscribed");
    within(
        "publish",
        client.publish("gone/x", "not for us", QoS::AtLeastOnce, false),
    )
    .await
    .expect("published");
    within(
        "publish",
        client.publish("kept/x", "marker", QoS::AtLeastOnce, false),
    )
    .await
    .expect("published");
    let m = next_message(&mut incoming).await;
    assert_eq!(m.payload, Bytes::from("marker"));
    assert_eq!(m.stream, Some(StreamKey::new("kept/#")));
    within("disconnect", client.disconnect()).await.expect("ok");
}
