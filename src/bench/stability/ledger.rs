//! The ledger of one run: what every publisher sent and had acknowledged, what every
//! subscriber received, and when. Payloads carry a [`Stamp`] (publisher, sequence number,
//! send time), so loss, duplicates, order and latency are computed from the messages
//! themselves, whatever broker delivered them.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::Instant;

use crate::client::Message;
use crate::protocol::QoS;

const MAGIC: &[u8; 4] = b"TQSB";
/// Bytes of a stamp at the start of every payload.
pub const STAMP_LEN: usize = 24;

/// What a payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub seq: u64,
    /// Microseconds since the run's epoch.
    pub sent_us: u64,
}

impl Stamp {
    /// A payload of `len` bytes (at least the stamp) starting with this stamp.
    pub fn payload(&self, len: usize) -> Bytes {
        let mut buf = BytesMut::with_capacity(len.max(STAMP_LEN));
        buf.put_slice(MAGIC);
        buf.put_u32(self.publisher);
        buf.put_u64(self.seq);
        buf.put_u64(self.sent_us);
        buf.resize(len.max(STAMP_LEN), 0);
        buf.freeze()
    }

    pub fn parse(payload: &[u8]) -> Option<Stamp> {
        if payload.len() < STAMP_LEN || &payload[..4] != MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_be_bytes(payload[i..i + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |i: usize| u64::from_be_bytes(payload[i..i + 8].try_into().unwrap_or([0; 8]));
        Some(Stamp {
            publisher: u32_at(4),
            seq: u64_at(8),
            sent_us: u64_at(16),
        })
    }
}

/// One delivery, for latency, recovery and the charts.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub subscriber: u32,
    pub publisher: u32,
    pub sent_us: u64,
    pub recv_us: u64,
}

impl Sample {
    /// Publish to delivery, in milliseconds.
    pub fn latency_ms(&self) -> f64 {
        self.recv_us.saturating_sub(self.sent_us) as f64 / 1000.0
    }

    /// A point of the latency-over-time series: (seconds since `start_us`, latency ms).
    pub fn point(&self, start_us: u64) -> (f64, f64) {
        (
            self.sent_us.saturating_sub(start_us) as f64 / 1e6,
            self.latency_ms(),
        )
    }
}

/// Shared by a run's publishers and subscribers.
pub struct Ledger {
    epoch: Instant,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    publishers: Vec<PubRecord>,
    subscribers: Vec<SubRecord>,
    /// In arrival order.
    samples: Vec<Sample>,
}

struct PubRecord {
    /// Its messages count for latency (in `hol`, only the small topic does).
    measured: bool,
    sent: u64,
    acked: HashSet<u64>,
    failed: u64,
}

struct SubRecord {
    expects: Vec<u32>,
    flows: HashMap<u32, Flow>,
    connection_lost: u64,
    foreign: u64,
}

#[derive(Default)]
struct Flow {
    seen: HashSet<u64>,
    max_seq: Option<u64>,
    out_of_order: u64,
    /// Copies QoS 1 allows: marked DUP.
    redelivered: u64,
    /// Copies beyond the QoS: any QoS 2 copy, a QoS 1 copy not marked DUP.
    duplicated: u64,
    /// Of which QoS 2 copies (exactly once broken).
    duplicated_qos2: u64,
}

/// Totals of a run, counted per (message, subscriber it is addressed to).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub duplicated_qos2: u64,
    pub redelivered: u64,
    pub out_of_order: u64,
    pub connection_lost: u64,
    /// Subscribers still missing acknowledged messages.
    pub subscribers_missing: u64,
}

