//! The QUIC driver: one [`Connection`] over the streams of one QUIC connection.
//!
//! The client's first bidirectional stream is the control lane; every further stream it
//! opens becomes a data lane (a client that opens only one is the EMQX single-stream
//! convention, served by the same code). Each stream has a reader task feeding one bounded
//! channel (backpressure: when the connection stops reading, readers stop), and each lane's
//! write runs in its own task, so a stream whose peer stopped reading stalls only itself.
//! A data lane the connection gives up on is reset; one the client resets is taken out of
//! service without ending the session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::protocol::{Connection, LaneId, SendCompletion, TransportFault};
use crate::transport::driver::{
    apply, complete, now, sleep_until, write_batch, Command, EventSink,
};

/// Read size per stream read.
const READ_CHUNK: usize = 16 * 1024;
/// Application error code for streams we reset (a stalled data stream).
const RESET_STALLED: u32 = 0x1;

enum ReadEvent {
    Data(Bytes),
    Closed(TransportFault),
}

struct LaneWrite {
    ticket: u64,
    reported: usize,
    progress: Arc<AtomicUsize>,
    cancel: Option<oneshot::Sender<()>>,
}

/// Runs `conn` over the QUIC connection until it is closed. `control` is the client's
/// first bidirectional stream. Returns the closed connection.
///
/// Cancel safety: not cancel-safe; run it to completion in its own task.
pub async fn drive(
    quic: quinn::Connection,
    control: (quinn::SendStream, quinn::RecvStream),
    mut conn: Connection,
    sink: &mut (dyn EventSink + Send),
    mailbox: &mut mpsc::UnboundedReceiver<Command>,
) -> Connection {
    let (read_tx, mut read_rx) = mpsc::channel::<(LaneId, ReadEvent)>(32);
    let (done_tx, mut done_rx) =
        mpsc::unbounded_channel::<(LaneId, quinn::SendStream, SendCompletion)>();
    let mut readers: HashMap<LaneId, JoinHandle<()>> = HashMap::new();
    let mut idle: HashMap<LaneId, quinn::SendStream> = HashMap::new();
    let mut writes: HashMap<LaneId, LaneWrite> = HashMap::new();
    let (control_send, control_recv) = control;
    readers.insert(
        LaneId::CONTROL,
        spawn_reader(LaneId::CONTROL, control_recv, read_tx.clone()),
    );
    idle.insert(LaneId::CONTROL, control_send);
    let mut mailbox_open = true;
    let mut accepting = true;

    loop {
        let t = now();
        while let Some(event) = conn.poll_event() {
            sink.on_event(t, &mut conn, event);
        }
        while let Some(lane) = conn.poll_lane_reset() {
            stop_lane(lane, &mut readers, &mut idle, &mut writes);
        }
        while let Some(transmit) = conn.poll_transmit(t) {
            let lane = transmit.lane;
            let Some(send) = idle.remove(&lane) else {
                // The lane's stream is gone; the connection learns it from the reader.
                tracing::debug!(%lane, "transmit for a lane without a stream");
                continue;
            };
            let progress = Arc::new(AtomicUsize::new(0));
            let (cancel, cancelled) = oneshot::channel();
            writes.insert(
                lane,
                LaneWrite {
                    ticket: transmit.ticket.id(),
                    reported: 0,
                    progress: progress.clone(),
                    cancel: Some(cancel),
                },
            );
            tokio::spawn(write_task(
                lane,
                send,
                transmit,
                progress,
                cancelled,
                done_tx.clone(),
            ));
        }
        let control_writing = writes.contains_key(&LaneId::CONTROL);
        if conn.is_closed() && (!control_writing || conn.is_write_stalled(t)) {
            break;
        }
        let deadline = conn.poll_timeout().map(tokio::time::Instant::from_std);
        let may_read = conn.wants_read() && !conn.is_closed();
        tokio::select! {
            read = read_rx.recv(), if may_read => {
                let t = now();
                match read {
                    Some((lane, ReadEvent::Data(bytes))) => {
                        sink.on_bytes_read(bytes.len());
                        conn.handle_lane_bytes(t, lane, &bytes);
                    }
                    Some((lane, ReadEvent::Closed(fault))) => {
                        readers.remove(&lane);
                        if !lane.is_control() {
                            idle.remove(&lane);
                        }
                        conn.handle_lane_closed(t, lane, fault);
                    }
                    None => conn.handle_transport_closed(t, TransportFault::PeerClosed),
                }
            }
            done = done_rx.recv() => {
                let Some((lane, send, completion)) = done else { continue };
                writes.remove(&lane);
                complete(sink, &mut conn, completion);
                if readers.contains_key(&lane) {
                    idle.insert(lane, send);
                }
            }
            stream = quic.accept_bi(), if accepting && !conn.is_closed() => {
                match stream {
                    Ok((send, recv)) => {
                        let lane = LaneId(u64::from(recv.id()));
                        if conn.lane_count() == 1 {
                            tracing::info!("client opened a data stream: multi-stream mode");
                        }
                        conn.open_lane(lane);
                        readers.insert(lane, spawn_reader(lane, recv, read_tx.clone()));
                        idle.insert(lane, send);
                    }
                    Err(err) => {
                        accepting = false;
                        conn.handle_transport_closed(now(), quic_fault(&err));
                    }
                }
            }
            command = mailbox.recv(), if mailbox_open => {
                mailbox_open = apply(now(), &mut conn, command);
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                let t = now();
                for write in writes.values_mut() {
                    let written = write.progress.load(Ordering::Relaxed);
                    if written > write.reported {
                        let _ = conn.handle_write_progress(t, write.ticket, written - write.reported);
                        write.reported = written;
                    }
                }
                conn.handle_timeout(t);
            }
        }
    }
    // Finish the control stream so a final DISCONNECT is delivered; stop everything else.
    if let Some(mut send) = idle.remove(&LaneId::CONTROL) {
        let _ = send.finish();
    }
    for (_, reader) in readers {
        reader.abort();
    }
    for (_, mut write) in writes {
        if let Some(cancel) = write.cancel.take() {
            let _ = cancel.send(());
        }
    }
    conn
}

