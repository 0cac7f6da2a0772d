//! The tables of the file and how a [`WriteBatch`](super::WriteBatch)'s changes apply to
//! them.
//!
//! ```text
//! twinmq.meta      "schema_version"          -> u64           checked on open
//! twinmq.sessions  client id                 -> session meta  (encoding::encode_meta)
//! twinmq.messages  (client id, row id)       -> message row   (encoding::encode_row)
//! twinmq.inbound   (client id, packet id)    -> ()            QoS 2 ids awaiting PUBREL
//! twinmq.retained  topic                     -> retained      (encoding::encode_retained)
//! ```
//!
//! A session's messages are rows of their own, keyed by a row id the broker gives each
//! copy when it routes it (increasing, so the key order is arrival order), so every step of
//! one message (queued, sent under a packet id, released, finished) writes that row alone.
//! Inbound QoS 2 packet ids are keys of their own for the same reason. Rows and ids of a
//! session that is not stored are not written: a session ended by a concurrent change is
//! never brought back by a late write of one of its messages.

use redb::{ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::batch::Op;
use super::encoding::set_row_kind;

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("twinmq.meta");
pub(crate) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("twinmq.sessions");
pub(crate) const MESSAGES: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("twinmq.messages");
pub(crate) const INBOUND: TableDefinition<(&str, u16), ()> = TableDefinition::new("twinmq.inbound");
pub(crate) const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("twinmq.retained");

pub(crate) const SCHEMA_VERSION_KEY: &str = "schema_version";

/// The bytes a message row's key counts for in the live-bytes figure.
pub(crate) fn row_key_bytes(client_id: &str) -> usize {
    client_id.len() + 8
}

/// The bytes an inbound packet id's key counts for in the live-bytes figure.
pub(crate) fn inbound_key_bytes(client_id: &str) -> usize {
    client_id.len() + 2
}

/// The data tables, open in one write transaction.
pub(crate) struct Tables<'txn> {
    pub(crate) sessions: Table<'txn, &'static str, &'static [u8]>,
    pub(crate) messages: Table<'txn, (&'static str, u64), &'static [u8]>,
    pub(crate) inbound: Table<'txn, (&'static str, u16), ()>,
    pub(crate) retained: Table<'txn, &'static str, &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, redb::Error> {
        Ok(Tables {
            sessions: txn.open_table(SESSIONS)?,
            messages: txn.open_table(MESSAGES)?,
            inbound: txn.open_table(INBOUND)?,
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
                inbound,
            } => {
                let cid = client_id.as_str();
                let old = self.sessions.insert(cid, meta.as_slice())?;
                delta.replace(cid.len(), meta.len(), old.map(|v| v.value().len()));
                delta.remove(self.remove_session_data(cid)?);
                for (id, row) in rows {
                    self.messages.insert((cid, *id), row.as_slice())?;
                    delta.add(row_key_bytes(cid) + row.len());
                }
                for id in inbound {
                    self.inbound.insert((cid, *id), ())?;
                    delta.add(inbound_key_bytes(cid));
                }
            }
            Op::PutMeta { client_id, meta } => {
                let cid = client_id.as_str();
                let old = self.sessions.insert(cid, meta.as_slice())?;
                delta.replace(cid.len(), meta.len(), old.map(|v| v.value().len()));
            }
            Op::DeleteSession { client_id } => {
                let cid = client_id.as_str();
                if let Some(old) = self.sessions.remove(cid)? {
                    delta.remove(cid.len() + old.value().len());
                }
                delta.remove(self.remove_session_data(cid)?);
            }
            Op::AppendRow { client_id, id, row } => {
                let cid = client_id.as_str();
                if self.sessions.get(cid)?.is_some() {
                    let old = self.messages.insert((cid, *id), row.as_slice())?;
                    delta.replace(row_key_bytes(cid), row.len(), old.map(|v| v.value().len()));
                }
            }
            Op::SetRowKind {
                client_id,
                id,
                kind,
            } => {
                let key = (client_id.as_str(), *id);
                let updated = match self.messages.get(key)? {
                    Some(old) => set_row_kind(old.value(), *kind),
                    None => None,
                };
                // A row already finished (or never stored) stays gone.
                if let Some(row) = updated {
                    self.messages.insert(key, row.as_slice())?;
                }
            }
            Op::DeleteRow { client_id, id } => {
                let cid = client_id.as_str();
                if let Some(old) = self.messages.remove((cid, *id))? {
                    delta.remove(row_key_bytes(cid) + old.value().len());
                }
            }
            Op::PutInbound {
                client_id,
                packet_id,
            } => {
                let cid = client_id.as_str();
                if self.sessions.get(cid)?.is_some()
                    && self.inbound.insert((cid, *packet_id), ())?.is_none()
                {
                    delta.add(inbound_key_bytes(cid));
                }
            }
            Op::DeleteInbound {
                client_id,
                packet_id,
            } => {
                let cid = client_id.as_str();
                if self.inbound.remove((cid, *packet_id))?.is_some() {
                    delta.remove(inbound_key_bytes(cid));
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

    /// Removes every message row and inbound packet id of a session; returns the bytes
    /// removed.
    pub(crate) fn remove_session_data(&mut self, client_id: &str) -> Result<usize, redb::Error> {
        let mut removed = 0;
        for entry in self
            .messages
            .extract_from_if(row_range(client_id), |_, _| true)?
        {
            let (_, value) = entry?;
            removed += row_key_bytes(client_id) + value.value().len();
        }
        for entry in self
            .inbound
            .extract_from_if(inbound_range(client_id), |_, _| true)?
        {
            entry?;
            removed += inbound_key_bytes(client_id);
        }
        Ok(removed)
    }
}

/// The key range of one session's message rows.
pub(crate) fn row_range(client_id: &str) -> std::ops::RangeInclusive<(&str, u64)> {
    (client_id, 0)..=(client_id, u64::MAX)
}

/// The key range of one session's inbound packet ids.
pub(crate) fn inbound_range(client_id: &str) -> std::ops::RangeInclusive<(&str, u16)> {
    (client_id, 0)..=(client_id, u16::MAX)
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
    for entry in txn.open_table(INBOUND)?.iter()? {
        let (key, _) = entry?;
        total += inbound_key_bytes(key.value().0) as u64;
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
