//! Runs the plan: one case per scenario, condition and transport, each against a fresh
//! `twinmq serve` child (or the `--target` broker), with a hard time bound per case.
//!
//! Cases whose faults must reach kernel TCP (loss, a blackhole, NAT rebinding) run over
//! the impairment link when this machine can build it: the broker in the link's server
//! namespace, the bench clients on a runtime whose threads live in its client namespace.
//! Otherwise QUIC runs them through the loopback relay and TLS reports them not run.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;

use super::broker::{ChildBroker, Place};
use super::clients::Dial;
use super::progress::Progress;
use super::{scenarios, storm};
use super::{BenchError, Report, RunResult, Scenario, Shape, StabilityOptions, TransportKind};
use crate::bench::path::Outage;
use crate::bench::proc::{self, UdpDrops};
use crate::fault::link::{self, ImpairedLink, LinkError, LinkPlan};
use crate::fault::stream::StreamFaults;
use crate::fault::udp::UdpFaults;
use crate::fault::FaultPlan;

/// Namespace prefix of the bench's links: `tmqb-<pid>-<n>-srv` / `-cli`.
const LINK_PREFIX: &str = "tmqb";

/// The variant of a scenario a case runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Condition {
    Plain,
    /// Percentages.
    Loss {
        loss: f64,
        reorder: f64,
    },
    /// QUIC: the client moves to a new UDP socket and knows it.
    Migration,
    /// QUIC: the relay changes the client's source port; the client does not know.
    /// `idle`: the subscribers receive a message a second, so at a change they usually
    /// have nothing to acknowledge (busy ones always do).
    NatRebinding {
        idle: bool,
    },
    Stall(Outage),
}

impl Condition {
    pub fn label(&self, shape: &Shape) -> String {
        match self {
            Condition::Plain => String::new(),
            Condition::Loss { loss, reorder } if *reorder > 0.0 => {
                format!("{loss}% loss + {reorder}% reorder")
            }
            Condition::Loss { loss, .. } => format!("{loss}% loss"),
            Condition::Migration => "client migration".into(),
            Condition::NatRebinding { idle: false } => "NAT rebinding, busy".into(),
            Condition::NatRebinding { idle: true } => "NAT rebinding, idle".into(),
            Condition::Stall(Outage::Hold) => format!("{}s hold", shape.stall.as_secs_f64()),
            Condition::Stall(Outage::Drop) => {
                format!("{}s blackhole", shape.stall.as_secs_f64())
            }
        }
    }
}

/// One run of the plan.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub scenario: Scenario,
    pub transport: TransportKind,
    pub condition: Condition,
}

impl Case {
    /// Whether the case's faults belong on packets, where only the link can put them for
    /// kernel TCP.
    pub fn wants_link(&self) -> bool {
        matches!(
            self.condition,
            Condition::Loss { .. }
                | Condition::Stall(Outage::Drop)
                | Condition::NatRebinding { .. }
        )
    }
}

/// What a scenario needs to run one case.
#[derive(Clone)]
pub(crate) struct Env {
    pub case: Case,
    pub label: String,
    pub dial: Dial,
    /// The broker's listener for the case's transport.
    pub broker: SocketAddr,
    /// The bench started the broker (its seams carry the case's fault plan).
    pub own_broker: bool,
    /// The broker's process, when the bench started it.
    pub broker_pid: Option<u32>,
    /// The impairment link the case runs over (clients reach `broker` through it).
    pub link: Option<Arc<ImpairedLink>>,
    pub run_id: String,
    pub seed: u64,
    pub shape: Shape,
    pub duration: Duration,
}

/// Readings at the start of a measurement, to subtract at its end.
pub(crate) struct Probe {
    pid: Option<u32>,
    cpu: Option<Duration>,
    udp: Option<UdpDrops>,
}

/// Broker CPU (s), broker RSS (bytes), kernel UDP drops in the broker's network namespace
/// during the measurement.
pub(crate) type Readings = (Option<f64>, Option<u64>, Option<u64>);

impl Probe {
    pub fn start(env: &Env) -> Probe {
        Probe {
            pid: env.broker_pid,
            cpu: env.broker_pid.and_then(proc::cpu),
            // Kernel UDP drops concern QUIC only.
            udp: env
                .broker_pid
                .filter(|_| env.case.transport.is_quic())
                .and_then(UdpDrops::read),
        }
    }

    pub fn finish(&self) -> Readings {
        let Some(pid) = self.pid else {
            return (None, None, None);
        };
        let cpu = match (self.cpu, proc::cpu(pid)) {
            (Some(before), Some(now)) => Some(now.saturating_sub(before).as_secs_f64()),
            _ => None,
        };
        let udp = self.udp.and_then(|before| {
            let d = UdpDrops::read(pid)?.since(before);
            Some(d.in_errors.max(d.rcvbuf_errors))
        });
        (cpu, proc::rss_bytes(pid), udp)
    }
}

