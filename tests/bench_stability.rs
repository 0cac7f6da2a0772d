//! `twinmq bench stability` in short form: every scenario runs for a second or two with
//! few clients against a `twinmq serve` child, and the counts must hold: no QoS 1/2
//! message acknowledged and then lost, no session left stalled, every ack of the wedge
//! schedule delivered, the small `hol` topic overtaking the large one on multi-stream
//! QUIC. No assertion is about time.
//!
//! Packet faults use the impairment link when the machine allows it (root, TUN; CI has
//! both); otherwise QUIC meets them in the loopback relay and the TLS cases that need real
//! loss must say "needs the impairment link".

use std::path::PathBuf;
use std::time::Duration;

use twinmq::bench::stability::{
    self, Report, RunResult, Scenario, Shape, StabilityOptions, TransportKind,
};

fn options(scenario: Scenario, transports: &[TransportKind]) -> StabilityOptions {
    StabilityOptions {
        scenarios: vec![scenario],
        transports: transports.to_vec(),
        duration: Duration::from_millis(1200),
        target: None,
        broker_binary: Some(PathBuf::from(env!("CARGO_BIN_EXE_twinmq"))),
        use_link: true,
        shape: Shape {
            stall: Duration::from_millis(800),
            // TCP through 10 % loss can sit in retransmission backoff for seconds; a
            // keep-alive that outlasts it keeps the counts about loss, not about timers.
            keep_alive: Duration::from_secs(4),
            ..Shape::short()
        },
        seed: 7,
        progress: false,
    }
}

fn run(scenario: Scenario, transports: &[TransportKind]) -> Report {
    stability::run(&options(scenario, transports)).expect("the bench runs")
}

/// The guarantees every run that ran must keep.
fn assert_sound(r: &RunResult) {
    let what = format!("{} {} {}", r.scenario, r.condition, r.transport);
    assert!(r.ran, "{what} did not run: {:?}", r.notes);
    assert!(r.sent > 0, "{what}: nothing sent");
    assert_eq!(
        r.lost, 0,
        "{what}: acknowledged messages lost ({:?})",
        r.notes
    );
    assert_eq!(
        r.stalled_sessions, 0,
        "{what}: sessions left stalled ({:?})",
        r.notes
    );
    assert_eq!(r.acked, r.sent, "{what}: publishes left unacknowledged");
    assert_eq!(r.delivered, r.sent, "{what}: deliveries missing");
}

/// A TLS case that needs real packet loss either ran over the link or says why not.
fn assert_sound_or_needs_link(r: &RunResult) {
    if !r.ran && r.transport == TransportKind::Tls {
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("needs the impairment link")),
            "{} {}: {:?}",
            r.scenario,
            r.condition,
            r.notes
        );
        return;
    }
    assert_sound(r);
}

#[test]
fn ack_wedge_every_ack_arrives_over_every_transport() {
    let report = run(Scenario::AckWedge, &TransportKind::ALL);
    assert_eq!(report.results.len(), 3);
    for r in &report.results {
        assert_sound(r);
        assert_eq!(r.duplicated, 0, "{}: {:?}", r.transport, r.notes);
    }
}

#[test]
fn loss_and_reordering_lose_no_qos1_message() {
    let report = run(Scenario::Loss, &TransportKind::ALL);
    // 0% loss and 10% loss + 20% reordering, over three transports.
    assert_eq!(report.results.len(), 6);
    for r in &report.results {
        assert_sound_or_needs_link(r);
    }
    let tls_clean = &report.results[0];
    assert_eq!(tls_clean.condition, "0% loss");
    assert_sound(tls_clean);
}

#[test]
fn rebind_migrates_quic_and_reconnects_tls_without_loss() {
    let report = run(
        Scenario::Rebind,
        &[TransportKind::Tls, TransportKind::QuicMulti],
    );
    // Migration (QUIC only), NAT rebinding busy and idle (both).
    assert_eq!(report.results.len(), 5);
    for r in &report.results {
        assert_sound(r);
        assert!(
            r.extra("address_changes").is_some_and(|n| n >= 1.0),
            "{} {}: no address change",
            r.condition,
            r.transport
        );
        if r.transport.is_quic() {
            assert_eq!(r.reconnects, 0, "{}: QUIC migrates", r.condition);
        }
    }
}

#[test]
fn hol_small_topic_overtakes_large_on_multi_stream() {
    let report = run(Scenario::Hol, &TransportKind::ALL);
    assert_eq!(report.results.len(), 3);
    for r in &report.results {
        assert_sound(r);
    }
    let multi = &report.results[2];
    assert_eq!(multi.transport, TransportKind::QuicMulti);
    assert!(
        multi.extra("hol_overtakes").is_some_and(|n| n > 0.0),
        "the small topic kept flowing past the large one: {:?}",
        multi.notes
    );
}

#[test]
fn stall_recovers_every_session() {
    let report = run(
        Scenario::Stall,
        &[TransportKind::Tls, TransportKind::QuicSingle],
    );
    // Hold and blackhole, over two transports.
    assert_eq!(report.results.len(), 4);
    for r in &report.results {
        assert_sound_or_needs_link(r);
        if r.ran {
            assert!(
                r.recovery_ms_p50.is_some(),
                "{} {}: no delivery after the stall",
                r.condition,
                r.transport
            );
        }
    }
}

#[test]
fn reconnect_storm_resumes_every_session_and_writes_the_report() {
    let report = run(Scenario::ReconnectStorm, &TransportKind::ALL);
    assert_eq!(report.results.len(), 3);
    for r in &report.results {
        assert_sound(r);
        assert_eq!(r.extra("clients"), Some(20.0));
        assert!(
            r.reconnects >= 20,
            "{}: every client came back",
            r.transport
        );
        assert!(r.broker_cpu_s.is_some() && r.broker_rss_bytes.is_some());
    }
    let dir = std::env::temp_dir().join(format!("twinmq-bench-report-{}", std::process::id()));
    let charts = report.write(&dir).expect("report written");
    let json = std::fs::read_to_string(dir.join("report.json")).expect("report.json");
    for field in [
        "\"scenario\": \"reconnect-storm\"",
        "\"transport\": \"quic-multi\"",
        "\"lost\": 0",
        "\"stalled_sessions\": 0",
        "\"recovery_ms_p99\": ",
        "\"broker_rss_bytes\": ",
    ] {
        assert!(json.contains(field), "{field} in {json}");
    }
    let md = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    assert!(md.contains("| reconnect-storm |"));
    assert_eq!(charts, ["latency-reconnect-storm.svg"]);
    let _ = std::fs::remove_dir_all(&dir);
}
