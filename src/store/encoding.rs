//! How records are laid out in the file's values.
//!
//! Every value starts with a record version byte ([`RECORD_VERSION`]), read before anything
//! else, so a record format can change without guessing. Messages (queued and in-flight
//! deliveries, retained messages, wills) are stored as MQTT 5 PUBLISH packets written by
//! the protocol codec: it already encodes every property compactly and its decoder
//! validates what it reads back. What PUBLISH cannot carry (expiry as wall-clock time,
//! the subscription identifiers of this subscriber, the shared subscription, packet ids of
//! the flow) sits in a small fixed framing in front of it. Integers are big-endian; times
//! are milliseconds since the Unix epoch ([`WallMillis`]).
//!
//! ```text
//! message row  : ver | kind u8 | packet id u16 | flags u8 | [expiry u64] | [shared u16+bytes]
//!                    | n u16 | n x subscription id u32 | PUBLISH (rest of the value)
//! retained     : ver | flags u8 | [expiry u64] | PUBLISH (retain=1, rest of the value)
//! session meta : ver | expiry interval u32 | flags u8 | [offline since u64]
//!                    | n u32 | n x (filter u16+bytes | options u8 | identifier u32, 0 = none)
//!                    | [will: due u64 | has delay u8 | delay u32 | PUBLISH (rest of the value)]
//! ```
//!
//! Decoding never panics and never trusts a length: a value that does not decode is
//! reported as corruption by the caller, naming the record.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use crate::protocol::codec::{self, Decoder};
use crate::protocol::{
    Delivery, MqttString, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, QosPid,
    SubscriptionOptions, TopicFilter, TopicName, Will,
};

use super::record::{Now, PendingWill, SessionMeta, StoredSubscription};

/// The version byte at the front of every value this build writes.
pub(crate) const RECORD_VERSION: u8 = 1;

/// What a message row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowKind {
    /// Waiting in the session's queue.
    Queued,
    /// Sent (or being sent) under `packet_id`; `released` once the client's PUBREC came.
    Inflight { packet_id: PacketId, released: bool },
}

const KIND_QUEUED: u8 = 0;
const KIND_INFLIGHT: u8 = 1;
const KIND_RELEASED: u8 = 2;

const FLAG_EXPIRY: u8 = 0x01;
const FLAG_SHARED: u8 = 0x02;
const FLAG_OFFLINE_SINCE: u8 = 0x01;
const FLAG_WILL: u8 = 0x02;

/// Wall-clock time as stored: milliseconds since the Unix epoch. `u64::MAX` is beyond any
/// time an `Instant` can reach, so it reads back as "never".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct WallMillis(pub(crate) u64);

impl WallMillis {
    pub(crate) fn from_system(t: SystemTime) -> WallMillis {
        let millis = t
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        WallMillis(millis)
    }

    pub(crate) fn plus_secs(self, secs: u32) -> WallMillis {
        WallMillis(self.0.saturating_add(u64::from(secs).saturating_mul(1000)))
    }

    #[cfg(test)]
    pub(crate) fn plus_millis(self, millis: u64) -> WallMillis {
        WallMillis(self.0.saturating_add(millis))
    }
}

impl Now {
    /// The wall-clock time of `at`, read against this pair of clocks.
    pub(crate) fn wall(&self, at: Instant) -> WallMillis {
        let base = WallMillis::from_system(self.system).0;
        let millis = if at >= self.instant {
            let ahead = u64::try_from(at.duration_since(self.instant).as_millis());
            base.saturating_add(ahead.unwrap_or(u64::MAX))
        } else {
            let behind = u64::try_from(self.instant.duration_since(at).as_millis());
            base.saturating_sub(behind.unwrap_or(u64::MAX))
        };
        WallMillis(millis)
    }

    /// The `Instant` of a stored time: `None` when it lies beyond what an `Instant` can
    /// hold (so it never comes); a time too far in the past to express reads as now.
    pub(crate) fn instant(&self, at: WallMillis) -> Option<Instant> {
        let base = WallMillis::from_system(self.system).0;
        if at.0 >= base {
            self.instant.checked_add(Duration::from_millis(at.0 - base))
        } else {
            Some(
                self.instant
                    .checked_sub(Duration::from_millis(base - at.0))
                    .unwrap_or(self.instant),
            )
        }
    }
}

