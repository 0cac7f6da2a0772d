//! The steady-flow scenarios (`ack-wedge`, `loss`, `rebind`, `hol`, `stall`): a
//! [`Spec`] says who publishes what, who subscribes, what path they take and which faults
//! strike when; [`run_steady`] runs it and [`finish`] turns the ledger into a result.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::clients::{self, Pace, Publisher};
use super::impair::{drive_faults, Faults, Relay, RelaySpec};
use super::ledger::{self, Ledger, Sample};
use super::runner::{self, Condition, Env, Probe, Readings};
use super::{BenchError, RunResult, Scenario, Shape};
use crate::bench::path::{Impairment, Outage};
use crate::client::Client;
use crate::protocol::QoS;

/// Upper bound on the messages of one publisher in one run, whatever the pace.
const MAX_MESSAGES: u64 = 500_000;
/// Queue of the rate-capped direction in `hol` (datagram relay; a stream relay pushes
/// back instead).
const HOL_QUEUE: usize = 64 * 1024;

/// How long the traffic of a case lasts: `duration`, stretched when the faults need more.
pub(crate) fn traffic_len(
    condition: &Condition,
    scenario: Scenario,
    duration: Duration,
    shape: &Shape,
) -> Duration {
    match scenario {
        Scenario::Stall => {
            duration.max(stall_lead(duration, shape) + shape.stall + stall_settle(shape))
        }
        Scenario::Rebind => {
            let (every, settle) = rebind_timing(condition, shape);
            duration.max(shape.lead + every * shape.min_rebinds.saturating_sub(1) + settle)
        }
        _ => duration,
    }
}

fn stall_lead(duration: Duration, shape: &Shape) -> Duration {
    shape.lead.max(duration / 4)
}

/// Time after the stall for the path to recover and the backlog to flow.
fn stall_settle(shape: &Shape) -> Duration {
    shape
        .stall
        .min(Duration::from_secs(3))
        .max(Duration::from_secs(1))
}

/// Interval between address changes, and the quiet time each needs before the run ends.
/// After a NAT rebinding a receive-only client stays silent until its next PINGREQ, so
/// changes are a keep-alive apart.
fn rebind_timing(condition: &Condition, shape: &Shape) -> (Duration, Duration) {
    match condition {
        Condition::NatRebinding { idle: true } => (
            shape.keep_alive + Duration::from_secs(1),
            shape.keep_alive + Duration::from_millis(500),
        ),
        _ => (shape.rebind_every, Duration::from_millis(500)),
    }
}

struct Spec {
    publishers: Vec<PubSpec>,
    subscribers: Vec<SubSpec>,
    /// `None`: clients connect straight to the broker.
    path: Option<RelaySpec>,
    faults: Faults,
    traffic: Duration,
}

struct PubSpec {
    topic: &'static str,
    qos: QoS,
    pace: Pace,
    payload: usize,
    /// Counts for latency.
    measured: bool,
    /// Through the relay (or straight to the broker).
    via_path: bool,
}

#[derive(Clone)]
struct SubSpec {
    /// (filter under the run's prefix, data stream name).
    filters: Vec<(&'static str, Option<&'static str>)>,
    /// Indices of the publishers it should hear.
    expects: Vec<u32>,
    via_path: bool,
}

/// What a steady run leaves for [`finish`].
struct Steady {
    ledger: Arc<Ledger>,
    start: Instant,
    /// When each fault ended (or each address change happened).
    events: Vec<Instant>,
    subscribers: Vec<u32>,
    /// Publishers with publishes still unanswered after the drain.
    publishers_pending: u64,
    reconnects: u64,
    readings: Readings,
    injected_drops: Option<u64>,
    link_packets: Option<u64>,
    fault_errors: Vec<String>,
}

pub(crate) async fn run(env: &Env) -> Result<RunResult, BenchError> {
    let spec = spec_for(env)?;
    let steady = run_steady(env, &spec).await?;
    Ok(finish(env, &spec, steady))
}

