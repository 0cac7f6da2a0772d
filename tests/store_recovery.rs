//! Recovery drops what expired while the broker was down (sessions, queued messages,
//! retained messages), keeps what is still due, counts both, and removes the dropped
//! records from the file so they never come back.

mod common;

use common::TempDir;
use std::time::{Duration, Instant};

use bytes::Bytes;
use twinmq::broker::retained::RetainedMessage;
use twinmq::protocol::{
    Delivery, InflightMessage, PacketId, Properties, QoS, SessionSnapshot, TopicName, Will,
};
use twinmq::store::{
    Durability, ExpiredSessionWill, Now, PendingWill, SessionRecord, Store, StoreOptions,
    WriteBatch, NEVER_EXPIRES,
};

fn topic(s: &str) -> TopicName {
    TopicName::new(s).expect("topic name")
}

fn message(t: &str, expires_at: Option<Instant>) -> Delivery {
    Delivery {
        expires_at,
        ..Delivery::new(topic(t), &b"m"[..], QoS::AtLeastOnce)
    }
}

fn will(t: &str) -> Will {
    Will {
        topic: topic(t),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: Some(60),
            ..Properties::default()
        },
    }
}

fn session(expiry_interval: u32, offline_since: Option<Instant>) -> SessionRecord {
    SessionRecord {
        expiry_interval,
        offline_since,
        subscriptions: Vec::new(),
        will: None,
        state: SessionSnapshot::default(),
    }
}

/// Both clocks moved on by `by`, as after a restart `by` later.
fn later(now: Now, by: Duration) -> Now {
    Now::new(now.instant + by, now.system + by)
}

