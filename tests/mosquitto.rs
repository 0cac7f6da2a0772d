//! Interoperability with clients we did not write: `mosquitto_pub` and `mosquitto_sub`
//! (Debian `mosquitto-clients` 2.x, installed by `.ci/run`) over TLS with `--cafile`, each
//! scenario under MQTT 3.1.1 and 5.0 (`scenario::v311`, `scenario::v5`).
//!
//! Every test starts its own broker on ephemeral ports, so the tests run concurrently. No
//! sleep is used to synchronise:
//! - a subscriber is known to be subscribed when it prints the retained `ready` marker (see
//!   `Mosq::mark_ready`), or when `-E` makes it exit after its SUBACK;
//! - a negative check ("X did not arrive") publishes a sentinel after X would have been sent
//!   and reads everything up to the sentinel.
//!
//! Every wait is bounded by `common::WAIT` and by mosquitto's own `-W`.

#[path = "mosquitto/clients.rs"]
mod clients;
mod common;

use std::path::Path;

use tokio::process::Command;
use twinmq::protocol::{Packet, ProtocolVersion};

use clients::{run, tls_command, within, words, Mosq, Mqtt, Msg, Sub, FORMAT, READY};
use common::{connect, temp_dir, RawClient};

/// Declares `mod $name { v311, v5 }`, each test running `$name(version)`.
macro_rules! both_versions {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::Mqtt;

            #[tokio::test]
            async fn v311() {
                super::$name(Mqtt::V311).await
            }

            #[tokio::test]
            async fn v5() {
                super::$name(Mqtt::V5).await
            }
        }
    )*};
}

both_versions!(
    qos_round_trip,
    retained_set_replace_clear,
    will_on_abrupt_close_only,
    persistent_session_queues_offline_messages,
    takeover_keeps_the_newest_connection,
    wildcards_and_sys_topics,
    wrong_ca_is_refused,
    large_payloads_up_to_the_packet_limit,
);

/// QoS 0, 1 and 2 publishes reach a QoS 2 subscriber at their own QoS and a QoS 1
/// subscriber at most at QoS 1 [MQTT-3.8.4-6], topic and payload intact.
async fn qos_round_trip(v: Mqtt) {
    let m = Mosq::start("qos", v).await;
    m.mark_ready().await;
    let sub = |label, qos| {
        // -C: the marker and the three messages, then a normal exit.
        let args = format!("-q {qos} -t qos/# -t {READY} -C 4 -W 10 -F");
        m.sub(label, &[words(&args).as_slice(), &[FORMAT]].concat())
    };
    let mut at2 = sub("sub-q2", 2);
    let mut at1 = sub("sub-q1", 1);
    at2.wait_ready().await;
    at1.wait_ready().await;

    let payload = |q: u8| format!("payload at qos {q} over v{}", v.tag());
    for q in 0..=2u8 {
        let (qos, topic) = (q.to_string(), format!("qos/q{q}"));
        m.publish(&["-q", &qos, "-t", &topic, "-m", &payload(q)])
            .await;
    }

    for (mut sub, cap) in [(at2, 2), (at1, 1)] {
        // Publishes from different connections have no order between them: compare sorted.
        let mut got = sub.msgs_until(|m| m.len() == 3).await;
        got.sort();
        let expect: Vec<Msg> = (0..=2u8)
            .map(|q| Msg::new(&format!("qos/q{q}"), q.min(cap), false, &payload(q)))
            .collect();
        assert_eq!(got, expect, "subscriber at QoS {cap}");
        let done = sub.finish().await;
        assert!(done.status.success(), "-C exits cleanly: {done:?}");
    }
}

