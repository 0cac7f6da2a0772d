//! [`WriteBatch`]: changes gathered by the broker and committed together, in order, in one
//! transaction (one fsync for a durable commit, however many changes it holds).

use crate::broker::retained::RetainedMessage;
use crate::protocol::{Delivery, PacketId, TopicName};

use super::encoding::{self, RowKind};
use super::error::RecordError;
use super::record::{Now, SessionMeta, SessionRecord};
use super::tables::{inbound_key_bytes, row_key_bytes};

/// Changes to commit together. Records are encoded when they are added (so a record that
/// cannot be written is refused there, with nothing added), with times converted against
/// the batch's [`Now`]; committing only copies bytes into the file.
///
/// Changes apply in the order they were added; batches merged into one group commit apply
/// in the order they were submitted.
#[derive(Debug, Clone)]
pub struct WriteBatch {
    now: Now,
    ops: Vec<Op>,
    bytes: usize,
}

/// One change, already encoded.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Replace the session's meta, all its message rows and inbound packet ids.
    PutSession {
        client_id: String,
        meta: Vec<u8>,
        rows: Vec<(u64, Vec<u8>)>,
        inbound: Vec<u16>,
    },
    /// Replace the session's meta only.
    PutMeta {
        client_id: String,
        meta: Vec<u8>,
    },
    DeleteSession {
        client_id: String,
    },
    /// Write a message row; skipped if the session is not stored.
    AppendRow {
        client_id: String,
        id: u64,
        row: Vec<u8>,
    },
    /// Change what a row says of its flow; skipped if the row is gone.
    SetRowKind {
        client_id: String,
        id: u64,
        kind: RowKind,
    },
    DeleteRow {
        client_id: String,
        id: u64,
    },
    /// Record an inbound QoS 2 packet id; skipped if the session is not stored.
    PutInbound {
        client_id: String,
        packet_id: u16,
    },
    DeleteInbound {
        client_id: String,
        packet_id: u16,
    },
    PutRetained {
        topic: String,
        value: Vec<u8>,
    },
    DeleteRetained {
        topic: String,
    },
}

impl WriteBatch {
    /// An empty batch; `now` converts the `Instant`s of the records added to wall-clock time.
    pub fn new(now: Now) -> WriteBatch {
        WriteBatch {
            now,
            ops: Vec::new(),
            bytes: 0,
        }
    }

    /// Stores the whole session under `client_id`, replacing what was stored: its meta
    /// (expiry, offline time, subscriptions, will), every message row (in-flight first, in
    /// their order, then the queue) and its inbound QoS 2 ids. A message keeps the row id
    /// in its [`Delivery::row`]; one without gets the next id after the highest given.
    /// Costs the size of the session; the broker writes a connected session step by step
    /// instead ([`WriteBatch::put_meta`], [`WriteBatch::append_queued`], ...).
    pub fn put_session(
        &mut self,
        client_id: &str,
        record: &SessionRecord,
    ) -> Result<(), RecordError> {
        let refuse = |what: String, detail: String| RecordError {
            what: format!("session {client_id:?} {what}"),
            detail,
        };
        let meta = encoding::encode_meta(&record.meta(), &self.now)
            .map_err(|detail| refuse("record".to_string(), detail))?;
        let state = &record.state;
        let mut next_id = state
            .inflight
            .iter()
            .map(|m| &m.message)
            .chain(&state.queue)
            .filter_map(|d| d.row)
            .max()
            .map_or(0, |max| max.saturating_add(1));
        let mut row_id = |d: &Delivery| {
            d.row.unwrap_or_else(|| {
                next_id += 1;
                next_id - 1
            })
        };
        let mut rows = Vec::with_capacity(state.inflight.len() + state.queue.len());
        for m in &state.inflight {
            let kind = RowKind::Inflight {
                packet_id: m.packet_id,
                released: m.released,
            };
            let row = encoding::encode_row(kind, &m.message, &self.now).map_err(|detail| {
                refuse(
                    format!("in-flight message {} on {:?}", m.packet_id, m.message.topic),
                    detail,
                )
            })?;
            rows.push((row_id(&m.message), row));
        }
        for d in &state.queue {
            let row = encoding::encode_row(RowKind::Queued, d, &self.now)
                .map_err(|detail| refuse(format!("queued message on {:?}", d.topic), detail))?;
            rows.push((row_id(d), row));
        }
        let inbound: Vec<u16> = state.awaiting_pubrel.iter().map(|id| id.get()).collect();
        self.bytes += client_id.len()
            + meta.len()
            + rows
                .iter()
                .map(|(_, row)| row_key_bytes(client_id) + row.len())
                .sum::<usize>()
            + inbound.len() * inbound_key_bytes(client_id);
        self.ops.push(Op::PutSession {
            client_id: client_id.to_string(),
            meta,
            rows,
            inbound,
        });
        Ok(())
    }

