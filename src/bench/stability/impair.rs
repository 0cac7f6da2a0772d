//! What stands between the clients and the broker in a run, and the faults that strike it
//! while the traffic flows: outages, address changes, resets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::runner::{Condition, Env};
use super::BenchError;
use crate::bench::path::tcp::TcpRelay;
use crate::bench::path::udp::UdpRelay;
use crate::bench::path::{Impairment, Outage};
use crate::client::Client;
use crate::fault::link::{DirectionStats, Directions, ImpairedLink, LinkPlan, LinkStats, Window};
use crate::fault::stream::StreamFaults;

/// A relay between the clients and the broker (the link, when the case runs over it).
pub(crate) struct RelaySpec {
    pub up: Impairment,
    pub down: Impairment,
    /// Stream relay only: faults on its writes towards the client.
    pub stream_faults: Option<StreamFaults>,
}

/// The faults a steady run strikes while its traffic flows.
pub(crate) enum Faults {
    None,
    Outage {
        after: Duration,
        len: Duration,
        kind: Outage,
    },
    Rebind {
        every: Duration,
        settle: Duration,
    },
}

/// What stands between the clients and the broker in a run.
pub(crate) enum Relay {
    None,
    Udp(UdpRelay),
    Tcp(TcpRelay),
    /// The impairment link: clients reach the broker's own address through it.
    Link(Box<LinkRun>),
}

/// A run over the impairment link.
pub(crate) struct LinkRun {
    link: Arc<ImpairedLink>,
    /// The case's plan, without the fault of the moment.
    base: LinkPlan,
    /// The link's counters when the run began.
    start: LinkStats,
}

impl LinkRun {
    /// A counter of the link, both directions, since the run began.
    fn since_start(&self, counter: fn(&DirectionStats) -> u64) -> u64 {
        let both = |s: &LinkStats| counter(&s.to_server) + counter(&s.to_client);
        both(&self.link.stats()).saturating_sub(both(&self.start))
    }
}

impl Relay {
    /// Puts `spec` between the clients and the broker: the link when the case runs over
    /// it, else a datagram relay (QUIC) or a stream relay (TLS).
    pub async fn start(env: &Env, spec: Option<&RelaySpec>) -> Result<Relay, BenchError> {
        let relay = match spec {
            None => Relay::None,
            Some(RelaySpec { up, .. }) if env.link.is_some() => {
                let link = env
                    .link
                    .clone()
                    .ok_or_else(|| BenchError::Task("no link".into()))?;
                let base = link_plan(up, env.seed);
                link.set_plan(base.clone())
                    .map_err(|e| BenchError::Task(e.to_string()))?;
                Relay::Link(Box::new(LinkRun {
                    start: link.stats(),
                    link,
                    base,
                }))
            }
            Some(RelaySpec { up, down, .. }) if env.case.transport.is_quic() => Relay::Udp(
                UdpRelay::start(env.broker, up.clone(), down.clone(), env.seed)
                    .await
                    .map_err(BenchError::io("UDP relay"))?,
            ),
            Some(RelaySpec {
                up,
                down,
                stream_faults,
            }) => Relay::Tcp(
                TcpRelay::start(
                    env.broker,
                    up.clone(),
                    down.clone(),
                    stream_faults.clone(),
                    env.seed,
                )
                .await
                .map_err(BenchError::io("TCP relay"))?,
            ),
        };
        Ok(relay)
    }

    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Relay::None | Relay::Link(_) => None,
            Relay::Udp(r) => Some(r.addr()),
            Relay::Tcp(r) => Some(r.addr()),
        }
    }

    /// Drops every connection at once, as a rebooted gateway does: the stream relay
    /// resets them, the datagram relay forgets every flow. (The reconnect storm, which
    /// asks for it, never runs over the link.)
    pub fn drop_all(&self) {
        match self {
            Relay::None | Relay::Link(_) => {}
            Relay::Udp(r) => r.forget_flows(),
            Relay::Tcp(r) => r.reset_all(),
        }
    }

    /// Schedules an outage (the link's is struck by [`drive_faults`] in person).
    fn outage(&self, from: Instant, len: Duration, kind: Outage) {
        match self {
            Relay::None | Relay::Link(_) => {}
            Relay::Udp(r) => r.outage(from, len, kind),
            Relay::Tcp(r) => r.outage(from, len, kind),
        }
    }

    /// Datagrams (or, on the link, packets) dropped on purpose during the run.
    pub fn injected_drops(&self) -> Option<u64> {
        match self {
            Relay::Udp(r) => Some(r.stats().dropped()),
            Relay::Link(run) => Some(run.since_start(|d| d.dropped)),
            _ => None,
        }
    }

    /// Packets the link carried during the run (both ways).
    pub fn link_packets(&self) -> Option<u64> {
        match self {
            Relay::Link(run) => Some(run.since_start(|d| d.received)),
            _ => None,
        }
    }
}

