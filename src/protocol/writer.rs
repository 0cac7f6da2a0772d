//! The writer half of the send-completion state machine.
//!
//! ```text
//!            try_start (outbox non-empty)
//!   ┌──────┐ ─────────────────────────────► ┌──────────────────────────────────┐
//!   │ Idle │                                 │ Sending { ticket, expected,      │
//!   └──────┘ ◄───────────────────────────── │           written, deadline }    │
//!        ▲     complete(Written | Failed)    └──────────────────────────────────┘
//!        │     with this ticket and frames        │ progress(ticket, n > 0):
//!        │                                        │ written += n, deadline moves on
//!        │                                        ▼
//!        └───────── anything else: a typed CompletionError, the state is unchanged
//! ```
//!
//! There is no flag beside the state: "busy" *is* `Sending`, and what is being sent is
//! owned by that variant. Leaving `Sending` needs the ticket it was entered with and the
//! same frames back, so NanoMQ's wedge (busy set, nothing in flight) cannot be expressed.

use std::time::{Duration, Instant};

use super::frame::{FrameBatch, FrameMeta, SendCompletion, TransportFault};

/// A completion or progress report that does not match the write in progress.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompletionError {
    #[error("completion for ticket {got}, but the write in progress is {expected:?}")]
    UnknownTicket { got: u64, expected: Option<u64> },
    #[error("completion for ticket {ticket} returned frames other than the ones handed out")]
    FramesMismatch { ticket: u64 },
    #[error("ticket {ticket} reported {written} bytes written of a {total}-byte batch")]
    ProgressBeyondBatch {
        ticket: u64,
        written: usize,
        total: usize,
    },
    #[error("ticket {ticket} reported a zero-byte write as progress")]
    ZeroProgress { ticket: u64 },
}

#[derive(Debug)]
enum WriterState {
    Idle,
    Sending {
        ticket: u64,
        expected: Vec<FrameMeta>,
        written: usize,
        total: usize,
        deadline: Instant,
    },
}

/// What a valid completion hands back to the connection.
#[derive(Debug)]
pub(crate) struct Completed {
    pub frames: FrameBatch,
    pub outcome: Result<(), TransportFault>,
}

#[derive(Debug)]
pub(crate) struct Writer {
    state: WriterState,
    send_timeout: Duration,
}

impl Writer {
    pub fn new(send_timeout: Duration) -> Writer {
        Writer {
            state: WriterState::Idle,
            send_timeout,
        }
    }

    pub fn is_idle(&self) -> bool {
        matches!(self.state, WriterState::Idle)
    }

    /// Bytes of the batch in flight; zero when idle.
    pub fn bytes_in_flight(&self) -> usize {
        match &self.state {
            WriterState::Idle => 0,
            WriterState::Sending { total, .. } => *total,
        }
    }

    /// The ticket of the write in progress.
    pub fn ticket(&self) -> Option<u64> {
        match &self.state {
            WriterState::Idle => None,
            WriterState::Sending { ticket, .. } => Some(*ticket),
        }
    }

    /// When idle, asks `build` for a batch and, if it yields one, hands it out under
    /// `ticket` (unique within the connection). When sending, `build` is not called: a
    /// second write cannot start.
    pub fn try_start(
        &mut self,
        now: Instant,
        ticket: u64,
        build: impl FnOnce() -> Option<FrameBatch>,
    ) -> Option<(u64, FrameBatch)> {
        if !self.is_idle() {
            return None;
        }
        let frames = build()?;
        self.state = WriterState::Sending {
            ticket,
            expected: frames.metadata(),
            written: 0,
            total: frames.wire_len(),
            deadline: now + self.send_timeout,
        };
        Some((ticket, frames))
    }

    /// Records that `bytes` more bytes of the write in progress were accepted; the stall
    /// deadline restarts. A zero-byte report is refused: it is not progress.
    pub fn progress(
        &mut self,
        now: Instant,
        ticket: u64,
        bytes: usize,
    ) -> Result<(), CompletionError> {
        let send_timeout = self.send_timeout;
        match &mut self.state {
            WriterState::Sending {
                ticket: current,
                written,
                total,
                deadline,
                ..
            } if *current == ticket => {
                if bytes == 0 {
                    return Err(CompletionError::ZeroProgress { ticket: *current });
                }
                let now_written = written.saturating_add(bytes);
                if now_written > *total {
                    return Err(CompletionError::ProgressBeyondBatch {
                        ticket: *current,
                        written: now_written,
                        total: *total,
                    });
                }
                *written = now_written;
                *deadline = now + send_timeout;
                Ok(())
            }
            _ => Err(self.unknown(ticket)),
        }
    }

