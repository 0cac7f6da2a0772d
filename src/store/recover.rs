//! [`Store::recover`]: what a restarted broker resumes.

use redb::{ReadableDatabase, ReadableTable};

use crate::broker::retained::RetainedMessage;
use crate::protocol::{InflightMessage, PacketId, SessionSnapshot};

use super::encoding::{decode_meta, decode_retained, decode_row, RowKind, WallMillis};
use super::record::{
    ExpiredSessionWill, Now, PendingWill, Recovered, RecoveredSession, RecoveryReport,
    NEVER_EXPIRES,
};
use super::tables::{inbound_range, row_range, INBOUND, MESSAGES, RETAINED, SESSIONS};
use super::{guard_panics, Store, StoreError, WriteBatch};

impl Store {
    /// Loads every session and retained message, as of `now`:
    ///
    /// - a session whose expiry interval has run out since it went offline is dropped with
    ///   its messages (a session that was connected when the broker stopped counts as
    ///   going offline at `now`); its pending will, if any, is returned as due now;
    /// - a queued message past its message expiry is dropped [MQTT-3.3.2-5]; an in-flight
    ///   one is kept (its delivery has begun; a released QoS 2 flow must still complete);
    /// - an expired retained message is dropped.
    ///
    /// What is dropped is also removed from the file, in one durable commit. Logs one
    /// summary line ([`RecoveryReport`]'s `Display`) at info level. A record that does not
    /// decode fails the whole recovery with [`StoreError::Corrupt`] naming it: nothing is
    /// silently skipped. Blocking, like [`Store::commit`].
    pub fn recover(&self, now: Now) -> Result<Recovered, StoreError> {
        let recovered = guard_panics(&self.path, "recovering from", || self.load(now))?;
        tracing::info!(path = %self.path.display(), "recovered store: {}", recovered.report);
        Ok(recovered)
    }

