//! Subscription index and retained store: lookups against 10 000 subscriptions with
//! wildcards, and the cost of subscription churn under the copy-on-write design.
//!
//! ```text
//! cargo bench --bench topic
//! ```
//!
//! - `match/*`: one publish matched through `SharedIndex::matches` (snapshot load included)
//!   against 10 000 subscriptions: 4 000 exact, 3 000 with `+`, 2 000 with `#`, 1 000 in
//!   shared groups, spread over 1 000 devices.
//! - `match/fanout-10k`: one topic with 10 000 subscribers of the same filter: the cost of
//!   building 10 000 routes.
//! - `match/during-churn`: as `match/hit`, while another thread subscribes and unsubscribes
//!   in a loop: readers do not wait for writers.
//! - `churn/*`: one subscribe plus one unsubscribe. `shared` publishes two snapshots and
//!   copies the edited path each time; `plain` edits an unshared index in place (no copies),
//!   the floor; `crowded-filter` edits a filter that already has 10 000 subscribers, whose
//!   list is copied on each write (the worst case of path copying).
//! - `build/10k`: building the whole 10 000-subscription index, a lower bound for what a
//!   write would cost if it copied the whole index instead of one path.
//! - `retained/*`: retained lookups in a store of 10 000 topics.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput};

use twinmq::broker::index::{ClientId, SharedIndex, SubscriptionIndex};
use twinmq::broker::retained::{RetainedMessage, RetainedStore};
use twinmq::protocol::{Properties, QoS, SubscriptionOptions, TopicFilter, TopicName};

const DEVICES: usize = 1000;

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench_match(&mut c);
    bench_churn(&mut c);
    bench_retained(&mut c);
    c.final_summary();
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s).expect("valid filter")
}

fn topic(s: &str) -> TopicName {
    TopicName::new(s).expect("valid topic")
}

fn options() -> SubscriptionOptions {
    SubscriptionOptions::qos(QoS::AtLeastOnce)
}

/// The 10 000 (client, filter) pairs of the workload.
fn workload() -> Vec<(ClientId, TopicFilter)> {
    let mut subs = Vec::with_capacity(10_000);
    for i in 0..4000 {
        let (d, s) = (i % DEVICES, i / DEVICES);
        subs.push((format!("exact-{i}"), format!("devices/{d}/sensors/{s}")));
    }
    for i in 0..3000 {
        let d = i % DEVICES;
        let f = match i / DEVICES {
            0 => format!("devices/{d}/+/0"),
            1 => format!("devices/+/sensors/{d}"),
            _ => format!("+/{d}/sensors/+"),
        };
        subs.push((format!("plus-{i}"), f));
    }
    for i in 0..2000 {
        let d = i % DEVICES;
        let f = if i < DEVICES {
            format!("devices/{d}/#")
        } else {
            format!("devices/{d}/sensors/#")
        };
        subs.push((format!("hash-{i}"), f));
    }
    for i in 0..1000 {
        subs.push((
            format!("shared-{i}"),
            format!("$share/g{}/devices/{}/sensors/+", i % 10, i % 100),
        ));
    }
    subs.into_iter()
        .map(|(c, f)| (ClientId::from(c), filter(&f)))
        .collect()
}

fn build(subs: &[(ClientId, TopicFilter)]) -> SubscriptionIndex {
    let mut index = SubscriptionIndex::new();
    for (client, f) in subs {
        index
            .subscribe(client, f, options(), None)
            .expect("valid filters");
    }
    index
}