    /// Ends the write in progress. The completion must carry its ticket and its frames;
    /// otherwise the state is left as it was and the error says why.
    pub fn complete(&mut self, completion: SendCompletion) -> Result<Completed, CompletionError> {
        let (ticket, frames, outcome) = match completion {
            SendCompletion::Written { ticket, frames } => (ticket, frames, Ok(())),
            SendCompletion::Failed {
                ticket,
                frames,
                cause,
            } => (ticket, frames, Err(cause)),
        };
        match &self.state {
            WriterState::Sending {
                ticket: current,
                expected,
                ..
            } if *current == ticket.id() => {
                if frames.metadata() != *expected {
                    return Err(CompletionError::FramesMismatch { ticket: *current });
                }
                self.state = WriterState::Idle;
                Ok(Completed { frames, outcome })
            }
            _ => Err(self.unknown(ticket.id())),
        }
    }

    /// The stall deadline of the write in progress.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            WriterState::Idle => None,
            WriterState::Sending { deadline, .. } => Some(*deadline),
        }
    }

    /// Whether the write in progress has passed its deadline.
    pub fn is_stalled(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|deadline| now >= deadline)
    }

    /// The frames of the write in progress, as the writer last saw them, for the close
    /// report: the transport still holds them and will never complete them.
    pub fn abandon(&mut self) -> Option<Vec<FrameMeta>> {
        match std::mem::replace(&mut self.state, WriterState::Idle) {
            WriterState::Idle => None,
            WriterState::Sending { expected, .. } => Some(expected),
        }
    }

    fn unknown(&self, ticket: u64) -> CompletionError {
        let expected = match &self.state {
            WriterState::Idle => None,
            WriterState::Sending { ticket, .. } => Some(*ticket),
        };
        CompletionError::UnknownTicket {
            got: ticket,
            expected,
        }
    }

    #[cfg(test)]
    fn state_name(&self) -> &'static str {
        match self.state {
            WriterState::Idle => "Idle",
            WriterState::Sending { .. } => "Sending",
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use super::*;
    use crate::protocol::frame::{OutboundFrame, SendTicket, Transmit};
    use crate::protocol::packet::{Ack, Packet};
    use crate::protocol::types::{PacketId, ProtocolVersion};

    fn frame(id: u16) -> OutboundFrame {
        let pid = PacketId::new(id).expect("non-zero id");
        OutboundFrame::encode(
            &Packet::PubAck(Ack::new(pid)),
            ProtocolVersion::V5,
            1024,
            &mut BytesMut::new(),
        )
        .expect("a PUBACK encodes")
    }

    fn start(w: &mut Writer, now: Instant, ticket: u64, id: u16) -> Option<Transmit> {
        w.try_start(now, ticket, || Some(FrameBatch::new(frame(id))))
            .map(|(ticket, frames)| Transmit {
                ticket: SendTicket::new(ticket),
                frames,
                lane: crate::protocol::LaneId::CONTROL,
            })
    }

    #[derive(Debug, Clone, Copy)]
    enum Event {
        Start,
        Progress,
        ProgressZero,
        ProgressUnknownTicket,
        Written,
        Failed,
        WrittenUnknownTicket,
        WrittenOtherFrames,
        DuplicateWritten,
        DeadlinePassed,
    }

    const EVENTS: [Event; 10] = [
        Event::Start,
        Event::Progress,
        Event::ProgressZero,
        Event::ProgressUnknownTicket,
        Event::Written,
        Event::Failed,
        Event::WrittenUnknownTicket,
        Event::WrittenOtherFrames,
        Event::DuplicateWritten,
        Event::DeadlinePassed,
    ];

    /// Puts a writer in the named state and applies one event, describing the outcome.
    fn apply(start_sending: bool, event: Event) -> String {
        let t0 = Instant::now();
        let mut w = Writer::new(Duration::from_secs(10));
        let mut held = None;
        if start_sending {
            held = start(&mut w, t0, 1, 1);
        }
        let before = w.state_name();
        let outcome = match event {
            Event::Start => match start(&mut w, t0, 2, 2) {
                Some(_) => "transmit issued".to_string(),
                None => "no transmit".to_string(),
            },
            Event::Progress | Event::ProgressZero => {
                let n = if matches!(event, Event::Progress) {
                    2
                } else {
                    0
                };
                match &held {
                    Some(t) => describe(w.progress(t0, t.ticket.id(), n).map(|_| "ok")),
                    None => describe(w.progress(t0, 1, n).map(|_| "ok")),
                }
            }
            Event::ProgressUnknownTicket => describe(w.progress(t0, 99, 1).map(|_| "ok")),
            Event::Written | Event::Failed | Event::DuplicateWritten => {
                let ticket_id = held.as_ref().map_or(1, |t| t.ticket.id());
                let frames = held
                    .take()
                    .map_or_else(|| FrameBatch::new(frame(1)), |t| t.frames);
                let completion = if matches!(event, Event::Failed) {
                    SendCompletion::Failed {
                        ticket: SendTicket::forged(ticket_id),
                        frames: frames.clone(),
                        cause: TransportFault::WriteZero,
                    }
                } else {
                    SendCompletion::Written {
                        ticket: SendTicket::forged(ticket_id),
                        frames: frames.clone(),
                    }
                };
                let first = w.complete(completion).map(|c| match c.outcome {
                    Ok(()) => "written",
                    Err(_) => "failed",
                });
                if matches!(event, Event::DuplicateWritten) {
                    let again = w.complete(SendCompletion::Written {
                        ticket: SendTicket::forged(ticket_id),
                        frames,
                    });
                    format!(
                        "{} then {}",
                        describe(first),
                        describe(again.map(|_| "written"))
                    )
                } else {
                    describe(first)
                }
            }
            Event::WrittenUnknownTicket => describe(
                w.complete(SendCompletion::Written {
                    ticket: SendTicket::forged(99),
                    frames: FrameBatch::new(frame(1)),
                })
                .map(|_| "written"),
            ),
            Event::WrittenOtherFrames => {
                let ticket_id = held.as_ref().map_or(1, |t| t.ticket.id());
                describe(
                    w.complete(SendCompletion::Written {
                        ticket: SendTicket::forged(ticket_id),
                        frames: FrameBatch::new(frame(7)),
                    })
                    .map(|_| "written"),
                )
            }
            Event::DeadlinePassed => {
                format!("stalled={}", w.is_stalled(t0 + Duration::from_secs(11)))
            }
        };
        format!(
            "{before:<8} {:<22} -> {:<8} {outcome}",
            format!("{event:?}"),
            w.state_name()
        )
    }

    fn describe(result: Result<&str, CompletionError>) -> String {
        match result {
            Ok(s) => s.to_string(),
            Err(CompletionError::UnknownTicket { .. }) => "error UnknownTicket".to_string(),
            Err(CompletionError::FramesMismatch { .. }) => "error FramesMismatch".to_string(),
            Err(CompletionError::ProgressBeyondBatch { .. }) => {
                "error ProgressBeyondBatch".to_string()
            }
            Err(CompletionError::ZeroProgress { .. }) => "error ZeroProgress".to_string(),
        }
    }

    /// Every event from every state, checked against the reviewed table in
    /// `snapshots/writer_transitions.txt`. Regenerate with `UPDATE_SNAPSHOTS=1` and review
    /// the diff.
    #[test]
    fn writer_transition_table_matches_snapshot() {
        let mut table = String::new();
        for sending in [false, true] {
            for event in EVENTS {
                table.push_str(&apply(sending, event));
                table.push('\n');
            }
        }
        crate::protocol::snapshot::assert_snapshot("writer_transitions.txt", &table);
    }

    #[test]
    fn a_second_write_cannot_start_while_one_is_in_flight() {
        let t0 = Instant::now();
        let mut w = Writer::new(Duration::from_secs(1));
        let first = start(&mut w, t0, 1, 1);
        assert!(first.is_some());
        let mut asked = false;
        let second = w.try_start(t0, 2, || {
            asked = true;
            Some(FrameBatch::new(frame(2)))
        });
        assert!(second.is_none());
        assert!(!asked, "the batch builder must not run while sending");
    }

    #[test]
    fn progress_moves_the_stall_deadline() {
        let t0 = Instant::now();
        let mut w = Writer::new(Duration::from_secs(10));
        let t = start(&mut w, t0, 1, 1).expect("idle writer starts");
        let t1 = t0 + Duration::from_secs(8);
        w.progress(t1, t.ticket.id(), 1).expect("progress accepted");
        assert!(!w.is_stalled(t0 + Duration::from_secs(12)));
        assert!(w.is_stalled(t1 + Duration::from_secs(10)));
    }

    #[test]
    fn empty_payload_frames_still_have_a_head() {
        let f = frame(3);
        assert!(!f.head().is_empty());
        assert_eq!(f.payload(), &Bytes::new());
        assert_eq!(f.wire_len(), f.head().len());
    }
}
