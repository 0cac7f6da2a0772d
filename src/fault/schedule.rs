//! Seeded schedules of events at the send seam, shared by the reference model of the
//! broken NanoMQ ack path (tests and benches) and by twinmq's own connection, so both are
//! driven by exactly the same sequence.

/// A small deterministic generator (SplitMix64): fault plans are reproducible from their
/// seed, on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// One step of an ack-path schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckEvent {
    /// An inbound QoS 1 (or 2) PUBLISH arrives: an ack is due.
    AckDue,
    /// The transport accepts part of the write in progress (a short write).
    WritePartial,
    /// The transport finishes the write in progress.
    WriteComplete,
}

/// The schedule DESIGN §3 describes: inbound QoS 1/2 bursts from one client while ack
/// writes are slow or partial. `bursts` bursts of up to `burst_max` publishes; between
/// them the transport makes slow, sometimes partial progress.
pub fn ack_burst_schedule(seed: u64, bursts: usize, burst_max: u64) -> Vec<AckEvent> {
    let mut rng = Rng::new(seed);
    let mut events = Vec::new();
    for _ in 0..bursts {
        for _ in 0..=rng.below(burst_max) {
            events.push(AckEvent::AckDue);
            if rng.chance(0.2) {
                events.push(AckEvent::WritePartial);
            }
        }
        for _ in 0..=rng.below(3) {
            if rng.chance(0.3) {
                events.push(AckEvent::WritePartial);
            }
            events.push(AckEvent::WriteComplete);
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule_every_time() {
        assert_eq!(ack_burst_schedule(7, 20, 8), ack_burst_schedule(7, 20, 8));
        assert_ne!(ack_burst_schedule(7, 20, 8), ack_burst_schedule(8, 20, 8));
    }

    #[test]
    fn the_schedule_has_bursts_during_writes() {
        let s = ack_burst_schedule(1, 50, 8);
        let acks = s.iter().filter(|e| **e == AckEvent::AckDue).count();
        let writes = s.iter().filter(|e| **e == AckEvent::WriteComplete).count();
        assert!(
            acks > writes,
            "more acks than completions: acks queue behind writes"
        );
    }
}
