//! [`WriteBatch`]: changes gathered by the broker and committed together, in order, in one
//! transaction (one fsync for a durable commit, however many changes it holds).

use crate::broker::retained::RetainedMessage;
use crate::protocol::{Delivery, TopicName};

use super::encoding::{self, RowKind};
use super::error::RecordError;
use super::record::{Now, SessionRecord};
use super::tables::row_key_bytes;

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
    /// Replace the session's meta and all its message rows.
    PutSession {
        client_id: String,
        meta: Vec<u8>,
        rows: Vec<Vec<u8>>,
    },
    DeleteSession {
        client_id: String,
    },
    /// Add a row after the session's last; skipped if the session is not stored.
    AppendQueued {
        client_id: String,
        row: Vec<u8>,
    },
    /// Remove the session's oldest queued row, if any.
    PopQueued {
        client_id: String,
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
    /// (expiry, offline time, subscriptions, will, inbound QoS 2 ids) and every message row
    /// (in-flight first, in their order, then the queue). Costs the size of the session;
    /// to add one message to a stored session's queue, use [`WriteBatch::append_queued`].
    pub fn put_session(
        &mut self,
        client_id: &str,
        record: &SessionRecord,
    ) -> Result<(), RecordError> {
        let refuse = |what: String, detail: String| RecordError {
            what: format!("session {client_id:?} {what}"),
            detail,
        };
        let meta = encoding::encode_meta(record, &self.now)
            .map_err(|detail| refuse("record".to_string(), detail))?;
        let mut rows = Vec::with_capacity(record.state.inflight.len() + record.state.queue.len());
        for m in &record.state.inflight {
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
            rows.push(row);
        }
        for d in &record.state.queue {
            let row = encoding::encode_row(RowKind::Queued, d, &self.now)
                .map_err(|detail| refuse(format!("queued message on {:?}", d.topic), detail))?;
            rows.push(row);
        }
        self.bytes += client_id.len()
            + meta.len()
            + rows
                .iter()
                .map(|row| row_key_bytes(client_id) + row.len())
                .sum::<usize>();
        self.ops.push(Op::PutSession {
            client_id: client_id.to_string(),
            meta,
            rows,
        });
        Ok(())
    }

    /// Removes the session and all its messages (clean start, expiry, or a session that is
    /// no longer persistent).
    pub fn delete_session(&mut self, client_id: &str) {
        self.bytes += client_id.len();
        self.ops.push(Op::DeleteSession {
            client_id: client_id.to_string(),
        });
    }

    /// Adds `message` at the end of a stored session's queue, without rewriting the rest
    /// of the session: what the broker writes for each message it queues for an offline
    /// client before it acknowledges the publish. Ignored at commit if the session is not
    /// stored (write it with [`WriteBatch::put_session`] first, in this or an earlier batch).
    pub fn append_queued(
        &mut self,
        client_id: &str,
        message: &Delivery,
    ) -> Result<(), RecordError> {
        let row = encoding::encode_row(RowKind::Queued, message, &self.now).map_err(|detail| {
            RecordError {
                what: format!(
                    "session {client_id:?} queued message on {:?}",
                    message.topic
                ),
                detail,
            }
        })?;
        self.bytes += row_key_bytes(client_id) + row.len();
        self.ops.push(Op::AppendQueued {
            client_id: client_id.to_string(),
            row,
        });
        Ok(())
    }

    /// Removes the oldest queued message of a stored session (in-flight messages are not
    /// touched): the mirror of `QueuePolicy::DropOldest` evicting one.
    pub fn pop_queued(&mut self, client_id: &str) {
        self.bytes += client_id.len();
        self.ops.push(Op::PopQueued {
            client_id: client_id.to_string(),
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
        self.bytes += topic.len();
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

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Encoded size of the keys and values the batch writes: what it adds to
    /// [`StoreUsage::live_bytes`](super::StoreUsage::live_bytes) at most, for a
    /// `max_store_bytes` check before submitting.
    pub fn encoded_bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn ops(&self) -> &[Op] {
        &self.ops
    }
}
