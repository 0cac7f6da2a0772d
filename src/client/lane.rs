//! A lane is one MQTT byte stream: the TCP or TLS connection, the single QUIC stream, or one
//! stream of a multi-stream QUIC connection. Each lane has a writer task that owns the
//! write half and a reader task that owns the read half; the client's driver talks to them
//! through channels and never awaits IO itself.
//!
//! ```text
//!  driver ──LaneMsg──► writer task ──bytes──► network
//!    ▲                    │ owns (aborts on exit)
//!    └──LaneEvent──── reader task ◄──bytes─── network
//! ```
//!
//! Dropping a [`Lane`] aborts its writer, which aborts its reader: no task outlives the lane.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::error::ClientError;
use crate::protocol::codec::Decoder;
use crate::protocol::{Encoded, Packet};

/// Frames gathered into one write: many small MQTT packets share one TLS record or QUIC
/// stream write.
const COALESCE_LIMIT: usize = 64 * 1024;

pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// One lane instance. Never reused within a client, so an event from a lane that has been
/// replaced (after a reconnect, or a data stream reopened) is recognised as stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct LaneId(pub u64);

/// What a lane reports to the driver.
// Packets are the common case and are moved once; boxing would allocate per packet.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum LaneEvent {
    Packet(LaneId, Packet),
    /// The lane is over: `None` for a clean end of stream.
    Ended(LaneId, Option<ClientError>),
}

/// One encoded packet to write; `written` is told once the bytes were handed to the
/// transport (a QoS 0 publish completes then).
pub(crate) struct Frame {
    pub encoded: Encoded,
    pub written: Option<oneshot::Sender<Result<(), ClientError>>>,
}

enum LaneMsg {
    Frame(Frame),
    /// Write what is queued, then end the write side (FIN / close_notify) and keep reading
    /// until the peer ends its side.
    Finish,
}

/// The driver's handle on a lane.
pub(crate) struct Lane {
    pub id: LaneId,
    tx: mpsc::UnboundedSender<LaneMsg>,
    _writer: AbortOnDrop,
}

impl Lane {
    /// Queues a frame. If the writer has already failed the frame is dropped (and with it
    /// `written`); the lane's `Ended` event is on its way.
    pub fn send(&self, frame: Frame) {
        let _ = self.tx.send(LaneMsg::Frame(frame));
    }

    pub fn finish(&self) {
        let _ = self.tx.send(LaneMsg::Finish);
    }

    /// A lane over a byte stream that is already open (and handshaken: `leftover` holds
    /// bytes read past the CONNACK).
    pub fn spawn(
        id: LaneId,
        read: BoxRead,
        write: BoxWrite,
        leftover: BytesMut,
        decoder: Decoder,
        events: mpsc::Sender<LaneEvent>,
    ) -> Lane {
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(run_reader(id, read, leftover, decoder, events.clone()));
        let writer = tokio::spawn(run_writer(id, write, rx, events, AbortOnDrop(reader)));
        Lane {
            id,
            tx,
            _writer: AbortOnDrop(writer),
        }
    }

    /// A lane on a new bidirectional stream of `connection`, opened by the writer task so
    /// the driver never waits for stream credit. Frames queued meanwhile go out once it is
    /// open.
    pub fn spawn_quic(
        id: LaneId,
        connection: quinn::Connection,
        decoder: Decoder,
        events: mpsc::Sender<LaneEvent>,
    ) -> Lane {
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(async move {
            let (send, recv) = match connection.open_bi().await {
                Ok(streams) => streams,
                Err(err) => {
                    let _ = events
                        .send(LaneEvent::Ended(id, Some(ClientError::QuicLost(err))))
                        .await;
                    return;
                }
            };
            let reader = tokio::spawn(run_reader(
                id,
                Box::new(recv),
                BytesMut::new(),
                decoder,
                events.clone(),
            ));
            run_writer(id, Box::new(send), rx, events, AbortOnDrop(reader)).await;
        });
        Lane {
            id,
            tx,
            _writer: AbortOnDrop(writer),
        }
    }
}

/// Maps a stream IO error, recovering the QUIC connection error when there is one.
pub(crate) fn stream_error(err: std::io::Error) -> ClientError {
    let quic = err.get_ref().and_then(|inner| {
        if let Some(quinn::ReadError::ConnectionLost(e)) = inner.downcast_ref::<quinn::ReadError>()
        {
            return Some(e.clone());
        }
        if let Some(quinn::WriteError::ConnectionLost(e)) =
            inner.downcast_ref::<quinn::WriteError>()
        {
            return Some(e.clone());
        }
        None
    });
    match quic {
        Some(e) => ClientError::QuicLost(e),
        None => ClientError::Io(Arc::new(err)),
    }
}

async fn run_reader(
    id: LaneId,
    mut read: BoxRead,
    mut buf: BytesMut,
    mut decoder: Decoder,
    events: mpsc::Sender<LaneEvent>,
) {
    let end = loop {
        match decoder.decode(&mut buf) {
            Ok(Some(packet)) => {
                if events.send(LaneEvent::Packet(id, packet)).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(err) => break Some(ClientError::Decode(err)),
        }
        buf.reserve(8 * 1024);
        match read.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() => break None,
            Ok(0) => {
                break Some(ClientError::Protocol(format!(
                    "the stream ended inside a packet ({} bytes of it received)",
                    buf.len()
                )))
            }
            Ok(_) => {}
            Err(err) => break Some(stream_error(err)),
        }
    };
    let _ = events.send(LaneEvent::Ended(id, end)).await;
}

async fn run_writer(
    id: LaneId,
    mut write: BoxWrite,
    mut rx: mpsc::UnboundedReceiver<LaneMsg>,
    events: mpsc::Sender<LaneEvent>,
    mut reader: AbortOnDrop,
) {
    let mut buf = BytesMut::new();
    let mut written = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut finish = false;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                LaneMsg::Frame(frame) => {
                    buf.extend_from_slice(&frame.encoded.head);
                    buf.extend_from_slice(&frame.encoded.payload);
                    written.extend(frame.written);
                }
                LaneMsg::Finish => {
                    finish = true;
                    break;
                }
            }
            if buf.len() < COALESCE_LIMIT {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            // `write_all_buf` turns a writer's Ok(0) into WriteZero, never into progress.
            let result = match write.write_all_buf(&mut buf).await {
                Ok(()) => write.flush().await,
                Err(err) => Err(err),
            };
            if let Err(err) = result {
                let _ = events
                    .send(LaneEvent::Ended(id, Some(stream_error(err))))
                    .await;
                return;
            }
            for done in written.drain(..) {
                let _ = done.send(Ok(()));
            }
        }
        if finish {
            let _ = write.shutdown().await;
            // Keep reading (and so keep this task's reader alive) until the peer ends.
            reader.join().await;
            return;
        }
    }
}

/// Aborts its task when dropped, so tasks never outlive their owner.
struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    async fn join(&mut self) {
        let _ = (&mut self.0).await;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
