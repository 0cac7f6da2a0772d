//! IPv4 packets as the relay sees them: just enough parsing to find the transport ports,
//! the incremental checksum update of RFC 1624, and the tiny NAT that rebinds the client's
//! source port.
//!
//! A port lives in the UDP/TCP header, which the transport checksum covers (through its
//! own header) and the IPv4 header checksum does not, so rewriting a port updates exactly
//! one checksum: the transport's.

use std::collections::{HashMap, HashSet};

pub(crate) const PROTO_TCP: u8 = 6;
pub(crate) const PROTO_UDP: u8 = 17;

/// Where the transport header of an IPv4 packet starts, and its protocol, if the packet is
/// IPv4, carries TCP or UDP, and is the first (or only) fragment, so it holds the ports.
fn transport(packet: &[u8]) -> Option<(u8, usize)> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    let fragment_offset = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff;
    let protocol = packet[9];
    let needed = match protocol {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        _ => return None,
    };
    if header_len < 20 || fragment_offset != 0 || packet.len() < header_len + needed {
        return None;
    }
    Some((protocol, header_len))
}

/// True for IPv4 packets; the relay forwards only these (the TUN devices also see IPv6
/// neighbour discovery, which nobody in the namespaces needs).
pub(crate) fn is_ipv4(packet: &[u8]) -> bool {
    packet.len() >= 20 && packet[0] >> 4 == 4
}

fn source_ip(packet: &[u8]) -> [u8; 4] {
    [packet[12], packet[13], packet[14], packet[15]]
}

fn destination_ip(packet: &[u8]) -> [u8; 4] {
    [packet[16], packet[17], packet[18], packet[19]]
}

