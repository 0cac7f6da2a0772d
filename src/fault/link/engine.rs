//! The impairment engine: packets in (with the time they arrived), packets out (with the
//! time they are due). No IO and no clock of its own, so it is tested with made-up times.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::packet::{self, Nat, NatOutcome};
use super::plan::{
    Directions, LinkPlan, DEFAULT_QUEUE_LIMIT, DEFAULT_RATE_BURST, DEFAULT_REORDER_GAP,
};
use crate::fault::schedule::Rng;

/// Which way a packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    ToServer,
    ToClient,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ToServer => 0,
            Direction::ToClient => 1,
        }
    }
}

/// At most this many packets wait in the relay (both directions); beyond it, new ones are
/// dropped, so a plan with a huge delay cannot exhaust memory.
const MAX_QUEUED: usize = 65_536;

/// Counters for one direction, updated by the relay.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    delayed: AtomicU64,
    rewritten: AtomicU64,
    ignored: AtomicU64,
}

/// What the link did to the packets of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// IPv4 packets read from the sending side's TUN device.
    pub received: u64,
    /// Packets written to the receiving side's TUN device (duplicates included).
    pub packets_forwarded: u64,
    /// Packets dropped: loss, blackholes, a full rate-cap queue, replies to a retired
    /// NAT binding, or a failed write.
    pub dropped: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Packets held back so that later ones could overtake them.
    pub reordered: u64,
    /// Packets that left later than they arrived (delay, jitter, rate cap, reordering).
    pub delayed: u64,
    /// Packets whose port the NAT rewrote.
    pub rewritten: u64,
    /// Non-IPv4 packets (IPv6 neighbour discovery and the like), not forwarded.
    pub ignored: u64,
}

/// Statistics of the whole link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub to_server: DirectionStats,
    pub to_client: DirectionStats,
    /// Rebindings of the client's NAT so far.
    pub rebinds: u64,
}

#[derive(Debug, Default)]
pub(crate) struct SharedStats {
    directions: [Counters; 2],
    rebinds: AtomicU64,
}

impl SharedStats {
    fn of(&self, direction: Direction) -> &Counters {
        &self.directions[direction.index()]
    }

    pub(crate) fn count_forwarded(&self, direction: Direction) {
        bump(&self.of(direction).forwarded);
    }

    pub(crate) fn count_dropped(&self, direction: Direction) {
        bump(&self.of(direction).dropped);
    }

    pub(crate) fn snapshot(&self) -> LinkStats {
        let read = |c: &Counters| DirectionStats {
            received: c.received.load(Ordering::Relaxed),
            packets_forwarded: c.forwarded.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            duplicated: c.duplicated.load(Ordering::Relaxed),
            reordered: c.reordered.load(Ordering::Relaxed),
            delayed: c.delayed.load(Ordering::Relaxed),
            rewritten: c.rewritten.load(Ordering::Relaxed),
            ignored: c.ignored.load(Ordering::Relaxed),
        };
        LinkStats {
            to_server: read(&self.directions[0]),
            to_client: read(&self.directions[1]),
            rebinds: self.rebinds.load(Ordering::Relaxed),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A token bucket: `rate` tokens per second, at most `depth` of them.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    depth: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, depth: f64, now: Instant) -> Bucket {
        Bucket {
            rate,
            depth,
            tokens: depth,
            at: now,
        }
    }

    fn tokens_at(&self, t: Instant) -> f64 {
        let elapsed = t.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + self.rate * elapsed).min(self.depth)
    }

    /// The earliest time at or after `t` when `cost` tokens are there.
    fn ready_at(&self, t: Instant, cost: f64) -> Instant {
        let tokens = self.tokens_at(t);
        if tokens >= cost {
            t
        } else {
            t + Duration::from_secs_f64(((cost - tokens) / self.rate).min(3600.0))
        }
    }

    fn take(&mut self, t: Instant, cost: f64) {
        self.tokens = self.tokens_at(t) - cost;
        self.at = t;
    }
}

/// The rate cap of one direction: a FIFO queue drained through the token buckets.
#[derive(Debug)]
struct Shaper {
    bits: Option<Bucket>,
    packets: Option<Bucket>,
    last_departure: Instant,
    backlog: VecDeque<Instant>,
    limit: usize,
}