fn spec_for(env: &Env) -> Result<Spec, BenchError> {
    let shape = &env.shape;
    let half = shape.rtt / 2;
    let delay = Impairment {
        delay: half,
        ..Impairment::default()
    };
    let traffic = traffic_len(&env.case.condition, env.case.scenario, env.duration, shape);
    let steady_pubs = || {
        [QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .zip(["p0", "p1"])
            .map(|(qos, topic)| PubSpec {
                topic,
                qos,
                pace: Pace::Rate(shape.steady_rate),
                payload: 128,
                measured: true,
                via_path: true,
            })
            .collect::<Vec<_>>()
    };
    let two_subs = || {
        vec![
            SubSpec {
                filters: vec![("#", None)],
                expects: vec![0, 1],
                via_path: true,
            };
            2
        ]
    };
    let relay = |up: Impairment, down: Impairment| {
        Some(RelaySpec {
            up,
            down,
            stream_faults: None,
        })
    };
    let spec = match env.case.scenario {
        Scenario::AckWedge => Spec {
            publishers: vec![PubSpec {
                topic: "burst",
                qos: QoS::AtLeastOnce,
                pace: Pace::Bursts {
                    every: Duration::from_millis(100),
                    min: 1,
                    max: 24,
                    seed: env.seed,
                },
                payload: 64,
                measured: true,
                via_path: true,
            }],
            subscribers: vec![SubSpec {
                filters: vec![("burst", None)],
                expects: vec![0],
                via_path: true,
            }],
            path: if env.own_broker {
                // The faults are at the broker's own seams (its fault plan).
                None
            } else if env.case.transport.is_quic() {
                let lossy = Impairment {
                    loss: runner::ack_wedge_udp_faults().loss,
                    ..Impairment::default()
                };
                relay(Impairment::default(), lossy)
            } else {
                Some(RelaySpec {
                    up: Impairment::default(),
                    down: Impairment::default(),
                    stream_faults: Some(runner::ack_wedge_stream_faults()),
                })
            },
            faults: Faults::None,
            traffic,
        },
        Scenario::Loss => {
            let Condition::Loss { loss, reorder } = env.case.condition else {
                return Err(BenchError::Task("loss without a loss level".into()));
            };
            let lossy = Impairment {
                loss: loss / 100.0,
                reorder: reorder / 100.0,
                reorder_delay: shape.rtt,
                delay: half,
                ..Impairment::default()
            };
            Spec {
                publishers: ["p0", "p1"]
                    .into_iter()
                    .map(|topic| PubSpec {
                        topic,
                        qos: QoS::AtLeastOnce,
                        pace: Pace::Rate(shape.loss_rate),
                        payload: shape.loss_payload,
                        measured: true,
                        via_path: true,
                    })
                    .collect(),
                subscribers: two_subs(),
                path: relay(lossy.clone(), lossy),
                faults: Faults::None,
                traffic,
            }
        }
        Scenario::Rebind => {
            let (every, settle) = rebind_timing(&env.case.condition, shape);
            let mut publishers = steady_pubs();
            if env.case.condition == (Condition::NatRebinding { idle: true }) {
                for p in &mut publishers {
                    p.pace = Pace::Rate(shape.idle_rate);
                }
            }
            Spec {
                publishers,
                subscribers: two_subs(),
                path: relay(delay.clone(), delay),
                faults: Faults::Rebind { every, settle },
                traffic,
            }
        }
        Scenario::Hol => Spec {
            publishers: vec![
                PubSpec {
                    topic: "large",
                    qos: QoS::AtLeastOnce,
                    pace: Pace::Bursts {
                        every: Duration::from_secs(1),
                        min: shape.hol_burst,
                        max: shape.hol_burst,
                        seed: env.seed,
                    },
                    payload: shape.hol_large,
                    measured: false,
                    via_path: false,
                },
                PubSpec {
                    topic: "small",
                    qos: QoS::AtLeastOnce,
                    pace: Pace::Rate(20.0),
                    payload: 64,
                    measured: true,
                    via_path: false,
                },
            ],
            subscribers: vec![SubSpec {
                filters: vec![("large", Some("large")), ("small", Some("small"))],
                expects: vec![0, 1],
                via_path: true,
            }],
            path: relay(
                delay.clone(),
                Impairment {
                    rate: Some(shape.hol_rate),
                    queue_limit: HOL_QUEUE,
                    ..delay
                },
            ),
            faults: Faults::None,
            traffic,
        },
        Scenario::Stall => {
            let Condition::Stall(kind) = env.case.condition else {
                return Err(BenchError::Task("stall without an outage".into()));
            };
            Spec {
                publishers: steady_pubs(),
                subscribers: two_subs(),
                path: relay(delay.clone(), delay),
                faults: Faults::Outage {
                    after: stall_lead(env.duration, shape),
                    len: shape.stall,
                    kind,
                },
                traffic,
            }
        }
        Scenario::ReconnectStorm => {
            return Err(BenchError::Task("the storm is not a steady flow".into()))
        }
    };
    Ok(spec)
}

fn topic(env: &Env, suffix: &str) -> String {
    format!("stab/{}/{suffix}", env.run_id)
}

async fn run_steady(env: &Env, spec: &Spec) -> Result<Steady, BenchError> {
    let relay = Relay::start(env, spec.path.as_ref()).await?;
    let path_addr = relay.addr().unwrap_or(env.broker);
    let ledger = Arc::new(Ledger::new(Instant::now()));
    for p in &spec.publishers {
        ledger.add_publisher(p.measured);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sub_tasks = JoinSet::new();
    let mut sub_ids = Vec::new();
    let mut via_path: Vec<Client> = Vec::new();
    let mut all: Vec<Client> = Vec::new();
    for (i, s) in spec.subscribers.iter().enumerate() {
        let addr = if s.via_path { path_addr } else { env.broker };
        let id = format!("stab-{}-s{i}", env.run_id);
        let (client, incoming) = Client::connect(env.dial.options(addr, &id))
            .await
            .map_err(BenchError::client(format!("subscriber {i} connects")))?;
        for (filter, stream) in &s.filters {
            clients::subscribe(&client, &topic(env, filter), *stream)
                .await
                .map_err(BenchError::client(format!("subscriber {i} subscribes")))?;
        }
        let lid = ledger.add_subscriber(s.expects.clone());
        sub_ids.push(lid);
        sub_tasks.spawn(clients::subscribe_loop(
            lid,
            incoming,
            Arc::clone(&ledger),
            stop_rx.clone(),
        ));
        if s.via_path {
            via_path.push(client.clone());
        }
        all.push(client);
    }
    let mut publishers = Vec::new();
    for (i, p) in spec.publishers.iter().enumerate() {
        let addr = if p.via_path { path_addr } else { env.broker };
        let id = format!("stab-{}-p{i}", env.run_id);
        let (client, _incoming) = Client::connect(env.dial.options(addr, &id))
            .await
            .map_err(BenchError::client(format!("publisher {i} connects")))?;
        if p.via_path {
            via_path.push(client.clone());
        }
        all.push(client.clone());
        publishers.push(Publisher {
            id: i as u32,
            client,
            topic: topic(env, p.topic),
            qos: p.qos,
            payload_len: p.payload,
            pace: p.pace,
        });
    }

    let probe = Probe::start(env);
    let start = Instant::now();
    let until = start + spec.traffic;
    let drain_until = until + env.shape.drain;
    let mut pub_tasks = JoinSet::new();
    for p in publishers {
        let cap = max_messages(&p.pace, spec.traffic);
        pub_tasks.spawn(p.run(Arc::clone(&ledger), until, drain_until, cap));
    }
    let (events, fault_errors) =
        drive_faults(env, &spec.faults, &relay, &via_path, start, until).await;
    let mut publishers_pending = 0;
    while let Some(outcome) = pub_tasks.join_next().await {
        match outcome {
            Ok(o) => publishers_pending += u64::from(o.pending > 0),
            Err(e) => return Err(BenchError::Task(e.to_string())),
        }
    }
    ledger.wait_delivered(drain_until).await;
    let readings = probe.finish();
    let reconnects = all.iter().map(|c| c.connections().saturating_sub(1)).sum();
    let _ = stop_tx.send(true);
    clients::disconnect_all(all).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while sub_tasks.join_next().await.is_some() {}
    })
    .await;
    sub_tasks.abort_all();
    Ok(Steady {
        injected_drops: relay.injected_drops(),
        link_packets: relay.link_packets(),
        ledger,
        start,
        events,
        subscribers: sub_ids,
        publishers_pending,
        reconnects,
        readings,
        fault_errors,
    })
}

