//! `twinmq bench stability`: the same client population over TLS, QUIC single-stream and
//! QUIC multi-stream, scenario by scenario, with the faults of DESIGN §4.
//!
//! ```text
//!  plan: scenario × condition × transport ──► for each case:
//!    start the broker (`twinmq serve`, a child process, faults at its seams)
//!    put the impairment link (packet faults) or a relay (bench::path) in between
//!    publishers ──► broker ──► subscribers      ledger: stamps in every payload
//!    drive the faults (outage, rebinding, resets, storm)
//!    drain, count, stop ──► RunResult
//!  report.json, report.md, SVG charts
//! ```
//!
//! | scenario | what happens | TLS | QUIC |
//! |---|---|---|---|
//! | `ack-wedge` | QoS 1 bursts from one client while the broker's writes are short and stalled | stream faults below TLS | 10% datagram loss below quinn |
//! | `loss` | 0/1/5/10% loss, 10% + 20% reordering, QoS 1 at a fixed rate | the link | the link |
//! | `rebind` | the client's address changes every few seconds | NAT rebinding on the link: TCP breaks, reconnect | client migration; NAT rebinding on the link (busy and idle subscribers) |
//! | `hol` | a large and a small topic to one subscriber under a rate cap | one byte stream | single: one stream; multi: a stream per topic |
//! | `stall` | the path stops for 5 s, then recovers | relay holds bytes; link blackhole | relay holds datagrams; link blackhole |
//! | `reconnect-storm` | every client drops at once and comes back | the relay resets them | the relay forgets every flow |
//!
//! Without the link (no root, no TUN), QUIC's packet faults go through the loopback relay
//! and the TLS cases that need real loss are reported as not run. Broker CPU and memory
//! are the child process's own, from `/proc/<pid>`.

mod broker;
pub mod cli;
mod clients;
mod impair;
mod ledger;
mod progress;
mod report;
mod runner;
mod scenarios;
mod storm;
mod svg;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use report::{Report, RunResult};
pub use runner::run;

/// A stability scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scenario {
    #[default]
    AckWedge,
    Loss,
    Rebind,
    Hol,
    Stall,
    ReconnectStorm,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::AckWedge,
        Scenario::Loss,
        Scenario::Rebind,
        Scenario::Hol,
        Scenario::Stall,
        Scenario::ReconnectStorm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::AckWedge => "ack-wedge",
            Scenario::Loss => "loss",
            Scenario::Rebind => "rebind",
            Scenario::Hol => "hol",
            Scenario::Stall => "stall",
            Scenario::ReconnectStorm => "reconnect-storm",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Scenario, String> {
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                format!("unknown scenario {s:?} (expected {})", names.join(", "))
            })
    }
}

/// A transport under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TransportKind {
    #[default]
    Tls,
    QuicSingle,
    QuicMulti,
}

impl TransportKind {
    pub const ALL: [TransportKind; 3] = [
        TransportKind::Tls,
        TransportKind::QuicSingle,
        TransportKind::QuicMulti,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Tls => "tls",
            TransportKind::QuicSingle => "quic-single",
            TransportKind::QuicMulti => "quic-multi",
        }
    }

    pub fn is_quic(self) -> bool {
        self != TransportKind::Tls
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TransportKind {
    type Err = String;

    fn from_str(s: &str) -> Result<TransportKind, String> {
        TransportKind::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                format!("unknown transport {s:?} (expected tls, quic-single or quic-multi)")
            })
    }
}

/// Another broker to measure instead of starting one.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its TLS listener.
    pub tls: SocketAddr,
    /// Its QUIC listener (UDP).
    pub quic: SocketAddr,
    /// The CA that signed its certificate.
    pub ca: PathBuf,
    /// The name its certificate carries.
    pub server_name: String,
}