/// A retained message reaches later subscribers with the retained flag, a live one without
/// it, a newer one replaces it, and an empty retained payload clears it.
async fn retained_set_replace_clear(v: Mqtt) {
    let m = Mosq::start("retained", v).await;
    for value in ["first value", "kept value"] {
        m.publish(&["-r", "-q", "1", "-t", "ret/a", "-m", value])
            .await;
    }

    // A later subscriber gets the latest value, flagged retained, at min(pub, sub) QoS.
    let mut later = m.sub(
        "later",
        &[&words("-q 1 -t ret/# -C 1 -W 10 -F")[..], &[FORMAT]].concat(),
    );
    let kept = Msg::new("ret/a", 1, true, "kept value");
    assert_eq!(later.next_msg().await, kept);
    assert!(later.finish().await.status.success());

    // --retained-only prints retained messages and exits at the first live one.
    let mut only = m.sub(
        "retained-only",
        &[&words("--retained-only -t ret/# -W 10 -F")[..], &[FORMAT]].concat(),
    );
    let kept = Msg::new("ret/a", 0, true, "kept value");
    assert_eq!(only.next_msg().await, kept);

    // While subscribed, a retained publish arrives as a live message: retain flag clear
    // [MQTT-3.3.1-9] (v5: retain-as-published is off by default).
    m.mark_ready().await;
    let mut live = m.sub("live", &["-t", "ret/#", "-t", READY, "-F", FORMAT]);
    assert_eq!(live.next_msg().await, kept);
    live.wait_ready().await;
    m.publish(&["-r", "-t", "ret/b", "-m", "second topic"])
        .await;
    let second = Msg::new("ret/b", 0, false, "second topic");
    assert_eq!(live.next_msg().await, second);

    // The live ret/b ended --retained-only after exactly one retained message.
    let done = only.finish().await;
    assert!(done.status.success(), "{done:?}");
    assert_eq!(
        done.stdout, "",
        "--retained-only printed nothing after ret/a"
    );

    // An empty retained payload clears ret/a; current subscribers get it as a normal, empty
    // message [MQTT-3.3.1-10].
    m.publish(&words("-r -q 1 -t ret/a -n")).await;
    assert_eq!(live.next_msg().await, Msg::new("ret/a", 0, false, ""));

    // A new subscriber gets ret/b and the marker but not ret/a. Bounded negative check:
    // retained messages are sent as the subscription is made, so they all precede the live
    // sentinel published once the marker has arrived.
    let mut fresh = m.sub("fresh", &["-t", "ret/#", "-t", READY, "-F", FORMAT]);
    let (mut retained, _) = fresh.msgs_until_topic(READY).await;
    m.publish(&words("-q 1 -t ret/zz -m sentinel")).await;
    let (after, _) = fresh.msgs_until_topic("ret/zz").await;
    retained.extend(after);
    assert_eq!(retained, [Msg::new("ret/b", 0, true, "second topic")]);
}

/// A client killed without DISCONNECT has its will published (at its QoS, and retained
/// when asked); a client that disconnects normally does not [MQTT-3.1.2-8, MQTT-3.1.2-10].
async fn will_on_abrupt_close_only(v: Mqtt) {
    let m = Mosq::start("will", v).await;
    m.mark_ready().await;
    let mut watcher = m.sub(
        "watcher",
        &["-q", "1", "-t", "will/#", "-t", READY, "-F", FORMAT],
    );
    watcher.wait_ready().await;

    // The client holding the will shows it is connected by printing the marker.
    let id = format!("abrupt-{}", v.tag());
    let will = "--will-topic will/abrupt --will-qos 1 --will-retain --will-payload";
    let mut doomed = m.sub(
        "doomed",
        &[
            &words(will)[..],
            &["abrupt end", "-i", &id, "-t", READY, "-F", FORMAT],
        ]
        .concat(),
    );
    doomed.wait_ready().await;
    doomed.kill().await;
    // A live subscriber gets a will as a live message (retain flag clear)...
    let abrupt = Msg::new("will/abrupt", 1, false, "abrupt end");
    assert_eq!(watcher.next_msg().await, abrupt);
    // ... and --will-retain made it retained for later subscribers.
    let mut later = m.sub(
        "later",
        &[&words("-q 1 -t will/abrupt -C 1 -W 10 -F")[..], &[FORMAT]].concat(),
    );
    let retained = Msg::new("will/abrupt", 1, true, "abrupt end");
    assert_eq!(later.next_msg().await, retained);

    // -C 1: receives the marker, then sends DISCONNECT and exits 0.
    let will = "--will-topic will/polite --will-qos 1 --will-payload must-not-appear";
    let polite = m.sub(
        "polite",
        &words(&format!("{will} -i polite -t {READY} -C 1 -W 10")),
    );
    let done = polite.finish().await;
    assert!(done.status.success(), "{done:?}");
    assert_eq!(done.stdout, READY);
    // Bounded negative check: the client sent DISCONNECT and exited before the sentinel's
    // publisher began its TLS handshake, so a will published for it would come first.
    m.publish(&words("-q 1 -t will/sentinel -m sentinel")).await;
    let (before, _) = watcher.msgs_until_topic("will/sentinel").await;
    assert_eq!(before, [], "no will after a normal disconnect");
}