fn max_messages(pace: &Pace, traffic: Duration) -> u64 {
    let n = match *pace {
        Pace::Rate(hz) => (hz * traffic.as_secs_f64()).ceil() as u64 + 1,
        Pace::Bursts { every, max, .. } => {
            (traffic.as_secs_f64() / every.as_secs_f64().max(0.001)).ceil() as u64 * max + max
        }
    };
    n.min(MAX_MESSAGES)
}

fn finish(env: &Env, spec: &Spec, s: Steady) -> RunResult {
    let totals = s.ledger.totals();
    let measured = s.ledger.measured_samples();
    let all = s.ledger.samples();
    let start_us = s.ledger.us(s.start);
    let mut latencies: Vec<f64> = measured.iter().map(Sample::latency_ms).collect();
    let series: Vec<(f64, f64)> = measured.iter().map(|x| x.point(start_us)).collect();
    latencies.sort_by(f64::total_cmp);
    let events_us: Vec<u64> = s.events.iter().map(|e| s.ledger.us(*e)).collect();
    let (recoveries, unrecovered) = ledger::recovery_ms(&all, &events_us, &s.subscribers);
    let last_us = all.iter().map(|x| x.recv_us).max().unwrap_or(start_us);
    let window = (last_us.saturating_sub(start_us) as f64 / 1e6).max(spec.traffic.as_secs_f64());
    let (cpu, rss, kernel_drops) = s.readings;
    let mut result = RunResult {
        reconnects: s.reconnects,
        stalled_sessions: totals.subscribers_missing + s.publishers_pending,
        stall_episodes: ledger::stall_episodes(&all, env.shape.stall_threshold),
        recovery_ms_p50: ledger::percentile(&recoveries, 50.0),
        recovery_ms_p99: ledger::percentile(&recoveries, 99.0),
        goodput_msgs_per_s: Some(totals.delivered as f64 / window),
        broker_cpu_s: cpu,
        broker_rss_bytes: rss,
        udp_injected_drops: s.injected_drops.filter(|_| env.case.transport.is_quic()),
        udp_kernel_drops: kernel_drops,
        series,
        ..RunResult::measured(env, &totals, &latencies)
    };
    if totals.duplicated > 0 {
        result.notes.push(format!(
            "duplicates: {} QoS 1 copies not marked DUP (a publisher's resend after a \
             reconnect is a new message to the broker), {} QoS 2 copies",
            totals.duplicated - totals.duplicated_qos2,
            totals.duplicated_qos2
        ));
    }
    if totals.failed > 0 {
        result
            .notes
            .push(format!("{} publishes failed", totals.failed));
    }
    if unrecovered > 0 {
        result.notes.push(format!(
            "{unrecovered} (fault, subscriber) pairs saw no delivery after the fault"
        ));
        result.extra.push(("unrecovered", unrecovered as f64));
    }
    if let (Some(drops), true) = (s.injected_drops, env.link.is_some()) {
        result.extra.push(("link_dropped_packets", drops as f64));
    }
    if let Some(packets) = s.link_packets {
        result.extra.push(("link_packets", packets as f64));
    }
    result.notes.extend(s.fault_errors);
    describe(env, spec, &s.events, &all, &mut result);
    result
}