    /// Stores the session's meta (expiry, offline time, subscriptions, pending will),
    /// keeping its messages and inbound ids: what the broker writes when a persistent
    /// session connects, changes its subscriptions, or goes offline.
    pub fn put_meta(&mut self, client_id: &str, meta: &SessionMeta) -> Result<(), RecordError> {
        let meta = encoding::encode_meta(meta, &self.now).map_err(|detail| RecordError {
            what: format!("session {client_id:?} record"),
            detail,
        })?;
        self.bytes += client_id.len() + meta.len();
        self.ops.push(Op::PutMeta {
            client_id: client_id.to_string(),
            meta,
        });
        Ok(())
    }

    /// Removes the session and all its messages (clean start, expiry, or a session that is
    /// no longer persistent).
    pub fn delete_session(&mut self, client_id: &str) {
        self.ops.push(Op::DeleteSession {
            client_id: client_id.to_string(),
        });
    }

    /// Stores `message` as a queued row of a stored session, under its [`Delivery::row`]
    /// (which a message must have to be stored alone): what the broker writes for every
    /// QoS 1/2 copy it routes to a persistent session before it acknowledges the publish.
    /// Ignored at commit if the session is not stored.
    pub fn append_queued(
        &mut self,
        client_id: &str,
        message: &Delivery,
    ) -> Result<(), RecordError> {
        let what = || {
            format!(
                "session {client_id:?} queued message on {:?}",
                message.topic
            )
        };
        let id = message.row.ok_or_else(|| RecordError {
            what: what(),
            detail: "the message has no row id".to_string(),
        })?;
        let row = encoding::encode_row(RowKind::Queued, message, &self.now).map_err(|detail| {
            RecordError {
                what: what(),
                detail,
            }
        })?;
        self.bytes += row_key_bytes(client_id) + row.len();
        self.ops.push(Op::AppendRow {
            client_id: client_id.to_string(),
            id,
            row,
        });
        Ok(())
    }

    /// Records that the message in row `id` is sent under `packet_id` (`released`: and
    /// that the client's PUBREC came), so a restart resends it under the same id (QoS 2
    /// exactly-once). Ignored at commit if the row is gone.
    pub fn mark_inflight(&mut self, client_id: &str, id: u64, packet_id: PacketId, released: bool) {
        self.bytes += row_key_bytes(client_id);
        self.ops.push(Op::SetRowKind {
            client_id: client_id.to_string(),
            id,
            kind: RowKind::Inflight {
                packet_id,
                released,
            },
        });
    }

    /// Removes the message in row `id`: its flow finished, or it was dropped.
    pub fn delete_row(&mut self, client_id: &str, id: u64) {
        self.ops.push(Op::DeleteRow {
            client_id: client_id.to_string(),
            id,
        });
    }

    /// Records an inbound QoS 2 packet id the broker has taken and that awaits the
    /// client's PUBREL. Ignored at commit if the session is not stored.
    pub fn put_inbound(&mut self, client_id: &str, packet_id: PacketId) {
        self.bytes += inbound_key_bytes(client_id);
        self.ops.push(Op::PutInbound {
            client_id: client_id.to_string(),
            packet_id: packet_id.get(),
        });
    }

    /// Forgets an inbound QoS 2 packet id: the client released it (PUBREL).
    pub fn delete_inbound(&mut self, client_id: &str, packet_id: PacketId) {
        self.ops.push(Op::DeleteInbound {
            client_id: client_id.to_string(),
            packet_id: packet_id.get(),
        });
    }

    /// Stores `message` as the retained message of its topic, replacing the previous one.
    pub fn put_retained(&mut self, message: &RetainedMessage) -> Result<(), RecordError> {
        let value = encoding::encode_retained(
            &message.topic,
            &message.payload,
            message.qos,
            &message.properties,
            message.expires_at,
            &self.now,
        )
        .map_err(|detail| RecordError {
            what: format!("retained message on {:?}", message.topic),
            detail,
        })?;
        self.bytes += message.topic.len() + value.len();
        self.ops.push(Op::PutRetained {
            topic: message.topic.as_str().to_string(),
            value,
        });
        Ok(())
    }

    /// Removes the retained message of `topic` (a retained PUBLISH with an empty payload
    /// [MQTT-3.3.1-6]).
    pub fn delete_retained(&mut self, topic: &TopicName) {
        self.ops.push(Op::DeleteRetained {
            topic: topic.as_str().to_string(),
        });
    }

    /// Appends `other`'s changes after this batch's.
    pub fn append(&mut self, other: WriteBatch) {
        self.bytes += other.bytes;
        self.ops.extend(other.ops);
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Encoded size of the keys and values the batch writes: what it adds to
    /// [`StoreUsage::live_bytes`](super::StoreUsage::live_bytes) at most, for a
    /// `max_store_bytes` check before submitting. Deletions add nothing (they free), so
    /// a full store still takes a change that only removes.
    pub fn encoded_bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn ops(&self) -> &[Op] {
        &self.ops
    }
}