/// The link plan of a symmetric impairment.
fn link_plan(imp: &Impairment, seed: u64) -> LinkPlan {
    LinkPlan {
        seed: Some(seed),
        directions: Directions::Both,
        loss: imp.loss,
        delay: (!imp.delay.is_zero()).then_some(imp.delay),
        reorder: imp.reorder,
        reorder_gap: (imp.reorder > 0.0).then_some(imp.reorder_delay),
        ..LinkPlan::default()
    }
}

/// Strikes the faults of the spec while the traffic runs; returns the instants recovery is
/// measured from, and what went wrong striking them.
pub(crate) async fn drive_faults(
    env: &Env,
    faults: &Faults,
    relay: &Relay,
    clients: &[Client],
    start: Instant,
    until: Instant,
) -> (Vec<Instant>, Vec<String>) {
    match faults {
        Faults::None => (Vec::new(), Vec::new()),
        Faults::Outage { after, len, kind } => {
            let from = start + *after;
            let mut errors = Vec::new();
            if let Relay::Link(run) = relay {
                let (link, base) = (&run.link, &run.base);
                tokio::time::sleep_until(from).await;
                let blackhole = LinkPlan {
                    blackholes: vec![Window {
                        from: Duration::ZERO,
                        to: *len,
                    }],
                    ..base.clone()
                };
                if let Err(e) = link.set_plan(blackhole) {
                    errors.push(format!("link blackhole: {e}"));
                }
                tokio::time::sleep_until((from + *len).min(until)).await;
                if let Err(e) = link.set_plan(base.clone()) {
                    errors.push(format!("link restore: {e}"));
                }
            } else {
                relay.outage(from, *len, *kind);
                tokio::time::sleep_until((from + *len).min(until)).await;
            }
            (vec![from + *len], errors)
        }
        Faults::Rebind { every, settle } => {
            let mut events = Vec::new();
            let mut errors = Vec::new();
            let mut at = start + env.shape.lead;
            while at + *settle <= until {
                tokio::time::sleep_until(at).await;
                match (&env.case.condition, relay) {
                    (Condition::Migration, _) => {
                        for c in clients {
                            if let Err(e) = c.rebind() {
                                errors.push(format!("rebind: {e}"));
                            }
                        }
                    }
                    (Condition::NatRebinding { .. }, Relay::Link(run)) => {
                        run.link.rebind_now();
                    }
                    (Condition::NatRebinding { .. }, Relay::Udp(r)) => {
                        if let Err(e) = r.rebind_flows() {
                            errors.push(format!("relay rebind: {e}"));
                        }
                    }
                    (_, Relay::Tcp(r)) => r.reset_all(),
                    _ => errors.push("no way to change the address on this path".into()),
                }
                events.push(Instant::now());
                at += *every;
            }
            (events, errors)
        }
    }
}
