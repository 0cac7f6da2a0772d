//! Multi-stream MQTT over QUIC against real quinn connections: the binding rules (replies
//! on the stream of the request, deliveries on the stream of the SUBSCRIBE), data streams
//! opened before CONNACK, a data stream reset in the middle of a QoS 2 flow, and a stalled
//! stream that must not delay the others.

mod common;

use bytes::Bytes;

use common::quic::{self, QuicStream as Stream};
use common::{connect, pid, publish_packet, subscribe_packet, RawClient, TestBroker, WAIT};
use twinmq::protocol::{Ack, Packet, ProtocolVersion, QoS, QosPid, ReasonCode};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn endpoint(ca: &std::path::Path, stream_window: Option<u32>) -> quinn::Endpoint {
    quic::client_endpoint(ca, &["mqtt"], stream_window)
}

fn subscribe(filter: &str, qos: QoS, id: u16) -> Packet {
    subscribe_packet(filter, qos, id)
}

fn publish(topic: &str, qos_pid: QosPid, payload: Bytes) -> Packet {
    publish_packet(topic, qos_pid, payload, false)
}

/// A TCP publisher that waits for each PUBACK (so the message has been routed).
async fn tcp_publisher(broker: &TestBroker, id: &str) -> RawClient {
    let mut p = RawClient::connect(broker.tcp, V5).await;
    assert!(matches!(
        p.handshake(connect(V5, id, true, 30)).await,
        Packet::ConnAck(_)
    ));
    p
}

