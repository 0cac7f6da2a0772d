//! The data representations of §1.5: variable byte integers, two- and four-byte integers,
//! UTF-8 strings and binary data. Reading goes through a bounds-checked [`Reader`] over
//! `Bytes`, so every string and payload is a slice of the packet's buffer. Writing goes
//! through a [`Sink`], which either writes bytes or only counts them: the encoder runs the
//! same code over both, so a computed length cannot drift from what is written.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use crate::protocol::types::MqttString;

/// The largest value a four-byte variable byte integer holds (§1.5.5).
pub(crate) const MAX_VARINT: u32 = 268_435_455;

/// Parses a variable byte integer from the start of `bytes`: `Ok(None)` when `bytes` ends
/// before the last byte of the integer, `Ok(Some((value, len)))` otherwise.
///
/// Errors as soon as the bytes present prove the integer invalid: a fourth byte with the
/// continuation bit, or a last byte of zero after the first [MQTT-1.5.5-1].
pub(crate) fn parse_varint(bytes: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (index, &byte) in bytes.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            if byte == 0 && index > 0 {
                return Err(DecodeError::VarIntNotMinimal);
            }
            return Ok(Some((value, index + 1)));
        }
        if index == 3 {
            return Err(DecodeError::VarIntTooLong);
        }
    }
    Ok(None)
}

/// The number of bytes the variable byte integer `value` takes on the wire.
pub(crate) fn varint_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// A bounds-checked cursor over the bytes of one packet (or of one property section).
/// Running out is always [`DecodeError::Truncated`]: the fixed header already said how long
/// the packet is, so a short read means the content disagrees with it, not that more bytes
/// are on the way.
#[derive(Debug)]
pub(crate) struct Reader {
    bytes: Bytes,
}

impl Reader {
    pub(crate) fn new(bytes: Bytes) -> Reader {
        Reader { bytes }
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.bytes
            .try_get_u8()
            .map_err(|_| DecodeError::Truncated { field })
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.bytes
            .try_get_u16()
            .map_err(|_| DecodeError::Truncated { field })
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.bytes
            .try_get_u32()
            .map_err(|_| DecodeError::Truncated { field })
    }

    pub(crate) fn varint(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        match parse_varint(&self.bytes)? {
            Some((value, len)) => {
                self.bytes.advance(len);
                Ok(value)
            }
            None => Err(DecodeError::Truncated { field }),
        }
    }

    /// The next `len` bytes, as a slice of the packet buffer.
    pub(crate) fn take(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if len > self.bytes.len() {
            return Err(DecodeError::Truncated { field });
        }
        Ok(self.bytes.split_to(len))
    }

    /// Everything left (a PUBLISH payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.bytes)
    }

    /// Binary data: a two-byte length, then that many bytes (§1.5.6).
    pub(crate) fn binary(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(field)?;
        self.take(usize::from(len), field)
    }

    /// A UTF-8 encoded string (§1.5.4): valid UTF-8 without U+0000 [MQTT-1.5.4-1, -2].
    pub(crate) fn string(&mut self, field: &'static str) -> Result<MqttString, DecodeError> {
        let bytes = self.binary(field)?;
        MqttString::from_bytes(bytes).map_err(|error| DecodeError::InvalidString { field, error })
    }
}

/// Where encoded bytes go: a real buffer, or a [`Counter`] that only adds up lengths.
pub(crate) trait Sink {
    fn put_u8(&mut self, value: u8);
    fn put_u16(&mut self, value: u16);
    fn put_u32(&mut self, value: u32);
    fn put_slice(&mut self, bytes: &[u8]);

    /// Callers check `value <= MAX_VARINT` first; larger values are cut to four bytes.
    fn put_varint(&mut self, value: u32) {
        let mut rest = value;
        for _ in 0..4 {
            let byte = (rest & 0x7F) as u8;
            rest >>= 7;
            if rest == 0 {
                self.put_u8(byte);
                return;
            }
            self.put_u8(byte | 0x80);
        }
    }

    fn put_string(&mut self, value: &MqttString) {
        // MqttString holds at most 65535 bytes by construction.
        self.put_u16(value.len() as u16);
        self.put_slice(value.as_bytes());
    }

