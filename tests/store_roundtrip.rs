//! The store gives back, after a reopen, exactly what was written: every session field,
//! every property kind, every subscription option, wills and retained messages with their
//! expiry; and the incremental queue operations act on the right rows.

mod common;

use common::{pid, TempDir};
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use twinmq::broker::retained::RetainedMessage;
use twinmq::protocol::{
    Delivery, InflightMessage, MqttString, Properties, QoS, RetainHandling, SessionSnapshot,
    SessionState, SubscriptionOptions, TopicFilter, TopicName, Will,
};
use twinmq::store::{
    Durability, Now, PendingWill, RecoveredSession, SessionRecord, Store, StoreOptions,
    StoredSubscription, WriteBatch, NEVER_EXPIRES,
};

fn open(dir: &TempDir) -> Store {
    Store::open(dir.path(), StoreOptions::default()).expect("store opens")
}

fn topic(s: &str) -> TopicName {
    TopicName::new(s).expect("topic name")
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s).expect("topic filter")
}

fn string(s: &str) -> MqttString {
    MqttString::new(s).expect("mqtt string")
}

/// Every property a PUBLISH can carry.
fn publish_properties() -> Properties {
    Properties {
        payload_format_indicator: Some(true),
        message_expiry_interval: Some(120),
        content_type: Some(string("application/json")),
        response_topic: Some(topic("reply/to/me")),
        correlation_data: Some(Bytes::from_static(&[0xDE, 0xAD, 0xBE, 0xEF])),
        subscription_identifiers: vec![NonZeroU32::MIN, NonZeroU32::new(268_435_455).unwrap()],
        topic_alias: NonZeroU16::new(12),
        user_properties: vec![
            (string("k"), string("v")),
            (string("k"), string("second value, same key")),
            (string("température"), string("°C")),
        ],
        ..Properties::default()
    }
}

fn delivery(t: &str, qos: QoS, expires_at: Option<Instant>, properties: Properties) -> Delivery {
    Delivery {
        topic: topic(t),
        payload: Bytes::from(format!("payload of {t}")),
        qos,
        retain: qos == QoS::ExactlyOnce,
        properties: Arc::new(properties),
        subscription_ids: vec![NonZeroU32::new(5).unwrap(), NonZeroU32::new(77).unwrap()],
        shared: (qos == QoS::AtLeastOnce).then(|| filter("$share/group/a/+")),
        expires_at,
        row: None,
    }
}

/// A `Now` whose system time has whole milliseconds, so every time written at an offset of
/// whole milliseconds reads back exactly.
fn now() -> Now {
    let system = SystemTime::UNIX_EPOCH + Duration::from_millis(1_750_000_000_123);
    Now::new(Instant::now(), system)
}

/// A session with three in-flight and three queued messages in rows 0..=5, in order.
fn full_record(now: &Now) -> SessionRecord {
    let mut record = unnumbered_record(now);
    let state = &mut record.state;
    let messages = state
        .inflight
        .iter_mut()
        .map(|m| &mut m.message)
        .chain(state.queue.iter_mut());
    for (row, message) in (0..).zip(messages) {
        message.row = Some(row);
    }
    record
}

