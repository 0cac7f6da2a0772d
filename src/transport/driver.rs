//! The driver that pumps one [`Connection`] over any byte stream (TCP, TLS, a QUIC stream).
//!
//! One task owns the connection. The read half is polled with a cancel-safe `read_buf`; the
//! write half is owned by at most one write future at a time, which takes a [`Transmit`] by
//! value and gives back the writer and a [`SendCompletion`] carrying the same frames: the
//! send-completion seam of DESIGN §3, with `Ok(0)` from the writer reported as
//! [`TransportFault::WriteZero`], never as progress.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::protocol::{
    ConnectAccept, Connection, Delivery, Event, InboundAck, PacketId, ReasonCode, SendCompletion,
    SubAck, Transmit, TransportFault, UnsubAck,
};

/// Bytes read from the transport per read call.
const READ_CHUNK: usize = 16 * 1024;

/// What the broker asks of a connection's task, through its mailbox.
#[derive(Debug)]
pub enum Command {
    Deliver(Delivery),
    AcceptConnect(ConnectAccept),
    RejectConnect(ReasonCode),
    AcceptPublish(InboundAck, ReasonCode),
    /// Ends the connection (takeover 0x8E, shutdown 0x8B, ...). v5 clients are told why.
    Disconnect(ReasonCode),
    SubAck(SubAck),
    UnsubAck(UnsubAck),
    /// The store holds the step the flow of (packet id, row) waited for.
    FlowRecorded(PacketId, u64),
    /// The store has forgotten a released inbound QoS 2 packet id.
    ReleaseRecorded(PacketId),
}

/// Receives the connection's events, in order, and may answer them at once through the
/// connection's commands.
pub trait EventSink {
    fn on_event(&mut self, now: Instant, conn: &mut Connection, event: Event);

    /// Bytes read from the transport (for statistics).
    fn on_bytes_read(&mut self, _bytes: usize) {}

    /// Bytes of completed writes (for statistics).
    fn on_bytes_written(&mut self, _bytes: usize) {}
}

/// The current time on tokio's clock (so paused-clock tests control it).
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Runs `conn` over `reader`/`writer` until it is closed and no write is outstanding (or
/// the outstanding write has stalled past its deadline). Returns the closed connection so
/// the caller can take its session back with [`Connection::into_session`].
///
/// Cancel safety: not cancel-safe; the connection's state is lost if the future is
/// dropped. Run it to completion in its own task.
pub async fn drive<R, W>(
    mut reader: R,
    writer: W,
    mut conn: Connection,
    sink: &mut impl EventSink,
    mailbox: &mut mpsc::UnboundedReceiver<Command>,
) -> Connection
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut writer = Some(writer);
    let mut write: Option<WriteFuture<W>> = None;
    let progress = Arc::new(AtomicUsize::new(0));
    // The ticket of the write in progress and how much of it was reported as progress.
    let mut in_flight = (0u64, 0usize);
    let mut read_open = true;
    let mut mailbox_open = true;

    loop {
        let t = now();
        while let Some(event) = conn.poll_event() {
            sink.on_event(t, &mut conn, event);
        }
        if write.is_none() {
            if let Some(w) = writer.take() {
                match conn.poll_transmit(t) {
                    Some(transmit) => {
                        progress.store(0, Ordering::Relaxed);
                        in_flight = (transmit.ticket.id(), 0);
                        write = Some(Box::pin(write_batch(w, transmit, progress.clone())));
                    }
                    None => writer = Some(w),
                }
            }
        }
        if conn.is_closed() && (write.is_none() || conn.is_write_stalled(t)) {
            break;
        }
        let deadline = conn.poll_timeout().map(tokio::time::Instant::from_std);
        let may_read = read_open && conn.wants_read() && !conn.is_closed();
        tokio::select! {
            read = reader.read_buf(&mut buf), if may_read => {
                let t = now();
                match read {
                    Ok(0) => {
                        read_open = false;
                        conn.handle_transport_closed(t, TransportFault::PeerClosed);
                    }
                    Ok(n) => {
                        sink.on_bytes_read(n);
                        conn.handle_bytes(t, &buf);
                        buf.clear();
                    }
                    Err(err) => {
                        read_open = false;
                        conn.handle_transport_closed(t, TransportFault::from(&err));
                    }
                }
            }
            done = poll_write(&mut write), if write.is_some() => {
                let (w, completion) = done;
                write = None;
                writer = Some(w);
                complete(sink, &mut conn, completion);
            }
            command = mailbox.recv(), if mailbox_open => {
                mailbox_open = apply(now(), &mut conn, command);
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                let t = now();
                // Bytes the write accepted since the last look count as progress.
                let written = progress.load(Ordering::Relaxed);
                if write.is_some() && written > in_flight.1 {
                    let _ = conn.handle_write_progress(t, in_flight.0, written - in_flight.1);
                    in_flight.1 = written;
                }
                conn.handle_timeout(t);
            }
        }
    }
    // Nothing more will be written: close the write side politely if we still own it.
    if let Some(mut w) = writer {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), w.shutdown()).await;
    }
    conn
}