    fn load(&self, now: Now) -> Result<Recovered, StoreError> {
        let path = &self.path;
        let read_err = |e: redb::Error| StoreError::from_redb(path, "read", e);
        let corrupt =
            |what: String, detail: String| StoreError::corrupt(path, format!("{what}: {detail}"));
        let now_wall = WallMillis::from_system(now.system);

        let txn = self
            .database()
            .begin_read()
            .map_err(|e| read_err(e.into()))?;
        let sessions_table = txn.open_table(SESSIONS).map_err(|e| read_err(e.into()))?;
        let messages_table = txn.open_table(MESSAGES).map_err(|e| read_err(e.into()))?;
        let inbound_table = txn.open_table(INBOUND).map_err(|e| read_err(e.into()))?;
        let retained_table = txn.open_table(RETAINED).map_err(|e| read_err(e.into()))?;

        let mut report = RecoveryReport::default();
        // What recovery drops from the file, removed in one durable commit.
        let mut cleanup = WriteBatch::new(now);
        let mut sessions = Vec::new();
        let mut wills_of_expired_sessions = Vec::new();
        let mut next_row = 0u64;

        for entry in sessions_table.iter().map_err(|e| read_err(e.into()))? {
            let (key, value) = entry.map_err(|e| read_err(e.into()))?;
            let client_id = key.value().to_string();
            let meta = decode_meta(value.value())
                .map_err(|d| corrupt(format!("session {client_id:?}"), d))?;
            let offline_since = meta.offline_since.unwrap_or(now_wall);
            let ends = (meta.expiry_interval != NEVER_EXPIRES)
                .then(|| offline_since.plus_secs(meta.expiry_interval));
            if ends.is_some_and(|ends| ends <= now_wall) {
                report.expired_sessions += 1;
                let rows = messages_table
                    .range(row_range(&client_id))
                    .map_err(|e| read_err(e.into()))?;
                report.messages_of_expired_sessions += rows.count() as u64;
                if let Some((will, _)) = meta.will {
                    report.wills_due += 1;
                    wills_of_expired_sessions.push(ExpiredSessionWill {
                        client_id: client_id.clone(),
                        will,
                    });
                }
                cleanup.delete_session(&client_id);
                continue;
            }

            let mut state = SessionSnapshot::default();
            for entry in inbound_table
                .range(inbound_range(&client_id))
                .map_err(|e| read_err(e.into()))?
            {
                let (key, _) = entry.map_err(|e| read_err(e.into()))?;
                let id = PacketId::new(key.value().1).ok_or_else(|| {
                    corrupt(
                        format!("session {client_id:?}"),
                        "inbound packet id 0".to_string(),
                    )
                })?;
                state.awaiting_pubrel.push(id);
            }
            let rows = messages_table
                .range(row_range(&client_id))
                .map_err(|e| read_err(e.into()))?;
            for row in rows {
                let (key, value) = row.map_err(|e| read_err(e.into()))?;
                let seq = key.value().1;
                next_row = next_row.max(seq.saturating_add(1));
                let row = decode_row(value.value())
                    .map_err(|d| corrupt(format!("session {client_id:?} message {seq}"), d))?;
                let expired = row.expires_at.is_some_and(|at| at <= now_wall);
                if expired && row.kind == RowKind::Queued {
                    report.expired_messages += 1;
                    cleanup.delete_row(&client_id, seq);
                    continue;
                }
                let mut message = row.delivery;
                message.row = Some(seq);
                // Beyond what an Instant can hold: it never comes.
                message.expires_at = row.expires_at.and_then(|at| now.instant(at));
                report.messages += 1;
                match row.kind {
                    RowKind::Queued => state.queue.push(message),
                    RowKind::Inflight {
                        packet_id,
                        released,
                    } => state.inflight.push(InflightMessage {
                        packet_id,
                        message,
                        released,
                    }),
                }
            }

            let will = meta.will.map(|(will, due)| {
                report.wills += 1;
                PendingWill {
                    will,
                    // A will delay is at most u32::MAX seconds, which an Instant holds.
                    due: now
                        .instant(due)
                        .map_or(now.instant, |due| due.max(now.instant)),
                }
            });
            report.sessions += 1;
            sessions.push(RecoveredSession {
                client_id,
                expiry_interval: meta.expiry_interval,
                offline_since: now.instant(offline_since).unwrap_or(now.instant),
                expires_at: ends.and_then(|ends| now.instant(ends)),
                subscriptions: meta.subscriptions,
                will,
                state,
            });
        }

        let mut retained = Vec::new();
        for entry in retained_table.iter().map_err(|e| read_err(e.into()))? {
            let (key, value) = entry.map_err(|e| read_err(e.into()))?;
            let topic = key.value();
            let stored = decode_retained(value.value())
                .map_err(|d| corrupt(format!("retained message on {topic:?}"), d))?;
            if stored.publish.topic.as_str() != topic {
                return Err(corrupt(
                    format!("retained message on {topic:?}"),
                    format!("it holds a message on {:?}", stored.publish.topic),
                ));
            }
            if stored.expires_at.is_some_and(|at| at <= now_wall) {
                report.expired_retained += 1;
                cleanup.delete_retained(&stored.publish.topic);
                continue;
            }
            report.retained += 1;
            retained.push(RetainedMessage {
                qos: stored.publish.qos(),
                topic: stored.publish.topic,
                payload: stored.publish.payload,
                properties: stored.publish.properties,
                expires_at: stored.expires_at.and_then(|at| now.instant(at)),
            });
        }

        drop((
            sessions_table,
            messages_table,
            inbound_table,
            retained_table,
        ));
        drop(txn);
        if !cleanup.is_empty() {
            self.commit_batches(&[cleanup], true)?;
        }
        Ok(Recovered {
            sessions,
            retained,
            wills_of_expired_sessions,
            next_row,
            report,
        })
    }
}
