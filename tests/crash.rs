//! Nothing acknowledged is lost across a crash: the real `twinmq` binary is killed with
//! SIGKILL at seeded random moments while publishers send QoS 1 and QoS 2 messages (over
//! TLS and over QUIC) to a persistent subscriber that is offline, then restarted on the same
//! data directory. Every message whose PUBACK/PUBCOMP a publisher received must reach the
//! subscriber; QoS 2 messages at most once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::temp_dir;
use twinmq::client::{Client, ClientOptions, Transport};
use twinmq::fault::schedule::Rng;
use twinmq::protocol::QoS;

struct Broker {
    child: Child,
    tls: SocketAddr,
    quic: SocketAddr,
    ca: PathBuf,
}

impl Broker {
    /// Starts `twinmq serve` on ephemeral ports and reads its addresses from stdout.
    fn start(data_dir: &Path) -> Broker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_twinmq"))
            .arg("serve")
            .args(["--set", &format!("data_dir={}", data_dir.display())])
            .args(["--set", "listeners.tcp.bind=127.0.0.1:0"])
            .args(["--set", "listeners.tls.bind=127.0.0.1:0"])
            .args(["--set", "listeners.quic.bind=127.0.0.1:0"])
            .args(["--set", "log.level=warn"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("twinmq serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut tls = None;
        let mut quic = None;
        let mut ca = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("stdout line");
            if let Some(addr) = line.strip_prefix("twinmq: MQTT over TLS on ") {
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
        Broker {
            child,
            tls: tls.expect("TLS address printed"),
            quic: quic.expect("QUIC address printed"),
            ca: ca.expect("CA printed"),
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
            .keep_alive(Duration::from_secs(1))
    }

    fn kill(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

const CYCLES: u64 = 4;

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
    let (sub, _) = Client::connect(sub_options(&broker))
        .await
        .expect("subscriber");
    sub.subscribe("crash/#", QoS::ExactlyOnce)
        .await
        .expect("subscribe");
    sub.disconnect().await.expect("disconnect");

    let mut broker = broker;
    let mut acked: BTreeMap<String, QoS> = BTreeMap::new();
    let mut sent = 0u64;
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
                match publisher
                    .publish("crash/x", payload.clone(), qos, false)
                    .await
                {
                    Ok(()) => acked.push((payload, qos)),
                    Err(_) => break,
                }
            }
            acked
        });
        tokio::time::sleep(kill_after).await;
        broker.kill();
        let got = tokio::time::timeout(Duration::from_secs(30), publishing)
            .await
            .expect("the publisher notices the crash")
            .expect("publisher task");
        sent += got.len() as u64;
        acked.extend(got);
        broker = Broker::start(&data_dir);
    }
    assert!(
        sent > 0,
        "publishers got acknowledgements before the crashes"
    );

    // The subscriber comes back: every acknowledged message is there, QoS 2 once.
    let (sub, mut incoming) = Client::connect(sub_options(&broker))
        .await
        .expect("subscriber back");
    assert!(
        sub.session_present(),
        "the persistent session survived {CYCLES} crashes"
    );
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let wanted: BTreeSet<&String> = acked.keys().collect();
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        while !wanted.iter().all(|p| seen.contains_key(*p)) {
            let Some(m) = incoming.next_message().await else {
                break;
            };
            *seen
                .entry(String::from_utf8_lossy(&m.payload).into_owned())
                .or_default() += 1;
        }
    })
    .await;
    let missing: Vec<&&String> = wanted.iter().filter(|p| !seen.contains_key(**p)).collect();
    assert!(
        outcome.is_ok() && missing.is_empty(),
        "{} of {} acknowledged messages lost after {CYCLES} SIGKILLs, e.g. {:?}",
        missing.len(),
        wanted.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    let twice: Vec<(&String, &u32)> = seen
        .iter()
        .filter(|(p, n)| **n > 1 && acked.get(*p) == Some(&QoS::ExactlyOnce))
        .collect();
    assert!(
        twice.is_empty(),
        "QoS 2 delivered more than once: {twice:?}"
    );
    eprintln!(
        "crash test: {CYCLES} SIGKILL/restart cycles, {} acknowledged messages, all delivered",
        wanted.len()
    );
    sub.disconnect().await.expect("disconnect");
    broker.kill();
}
