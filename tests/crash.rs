//! Nothing acknowledged is lost across a crash: the real `twinmq` binary is killed with
//! SIGKILL at seeded random moments while publishers send QoS 1 and QoS 2 messages (over
//! TLS and over QUIC) to persistent subscribers, offline or online, then restarted on the
//! same data directory. Every message whose PUBACK/PUBCOMP a publisher received must reach
//! every subscriber; QoS 2 messages exactly once.

mod common;
// The mosquitto_sub driver of tests/mosquitto.rs; this file uses part of it.
#[allow(dead_code)]
#[path = "mosquitto/clients.rs"]
mod clients;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::temp_dir;
use tokio::sync::mpsc;
use twinmq::client::{Client, ClientOptions, Reconnect, StreamMode, Transport};
use twinmq::fault::schedule::Rng;
use twinmq::protocol::QoS;

struct Broker {
    child: Child,
    tcp: SocketAddr,
    tls: SocketAddr,
    quic: SocketAddr,
    ca: PathBuf,
}

impl Broker {
    /// Starts `twinmq serve` on ephemeral ports and reads its addresses from stdout.
    fn start(data_dir: &Path) -> Broker {
        Broker::start_on(data_dir, [0, 0, 0]).expect("twinmq serve prints its addresses")
    }

    /// SIGKILL, then a new broker on the same data directory and the same ports (so
    /// clients with a reconnect policy come back to it by themselves).
    fn restart(self, data_dir: &Path) -> Broker {
        let ports = [self.tcp.port(), self.tls.port(), self.quic.port()];
        self.kill();
        // While no broker holds them, the ports are free ephemeral ports: a client's
        // socket (a QUIC reconnect binds a UDP port every few hundred ms) may take one
        // for a while. Retry, bounded, until it lets go.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(broker) = Broker::start_on(data_dir, ports) {
                return broker;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the restarted broker could not bind {ports:?} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `twinmq serve` on `data_dir`, listening on loopback at `ports` (TCP, TLS, QUIC).
    fn command(data_dir: &Path, [tcp, tls, quic]: [u16; 3]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_twinmq"));
        command
            .arg("serve")
            .args(["--set", &format!("data_dir={}", data_dir.display())])
            .args(["--set", &format!("listeners.tcp.bind=127.0.0.1:{tcp}")])
            .args(["--set", &format!("listeners.tls.bind=127.0.0.1:{tls}")])
            .args(["--set", &format!("listeners.quic.bind=127.0.0.1:{quic}")])
            .args(["--set", "log.level=warn"]);
        command
    }

    /// `None` if the broker exits before printing its addresses (a port is taken).
    fn start_on(data_dir: &Path, ports: [u16; 3]) -> Option<Broker> {
        let mut child = Broker::command(data_dir, ports)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("twinmq serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut tcp = None;
        let mut tls = None;
        let mut quic = None;
        let mut ca = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("twinmq: MQTT over TCP on ") {
                tcp = addr.parse().ok();
            } else if let Some(addr) = line.strip_prefix("twinmq: MQTT over TLS on ") {
                tls = addr.parse().ok();
            } else if let Some(rest) = line.strip_prefix("twinmq: MQTT over QUIC on ") {
                quic = rest.split('/').next().and_then(|a| a.parse().ok());
            } else if let Some(path) = line.strip_prefix("twinmq: development CA certificate: ") {
                ca = Some(PathBuf::from(path));
            }
            if tls.is_some() && quic.is_some() && ca.is_some() {
                break;
            }
        }
        match (tcp, tls, quic, ca) {
            (Some(tcp), Some(tls), Some(quic), Some(ca)) => Some(Broker {
                child,
                tcp,
                tls,
                quic,
                ca,
            }),
            _ => {
                // Reaped, so a failed attempt leaves no zombie behind.
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }

    fn options(&self, transport: Transport, id: &str) -> ClientOptions {
        let port = match transport {
            Transport::Quic => self.quic.port(),
            _ => self.tls.port(),
        };
        ClientOptions::new("localhost")
            .port(port)
            .transport(transport)
            .ca_file(&self.ca)
            .client_id(id)
            .reconnect(None)
            .connect_timeout(Duration::from_secs(10))
            // A killed broker sends nothing over QUIC: keep-alive is how a client notices.
            // 2 s leaves the live broker (which allows 1.5x) a full second of slack for a
            // test process stalled on a loaded machine.
            .keep_alive(Duration::from_secs(2))
    }

    /// SIGKILL, as a crash.
    fn kill(self) {
        drop(self);
    }
}

impl Drop for Broker {
    // Also when a test fails half-way: no broker outlives its test.
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

const CYCLES: u64 = 4;

/// Publishers (one per cycle, TLS and QUIC in turn) send QoS 1 and QoS 2 messages to
/// `topic` until the broker is killed at a seeded random moment; it is restarted on the
/// same data directory and ports. Returns the broker now running and every message a
/// publisher got its PUBACK/PUBCOMP for.
async fn publish_through_crashes(
    mut broker: Broker,
    data_dir: &Path,
    rng: &mut Rng,
    topic: &'static str,
) -> (Broker, BTreeMap<String, QoS>) {
    let mut acked: BTreeMap<String, QoS> = BTreeMap::new();
    for cycle in 0..CYCLES {
        let transport = if cycle % 2 == 0 {
            Transport::Tls
        } else {
            Transport::Quic
        };
        let kill_after = Duration::from_millis(150 + rng.below(350));
        let (publisher, _) = Client::connect(broker.options(transport, &format!("pub-{cycle}")))
            .await
            .expect("publisher");
        let publishing = tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..100_000u64 {
                let qos = if n % 2 == 0 {
                    QoS::AtLeastOnce
                } else {
                    QoS::ExactlyOnce
                };
                let payload = format!("{cycle}-{n}");
                match publisher.publish(topic, payload.clone(), qos, false).await {
                    Ok(()) => acked.push((payload, qos)),
                    Err(_) => break,
                }
            }
            acked
        });
        tokio::time::sleep(kill_after).await;
        broker = broker.restart(data_dir);
        let got = tokio::time::timeout(Duration::from_secs(30), publishing)
            .await
            .expect("the publisher notices the crash")
            .expect("publisher task");
        acked.extend(got);
    }
    assert!(
        !acked.is_empty(),
        "publishers got acknowledgements before the crashes"
    );
    (broker, acked)
}

/// The payloads of the messages `incoming` delivers, read as they come.
fn forward(mut incoming: twinmq::client::Incoming) -> mpsc::UnboundedReceiver<bytes::Bytes> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = incoming.next_message().await {
            if tx.send(m.payload).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads payloads until every message of `acked` has arrived (bounded), then checks that
/// none is missing and, with `qos2_once`, that no QoS 2 message came twice.
async fn expect_all(
    who: &str,
    payloads: &mut mpsc::UnboundedReceiver<bytes::Bytes>,
    acked: &BTreeMap<String, QoS>,
    qos2_once: bool,
) {
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let wanted: BTreeSet<&String> = acked.keys().collect();
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        while !wanted.iter().all(|p| seen.contains_key(*p)) {
            let Some(payload) = payloads.recv().await else {
                break;
            };
            *seen
                .entry(String::from_utf8_lossy(&payload).into_owned())
                .or_default() += 1;
        }
    })
    .await;
    let missing: Vec<&&String> = wanted.iter().filter(|p| !seen.contains_key(**p)).collect();
    assert!(
        outcome.is_ok() && missing.is_empty(),
        "{who}: {} of {} acknowledged messages lost after {CYCLES} SIGKILLs, e.g. {:?}",
        missing.len(),
        wanted.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    let twice: Vec<(&String, &u32)> = seen
        .iter()
        .filter(|(p, n)| **n > 1 && acked.get(*p) == Some(&QoS::ExactlyOnce))
        .collect();
    if qos2_once {
        assert!(
            twice.is_empty(),
            "{who}: QoS 2 delivered more than once: {twice:?}"
        );
    }
    let again = seen
        .iter()
        .filter(|(p, n)| **n > 1 && acked.contains_key(*p))
        .count();
    eprintln!(
        "crash test, {who}: {CYCLES} SIGKILL/restart cycles, {} acknowledged messages, all \
         delivered; {again} more than once ({} of them QoS 2)",
        wanted.len(),
        twice.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill_over_tls_and_quic() {
    let data_dir = temp_dir("crash");
    let mut rng = Rng::new(0xC0FFEE);

    // A persistent subscriber makes its session, then goes away.
    let broker = Broker::start(&data_dir);
    let sub_options = |b: &Broker| {
        b.options(Transport::Tls, "crash-sub")
            .persistent_session(Duration::from_secs(3600))
    };
    common::park_subscriber(sub_options(&broker), "crash/#", QoS::ExactlyOnce).await;

    let (broker, acked) = publish_through_crashes(broker, &data_dir, &mut rng, "crash/x").await;

    // The subscriber comes back: every acknowledged message is there, QoS 2 once.
    let (sub, incoming) = Client::connect(sub_options(&broker))
        .await
        .expect("subscriber back");
    assert!(
        sub.session_present(),
        "the persistent session survived {CYCLES} crashes"
    );
    expect_all("offline subscriber", &mut forward(incoming), &acked, true).await;
    sub.disconnect().await.expect("disconnect");
    broker.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_subscribers_get_every_acknowledged_message_once_through_sigkills() {
    // One subscriber per mapping: TLS, QUIC on one stream, QUIC over many streams.
    let data_dir = temp_dir("crash-live");
    let mut rng = Rng::new(0x5EED_0B5E);
    let broker = Broker::start(&data_dir);
    // Online through every crash: each reconnects by itself to the restarted broker and
    // resumes its session (its QoS 2 packet ids awaiting PUBREL included, as a client must).
    let mut subscribers = Vec::new();
    for (transport, streams, id) in [
        (Transport::Tls, StreamMode::Single, "live-tls"),
        (Transport::Quic, StreamMode::Single, "live-quic"),
        (Transport::Quic, StreamMode::Multi, "live-quic-multi"),
    ] {
        let options = broker
            .options(transport, id)
            .streams(streams)
            .persistent_session(Duration::from_secs(3600))
            .reconnect(Some(Reconnect::new(
                Duration::from_millis(20),
                Duration::from_millis(200),
            )));
        let (client, incoming) = Client::connect(options).await.expect("subscriber");
        client
            .subscribe("live/#", QoS::ExactlyOnce)
            .await
            .expect("subscribe");
        // Read while the broker is killed, so deliveries are in flight at each crash.
        subscribers.push((id, client, forward(incoming)));
    }

    let (broker, acked) = publish_through_crashes(broker, &data_dir, &mut rng, "live/x").await;

    for (id, client, mut payloads) in subscribers {
        expect_all(id, &mut payloads, &acked, true).await;
        client.disconnect().await.expect("disconnect");
    }
    broker.kill();
}

/// `mosquitto_sub -c -q 1` as a device would run it: started again whenever it exits (it exits
/// when the broker goes away), same client id, persistent session. Its messages, read as
/// they come, across all its runs.
fn mosquitto_subscriber(
    version: clients::Mqtt,
    ca: PathBuf,
    port: u16,
    id: String,
) -> mpsc::UnboundedReceiver<bytes::Bytes> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Bounded: a broker that never comes back ends the test by its own timeouts.
        for _ in 0..500 {
            let mut cmd = clients::tls_command("mosquitto_sub", &ca, port, version);
            cmd.args([
                "-i",
                &id,
                "-c",
                "-q",
                "1",
                "-t",
                "mosq/#",
                "-F",
                clients::FORMAT,
            ]);
            if version == clients::Mqtt::V5 {
                cmd.args(["-x", "3600"]);
            }
            cmd.stdout(Stdio::piped()).stderr(Stdio::null());
            let Ok(mut child) = cmd.spawn() else { return };
            let Some(stdout) = child.stdout.take() else {
                return;
            };
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(msg) = clients::Msg::parse(&line) {
                    if tx.send(bytes::Bytes::from(msg.payload)).is_err() {
                        return;
                    }
                }
            }
            let _ = child.wait().await;
            // Reconnect backoff, as libmosquitto's own reconnect would wait.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_gets_every_acknowledged_message_through_sigkills() {
    use clients::Mqtt;
    let data_dir = temp_dir("crash-mosquitto");
    let mut rng = Rng::new(0x0B5E_55ED);
    let broker = Broker::start(&data_dir);
    // libmosquitto as the subscriber, v5 and v3.1.1, persistent (-c), started again after
    // each kill: every acknowledged message must reach it. At QoS 1: a new process does not
    // hold the QoS 2 state of the one before (libmosquitto delivers QoS 2 at PUBREL), so
    // exactly-once through a process restart is not the client's to keep; it is checked
    // with clients that keep their session state across connections.
    let mut subscribers = Vec::new();
    for version in [Mqtt::V5, Mqtt::V311] {
        let id = format!("mosq-live-{}", version.tag());
        let messages =
            mosquitto_subscriber(version, broker.ca.clone(), broker.tls.port(), id.clone());
        subscribers.push((id, messages));
    }
    // A retained marker: its arrival means the subscription is in place.
    let (marker, _) = Client::connect(broker.options(Transport::Tls, "marker"))
        .await
        .expect("marker");
    marker
        .publish("mosq/ready", "ready", QoS::AtLeastOnce, true)
        .await
        .expect("marker published");
    marker.disconnect().await.expect("disconnect");
    for (id, payloads) in &mut subscribers {
        loop {
            let payload = tokio::time::timeout(Duration::from_secs(10), payloads.recv())
                .await
                .unwrap_or_else(|_| panic!("{id}: subscribed in time"))
                .expect("subscriber running");
            if payload.as_ref() == b"ready" {
                break;
            }
        }
    }

    let (broker, acked) = publish_through_crashes(broker, &data_dir, &mut rng, "mosq/x").await;

    for (id, payloads) in &mut subscribers {
        // The marker comes again with each run (it subscribes again); it is not counted.
        expect_all(id, payloads, &acked, false).await;
    }
    broker.kill();
}

#[test]
fn a_data_directory_in_use_is_refused_with_its_path() {
    let data_dir = temp_dir("crash-locked");
    let first = Broker::start(&data_dir);
    let second = Broker::command(&data_dir, [0, 0, 0])
        .output()
        .expect("second broker runs");
    first.kill();
    assert!(
        !second.status.success(),
        "a second broker on the same data must not start"
    );
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&data_dir.display().to_string()) && stderr.to_lowercase().contains("lock"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_and_session_expiry_survive_a_restart_and_expired_sessions_do_not() {
    let data_dir = temp_dir("crash-restart");
    let broker = Broker::start(&data_dir);
    let (publisher, _) = Client::connect(broker.options(Transport::Tls, "keeper"))
        .await
        .expect("publisher");
    publisher
        .publish("state/door", "open", QoS::AtLeastOnce, true)
        .await
        .expect("retained publish acknowledged");
    let short = |b: &Broker| {
        b.options(Transport::Tls, "short-lived")
            .persistent_session(Duration::from_secs(1))
    };
    let long = |b: &Broker| {
        b.options(Transport::Quic, "long-lived")
            .persistent_session(Duration::from_secs(3600))
    };
    for options in [short(&broker), long(&broker)] {
        let (c, _) = Client::connect(options).await.expect("persistent client");
        c.subscribe("state/#", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        c.disconnect().await.expect("disconnect");
    }
    broker.kill();
    // Past the short session's expiry while the broker is down.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let broker = Broker::start(&data_dir);
    let (c, _) = Client::connect(short(&broker)).await.expect("reconnect");
    assert!(
        !c.session_present(),
        "an expired session does not come back"
    );
    let (c, mut incoming) = Client::connect(long(&broker)).await.expect("reconnect");
    assert!(c.session_present(), "a live session survives the restart");
    let (fresh, mut fresh_in) = Client::connect(broker.options(Transport::Tls, "newcomer"))
        .await
        .expect("newcomer");
    fresh
        .subscribe("state/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let m = tokio::time::timeout(Duration::from_secs(10), fresh_in.next_message())
        .await
        .expect("in time")
        .expect("retained message");
    assert_eq!(
        (m.topic.as_str(), m.payload.as_ref(), m.retain),
        ("state/door", &b"open"[..], true)
    );
    // The long-lived session's subscription was restored too: a live publish reaches it.
    publisher_again(&broker).await;
    // (The retained copy it got when it subscribed may come first, resent if its PUBACK
    // had not arrived before it left.)
    let topic = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = incoming.next_message().await.expect("message");
            if m.topic.as_str() != "state/door" {
                return m.topic.as_str().to_string();
            }
        }
    })
    .await
    .expect("in time");
    assert_eq!(topic, "state/window");
    broker.kill();
}

async fn publisher_again(broker: &Broker) {
    let (p, _) = Client::connect(broker.options(Transport::Tls, "keeper-2"))
        .await
        .expect("publisher");
    p.publish("state/window", "shut", QoS::AtLeastOnce, false)
        .await
        .expect("published");
}

#[tokio::test]
async fn a_full_store_refuses_new_qos1_publishes_with_quota_exceeded() {
    let broker =
        common::TestBroker::start_with("store-full", &["storage.max_store_bytes=1MiB"]).await;
    // A persistent subscriber goes offline; what is queued for it fills the store.
    let hoarder = broker
        .tls_client("hoarder")
        .persistent_session(Duration::from_secs(600));
    common::park_subscriber(hoarder, "full/#", QoS::AtLeastOnce).await;
    let (publisher, _) = Client::connect(broker.tls_client("pusher"))
        .await
        .expect("publisher");
    let payload = bytes::Bytes::from(vec![7u8; 64 * 1024]);
    let mut accepted = 0;
    let mut refused = None;
    for _ in 0..40 {
        match publisher
            .publish("full/x", payload.clone(), QoS::AtLeastOnce, false)
            .await
        {
            Ok(()) => accepted += 1,
            Err(err) => {
                refused = Some(err);
                break;
            }
        }
    }
    assert!(accepted >= 10, "about 1 MiB is accepted first ({accepted})");
    assert!(
        matches!(
            refused,
            Some(twinmq::client::ClientError::PublishRefused {
                reason: twinmq::protocol::ReasonCode::QuotaExceeded,
                ..
            })
        ),
        "{refused:?}"
    );
}

/// The limit counts writes still waiting for their commit: publishers racing each other
/// into a filling store never take it past `storage.max_store_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_never_take_the_store_past_its_limit() {
    let broker = common::TestBroker::start_with(
        "store-full-race",
        &[
            "storage.max_store_bytes=1MiB",
            // A long window: many publishes wait in the committer's queue at once.
            "storage.group_commit_ms=50",
        ],
    )
    .await;
    let hoarder = broker
        .tls_client("race-hoarder")
        .persistent_session(Duration::from_secs(600));
    common::park_subscriber(hoarder, "race/#", QoS::AtLeastOnce).await;
    let mut publishers = tokio::task::JoinSet::new();
    for p in 0..8 {
        let (publisher, _) = Client::connect(broker.tls_client(&format!("racer-{p}")))
            .await
            .expect("publisher");
        publishers.spawn(async move {
            let payload = bytes::Bytes::from(vec![p as u8; 64 * 1024]);
            let mut accepted = 0u32;
            for _ in 0..40 {
                match publisher
                    .publish("race/x", payload.clone(), QoS::AtLeastOnce, false)
                    .await
                {
                    Ok(()) => accepted += 1,
                    Err(_) => break,
                }
            }
            accepted
        });
    }
    let mut accepted = 0;
    while let Some(n) = publishers.join_next().await {
        accepted += n.expect("publisher task");
    }
    let usage = broker.server.broker.store_usage().expect("a store");
    assert!(accepted >= 10, "about 1 MiB is accepted ({accepted})");
    assert!(
        usage <= 1 << 20,
        "{accepted} accepted, the store holds {usage} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_v311_publishes_by_closing_without_an_ack() {
    use common::{connect, pid, publish_packet, RawClient};
    use twinmq::protocol::{Packet, ProtocolVersion, QosPid};
    let broker =
        common::TestBroker::start_with("store-full-v3", &["storage.max_store_bytes=1MiB"]).await;
    let hoarder = broker
        .tls_client("v3-hoarder")
        .persistent_session(Duration::from_secs(600));
    common::park_subscriber(hoarder, "full3/#", QoS::AtLeastOnce).await;

    let mut publisher = RawClient::connect(broker.tcp, ProtocolVersion::V311).await;
    assert!(matches!(
        publisher
            .handshake(connect(ProtocolVersion::V311, "v3-pusher", true, 30))
            .await,
        Packet::ConnAck(_)
    ));
    let payload = bytes::Bytes::from(vec![3u8; 64 * 1024]);
    let mut acked = 0u16;
    for n in 1..=40u16 {
        let packet = publish_packet(
            "full3/x",
            QosPid::AtLeastOnce(pid(n)),
            payload.clone(),
            false,
        );
        publisher.send(&packet).await;
        match publisher.recv().await {
            Some(Packet::PubAck(a)) if a.packet_id == pid(n) => acked += 1,
            // v3.1.1 cannot be told "quota exceeded": a PUBACK would claim the message was
            // taken, so the broker closes and the client keeps it for its next connection.
            None => break,
            other => panic!("expected PUBACK or a close, got {other:?}"),
        }
    }
    assert!(
        (10..40).contains(&acked),
        "about 1 MiB acknowledged, then a close ({acked})"
    );
}

/// A v3.1.1 QoS 2 publish the full store refused (by closing) was not routed, so its
/// packet id is not taken: resent with DUP once there is room, it is routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v311_qos2_publish_refused_by_a_full_store_is_routed_when_resent() {
    use common::{connect, pid, publish_packet, RawClient};
    use twinmq::protocol::{Ack, Packet, ProtocolVersion, QosPid};
    const LIMIT: u64 = 1 << 20;
    let broker =
        common::TestBroker::start_with("store-full-v3q2", &["storage.max_store_bytes=1MiB"]).await;
    let hoarder = || {
        broker
            .tls_client("v3q2-hoarder")
            .persistent_session(Duration::from_secs(600))
    };
    common::park_subscriber(hoarder(), "full4/#", QoS::AtLeastOnce).await;

    let v3 = ProtocolVersion::V311;
    let session = connect(v3, "v3q2-pusher", false, 30);
    let mut publisher = RawClient::connect(broker.tcp, v3).await;
    assert!(matches!(
        publisher.handshake(session.clone()).await,
        Packet::ConnAck(_)
    ));
    let message = |n: u16| {
        let mut payload = format!("{n:02}:").into_bytes();
        payload.resize(64 * 1024, b'.');
        publish_packet("full4/x", QosPid::ExactlyOnce(pid(n)), payload, false)
    };
    let mut refused = None;
    for n in 1..=40u16 {
        publisher.send(&message(n)).await;
        match publisher.recv().await {
            Some(Packet::PubRec(a)) if a.packet_id == pid(n) => {
                publisher.send(&Packet::PubRel(Ack::new(pid(n)))).await;
                assert!(matches!(publisher.recv().await, Some(Packet::PubComp(_))));
            }
            None => {
                refused = Some(n);
                break;
            }
            other => panic!("expected PUBREC or a close, got {other:?}"),
        }
    }
    let refused = refused.expect("the store filled up");

    // The hoarder takes what it was queued; the finished rows leave the store.
    let (sub, incoming) = Client::connect(hoarder()).await.expect("hoarder back");
    let mut payloads = forward(incoming);
    for n in 1..refused {
        let payload = tokio::time::timeout(Duration::from_secs(10), payloads.recv())
            .await
            .expect("delivery in time")
            .expect("message");
        assert_eq!(&payload[..3], format!("{n:02}:").as_bytes());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while broker.server.broker.store_usage().expect("a store") > LIMIT / 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the delivered rows never left the store"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The client sends the refused message again, as MQTT 3.1.1 has it do.
    let mut publisher = RawClient::connect(broker.tcp, v3).await;
    assert!(matches!(
        publisher.handshake(session).await,
        Packet::ConnAck(c) if c.session_present
    ));
    let Packet::Publish(mut resend) = message(refused) else {
        unreachable!("a publish")
    };
    resend.dup = true;
    publisher.send(&Packet::Publish(resend)).await;
    assert!(
        matches!(publisher.recv().await, Some(Packet::PubRec(a)) if a.packet_id == pid(refused))
    );
    publisher
        .send(&Packet::PubRel(Ack::new(pid(refused))))
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubComp(_))));
    let payload = tokio::time::timeout(Duration::from_secs(10), payloads.recv())
        .await
        .expect("the resent message is routed")
        .expect("message");
    assert_eq!(&payload[..3], format!("{refused:02}:").as_bytes());
    sub.disconnect().await.expect("disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_with_drop_oldest_keeps_the_newest_messages_and_counts_the_drops() {
    let broker = common::TestBroker::start_with(
        "store-drop-oldest",
        &[
            "storage.max_store_bytes=1MiB",
            "storage.full_policy=drop_oldest",
        ],
    )
    .await;
    let sub_options = || {
        broker
            .tls_client("keeper")
            .persistent_session(Duration::from_secs(600))
    };
    common::park_subscriber(sub_options(), "drop/#", QoS::AtLeastOnce).await;

    // 40 x 64 KiB for an offline session, in a 1 MiB store: every publish is accepted.
    let (publisher, _) = Client::connect(broker.tls_client("flood"))
        .await
        .expect("publisher");
    const N: usize = 40;
    for n in 0..N {
        let mut payload = format!("{n:02}:").into_bytes();
        payload.resize(64 * 1024, b'.');
        publisher
            .publish("drop/x", payload, QoS::AtLeastOnce, false)
            .await
            .unwrap_or_else(|err| panic!("publish {n} accepted: {err}"));
    }
    let usage = broker
        .server
        .broker
        .store_usage()
        .expect("the broker has a store");
    // Each publish's writes are checked against the limit before they are made.
    assert!(
        usage <= 1 << 20,
        "the store stays within its limit: {usage} bytes"
    );
    let dropped = twinmq::broker::Stats::get(&broker.server.broker.stats.messages_dropped);
    assert!(dropped > 0, "drops are counted in $SYS");
    // Operators see the store's size in $SYS too (retained, refreshed every sys.interval).
    broker.server.broker.publish_sys(std::time::Instant::now());
    let (watcher, sys) = Client::connect(broker.tls_client("watcher"))
        .await
        .expect("watcher");
    watcher
        .subscribe("$SYS/broker/store/bytes", QoS::AtMostOnce)
        .await
        .expect("subscribe");
    let reported = tokio::time::timeout(Duration::from_secs(10), forward(sys).recv())
        .await
        .expect("retained $SYS message in time")
        .expect("message");
    assert_eq!(
        std::str::from_utf8(&reported).expect("text"),
        usage.to_string()
    );

    // The subscriber gets the newest messages, in order, up to the last one published.
    let (sub, incoming) = Client::connect(sub_options()).await.expect("back");
    assert!(sub.session_present());
    let mut payloads = forward(incoming);
    let mut got = Vec::new();
    while got.last() != Some(&(N - 1)) {
        let payload = tokio::time::timeout(Duration::from_secs(10), payloads.recv())
            .await
            .expect("delivery in time")
            .expect("message");
        let n: usize = std::str::from_utf8(&payload[..2])
            .expect("index")
            .parse()
            .expect("index");
        got.push(n);
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    assert!(got[0] > 0, "the oldest were dropped: {got:?}");
    assert_eq!(
        (N - got.len()) as u64,
        dropped,
        "every message not delivered is a counted drop"
    );
    sub.disconnect().await.expect("disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_is_delivered_exactly_once_across_a_restart_between_pubrec_and_pubrel() {
    use common::{connect, pid, publish_packet, RawClient};
    use twinmq::protocol::{Ack, Packet, ProtocolVersion, QosPid, ReasonCode};
    const V5: ProtocolVersion = ProtocolVersion::V5;
    let data_dir = temp_dir("crash-pubrel");
    let broker = Broker::start(&data_dir);
    let sub_options = |b: &Broker| {
        b.options(Transport::Tls, "once-sub")
            .persistent_session(Duration::from_secs(3600))
    };
    common::park_subscriber(sub_options(&broker), "once/#", QoS::ExactlyOnce).await;

    // PUBLISH, PUBREC ... and the broker dies before the PUBREL.
    let mut publisher = RawClient::connect(broker.tcp, V5).await;
    let mut c = connect(V5, "once-pub", false, 30);
    c.properties.session_expiry_interval = Some(3600);
    assert!(matches!(
        publisher.handshake(c.clone()).await,
        Packet::ConnAck(_)
    ));
    publisher
        .send(&publish_packet(
            "once/x",
            QosPid::ExactlyOnce(pid(1)),
            "exactly once",
            false,
        ))
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubRec(a)) if a.packet_id == pid(1)));
    broker.kill();

    // After the restart the publisher resumes and releases: the flow completes.
    let broker = Broker::start(&data_dir);
    let mut publisher = RawClient::connect(broker.tcp, V5).await;
    assert!(matches!(publisher.handshake(c).await, Packet::ConnAck(_)));
    publisher.send(&Packet::PubRel(Ack::new(pid(1)))).await;
    match publisher.recv().await {
        Some(Packet::PubComp(a)) => {
            assert_eq!(a.packet_id, pid(1));
            // The id awaiting PUBREL was stored with the message.
            assert_eq!(a.reason, ReasonCode::Success);
        }
        other => panic!("expected PUBCOMP, got {other:?}"),
    }

    // The subscriber gets the message once.
    let (sub, mut incoming) = Client::connect(sub_options(&broker))
        .await
        .expect("subscriber back");
    let first = tokio::time::timeout(Duration::from_secs(10), incoming.next_message())
        .await
        .expect("in time")
        .expect("message");
    assert_eq!(first.payload.as_ref(), b"exactly once");
    sub.publish("once/sentinel", "end", QoS::AtLeastOnce, false)
        .await
        .expect("sentinel");
    let next = tokio::time::timeout(Duration::from_secs(10), incoming.next_message())
        .await
        .expect("in time")
        .expect("message");
    assert_eq!(
        next.topic.as_str(),
        "once/sentinel",
        "no second copy before the sentinel"
    );
    broker.kill();
}

/// Sends a PUBLISH and waits for its acknowledgement (PUBACK; PUBREC for QoS 2).
async fn publish_acked(
    client: &mut common::RawClient,
    topic: &str,
    payload: &str,
    qos_pid: twinmq::protocol::QosPid,
    retain: bool,
) {
    use twinmq::protocol::Packet;
    let packet = common::publish_packet(topic, qos_pid, payload.to_string(), retain);
    client.send(&packet).await;
    match client.recv().await {
        Some(Packet::PubAck(a) | Packet::PubRec(a)) if Some(a.packet_id) == qos_pid.packet_id() => {
        }
        other => panic!("expected the ack of {payload:?}, got {other:?}"),
    }
}

/// PUBLISH at QoS 2 and complete the flow.
async fn publish_qos2(client: &mut common::RawClient, topic: &str, payload: &str, id: u16) {
    use common::pid;
    use twinmq::protocol::{Ack, Packet, QosPid};
    publish_acked(client, topic, payload, QosPid::ExactlyOnce(pid(id)), false).await;
    client.send(&Packet::PubRel(Ack::new(pid(id)))).await;
    assert!(matches!(client.recv().await, Some(Packet::PubComp(a)) if a.packet_id == pid(id)));
}

/// The next packet must be a PUBLISH of `payload`; returns it.
async fn expect_publish(
    client: &mut common::RawClient,
    payload: &str,
) -> twinmq::protocol::Publish {
    use twinmq::protocol::Packet;
    match client.recv().await {
        Some(Packet::Publish(p)) if p.payload.as_ref() == payload.as_bytes() => p,
        other => panic!("expected PUBLISH {payload:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_subscriber_resumes_every_flow_where_it_was_after_sigkill() {
    use common::{connect, pid, publish_packet, subscribe_packet, RawClient};
    use twinmq::protocol::{Ack, Packet, PacketId, ProtocolVersion, QosPid, ReasonCode};
    const V5: ProtocolVersion = ProtocolVersion::V5;
    let data_dir = temp_dir("crash-online");
    let broker = Broker::start(&data_dir);
    let persistent = |id: &str| {
        let mut c = connect(V5, id, true, 60);
        c.properties.session_expiry_interval = Some(3600);
        c
    };

    // The subscriber subscribes and stays online until the crash: its session is stored
    // as it is made, not only when it leaves.
    let mut sub = RawClient::connect(broker.tcp, V5).await;
    assert!(matches!(
        sub.handshake(persistent("online-sub")).await,
        Packet::ConnAck(_)
    ));
    sub.send(&subscribe_packet("online/#", QoS::ExactlyOnce, 1))
        .await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let mut publisher = RawClient::connect(broker.tcp, V5).await;
    assert!(matches!(
        publisher.handshake(persistent("online-pub")).await,
        Packet::ConnAck(_)
    ));

    publish_qos2(&mut publisher, "online/a", "m1", 1).await;
    publish_qos2(&mut publisher, "online/a", "m2", 2).await;
    publish_acked(
        &mut publisher,
        "online/a",
        "m3",
        QosPid::AtLeastOnce(pid(3)),
        false,
    )
    .await;

    // The subscriber leaves m1 unanswered, takes m2 up to its PUBREL, and acknowledges m3.
    let m1 = expect_publish(&mut sub, "m1").await;
    let m2 = expect_publish(&mut sub, "m2").await;
    let m3 = expect_publish(&mut sub, "m3").await;
    let id = |p: &twinmq::protocol::Publish| p.qos_pid.packet_id().expect("QoS > 0");
    sub.send(&Packet::PubRec(Ack::new(id(&m2)))).await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(a)) if a.packet_id == id(&m2)));
    sub.send(&Packet::PubAck(Ack::new(id(&m3)))).await;
    // A stored write of its own, behind the PUBACK on the same connection: once it is
    // acknowledged, the end of m3's flow is on disk too (batches commit in order).
    publish_acked(
        &mut sub,
        "barrier/online",
        "b",
        QosPid::AtLeastOnce(pid(9)),
        true,
    )
    .await;