/// `-c` (v5: `-c -x 300`) keeps the session while the client is away: QoS 1 and 2
/// messages published meanwhile arrive on the next connection with the same id, each
/// publisher's messages in order.
async fn persistent_session_queues_offline_messages(v: Mqtt) {
    let m = Mosq::start("persist", v).await;
    let id = format!("persist-{}", v.tag());
    let session = format!("-c -i {id} -q 2 -t persist/t");
    let mut session = words(&session);
    if v == Mqtt::V5 {
        session.extend(["-x", "300"]);
    }

    // -E: exits (DISCONNECT, session kept) once the SUBACK is in.
    let create = m.sub("create", &[&session[..], &["-E"]].concat());
    let done = create.finish().await;
    assert!(done.status.success(), "{done:?}");

    // One publisher connection per QoS: one client and one topic, so each batch keeps its
    // order [MQTT-4.6.0-6]; nothing orders the two batches against each other.
    let batch = |qos: u8, n: usize| -> Vec<String> {
        (1..=n).map(|i| format!("offline q{qos} #{i}")).collect()
    };
    let (q1, q2) = (batch(1, 5), batch(2, 3));
    for (qos, lines) in [("1", &q1), ("2", &q2)] {
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        m.publish_lines(&["-q", qos, "-t", "persist/t"], &lines)
            .await;
    }

    let count = (q1.len() + q2.len()).to_string();
    let resume_args = [&session[..], &["-C", &count, "-W", "10", "-F", FORMAT]].concat();
    let mut resume = m.sub("resume", &resume_args);
    let got = resume.msgs_until(|m| m.len() == q1.len() + q2.len()).await;
    for (qos, sent) in [(1, &q1), (2, &q2)] {
        let received: Vec<Msg> = got.iter().filter(|m| m.qos == qos).cloned().collect();
        let expect: Vec<Msg> = sent
            .iter()
            .map(|p| Msg::new("persist/t", qos, false, p))
            .collect();
        assert_eq!(received, expect, "QoS {qos} batch, all received: {got:?}");
    }
    let done = resume.finish().await;
    assert!(done.status.success(), "{done:?}");
}

/// A second connection with the same client id takes the session over [MQTT-3.1.4-2]; the
/// first is disconnected (v5: DISCONNECT 0x8E, Session taken over) and the second keeps
/// receiving.
///
/// With 3.1.1 the first connection is our raw client, not a second `mosquitto_sub`:
/// libmosquitto reconnects a 3.1.1 connection the broker closed after a second, so two
/// 3.1.1 `mosquitto_sub`s with one id take each other over every second and never exit.
/// A v5 `mosquitto_sub` stops on the server's DISCONNECT instead.
async fn takeover_keeps_the_newest_connection(v: Mqtt) {
    let m = Mosq::start("takeover", v).await;
    m.mark_ready().await;
    let id = format!("takeover-{}", v.tag());
    let args = format!("-i {id} -t tk/# -t {READY} -F");
    let args = [&words(&args)[..], &[FORMAT]].concat();

    enum First {
        Mosquitto(Box<Sub>),
        Raw(RawClient),
    }
    let first = match v {
        Mqtt::V5 => {
            // -d prints the DISCONNECT reason code mosquitto_sub receives (among debug lines).
            let mut first = m.sub("first", &[&["-d"], &args[..]].concat());
            first
                .lines_until(|l| Msg::parse(l).is_some_and(|m| m.topic == READY))
                .await;
            First::Mosquitto(Box::new(first))
        }
        Mqtt::V311 => {
            let mut raw = RawClient::connect(m.broker.tcp, ProtocolVersion::V311).await;
            let connack = raw
                .handshake(connect(ProtocolVersion::V311, &id, true, 60))
                .await;
            assert!(matches!(connack, Packet::ConnAck(_)), "{connack:?}");
            First::Raw(raw)
        }
    };

    let mut second = m.sub("second", &args);
    second.wait_ready().await;

    match first {
        First::Mosquitto(first) => {
            let done = first.finish().await;
            assert!(
                done.stdout.contains("Received DISCONNECT (142)"),
                "first connection told the session was taken over: {done:?}"
            );
        }
        First::Raw(mut raw) => {
            let after = raw.expect_closed().await;
            assert!(
                after.is_empty(),
                "3.1.1 has no server DISCONNECT: {after:?}"
            );
        }
    }

    m.publish(&["-q", "1", "-t", "tk/after", "-m", "still here"])
        .await;
    let still = Msg::new("tk/after", 0, false, "still here");
    assert_eq!(second.next_msg().await, still);
}

