//! The MQTT 3.1.1 and 5.0 wire format: bytes to [`Packet`]s and back. No IO, no clock.
//!
//! ```text
//!  BytesMut ──► Decoder::decode ──► Packet          Packet ──► encode ──► Encoded { head, payload }
//!   (read buf)   fixed header,       (strings and              (head written into a reused
//!                max packet size,     payloads are              scratch buffer; payload is
//!                then the body        slices of the buffer)     the PUBLISH's own Bytes)
//! ```
//!
//! - **Decoding** is strict: every violation the spec calls malformed or a protocol error is
//!   a typed [`DecodeError`], and [`DecodeError::reason_code`] says what to send back. It
//!   never panics, and never allocates for a length field before the bytes it announces
//!   have arrived.
//! - **Encoding** refuses (with [`EncodeError`]) whatever the decoder would refuse, so a
//!   packet that encodes also decodes. v5-only fields (properties, most reason codes) are
//!   ignored when encoding 3.1.1, as the [`packet`](crate::protocol::packet) docs say.
//! - [`encoded_len`] runs the same body writer as [`encode`] over a byte counter, so the two
//!   agree by construction.
//!
//! ```
//! use bytes::BytesMut;
//! use twinmq::protocol::codec::{self, Decoder};
//! use twinmq::protocol::{Disconnect, Packet, ProtocolVersion, ReasonCode};
//!
//! let v5 = ProtocolVersion::V5;
//! let mut decoder = Decoder::with_version(v5, 1024);
//! let mut read_buf = BytesMut::from(&[0xE0, 0x01][..]);
//! assert_eq!(decoder.decode(&mut read_buf), Ok(None)); // waits for the reason code
//! read_buf.extend_from_slice(&[0x8E]);
//! let packet = decoder.decode(&mut read_buf)?.expect("whole packet");
//! assert_eq!(packet, Packet::Disconnect(Disconnect::new(ReasonCode::SessionTakenOver)));
//!
//! let mut scratch = BytesMut::new();
//! let encoded = codec::encode(&packet, v5, &mut scratch)?;
//! assert_eq!(encoded.head.as_ref(), &[0xE0, 0x01, 0x8E]);
//! assert_eq!(codec::encoded_len(&packet, v5)?, encoded.wire_len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// Network input must never panic the decoder: no indexing, unwrap or panic outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable
    )
)]

mod decode;
mod encode;
mod error;
mod primitives;
mod properties;
mod reason;

#[cfg(test)]
pub(crate) mod strategies;
#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};

pub(crate) use decode::subscription_options;
pub(crate) use encode::options_byte as subscription_options_byte;
pub use error::{DecodeError, EncodeError};

use crate::protocol::packet::{Packet, PacketType};
use crate::protocol::types::ProtocolVersion;
use primitives::{parse_varint, varint_len, Counter, Reader, Sink};

/// The largest remaining length a four-byte variable byte integer can express (§2.1.4).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Frames and decodes packets from a read buffer, one at a time.
///
/// Server side, [`Decoder::new`] knows no version until a CONNECT arrives; client side,
/// [`Decoder::with_version`] decodes in the version the client asked for.
#[derive(Debug, Clone)]
pub struct Decoder {
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
}

impl Decoder {
    /// Server side: the version is learned from CONNECT.
    pub fn new(max_packet_size: u32) -> Decoder {
        Decoder {
            version: None,
            max_packet_size,
        }
    }