async fn publish_acked(p: &mut RawClient, topic: &str, id: u16, qos: QoS, payload: Bytes) {
    let qos_pid = QosPid::from_parts(qos, Some(pid(id))).expect("QoS 1/2");
    p.send(&publish(topic, qos_pid, payload)).await;
    loop {
        match p.recv().await {
            Some(Packet::PubAck(_)) => return,
            Some(Packet::PubRec(a)) => p.send(&Packet::PubRel(Ack::new(a.packet_id))).await,
            Some(Packet::PubComp(_)) => return,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn replies_and_deliveries_use_the_stream_of_their_request() {
    let broker = TestBroker::start("multi-bind").await;
    let ep = endpoint(&broker.ca, None);
    let conn = quic::connect(&broker, &ep).await;
    let mut control = Stream::open(&conn).await;
    control
        .send(&Packet::Connect(Box::new(connect(V5, "multi", true, 30))))
        .await;
    assert!(
        matches!(control.expect().await, Packet::ConnAck(c) if c.reason == ReasonCode::Success)
    );

    let mut subs = Stream::open(&conn).await;
    subs.send(&subscribe("a/#", QoS::AtLeastOnce, 1)).await;
    assert!(matches!(subs.expect().await, Packet::SubAck(s) if s.packet_id == pid(1)));

    let mut pubs = Stream::open(&conn).await;
    pubs.send(&publish(
        "a/1",
        QosPid::AtLeastOnce(pid(7)),
        Bytes::from_static(b"hi"),
    ))
    .await;
    assert!(matches!(pubs.expect().await, Packet::PubAck(a) if a.packet_id == pid(7)));

    match subs.expect().await {
        Packet::Publish(p) => {
            assert_eq!(p.payload.as_ref(), b"hi");
            subs.send(&Packet::PubAck(Ack::new(
                p.qos_pid.packet_id().expect("id"),
            )))
            .await;
        }
        other => panic!("delivery belongs on the SUBSCRIBE's stream: {other:?}"),
    }
    control.send(&Packet::PingReq).await;
    assert!(matches!(control.expect().await, Packet::PingResp));
}

#[tokio::test]
async fn a_data_stream_opened_before_connack_waits_for_it() {
    let broker = TestBroker::start("multi-early").await;
    let ep = endpoint(&broker.ca, None);
    let conn = quic::connect(&broker, &ep).await;
    let mut control = Stream::open(&conn).await;
    // Open the control stream on the wire first, then a data stream with a SUBSCRIBE,
    // then CONNECT: the SUBSCRIBE must wait until the session is authenticated.
    control.send.write_all(&[]).await.expect("open");
    let mut data = Stream::open(&conn).await;
    data.send(&subscribe("early/#", QoS::AtMostOnce, 3)).await;
    control
        .send(&Packet::Connect(Box::new(connect(V5, "early", true, 30))))
        .await;
    assert!(
        matches!(control.expect().await, Packet::ConnAck(c) if c.reason == ReasonCode::Success)
    );
    assert!(matches!(data.expect().await, Packet::SubAck(s) if s.packet_id == pid(3)));
}

#[tokio::test]
async fn a_data_stream_reset_mid_qos2_flow_completes_on_the_control_stream_exactly_once() {
    let broker = TestBroker::start("multi-reset").await;
    let ep = endpoint(&broker.ca, None);
    let conn = quic::connect(&broker, &ep).await;
    let mut control = Stream::open(&conn).await;
    let mut c = connect(V5, "resetter", false, 30);
    c.properties.session_expiry_interval = Some(300);
    control.send(&Packet::Connect(Box::new(c))).await;
    assert!(matches!(control.expect().await, Packet::ConnAck(_)));
    let mut data = Stream::open(&conn).await;
    data.send(&subscribe("x/#", QoS::ExactlyOnce, 1)).await;
    assert!(matches!(data.expect().await, Packet::SubAck(_)));

    let mut publisher = tcp_publisher(&broker, "x-pub").await;
    publish_acked(
        &mut publisher,
        "x/1",
        1,
        QoS::ExactlyOnce,
        Bytes::from_static(b"exactly"),
    )
    .await;
    let first = match data.expect().await {
        Packet::Publish(p) => p,
        other => panic!("{other:?}"),
    };
    // The application takes the message; the stream dies before PUBREC goes out.
    let mut delivered = vec![first.payload.clone()];
    let id = first.qos_pid.packet_id().expect("QoS 2 id");
    data.send.reset(0u32.into()).expect("reset");
    data.recv.stop(0u32.into()).expect("stop");

    // The session keeps the flow and resends it on the control stream, with DUP.
    let again = match control.expect().await {
        Packet::Publish(p) => p,
        other => panic!("{other:?}"),
    };
    assert!(again.dup);
    assert_eq!(again.qos_pid.packet_id(), Some(id));
    if again.qos_pid.packet_id() != Some(id) {
        delivered.push(again.payload.clone());
    }
    control.send(&Packet::PubRec(Ack::new(id))).await;
    assert!(matches!(control.expect().await, Packet::PubRel(a) if a.packet_id == id));
    control.send(&Packet::PubComp(Ack::new(id))).await;
    control.send(&Packet::PingReq).await;
    assert!(
        matches!(control.expect().await, Packet::PingResp),
        "the connection survived"
    );
    assert_eq!(
        delivered,
        vec![Bytes::from_static(b"exactly")],
        "no loss, no duplicate"
    );
}

#[tokio::test]
async fn a_stalled_stream_never_delays_the_control_stream_or_other_data_streams() {
    // The client's per-stream receive window is 8 KiB, and it never reads `slow`.
    let broker = TestBroker::start("multi-stall").await;
    let ep = endpoint(&broker.ca, Some(8 * 1024));
    let conn = quic::connect(&broker, &ep).await;
    let mut control = Stream::open(&conn).await;
    control
        .send(&Packet::Connect(Box::new(connect(V5, "staller", true, 30))))
        .await;
    assert!(matches!(control.expect().await, Packet::ConnAck(_)));
    let mut slow = Stream::open(&conn).await;
    slow.send(&subscribe("big/#", QoS::AtMostOnce, 1)).await;
    assert!(matches!(slow.expect().await, Packet::SubAck(_)));
    let mut fast = Stream::open(&conn).await;
    fast.send(&subscribe("small/#", QoS::AtLeastOnce, 2)).await;
    assert!(matches!(fast.expect().await, Packet::SubAck(_)));

    let mut publisher = tcp_publisher(&broker, "staller-pub").await;
    let big = Bytes::from(vec![7u8; 4096]);
    for n in 0..16u16 {
        publish_acked(
            &mut publisher,
            "big/x",
            n + 1,
            QoS::AtLeastOnce,
            big.clone(),
        )
        .await;
    }
    // `slow` is now blocked by flow control; control and `fast` still answer at once.
    control.send(&Packet::PingReq).await;
    assert!(matches!(control.expect().await, Packet::PingResp));
    publish_acked(
        &mut publisher,
        "small/y",
        100,
        QoS::AtLeastOnce,
        Bytes::from_static(b"tiny"),
    )
    .await;
    match tokio::time::timeout(WAIT, fast.expect()).await {
        Ok(Packet::Publish(p)) => assert_eq!(p.payload.as_ref(), b"tiny"),
        other => panic!("the small topic was held up: {other:?}"),
    }
}