/// A full-size Ethernet frame's worth of bits: a bucket is never shallower than this.
const MIN_DEPTH_BITS: f64 = 1514.0 * 8.0;

impl Shaper {
    fn new(plan: &LinkPlan, now: Instant) -> Option<Shaper> {
        if plan.bandwidth_bps.is_none() && plan.packet_rate.is_none() {
            return None;
        }
        let burst = plan.rate_burst.unwrap_or(DEFAULT_RATE_BURST).as_secs_f64();
        let bits = plan.bandwidth_bps.map(|bps| {
            let rate = bps as f64;
            Bucket::new(rate, (rate * burst).max(MIN_DEPTH_BITS), now)
        });
        let packets = plan
            .packet_rate
            .map(|pps| Bucket::new(pps, (pps * burst).max(1.0), now));
        Some(Shaper {
            bits,
            packets,
            last_departure: now,
            backlog: VecDeque::new(),
            limit: plan.queue_limit.unwrap_or(DEFAULT_QUEUE_LIMIT),
        })
    }

    /// When a packet of `len` bytes arriving at `now` leaves, or `None` if the queue is full.
    fn admit(&mut self, now: Instant, len: usize) -> Option<Instant> {
        while self.backlog.front().is_some_and(|d| *d <= now) {
            self.backlog.pop_front();
        }
        if self.backlog.len() >= self.limit {
            return None;
        }
        let start = now.max(self.last_departure);
        let bits = len as f64 * 8.0;
        let mut departure = start;
        if let Some(b) = &self.bits {
            departure = departure.max(b.ready_at(start, bits));
        }
        if let Some(b) = &self.packets {
            departure = departure.max(b.ready_at(start, 1.0));
        }
        if let Some(b) = &mut self.bits {
            b.take(departure, bits);
        }
        if let Some(b) = &mut self.packets {
            b.take(departure, 1.0);
        }
        self.last_departure = departure;
        self.backlog.push_back(departure);
        Some(departure)
    }
}

#[derive(Debug)]
struct Queued {
    due: Instant,
    seq: u64,
    direction: Direction,
    packet: Vec<u8>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// Applies a [`LinkPlan`] to the packets of both directions.
#[derive(Debug)]
pub(crate) struct Engine {
    plan: LinkPlan,
    /// When the plan took effect: blackholes and timed rebindings count from here.
    start: Instant,
    rng: Rng,
    bad_state: [bool; 2],
    order_floor: [Option<Instant>; 2],
    shapers: [Option<Shaper>; 2],
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    nat: Nat,
    timed_rebinds: u64,
    manual_rebinds: u64,
    stats: std::sync::Arc<SharedStats>,
}

impl Engine {
    pub(crate) fn new(
        plan: LinkPlan,
        start: Instant,
        stats: std::sync::Arc<SharedStats>,
    ) -> Engine {
        Engine {
            rng: Rng::new(plan.seed.unwrap_or(0)),
            shapers: [Shaper::new(&plan, start), Shaper::new(&plan, start)],
            plan,
            start,
            bad_state: [false; 2],
            order_floor: [None; 2],
            queue: BinaryHeap::new(),
            seq: 0,
            nat: Nat::new(),
            timed_rebinds: 0,
            manual_rebinds: 0,
            stats,
        }
    }

    /// Replaces the plan; packets already scheduled keep their times, the NAT keeps its
    /// mappings, and the new plan's clock starts at `start`.
    pub(crate) fn set_plan(&mut self, plan: LinkPlan, start: Instant) {
        self.rng = Rng::new(plan.seed.unwrap_or(0));
        self.shapers = [Shaper::new(&plan, start), Shaper::new(&plan, start)];
        self.bad_state = [false; 2];
        self.plan = plan;
        self.start = start;
        self.timed_rebinds = 0;
    }

    /// Applies due rebindings: timed ones from the plan and `manual` ones requested so far.
    pub(crate) fn tick(&mut self, now: Instant, manual: u64) {
        let due = self
            .plan
            .rebinds_due(now.saturating_duration_since(self.start));
        let mut rebind = false;
        if due > self.timed_rebinds {
            self.timed_rebinds = due;
            rebind = true;
        }
        if manual > self.manual_rebinds {
            self.manual_rebinds = manual;
            rebind = true;
        }
        if rebind {
            self.nat.rebind();
            self.stats
                .rebinds
                .store(self.nat.epoch(), Ordering::Relaxed);
        }
    }