    fn put_binary(&mut self, field: &'static str, value: &[u8]) -> Result<(), EncodeError> {
        let len = u16::try_from(value.len()).map_err(|_| EncodeError::BinaryTooLong {
            field,
            len: value.len(),
        })?;
        self.put_u16(len);
        self.put_slice(value);
        Ok(())
    }
}

/// A sink that only counts: the encoder's dry run, which yields exact lengths.
#[derive(Debug, Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    fn put_u8(&mut self, _: u8) {
        self.0 += 1;
    }
    fn put_u16(&mut self, _: u16) {
        self.0 += 2;
    }
    fn put_u32(&mut self, _: u32) {
        self.0 += 4;
    }
    fn put_slice(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

impl Sink for BytesMut {
    fn put_u8(&mut self, value: u8) {
        BufMut::put_u8(self, value);
    }
    fn put_u16(&mut self, value: u16) {
        BufMut::put_u16(self, value);
    }
    fn put_u32(&mut self, value: u32) {
        BufMut::put_u32(self, value);
    }
    fn put_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_varint(value: u32) -> Vec<u8> {
        let mut buf = BytesMut::new();
        Sink::put_varint(&mut buf, value);
        buf.to_vec()
    }

    #[test]
    fn varint_boundaries_round_trip() {
        for (value, wire) in [
            (0u32, vec![0x00]),
            (127, vec![0x7F]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xFF, 0x7F]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (2_097_151, vec![0xFF, 0xFF, 0x7F]),
            (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
            (MAX_VARINT, vec![0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            assert_eq!(encode_varint(value), wire, "{value}");
            assert_eq!(varint_len(value), wire.len(), "{value}");
            assert_eq!(
                parse_varint(&wire),
                Ok(Some((value, wire.len()))),
                "{value}"
            );
        }
    }

    #[test]
    fn varint_prefixes_are_incomplete() {
        assert_eq!(parse_varint(&[]), Ok(None));
        assert_eq!(parse_varint(&[0x80]), Ok(None));
        assert_eq!(parse_varint(&[0xFF, 0xFF, 0xFF]), Ok(None));
    }

    #[test]
    fn varint_with_a_fifth_byte_is_rejected_before_it_arrives() {
        assert_eq!(
            parse_varint(&[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(DecodeError::VarIntTooLong)
        );
    }

    #[test]
    fn varint_must_be_minimal() {
        // [MQTT-1.5.5-1]: 0 written in two bytes, 127 written in three.
        assert_eq!(
            parse_varint(&[0x80, 0x00]),
            Err(DecodeError::VarIntNotMinimal)
        );
        assert_eq!(
            parse_varint(&[0xFF, 0x80, 0x00]),
            Err(DecodeError::VarIntNotMinimal)
        );
    }

    #[test]
    fn counter_agrees_with_buffer() {
        let s = MqttString::new("héllo").expect("valid");
        let mut counter = Counter::default();
        let mut buf = BytesMut::new();
        for sink in [&mut counter as &mut dyn Sink, &mut buf as &mut dyn Sink] {
            sink.put_u8(1);
            sink.put_u16(2);
            sink.put_u32(3);
            sink.put_varint(300);
            sink.put_string(&s);
            sink.put_binary("data", b"\xFF\x00").expect("short");
        }
        assert_eq!(counter.0, buf.len());
    }

    #[test]
    fn binary_longer_than_u16_is_an_encode_error() {
        let big = vec![0u8; 65_536];
        assert_eq!(
            Counter::default().put_binary("password", &big),
            Err(EncodeError::BinaryTooLong {
                field: "password",
                len: 65_536
            })
        );
    }

    #[test]
    fn reader_reports_truncation_with_the_field() {
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x05, b'a']));
        assert_eq!(
            r.string("client identifier"),
            Err(DecodeError::Truncated {
                field: "client identifier"
            })
        );
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x01, 0xFF]));
        assert!(matches!(
            r.string("topic"),
            Err(DecodeError::InvalidString { .. })
        ));
    }
}
