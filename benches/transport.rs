//! TLS vs QUIC on loopback, through the whole broker: time to connect (handshake, CONNECT,
//! CONNACK) and QoS 1 throughput (a publisher and a subscriber, 2,000 messages with 64
//! publishes in flight). Figures in docs/performance.md.
//!
//! `cargo bench --bench transport`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;
use twinmq::client::{Client, ClientOptions, StreamMode, Transport};
use twinmq::config::{Loader, Overrides};
use twinmq::protocol::QoS;
use twinmq::server::Server;

const MESSAGES: usize = 2_000;
const IN_FLIGHT: usize = 64;

struct Broker {
    server: Server,
    ca: std::path::PathBuf,
}

fn start(rt: &Runtime) -> Broker {
    start_with(rt, "group")
}

fn start_with(rt: &Runtime, durability: &str) -> Broker {
    let dir = std::env::temp_dir().join(format!(
        "twinmq-bench-transport-{}-{durability}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let settings = [
        format!("data_dir={}", dir.display()),
        format!("storage.durability={durability}"),
        "listeners.tcp.bind=127.0.0.1:0".to_string(),
        "listeners.tls.bind=127.0.0.1:0".to_string(),
        "listeners.quic.bind=127.0.0.1:0".to_string(),
        "log.level=error".to_string(),
    ];
    let overrides = Overrides::from_assignments(&settings).expect("overrides");
    let config = Loader::new()
        .without_env()
        .overrides(overrides)
        .load()
        .expect("config");
    let server = rt.block_on(Server::start(&config)).expect("broker starts");
    let ca = server.dev_ca.clone().expect("dev CA");
    Broker { server, ca }
}

fn options(broker: &Broker, transport: Transport, streams: StreamMode, id: &str) -> ClientOptions {
    let port = match transport {
        Transport::Quic => broker.server.quic_addr,
        _ => broker.server.tls_addr,
    }
    .expect("listener")
    .port();
    ClientOptions::new("localhost")
        .port(port)
        .transport(transport)
        .streams(streams)
        .ca_file(&broker.ca)
        .client_id(id)
        .reconnect(None)
        .max_inflight(1024)
}

/// Publishes `MESSAGES` QoS 1 messages with `IN_FLIGHT` outstanding and waits until the
/// subscriber has them all.
async fn pump(publisher: &Client, incoming: &mut twinmq::client::Incoming) {
    pump_at(publisher, incoming, QoS::AtLeastOnce).await
}

/// [`pump`] at `qos`.
async fn pump_at(publisher: &Client, incoming: &mut twinmq::client::Incoming, qos: QoS) {
    let publisher = Arc::new(publisher.clone());
    let mut tasks = JoinSet::new();
    let per_task = MESSAGES / IN_FLIGHT;
    for t in 0..IN_FLIGHT {
        let p = Arc::clone(&publisher);
        tasks.spawn(async move {
            for n in 0..per_task {
                p.publish("bench/t", format!("{t}-{n}"), qos, false)
                    .await
                    .expect("publish");
            }
        });
    }
    for _ in 0..(per_task * IN_FLIGHT) {
        tokio::time::timeout(Duration::from_secs(30), incoming.next_message())
            .await
            .expect("delivery in time")
            .expect("message");
    }
    while tasks.join_next().await.is_some() {}
}

fn transports() -> [(&'static str, Transport, StreamMode); 3] {
    [
        ("tls", Transport::Tls, StreamMode::Single),
        ("quic-single", Transport::Quic, StreamMode::Single),
        ("quic-multi", Transport::Quic, StreamMode::Multi),
    ]
}

fn connect_time(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let broker = start(&rt);
    let mut group = c.benchmark_group("connect");
    group.measurement_time(Duration::from_secs(4));
    group.sample_size(30);
    for (name, transport, streams) in transports() {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        let start = Instant::now();
                        let (client, _incoming) = Client::connect(options(
                            &broker,
                            transport,
                            streams,
                            &format!("c-{name}-{i}"),
                        ))
                        .await
                        .expect("connect");
                        total += start.elapsed();
                        let _ = client.disconnect().await;
                    }
                    total
                })
            });
        });
    }
    group.finish();
}

fn qos1_throughput(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let broker = start(&rt);
    let mut group = c.benchmark_group("qos1_2000_messages");
    group.measurement_time(Duration::from_secs(8));
    group.sample_size(10);
    group.throughput(Throughput::Elements(MESSAGES as u64));
    for (name, transport, streams) in transports() {
        let (publisher, mut incoming) = rt.block_on(async {
            let (subscriber, incoming) =
                Client::connect(options(&broker, transport, streams, &format!("sub-{name}")))
                    .await
                    .expect("subscriber");
            subscriber
                .subscribe("bench/#", QoS::AtLeastOnce)
                .await
                .expect("subscribe");
            // Keep the subscriber alive for the group's lifetime.
            std::mem::forget(subscriber);
            let (publisher, _) =
                Client::connect(options(&broker, transport, streams, &format!("pub-{name}")))
                    .await
                    .expect("publisher");
            (publisher, incoming)
        });
        group.bench_function(name, |b| {
            b.iter(|| rt.block_on(pump(&publisher, &mut incoming)));
        });
    }
    group.finish();
}

/// QoS 1 and QoS 2 to a persistent subscriber: every message is stored before its
/// PUBACK/PUBREC, and each QoS 2 delivery's packet id and PUBREC before its PUBLISH and
/// PUBREL leave (two more commits per message; docs/decisions/0004).
fn durability(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    for (name, qos) in [
        ("qos1_persistent_2000_messages", QoS::AtLeastOnce),
        ("qos2_persistent_2000_messages", QoS::ExactlyOnce),
    ] {
        let mut group = c.benchmark_group(name);
        group.measurement_time(Duration::from_secs(8));
        group.sample_size(10);
        group.throughput(Throughput::Elements(MESSAGES as u64));
        for durability in ["none", "group", "sync"] {
            let broker = start_with(&rt, durability);
            let (publisher, mut incoming) = rt.block_on(async {
                let (subscriber, incoming) = Client::connect(
                    options(&broker, Transport::Tls, StreamMode::Single, "durable-sub")
                        .persistent_session(Duration::from_secs(3600)),
                )
                .await
                .expect("subscriber");
                subscriber
                    .subscribe("bench/#", qos)
                    .await
                    .expect("subscribe");
                std::mem::forget(subscriber);
                let (publisher, _) = Client::connect(options(
                    &broker,
                    Transport::Tls,
                    StreamMode::Single,
                    "durable-pub",
                ))
                .await
                .expect("publisher");
                (publisher, incoming)
            });
            group.bench_function(durability, |b| {
                b.iter(|| rt.block_on(pump_at(&publisher, &mut incoming, qos)));
            });
            std::mem::forget(broker);
        }
        group.finish();
    }
}

criterion_group!(benches, connect_time, qos1_throughput, durability);
criterion_main!(benches);