/// A message row as read back, times still on the wall clock.
#[derive(Debug)]
pub(crate) struct StoredRow {
    pub(crate) kind: RowKind,
    pub(crate) expires_at: Option<WallMillis>,
    /// The delivery, `expires_at` not yet set.
    pub(crate) delivery: Delivery,
}

/// Session meta as read back.
#[derive(Debug)]
pub(crate) struct StoredMeta {
    pub(crate) expiry_interval: u32,
    pub(crate) offline_since: Option<WallMillis>,
    pub(crate) subscriptions: Vec<StoredSubscription>,
    pub(crate) will: Option<(Will, WallMillis)>,
}

/// A retained message as read back.
#[derive(Debug)]
pub(crate) struct StoredRetained {
    pub(crate) expires_at: Option<WallMillis>,
    pub(crate) publish: Publish,
}

/// `row` with its kind and packet id replaced (they sit at fixed offsets after the
/// version); `None` if it is too short to be a row.
pub(crate) fn set_row_kind(row: &[u8], kind: RowKind) -> Option<Vec<u8>> {
    if row.len() < 4 {
        return None;
    }
    let (kind, packet_id) = kind_bytes(kind);
    let mut updated = row.to_vec();
    updated[1] = kind;
    updated[2..4].copy_from_slice(&packet_id.to_be_bytes());
    Some(updated)
}

fn kind_bytes(kind: RowKind) -> (u8, u16) {
    match kind {
        RowKind::Queued => (KIND_QUEUED, 0),
        RowKind::Inflight {
            packet_id,
            released: false,
        } => (KIND_INFLIGHT, packet_id.get()),
        RowKind::Inflight {
            packet_id,
            released: true,
        } => (KIND_RELEASED, packet_id.get()),
    }
}

pub(crate) fn encode_row(kind: RowKind, d: &Delivery, now: &Now) -> Result<Vec<u8>, String> {
    let mut w = Vec::with_capacity(64 + d.topic.len() + d.payload.len());
    w.push(RECORD_VERSION);
    let (kind, packet_id) = kind_bytes(kind);
    w.push(kind);
    w.extend_from_slice(&packet_id.to_be_bytes());
    let mut flags = 0;
    if d.expires_at.is_some() {
        flags |= FLAG_EXPIRY;
    }
    if d.shared.is_some() {
        flags |= FLAG_SHARED;
    }
    w.push(flags);
    if let Some(at) = d.expires_at {
        w.extend_from_slice(&now.wall(at).0.to_be_bytes());
    }
    if let Some(shared) = &d.shared {
        put_str16(&mut w, shared.as_str())?;
    }
    let count = u16::try_from(d.subscription_ids.len())
        .map_err(|_| "more than 65535 subscription identifiers".to_string())?;
    w.extend_from_slice(&count.to_be_bytes());
    for id in &d.subscription_ids {
        w.extend_from_slice(&id.get().to_be_bytes());
    }
    put_publish(
        &mut w,
        d.topic.clone(),
        d.payload.clone(),
        d.qos,
        d.retain,
        (*d.properties).clone(),
    )?;
    Ok(w)
}

pub(crate) fn decode_row(value: &[u8]) -> Result<StoredRow, String> {
    let mut r = Reader::versioned(value)?;
    let kind = r.u8("kind")?;
    let packet_id = r.u16("packet id")?;
    let kind = match kind {
        KIND_QUEUED => RowKind::Queued,
        KIND_INFLIGHT | KIND_RELEASED => RowKind::Inflight {
            packet_id: PacketId::new(packet_id)
                .ok_or_else(|| "in-flight message with packet id 0".to_string())?,
            released: kind == KIND_RELEASED,
        },
        other => return Err(format!("unknown message kind {other}")),
    };
    let flags = r.u8("flags")?;
    let expires_at = if flags & FLAG_EXPIRY != 0 {
        Some(WallMillis(r.u64("expiry")?))
    } else {
        None
    };
    let shared = if flags & FLAG_SHARED != 0 {
        let s = r.str16("shared subscription")?;
        Some(TopicFilter::new(&s).map_err(|e| format!("shared subscription: {e}"))?)
    } else {
        None
    };
    let count = r.u16("subscription identifier count")?;
    let mut subscription_ids = Vec::with_capacity(usize::from(count).min(r.remaining() / 4));
    for _ in 0..count {
        let id = r.u32("subscription identifier")?;
        subscription_ids
            .push(NonZeroU32::new(id).ok_or_else(|| "subscription identifier 0".to_string())?);
    }
    let publish = decode_publish(r.rest())?;
    Ok(StoredRow {
        kind,
        expires_at,
        delivery: Delivery {
            qos: publish.qos(),
            topic: publish.topic,
            payload: publish.payload,
            retain: publish.retain,
            properties: Arc::new(publish.properties),
            subscription_ids,
            shared,
            expires_at: None,
            row: None,
        },
    })
}

