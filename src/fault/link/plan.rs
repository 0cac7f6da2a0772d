//! What the impairment link does to packets, read from TOML like the rest of a
//! [`FaultPlan`](crate::fault::FaultPlan).
//!
//! ```toml
//! seed = 42                      # optional: the fault plan's seed is used otherwise
//! directions = "both"            # or "to_server" / "to_client"
//! loss = 0.05                    # uniform loss
//! delay = "20ms"
//! jitter = "5ms"                 # uniform in ±jitter; order is kept
//! reorder = 0.2                  # held back by reorder_gap, so later packets overtake
//! reorder_gap = "10ms"
//! duplicate = 0.01
//! bandwidth_bps = 10_000_000     # token bucket, bits per second
//! packet_rate = 2000.0           # token bucket, packets per second
//! rate_burst = "10ms"            # bucket depth, in time at the rate (at least one packet)
//! queue_limit = 1000             # packets waiting for the rate cap before tail drop
//! rebind_at = ["5s", "10s"]      # the client's NAT maps every flow to a new port
//! rebind_every = "3s"
//! [bursty_loss]                  # Gilbert-Elliott
//! p_bad = 0.01                   # per packet: good → bad
//! p_good = 0.3                   # per packet: bad → good
//! loss_bad = 1.0
//! [[blackholes]]                 # everything is dropped in [from, to)
//! from = "2s"
//! to = "7s"
//! ```
//!
//! Times (`blackholes`, `rebind_at`, `rebind_every`) count from the moment the plan takes
//! effect: [`ImpairedLink::create`](super::ImpairedLink::create) or
//! [`ImpairedLink::set_plan`](super::ImpairedLink::set_plan).

use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer};

use super::LinkError;

/// Which directions the impairments apply to. Rebinding always concerns the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Directions {
    #[default]
    Both,
    ToServer,
    ToClient,
}

/// Gilbert-Elliott bursty loss: a two-state chain stepped once per packet.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurstyLoss {
    /// Probability of moving from the good to the bad state.
    pub p_bad: f64,
    /// Probability of moving from the bad to the good state.
    pub p_good: f64,
    /// Loss probability in the bad state.
    #[serde(default = "one")]
    pub loss_bad: f64,
    /// Loss probability in the good state.
    #[serde(default)]
    pub loss_good: f64,
}

fn one() -> f64 {
    1.0
}

/// A time window `[from, to)`, counted from when the plan took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    #[serde(with = "crate::config::units::duration")]
    pub from: Duration,
    #[serde(with = "crate::config::units::duration")]
    pub to: Duration,
}

impl Window {
    pub fn contains(&self, t: Duration) -> bool {
        self.from <= t && t < self.to
    }
}

/// The impairments of the link; all off by default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkPlan {
    /// Seed of the link's generator; `None` means 0 (a `FaultPlan` fills in its own).
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub directions: Directions,
    /// Uniform loss probability per packet.
    #[serde(default)]
    pub loss: f64,
    #[serde(default)]
    pub bursty_loss: Option<BurstyLoss>,
    #[serde(default, with = "crate::config::units::duration::option")]
    pub delay: Option<Duration>,
    /// Each packet's delay is `delay` plus a uniform offset in `[-jitter, +jitter]`
    /// (never below zero); packets still leave in order unless `reorder` picks them.
    #[serde(default, with = "crate::config::units::duration::option")]
    pub jitter: Option<Duration>,
    /// Probability that a packet is held back by `reorder_gap`, letting later ones pass.
    #[serde(default)]
    pub reorder: f64,
    /// How long a reordered packet is held back (default 10 ms).
    #[serde(default, with = "crate::config::units::duration::option")]
    pub reorder_gap: Option<Duration>,
    /// Probability that a packet is sent twice.
    #[serde(default)]
    pub duplicate: f64,
    #[serde(default)]
    pub blackholes: Vec<Window>,
    /// Bandwidth cap in bits per second.
    #[serde(default)]
    pub bandwidth_bps: Option<u64>,
    /// Packet-rate cap in packets per second.
    #[serde(default)]
    pub packet_rate: Option<f64>,
    /// Depth of the token buckets, as time at the capped rate (default 10 ms; never less
    /// than one full-size packet).
    #[serde(default, with = "crate::config::units::duration::option")]
    pub rate_burst: Option<Duration>,
    /// Packets that may wait for the rate cap before new ones are dropped (default 1000).
    #[serde(default)]
    pub queue_limit: Option<usize>,
    /// Times at which the client's flows are given new source ports.
    #[serde(default, deserialize_with = "durations")]
    pub rebind_at: Vec<Duration>,
    /// Rebind periodically, every this long.
    #[serde(default, with = "crate::config::units::duration::option")]
    pub rebind_every: Option<Duration>,
}