/// Scenario-specific figures and notes.
fn describe(env: &Env, spec: &Spec, events: &[Instant], all: &[Sample], r: &mut RunResult) {
    let shape = &env.shape;
    match (env.case.scenario, env.case.condition) {
        (Scenario::AckWedge, _) => {
            r.notes
                .push(format!("{} of {} publishes acknowledged", r.acked, r.sent));
            r.notes.push(if !env.own_broker {
                "faults applied by the relay (the target's own seams are out of reach)".into()
            } else if env.case.transport.is_quic() {
                "broker's datagrams: 10% loss below quinn".into()
            } else {
                "broker's writes: at most 7 bytes each, a 300 ms stall after 2 kB".into()
            });
        }
        (Scenario::Loss, Condition::Loss { loss, reorder }) => {
            r.extra.push(("loss_pct", loss));
            r.extra.push(("reorder_pct", reorder));
            r.extra.push((
                "offered_msgs_per_s",
                shape.loss_rate * spec.publishers.len() as f64,
            ));
        }
        (Scenario::Rebind, condition) => {
            let n = events.len();
            r.extra.push(("address_changes", n as f64));
            let quic = env.case.transport.is_quic();
            let what = match condition {
                Condition::Migration => {
                    format!("{n} client-side rebinds; quinn PINGs on the new path at once")
                }
                _ if !quic && env.link.is_none() => format!(
                    "{n} address changes; the relay resets every TCP connection (standing in \
                     for the link's NAT rebinding)"
                ),
                _ if !quic => format!(
                    "{n} NAT rebindings on the link; the client's next TCP segment leaves from \
                     a new port, the broker answers RST, the client reconnects and resumes"
                ),
                _ => format!(
                    "{n} NAT rebindings; the broker learns the new address from the client's \
                     next packet"
                ),
            };
            r.notes.push(what);
            r.notes.push(match condition {
                Condition::NatRebinding { idle: true } => format!(
                    "{} msg/s per publisher: a subscriber with nothing to acknowledge stays \
                     unreachable until it next sends (its PINGREQ, every {} s of keep-alive{})",
                    shape.idle_rate,
                    shape.keep_alive.as_secs(),
                    if quic { "; QUIC PING: 10 s" } else { "" }
                ),
                Condition::NatRebinding { idle: false } => {
                    "busy: a subscriber's next ACK, within the ACK delay, goes out on the new \
                     port"
                        .into()
                }
                _ => String::new(),
            });
            r.notes.retain(|n| !n.is_empty());
        }
        (Scenario::Hol, _) => {
            let overtakes = overtakes(all, 0, 1);
            r.extra.push(("hol_overtakes", overtakes as f64));
            let mut large: Vec<f64> = all
                .iter()
                .filter(|s| s.publisher == 0)
                .map(Sample::latency_ms)
                .collect();
            large.sort_by(f64::total_cmp);
            if let Some(p50) = ledger::percentile(&large, 50.0) {
                r.extra.push(("hol_large_latency_ms_p50", p50));
            }
            r.notes.push(format!(
                "latency is the small topic's; {} B/s cap towards the subscriber; {} x {} KiB \
                 each second on the large topic; {overtakes} small messages overtook an \
                 earlier large one",
                shape.hol_rate,
                shape.hol_burst,
                shape.hol_large / 1024
            ));
        }
        (Scenario::Stall, Condition::Stall(kind)) => {
            r.notes.push(format!(
                "path stopped for {} s ({}); recovery from its end",
                shape.stall.as_secs_f64(),
                match kind {
                    Outage::Hold => "everything held, then delivered",
                    Outage::Drop => "every packet dropped",
                }
            ));
        }
        _ => {}
    }
}