pub(crate) fn encode_retained(
    topic: &TopicName,
    payload: &Bytes,
    qos: QoS,
    properties: &Properties,
    expires_at: Option<Instant>,
    now: &Now,
) -> Result<Vec<u8>, String> {
    let mut w = Vec::with_capacity(64 + topic.len() + payload.len());
    w.push(RECORD_VERSION);
    match expires_at {
        Some(at) => {
            w.push(FLAG_EXPIRY);
            w.extend_from_slice(&now.wall(at).0.to_be_bytes());
        }
        None => w.push(0),
    }
    put_publish(
        &mut w,
        topic.clone(),
        payload.clone(),
        qos,
        true,
        properties.clone(),
    )?;
    Ok(w)
}

pub(crate) fn decode_retained(value: &[u8]) -> Result<StoredRetained, String> {
    let mut r = Reader::versioned(value)?;
    let flags = r.u8("flags")?;
    let expires_at = if flags & FLAG_EXPIRY != 0 {
        Some(WallMillis(r.u64("expiry")?))
    } else {
        None
    };
    let publish = decode_publish(r.rest())?;
    Ok(StoredRetained {
        expires_at,
        publish,
    })
}

pub(crate) fn encode_meta(record: &SessionMeta, now: &Now) -> Result<Vec<u8>, String> {
    let mut w = Vec::with_capacity(32 + 16 * record.subscriptions.len());
    w.push(RECORD_VERSION);
    w.extend_from_slice(&record.expiry_interval.to_be_bytes());
    let mut flags = 0;
    if record.offline_since.is_some() {
        flags |= FLAG_OFFLINE_SINCE;
    }
    if record.will.is_some() {
        flags |= FLAG_WILL;
    }
    w.push(flags);
    if let Some(at) = record.offline_since {
        w.extend_from_slice(&now.wall(at).0.to_be_bytes());
    }
    put_len32(&mut w, record.subscriptions.len())?;
    for sub in &record.subscriptions {
        put_str16(&mut w, sub.filter.as_str())?;
        w.push(options_byte(sub.options));
        w.extend_from_slice(&sub.identifier.map_or(0, NonZeroU32::get).to_be_bytes());
    }
    if let Some(PendingWill { will, due }) = &record.will {
        w.extend_from_slice(&now.wall(*due).0.to_be_bytes());
        let delay = will.properties.will_delay_interval;
        w.push(u8::from(delay.is_some()));
        w.extend_from_slice(&delay.unwrap_or(0).to_be_bytes());
        // PUBLISH cannot carry the will delay; it is the field just written.
        let mut properties = will.properties.clone();
        properties.will_delay_interval = None;
        put_publish(
            &mut w,
            will.topic.clone(),
            will.payload.clone(),
            will.qos,
            will.retain,
            properties,
        )?;
    }
    Ok(w)
}

pub(crate) fn decode_meta(value: &[u8]) -> Result<StoredMeta, String> {
    let mut r = Reader::versioned(value)?;
    let expiry_interval = r.u32("session expiry interval")?;
    let flags = r.u8("flags")?;
    let offline_since = if flags & FLAG_OFFLINE_SINCE != 0 {
        Some(WallMillis(r.u64("offline since")?))
    } else {
        None
    };
    let count = r.len32("subscription count", 7)?;
    let mut subscriptions = Vec::with_capacity(count);
    for _ in 0..count {
        let filter = r.str16("topic filter")?;
        let filter = TopicFilter::new(&filter).map_err(|e| format!("topic filter: {e}"))?;
        let options = parse_options(r.u8("subscription options")?)?;
        let identifier = NonZeroU32::new(r.u32("subscription identifier")?);
        subscriptions.push(StoredSubscription {
            filter,
            options,
            identifier,
        });
    }
    let will = if flags & FLAG_WILL != 0 {
        let due = WallMillis(r.u64("will due")?);
        let has_delay = r.u8("will delay flag")? != 0;
        let delay = r.u32("will delay")?;
        let publish = decode_publish(r.rest())?;
        let mut properties = publish.properties;
        properties.will_delay_interval = has_delay.then_some(delay);
        let will = Will {
            qos: publish.qos_pid.qos(),
            topic: publish.topic,
            payload: publish.payload,
            retain: publish.retain,
            properties,
        };
        Some((will, due))
    } else if r.remaining() != 0 {
        return Err(format!("{} trailing bytes", r.remaining()));
    } else {
        None
    };
    Ok(StoredMeta {
        expiry_interval,
        offline_since,
        subscriptions,
        will,
    })
}

