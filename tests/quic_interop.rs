//! MQTT over QUIC with a QUIC stack twinmq did not write: `tests/interop/aioquic_mqtt.py`,
//! an MQTT client on Python's aioquic that encodes its packets by hand, talks to the
//! broker over real loopback UDP with ALPN `mqtt`, verifies the server certificate against
//! the test's CA, and uses one bidirectional stream (the EMQX single-stream convention).
//!
//! The script runs under the Python of the venv that `.ci/run` creates: `TWINMQ_PYTHON`,
//! else `target/pyenv/bin/python`. Without aioquic there the tests fail and say so; they
//! never pass by skipping.
//!
//! No sleep synchronises anything: the script prints `{"event": "subscribed"}` once its
//! SUBACK is in, and every wait is bounded by `common::WAIT` and the script's `--timeout`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use twinmq::protocol::{
    Ack, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, QosPid, Subscribe,
    SubscriptionOptions, TopicFilter, TopicName,
};

use common::{connect, RawClient, TestBroker, WAIT};

#[tokio::test]
async fn aioquic_client_round_trips_qos1_over_mqtt_311() {
    aioquic_round_trip(4).await;
}

#[tokio::test]
async fn aioquic_client_round_trips_qos1_over_mqtt_5() {
    aioquic_round_trip(5).await;
}