/// Deliveries of `small` that arrived before a message of `large` sent earlier: with one
/// byte stream this cannot happen; with a stream per topic it should.
fn overtakes(samples: &[Sample], large: u32, small: u32) -> u64 {
    let mut earliest_large_later = u64::MAX;
    let mut count = 0;
    for s in samples.iter().rev() {
        if s.publisher == large {
            earliest_large_later = earliest_large_later.min(s.sent_us);
        } else if s.publisher == small && earliest_large_later < s.sent_us {
            count += 1;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overtake_is_a_small_message_ahead_of_an_earlier_large_one() {
        let s = |publisher, sent_us| Sample {
            subscriber: 0,
            publisher,
            sent_us,
            recv_us: 0,
        };
        // Arrival order: small@5 arrives before large@1 -> one overtake; small@9 after all.
        let samples = [s(0, 0), s(1, 5), s(0, 1), s(1, 9)];
        assert_eq!(overtakes(&samples, 0, 1), 1);
        let in_order = [s(0, 0), s(0, 1), s(1, 5), s(1, 9)];
        assert_eq!(overtakes(&in_order, 0, 1), 0);
    }

    #[test]
    fn runs_stretch_to_fit_their_faults() {
        let shape = Shape::full();
        let d = Duration::from_secs(2);
        assert_eq!(
            traffic_len(&Condition::Stall(Outage::Hold), Scenario::Stall, d, &shape),
            Duration::from_secs(9)
        );
        assert_eq!(
            traffic_len(
                &Condition::NatRebinding { idle: true },
                Scenario::Rebind,
                d,
                &shape
            ),
            Duration::from_millis(12_500)
        );
        assert_eq!(traffic_len(&Condition::Plain, Scenario::Hol, d, &shape), d);
        assert_eq!(max_messages(&Pace::Rate(10.0), Duration::from_secs(2)), 21);
    }
}
