//! What crosses the send seam between a [`Connection`](super::Connection) and its transport:
//! encoded frames, the batch that carries them, the ticket that names one write, and the
//! completion that hands the batch back.
//!
//! The types make NanoMQ's "NULL msg detected in send_cb" unrepresentable: a frame exists
//! only as the result of encoding a packet (so it is never empty), a batch holds at least
//! one frame, and a completion returns the batch by value, so there is no separate pointer
//! to clear and no way to complete a write without naming what was written.

use std::io::IoSlice;

use bytes::{Bytes, BytesMut};

use super::codec::{self, EncodeError};
use super::packet::{Packet, PacketType};
use super::types::{PacketId, ProtocolVersion, QoS};

/// One fully encoded MQTT packet: a head (fixed header, variable header, and the whole
/// packet for everything but PUBLISH) and, for PUBLISH, the payload shared with every other
/// subscriber. No `Default`, no `empty()`: the only constructor is [`OutboundFrame::encode`].
#[derive(Debug, Clone)]
pub struct OutboundFrame {
    head: Bytes,
    payload: Bytes,
    packet_type: PacketType,
    packet_id: Option<PacketId>,
    qos: QoS,
    /// The session flow (its sequence number) this frame belongs to; guards a late
    /// completion from touching a newer flow that reuses the packet id.
    flow: Option<u64>,
}

/// Why a packet could not become a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("{packet_type:?} packet of {size} bytes exceeds the peer's maximum packet size {max}")]
    TooLarge {
        packet_type: PacketType,
        size: usize,
        max: u32,
    },
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl OutboundFrame {
    /// Encodes `packet` for a peer speaking `version` that accepts packets of at most
    /// `max_packet_size` bytes. `scratch` is reused across calls to save allocations.
    pub fn encode(
        packet: &Packet,
        version: ProtocolVersion,
        max_packet_size: u32,
        scratch: &mut BytesMut,
    ) -> Result<OutboundFrame, FrameError> {
        // Encode first and measure the result: the codec already sizes the packet once,
        // and a PUBLISH payload is shared, not copied, so a refused frame costs only its head.
        let encoded = codec::encode(packet, version, scratch)?;
        let size = encoded.wire_len();
        if size > max_packet_size as usize {
            return Err(FrameError::TooLarge {
                packet_type: packet.packet_type(),
                size,
                max: max_packet_size,
            });
        }
        debug_assert!(
            !encoded.head.is_empty(),
            "every MQTT packet has a fixed header"
        );
        let qos = match packet {
            Packet::Publish(p) => p.qos(),
            _ => QoS::AtMostOnce,
        };
        Ok(OutboundFrame {
            head: encoded.head,
            payload: encoded.payload,
            packet_type: packet.packet_type(),
            packet_id: packet.packet_id(),
            qos,
            flow: None,
        })
    }

    pub(crate) fn for_flow(mut self, seq: u64) -> OutboundFrame {
        self.flow = Some(seq);
        self
    }

    pub(crate) fn flow(&self) -> Option<u64> {
        self.flow
    }

    /// Bytes this frame occupies on the wire; never zero.
    pub fn wire_len(&self) -> usize {
        self.head.len() + self.payload.len()
    }

    pub fn packet_type(&self) -> PacketType {
        self.packet_type
    }

    pub fn packet_id(&self) -> Option<PacketId> {
        self.packet_id
    }

    /// The QoS of a PUBLISH frame; QoS 0 for every other packet type.
    pub fn qos(&self) -> QoS {
        self.qos
    }

    /// The head: fixed header onwards. Never empty.
    pub fn head(&self) -> &Bytes {
        &self.head
    }

    /// The PUBLISH payload; empty for every other packet type (and for empty payloads).
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    fn metadata(&self) -> FrameMeta {
        FrameMeta {
            packet_type: self.packet_type,
            packet_id: self.packet_id,
            wire_len: self.wire_len(),
        }
    }
}

/// At least one frame, written together in one wake-up (one TLS record or one QUIC stream
/// write carries many small packets). The first frame is a field, so the batch cannot be
/// empty.
#[derive(Debug, Clone)]
pub struct FrameBatch {
    first: OutboundFrame,
    rest: Vec<OutboundFrame>,
}

impl FrameBatch {
    pub fn new(first: OutboundFrame) -> FrameBatch {
        FrameBatch {
            first,
            rest: Vec::new(),
        }
    }

    pub fn push(&mut self, frame: OutboundFrame) {
        self.rest.push(frame);
    }

