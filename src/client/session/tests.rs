//! The client session driven packet by packet, no IO.

use std::num::NonZeroU16;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::*;

type Rx<T> = oneshot::Receiver<Result<T, ClientError>>;

fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero")
}

fn message(topic: &str, qos: QoS) -> OutMessage {
    OutMessage {
        topic: TopicName::new(topic).expect("topic"),
        payload: Bytes::from_static(b"x"),
        qos,
        retain: false,
        properties: Properties::default(),
    }
}

fn connack(session_present: bool) -> ConnAck {
    ConnAck {
        session_present,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    }
}

fn connected() -> Session {
    let mut s = Session::new(ProtocolVersion::V5, 100);
    s.on_connected(&connack(false), u32::MAX);
    s
}

fn publish(s: &mut Session, topic: &str, qos: QoS) -> Rx<()> {
    let (tx, rx) = oneshot::channel();
    s.publish(message(topic, qos), None, tx);
    rx
}

fn drain(s: &mut Session) -> Vec<Packet> {
    std::iter::from_fn(|| s.poll_outgoing().map(|o| o.packet)).collect()
}

fn inbound(qos_pid: QosPid, dup: bool) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos_pid,
        retain: false,
        topic: TopicName::new("in").expect("topic"),
        payload: Bytes::from_static(b"in"),
        properties: Properties::default(),
    })
}

#[test]
fn qos1_completes_on_puback() {
    let mut s = connected();
    let mut rx = publish(&mut s, "a", QoS::AtLeastOnce);
    let out = drain(&mut s);
    assert!(
        matches!(&out[..], [Packet::Publish(p)] if p.qos_pid == QosPid::AtLeastOnce(pid(1)) && !p.dup)
    );
    assert!(rx.try_recv().is_err(), "not done before PUBACK");
    s.handle(Packet::PubAck(Ack::new(pid(1))), &None)
        .expect("ok");
    assert!(matches!(rx.try_recv(), Ok(Ok(()))));
    assert_eq!(s.in_flight_len(), 0);
}

#[test]
fn qos2_sends_pubrel_on_pubrec_and_completes_on_pubcomp() {
    let mut s = connected();
    let mut rx = publish(&mut s, "a", QoS::ExactlyOnce);
    drain(&mut s);
    s.handle(Packet::PubRec(Ack::new(pid(1))), &None)
        .expect("ok");
    assert_eq!(drain(&mut s), vec![Packet::PubRel(Ack::new(pid(1)))]);
    assert!(rx.try_recv().is_err());
    // A repeated PUBREC is answered again.
    s.handle(Packet::PubRec(Ack::new(pid(1))), &None)
        .expect("ok");
    assert_eq!(drain(&mut s), vec![Packet::PubRel(Ack::new(pid(1)))]);
    s.handle(Packet::PubComp(Ack::new(pid(1))), &None)
        .expect("ok");
    assert!(matches!(rx.try_recv(), Ok(Ok(()))));
}

#[test]
fn a_refusing_puback_fails_the_publish() {
    let mut s = connected();
    let mut rx = publish(&mut s, "a", QoS::AtLeastOnce);
    drain(&mut s);
    let ack = Ack::with_reason(pid(1), ReasonCode::NotAuthorized);
    s.handle(Packet::PubAck(ack), &None).expect("ok");
    assert!(matches!(
        rx.try_recv(),
        Ok(Err(ClientError::PublishRefused {
            reason: ReasonCode::NotAuthorized,
            ..
        }))
    ));
}