/// RFC 1624, eqn. 3: the new checksum after one 16-bit word of the covered data changes
/// from `old` to `new`: `HC' = ~(~HC + ~m + m')`, in one's complement arithmetic.
pub(crate) fn checksum_replace(checksum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

fn read_u16(packet: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([packet[at], packet[at + 1]])
}

fn write_u16(packet: &mut [u8], at: usize, value: u16) {
    packet[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// Rewrites the source (`offset` 0) or destination (`offset` 2) port of a TCP or UDP
/// packet and updates its checksum incrementally.
fn rewrite_port(packet: &mut [u8], protocol: u8, l4: usize, offset: usize, new_port: u16) {
    let old_port = read_u16(packet, l4 + offset);
    if old_port == new_port {
        return;
    }
    write_u16(packet, l4 + offset, new_port);
    let checksum_at = match protocol {
        PROTO_TCP => l4 + 16,
        _ => l4 + 6,
    };
    let checksum = read_u16(packet, checksum_at);
    if protocol == PROTO_UDP && checksum == 0 {
        // An IPv4 UDP datagram sent without a checksum stays without one.
        return;
    }
    let mut updated = checksum_replace(checksum, old_port, new_port);
    if protocol == PROTO_UDP && updated == 0 {
        // For UDP, a computed 0 is transmitted as all ones (RFC 768).
        updated = 0xffff;
    }
    write_u16(packet, checksum_at, updated);
}

/// The NAT in front of the client: until the first rebinding it changes nothing; after
/// each rebinding every client flow (TCP or UDP, by source address and port) is given a
/// fresh public port, and the server's replies to that port are translated back. Replies
/// to a port from an earlier binding are dropped, as a real NAT that forgot the mapping
/// (or a phone that left the network) would.
#[derive(Debug)]
pub(crate) struct Nat {
    epoch: u64,
    next_port: u16,
    outbound: HashMap<(u8, [u8; 4], u16), u16>,
    inbound: HashMap<(u8, u16), ([u8; 4], u16)>,
    retired: HashSet<(u8, u16)>,
}

/// Public ports the NAT hands out: below the Linux ephemeral range (32768–60999), so a
/// mapped port never looks like one the client's kernel picked.
const PORT_FIRST: u16 = 10_000;
const PORT_LAST: u16 = 32_767;

/// What the NAT did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NatOutcome {
    /// Not touched (no rebinding yet, not TCP/UDP, or not a mapped flow).
    Unchanged,
    /// A port was rewritten.
    Rewritten,
    /// A reply to a retired binding: drop it.
    Stale,
}

impl Nat {
    pub(crate) fn new() -> Nat {
        Nat {
            epoch: 0,
            next_port: PORT_FIRST,
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            retired: HashSet::new(),
        }
    }

    /// How many rebindings have happened.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Forgets every mapping: the client's flows get new public ports from now on.
    pub(crate) fn rebind(&mut self) {
        self.epoch += 1;
        self.retired
            .extend(self.inbound.drain().map(|(key, _)| key));
        self.outbound.clear();
    }

    fn allocate(&mut self, protocol: u8, original: u16) -> Option<u16> {
        for _ in 0..=(PORT_LAST - PORT_FIRST) {
            let candidate = self.next_port;
            self.next_port = if self.next_port >= PORT_LAST {
                PORT_FIRST
            } else {
                self.next_port + 1
            };
            if candidate != original && !self.inbound.contains_key(&(protocol, candidate)) {
                return Some(candidate);
            }
        }
        None
    }

    /// A packet from the client to the server: rewrite its source port.
    pub(crate) fn outbound(&mut self, packet: &mut [u8]) -> NatOutcome {
        if self.epoch == 0 {
            return NatOutcome::Unchanged;
        }
        let Some((protocol, l4)) = transport(packet) else {
            return NatOutcome::Unchanged;
        };
        let source = source_ip(packet);
        let port = read_u16(packet, l4);
        let key = (protocol, source, port);
        let mapped = match self.outbound.get(&key) {
            Some(&mapped) => mapped,
            None => {
                let Some(mapped) = self.allocate(protocol, port) else {
                    return NatOutcome::Stale;
                };
                self.outbound.insert(key, mapped);
                self.inbound.insert((protocol, mapped), (source, port));
                self.retired.remove(&(protocol, mapped));
                mapped
            }
        };
        rewrite_port(packet, protocol, l4, 0, mapped);
        NatOutcome::Rewritten
    }

    /// A packet from the server to the client: translate its destination port back.
    pub(crate) fn inbound(&mut self, packet: &mut [u8]) -> NatOutcome {
        if self.epoch == 0 {
            return NatOutcome::Unchanged;
        }
        let Some((protocol, l4)) = transport(packet) else {
            return NatOutcome::Unchanged;
        };
        let port = read_u16(packet, l4 + 2);
        match self.inbound.get(&(protocol, port)) {
            Some(&(client, original)) if client == destination_ip(packet) => {
                rewrite_port(packet, protocol, l4, 2, original);
                NatOutcome::Rewritten
            }
            _ if self.retired.contains(&(protocol, port)) => NatOutcome::Stale,
            _ => NatOutcome::Unchanged,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The one's complement sum of `data` (odd length padded with a zero byte).
    fn ones_sum(mut sum: u32, data: &[u8]) -> u32 {
        for chunk in data.chunks(2) {
            let word = if chunk.len() == 2 {
                u16::from_be_bytes([chunk[0], chunk[1]])
            } else {
                u16::from_be_bytes([chunk[0], 0])
            };
            sum += u32::from(word);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum
    }

    /// The full transport checksum over the pseudo-header, from scratch.
    fn transport_checksum(packet: &[u8]) -> u16 {
        let l4 = usize::from(packet[0] & 0x0f) * 4;
        let protocol = packet[9];
        let segment = &packet[l4..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&packet[12..20]);
        pseudo.extend_from_slice(&[0, protocol]);
        pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        let mut zeroed = segment.to_vec();
        let at = if protocol == PROTO_TCP { 16 } else { 6 };
        zeroed[at] = 0;
        zeroed[at + 1] = 0;
        let sum = ones_sum(ones_sum(0, &pseudo), &zeroed);
        let checksum = !(sum as u16);
        if protocol == PROTO_UDP && checksum == 0 {
            0xffff
        } else {
            checksum
        }
    }

    fn ip_header_checksum(header: &[u8]) -> u16 {
        let mut zeroed = header.to_vec();
        zeroed[10] = 0;
        zeroed[11] = 0;
        !(ones_sum(0, &zeroed) as u16)
    }

    /// An IPv4 packet with a valid IP and transport checksum.
    pub(crate) fn build(
        protocol: u8,
        source: [u8; 4],
        sport: u16,
        destination: [u8; 4],
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let l4_len = if protocol == PROTO_TCP { 20 } else { 8 };
        let total = 20 + l4_len + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = protocol;
        p[12..16].copy_from_slice(&source);
        p[16..20].copy_from_slice(&destination);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        if protocol == PROTO_TCP {
            p[24..28].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            p[32] = 5 << 4;
            p[33] = 0x18;
            p[34..36].copy_from_slice(&64240u16.to_be_bytes());
        } else {
            p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        }
        p[20 + l4_len..].copy_from_slice(payload);
        let ip = ip_header_checksum(&p[..20]);
        p[10..12].copy_from_slice(&ip.to_be_bytes());
        let c = transport_checksum(&p);
        let at = if protocol == PROTO_TCP { 36 } else { 26 };
        p[at..at + 2].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn assert_valid(packet: &[u8]) {
        let at = if packet[9] == PROTO_TCP { 36 } else { 26 };
        assert_eq!(
            read_u16(packet, at),
            transport_checksum(packet),
            "transport checksum"
        );
        assert_eq!(
            read_u16(packet, 10),
            ip_header_checksum(&packet[..20]),
            "ip checksum"
        );
    }

    const CLIENT: [u8; 4] = [198, 51, 100, 1];
    const SERVER: [u8; 4] = [192, 0, 2, 1];

    #[test]
    fn the_rfc_1624_example_gives_zero_not_minus_zero() {
        // RFC 1624 §4: HC = 0xDD2F, m = 0x5555, m' = 0x3285 → HC' = 0x0000.
        assert_eq!(checksum_replace(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn incremental_updates_match_a_full_recomputation() {
        let mut rng = crate::fault::schedule::Rng::new(3);
        for round in 0..2000u32 {
            let protocol = if round % 2 == 0 { PROTO_TCP } else { PROTO_UDP };
            let payload: Vec<u8> = (0..rng.below(40)).map(|_| rng.below(256) as u8).collect();
            let sport = rng.below(65536) as u16;
            let mut p = build(protocol, CLIENT, sport, SERVER, 1883, &payload);
            assert_valid(&p);
            let l4 = 20;
            let new_port = rng.below(65536) as u16;
            rewrite_port(&mut p, protocol, l4, 0, new_port);
            assert_eq!(read_u16(&p, 20), new_port);
            assert_valid(&p);
            let dport = rng.below(65536) as u16;
            rewrite_port(&mut p, protocol, l4, 2, dport);
            assert_valid(&p);
        }
    }

    #[test]
    fn udp_without_a_checksum_stays_without_one() {
        let mut p = build(PROTO_UDP, CLIENT, 40000, SERVER, 53, b"abc");
        p[26] = 0;
        p[27] = 0;
        rewrite_port(&mut p, PROTO_UDP, 20, 0, 12345);
        assert_eq!(read_u16(&p, 26), 0);
    }

    #[test]
    fn the_nat_maps_out_and_back_and_drops_replies_to_old_bindings() {
        let mut nat = Nat::new();
        let original = build(PROTO_UDP, CLIENT, 40000, SERVER, 4433, b"hi");
        let mut p = original.clone();
        assert_eq!(nat.outbound(&mut p), NatOutcome::Unchanged);
        assert_eq!(p, original, "nothing changes before the first rebinding");

        nat.rebind();
        let mut p = original.clone();
        assert_eq!(nat.outbound(&mut p), NatOutcome::Rewritten);
        let first = read_u16(&p, 20);
        assert_ne!(first, 40000);
        assert_valid(&p);
        let mut again = original.clone();
        nat.outbound(&mut again);
        assert_eq!(read_u16(&again, 20), first, "a flow keeps its mapping");

        let mut reply = build(PROTO_UDP, SERVER, 4433, CLIENT, first, b"yo");
        assert_eq!(nat.inbound(&mut reply), NatOutcome::Rewritten);
        assert_eq!(read_u16(&reply, 22), 40000);
        assert_valid(&reply);

        nat.rebind();
        let mut p = original.clone();
        nat.outbound(&mut p);
        let second = read_u16(&p, 20);
        assert_ne!(second, first);
        let mut old_reply = build(PROTO_UDP, SERVER, 4433, CLIENT, first, b"late");
        assert_eq!(nat.inbound(&mut old_reply), NatOutcome::Stale);
        let mut unrelated = build(PROTO_TCP, SERVER, 22, CLIENT, 5555, b"");
        assert_eq!(nat.inbound(&mut unrelated), NatOutcome::Unchanged);
        assert_eq!(nat.epoch(), 2);
    }

    #[test]
    fn later_fragments_and_other_protocols_are_left_alone() {
        let mut nat = Nat::new();
        nat.rebind();
        let mut p = build(PROTO_UDP, CLIENT, 40000, SERVER, 4433, b"frag");
        p[6] = 0x00;
        p[7] = 0x10; // fragment offset 16 (×8 bytes): no UDP header here
        let before = p.clone();
        assert_eq!(nat.outbound(&mut p), NatOutcome::Unchanged);
        assert_eq!(p, before);
        let mut icmp = build(PROTO_UDP, CLIENT, 1, SERVER, 2, b"");
        icmp[9] = 1;
        assert_eq!(nat.outbound(&mut icmp), NatOutcome::Unchanged);
        assert!(!is_ipv4(&[0x60; 40]));
    }
}