/// The sizes of the scenarios: [`Shape::full`] for `twinmq bench stability`,
/// [`Shape::short`] for `cargo test`.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Round-trip time the relays add (half each way).
    pub rtt: Duration,
    /// MQTT keep-alive of every client.
    pub keep_alive: Duration,
    /// Traffic before the first fault.
    pub lead: Duration,
    /// `loss`: the loss levels, in percent.
    pub loss_levels: Vec<f64>,
    /// `loss`: the (loss, reordering) pair, in percent, of the reordering run.
    pub loss_reorder: Option<(f64, f64)>,
    /// `loss`: messages per second of each of the two publishers, and their size.
    pub loss_rate: f64,
    pub loss_payload: usize,
    /// `rebind`, `stall`: messages per second of each of the two publishers.
    pub steady_rate: f64,
    /// `rebind` (NAT rebinding, idle): messages per second of each publisher.
    pub idle_rate: f64,
    /// `stall`: how long the path stops.
    pub stall: Duration,
    /// `rebind`: interval between address changes (NAT rebinding waits a keep-alive more,
    /// so that each stall ends before the next change).
    pub rebind_every: Duration,
    /// `rebind`: address changes each run makes at least (runs stretch to fit them).
    pub min_rebinds: u32,
    /// `reconnect-storm`: clients that drop and come back together.
    pub storm_clients: usize,
    /// `hol`: the rate cap towards the subscriber (bytes/s), the large messages' size and
    /// how many go out together each second.
    pub hol_rate: u64,
    pub hol_large: usize,
    pub hol_burst: u64,
    /// Longest wait after the traffic for outstanding acknowledgements and deliveries.
    pub drain: Duration,
    /// A gap between deliveries longer than this is a stall episode.
    pub stall_threshold: Duration,
}

impl Shape {
    pub fn full() -> Shape {
        Shape {
            rtt: Duration::from_millis(20),
            keep_alive: Duration::from_secs(5),
            lead: Duration::from_secs(1),
            loss_levels: vec![0.0, 1.0, 5.0, 10.0],
            loss_reorder: Some((10.0, 20.0)),
            loss_rate: 250.0,
            loss_payload: 512,
            steady_rate: 50.0,
            idle_rate: 1.0,
            stall: Duration::from_secs(5),
            rebind_every: Duration::from_secs(3),
            min_rebinds: 2,
            storm_clients: 200,
            hol_rate: 1_000_000,
            hol_large: 64 * 1024,
            hol_burst: 8,
            drain: Duration::from_secs(10),
            stall_threshold: Duration::from_secs(1),
        }
    }

    /// A few seconds per scenario and few clients: for tests.
    pub fn short() -> Shape {
        Shape {
            keep_alive: Duration::from_secs(2),
            lead: Duration::from_millis(500),
            loss_levels: vec![0.0],
            loss_reorder: Some((10.0, 20.0)),
            loss_rate: 100.0,
            loss_payload: 256,
            steady_rate: 40.0,
            stall: Duration::from_secs(1),
            rebind_every: Duration::from_millis(700),
            min_rebinds: 1,
            storm_clients: 20,
            hol_rate: 500_000,
            hol_large: 32 * 1024,
            hol_burst: 8,
            // An upper bound only (runs end when every message is in): generous for loaded CI.
            drain: Duration::from_secs(20),
            stall_threshold: Duration::from_millis(500),
            ..Shape::full()
        }
    }
}

/// What `twinmq bench stability` runs.
#[derive(Debug, Clone)]
pub struct StabilityOptions {
    pub scenarios: Vec<Scenario>,
    pub transports: Vec<TransportKind>,
    /// Traffic time of each run (a scenario stretches it when its faults need longer).
    pub duration: Duration,
    /// Measure this broker instead of starting one.
    pub target: Option<Target>,
    /// The `twinmq` binary to start the broker from (`twinmq serve`, one child process
    /// per case), when there is no target.
    pub broker_binary: Option<PathBuf>,
    /// Put packet faults on the impairment link when this machine can build it.
    pub use_link: bool,
    pub shape: Shape,
    pub seed: u64,
    /// A progress bar on stderr.
    pub progress: bool,
}

impl StabilityOptions {
    /// Every scenario over every transport, full size, brokers started from `binary`.
    pub fn full(binary: PathBuf, duration: Duration) -> StabilityOptions {
        StabilityOptions {
            scenarios: Scenario::ALL.to_vec(),
            transports: TransportKind::ALL.to_vec(),
            duration,
            target: None,
            broker_binary: Some(binary),
            use_link: true,
            shape: Shape::full(),
            seed: 42,
            progress: false,
        }
    }
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot start the broker: {0}")]
    Server(#[from] crate::server::ServerError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Client {
        what: String,
        source: crate::client::ClientError,
    },
    #[error("{0}")]
    Target(String),
    #[error("a bench task failed: {0}")]
    Task(String),
}

impl BenchError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }

    pub(crate) fn client(
        what: impl Into<String>,
    ) -> impl FnOnce(crate::client::ClientError) -> BenchError {
        let what = what.into();
        move |source| BenchError::Client { what, source }
    }
}