    /// Client side, or after CONNECT.
    pub fn with_version(version: ProtocolVersion, max_packet_size: u32) -> Decoder {
        Decoder {
            version: Some(version),
            max_packet_size,
        }
    }

    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = Some(version);
    }

    /// The largest whole packet (fixed header included) accepted; larger ones are
    /// [`DecodeError::PacketTooLarge`].
    pub fn set_max_packet_size(&mut self, max: u32) {
        self.max_packet_size = max;
    }

    /// `Ok(None)`: `buf` does not yet hold a whole packet (nothing consumed). `Ok(Some(p))`:
    /// the packet's bytes were consumed from `buf`, and its topics, strings and payload are
    /// slices of them.
    ///
    /// The maximum packet size is enforced as soon as the fixed header is readable, before
    /// the body arrives. Decoding a CONNECT sets the decoder's version. With no version
    /// known, any packet other than CONNECT is [`DecodeError::ExpectedConnect`].
    ///
    /// After an error the stream cannot be resynchronised. An error in the fixed header
    /// (type, flags, remaining length, size) consumes nothing; an error in the body consumes
    /// the offending packet.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        // Check the first byte before waiting for more: a bad type or flags is final.
        let (packet_type, flags) = decode::first_byte(first, self.version)?;
        let Some((remaining, len_bytes)) = parse_varint(buf.get(1..).unwrap_or_default())? else {
            return Ok(None);
        };
        // Both fit easily: remaining <= MAX_REMAINING_LENGTH, len_bytes <= 4.
        let header_len = 1 + len_bytes;
        let total = header_len + remaining as usize;
        if total > self.max_packet_size as usize {
            return Err(DecodeError::PacketTooLarge {
                size: total,
                max: self.max_packet_size,
            });
        }
        if buf.len() < total {
            return Ok(None);
        }
        // Zero copy: strings and payloads are slices of this one frozen allocation.
        let frame = buf.split_to(total).freeze();
        let mut r = Reader::new(frame.slice(header_len..));
        let packet = match (packet_type, self.version) {
            (PacketType::Connect, _) => Packet::Connect(Box::new(decode::connect(&mut r)?)),
            (_, Some(version)) => decode::packet(packet_type, flags, version, &mut r)?,
            // first_byte() lets only CONNECT through without a version.
            (_, None) => return Err(DecodeError::ExpectedConnect { packet_type }),
        };
        if !r.is_empty() {
            return Err(DecodeError::TrailingBytes {
                packet_type,
                extra: r.len(),
            });
        }
        if let Packet::Connect(connect) = &packet {
            self.version = Some(connect.protocol);
        }
        Ok(Some(packet))
    }
}

/// An encoded packet: `head` is everything but a PUBLISH payload (never empty), `payload` is
/// the PUBLISH payload, shared with the packet rather than copied (empty for other packets).
/// Write `head` then `payload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub head: Bytes,
    pub payload: Bytes,
}

impl Encoded {
    /// Bytes on the wire: `head` plus `payload`.
    pub fn wire_len(&self) -> usize {
        self.head.len() + self.payload.len()
    }
}

/// Writes the whole packet except a PUBLISH payload into `scratch` and splits it off
/// (`scratch.split().freeze()`, so the allocation is reused across calls). `scratch` is a
/// reusable allocation, not an output: anything it held before the call is discarded.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    scratch: &mut BytesMut,
) -> Result<Encoded, EncodeError> {
    let size = measure(packet, version)?;
    scratch.clear();
    scratch.reserve(size.head_len());
    write_head(packet, version, &size, scratch)?;
    Ok(Encoded {
        head: scratch.split().freeze(),
        payload: payload(packet).clone(),
    })
}

/// Whole packet, contiguous (clients, tests).
pub fn encode_to_bytes(packet: &Packet, version: ProtocolVersion) -> Result<Bytes, EncodeError> {
    let size = measure(packet, version)?;
    let mut buf = BytesMut::with_capacity(size.wire_len());
    write_head(packet, version, &size, &mut buf)?;
    buf.extend_from_slice(payload(packet));
    Ok(buf.freeze())
}

/// Exact size on the wire (fixed header + remaining length), without encoding.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    measure(packet, version).map(|size| size.wire_len())
}

/// The lengths of one packet, from a dry run of the body writer.
struct Size {
    /// Body bytes written by `encode::body` (everything but a PUBLISH payload).
    body: usize,
    remaining: usize,
}

impl Size {
    fn fixed_header(&self) -> usize {
        // `remaining` was checked against MAX_REMAINING_LENGTH, so it fits a u32.
        1 + varint_len(self.remaining as u32)
    }

    fn head_len(&self) -> usize {
        self.fixed_header() + self.body
    }

    fn wire_len(&self) -> usize {
        self.fixed_header() + self.remaining
    }
}

fn measure(packet: &Packet, version: ProtocolVersion) -> Result<Size, EncodeError> {
    let mut counter = Counter::default();
    encode::body(packet, version, &mut counter)?;
    let body = counter.0;
    let remaining = body.saturating_add(payload(packet).len());
    if remaining > MAX_REMAINING_LENGTH {
        return Err(EncodeError::RemainingLengthTooLarge {
            packet_type: packet.packet_type(),
            remaining_length: remaining,
        });
    }
    Ok(Size { body, remaining })
}

fn write_head(
    packet: &Packet,
    version: ProtocolVersion,
    size: &Size,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    Sink::put_u8(buf, encode::first_byte(packet));
    Sink::put_varint(buf, size.remaining as u32);
    // Cannot fail: the dry run in `measure` made the same checks.
    encode::body(packet, version, buf)
}

fn payload(packet: &Packet) -> &Bytes {
    static EMPTY: Bytes = Bytes::new();
    match packet {
        Packet::Publish(p) => &p.payload,
        _ => &EMPTY,
    }
}
