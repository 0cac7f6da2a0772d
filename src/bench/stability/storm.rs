//! `reconnect-storm`: many clients with persistent sessions lose their connections at once
//! (a gateway or NAT reboot) and all come back together.
//!
//! ```text
//!  connect N (paced) ─► each gets message 0 ─► the path drops every connection:
//!     TLS: the relay resets them (RST)      QUIC: the relay forgets every flow (silence)
//!  ─► message 1 published to each (queued by the broker, or sent into the void)
//!  ─► N new clients, same ids, all at once ─► each: CONNACK (session present), message 1
//! ```
//!
//! Recovery per client is from the storm's start to its message 1; "all resumed" is the
//! last of them. Broker CPU is measured over the storm.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::clients;
use super::impair::{Relay, RelaySpec};
use super::ledger::{self, Ledger, Sample, Stamp};
use super::runner::{Env, Probe};
use super::{BenchError, RunResult};
use crate::bench::path::Impairment;
use crate::client::{Client, ClientError, Event, Incoming};
use crate::protocol::QoS;

/// Connections opened at once before the storm (the storm itself is all at once).
const WARM_UP_CONCURRENCY: usize = 25;
/// Attempts of one client to come back (the first connect does not retry by itself).
const ATTEMPTS: u32 = 5;

pub(crate) async fn run(env: &Env) -> Result<RunResult, BenchError> {
    let n = env.shape.storm_clients.max(1);
    let delay = Impairment {
        delay: env.shape.rtt / 2,
        ..Impairment::default()
    };
    let spec = RelaySpec {
        up: delay.clone(),
        down: delay,
        stream_faults: None,
    };
    let relay = Relay::start(env, Some(&spec)).await?;
    let via = relay.addr().unwrap_or(env.broker);
    let ledger = Arc::new(Ledger::new(Instant::now()));
    let topics: Vec<String> = (0..n)
        .map(|i| format!("stab/{}/c/{i}", env.run_id))
        .collect();
    for _ in 0..n {
        ledger.add_publisher(true);
    }
    let subs: Vec<u32> = (0..n as u32)
        .map(|i| ledger.add_subscriber(vec![i]))
        .collect();
    let (publisher, _incoming) = Client::connect(
        env.dial
            .options(env.broker, &format!("stab-{}-pub", env.run_id)),
    )
    .await
    .map_err(BenchError::client("storm publisher connects"))?;

    // Warm-up: every client connects, subscribes and hears message 0.
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(WARM_UP_CONCURRENCY));
    let mut joins = JoinSet::new();
    for (i, topic) in topics.iter().enumerate() {
        let (gate, options) = (
            Arc::clone(&gate),
            env.dial.options(via, &client_id(env, i)).reconnect(None),
        );
        let topic = topic.clone();
        joins.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let (client, incoming) = Client::connect(options).await?;
            clients::subscribe(&client, &topic, None).await?;
            Ok::<_, ClientError>((i, client, incoming))
        });
    }
    let mut old: Vec<Client> = Vec::new();
    let mut loops = JoinSet::new();
    while let Some(joined) = joins.join_next().await {
        let (i, client, incoming) = joined
            .map_err(|e| BenchError::Task(e.to_string()))?
            .map_err(BenchError::client("storm client connects"))?;
        loops.spawn(clients::subscribe_loop(
            subs[i],
            incoming,
            Arc::clone(&ledger),
            stop_rx.clone(),
        ));
        old.push(client);
    }
    publish_to_all(&publisher, &ledger, &topics, 0).await;
    ledger
        .wait_delivered(Instant::now() + env.shape.drain)
        .await;
    let warm_missing = ledger.missing();

    // Every connection drops at once.
    let drop_at = Instant::now();
    relay.drop_all();
    let _ = stop_tx.send(true);
    while loops.join_next().await.is_some() {}
    drop(old);
    publish_to_all(&publisher, &ledger, &topics, 1).await;

    // The storm: every client comes back at once.
    let probe = Probe::start(env);
    let storm_at = Instant::now();
    let deadline = storm_at + Duration::from_secs(30) + Duration::from_millis(50 * n as u64);
    let mut storm = JoinSet::new();
    for (i, &sub) in subs.iter().enumerate() {
        let options = env.dial.options(via, &client_id(env, i)).reconnect(None);
        let ledger = Arc::clone(&ledger);
        storm.spawn(async move { come_back(options, ledger, sub, deadline).await });
    }
    let mut resumed_ms = Vec::new();
    let mut connack_ms = Vec::new();
    let mut back: Vec<Client> = Vec::new();
    let mut failed = 0u64;
    let mut retries = 0u64;
    let mut fresh_sessions = 0u64;
    let mut last_error = None;
    while let Some(joined) = storm.join_next().await {
        match joined {
            Ok(Return {
                client,
                connected,
                resumed,
                attempts,
                error,
            }) => {
                retries += u64::from(attempts.saturating_sub(1));
                if let Some(at) = connected {
                    connack_ms.push(at.duration_since(storm_at).as_secs_f64() * 1000.0);
                }
                match (client, resumed) {
                    (Some(client), Some(at)) => {
                        resumed_ms.push(at.duration_since(storm_at).as_secs_f64() * 1000.0);
                        fresh_sessions += u64::from(!client.session_present());
                        back.push(client);
                    }
                    (client, _) => {
                        failed += 1;
                        back.extend(client);
                    }
                }
                if error.is_some() {
                    last_error = error;
                }
            }
            Err(e) => {
                failed += 1;
                last_error = Some(e.to_string());
            }
        }
    }
    let all_resumed = Instant::now();
    let (cpu, rss, kernel_drops) = probe.finish();
    ledger
        .wait_delivered(Instant::now() + env.shape.drain)
        .await;
    let injected = relay.injected_drops();
    back.push(publisher);
    clients::disconnect_all(back).await;

    let totals = ledger.totals();
    let samples = ledger.samples();
    let drop_us = ledger.us(drop_at);
    let start_us = samples.iter().map(|s| s.sent_us).min().unwrap_or(0);
    let mut latencies: Vec<f64> = samples
        .iter()
        .filter(|s| s.sent_us < drop_us)
        .map(Sample::latency_ms)
        .collect();
    latencies.sort_by(f64::total_cmp);
    resumed_ms.sort_by(f64::total_cmp);
    connack_ms.sort_by(f64::total_cmp);
    let storm_s = all_resumed.duration_since(storm_at).as_secs_f64();
    let mut r = RunResult {
        reconnects: n as u64 + retries,
        stalled_sessions: totals.subscribers_missing + failed,
        stall_episodes: 0,
        recovery_ms_p50: ledger::percentile(&resumed_ms, 50.0),
        recovery_ms_p99: ledger::percentile(&resumed_ms, 99.0),
        goodput_msgs_per_s: (storm_s > 0.0).then(|| resumed_ms.len() as f64 / storm_s),
        broker_cpu_s: cpu,
        broker_rss_bytes: rss,
        udp_injected_drops: injected,
        udp_kernel_drops: kernel_drops,
        series: samples.iter().map(|s| s.point(start_us)).collect(),
        ..RunResult::measured(env, &totals, &latencies)
    };
    r.extra.push(("clients", n as f64));
    r.extra.push(("all_resumed_ms", storm_s * 1000.0));
    if let (Some(p50), Some(p99)) = (
        ledger::percentile(&connack_ms, 50.0),
        ledger::percentile(&connack_ms, 99.0),
    ) {
        r.extra.push(("connack_ms_p50", p50));
        r.extra.push(("connack_ms_p99", p99));
        r.notes.push(format!(
            "CONNACK after {p50:.0} ms (p50), {p99:.0} ms (p99)"
        ));
    }
    r.notes.push(format!(
        "{n} clients dropped at once ({}) and came back together; all resumed in {:.0} ms; \
         recovery = each client's time to its queued message; latency = before the drop; \
         goodput = clients resumed per second",
        if env.case.transport.is_quic() {
            "the relay forgot every flow"
        } else {
            "the relay reset every connection"
        },
        storm_s * 1000.0
    ));
    if warm_missing > 0 {
        r.notes.push(format!(
            "{warm_missing} warm-up messages had not arrived by the drop"
        ));
    }
    if retries > 0 {
        r.notes
            .push(format!("{retries} connection attempts retried"));
    }
    if fresh_sessions > 0 {
        r.notes.push(format!(
            "{fresh_sessions} clients found no session (session_present = 0)"
        ));
    }
    if failed > 0 {
        r.notes.push(format!(
            "{failed} clients did not resume: {}",
            last_error.unwrap_or_default()
        ));
    }
    Ok(r)
}