#[test]
fn resume_resends_publish_with_dup_and_pubrel_in_order() {
    let mut s = connected();
    let _a = publish(&mut s, "a", QoS::AtLeastOnce);
    let _b = publish(&mut s, "b", QoS::ExactlyOnce);
    let _c = publish(&mut s, "c", QoS::ExactlyOnce);
    drain(&mut s);
    s.handle(Packet::PubRec(Ack::new(pid(2))), &None)
        .expect("ok");
    drain(&mut s);
    s.on_disconnected();
    s.on_connected(&connack(true), u32::MAX);
    let out = drain(&mut s);
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(
        matches!(&out[0], Packet::Publish(p) if p.dup && p.topic.as_str() == "a" && p.qos_pid.packet_id() == Some(pid(1)))
    );
    assert_eq!(out[1], Packet::PubRel(Ack::new(pid(2))));
    assert!(matches!(&out[2], Packet::Publish(p) if p.dup && p.topic.as_str() == "c"));
}

#[test]
fn a_lost_session_resubscribes_and_starts_publishes_over() {
    let mut s = connected();
    let (tx, _rx) = oneshot::channel();
    let filter = TopicFilter::new("f/#").expect("filter");
    s.subscribe(
        vec![(filter.clone(), SubscriptionOptions::qos(QoS::AtLeastOnce))],
        None,
        tx,
    );
    drain(&mut s);
    let suback = SubAck {
        packet_id: pid(1),
        reasons: vec![ReasonCode::GrantedQoS1],
        properties: Properties::default(),
    };
    s.handle(Packet::SubAck(suback), &None).expect("ok");
    let _p = publish(&mut s, "a", QoS::AtLeastOnce);
    drain(&mut s);
    // An inbound QoS 2 id from the old session is forgotten with it.
    s.handle(inbound(QosPid::ExactlyOnce(pid(9)), false), &None)
        .expect("ok");
    s.on_disconnected();
    s.on_connected(&connack(false), u32::MAX);
    let out = drain(&mut s);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(matches!(&out[0], Packet::Publish(p) if !p.dup && p.topic.as_str() == "a"));
    assert!(matches!(&out[1], Packet::Subscribe(sub) if sub.filters[0].0 == filter));
    let again = s
        .handle(inbound(QosPid::ExactlyOnce(pid(9)), true), &None)
        .expect("ok");
    assert!(again.is_some(), "a new session delivers id 9 afresh");
}

#[test]
fn inbound_qos2_is_delivered_once_until_pubrel() {
    let mut s = connected();
    let first = s
        .handle(inbound(QosPid::ExactlyOnce(pid(7)), false), &None)
        .expect("ok");
    assert!(first.is_some());
    let dup = s
        .handle(inbound(QosPid::ExactlyOnce(pid(7)), true), &None)
        .expect("ok");
    assert!(
        dup.is_none(),
        "a resent QoS 2 PUBLISH is not delivered twice"
    );
    assert_eq!(
        drain(&mut s),
        vec![
            Packet::PubRec(Ack::new(pid(7))),
            Packet::PubRec(Ack::new(pid(7)))
        ]
    );
    s.handle(Packet::PubRel(Ack::new(pid(7))), &None)
        .expect("ok");
    assert_eq!(drain(&mut s), vec![Packet::PubComp(Ack::new(pid(7)))]);
    // The id is free again: a new message with it is delivered.
    let next = s
        .handle(inbound(QosPid::ExactlyOnce(pid(7)), false), &None)
        .expect("ok");
    assert!(next.is_some());
}

#[test]
fn acks_go_back_on_the_stream_the_publish_came_on() {
    let mut s = connected();
    let route = Some(StreamKey::new("data"));
    s.handle(inbound(QosPid::AtLeastOnce(pid(3)), false), &route)
        .expect("ok");
    let out = s.poll_outgoing().expect("PUBACK");
    assert_eq!(out.route, route);
    assert_eq!(out.packet, Packet::PubAck(Ack::new(pid(3))));
}

#[test]
fn the_receive_maximum_holds_publishes_back() {
    let mut s = Session::new(ProtocolVersion::V5, 100);
    let mut ack = connack(false);
    ack.properties.receive_maximum = NonZeroU16::new(1);
    s.on_connected(&ack, u32::MAX);
    let _a = publish(&mut s, "a", QoS::AtLeastOnce);
    let _b = publish(&mut s, "b", QoS::AtLeastOnce);
    let out = drain(&mut s);
    assert_eq!(out.len(), 1, "only one in flight");
    s.handle(Packet::PubAck(Ack::new(pid(1))), &None)
        .expect("ok");
    let out = drain(&mut s);
    assert!(matches!(&out[..], [Packet::Publish(p)] if p.topic.as_str() == "b"));
}