static INVOCATION: AtomicU32 = AtomicU32::new(0);

/// Runs every case of `options` and returns the report. Blocking: it builds its own
/// runtimes, so it must not be called from inside a tokio runtime.
pub fn run(options: &StabilityOptions) -> Result<Report, BenchError> {
    let binary = match (&options.target, &options.broker_binary) {
        (Some(target), _) => {
            check_target(target.tls)?;
            check_target(target.quic)?;
            None
        }
        (None, Some(binary)) => Some(binary.clone()),
        (None, None) => {
            return Err(BenchError::Target(
                "no broker to measure: give a twinmq binary or a target".into(),
            ))
        }
    };
    let n = INVOCATION.fetch_add(1, Ordering::Relaxed);
    let bench_rt = runtime("tmq-bench").map_err(BenchError::io("bench runtime"))?;
    let cases = plan(options);
    let no = |why: &str| (None, None, Some(why.to_string()));
    let (link, link_rt, no_link) = if !cases.iter().any(Case::wants_link) {
        (None, None, None)
    } else if options.target.is_some() {
        no("a --target broker is not behind the link")
    } else if !options.use_link {
        no("off: --no-link")
    } else {
        match open_link(n) {
            Ok((link, rt)) => (Some(link), Some(rt), None),
            Err(e) => no(&e.to_string()),
        }
    };
    let root = std::env::temp_dir().join(format!("twinmq-stability-{}-{n}", std::process::id()));
    let ctx = Ctx {
        options,
        binary,
        link,
        link_rt: link_rt.as_ref().map(|rt| rt.handle().clone()),
        no_link,
        root: root.clone(),
        nonce: nonce(),
    };
    let report = bench_rt.block_on(ctx.run_all(&cases));
    drop(ctx);
    bench_rt.shutdown_timeout(Duration::from_secs(2));
    if let Some(rt) = link_rt {
        rt.shutdown_timeout(Duration::from_secs(2));
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(report)
}

fn runtime(name: &str) -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
}

/// Builds the link and a client runtime inside its client namespace: threads inherit the
/// namespace of the thread that spawns them, so every socket the bench clients open
/// (reconnections and rebinds included) is on the client side of the link.
fn open_link(n: u32) -> Result<(Arc<ImpairedLink>, Runtime), LinkError> {
    clean_dead_links();
    let prefix = format!("{LINK_PREFIX}-{}-{n}", std::process::id());
    let link = ImpairedLink::create(&prefix, LinkPlan::default())?;
    let rt = link
        .in_client_ns(|| runtime("tmq-bench-cli"))?
        .map_err(|e| LinkError::Setup {
            step: "client runtime".into(),
            detail: e.to_string(),
        })?;
    Ok((Arc::new(link), rt))
}

/// Deletes namespaces of earlier bench runs whose process is gone.
fn clean_dead_links() {
    link::cleanup_dead(LINK_PREFIX);
}

/// Targets are loopback, or the documentation ranges the impairment link gives its
/// namespaces: the bench never loads anyone else's network.
fn check_target(addr: SocketAddr) -> Result<(), BenchError> {
    let allowed = match addr.ip() {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            ip.is_loopback()
                || (o[0], o[1], o[2]) == (192, 0, 2)
                || (o[0], o[1], o[2]) == (198, 51, 100)
        }
        IpAddr::V6(ip) => ip.is_loopback(),
    };
    if allowed {
        Ok(())
    } else {
        Err(BenchError::Target(format!(
            "{addr}: bench targets must be loopback (or the impairment link's 192.0.2.0/24 and \
             198.51.100.0/24)"
        )))
    }
}

struct Ctx<'a> {
    options: &'a StabilityOptions,
    binary: Option<PathBuf>,
    link: Option<Arc<ImpairedLink>>,
    /// Runtime whose threads live in the link's client namespace.
    link_rt: Option<tokio::runtime::Handle>,
    /// Why there is no link, when a case wanted one.
    no_link: Option<String>,
    root: PathBuf,
    nonce: u32,
}