type WriteFuture<W> = Pin<Box<dyn Future<Output = (W, SendCompletion)> + Send>>;

async fn poll_write<W>(write: &mut Option<WriteFuture<W>>) -> (W, SendCompletion) {
    match write {
        Some(fut) => fut.await,
        // The select guard keeps this branch off when there is no write.
        None => std::future::pending().await,
    }
}

pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Hands a write's completion to the connection (and its size to the statistics).
pub(crate) fn complete(
    sink: &mut (impl EventSink + ?Sized),
    conn: &mut Connection,
    completion: SendCompletion,
) {
    if let SendCompletion::Written { frames, .. } = &completion {
        sink.on_bytes_written(frames.wire_len());
    }
    if let Err(err) = conn.handle_completion(now(), completion) {
        // Cannot happen with our drivers; the connection has closed loudly.
        tracing::error!(error = %err, "completion rejected");
    }
}

/// Applies one mailbox message; `None` (the broker dropped the mailbox) means shutdown.
/// Returns whether the mailbox is still open.
pub(crate) fn apply(now: Instant, conn: &mut Connection, command: Option<Command>) -> bool {
    let Some(command) = command else {
        conn.disconnect(now, ReasonCode::ServerShuttingDown);
        return false;
    };
    match command {
        Command::Deliver(delivery) => {
            conn.deliver(now, delivery);
        }
        Command::AcceptConnect(accept) => {
            if let Err(err) = conn.accept_connect(now, accept) {
                tracing::debug!(error = %err, "connect decision arrived too late");
            }
        }
        Command::RejectConnect(reason) => {
            if let Err(err) = conn.reject_connect(now, reason) {
                tracing::debug!(error = %err, "connect refusal arrived too late");
            }
        }
        Command::AcceptPublish(ack, reason) => conn.accept_publish(now, ack, reason),
        Command::Disconnect(reason) => conn.disconnect(now, reason),
        Command::SubAck(suback) => conn.send_suback(now, suback),
        Command::UnsubAck(unsuback) => conn.send_unsuback(now, unsuback),
        Command::FlowRecorded(packet_id, row) => conn.flow_recorded(now, packet_id, row),
        Command::ReleaseRecorded(packet_id) => conn.release_recorded(now, packet_id),
    }
    true
}

/// Writes every chunk of the batch with vectored writes, then flushes. The writer and the
/// frames come back together, whatever happened.
pub(crate) async fn write_batch<W>(
    mut writer: W,
    transmit: Transmit,
    progress: Arc<AtomicUsize>,
) -> (W, SendCompletion)
where
    W: AsyncWrite + Unpin,
{
    let Transmit { ticket, frames, .. } = transmit;
    let mut chunks: Vec<Bytes> = Vec::with_capacity(frames.frame_count() * 2);
    for frame in frames.iter() {
        chunks.push(frame.head().clone());
        if !frame.payload().is_empty() {
            chunks.push(frame.payload().clone());
        }
    }
    let result = match write_all_chunks(&mut writer, &mut chunks, &progress).await {
        Ok(()) => writer.flush().await,
        Err(err) => Err(err),
    };
    let completion = match result {
        Ok(()) => SendCompletion::Written { ticket, frames },
        Err(err) => SendCompletion::Failed {
            ticket,
            frames,
            cause: TransportFault::from(&err),
        },
    };
    (writer, completion)
}

/// `write_all` over a list of chunks with vectored writes. `Ok(0)` is `WriteZero`.
async fn write_all_chunks<W>(
    writer: &mut W,
    chunks: &mut [Bytes],
    progress: &AtomicUsize,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut first = 0;
    while first < chunks.len() {
        let n = {
            let slices: Vec<IoSlice<'_>> = chunks[first..]
                .iter()
                .take(64)
                .map(|c| IoSlice::new(c))
                .collect();
            writer.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the writer accepted zero bytes",
            ));
        }
        progress.fetch_add(n, Ordering::Relaxed);
        let mut left = n;
        while left > 0 && first < chunks.len() {
            let len = chunks[first].len();
            if left >= len {
                left -= len;
                first += 1;
            } else {
                let _ = chunks[first].split_to(left);
                left = 0;
            }
        }
    }
    Ok(())
}