/// `+` matches one level, `#` the parent and every level below; `$SYS/broker/version` is
/// reachable through `$SYS/#` but not through `#` or `+/...` [MQTT-4.7.2-1].
async fn wildcards_and_sys_topics(v: Mqtt) {
    let m = Mosq::start("wildcards", v).await;
    m.mark_ready().await;
    let narrow = format!("-q 1 -t wc/+/c -t wc/x/# -t {READY} -F");
    let mut narrow = m.sub("narrow", &[&words(&narrow)[..], &[FORMAT]].concat());
    let everything = "-q 1 -t +/broker/version -t # -F";
    let mut everything = m.sub("everything", &[&words(everything)[..], &[FORMAT]].concat());
    // `$SYS` topics are retained: published as the broker starts and every sys.interval.
    let mut sys = m.sub("sys", &["-t", "$SYS/#", "-W", "10", "-F", FORMAT]);
    narrow.wait_ready().await;

    // `#` also matches the marker: its arrival means `everything` is subscribed, and any
    // `$SYS` retained message wrongly matched by `+/broker/version` or `#` (filters handled
    // in order) would have been sent before it.
    let (before, _) = everything.msgs_until_topic(READY).await;
    assert_eq!(before, [], "`#` and `+/...` match no $SYS topic");

    let topics = [
        "wc/b/c", "wc/b/c/d", "wc/x", "wc/x/y/z", "wc/y/x", "wc/b", "wc/end/c",
    ];
    for topic in topics {
        m.publish(&["-q", "1", "-t", topic, "-m", topic]).await;
    }
    // wc/end/c, published last, matches `wc/+/c`: reading until every expected topic has
    // arrived also reads anything wrongly delivered before the sentinel.
    let expected = ["wc/b/c", "wc/end/c", "wc/x", "wc/x/y/z"];
    let got = narrow
        .msgs_until(|got| expected.iter().all(|t| got.iter().any(|m| m.topic == *t)))
        .await;
    let mut topics_got: Vec<&str> = got.iter().map(|m| m.topic.as_str()).collect();
    topics_got.sort();
    assert_eq!(topics_got, expected);

    let mut all = everything.msgs_until(|m| m.len() == topics.len()).await;
    all.sort();
    let mut expect_all: Vec<Msg> = topics.iter().map(|t| Msg::new(t, 1, false, t)).collect();
    expect_all.sort();
    assert_eq!(
        all, expect_all,
        "`#` gets every client topic and no $SYS one"
    );

    let (_, version) = sys.msgs_until_topic("$SYS/broker/version").await;
    assert!(version.retain, "{version:?}");
    assert!(version.payload.starts_with("twinmq "), "{version:?}");
}