impl Ctx<'_> {
    async fn run_all(&self, cases: &[Case]) -> Report {
        let shape = &self.options.shape;
        let mut progress = Progress::new(cases.len(), self.options.progress);
        let mut results = Vec::new();
        for (index, case) in cases.iter().enumerate() {
            let label = case.condition.label(shape);
            progress.begin(
                index,
                &format!("{} {label} {}", case.scenario, case.transport),
                expected_len(case, self.options),
            );
            let via_link = case.wants_link() && self.link.is_some();
            let result = match self.not_run_reason(case, via_link) {
                Some(why) => RunResult::not_run(case.scenario, case.transport, &label, &why),
                None => match self.run_case(index, case, &label, via_link).await {
                    Ok(mut result) => {
                        if case.wants_link() && !via_link {
                            result.notes.push(format!(
                                "loopback relay instead of the impairment link ({})",
                                self.no_link.as_deref().unwrap_or("unavailable")
                            ));
                        }
                        result
                    }
                    Err(err) => {
                        let mut r = RunResult::not_run(
                            case.scenario,
                            case.transport,
                            &label,
                            "the run failed",
                        );
                        r.notes.push(err.to_string());
                        r
                    }
                },
            };
            results.push(result);
        }
        progress.finish();
        Report {
            results,
            setup: self.setup(),
        }
    }

    /// TLS cases that need kernel TCP to meet real loss, when there is no link: a relay
    /// cannot drop bytes of a TCP stream.
    fn not_run_reason(&self, case: &Case, via_link: bool) -> Option<String> {
        let lossy = matches!(
            case.condition,
            Condition::Loss { loss, reorder } if loss > 0.0 || reorder > 0.0
        ) || case.condition == Condition::Stall(Outage::Drop);
        (case.transport == TransportKind::Tls && lossy && !via_link).then(|| {
            format!(
                "needs the impairment link ({})",
                self.no_link.as_deref().unwrap_or("unavailable")
            )
        })
    }

    fn setup(&self) -> Vec<String> {
        let o = self.options;
        let broker = match &o.target {
            Some(t) => format!("broker: {} (TLS), {} (QUIC)", t.tls, t.quic),
            None => "broker: `twinmq serve`, a fresh child process per run".into(),
        };
        let link = match (&self.link, &self.no_link) {
            (Some(_), _) => {
                "packet faults: the impairment link (netns + TUN), both transports".to_string()
            }
            (None, Some(why)) => format!("packet faults: loopback relay, QUIC only ({why})"),
            (None, None) => "packet faults: none in this selection".to_string(),
        };
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        vec![
            broker,
            link,
            format!(
                "traffic: {} s per run; RTT {} ms added; keep-alive {} s; {cpus} CPUs",
                o.duration.as_secs_f64(),
                o.shape.rtt.as_millis(),
                o.shape.keep_alive.as_secs()
            ),
        ]
    }

    async fn run_case(
        &self,
        index: usize,
        case: &Case,
        label: &str,
        via_link: bool,
    ) -> Result<RunResult, BenchError> {
        let seed = self.options.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let link = self.link.as_ref().filter(|_| via_link);
        let (broker, tls, quic, ca, server_name) = match (&self.options.target, &self.binary) {
            (Some(t), _) => (None, t.tls, t.quic, t.ca.clone(), t.server_name.clone()),
            (None, Some(binary)) => {
                let dir = self.root.join(format!("run-{index}"));
                let plan = broker_fault_plan(case, seed);
                let place = match link {
                    Some(link) => Place::Link {
                        link,
                        tls_port: 20_000 + (index % 10_000) as u16,
                        quic_port: 40_000 + (index % 10_000) as u16,
                    },
                    None => Place::Loopback,
                };
                let b = ChildBroker::start(binary, &dir, &plan, place).await?;
                let (tls, quic, ca) = (b.tls, b.quic, b.ca.clone());
                (Some(b), tls, quic, ca, "localhost".to_string())
            }
            (None, None) => return Err(BenchError::Task("no broker".into())),
        };
        let env = Env {
            case: case.clone(),
            label: label.to_string(),
            dial: Dial {
                transport: case.transport,
                ca,
                server_name,
                keep_alive: self.options.shape.keep_alive,
            },
            broker: if case.transport.is_quic() { quic } else { tls },
            own_broker: broker.is_some(),
            broker_pid: broker.as_ref().map(ChildBroker::pid),
            link: link.cloned(),
            run_id: format!("{:x}-{index}", self.nonce),
            seed,
            shape: self.options.shape.clone(),
            duration: self.options.duration,
        };
        let bound =
            self.options.duration * 3 + self.options.shape.drain * 2 + Duration::from_secs(60);
        let run = async {
            match (&self.link_rt, via_link) {
                // Sockets opened on this runtime's threads are in the client namespace.
                (Some(rt), true) => {
                    let env = env.clone();
                    rt.spawn(async move { run_scenario(&env).await })
                        .await
                        .map_err(|e| BenchError::Task(e.to_string()))?
                }
                _ => run_scenario(&env).await,
            }
        };
        let result = match tokio::time::timeout(bound, run).await {
            Ok(result) => result,
            Err(_) => Err(BenchError::Task(format!(
                "{} {} {}: no result within {bound:?}",
                case.scenario, label, case.transport
            ))),
        };
        if let Some(b) = broker {
            b.stop().await;
        }
        if let Some(link) = link {
            let _ = link.set_plan(LinkPlan::default());
        }
        result
    }
}

