//! Arbitrary bytes into the decoder, three ways: as a server that has not seen CONNECT yet
//! (`Decoder::new`), and as a 3.1.1 and a 5.0 peer (`Decoder::with_version`).
//!
//! Besides "never panics", it checks three properties on every input:
//! - **round trip**: every decoded packet encodes, `encoded_len` agrees with the encoding,
//!   and decoding the encoding gives the same packet back, consuming it exactly;
//! - **framing is independent of how bytes arrive**: feeding the input one byte at a time
//!   yields the same packets and the same final error as feeding it whole;
//! - **`Ok(None)` consumes nothing**.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

use twinmq::protocol::codec::{self, DecodeError, Decoder};
use twinmq::protocol::{Packet, ProtocolVersion};

/// Small enough that `PacketTooLarge` is reachable from short inputs.
const MAX_PACKET_SIZE: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let decoders = [
        Decoder::new(MAX_PACKET_SIZE),
        Decoder::with_version(ProtocolVersion::V311, MAX_PACKET_SIZE),
        Decoder::with_version(ProtocolVersion::V5, MAX_PACKET_SIZE),
    ];
    for decoder in decoders {
        let whole = decode_whole(decoder.clone(), data);
        for (packet, version) in &whole.packets {
            round_trip(packet, *version);
        }
        let bytewise = decode_bytewise(decoder, data);
        assert_eq!(whole, bytewise, "framing depends on how the bytes arrive");
    }
});

/// What a decoder made of one input: the packets (with the version each was decoded in)
/// and how it stopped.
#[derive(Debug, PartialEq)]
struct Outcome {
    packets: Vec<(Packet, ProtocolVersion)>,
    /// `None`: the input ended (possibly mid-packet). `Some`: the first error.
    error: Option<DecodeError>,
}

fn decode_whole(mut decoder: Decoder, data: &[u8]) -> Outcome {
    let mut buf = BytesMut::from(data);
    let mut packets = Vec::new();
    loop {
        let before = buf.len();
        match decoder.decode(&mut buf) {
            Ok(Some(packet)) => {
                assert!(buf.len() < before, "a decoded packet consumed nothing");
                packets.push((packet, version_of(&decoder)));
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed input");
                return Outcome {
                    packets,
                    error: None,
                };
            }
            Err(error) => {
                return Outcome {
                    packets,
                    error: Some(error),
                }
            }
        }
    }
}

fn decode_bytewise(mut decoder: Decoder, data: &[u8]) -> Outcome {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for &byte in data {
        buf.extend_from_slice(&[byte]);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(packet)) => packets.push((packet, version_of(&decoder))),
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed input");
                    break;
                }
                Err(error) => {
                    return Outcome {
                        packets,
                        error: Some(error),
                    }
                }
            }
        }
    }
    Outcome {
        packets,
        error: None,
    }
}

/// After a successful decode the decoder always knows its version: a versionless decoder
/// accepts only CONNECT, and CONNECT sets it.
fn version_of(decoder: &Decoder) -> ProtocolVersion {
    decoder
        .version()
        .expect("a decoder that produced a packet knows its version")
}

fn round_trip(packet: &Packet, version: ProtocolVersion) {
    let wire = match codec::encode_to_bytes(packet, version) {
        Ok(wire) => wire,
        Err(err) => panic!("decoded {version} packet does not encode: {err}\n{packet:#?}"),
    };
    let len = codec::encoded_len(packet, version).expect("encodes, so it measures");
    assert_eq!(len, wire.len(), "encoded_len disagrees with encode");

    let mut scratch = BytesMut::new();
    let split = codec::encode(packet, version, &mut scratch).expect("encodes");
    assert_eq!(
        split.wire_len(),
        wire.len(),
        "encode and encode_to_bytes disagree"
    );

    let mut buf = BytesMut::from(&wire[..]);
    let mut decoder = match packet {
        Packet::Connect(_) => Decoder::new(u32::MAX),
        _ => Decoder::with_version(version, u32::MAX),
    };
    let again = match decoder.decode(&mut buf) {
        Ok(Some(again)) => again,
        other => panic!(
            "re-encoded {version} packet does not decode: {other:?}\nwire: {:02x?}\n{packet:#?}",
            &wire[..]
        ),
    };
    assert!(buf.is_empty(), "re-encoded packet left {} bytes", buf.len());
    assert_eq!(&again, packet, "decode(encode(p)) != p in {version}");
}