/// Both directions across stacks: what the aioquic client publishes over QUIC reaches a
/// subscriber over TCP, and what the TCP client publishes reaches the aioquic client.
#[tokio::test]
async fn aioquic_and_tcp_clients_exchange_messages() {
    let broker = TestBroker::start("interop-cross").await;
    let v5 = ProtocolVersion::V5;
    let mut tcp = RawClient::connect(broker.tcp, v5).await;
    assert!(matches!(
        tcp.handshake(connect(v5, "tcp-side", true, 30)).await,
        Packet::ConnAck(_)
    ));
    tcp.send(&subscribe("cross/#", QoS::AtLeastOnce)).await;
    assert!(matches!(tcp.recv().await, Some(Packet::SubAck(_))));

    let mut script = Script::spawn(
        &broker,
        &[
            "--version",
            "5",
            "--client-id",
            "aioquic-cross",
            "--filter",
            "cross/#",
            "--topic",
            "cross/from-quic",
            "--payload",
            "over aioquic",
            // Its own echo and the TCP client's message.
            "--expect",
            "2",
        ],
    );
    assert_eq!(script.next_line().await, SUBSCRIBED);

    // The aioquic client's publish, delivered to the TCP subscriber.
    let from_quic = tcp_receive(&mut tcp).await;
    assert_eq!(from_quic.topic.as_str(), "cross/from-quic");
    assert_eq!(from_quic.payload.as_ref(), b"over aioquic");

    tcp.send(&Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::AtLeastOnce(pid(7)),
        retain: false,
        topic: TopicName::new("cross/from-tcp").expect("topic"),
        payload: "over tcp".into(),
        properties: Properties::default(),
    }))
    .await;
    // The broker's PUBACK and the echo of our own publish (we subscribed to cross/#).
    let mut acked = false;
    let mut echoed = false;
    while !(acked && echoed) {
        match tcp.recv().await.expect("connection open") {
            Packet::PubAck(a) if a.packet_id == pid(7) => acked = true,
            Packet::Publish(p) => {
                assert_eq!(p.topic.as_str(), "cross/from-tcp");
                ack(&mut tcp, &p).await;
                echoed = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    assert_eq!(
        script.finish().await,
        done_line(
            5,
            &[
                ("cross/from-quic", "over aioquic"),
                ("cross/from-tcp", "over tcp")
            ]
        )
    );
}

/// The independent stack sees the same ALPN refusal as quinn clients: the server closes
/// the handshake with TLS alert 120 (no_application_protocol), the script says so and exits
/// non-zero.
#[tokio::test]
async fn aioquic_client_offering_another_alpn_is_refused() {
    let broker = TestBroker::start("interop-alpn").await;
    let script = Script::spawn(&broker, &["--alpn", "not-mqtt", "--timeout", "5"]);
    let output = script.output().await;
    assert!(
        !output.status.success(),
        "the script must fail; stdout: {}",
        output.stdout
    );
    assert!(
        output
            .stderr
            .contains("aioquic_mqtt: connection failed: closed with TLS alert 120"),
        "{}",
        output.stderr
    );
}

/// CONNECT, SUBSCRIBE to its own topic, PUBLISH QoS 1: the broker acks it and echoes it
/// back over the same stream, then finishes the stream after DISCONNECT.
async fn aioquic_round_trip(level: u8) {
    let broker = TestBroker::start(&format!("interop-v{level}")).await;
    let mut script = Script::spawn(
        &broker,
        &[
            "--version",
            &level.to_string(),
            "--client-id",
            &format!("aioquic-v{level}"),
            "--topic",
            "interop/echo",
            "--payload",
            "ping over aioquic",
        ],
    );
    assert_eq!(script.next_line().await, SUBSCRIBED);
    assert_eq!(
        script.finish().await,
        done_line(level, &[("interop/echo", "ping over aioquic")])
    );
}

/// What the script prints once its SUBACK is in.
const SUBSCRIBED: &str = r#"{"event": "subscribed"}"#;

/// The script's exact final report (Python's `json.dumps(sort_keys=True)`) for a session
/// at protocol `level` that was accepted, granted QoS 1, got its PUBLISH (packet id 2)
/// acked, received `messages` (topic, payload; sorted) at QoS 1, and saw the broker
/// finish the stream after its DISCONNECT.
fn done_line(level: u8, messages: &[(&str, &str)]) -> String {
    let received: Vec<String> = messages
        .iter()
        .map(|(topic, payload)| {
            format!(r#"{{"payload": "{payload}", "qos": 1, "topic": "{topic}"}}"#)
        })
        .collect();
    format!(
        concat!(
            r#"{{"alpn": "mqtt", "connack": {{"code": 0, "session_present": false}}, "#,
            r#""event": "done", "puback": {{"code": 0, "packet_id": 2}}, "#,
            r#""received": [{}], "stream_finished_by_broker": true, "#,
            r#""suback": [1], "version": {}}}"#
        ),
        received.join(", "),
        level
    )
}

/// The Python that runs the script, checked to have aioquic.
fn python() -> PathBuf {
    let python = match std::env::var_os("TWINMQ_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python"),
    };
    let has_aioquic = std::process::Command::new(&python)
        .args(["-c", "import aioquic"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        has_aioquic,
        "{} cannot import aioquic: run .ci/run (it creates target/pyenv with aioquic), \
         or point TWINMQ_PYTHON at a Python that has it",
        python.display()
    );
    python
}

/// The aioquic script as a child process (killed if the test fails first).
struct Script {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// What a finished script printed.
struct Output {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

impl Script {
    fn spawn(broker: &TestBroker, args: &[&str]) -> Script {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/aioquic_mqtt.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(["--port", &broker.quic.port().to_string()])
            .args(["--host", &broker.quic.ip().to_string()])
            .arg("--cafile")
            .arg(&broker.ca)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the aioquic script");
        let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        Script { child, stdout }
    }

    /// The next line the script prints; fails with its stderr if it exits instead.
    async fn next_line(&mut self) -> String {
        let line = tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .expect("the script reports in time")
            .expect("read the script's stdout");
        match line {
            Some(line) => line,
            None => {
                let output = self.wait().await;
                panic!(
                    "the script ended early ({}): {}",
                    output.status, output.stderr
                );
            }
        }
    }

    /// The final report; the script must exit 0 after it.
    async fn finish(mut self) -> String {
        let done = self.next_line().await;
        let output = self.wait().await;
        assert!(
            output.status.success(),
            "{}: {}",
            output.status,
            output.stderr
        );
        done
    }

    /// Runs the script to its end and collects what it printed.
    async fn output(mut self) -> Output {
        let mut stdout = Vec::new();
        while let Some(line) = tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .expect("the script ends in time")
            .expect("read the script's stdout")
        {
            stdout.push(line);
        }
        let mut output = self.wait().await;
        output.stdout = stdout.join("\n");
        output
    }

    async fn wait(&mut self) -> Output {
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            tokio::time::timeout(WAIT, pipe.read_to_string(&mut stderr))
                .await
                .expect("the script ends in time")
                .expect("read the script's stderr");
        }
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the script exits in time")
            .expect("wait for the script");
        Output {
            status,
            stdout: String::new(),
            stderr,
        }
    }
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero")
}

fn subscribe(filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: vec![(
            TopicFilter::new(filter).expect("filter"),
            SubscriptionOptions::qos(qos),
        )],
        properties: Properties::default(),
    })
}

/// The next PUBLISH on `tcp`, acknowledged.
async fn tcp_receive(tcp: &mut RawClient) -> Publish {
    match tcp.recv().await.expect("connection open") {
        Packet::Publish(p) => {
            ack(tcp, &p).await;
            p
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

async fn ack(tcp: &mut RawClient, p: &Publish) {
    if let Some(id) = p.qos_pid.packet_id() {
        tcp.send(&Packet::PubAck(Ack::new(id))).await;
    }
}
