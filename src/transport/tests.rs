//! The driver over small mock IO types of our own (tokio's in-memory duplex can leave
//! zero-length operations pending, tokio#8321): a scripted reader, and writers that accept
//! everything, a few bytes at a time, nothing (`Ok(0)`), or never answer.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use super::driver::{drive, Command, EventSink};
use crate::protocol::codec::{encode_to_bytes, Decoder};
use crate::protocol::{
    CloseReason, ConnectAccept, Connection, ConnectionConfig, Delivery, Event, MqttString, Packet,
    Properties, ProtocolVersion, QoS, ReasonCode, SessionState, TopicName, TransportFault,
};

/// Yields its chunks, then EOF or pending forever.
struct ScriptedReader {
    chunks: VecDeque<Bytes>,
    eof: bool,
}

impl AsyncRead for ScriptedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.chunks.pop_front() {
            Some(chunk) => {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.chunks.push_front(chunk.slice(n..));
                }
                Poll::Ready(Ok(()))
            }
            None if self.eof => Poll::Ready(Ok(())),
            // Never woken: the connection must end by other means (or the clock).
            None => Poll::Pending,
        }
    }
}

#[derive(Clone, Copy)]
enum WriteMode {
    /// Accepts at most this many bytes per call.
    Chunked(usize),
    WriteZero,
    Stall,
}

#[derive(Clone)]
struct MockWriter {
    mode: WriteMode,
    written: Arc<Mutex<Vec<u8>>>,
    calls: Arc<Mutex<usize>>,
}