    fn applies(&self, direction: Direction) -> bool {
        matches!(
            (self.plan.directions, direction),
            (Directions::Both, _)
                | (Directions::ToServer, Direction::ToServer)
                | (Directions::ToClient, Direction::ToClient)
        )
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.chance(p)
    }

    fn lost(&mut self, direction: Direction, since_start: Duration) -> bool {
        if self.plan.blackholes.iter().any(|w| w.contains(since_start)) {
            return true;
        }
        if let Some(b) = self.plan.bursty_loss.clone() {
            let i = direction.index();
            self.bad_state[i] = if self.bad_state[i] {
                !self.chance(b.p_good)
            } else {
                self.chance(b.p_bad)
            };
            let p = if self.bad_state[i] {
                b.loss_bad
            } else {
                b.loss_good
            };
            if self.chance(p) {
                return true;
            }
        }
        self.chance(self.plan.loss)
    }

    fn jittered_delay(&mut self) -> Duration {
        let base = self.plan.delay.unwrap_or_default();
        let jitter = self.plan.jitter.unwrap_or_default().as_nanos() as u64;
        if jitter == 0 {
            return base;
        }
        let offset = self.rng.below(2 * jitter + 1);
        if offset >= jitter {
            base + Duration::from_nanos(offset - jitter)
        } else {
            base.saturating_sub(Duration::from_nanos(jitter - offset))
        }
    }