fn unnumbered_record(now: &Now) -> SessionRecord {
    let soon = Some(now.instant + Duration::from_millis(90_500));
    SessionRecord {
        expiry_interval: 3600,
        offline_since: Some(now.instant - Duration::from_secs(10)),
        subscriptions: vec![
            StoredSubscription {
                filter: filter("a/+/c"),
                options: SubscriptionOptions::qos(QoS::AtMostOnce),
                identifier: None,
            },
            StoredSubscription {
                filter: filter("sensors/#"),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendIfNew,
                },
                identifier: NonZeroU32::new(1),
            },
            StoredSubscription {
                filter: filter("$share/group/a/+"),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: false,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
                identifier: NonZeroU32::new(268_435_455),
            },
        ],
        will: Some(PendingWill {
            will: Will {
                topic: topic("clients/c1/status"),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::ExactlyOnce,
                retain: true,
                properties: Properties {
                    will_delay_interval: Some(30),
                    payload_format_indicator: Some(false),
                    message_expiry_interval: Some(600),
                    content_type: Some(string("text/plain")),
                    response_topic: Some(topic("clients/c1/ack")),
                    correlation_data: Some(Bytes::from_static(b"corr")),
                    user_properties: vec![(string("why"), string("crash"))],
                    ..Properties::default()
                },
            },
            due: now.instant + Duration::from_secs(30),
        }),
        state: SessionSnapshot {
            inflight: vec![
                InflightMessage {
                    packet_id: pid(65535),
                    message: delivery("in/1", QoS::AtLeastOnce, soon, publish_properties()),
                    released: false,
                },
                InflightMessage {
                    packet_id: pid(1),
                    message: delivery("in/2", QoS::ExactlyOnce, None, Properties::default()),
                    released: true,
                },
                InflightMessage {
                    packet_id: pid(2),
                    message: delivery("in/3", QoS::ExactlyOnce, None, publish_properties()),
                    released: false,
                },
            ],
            queue: vec![
                delivery("q/1", QoS::AtLeastOnce, soon, publish_properties()),
                delivery("q/2", QoS::ExactlyOnce, None, Properties::default()),
                delivery("q/3", QoS::AtMostOnce, None, publish_properties()),
            ],
            awaiting_pubrel: vec![pid(3), pid(65535)],
        },
    }
}

fn retained(t: &str, expires_at: Option<Instant>, properties: Properties) -> RetainedMessage {
    RetainedMessage {
        topic: topic(t),
        payload: Bytes::from(format!("retained on {t}")),
        qos: QoS::AtLeastOnce,
        properties,
        expires_at,
    }
}

#[test]
fn every_field_of_a_session_and_of_retained_messages_survives_a_reopen() {
    let dir = TempDir::new("roundtrip");
    let now = now();
    let record = full_record(&now);
    let kept = retained(
        "status/a",
        Some(now.instant + Duration::from_millis(3_600_250)),
        publish_properties(),
    );
    let forever = retained("status/b", None, Properties::default());
    {
        let store = open(&dir);
        let mut batch = WriteBatch::new(now);
        batch.put_session("c1", &record).expect("encodes");
        batch.put_retained(&kept).expect("encodes");
        batch.put_retained(&forever).expect("encodes");
        store.commit(batch, Durability::Sync).expect("commits");
    }

    let store = open(&dir);
    let recovered = store.recover(now).expect("recovers");
    let expected = RecoveredSession {
        client_id: "c1".to_string(),
        expiry_interval: 3600,
        offline_since: now.instant - Duration::from_secs(10),
        expires_at: Some(now.instant + Duration::from_secs(3590)),
        subscriptions: record.subscriptions.clone(),
        will: record.will.clone(),
        state: record.state.clone(),
    };
    assert_eq!(recovered.sessions, vec![expected]);
    assert_eq!(recovered.retained, vec![kept, forever]);
    assert!(recovered.wills_of_expired_sessions.is_empty());
    let report = recovered.report;
    assert_eq!((report.sessions, report.messages, report.wills), (1, 6, 1));
    assert_eq!(report.retained, 2);

    // The protocol layer resumes the session as it was.
    let state = SessionState::restore(recovered.sessions[0].state.clone());
    assert_eq!(state.snapshot(), record.state);
}

#[test]
fn a_session_that_never_expires_and_is_online_reads_back_as_such() {
    let dir = TempDir::new("online");
    let now = now();
    let store = open(&dir);
    let mut record = full_record(&now);
    record.expiry_interval = NEVER_EXPIRES;
    record.offline_since = None;
    record.will = None;
    let mut batch = WriteBatch::new(now);
    batch.put_session("online", &record).expect("encodes");
    store.commit(batch, Durability::Group).expect("commits");

    let later = Now::new(
        now.instant + Duration::from_secs(86_400 * 365),
        now.system + Duration::from_secs(86_400 * 365),
    );
    let recovered = store.recover(later).expect("recovers");
    let session = &recovered.sessions[0];
    assert_eq!(session.expires_at, None);
    assert_eq!(
        session.offline_since, later.instant,
        "offline from the restart"
    );
    assert_eq!(session.will, None);
}