#[test]
fn publishes_made_offline_go_out_on_connect() {
    let mut s = Session::new(ProtocolVersion::V311, 10);
    let _a = publish(&mut s, "a", QoS::AtMostOnce);
    let _b = publish(&mut s, "b", QoS::AtLeastOnce);
    assert!(drain(&mut s).is_empty());
    s.on_connected(&connack(false), u32::MAX);
    let out = drain(&mut s);
    assert_eq!(out.len(), 2);
    assert!(
        matches!(&out[1], Packet::Publish(p) if !p.dup && p.qos_pid == QosPid::AtLeastOnce(pid(1)))
    );
}

#[test]
fn closing_fails_everything_pending() {
    let mut s = connected();
    let mut inflight = publish(&mut s, "a", QoS::AtLeastOnce);
    s.on_disconnected();
    let mut waiting = publish(&mut s, "b", QoS::AtLeastOnce);
    s.fail_all(&ClientError::Closed);
    assert!(matches!(inflight.try_recv(), Ok(Err(ClientError::Closed))));
    assert!(matches!(waiting.try_recv(), Ok(Err(ClientError::Closed))));
}

#[test]
fn server_limits_refuse_a_publish_up_front() {
    let mut s = Session::new(ProtocolVersion::V5, 10);
    let mut ack = connack(false);
    ack.properties.maximum_qos = Some(QoS::AtLeastOnce);
    ack.properties.maximum_packet_size = std::num::NonZeroU32::new(20);
    s.on_connected(&ack, u32::MAX);
    let mut too_high = publish(&mut s, "a", QoS::ExactlyOnce);
    assert!(matches!(
        too_high.try_recv(),
        Ok(Err(ClientError::QosNotSupported { .. }))
    ));
    let (tx, mut too_big) = oneshot::channel();
    let mut big = message("a", QoS::AtMostOnce);
    big.payload = Bytes::from(vec![0u8; 64]);
    s.publish(big, None, tx);
    assert!(matches!(
        too_big.try_recv(),
        Ok(Err(ClientError::PacketTooLarge { max: 20, .. }))
    ));
    assert!(drain(&mut s).is_empty());
}

#[test]
fn packet_ids_skip_those_in_use_and_wrap() {
    let mut s = connected();
    s.next_id = pid(u16::MAX);
    let _a = publish(&mut s, "a", QoS::AtLeastOnce);
    let _b = publish(&mut s, "b", QoS::AtLeastOnce);
    let ids: Vec<_> = drain(&mut s)
        .into_iter()
        .filter_map(|p| p.packet_id())
        .collect();
    assert_eq!(ids, vec![pid(u16::MAX), pid(1)]);
    s.next_id = pid(u16::MAX);
    let _c = publish(&mut s, "c", QoS::AtLeastOnce);
    let ids: Vec<_> = drain(&mut s)
        .into_iter()
        .filter_map(|p| p.packet_id())
        .collect();
    assert_eq!(ids, vec![pid(2)], "65535 and 1 are still in flight");
}

#[test]
fn a_lost_data_stream_resends_only_its_own_flows() {
    let mut s = connected();
    let data = Some(StreamKey::new("d"));
    let (tx, _rx) = oneshot::channel();
    s.publish(message("on-d", QoS::AtLeastOnce), data.clone(), tx);
    let _other = publish(&mut s, "control", QoS::AtLeastOnce);
    drain(&mut s);
    s.on_route_lost(&data);
    let out: Vec<_> = std::iter::from_fn(|| s.poll_outgoing()).collect();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].route, data);
    assert!(matches!(&out[0].packet, Packet::Publish(p) if p.dup && p.topic.as_str() == "on-d"));
}