    fn push(&mut self, direction: Direction, due: Instant, packet: Vec<u8>) {
        if self.queue.len() >= MAX_QUEUED {
            self.stats.count_dropped(direction);
            return;
        }
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            due,
            seq: self.seq,
            direction,
            packet,
        }));
    }

    /// A packet read from `direction`'s sending side at `now`.
    pub(crate) fn ingest(&mut self, direction: Direction, mut packet: Vec<u8>, now: Instant) {
        let counters = self.stats.of(direction);
        if !packet::is_ipv4(&packet) {
            bump(&counters.ignored);
            return;
        }
        bump(&counters.received);
        let outcome = match direction {
            Direction::ToServer => self.nat.outbound(&mut packet),
            Direction::ToClient => self.nat.inbound(&mut packet),
        };
        match outcome {
            NatOutcome::Unchanged => {}
            NatOutcome::Rewritten => bump(&self.stats.of(direction).rewritten),
            NatOutcome::Stale => {
                self.stats.count_dropped(direction);
                return;
            }
        }
        let i = direction.index();
        if !self.applies(direction) {
            let due = self.order_floor[i].map_or(now, |floor| floor.max(now));
            self.order_floor[i] = Some(due);
            self.push(direction, due, packet);
            return;
        }
        if self.lost(direction, now.saturating_duration_since(self.start)) {
            self.stats.count_dropped(direction);
            return;
        }
        let mut due = now;
        if let Some(shaper) = &mut self.shapers[i] {
            match shaper.admit(now, packet.len()) {
                Some(departure) => due = departure,
                None => {
                    self.stats.count_dropped(direction);
                    return;
                }
            }
        }
        due += self.jittered_delay();
        if self.chance(self.plan.reorder) {
            due += self.plan.reorder_gap.unwrap_or(DEFAULT_REORDER_GAP);
            bump(&self.stats.of(direction).reordered);
        } else {
            due = self.order_floor[i].map_or(due, |floor| floor.max(due));
            self.order_floor[i] = Some(due);
        }
        if due > now {
            bump(&self.stats.of(direction).delayed);
        }
        if self.chance(self.plan.duplicate) {
            bump(&self.stats.of(direction).duplicated);
            self.push(direction, due, packet.clone());
        }
        self.push(direction, due, packet);
    }

    /// When the next packet is due, if any is waiting.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse(q)| q.due)
    }

    /// The next packet due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Direction, Vec<u8>)> {
        if self.next_due()? > now {
            return None;
        }
        self.queue.pop().map(|Reverse(q)| (q.direction, q.packet))
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::tests::build;
    use super::super::packet::PROTO_UDP;
    use super::super::plan::{BurstyLoss, Window};
    use super::*;
    use std::sync::Arc;

    const CLIENT: [u8; 4] = [198, 51, 100, 1];
    const SERVER: [u8; 4] = [192, 0, 2, 1];

    fn datagram(n: u32) -> Vec<u8> {
        build(PROTO_UDP, CLIENT, 40000, SERVER, 9, &n.to_be_bytes())
    }

    fn number(packet: &[u8]) -> u32 {
        let at = packet.len() - 4;
        u32::from_be_bytes([packet[at], packet[at + 1], packet[at + 2], packet[at + 3]])
    }

    /// Feeds `count` packets to the server side, one every `gap`, and drains everything;
    /// returns (arrival time offset, packet number) in delivery order.
    fn run(plan: LinkPlan, count: u32, gap: Duration) -> (Vec<(Duration, u32)>, LinkStats) {
        let stats = Arc::new(SharedStats::default());
        let t0 = Instant::now();
        let mut engine = Engine::new(plan, t0, stats.clone());
        let mut out = Vec::new();
        let mut drain = |engine: &mut Engine, now: Instant| {
            while let Some((d, p)) = engine.pop_due(now) {
                assert_eq!(d, Direction::ToServer);
                stats.count_forwarded(d);
                out.push((now - t0, number(&p)));
            }
        };
        for n in 0..count {
            let now = t0 + gap * n;
            drain(&mut engine, now);
            engine.tick(now, 0);
            engine.ingest(Direction::ToServer, datagram(n), now);
        }
        // Drain the rest in 1 ms steps, for at most an hour of simulated time.
        let mut now = t0 + gap * count;
        for _ in 0..3_600_000 {
            drain(&mut engine, now);
            match engine.next_due() {
                Some(due) => now = due.max(now + Duration::from_millis(1)),
                None => break,
            }
        }
        (out, stats.snapshot())
    }

    #[test]
    fn no_plan_forwards_everything_at_once_and_in_order() {
        let (out, stats) = run(LinkPlan::default(), 100, Duration::from_millis(1));
        let numbers: Vec<u32> = out.iter().map(|(_, n)| *n).collect();
        assert_eq!(numbers, (0..100).collect::<Vec<_>>());
        assert_eq!(stats.to_server.dropped, 0);
        assert_eq!(stats.to_server.delayed, 0);
    }

    #[test]
    fn uniform_loss_drops_about_its_share_and_the_seed_repeats_it() {
        let plan = LinkPlan {
            seed: Some(5),
            loss: 0.3,
            ..LinkPlan::default()
        };
        let (a, stats) = run(plan.clone(), 2000, Duration::from_millis(1));
        let (b, _) = run(plan, 2000, Duration::from_millis(1));
        assert_eq!(a, b, "same seed, same losses");
        assert!((500..700).contains(&stats.to_server.dropped), "{stats:?}");
        assert_eq!(a.len() as u64 + stats.to_server.dropped, 2000);
    }

    #[test]
    fn bursty_loss_comes_in_runs() {
        let plan = LinkPlan {
            seed: Some(1),
            bursty_loss: Some(BurstyLoss {
                p_bad: 0.02,
                p_good: 0.2,
                loss_bad: 1.0,
                loss_good: 0.0,
            }),
            ..LinkPlan::default()
        };
        let (out, stats) = run(plan, 5000, Duration::from_millis(1));
        let delivered: Vec<u32> = out.iter().map(|(_, n)| *n).collect();
        let gaps: Vec<u32> = delivered
            .windows(2)
            .map(|w| w[1] - w[0] - 1)
            .filter(|g| *g > 0)
            .collect();
        let mean_run = gaps.iter().sum::<u32>() as f64 / gaps.len() as f64;
        // Stationary loss p_bad / (p_bad + p_good) ≈ 9 %, in runs of mean 1 / p_good = 5.
        assert!((250..700).contains(&stats.to_server.dropped), "{stats:?}");
        assert!(mean_run > 3.0, "losses come in runs, mean {mean_run}");
    }

    #[test]
    fn delay_with_jitter_keeps_order_and_reordering_breaks_it() {
        let plan = LinkPlan {
            seed: Some(2),
            delay: Some(Duration::from_millis(20)),
            jitter: Some(Duration::from_millis(10)),
            ..LinkPlan::default()
        };
        let (out, stats) = run(plan.clone(), 500, Duration::from_millis(1));
        let numbers: Vec<u32> = out.iter().map(|(_, n)| *n).collect();
        assert_eq!(numbers, (0..500).collect::<Vec<_>>());
        assert_eq!(stats.to_server.delayed, 500);
        for (at, n) in &out {
            assert!(
                *at >= Duration::from_millis(u64::from(*n) + 10),
                "{n} at {at:?}"
            );
        }
        let (out, stats) = run(
            LinkPlan {
                reorder: 0.2,
                ..plan
            },
            500,
            Duration::from_millis(1),
        );
        let inversions = out.windows(2).filter(|w| w[1].1 < w[0].1).count();
        assert!(stats.to_server.reordered > 50, "{stats:?}");
        assert!(inversions > 20, "{inversions} inversions");
        assert_eq!(out.len(), 500);
    }

    #[test]
    fn duplicates_follow_their_original() {
        let plan = LinkPlan {
            duplicate: 1.0,
            ..LinkPlan::default()
        };
        let (out, stats) = run(plan, 10, Duration::from_millis(1));
        let numbers: Vec<u32> = out.iter().map(|(_, n)| *n).collect();
        assert_eq!(
            numbers,
            vec![0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9]
        );
        assert_eq!(stats.to_server.duplicated, 10);
    }

    #[test]
    fn a_blackhole_drops_exactly_its_window() {
        let plan = LinkPlan {
            blackholes: vec![Window {
                from: Duration::from_millis(100),
                to: Duration::from_millis(200),
            }],
            ..LinkPlan::default()
        };
        let (out, stats) = run(plan, 300, Duration::from_millis(1));
        assert_eq!(stats.to_server.dropped, 100);
        assert!(out.iter().all(|(_, n)| !(100..200).contains(n)));
    }

    #[test]
    fn the_packet_rate_cap_paces_and_tail_drops() {
        let plan = LinkPlan {
            packet_rate: Some(100.0),
            rate_burst: Some(Duration::ZERO),
            queue_limit: Some(50),
            ..LinkPlan::default()
        };
        // 200 packets offered at 1000/s to a 100/s link with a 50-packet queue.
        let (out, stats) = run(plan, 200, Duration::from_millis(1));
        assert!(
            (60..90).contains(&out.len()),
            "{} delivered, {stats:?}",
            out.len()
        );
        for w in out.windows(2) {
            assert!(w[1].0 - w[0].0 >= Duration::from_millis(9), "{w:?}");
        }
    }

    #[test]
    fn the_bandwidth_cap_spaces_packets_by_their_size() {
        let plan = LinkPlan {
            bandwidth_bps: Some(8 * 32 * 1000), // 32 000 bytes/s; each datagram is 32 bytes
            rate_burst: Some(Duration::ZERO),
            queue_limit: Some(10_000),
            ..LinkPlan::default()
        };
        let (out, _) = run(plan, 2000, Duration::ZERO);
        assert_eq!(out.len(), 2000);
        // The bucket holds one full-size frame (1514 bytes ≈ 47 datagrams) at first.
        let last = out.last().map(|(at, _)| *at).unwrap_or_default();
        assert!(
            last >= Duration::from_millis(1900) && last <= Duration::from_millis(2100),
            "{last:?}"
        );
    }

    #[test]
    fn timed_and_manual_rebinds_remap_the_client_port() {
        let stats = Arc::new(SharedStats::default());
        let t0 = Instant::now();
        let plan = LinkPlan {
            rebind_at: vec![Duration::from_millis(10)],
            ..LinkPlan::default()
        };
        let mut engine = Engine::new(plan, t0, stats.clone());
        let port = |engine: &mut Engine, now: Instant, manual: u64| {
            engine.tick(now, manual);
            engine.ingest(Direction::ToServer, datagram(0), now);
            let (_, p) = engine.pop_due(now).expect("forwarded");
            u16::from_be_bytes([p[20], p[21]])
        };
        assert_eq!(port(&mut engine, t0, 0), 40000);
        let first = port(&mut engine, t0 + Duration::from_millis(10), 0);
        assert_ne!(first, 40000);
        assert_eq!(port(&mut engine, t0 + Duration::from_millis(20), 0), first);
        let second = port(&mut engine, t0 + Duration::from_millis(30), 1);
        assert_ne!(second, first);
        assert_eq!(stats.snapshot().rebinds, 2);
        assert_eq!(stats.snapshot().to_server.rewritten, 3);
    }
}