/// A client that trusts another CA fails the TLS handshake, says so, and exits non-zero;
/// the broker keeps serving clients that trust the right one.
async fn wrong_ca_is_refused(v: Mqtt) {
    let m = Mosq::start("wrong-ca", v).await;
    let other = temp_dir("mosq-other-ca");
    let mut certs = Command::new(env!("CARGO_BIN_EXE_twinmq"));
    certs
        .arg("certs")
        .arg("--out")
        .arg(&other)
        .kill_on_drop(true);
    let certs = run(certs, None).await;
    assert!(certs.status.success(), "twinmq certs: {certs:?}");
    let wrong_ca = other.join("ca.pem");
    assert!(wrong_ca.exists(), "{certs:?}");

    let port = m.broker.tls.port();
    let attempts = [
        ("mosquitto_sub", "-t tls/x -C 1 -W 5"),
        ("mosquitto_pub", "-t tls/x -m x"),
    ];
    for (program, args) in attempts {
        let mut cmd = tls_command(program, &wrong_ca, port, v);
        cmd.args(words(args));
        let out = run(cmd, None).await;
        assert!(
            !out.status.success(),
            "{program} with the wrong CA: {out:?}"
        );
        assert!(
            out.stderr.contains("TLS error"),
            "{program} names the TLS failure: {out:?}"
        );
    }

    // The right CA still works, by name and by address (the certificate has both SANs).
    m.publish(&words("-q 1 -t tls/ok -m ok")).await;
    let mut by_ip = Command::new("mosquitto_pub");
    by_ip
        .arg("--cafile")
        .arg(&m.broker.ca)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", v.flag()])
        .args(words("-q 1 -t tls/ok -m ok"))
        .kill_on_drop(true);
    let out = run(by_ip, None).await;
    assert!(out.status.success(), "by 127.0.0.1: {out:?}");
}

/// A payload of nearly `mqtt.max_packet_size` (1 MiB by default) crosses many TLS records
/// intact; a larger one is refused and reaches nobody, and the broker keeps serving. (The v5
/// client refuses to send it, having read the maximum packet size from CONNACK; the 3.1.1
/// connection is closed by the broker [MQTT-4.8.0-1].)
async fn large_payloads_up_to_the_packet_limit(v: Mqtt) {
    let m = Mosq::start("large", v).await;
    m.mark_ready().await;
    let args = format!("-q 1 -t big/# -t {READY} -F");
    let mut sub = m.sub("sub", &[&words(&args)[..], &[FORMAT]].concat());
    sub.wait_ready().await;

    // No two neighbouring 64-byte blocks alike, so lost or reordered records would show.
    let payload = |len: usize| -> String {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        (0..len)
            .map(|i| char::from(ALPHABET[(i + i / 64) % ALPHABET.len()]))
            .collect()
    };
    let fits = payload(1_000_000);
    let out = m
        .try_publish(&words("-q 1 -t big/fits -s"), Some(fits.clone()))
        .await;
    assert!(out.status.success(), "{out:?}");
    let got = sub.next_msg().await;
    assert_eq!((got.topic.as_str(), got.qos), ("big/fits", 1));
    assert!(
        got.payload == fits,
        "payload of {} bytes intact",
        got.payload.len()
    );

    let too_big = m
        .try_publish(&words("-q 1 -t big/too-big -s"), Some(payload(1_100_000)))
        .await;
    // Bounded negative check: the sentinel follows on the same subscription.
    m.publish(&words("-q 1 -t big/sentinel -m sentinel")).await;
    let (before, _) = sub.msgs_until_topic("big/sentinel").await;
    let topics: Vec<&str> = before.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(topics, Vec::<&str>::new(), "mosquitto_pub said {too_big:?}");
}

/// MQTT 5 properties a publisher sets reach the subscriber unchanged, with the
/// subscription identifier of the matching subscription [MQTT-3.3.4-3].
#[tokio::test]
async fn v5_publish_properties_pass_through() {
    let m = Mosq::start("properties", Mqtt::V5).await;
    m.mark_ready().await;
    let format = "%t\t%C\t%R\t%D\t%F\t%P\t%S\t%p";
    let sub = "-q 1 -t props/# -t ready -D subscribe subscription-identifier 7 -F";
    let mut sub = m.sub("sub", &[&words(sub)[..], &[format]].concat());
    let (_, ready) = sub.lines_until(|l| l.starts_with("ready\t")).await;
    assert_eq!(ready, "ready\t\t\t\t\t\t7\tready");

    let properties = "-D publish user-property k1 v1 -D publish user-property k2 v2 \
        -D publish content-type text/plain -D publish response-topic reply/to \
        -D publish correlation-data corr-42 -D publish payload-format-indicator 1";
    m.publish(
        &[
            &words(properties)[..],
            &words("-q 1 -t props/a -m with-props"),
        ]
        .concat(),
    )
    .await;
    let (_, line) = sub.lines_until(|l| l.starts_with("props/a\t")).await;
    assert_eq!(
        line,
        "props/a\ttext/plain\treply/to\tcorr-42\t1\tk1:v1 k2:v2\t7\twith-props"
    );
}