fn bench_match(c: &mut Criterion) {
    let subs = workload();
    let shared = Arc::new(SharedIndex::from_index(build(&subs)));
    let hit = topic("devices/42/sensors/3");
    let miss = topic("factory/42/sensors/3");
    let sys = topic("$SYS/broker/uptime");
    eprintln!(
        "match/hit routes {} of {} subscriptions",
        shared.matches(&hit, None).len(),
        shared.len()
    );

    let mut group = c.benchmark_group("match");
    group.throughput(Throughput::Elements(1));
    group.bench_function("hit", |b| b.iter(|| shared.matches(black_box(&hit), None)));
    group.bench_function("miss", |b| {
        b.iter(|| shared.matches(black_box(&miss), None))
    });
    group.bench_function("dollar", |b| {
        b.iter(|| shared.matches(black_box(&sys), None))
    });
    let mut out = Vec::new();
    group.bench_function("hit-reused-vec", |b| {
        b.iter(|| {
            out.clear();
            shared.matches_into(black_box(&hit), None, &mut out);
            out.len()
        })
    });

    let stop = Arc::new(AtomicBool::new(false));
    let churner = {
        let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
        std::thread::spawn(move || {
            let client = ClientId::new("churner");
            let mut writes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let f = filter(&format!("devices/{}/sensors/+", writes % 1000));
                let _ = shared.subscribe(&client, &f, options(), None);
                shared.unsubscribe(&client, &f);
                writes += 2;
            }
            writes
        })
    };
    group.bench_function("during-churn", |b| {
        b.iter(|| shared.matches(black_box(&hit), None))
    });
    stop.store(true, Ordering::Relaxed);
    let writes = churner.join().unwrap_or(0);
    eprintln!("match/during-churn: the writer made {writes} writes meanwhile");

    let mut fanout = SubscriptionIndex::new();
    let f = filter("fan/out");
    for i in 0..10_000 {
        let _ = fanout.subscribe(&ClientId::from(format!("fan-{i}")), &f, options(), None);
    }
    let fan_topic = topic("fan/out");
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("fanout-10k", |b| {
        b.iter(|| fanout.matches(black_box(&fan_topic), None))
    });
    group.finish();
}

fn bench_churn(c: &mut Criterion) {
    let subs = workload();
    let mut group = c.benchmark_group("churn");
    group.throughput(Throughput::Elements(2));

    let shared = SharedIndex::from_index(build(&subs));
    let client = ClientId::new("churner");
    let filters: Vec<TopicFilter> = (0..DEVICES)
        .map(|d| filter(&format!("devices/{d}/churn/+")))
        .collect();
    let mut i = 0;
    group.bench_function("shared", |b| {
        b.iter(|| {
            let f = &filters[i % filters.len()];
            i += 1;
            let _ = shared.subscribe(&client, f, options(), None);
            shared.unsubscribe(&client, f)
        })
    });

    let mut plain = build(&subs);
    group.bench_function("plain", |b| {
        b.iter(|| {
            let f = &filters[i % filters.len()];
            i += 1;
            let _ = plain.subscribe(&client, f, options(), None);
            plain.unsubscribe(&client, f)
        })
    });

    let crowded = SharedIndex::new();
    let hot = filter("fan/out");
    crowded.update(|index| {
        for n in 0..10_000 {
            let _ = index.subscribe(&ClientId::from(format!("fan-{n}")), &hot, options(), None);
        }
    });
    group.bench_function("crowded-filter", |b| {
        b.iter(|| {
            let _ = crowded.subscribe(&client, &hot, options(), None);
            crowded.unsubscribe(&client, &hot)
        })
    });
    group.finish();

    let mut group = c.benchmark_group("build");
    group.throughput(Throughput::Elements(subs.len() as u64));
    group.bench_function("10k", |b| b.iter(|| build(black_box(&subs))));
    group.finish();
}

fn bench_retained(c: &mut Criterion) {
    let now = Instant::now();
    let mut store = RetainedStore::new();
    for d in 0..DEVICES {
        for s in 0..10 {
            store.set(RetainedMessage::new(
                topic(&format!("devices/{d}/sensors/{s}")),
                Bytes::from_static(b"21.5"),
                QoS::AtLeastOnce,
                Properties::default(),
                now,
            ));
        }
    }
    let mut group = c.benchmark_group("retained");
    for (name, f) in [
        ("exact", "devices/42/sensors/3"),
        ("plus", "devices/42/sensors/+"),
        ("plus-wide", "devices/+/sensors/3"),
        ("hash-all", "#"),
    ] {
        let f = filter(f);
        group.bench_function(name, |b| b.iter(|| store.matching(black_box(&f), now)));
    }
    group.finish();
}
