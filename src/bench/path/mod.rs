//! Loopback paths between bench clients and a broker: small relays that shape what they
//! forward, so the stability scenarios can impair a path while it carries traffic.
//!
//! ```text
//!  client ──► relay front (127.0.0.1:p) ──[ up: Direction ]──► broker
//!  client ◄──────────────────────────────[ down: Direction ]◄── broker
//!                       ▲ PathControl: outages (hold / drop), resets, rebinding
//! ```
//!
//! - [`udp::UdpRelay`] forwards datagrams: loss, reordering, delay, a rate cap with a
//!   bounded queue, outages that hold or drop, NAT rebinding (a new source port towards the
//!   broker while the client knows nothing) and forgetting every flow at once.
//! - [`tcp::TcpRelay`] forwards byte streams: delay, a rate cap, outages that hold bytes,
//!   and resetting every connection (what a NAT rebinding does to TCP). It cannot drop:
//!   TCP retransmits below it, so kernel TCP under real loss needs the impairment link of
//!   DESIGN §4, not a relay.
//!
//! Every decision about a unit (a datagram or a chunk of a stream) is made once, when it
//! arrives, by [`Direction::admit`]: it either leaves the relay at an instant or is dropped.

pub mod tcp;
pub mod udp;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::fault::schedule::Rng;

/// Impairments of one direction of a path. The default forwards everything at once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Impairment {
    /// Probability that a datagram is dropped (datagram paths only).
    pub loss: f64,
    /// Probability that a datagram is held back by up to `reorder_delay`, so later ones
    /// overtake it (datagram paths only).
    pub reorder: f64,
    pub reorder_delay: Duration,
    /// One-way delay added to every unit.
    pub delay: Duration,
    /// Bytes per second the direction carries; `None`: unlimited.
    pub rate: Option<u64>,
    /// Bytes that may wait for the rate cap before the tail is dropped (datagram paths;
    /// streams push back instead).
    pub queue_limit: usize,
}

/// What an outage does to the units that meet it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// The path stops and later delivers what it held (a stalled link or a paused stream).
    Hold,
    /// Everything is lost (a blackhole).
    Drop,
}

/// Why a unit was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    Loss,
    Queue,
    Outage,
    /// The flow was forgotten (see [`udp::UdpRelay::forget_flows`]).
    Forgotten,
}

/// When a unit leaves the relay, or why it never will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Release(Instant),
    Dropped(DropCause),
}

/// Counters of one relay, both directions together.
#[derive(Debug, Default)]
pub struct PathStats {
    pub forwarded: AtomicU64,
    pub dropped_loss: AtomicU64,
    pub dropped_queue: AtomicU64,
    pub dropped_outage: AtomicU64,
    pub dropped_forgotten: AtomicU64,
    pub reordered: AtomicU64,
    pub held: AtomicU64,
}