/// The README's promise: `twinmq serve` prints a `mosquitto_sub` line that works as printed;
/// SIGTERM stops the broker with exit status 0, telling v5 clients why.
#[tokio::test]
async fn serve_prints_a_working_mosquitto_sub_line() {
    let data_dir = temp_dir("mosq-serve");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twinmq"));
    cmd.arg("serve")
        .arg("--set")
        .arg(format!("data_dir={}", data_dir.display()))
        .args(["--set", "listeners.tcp.bind=127.0.0.1:0"])
        .args(["--set", "listeners.tls.bind=127.0.0.1:0"])
        .args(["--set", "listeners.quic.bind=127.0.0.1:0"])
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TWINMQ_") {
            cmd.env_remove(key);
        }
    }
    let mut broker = Sub::spawn("twinmq serve", cmd);
    let pid = broker.id().expect("broker is running");

    let (_, tls_line) = broker
        .lines_until(|l| l.starts_with("twinmq: MQTT over TLS on "))
        .await;
    let tls_port: u16 = tls_line
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a port in {tls_line:?}"));
    let (_, try_line) = broker.lines_until(|l| l.starts_with("twinmq: try: ")).await;
    let argv = shell_words(try_line.trim_start_matches("twinmq: try: "));
    let arg_after = |flag: &str| {
        let at = argv.iter().position(|a| a == flag);
        at.and_then(|i| argv.get(i + 1)).map(String::as_str)
    };
    assert_eq!(argv[0], "mosquitto_sub", "{try_line}");
    assert_eq!(arg_after("-p"), Some(tls_port.to_string().as_str()));
    let ca = arg_after("--cafile").unwrap_or_else(|| panic!("--cafile in {try_line}"));
    assert!(Path::new(ca).exists(), "{ca} exists");

    let publish = |topic: &str, payload: &str, retain: bool| {
        let mut cmd = tls_command("mosquitto_pub", Path::new(ca), tls_port, Mqtt::V311);
        cmd.args(["-q", "1", "-t", topic, "-m", payload]);
        if retain {
            cmd.arg("-r");
        }
        run(cmd, None)
    };
    // A retained marker first: the printed line subscribes to '#', so the marker's arrival
    // shows the subscription is in place. Then a live message.
    let marked = publish("readme/ready", "ready", true).await;
    assert!(marked.status.success(), "{marked:?}");
    let mut printed = Command::new(&argv[0]);
    printed
        .args(&argv[1..])
        .args(["-C", "2", "-W", "10"])
        .kill_on_drop(true);
    let mut sub = Sub::spawn("printed mosquitto_sub", printed);
    let (before, _) = sub.lines_until(|l| l == "readme/ready ready").await;
    assert!(before.is_empty(), "{before:?}");
    let sent = publish("readme/hello", "hello over TLS", false).await;
    assert!(sent.status.success(), "{sent:?}");
    let done = sub.finish().await;
    assert!(done.status.success(), "{done:?}");
    assert_eq!(done.stdout, "readme/hello hello over TLS");

    // A v5 client still connected at SIGTERM is told the server is going away (0x8B).
    let mut v5 = tls_command("mosquitto_sub", Path::new(ca), tls_port, Mqtt::V5);
    v5.args(words("-d -t readme/# -v"));
    let mut v5 = Sub::spawn("v5 mosquitto_sub", v5);
    v5.lines_until(|l| l == "readme/ready ready").await;

    let mut term = Command::new("kill");
    term.args(["-TERM", &pid.to_string()]).kill_on_drop(true);
    let term = run(term, None).await;
    assert!(term.status.success(), "kill -TERM: {term:?}");
    let stopped = within("twinmq serve stopping on SIGTERM", broker.finish()).await;
    assert!(stopped.status.success(), "exit 0 on SIGTERM: {stopped:?}");
    assert!(
        stopped.stdout.contains("twinmq: shutting down"),
        "{stopped:?}"
    );
}

/// Splits a printed shell command into words: whitespace separates, single quotes are
/// taken literally (the printed line quotes `'#'`).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut in_word, mut quoted) = (false, false);
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quote in {line:?}");
    if in_word {
        words.push(word);
    }
    words
}
