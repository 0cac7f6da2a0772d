//! The durable store: what a QoS 1 acknowledgement costs under each durability, next to
//! the raw fsync cost of this machine's disk.
//!
//! ```text
//! cargo bench --bench store
//! TWINMQ_BENCH_DIR=/path/on/the/data/disk cargo bench --bench store   # default: temp dir
//! ```
//!
//! - `fsync/*`: rewrite 4 KiB at the start of a file and `fsync` (`sync_all`) or
//!   `fdatasync` (`sync_data`) it: the floor under any durable commit on this disk.
//! - `commit/*`: one [`WriteBatch`] holding one queued QoS 1 message (40-byte topic, 100-byte
//!   payload, a user property) for a stored offline session, committed with
//!   `Store::commit`: `sync` fsyncs every commit (the latency a publisher sees per PUBACK in
//!   `sync` mode), `none` commits to memory (the cost of the transaction itself).
//! - `group/*`: 64 publishers submitting one such batch each at the same time through the
//!   `GroupCommitter`, window 0 ms and 2 ms; reported per message, so it compares with
//!   `commit/sync` as throughput of acknowledgements.

use std::fs::File;
use std::hint::black_box;
use std::io::{Seek, SeekFrom, Write};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};

use twinmq::protocol::{Delivery, MqttString, Properties, QoS, SessionSnapshot, TopicName};
use twinmq::store::{
    Durability, GroupCommitConfig, GroupCommitter, Now, SessionRecord, Store, StoreOptions,
    WriteBatch, NEVER_EXPIRES,
};

const PUBLISHERS: usize = 64;

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let root = bench_root();
    bench_fsync(&mut c, &root);
    bench_commit(&mut c, &root);
    bench_group(&mut c, &root);
    c.final_summary();
    let _ = std::fs::remove_dir_all(&root);
}

/// A fresh directory for this run, on the disk named by `TWINMQ_BENCH_DIR` if set.
fn bench_root() -> PathBuf {
    let base = std::env::var_os("TWINMQ_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let root = base.join(format!("twinmq-store-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("bench directory");
    root
}

fn bench_fsync(c: &mut Criterion, root: &std::path::Path) {
    let mut group = c.benchmark_group("fsync");
    let mut file = File::create(root.join("fsync.bin")).expect("create");
    let block = vec![0x5Au8; 4096];
    file.write_all(&block).expect("write");
    file.sync_all().expect("sync");
    group.bench_function("write-4k-fsync", |b| {
        b.iter(|| {
            file.seek(SeekFrom::Start(0)).expect("seek");
            file.write_all(black_box(&block)).expect("write");
            file.sync_all().expect("fsync");
        })
    });
    group.bench_function("write-4k-fdatasync", |b| {
        b.iter(|| {
            file.seek(SeekFrom::Start(0)).expect("seek");
            file.write_all(black_box(&block)).expect("write");
            file.sync_data().expect("fdatasync");
        })
    });
    group.finish();
}

fn bench_commit(c: &mut Criterion, root: &std::path::Path) {
    let mut group = c.benchmark_group("commit");
    for (name, durability) in [("sync", Durability::Sync), ("none", Durability::None)] {
        let store = store_with_subscriber(root, &format!("commit-{name}"));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut batch = WriteBatch::new(Now::from_clocks());
                batch
                    .append_queued("subscriber", &qos1_message())
                    .expect("encodes");
                store.commit(batch, durability).expect("commits");
            })
        });
        let stats = store.stats();
        println!(
            "commit/{name}: {} commits, file {} bytes",
            stats.commits,
            store.usage().map(|u| u.file_bytes).unwrap_or(0)
        );
    }
    group.finish();
}

fn bench_group(c: &mut Criterion, root: &std::path::Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("group");
    group.throughput(Throughput::Elements(PUBLISHERS as u64));
    for window_ms in [0u64, 2] {
        let store = Arc::new(store_with_subscriber(root, &format!("group-{window_ms}")));
        let (committer, _task) = runtime.block_on(async {
            GroupCommitter::spawn(
                Arc::clone(&store),
                GroupCommitConfig::new(Durability::Group, Duration::from_millis(window_ms)),
            )
        });
        let before = store.stats();
        group.bench_function(
            BenchmarkId::new(format!("{PUBLISHERS}-publishers"), format!("{window_ms}ms")),
            |b| {
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let started = Instant::now();
                        for _ in 0..iters {
                            let submits: Vec<_> = (0..PUBLISHERS)
                                .map(|_| {
                                    let committer = committer.clone();
                                    tokio::spawn(async move {
                                        let mut batch = WriteBatch::new(Now::from_clocks());
                                        batch
                                            .append_queued("subscriber", &qos1_message())
                                            .expect("encodes");
                                        committer.submit(batch).await
                                    })
                                })
                                .collect();
                            for submit in submits {
                                submit.await.expect("task").expect("committed");
                            }
                        }
                        started.elapsed()
                    })
                })
            },
        );
        let after = store.stats();
        let commits = after.durable_commits - before.durable_commits;
        let batches = after.batches - before.batches;
        println!(
            "group/{window_ms}ms: {batches} batches in {commits} fsync commits ({:.1} per commit)",
            batches as f64 / commits.max(1) as f64
        );
    }
    group.finish();
}

/// A store holding one offline persistent session, "subscriber", to queue into.
fn store_with_subscriber(root: &std::path::Path, name: &str) -> Store {
    let store = Store::open(&root.join(name), StoreOptions::default()).expect("store opens");
    let now = Now::from_clocks();
    let mut batch = WriteBatch::new(now);
    batch
        .put_session(
            "subscriber",
            &SessionRecord {
                expiry_interval: NEVER_EXPIRES,
                offline_since: Some(now.instant),
                subscriptions: Vec::new(),
                will: None,
                state: SessionSnapshot::default(),
            },
        )
        .expect("encodes");
    store.commit(batch, Durability::Sync).expect("commits");
    store
}

/// Row ids for the messages the benchmarks write: each copy has its own, as in the broker.
static NEXT_ROW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A typical telemetry message at QoS 1, in a row of its own.
fn qos1_message() -> Delivery {
    Delivery {
        topic: TopicName::new("factory/line-04/station-17/sensor/temperature").expect("topic"),
        payload: Bytes::from_static(&[0x42; 100]),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Arc::new(Properties {
            user_properties: vec![(
                MqttString::from_static("unit"),
                MqttString::from_static("celsius"),
            )],
            ..Properties::default()
        }),
        subscription_ids: vec![NonZeroU32::MIN],
        shared: None,
        expires_at: Some(Instant::now() + Duration::from_secs(3600)),
        row: Some(NEXT_ROW.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
    }
}