async fn run_scenario(env: &Env) -> Result<RunResult, BenchError> {
    match env.case.scenario {
        Scenario::ReconnectStorm => storm::run(env).await,
        _ => scenarios::run(env).await,
    }
}

/// Cases in order: scenario, then condition, then transport.
pub(crate) fn plan(options: &StabilityOptions) -> Vec<Case> {
    let shape = &options.shape;
    let mut cases = Vec::new();
    for &scenario in &options.scenarios {
        let conditions: Vec<Condition> = match scenario {
            Scenario::AckWedge | Scenario::Hol | Scenario::ReconnectStorm => {
                vec![Condition::Plain]
            }
            Scenario::Loss => shape
                .loss_levels
                .iter()
                .map(|&loss| Condition::Loss { loss, reorder: 0.0 })
                .chain(
                    shape
                        .loss_reorder
                        .map(|(loss, reorder)| Condition::Loss { loss, reorder }),
                )
                .collect(),
            Scenario::Rebind => vec![
                Condition::Migration,
                Condition::NatRebinding { idle: false },
                Condition::NatRebinding { idle: true },
            ],
            Scenario::Stall => vec![
                Condition::Stall(Outage::Hold),
                Condition::Stall(Outage::Drop),
            ],
        };
        for condition in conditions {
            for &transport in &options.transports {
                let applies = match condition {
                    Condition::Migration => transport.is_quic(),
                    _ => true,
                };
                if applies {
                    cases.push(Case {
                        scenario,
                        transport,
                        condition,
                    });
                }
            }
        }
    }
    cases
}

/// Faults at the broker's own seams: only `ack-wedge` has them.
fn broker_fault_plan(case: &Case, seed: u64) -> FaultPlan {
    if case.scenario != Scenario::AckWedge {
        return FaultPlan::default();
    }
    // TOML integers are signed.
    let seed = seed & (i64::MAX as u64);
    match case.transport {
        TransportKind::Tls => FaultPlan {
            seed,
            stream: ack_wedge_stream_faults(),
            ..FaultPlan::default()
        },
        _ => FaultPlan {
            seed,
            udp: ack_wedge_udp_faults(),
            ..FaultPlan::default()
        },
    }
}

/// Short writes, then a stall: the broker's writes of acks trickle out.
pub(crate) fn ack_wedge_stream_faults() -> StreamFaults {
    StreamFaults {
        max_write: Some(7),
        stall_after: Some(2_000),
        stall_for: Some(Duration::from_millis(300)),
        ..StreamFaults::default()
    }
}

pub(crate) fn ack_wedge_udp_faults() -> UdpFaults {
    UdpFaults {
        loss: 0.10,
        delay: None,
    }
}

/// About how long a case takes, for the progress bar.
fn expected_len(case: &Case, options: &StabilityOptions) -> Duration {
    match case.scenario {
        Scenario::ReconnectStorm => Duration::from_secs(5),
        _ => {
            scenarios::traffic_len(
                &case.condition,
                case.scenario,
                options.duration,
                &options.shape,
            ) + Duration::from_millis(500)
        }
    }
}

fn nonce() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_pairs_conditions_with_the_transports_they_apply_to() {
        let mut options = StabilityOptions::full(PathBuf::from("twinmq"), Duration::from_secs(1));
        options.scenarios = vec![Scenario::Rebind, Scenario::Loss];
        let cases = plan(&options);
        let rebind: Vec<(TransportKind, Condition)> = cases
            .iter()
            .filter(|c| c.scenario == Scenario::Rebind)
            .map(|c| (c.transport, c.condition))
            .collect();
        assert_eq!(
            rebind.len(),
            8,
            "migration over QUIC; NAT busy and idle over all"
        );
        assert_eq!(rebind[0], (TransportKind::QuicSingle, Condition::Migration));
        assert_eq!(
            rebind[2],
            (TransportKind::Tls, Condition::NatRebinding { idle: false })
        );
        let tls_loss: Vec<bool> = cases
            .iter()
            .filter(|c| c.scenario == Scenario::Loss && c.transport == TransportKind::Tls)
            .map(Case::wants_link)
            .collect();
        assert_eq!(tls_loss, [true; 5]);
    }

    #[test]
    fn only_loopback_and_the_link_ranges_are_targets() {
        for ok in [
            "127.0.0.1:8883",
            "[::1]:8883",
            "192.0.2.1:8883",
            "198.51.100.7:1",
        ] {
            assert!(check_target(ok.parse().expect("addr")).is_ok(), "{ok}");
        }
        for bad in ["10.0.0.1:8883", "8.8.8.8:853", "[2001:db8::1]:1"] {
            assert!(check_target(bad.parse().expect("addr")).is_err(), "{bad}");
        }
    }
}