#[test]
fn rows_and_inbound_ids_change_one_at_a_time_and_stay_gone_once_removed() {
    let dir = TempDir::new("steps");
    let now = now();
    let store = open(&dir);
    let record = full_record(&now);
    let mut batch = WriteBatch::new(now);
    batch.put_session("c1", &record).expect("encodes");
    store.commit(batch, Durability::Sync).expect("commits");

    let mut extra = delivery("q/4", QoS::ExactlyOnce, None, publish_properties());
    extra.row = Some(10);
    let mut batch = WriteBatch::new(now);
    batch.append_queued("c1", &extra).expect("encodes");
    // q/1 (row 3) is sent under packet id 40; q/2 (row 4) finished.
    batch.mark_inflight("c1", 3, pid(40), false);
    batch.delete_row("c1", 4);
    batch.put_inbound("c1", pid(7));
    batch.delete_inbound("c1", pid(3));
    // Ignored: no such session or row, so nothing orphaned or brought back.
    batch.append_queued("nobody", &extra).expect("encodes");
    batch.put_inbound("nobody", pid(1));
    batch.mark_inflight("c1", 99, pid(1), true);
    store.commit(batch, Durability::Sync).expect("commits");

    let recovered = store.recover(now).expect("recovers");
    assert_eq!(recovered.sessions.len(), 1);
    assert_eq!(recovered.next_row, 11);
    let state = &recovered.sessions[0].state;
    let mut inflight = record.state.inflight.clone();
    inflight.push(InflightMessage {
        packet_id: pid(40),
        message: record.state.queue[0].clone(),
        released: false,
    });
    assert_eq!(state.inflight, inflight);
    assert_eq!(state.queue, vec![record.state.queue[2].clone(), extra]);
    assert_eq!(state.awaiting_pubrel, vec![pid(7), pid(65535)]);

    // Released, then finished: a late step for a finished row does not bring it back.
    let mut batch = WriteBatch::new(now);
    batch.mark_inflight("c1", 10, pid(41), true);
    store.commit(batch, Durability::Sync).expect("commits");
    let state = &store.recover(now).expect("recovers").sessions[0].state;
    assert_eq!(
        state.inflight.last().map(|m| (m.packet_id, m.released)),
        Some((pid(41), true))
    );
    let mut batch = WriteBatch::new(now);
    batch.delete_row("c1", 10);
    batch.mark_inflight("c1", 10, pid(41), true);
    store.commit(batch, Durability::Sync).expect("commits");
    let state = &store.recover(now).expect("recovers").sessions[0].state;
    assert!(state.inflight.iter().all(|m| m.message.row != Some(10)));
    assert_eq!(state.queue.len(), 1);
}

#[test]
fn messages_without_a_row_id_get_ids_after_the_highest() {
    let dir = TempDir::new("unnumbered");
    let now = now();
    let store = open(&dir);
    let mut record = unnumbered_record(&now);
    record.state.queue[1].row = Some(7);
    let mut batch = WriteBatch::new(now);
    batch.put_session("c1", &record).expect("encodes");
    store.commit(batch, Durability::Sync).expect("commits");
    let recovered = store.recover(now).expect("recovers");
    let state = &recovered.sessions[0].state;
    let rows: Vec<Option<u64>> = state
        .inflight
        .iter()
        .map(|m| m.message.row)
        .chain(state.queue.iter().map(|d| d.row))
        .collect();
    // The queue is read back in row order: q/2 (row 7) comes before the ones numbered after it.
    assert_eq!(
        rows,
        vec![Some(8), Some(9), Some(10), Some(7), Some(11), Some(12)]
    );
    assert_eq!(recovered.next_row, 13);
}