    /// Number of frames; at least one.
    pub fn frame_count(&self) -> usize {
        1 + self.rest.len()
    }

    pub fn wire_len(&self) -> usize {
        self.iter().map(OutboundFrame::wire_len).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = &OutboundFrame> {
        std::iter::once(&self.first).chain(self.rest.iter())
    }

    /// The non-empty chunks of the batch, in wire order, for a vectored write.
    pub fn io_slices(&self) -> Vec<IoSlice<'_>> {
        let mut slices = Vec::with_capacity(self.frame_count() * 2);
        for frame in self.iter() {
            slices.push(IoSlice::new(&frame.head));
            if !frame.payload.is_empty() {
                slices.push(IoSlice::new(&frame.payload));
            }
        }
        slices
    }

    /// The batch as one contiguous buffer, for transports without vectored writes.
    pub fn to_contiguous(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.wire_len());
        for frame in self.iter() {
            buf.extend_from_slice(&frame.head);
            buf.extend_from_slice(&frame.payload);
        }
        buf.freeze()
    }

    pub(crate) fn into_frames(self) -> impl Iterator<Item = OutboundFrame> {
        std::iter::once(self.first).chain(self.rest)
    }

    pub(crate) fn metadata(&self) -> Vec<FrameMeta> {
        self.iter().map(OutboundFrame::metadata).collect()
    }
}

/// What the writer remembers of a frame it handed out: enough to check that a completion
/// returns the same frames, and to report frames that never completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    pub packet_type: PacketType,
    pub packet_id: Option<PacketId>,
    pub wire_len: usize,
}

/// Names one write handed to the transport. Not `Clone`: the transport holds the only copy
/// and gives it back in exactly one [`SendCompletion`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a ticket must come back in a SendCompletion"]
pub struct SendTicket(u64);

impl SendTicket {
    pub(crate) fn new(id: u64) -> SendTicket {
        SendTicket(id)
    }

    /// The ticket's number, for logs.
    pub fn id(&self) -> u64 {
        self.0
    }

    /// A ticket made up from a number, for fault injection at the completion seam: the
    /// connection checks it against the write in progress and rejects it if it is not that.
    pub fn forged(id: u64) -> SendTicket {
        SendTicket(id)
    }
}

/// One write for the transport to perform: write every chunk of `frames`, in order, then
/// report a [`SendCompletion`] carrying this ticket and these frames.
#[derive(Debug)]
#[must_use = "a transmit must be written and completed"]
pub struct Transmit {
    pub ticket: SendTicket,
    pub frames: FrameBatch,
    /// The stream to write on: always the control lane except on multi-stream QUIC.
    pub lane: super::connection::LaneId,
}

/// The end of one write. Exactly one per [`Transmit`]; the frames come back by value.
#[derive(Debug)]
pub enum SendCompletion {
    /// Every byte of every frame was accepted by the transport (written, not acknowledged).
    Written {
        ticket: SendTicket,
        frames: FrameBatch,
    },
    /// The write could not finish; the connection is over.
    Failed {
        ticket: SendTicket,
        frames: FrameBatch,
        cause: TransportFault,
    },
}

impl SendCompletion {
    pub fn ticket(&self) -> &SendTicket {
        match self {
            SendCompletion::Written { ticket, .. } | SendCompletion::Failed { ticket, .. } => {
                ticket
            }
        }
    }
}

/// Why a transport stopped: what the driver saw at the IO seam.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportFault {
    /// A writer accepted zero bytes: never progress (tokio-rustls #92 spun on it).
    #[error("the writer accepted zero bytes")]
    WriteZero,
    /// A write did not finish within the send deadline.
    #[error("a write made no progress before its deadline")]
    Stalled,
    /// The peer closed its side cleanly.
    #[error("the peer closed the connection")]
    PeerClosed,
    /// The peer closed in the middle of a packet.
    #[error("the peer closed the connection in the middle of a packet")]
    PeerClosedMidPacket,
    /// The stream was reset (QUIC RESET_STREAM / STOP_SENDING with this code).
    #[error("the stream was reset with code {0}")]
    StreamReset(u64),
    /// Any other IO error, by kind and message.
    #[error("{kind:?}: {message}")]
    Io {
        kind: std::io::ErrorKind,
        message: String,
    },
}

impl From<&std::io::Error> for TransportFault {
    fn from(err: &std::io::Error) -> TransportFault {
        match err.kind() {
            std::io::ErrorKind::WriteZero => TransportFault::WriteZero,
            kind => TransportFault::Io {
                kind,
                message: err.to_string(),
            },
        }
    }
}