fn client_id(env: &Env, i: usize) -> String {
    format!("stab-{}-c{i}", env.run_id)
}

/// Publishes message `seq` to every topic (publisher `i` is topic `i`) and waits for the
/// acknowledgements, all at once.
async fn publish_to_all(publisher: &Client, ledger: &Arc<Ledger>, topics: &[String], seq: u64) {
    let mut set = JoinSet::new();
    for (i, topic) in topics.iter().enumerate() {
        let stamp = ledger.stamp(i as u32, seq);
        let (client, ledger, topic) = (publisher.clone(), Arc::clone(ledger), topic.clone());
        set.spawn(async move {
            let publish = client.publish(&topic, stamp.payload(64), QoS::AtLeastOnce, false);
            match tokio::time::timeout(Duration::from_secs(20), publish).await {
                Ok(Ok(())) => ledger.on_acked(i as u32, seq),
                _ => ledger.on_failed(i as u32),
            }
        });
    }
    while set.join_next().await.is_some() {}
}

struct Return {
    client: Option<Client>,
    /// When its CONNACK arrived.
    connected: Option<Instant>,
    /// When message 1 arrived.
    resumed: Option<Instant>,
    attempts: u32,
    error: Option<String>,
}

/// Connects (retrying a few times) and reads until message 1 arrives or the deadline.
async fn come_back(
    options: crate::client::ClientOptions,
    ledger: Arc<Ledger>,
    sub: u32,
    deadline: Instant,
) -> Return {
    let mut attempts = 0;
    let mut error = None;
    let (client, mut incoming): (Client, Incoming) = loop {
        attempts += 1;
        match tokio::time::timeout_at(deadline, Client::connect(options.clone())).await {
            Ok(Ok(pair)) => break pair,
            Ok(Err(e)) => error = Some(e.to_string()),
            Err(_) => error = Some("no connection before the deadline".into()),
        }
        if attempts >= ATTEMPTS || Instant::now() >= deadline {
            return Return {
                client: None,
                connected: None,
                resumed: None,
                attempts,
                error,
            };
        }
        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempts))).await;
    };
    let connected = Some(Instant::now());
    let resumed = tokio::time::timeout_at(deadline, async {
        while let Some(event) = incoming.recv().await {
            if let Event::Message(m) = event {
                let now = Instant::now();
                ledger.on_message(sub, &m, now);
                if Stamp::parse(&m.payload).is_some_and(|s| s.seq == 1) {
                    return Some(now);
                }
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    if resumed.is_none() {
        error = Some("message 1 never arrived".into());
    }
    // Later copies (a resent message 1) are still counted, until the client is closed.
    let (_stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        clients::subscribe_loop(sub, incoming, ledger, stop_rx).await;
        drop(_stop_tx);
    });
    Return {
        client: Some(client),
        connected,
        resumed,
        attempts,
        error,
    }
}