fn spawn_reader(
    lane: LaneId,
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<(LaneId, ReadEvent)>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let event = match recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => ReadEvent::Data(chunk.bytes),
                Ok(None) => ReadEvent::Closed(TransportFault::PeerClosed),
                Err(err) => ReadEvent::Closed(read_fault(&err)),
            };
            let last = matches!(event, ReadEvent::Closed(_));
            if tx.send((lane, event)).await.is_err() || last {
                return;
            }
        }
    })
}

async fn write_task(
    lane: LaneId,
    mut send: quinn::SendStream,
    transmit: crate::protocol::Transmit,
    progress: Arc<AtomicUsize>,
    cancelled: oneshot::Receiver<()>,
    done: mpsc::UnboundedSender<(LaneId, quinn::SendStream, SendCompletion)>,
) {
    let outcome = tokio::select! {
        (_, completion) = write_batch(&mut send, transmit, progress) => Some(completion),
        _ = cancelled => None,
    };
    match outcome {
        Some(completion) => {
            let _ = done.send((lane, send, completion));
        }
        None => {
            // The connection gave up on this stream: reset it so the client knows.
            let _ = send.reset(RESET_STALLED.into());
        }
    }
}

/// A data lane the connection gave up on: reset its stream, stop reading it.
fn stop_lane(
    lane: LaneId,
    readers: &mut HashMap<LaneId, JoinHandle<()>>,
    idle: &mut HashMap<LaneId, quinn::SendStream>,
    writes: &mut HashMap<LaneId, LaneWrite>,
) {
    if let Some(reader) = readers.remove(&lane) {
        reader.abort();
    }
    if let Some(mut send) = idle.remove(&lane) {
        let _ = send.reset(RESET_STALLED.into());
    }
    if let Some(mut write) = writes.remove(&lane) {
        if let Some(cancel) = write.cancel.take() {
            let _ = cancel.send(());
        }
    }
}

fn read_fault(err: &quinn::ReadError) -> TransportFault {
    match err {
        quinn::ReadError::Reset(code) => TransportFault::StreamReset(code.into_inner()),
        quinn::ReadError::ConnectionLost(e) => quic_fault(e),
        other => TransportFault::Io {
            kind: std::io::ErrorKind::Other,
            message: other.to_string(),
        },
    }
}

fn quic_fault(err: &quinn::ConnectionError) -> TransportFault {
    match err {
        quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::LocallyClosed => {
            TransportFault::PeerClosed
        }
        quinn::ConnectionError::TimedOut => TransportFault::Io {
            kind: std::io::ErrorKind::TimedOut,
            message: "QUIC idle timeout".to_string(),
        },
        other => TransportFault::Io {
            kind: std::io::ErrorKind::ConnectionAborted,
            message: other.to_string(),
        },
    }
}
