//! Property tests: round trips per version, `encoded_len` agreement, and that no input makes
//! the decoder panic or break its consumption contract.

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::protocol::codec::strategies;

/// Runs the decoder over `input` until it stops, checking the consumption contract after
/// every call. Returns the packets, and the error if one ended the run.
fn drain(decoder: &mut Decoder, input: &[u8]) -> (Vec<Packet>, Option<DecodeError>) {
    let mut buf = BytesMut::from(input);
    let mut packets = Vec::new();
    loop {
        let before = buf.clone();
        match decoder.decode(&mut buf) {
            Ok(Some(packet)) => {
                assert!(
                    buf.len() < before.len(),
                    "a packet consumes at least 2 bytes"
                );
                assert_eq!(&before[before.len() - buf.len()..], &buf[..]);
                packets.push(packet);
            }
            Ok(None) => {
                assert_eq!(buf, before, "Ok(None) consumed input");
                return (packets, None);
            }
            Err(err) => {
                // Every error maps to a failure reason code.
                assert!(err.reason_code().is_error());
                return (packets, Some(err));
            }
        }
    }
}

fn decoders() -> [Decoder; 3] {
    [
        Decoder::new(u32::MAX),
        Decoder::with_version(V3, u32::MAX),
        Decoder::with_version(V5, u32::MAX),
    ]
}

fn check_round_trip(packet: &Packet, version: ProtocolVersion) -> Result<(), TestCaseError> {
    let bytes = encode_to_bytes(packet, version).expect("generated packets encode");
    prop_assert_eq!(encoded_len(packet, version), Ok(bytes.len()));
    let mut scratch = BytesMut::new();
    let encoded = encode(packet, version, &mut scratch).expect("encodes");
    prop_assert!(!encoded.head.is_empty());
    prop_assert_eq!(
        [&encoded.head[..], &encoded.payload[..]].concat(),
        bytes.to_vec()
    );
    if let Packet::Publish(p) = packet {
        prop_assert_eq!(encoded.payload.as_ptr(), p.payload.as_ptr());
    } else {
        prop_assert!(encoded.payload.is_empty());
    }
    let expected = strategies::normalize(packet.clone(), version);
    prop_assert_eq!(decode(version, &bytes), Ok(expected));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn round_trip_v311(packet in strategies::packet(V3)) {
        check_round_trip(&packet, V3)?;
    }

    #[test]
    fn round_trip_v5(packet in strategies::packet(V5)) {
        check_round_trip(&packet, V5)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn arbitrary_bytes_never_panic(input in vec(any::<u8>(), 0..96)) {
        for mut decoder in decoders() {
            drain(&mut decoder, &input);
        }
    }

    /// Arbitrary bytes rarely get past the fixed header; these start from a valid packet and
    /// damage it, to reach the body decoders.
    #[test]
    fn damaged_packets_never_panic(
        version in prop_oneof![Just(V3), Just(V5)],
        packet in prop_oneof![strategies::packet(V3), strategies::packet(V5)],
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4),
    ) {
        let Ok(bytes) = encode_to_bytes(&packet, version) else { return Ok(()) };
        let mut bytes = bytes.to_vec();
        for (at, value, kind) in edits {
            let i = at.index(bytes.len() + 1);
            match kind {
                0 if i < bytes.len() => bytes[i] = value,
                1 => bytes.insert(i, value),
                _ if i < bytes.len() => { bytes.remove(i); }
                _ => bytes.push(value),
            }
        }
        for mut decoder in decoders() {
            drain(&mut decoder, &bytes);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// A server-side decoder fed a connection's byte stream one byte at a time yields the
    /// same packets as fed all at once, and learns the version from CONNECT.
    #[test]
    fn byte_by_byte_equals_all_at_once(
        (version, connect, rest) in prop_oneof![Just(V3), Just(V5)].prop_flat_map(|version| (
            Just(version),
            strategies::connect(version),
            vec(strategies::packet(version), 0..6),
        )),
    ) {
        let packets: Vec<Packet> = std::iter::once(Packet::Connect(Box::new(connect)))
            .chain(rest)
            .collect();
        let mut stream = Vec::new();
        for p in &packets {
            stream.extend_from_slice(&encode_to_bytes(p, version).expect("filtered"));
        }
        let (whole, err) = drain(&mut Decoder::new(u32::MAX), &stream);
        prop_assert_eq!(err, None);
        let expected: Vec<Packet> =
            packets.iter().map(|p| strategies::normalize(p.clone(), version)).collect();
        prop_assert_eq!(&whole, &expected);

        let mut decoder = Decoder::new(u32::MAX);
        let mut buf = BytesMut::new();
        let mut trickled = Vec::new();
        for &byte in &stream {
            buf.extend_from_slice(&[byte]);
            while let Some(packet) = decoder.decode(&mut buf).expect("valid stream") {
                trickled.push(packet);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(trickled, whole);
        prop_assert_eq!(decoder.version(), Some(version));
    }
}