fn durations<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Duration>, D::Error> {
    #[derive(Deserialize)]
    struct One(#[serde(with = "crate::config::units::duration")] Duration);
    let list: Vec<One> = Vec::deserialize(deserializer)?;
    Ok(list.into_iter().map(|One(d)| d).collect())
}

pub(crate) const DEFAULT_REORDER_GAP: Duration = Duration::from_millis(10);
pub(crate) const DEFAULT_RATE_BURST: Duration = Duration::from_millis(10);
pub(crate) const DEFAULT_QUEUE_LIMIT: usize = 1000;

impl LinkPlan {
    /// Reads a plan from TOML text (the `[link]` table's contents).
    pub fn from_toml(text: &str) -> Result<LinkPlan, LinkError> {
        let plan: LinkPlan = Figment::from(Toml::string(text))
            .extract()
            .map_err(|e| LinkError::Plan(e.to_string()))?;
        plan.validate()?;
        Ok(plan)
    }

    /// True if the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        LinkPlan {
            seed: None,
            ..self.clone()
        } == LinkPlan::default()
    }

    /// Rejects probabilities outside `[0, 1]`, empty windows and zero rates.
    pub fn validate(&self) -> Result<(), LinkError> {
        let mut probabilities = vec![
            ("loss", self.loss),
            ("reorder", self.reorder),
            ("duplicate", self.duplicate),
        ];
        if let Some(b) = &self.bursty_loss {
            probabilities.extend([
                ("bursty_loss.p_bad", b.p_bad),
                ("bursty_loss.p_good", b.p_good),
                ("bursty_loss.loss_bad", b.loss_bad),
                ("bursty_loss.loss_good", b.loss_good),
            ]);
        }
        for (name, p) in probabilities {
            if !(0.0..=1.0).contains(&p) {
                return Err(LinkError::Plan(format!(
                    "{name} = {p} is not a probability in [0, 1]"
                )));
            }
        }
        for w in &self.blackholes {
            if w.from >= w.to {
                return Err(LinkError::Plan(format!(
                    "blackhole window from {:?} to {:?} is empty",
                    w.from, w.to
                )));
            }
        }
        if self.bandwidth_bps == Some(0) {
            return Err(LinkError::Plan("bandwidth_bps must be above 0".into()));
        }
        if let Some(rate) = self.packet_rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(LinkError::Plan(format!(
                    "packet_rate = {rate} must be above 0"
                )));
            }
        }
        if self.queue_limit == Some(0) {
            return Err(LinkError::Plan("queue_limit must be above 0".into()));
        }
        if let Some(every) = self.rebind_every {
            if every < Duration::from_millis(1) {
                return Err(LinkError::Plan("rebind_every must be at least 1ms".into()));
            }
        }
        Ok(())
    }

    /// How many timed rebindings are due `elapsed` after the plan took effect.
    pub(crate) fn rebinds_due(&self, elapsed: Duration) -> u64 {
        let at = self.rebind_at.iter().filter(|t| **t <= elapsed).count() as u64;
        let every = match self.rebind_every {
            Some(every) if !every.is_zero() => (elapsed.as_nanos() / every.as_nanos()) as u64,
            _ => 0,
        };
        at + every
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_plan_reads_from_toml() {
        let plan = LinkPlan::from_toml(
            r#"
            seed = 9
            directions = "to_server"
            loss = 0.05
            delay = "20ms"
            jitter = "5ms"
            reorder = 0.2
            duplicate = 0.01
            bandwidth_bps = 1000000
            packet_rate = 500.0
            rebind_at = ["5s", "1m"]
            rebind_every = "3s"
            [bursty_loss]
            p_bad = 0.01
            p_good = 0.3
            [[blackholes]]
            from = "2s"
            to = "7s"
            "#,
        )
        .expect("parses");
        assert_eq!(plan.seed, Some(9));
        assert_eq!(plan.directions, Directions::ToServer);
        assert_eq!(plan.delay, Some(Duration::from_millis(20)));
        assert_eq!(
            plan.rebind_at,
            vec![Duration::from_secs(5), Duration::from_secs(60)]
        );
        assert_eq!(plan.bursty_loss.as_ref().map(|b| b.loss_bad), Some(1.0));
        assert!(plan.blackholes[0].contains(Duration::from_secs(2)));
        assert!(!plan.blackholes[0].contains(Duration::from_secs(7)));
        assert_eq!(plan.rebinds_due(Duration::from_secs(6)), 1 + 2);
        assert!(!plan.is_empty());
        assert!(LinkPlan {
            seed: Some(4),
            ..LinkPlan::default()
        }
        .is_empty());
    }

    #[test]
    fn bad_plans_are_named() {
        let err = LinkPlan::from_toml("los = 0.1").expect_err("typo");
        assert!(err.to_string().contains("los"), "{err}");
        let err = LinkPlan::from_toml("loss = 1.5").expect_err("range");
        assert!(err.to_string().contains("loss"), "{err}");
        let err =
            LinkPlan::from_toml("[[blackholes]]\nfrom = \"2s\"\nto = \"1s\"").expect_err("empty");
        assert!(err.to_string().contains("blackhole"), "{err}");
    }
}