impl AsyncWrite for MockWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Ok(mut calls) = self.calls.lock() {
            *calls += 1;
        }
        match self.mode {
            WriteMode::Chunked(max) => {
                let n = buf.len().min(max);
                if let Ok(mut w) = self.written.lock() {
                    w.extend_from_slice(&buf[..n]);
                }
                Poll::Ready(Ok(n))
            }
            WriteMode::WriteZero => Poll::Ready(Ok(0)),
            WriteMode::Stall => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Accepts CONNECT with the given session, records every event.
struct AcceptAll {
    session: Option<SessionState>,
    events: Vec<String>,
    closed: Option<CloseReason>,
}

impl EventSink for AcceptAll {
    fn on_event(&mut self, now: Instant, conn: &mut Connection, event: Event) {
        self.events.push(format!("{event:?}"));
        match event {
            Event::Connect(_) => {
                let accept = ConnectAccept {
                    session: self.session.take().unwrap_or_default(),
                    session_present: false,
                    assigned_client_id: None,
                };
                conn.accept_connect(now, accept).expect("awaiting decision");
            }
            Event::Closed(reason) => self.closed = Some(reason),
            _ => {}
        }
    }
}

fn connect_bytes() -> Bytes {
    let connect = crate::protocol::Connect {
        protocol: ProtocolVersion::V5,
        clean_start: false,
        keep_alive: 0,
        client_id: MqttString::new("mock").expect("valid"),
        will: None,
        username: None,
        password: None,
        properties: Properties {
            session_expiry_interval: Some(60),
            ..Properties::default()
        },
    };
    encode_to_bytes(&Packet::Connect(Box::new(connect)), ProtocolVersion::V5).expect("encodes")
}

fn session_with_one_qos1() -> SessionState {
    let mut session = SessionState::new();
    let delivery = Delivery::new(
        TopicName::new("t").expect("valid"),
        &b"kept"[..],
        QoS::AtLeastOnce,
    );
    session
        .enqueue(delivery, crate::protocol::QueueLimit::drop_new(10))
        .expect("room");
    session
}

struct Run {
    conn: Connection,
    sink: AcceptAll,
    written: Vec<u8>,
    write_calls: usize,
}

async fn run(mode: WriteMode, eof: bool, config: ConnectionConfig) -> Run {
    let reader = ScriptedReader {
        chunks: VecDeque::from([connect_bytes()]),
        eof,
    };
    let writer = MockWriter {
        mode,
        written: Arc::new(Mutex::new(Vec::new())),
        calls: Arc::new(Mutex::new(0)),
    };
    let written = writer.written.clone();
    let calls = writer.calls.clone();
    let mut sink = AcceptAll {
        session: Some(session_with_one_qos1()),
        events: Vec::new(),
        closed: None,
    };
    let (_tx, mut rx) = mpsc::unbounded_channel::<Command>();
    let conn = Connection::new(config, super::driver::now());
    let conn = drive(reader, writer, conn, &mut sink, &mut rx).await;
    let written = written.lock().map(|w| w.clone()).unwrap_or_default();
    let write_calls = calls.lock().map(|c| *c).unwrap_or_default();
    Run {
        conn,
        sink,
        written,
        write_calls,
    }
}

fn decode_all(bytes: &[u8]) -> Vec<Packet> {
    let mut decoder = Decoder::with_version(ProtocolVersion::V5, u32::MAX);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(p) = decoder.decode(&mut buf).expect("broker output decodes") {
        out.push(p);
    }
    assert!(buf.is_empty(), "trailing bytes: {buf:?}");
    out
}

#[tokio::test(start_paused = true)]
async fn write_zero_ends_the_connection_with_a_typed_cause_and_keeps_qos1() {
    let r = run(WriteMode::WriteZero, false, ConnectionConfig::default()).await;
    assert_eq!(
        r.sink.closed,
        Some(CloseReason::Transport(TransportFault::WriteZero))
    );
    assert_eq!(
        r.write_calls, 1,
        "Ok(0) is never retried as if it were progress"
    );
    let (session, report) = r.conn.into_session();
    assert!(
        report.abandoned.is_empty(),
        "the failed write was completed"
    );
    assert_eq!(
        session.inflight_len(),
        1,
        "the QoS 1 message waits for the next connection"
    );
}

#[tokio::test(start_paused = true)]
async fn short_writes_deliver_every_byte_in_order() {
    let r = run(WriteMode::Chunked(3), true, ConnectionConfig::default()).await;
    let packets = decode_all(&r.written);
    assert!(matches!(&packets[0], Packet::ConnAck(c) if c.reason == ReasonCode::Success));
    assert!(matches!(&packets[1], Packet::Publish(p) if p.payload == Bytes::from_static(b"kept")));
    assert!(
        r.write_calls > 5,
        "the batch was written in many short writes"
    );
    assert_eq!(
        r.sink.closed,
        Some(CloseReason::Transport(TransportFault::PeerClosed))
    );
    let (session, _) = r.conn.into_session();
    assert_eq!(
        session.inflight_len(),
        1,
        "written is not acknowledged: resent next time"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stalled_write_ends_the_connection_after_the_send_timeout() {
    let config = ConnectionConfig {
        send_timeout: Duration::from_secs(5),
        ..ConnectionConfig::default()
    };
    let started = tokio::time::Instant::now();
    let r = run(WriteMode::Stall, false, config).await;
    assert_eq!(
        r.sink.closed,
        Some(CloseReason::Transport(TransportFault::Stalled))
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(5),
        "ended by the send deadline"
    );
    let (session, report) = r.conn.into_session();
    assert_eq!(
        report.abandoned.len(),
        2,
        "CONNACK and PUBLISH never completed"
    );
    assert_eq!(session.inflight_len(), 1);
}

#[tokio::test(start_paused = true)]
async fn eof_in_the_middle_of_a_packet_is_not_a_clean_close() {
    let mut bytes = connect_bytes().to_vec();
    bytes.extend_from_slice(&[0x30, 0x10, 0x00]); // a PUBLISH cut short
    let reader = ScriptedReader {
        chunks: VecDeque::from([Bytes::from(bytes)]),
        eof: true,
    };
    let writer = MockWriter {
        mode: WriteMode::Chunked(usize::MAX),
        written: Arc::new(Mutex::new(Vec::new())),
        calls: Arc::new(Mutex::new(0)),
    };
    let mut sink = AcceptAll {
        session: None,
        events: Vec::new(),
        closed: None,
    };
    let (_tx, mut rx) = mpsc::unbounded_channel::<Command>();
    let conn = Connection::new(ConnectionConfig::default(), super::driver::now());
    let _ = drive(reader, writer, conn, &mut sink, &mut rx).await;
    assert_eq!(
        sink.closed,
        Some(CloseReason::Transport(TransportFault::PeerClosedMidPacket))
    );
}