impl Ledger {
    pub fn new(epoch: Instant) -> Ledger {
        Ledger {
            epoch,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Microseconds since the epoch.
    pub fn us(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    pub fn add_publisher(&self, measured: bool) -> u32 {
        let mut inner = self.lock();
        inner.publishers.push(PubRecord {
            measured,
            sent: 0,
            acked: HashSet::new(),
            failed: 0,
        });
        (inner.publishers.len() - 1) as u32
    }

    /// A subscriber that should receive every acknowledged message of `expects`.
    pub fn add_subscriber(&self, expects: Vec<u32>) -> u32 {
        let mut inner = self.lock();
        inner.subscribers.push(SubRecord {
            expects,
            flows: HashMap::new(),
            connection_lost: 0,
            foreign: 0,
        });
        (inner.subscribers.len() - 1) as u32
    }

    /// Stamps the next message of `publisher` and counts it sent.
    pub fn stamp(&self, publisher: u32, seq: u64) -> Stamp {
        let sent_us = self.us(Instant::now());
        if let Some(p) = self.lock().publishers.get_mut(publisher as usize) {
            p.sent += 1;
        }
        Stamp {
            publisher,
            seq,
            sent_us,
        }
    }

    pub fn on_acked(&self, publisher: u32, seq: u64) {
        if let Some(p) = self.lock().publishers.get_mut(publisher as usize) {
            p.acked.insert(seq);
        }
    }

    pub fn on_failed(&self, publisher: u32) {
        if let Some(p) = self.lock().publishers.get_mut(publisher as usize) {
            p.failed += 1;
        }
    }

    pub fn on_connection_lost(&self, subscriber: u32) {
        if let Some(s) = self.lock().subscribers.get_mut(subscriber as usize) {
            s.connection_lost += 1;
        }
    }

    /// Records a delivery to `subscriber` received at `at`.
    pub fn on_message(&self, subscriber: u32, message: &Message, at: Instant) {
        let recv_us = self.us(at);
        let mut inner = self.lock();
        let Some(stamp) = Stamp::parse(&message.payload) else {
            if let Some(s) = inner.subscribers.get_mut(subscriber as usize) {
                s.foreign += 1;
            }
            return;
        };
        let Some(sub) = inner.subscribers.get_mut(subscriber as usize) else {
            return;
        };
        let flow = sub.flows.entry(stamp.publisher).or_default();
        if !flow.seen.insert(stamp.seq) {
            let allowed = message.qos == QoS::AtLeastOnce && message.dup;
            if allowed {
                flow.redelivered += 1;
            } else {
                flow.duplicated += 1;
                flow.duplicated_qos2 += u64::from(message.qos == QoS::ExactlyOnce);
            }
            return;
        }
        match flow.max_seq {
            Some(max) if stamp.seq < max => flow.out_of_order += 1,
            _ => flow.max_seq = Some(stamp.seq),
        }
        inner.samples.push(Sample {
            subscriber,
            publisher: stamp.publisher,
            sent_us: stamp.sent_us,
            recv_us,
        });
    }

    /// Waits (polling, bounded by `until`) until no acknowledged message is missing.
    pub async fn wait_delivered(&self, until: Instant) {
        while self.missing() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Acknowledged messages some subscriber has not received yet.
    pub fn missing(&self) -> u64 {
        let inner = self.lock();
        inner
            .subscribers
            .iter()
            .map(|s| missing_of(&inner, s))
            .sum()
    }

    pub fn totals(&self) -> Totals {
        let inner = self.lock();
        let mut t = Totals::default();
        for sub in &inner.subscribers {
            t.connection_lost += sub.connection_lost;
            let missing = missing_of(&inner, sub);
            t.lost += missing;
            t.subscribers_missing += u64::from(missing > 0);
            for &p in &sub.expects {
                let Some(publisher) = inner.publishers.get(p as usize) else {
                    continue;
                };
                t.sent += publisher.sent;
                t.acked += publisher.acked.len() as u64;
                t.failed += publisher.failed;
            }
            for flow in sub.flows.values() {
                t.delivered += flow.seen.len() as u64;
                t.duplicated += flow.duplicated;
                t.duplicated_qos2 += flow.duplicated_qos2;
                t.redelivered += flow.redelivered;
                t.out_of_order += flow.out_of_order;
            }
        }
        t
    }

    /// Deliveries of measured publishers, in arrival order.
    pub fn measured_samples(&self) -> Vec<Sample> {
        let inner = self.lock();
        inner
            .samples
            .iter()
            .filter(|s| {
                inner
                    .publishers
                    .get(s.publisher as usize)
                    .is_some_and(|p| p.measured)
            })
            .copied()
            .collect()
    }

    /// Every delivery, in arrival order.
    pub fn samples(&self) -> Vec<Sample> {
        self.lock().samples.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn missing_of(inner: &Inner, sub: &SubRecord) -> u64 {
    sub.expects
        .iter()
        .filter_map(|&p| inner.publishers.get(p as usize).map(|rec| (p, rec)))
        .map(|(p, rec)| match sub.flows.get(&p) {
            Some(flow) => rec.acked.difference(&flow.seen).count() as u64,
            None => rec.acked.len() as u64,
        })
        .sum()
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// For each fault that ended at `event` (microseconds since the epoch) and each
/// subscriber: how long until it received a message sent at or after the event. Events
/// with no such delivery count in the second value.
pub fn recovery_ms(samples: &[Sample], events: &[u64], subscribers: &[u32]) -> (Vec<f64>, u64) {
    let mut recoveries = Vec::new();
    let mut unrecovered = 0;
    for &event in events {
        for &sub in subscribers {
            let first = samples
                .iter()
                .filter(|s| s.subscriber == sub && s.sent_us >= event)
                .map(|s| s.recv_us)
                .min();
            match first {
                Some(recv) => recoveries.push(recv.saturating_sub(event) as f64 / 1000.0),
                None => unrecovered += 1,
            }
        }
    }
    recoveries.sort_by(f64::total_cmp);
    (recoveries, unrecovered)
}

/// Gaps longer than `threshold` between consecutive deliveries to one subscriber.
pub fn stall_episodes(samples: &[Sample], threshold: Duration) -> u64 {
    let mut last: HashMap<u32, u64> = HashMap::new();
    let limit = threshold.as_micros() as u64;
    let mut episodes = 0;
    for s in samples {
        if let Some(prev) = last.insert(s.subscriber, s.recv_us) {
            if s.recv_us.saturating_sub(prev) > limit {
                episodes += 1;
            }
        }
    }
    episodes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Properties, TopicName};

    fn message(stamp: Stamp, qos: QoS, dup: bool) -> Message {
        Message {
            topic: TopicName::new("t").expect("topic"),
            payload: stamp.payload(64),
            qos,
            retain: false,
            dup,
            properties: Properties::default(),
            stream: None,
        }
    }

    #[test]
    fn a_stamp_round_trips_and_foreign_payloads_are_refused() {
        let s = Stamp {
            publisher: 3,
            seq: 1 << 40,
            sent_us: 99,
        };
        let payload = s.payload(10);
        assert_eq!(payload.len(), STAMP_LEN);
        assert_eq!(Stamp::parse(&payload), Some(s));
        assert_eq!(Stamp::parse(b"hello world, not a stamp"), None);
    }

    #[test]
    fn counts_loss_duplicates_and_order_per_qos() {
        let epoch = Instant::now();
        let ledger = Ledger::new(epoch);
        let q1 = ledger.add_publisher(true);
        let q2 = ledger.add_publisher(true);
        let sub = ledger.add_subscriber(vec![q1, q2]);
        let stamps: Vec<Stamp> = (0..4).map(|seq| ledger.stamp(q1, seq)).collect();
        for seq in 0..4 {
            ledger.on_acked(q1, seq);
        }
        let q2s = ledger.stamp(q2, 0);
        ledger.on_acked(q2, 0);
        let now = Instant::now();
        ledger.on_message(sub, &message(stamps[1], QoS::AtLeastOnce, false), now);
        ledger.on_message(sub, &message(stamps[0], QoS::AtLeastOnce, false), now);
        ledger.on_message(sub, &message(stamps[0], QoS::AtLeastOnce, true), now);
        ledger.on_message(sub, &message(stamps[1], QoS::AtLeastOnce, false), now);
        ledger.on_message(sub, &message(stamps[2], QoS::AtLeastOnce, false), now);
        ledger.on_message(sub, &message(q2s, QoS::ExactlyOnce, false), now);
        ledger.on_message(sub, &message(q2s, QoS::ExactlyOnce, true), now);
        let t = ledger.totals();
        assert_eq!(t.sent, 5);
        assert_eq!(t.delivered, 4);
        assert_eq!(t.lost, 1, "seq 3 was acknowledged and never arrived");
        assert_eq!(t.redelivered, 1, "a QoS 1 copy marked DUP");
        assert_eq!(t.duplicated, 2, "an unmarked QoS 1 copy and a QoS 2 copy");
        assert_eq!(t.duplicated_qos2, 1);
        assert_eq!(t.out_of_order, 1);
        assert_eq!(ledger.missing(), 1);
    }

    #[test]
    fn recovery_is_the_first_delivery_sent_after_the_event() {
        let s = |sent_us, recv_us| Sample {
            subscriber: 0,
            publisher: 0,
            sent_us,
            recv_us,
        };
        let samples = [s(0, 10), s(900, 5_000), s(1_000, 4_000), s(2_000, 6_000)];
        let (r, unrecovered) = recovery_ms(&samples, &[1_000, 10_000], &[0]);
        assert_eq!(r, vec![3.0]);
        assert_eq!(unrecovered, 1);
        assert_eq!(stall_episodes(&samples, Duration::from_millis(3)), 1);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 99.0), Some(4.0));
    }
}