#[test]
fn recovery_drops_what_expired_and_keeps_the_rest() {
    let dir = TempDir::new("expiry");
    let t0 = Now::from_clocks();
    let store = Store::open(dir.path(), StoreOptions::default()).expect("opens");
    let mut batch = WriteBatch::new(t0);

    // Expires 10 s after going offline at t0, with a will due at t0 + 60 s and messages.
    let mut gone = session(10, Some(t0.instant));
    gone.will = Some(PendingWill {
        will: will("gone/will"),
        due: t0.instant + Duration::from_secs(60),
    });
    gone.state.queue = vec![message("g/1", None), message("g/2", None)];
    batch.put_session("gone", &gone).expect("encodes");

    // Never expires; one queued message expires at t0 + 5 s, one never; an in-flight one
    // that expired is kept because its delivery has begun.
    let mut kept = session(NEVER_EXPIRES, Some(t0.instant));
    kept.state.inflight = vec![InflightMessage {
        packet_id: PacketId::MIN,
        message: message("k/inflight", Some(t0.instant + Duration::from_secs(5))),
        released: false,
    }];
    kept.state.queue = vec![
        message("k/expired", Some(t0.instant + Duration::from_secs(5))),
        message("k/alive", None),
        message("k/later", Some(t0.instant + Duration::from_secs(3600))),
    ];
    kept.will = Some(PendingWill {
        will: will("kept/will"),
        due: t0.instant + Duration::from_secs(5),
    });
    batch.put_session("kept", &kept).expect("encodes");

    // Connected when the broker stopped: offline from the restart, so it is still alive.
    batch
        .put_session("online", &session(15, None))
        .expect("encodes");
    // Expiry 0 is gone as soon as it is offline.
    batch
        .put_session("zero", &session(0, Some(t0.instant)))
        .expect("encodes");

    batch
        .put_retained(&retained(
            "r/expired",
            Some(t0.instant + Duration::from_secs(5)),
        ))
        .expect("encodes");
    batch
        .put_retained(&retained(
            "r/alive",
            Some(t0.instant + Duration::from_secs(3600)),
        ))
        .expect("encodes");
    store.commit(batch, Durability::Sync).expect("commits");
    let before = store.usage().expect("usage").live_bytes;
    drop(store);

    // Restart 20 s later.
    let t1 = later(t0, Duration::from_secs(20));
    let store = Store::open(dir.path(), StoreOptions::default()).expect("opens");
    let recovered = store.recover(t1).expect("recovers");

    let ids: Vec<&str> = recovered
        .sessions
        .iter()
        .map(|s| s.client_id.as_str())
        .collect();
    assert_eq!(ids, ["kept", "online"]);
    let kept_back = &recovered.sessions[0];
    let topics: Vec<&str> = kept_back
        .state
        .queue
        .iter()
        .map(|m| m.topic.as_str())
        .collect();
    assert_eq!(topics, ["k/alive", "k/later"]);
    assert_eq!(kept_back.state.inflight.len(), 1, "in-flight kept");
    assert_eq!(kept_back.expires_at, None);
    let due = kept_back.will.as_ref().expect("pending will").due;
    assert_eq!(due, t1.instant, "a will already due is due at the restart");

    let online = &recovered.sessions[1];
    assert_eq!(online.offline_since, t1.instant);
    assert_eq!(
        online.expires_at,
        Some(t1.instant + Duration::from_secs(15))
    );

    assert_eq!(
        recovered.wills_of_expired_sessions,
        vec![ExpiredSessionWill {
            client_id: "gone".to_string(),
            will: will("gone/will"),
        }]
    );
    let topics: Vec<&str> = recovered
        .retained
        .iter()
        .map(|m| m.topic.as_str())
        .collect();
    assert_eq!(topics, ["r/alive"]);

    let report = recovered.report;
    assert_eq!(report.sessions, 2);
    assert_eq!(report.expired_sessions, 2);
    assert_eq!(report.messages_of_expired_sessions, 2);
    assert_eq!(report.messages, 3);
    assert_eq!(report.expired_messages, 1);
    assert_eq!((report.retained, report.expired_retained), (1, 1));
    assert_eq!((report.wills, report.wills_due), (1, 1));

    // What was dropped is gone from the file, not only from the result.
    assert!(store.usage().expect("usage").live_bytes < before);
    let again = store.recover(t1).expect("recovers again");
    assert_eq!(again.sessions, recovered.sessions);
    assert_eq!(again.retained, recovered.retained);
    assert_eq!(again.report.expired_sessions, 0);
    assert_eq!(again.report.expired_messages, 0);
    assert_eq!(again.report.expired_retained, 0);
    assert!(again.wills_of_expired_sessions.is_empty());
}

#[test]
fn a_session_is_alive_until_its_expiry_interval_has_fully_run() {
    let dir = TempDir::new("edge");
    let t0 = Now::from_clocks();
    let store = Store::open(dir.path(), StoreOptions::default()).expect("opens");
    let mut batch = WriteBatch::new(t0);
    batch
        .put_session("s", &session(30, Some(t0.instant)))
        .expect("encodes");
    store.commit(batch, Durability::Sync).expect("commits");

    let just_before = later(t0, Duration::from_millis(29_999));
    assert_eq!(
        store.recover(just_before).expect("recovers").sessions.len(),
        1
    );
    let at_expiry = later(t0, Duration::from_secs(30));
    let recovered = store.recover(at_expiry).expect("recovers");
    assert!(recovered.sessions.is_empty());
    assert_eq!(recovered.report.expired_sessions, 1);
}

#[test]
fn an_empty_store_recovers_nothing() {
    let dir = TempDir::new("empty");
    let store = Store::open(dir.path(), StoreOptions::default()).expect("opens");
    let recovered = store.recover(Now::from_clocks()).expect("recovers");
    assert!(recovered.sessions.is_empty() && recovered.retained.is_empty());
    assert_eq!(recovered.report, Default::default());
}

fn retained(t: &str, expires_at: Option<Instant>) -> RetainedMessage {
    RetainedMessage {
        topic: topic(t),
        payload: Bytes::from_static(b"r"),
        qos: QoS::AtMostOnce,
        properties: Properties::default(),
        expires_at,
    }
}