impl PathStats {
    /// Every datagram the relay dropped on purpose.
    pub fn dropped(&self) -> u64 {
        [
            &self.dropped_loss,
            &self.dropped_queue,
            &self.dropped_outage,
            &self.dropped_forgotten,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    fn count(&self, verdict: Verdict) {
        let counter = match verdict {
            Verdict::Release(_) => &self.forwarded,
            Verdict::Dropped(DropCause::Loss) => &self.dropped_loss,
            Verdict::Dropped(DropCause::Queue) => &self.dropped_queue,
            Verdict::Dropped(DropCause::Outage) => &self.dropped_outage,
            Verdict::Dropped(DropCause::Forgotten) => &self.dropped_forgotten,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One direction of a path: its impairments and the state of its rate cap.
#[derive(Debug)]
pub struct Direction {
    impairment: Impairment,
    /// When the rate-capped link finishes sending what it has already accepted.
    free_at: Option<Instant>,
    rng: Rng,
}

impl Direction {
    pub fn new(impairment: Impairment, seed: u64) -> Direction {
        Direction {
            impairment,
            free_at: None,
            rng: Rng::new(seed),
        }
    }

    /// Decides the fate of a unit of `len` bytes arriving at `now`. `droppable`: a
    /// datagram (loss, reordering and queue drops apply) rather than part of a stream.
    pub fn admit(
        &mut self,
        now: Instant,
        len: usize,
        droppable: bool,
        outage: Option<(Instant, Instant, Outage)>,
        stats: &PathStats,
    ) -> Verdict {
        let verdict = self.decide(now, len, droppable, outage, stats);
        stats.count(verdict);
        verdict
    }

    fn decide(
        &mut self,
        now: Instant,
        len: usize,
        droppable: bool,
        outage: Option<(Instant, Instant, Outage)>,
        stats: &PathStats,
    ) -> Verdict {
        let mut at = now;
        if let Some((from, until, kind)) = outage {
            if from <= now && now < until {
                match kind {
                    Outage::Drop if droppable => return Verdict::Dropped(DropCause::Outage),
                    // A stream cannot lose bytes: a blackhole holds them, as TCP's
                    // retransmissions would deliver them once the path is back.
                    Outage::Drop | Outage::Hold => {
                        stats.held.fetch_add(1, Ordering::Relaxed);
                        at = until;
                    }
                }
            }
        }
        let imp = &self.impairment;
        if droppable && imp.loss > 0.0 && self.rng.chance(imp.loss) {
            return Verdict::Dropped(DropCause::Loss);
        }
        if let Some(rate) = imp.rate.filter(|r| *r > 0) {
            let start = self.free_at.map_or(at, |free| free.max(at));
            let backlog = start.saturating_duration_since(at);
            let limit = Duration::from_secs_f64(imp.queue_limit as f64 / rate as f64);
            if droppable && backlog > limit {
                return Verdict::Dropped(DropCause::Queue);
            }
            let done = start + Duration::from_secs_f64(len as f64 / rate as f64);
            self.free_at = Some(done);
            at = done;
        }
        at += imp.delay;
        if droppable && imp.reorder > 0.0 && self.rng.chance(imp.reorder) {
            let max = imp.reorder_delay.as_micros().max(1) as u64;
            at += Duration::from_micros(1 + self.rng.below(max));
            stats.reordered.fetch_add(1, Ordering::Relaxed);
        }
        Verdict::Release(at)
    }
}

/// Outages scheduled on a path, read by the relay for every unit.
#[derive(Debug, Default)]
pub struct OutageSchedule {
    current: Mutex<Option<(Instant, Instant, Outage)>>,
}

impl OutageSchedule {
    /// The path is out from `from` for `len`; replaces any earlier outage.
    pub fn set(&self, from: Instant, len: Duration, kind: Outage) {
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((from, from + len, kind));
    }

    pub fn get(&self) -> Option<(Instant, Instant, Outage)> {
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(v: Verdict) -> Instant {
        match v {
            Verdict::Release(at) => at,
            Verdict::Dropped(cause) => panic!("dropped: {cause:?}"),
        }
    }

    #[test]
    fn the_rate_cap_serialises_and_drops_the_tail_of_its_queue() {
        let stats = PathStats::default();
        let mut d = Direction::new(
            Impairment {
                rate: Some(1000),
                queue_limit: 1400,
                ..Impairment::default()
            },
            1,
        );
        let now = Instant::now();
        assert_eq!(
            release(d.admit(now, 1000, true, None, &stats)),
            now + Duration::from_secs(1)
        );
        assert_eq!(
            release(d.admit(now, 500, true, None, &stats)),
            now + Duration::from_millis(1500)
        );
        // 1.5 s of backlog already: more than the queue holds (1.4 s at 1000 B/s).
        assert_eq!(
            d.admit(now, 1, true, None, &stats),
            Verdict::Dropped(DropCause::Queue)
        );
        // A stream is never dropped; it waits its turn.
        assert_eq!(
            release(d.admit(now, 500, false, None, &stats)),
            now + Duration::from_secs(2)
        );
        assert_eq!(stats.dropped(), 1);
    }

    #[test]
    fn an_outage_holds_or_drops_and_ends() {
        let stats = PathStats::default();
        let mut d = Direction::new(
            Impairment {
                delay: Duration::from_millis(10),
                ..Impairment::default()
            },
            1,
        );
        let now = Instant::now();
        let until = now + Duration::from_secs(5);
        let hold = Some((now, until, Outage::Hold));
        assert_eq!(
            release(d.admit(now, 10, true, hold, &stats)),
            until + Duration::from_millis(10)
        );
        let drop = Some((now, until, Outage::Drop));
        assert_eq!(
            d.admit(now, 10, true, drop, &stats),
            Verdict::Dropped(DropCause::Outage)
        );
        assert_eq!(
            release(d.admit(now, 10, false, drop, &stats)),
            until + Duration::from_millis(10),
            "a stream is held, never dropped"
        );
        assert_eq!(
            release(d.admit(until, 10, true, drop, &stats)),
            until + Duration::from_millis(10),
            "over at its end"
        );
    }

    #[test]
    fn loss_and_reordering_follow_their_probabilities() {
        let stats = PathStats::default();
        let mut d = Direction::new(
            Impairment {
                loss: 0.1,
                reorder: 0.2,
                reorder_delay: Duration::from_millis(20),
                ..Impairment::default()
            },
            7,
        );
        let now = Instant::now();
        for _ in 0..10_000 {
            d.admit(now, 100, true, None, &stats);
        }
        let lost = stats.dropped_loss.load(Ordering::Relaxed);
        let reordered = stats.reordered.load(Ordering::Relaxed);
        assert!((800..1200).contains(&lost), "{lost}");
        assert!((1500..2100).contains(&reordered), "{reordered}");
    }
}