    // m4: the broker has taken it (PUBREC) and sent it on when it dies, before the PUBREL.
    publish_acked(
        &mut publisher,
        "online/a",
        "m4",
        QosPid::ExactlyOnce(pid(4)),
        false,
    )
    .await;
    let m4 = expect_publish(&mut sub, "m4").await;
    broker.kill();

    let broker = Broker::start(&data_dir);
    let mut resumed = persistent("online-sub");
    resumed.clean_start = false;
    let mut sub = RawClient::connect(broker.tcp, V5).await;
    match sub.handshake(resumed).await {
        Packet::ConnAck(c) => assert!(c.session_present, "the online session was stored"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // The publisher did not see m4's PUBREC and sends it again: taken already, so
    // acknowledged and not routed a second time [MQTT-4.3.3-9].
    let mut again = persistent("online-pub");
    again.clean_start = false;
    let mut publisher = RawClient::connect(broker.tcp, V5).await;
    assert!(matches!(
        publisher.handshake(again).await,
        Packet::ConnAck(_)
    ));
    let mut dup = publish_packet("online/a", QosPid::ExactlyOnce(pid(4)), "m4", false);
    if let Packet::Publish(p) = &mut dup {
        p.dup = true;
    }
    publisher.send(&dup).await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubRec(a)) if a.packet_id == pid(4)));
    publisher.send(&Packet::PubRel(Ack::new(pid(4)))).await;
    assert!(matches!(publisher.recv().await,
        Some(Packet::PubComp(a)) if a.packet_id == pid(4) && a.reason == ReasonCode::Success));
    publish_acked(
        &mut publisher,
        "online/end",
        "end",
        QosPid::AtLeastOnce(pid(5)),
        false,
    )
    .await;

    // Everything up to the sentinel: each flow resumes where the subscriber left it.
    let mut publishes: Vec<(String, bool, Option<PacketId>)> = Vec::new();
    let mut pubrels = Vec::new();
    loop {
        match sub.recv().await {
            Some(Packet::Publish(p)) if p.topic.as_str() == "online/end" => break,
            Some(Packet::Publish(p)) => publishes.push((
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.dup,
                p.qos_pid.packet_id(),
            )),
            Some(Packet::PubRel(a)) => pubrels.push(a.packet_id),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        publishes,
        vec![
            ("m1".to_string(), true, Some(id(&m1))),
            ("m4".to_string(), true, Some(id(&m4))),
        ],
        "m1 and m4 again under their ids (the client dedups them), m3 not at all"
    );
    assert_eq!(pubrels, vec![id(&m2)], "m2 resumes at its PUBREL");

    // And the flows finish.
    sub.send(&Packet::PubRec(Ack::new(id(&m1)))).await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(a)) if a.packet_id == id(&m1)));
    sub.send(&Packet::PubComp(Ack::new(id(&m1)))).await;
    sub.send(&Packet::PubComp(Ack::new(id(&m2)))).await;
    broker.kill();
}
