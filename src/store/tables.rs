//! The tables of the file and how a [`WriteBatch`](super::WriteBatch)'s changes apply to
//! them.
//!
//! ```text
//! twinmq.meta      "schema_version" -> u64           checked on open
//! twinmq.sessions  client id        -> session meta  (encoding::encode_meta)
//! twinmq.messages  (client id, seq) -> message row   (encoding::encode_row), in order
//! twinmq.retained  topic            -> retained      (encoding::encode_retained)
//! ```
//!
//! A session's messages are rows of their own, keyed by a per-session sequence number, so
//! queueing one message for an offline client writes one row, not the whole session.

use redb::{ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::batch::Op;
use super::encoding::row_is_queued;

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("twinmq.meta");
pub(crate) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("twinmq.sessions");
pub(crate) const MESSAGES: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("twinmq.messages");
pub(crate) const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("twinmq.retained");

pub(crate) const SCHEMA_VERSION_KEY: &str = "schema_version";

/// The bytes a message row's key counts for in the live-bytes figure.
pub(crate) fn row_key_bytes(client_id: &str) -> usize {
    client_id.len() + 8
}

/// The data tables, open in one write transaction.
pub(crate) struct Tables<'txn> {
    pub(crate) sessions: Table<'txn, &'static str, &'static [u8]>,
    pub(crate) messages: Table<'txn, (&'static str, u64), &'static [u8]>,
    pub(crate) retained: Table<'txn, &'static str, &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, redb::Error> {
        Ok(Tables {
            sessions: txn.open_table(SESSIONS)?,
            messages: txn.open_table(MESSAGES)?,
            retained: txn.open_table(RETAINED)?,
        })
    }

    /// Applies one change; returns how much it changed the live bytes by.
    pub(crate) fn apply(&mut self, op: &Op) -> Result<i64, redb::Error> {
        let mut delta = Delta::default();
        match op {
            Op::PutSession {
                client_id,
                meta,
                rows,
            } => {
                let cid = client_id.as_str();
                let old = self.sessions.insert(cid, meta.as_slice())?;
                delta.replace(cid.len(), meta.len(), old.map(|v| v.value().len()));
                delta.remove(self.remove_rows(cid)?);
                for (seq, row) in (0u64..).zip(rows) {
                    self.messages.insert((cid, seq), row.as_slice())?;
                    delta.add(row_key_bytes(cid) + row.len());
                }
            }
            Op::DeleteSession { client_id } => {
                let cid = client_id.as_str();
                if let Some(old) = self.sessions.remove(cid)? {
                    delta.remove(cid.len() + old.value().len());
                }
                delta.remove(self.remove_rows(cid)?);
            }
            Op::AppendQueued { client_id, row } => {
                let cid = client_id.as_str();
                if self.sessions.get(cid)?.is_some() {
                    let next = match self.messages.range(row_range(cid))?.next_back() {
                        Some(last) => last?.0.value().1.saturating_add(1),
                        None => 0,
                    };
                    self.messages.insert((cid, next), row.as_slice())?;
                    delta.add(row_key_bytes(cid) + row.len());
                }
            }
            Op::PopQueued { client_id } => {
                let cid = client_id.as_str();
                let mut oldest = None;
                for entry in self.messages.range(row_range(cid))? {
                    let (key, value) = entry?;
                    if row_is_queued(value.value()) {
                        oldest = Some(key.value().1);
                        break;
                    }
                }
                if let Some(seq) = oldest {
                    if let Some(old) = self.messages.remove((cid, seq))? {
                        delta.remove(row_key_bytes(cid) + old.value().len());
                    }
                }
            }
            Op::PutRetained { topic, value } => {
                let old = self.retained.insert(topic.as_str(), value.as_slice())?;
                delta.replace(topic.len(), value.len(), old.map(|v| v.value().len()));
            }
            Op::DeleteRetained { topic } => {
                if let Some(old) = self.retained.remove(topic.as_str())? {
                    delta.remove(topic.len() + old.value().len());
                }
            }
        }
        Ok(delta.0)
    }

    /// Removes every message row of a session; returns the bytes removed.
    pub(crate) fn remove_rows(&mut self, client_id: &str) -> Result<usize, redb::Error> {
        let mut removed = 0;
        for entry in self
            .messages
            .extract_from_if(row_range(client_id), |_, _| true)?
        {
            let (_, value) = entry?;
            removed += row_key_bytes(client_id) + value.value().len();
        }
        Ok(removed)
    }
}

/// The key range of one session's message rows.
pub(crate) fn row_range(client_id: &str) -> std::ops::RangeInclusive<(&str, u64)> {
    (client_id, 0)..=(client_id, u64::MAX)
}

/// Sum of key and value bytes over the data tables (the live-bytes figure).
pub(crate) fn live_bytes(txn: &ReadTransaction) -> Result<u64, redb::Error> {
    let mut total = 0u64;
    for table in [SESSIONS, RETAINED] {
        for entry in txn.open_table(table)?.iter()? {
            let (key, value) = entry?;
            total += (key.value().len() + value.value().len()) as u64;
        }
    }
    for entry in txn.open_table(MESSAGES)?.iter()? {
        let (key, value) = entry?;
        total += (row_key_bytes(key.value().0) + value.value().len()) as u64;
    }
    Ok(total)
}

/// A change in live bytes.
#[derive(Default)]
struct Delta(i64);

impl Delta {
    fn add(&mut self, bytes: usize) {
        self.0 += i64::try_from(bytes).unwrap_or(i64::MAX);
    }

    fn remove(&mut self, bytes: usize) {
        self.0 -= i64::try_from(bytes).unwrap_or(i64::MAX);
    }

    fn replace(&mut self, key: usize, new: usize, old: Option<usize>) {
        self.add(key + new);
        if let Some(old) = old {
            self.remove(key + old);
        }
    }
}