#[test]
fn put_session_replaces_and_deletes_remove_everything() {
    let dir = TempDir::new("replace");
    let now = now();
    let store = open(&dir);
    assert_eq!(store.usage().expect("usage").live_bytes, 0);

    let record = full_record(&now);
    let mut batch = WriteBatch::new(now);
    batch.put_session("c1", &record).expect("encodes");
    batch.put_session("c2", &record).expect("encodes");
    batch
        .put_retained(&retained("r", None, publish_properties()))
        .expect("encodes");
    let written = batch.encoded_bytes() as u64;
    store.commit(batch, Durability::Sync).expect("commits");
    let usage = store.usage().expect("usage");
    assert_eq!(
        usage.live_bytes, written,
        "live bytes count what was written"
    );
    assert!(usage.file_bytes >= usage.live_bytes);

    // A smaller session replaces the whole of the old one.
    let mut smaller = record.clone();
    smaller.state = SessionSnapshot {
        inflight: Vec::new(),
        queue: vec![delivery(
            "only",
            QoS::AtLeastOnce,
            None,
            Properties::default(),
        )],
        awaiting_pubrel: Vec::new(),
    };
    smaller.state.queue[0].row = Some(0);
    let mut batch = WriteBatch::new(now);
    batch.put_session("c1", &smaller).expect("encodes");
    batch.delete_session("c2");
    batch.delete_retained(&topic("r"));
    store.commit(batch, Durability::Sync).expect("commits");
    let recovered = store.recover(now).expect("recovers");
    assert_eq!(recovered.sessions.len(), 1);
    assert_eq!(recovered.sessions[0].state, smaller.state);
    assert!(recovered.retained.is_empty());

    let mut batch = WriteBatch::new(now);
    batch.delete_session("c1");
    batch.delete_row("c1", 0);
    batch.delete_inbound("c1", pid(1));
    batch.delete_retained(&topic("gone"));
    assert_eq!(
        batch.encoded_bytes(),
        0,
        "deletions add nothing: a full store still takes them"
    );
    store.commit(batch, Durability::Sync).expect("commits");
    assert_eq!(store.usage().expect("usage").live_bytes, 0, "nothing left");
}

#[test]
fn live_bytes_after_a_reopen_match_the_running_count() {
    let dir = TempDir::new("live");
    let now = now();
    let running = {
        let store = open(&dir);
        let mut batch = WriteBatch::new(now);
        batch
            .put_session("c1", &full_record(&now))
            .expect("encodes");
        batch.delete_row("c1", 3);
        batch.put_inbound("c1", pid(9));
        batch.delete_inbound("c1", pid(3));
        let mut extra = delivery("x", QoS::AtLeastOnce, None, Properties::default());
        extra.row = Some(20);
        batch.append_queued("c1", &extra).expect("encodes");
        batch.mark_inflight("c1", 20, pid(5), false);
        batch
            .put_retained(&retained("r", None, Properties::default()))
            .expect("encodes");
        store.commit(batch, Durability::Sync).expect("commits");
        store.usage().expect("usage").live_bytes
    };
    assert_eq!(open(&dir).usage().expect("usage").live_bytes, running);
}

#[test]
fn a_non_durable_commit_is_visible_to_reads() {
    let dir = TempDir::new("none");
    let now = now();
    let store = open(&dir);
    let mut batch = WriteBatch::new(now);
    batch
        .put_retained(&retained("r", None, Properties::default()))
        .expect("encodes");
    store.commit(batch, Durability::None).expect("commits");
    assert_eq!(store.recover(now).expect("recovers").retained.len(), 1);
    let stats = store.stats();
    assert_eq!((stats.commits, stats.durable_commits), (1, 0));
}

#[test]
fn a_record_the_codec_refuses_is_refused_by_the_batch() {
    let now = now();
    // Not a PUBLISH property: the codec will not encode it.
    let properties = Properties {
        receive_maximum: NonZeroU16::new(10),
        ..Properties::default()
    };
    let mut batch = WriteBatch::new(now);
    let err = batch
        .put_retained(&retained("r", None, properties))
        .expect_err("refused");
    assert!(
        err.to_string().contains("retained message on \"r\""),
        "{err}"
    );
    assert!(batch.is_empty(), "nothing added");
}