/// Appends a message as the PUBLISH packet that carries it, its payload copied once. QoS 1/2
/// need a packet id on the wire; the stored one means nothing (a row keeps its real id in
/// its own framing).
fn put_publish(
    w: &mut Vec<u8>,
    topic: TopicName,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    properties: Properties,
) -> Result<(), String> {
    let qos_pid = QosPid::from_parts(qos, (qos != QoS::AtMostOnce).then_some(PacketId::MIN))
        .ok_or_else(|| "QoS and packet id disagree".to_string())?;
    let packet = Packet::Publish(Publish {
        dup: false,
        qos_pid,
        retain,
        topic,
        payload,
        properties,
    });
    let encoded = codec::encode(&packet, ProtocolVersion::V5, &mut BytesMut::new())
        .map_err(|e| e.to_string())?;
    w.extend_from_slice(&encoded.head);
    w.extend_from_slice(&encoded.payload);
    Ok(())
}

fn decode_publish(bytes: &[u8]) -> Result<Publish, String> {
    let mut buf = BytesMut::from(bytes);
    // The stored packet was written by this codec, so any size is acceptable here.
    let mut decoder = Decoder::with_version(ProtocolVersion::V5, u32::MAX);
    match decoder.decode(&mut buf) {
        Ok(Some(Packet::Publish(publish))) if buf.is_empty() && !publish.topic.is_empty() => {
            Ok(publish)
        }
        Ok(Some(Packet::Publish(_))) if !buf.is_empty() => {
            Err(format!("{} bytes after the stored PUBLISH", buf.len()))
        }
        Ok(Some(Packet::Publish(_))) => Err("stored PUBLISH has an empty topic".to_string()),
        Ok(Some(other)) => Err(format!(
            "expected a stored PUBLISH, found {:?}",
            other.packet_type()
        )),
        Ok(None) => Err("stored PUBLISH is cut short".to_string()),
        Err(e) => Err(format!("stored PUBLISH does not decode: {e}")),
    }
}

/// The MQTT 5 SUBSCRIBE options byte (§3.8.3.1), reused as the stored form.
fn options_byte(o: SubscriptionOptions) -> u8 {
    codec::subscription_options_byte(&o, ProtocolVersion::V5)
}

fn parse_options(byte: u8) -> Result<SubscriptionOptions, String> {
    codec::subscription_options(byte, ProtocolVersion::V5)
        .map_err(|e| format!("subscription options byte 0x{byte:02X}: {e}"))
}

fn put_str16(w: &mut Vec<u8>, s: &str) -> Result<(), String> {
    let len = u16::try_from(s.len()).map_err(|_| "string longer than 65535 bytes".to_string())?;
    w.extend_from_slice(&len.to_be_bytes());
    w.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_len32(w: &mut Vec<u8>, len: usize) -> Result<(), String> {
    let len = u32::try_from(len).map_err(|_| "more than 2^32 entries".to_string())?;
    w.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Reads a value front to back; every read names what it wanted when the value is short.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the version byte and starts after it.
    fn versioned(value: &'a [u8]) -> Result<Reader<'a>, String> {
        match value.split_first() {
            Some((&RECORD_VERSION, rest)) => Ok(Reader { buf: rest }),
            Some((other, _)) => Err(format!(
                "record version {other}, this build reads version {RECORD_VERSION}"
            )),
            None => Err("empty record".to_string()),
        }
    }

    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        match self.buf.split_first_chunk::<N>() {
            Some((head, rest)) => {
                self.buf = rest;
                Ok(*head)
            }
            None => Err(format!("record ends before its {what}")),
        }
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        self.take::<1>(what).map(|[b]| b)
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        self.take(what).map(u16::from_be_bytes)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.take(what).map(u32::from_be_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.take(what).map(u64::from_be_bytes)
    }

    /// A count of entries each at least `min_entry` bytes long, checked against what is
    /// left so a damaged count cannot ask for a huge allocation.
    fn len32(&mut self, what: &str, min_entry: usize) -> Result<usize, String> {
        let count = usize::try_from(self.u32(what)?).unwrap_or(usize::MAX);
        if count.saturating_mul(min_entry) > self.buf.len() {
            return Err(format!("{what} {count} exceeds the record"));
        }
        Ok(count)
    }

    fn str16(&mut self, what: &str) -> Result<String, String> {
        let len = usize::from(self.u16(what)?);
        let Some((s, rest)) = self.buf.split_at_checked(len) else {
            return Err(format!("record ends inside its {what}"));
        };
        self.buf = rest;
        let s = MqttString::from_bytes(Bytes::copy_from_slice(s))
            .map_err(|e| format!("{what}: {e}"))?;
        Ok(s.as_str().to_string())
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn rest(self) -> &'a [u8] {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU16;

    use proptest::prelude::*;

    use crate::protocol::RetainHandling;

    use super::*;
    use crate::protocol::codec::strategies;

    fn now() -> Now {
        Now::new(
            Instant::now(),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
    }

    fn delivery(topic: &str) -> Delivery {
        Delivery {
            topic: TopicName::new(topic).expect("topic"),
            payload: Bytes::from_static(b"payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Arc::new(Properties {
                payload_format_indicator: Some(true),
                message_expiry_interval: Some(60),
                content_type: Some(MqttString::from_static("text/plain")),
                response_topic: Some(TopicName::new("re/ply").expect("topic")),
                correlation_data: Some(Bytes::from_static(&[0, 1, 2])),
                subscription_identifiers: vec![NonZeroU32::MIN],
                topic_alias: NonZeroU16::new(3),
                user_properties: vec![(MqttString::from_static("k"), MqttString::from_static("v"))],
                ..Properties::default()
            }),
            subscription_ids: vec![NonZeroU32::MIN, NonZeroU32::MAX],
            shared: Some(TopicFilter::new("$share/g/a/#").expect("filter")),
            expires_at: None,
            row: None,
        }
    }

    #[test]
    fn a_row_keeps_every_field_and_its_expiry_to_the_millisecond() {
        let now = now();
        let mut d = delivery("a/b");
        d.expires_at = Some(now.instant + Duration::from_millis(1500));
        let id = PacketId::new(7).expect("id");
        for kind in [
            RowKind::Queued,
            RowKind::Inflight {
                packet_id: id,
                released: false,
            },
            RowKind::Inflight {
                packet_id: id,
                released: true,
            },
        ] {
            let row = decode_row(&encode_row(kind, &d, &now).expect("encodes")).expect("decodes");
            assert_eq!(row.kind, kind);
            assert_eq!(
                row.expires_at,
                Some(now.wall(now.instant).plus_secs(1).plus_millis(500))
            );
            let mut back = row.delivery;
            back.expires_at = row.expires_at.and_then(|at| now.instant(at));
            assert_eq!(back, d);
        }
    }

    #[test]
    fn every_subscription_options_byte_round_trips() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for rh in [
                RetainHandling::SendAtSubscribe,
                RetainHandling::SendIfNew,
                RetainHandling::DoNotSend,
            ] {
                for (no_local, rap) in [(false, false), (true, false), (false, true), (true, true)]
                {
                    let o = SubscriptionOptions {
                        qos,
                        no_local,
                        retain_as_published: rap,
                        retain_handling: rh,
                    };
                    assert_eq!(parse_options(options_byte(o)), Ok(o));
                }
            }
        }
        assert!(parse_options(0x03).is_err(), "QoS 3");
        assert!(parse_options(0x30).is_err(), "retain handling 3");
        assert!(parse_options(0x40).is_err(), "reserved bits");
    }

    #[test]
    fn session_meta_round_trips_with_and_without_a_will() {
        let now = now();
        let will = Will {
            topic: TopicName::new("will/t").expect("topic"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties {
                will_delay_interval: Some(30),
                message_expiry_interval: Some(10),
                content_type: Some(MqttString::from_static("x")),
                ..Properties::default()
            },
        };
        let mut record = SessionMeta {
            expiry_interval: 3600,
            offline_since: Some(now.instant),
            subscriptions: vec![StoredSubscription {
                filter: TopicFilter::new("a/+/#").expect("filter"),
                options: SubscriptionOptions::qos(QoS::ExactlyOnce),
                identifier: NonZeroU32::new(42),
            }],
            will: Some(PendingWill {
                will: will.clone(),
                due: now.instant + Duration::from_secs(30),
            }),
        };
        let meta = decode_meta(&encode_meta(&record, &now).expect("encodes")).expect("decodes");
        assert_eq!(meta.expiry_interval, 3600);
        assert_eq!(meta.offline_since, Some(now.wall(now.instant)));
        assert_eq!(meta.subscriptions, record.subscriptions);
        assert_eq!(meta.will, Some((will, now.wall(now.instant).plus_secs(30))));

        record.will = None;
        record.offline_since = None;
        let meta = decode_meta(&encode_meta(&record, &now).expect("encodes")).expect("decodes");
        assert_eq!((meta.will, meta.offline_since), (None, None));
    }

    #[test]
    fn truncated_or_damaged_records_are_errors_not_panics() {
        let now = now();
        let mut d = delivery("t");
        d.expires_at = Some(now.instant);
        let record = SessionMeta {
            expiry_interval: 1,
            offline_since: Some(now.instant),
            subscriptions: vec![StoredSubscription {
                filter: TopicFilter::new("f").expect("filter"),
                options: SubscriptionOptions::qos(QoS::AtLeastOnce),
                identifier: None,
            }],
            will: None,
        };
        let row = encode_row(RowKind::Queued, &d, &now).expect("encodes");
        let meta = encode_meta(&record, &now).expect("encodes");
        let retained = encode_retained(
            &d.topic,
            &d.payload,
            d.qos,
            &d.properties,
            d.expires_at,
            &now,
        )
        .expect("encodes");
        for len in 0..row.len() {
            assert!(decode_row(&row[..len]).is_err(), "row cut at {len}");
        }
        for len in 0..meta.len() {
            assert!(decode_meta(&meta[..len]).is_err(), "meta cut at {len}");
        }
        for len in 0..retained.len() {
            assert!(
                decode_retained(&retained[..len]).is_err(),
                "retained cut at {len}"
            );
        }
        let mut other_version = row.clone();
        other_version[0] = RECORD_VERSION + 1;
        let err = decode_row(&other_version).expect_err("unknown version");
        assert!(err.contains("record version 2"), "{err}");
        // Flipping any single byte may still decode (a payload byte), but never panics.
        for i in 0..meta.len() {
            let mut damaged = meta.clone();
            damaged[i] ^= 0xFF;
            let _ = decode_meta(&damaged);
        }
        for i in 0..row.len() {
            let mut damaged = row.clone();
            damaged[i] ^= 0xFF;
            let _ = decode_row(&damaged);
        }
    }

    #[test]
    fn far_times_stay_far_and_past_ones_stay_past() {
        let now = now();
        let far = Duration::from_secs(100 * 365 * 24 * 3600);
        assert!(now
            .instant(WallMillis(u64::MAX))
            .is_none_or(|at| at > now.instant + far));
        let past = now.wall(now.instant).plus_secs(0);
        assert_eq!(now.instant(past), Some(now.instant));
        let earlier = WallMillis(past.0 - 2000);
        assert_eq!(
            now.instant(earlier),
            now.instant.checked_sub(Duration::from_secs(2))
        );
    }

    proptest! {
        #[test]
        fn any_publish_round_trips_as_a_row(
            publish in strategies::publish(ProtocolVersion::V5),
            ids in proptest::collection::vec(1u32..=268_435_455, 0..4),
            shared in proptest::option::of(strategies::topic_filter()),
            expiry_ms in proptest::option::of(0u64..10_000_000),
            queued in any::<bool>(),
        ) {
            prop_assume!(!publish.topic.is_empty());
            let now = now();
            let d = Delivery {
                qos: publish.qos(),
                topic: publish.topic,
                payload: publish.payload,
                retain: publish.retain,
                properties: Arc::new(publish.properties),
                subscription_ids: ids.into_iter().filter_map(NonZeroU32::new).collect(),
                shared,
                expires_at: expiry_ms.map(|ms| now.instant + Duration::from_millis(ms)),
                row: None,
            };
            let kind = if queued {
                RowKind::Queued
            } else {
                RowKind::Inflight { packet_id: PacketId::MIN, released: false }
            };
            let row = decode_row(&encode_row(kind, &d, &now).expect("encodes")).expect("decodes");
            let mut back = row.delivery;
            back.expires_at = row.expires_at.and_then(|at| now.instant(at));
            prop_assert_eq!(row.kind, kind);
            prop_assert_eq!(back, d);
        }
    }
}
