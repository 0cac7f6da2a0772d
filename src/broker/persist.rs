//! What the broker writes to the store, and when (DESIGN §5):
//!
//! - an inbound QoS 1/2 PUBLISH: every copy queued for a persistent session, and the
//!   retained change, in one batch; the publisher's PUBACK/PUBREC waits for that batch to be
//!   durable (acknowledgements leave in the order their publishes arrived);
//! - a persistent session going offline: the whole session (state, subscriptions, pending
//!   will), replacing whatever copies were appended while it was connected;
//! - a session that ends (clean start, expiry, zero expiry): deleted;
//! - at start: everything recovered, expired sessions and messages dropped.
//!
//! QoS 0 and clean sessions never touch the store. With `storage.durability = none` there
//! is no store at all.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::core::{Broker, Stats};
use super::session::SessionKey;
use crate::protocol::{Delivery, InboundAck, ReasonCode};
use crate::store::{
    Now, PendingWill, RecordError, Recovered, SessionRecord, StoredSubscription, WriteBatch,
};
use crate::transport::Command;

/// Changes gathered while routing one publish.
#[derive(Default)]
pub(crate) struct PublishWrites {
    pub queued: Vec<(SessionKey, Delivery)>,
    pub retained: Option<crate::broker::retained::RetainedMessage>,
    pub retained_cleared: Option<crate::protocol::TopicName>,
}

impl PublishWrites {
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty() && self.retained.is_none() && self.retained_cleared.is_none()
    }

    fn into_batch(self, now: Now) -> Result<WriteBatch, RecordError> {
        let mut batch = WriteBatch::new(now);
        for (key, delivery) in &self.queued {
            batch.append_queued(key.entry().client_id().as_str(), delivery)?;
        }
        if let Some(message) = &self.retained {
            batch.put_retained(message)?;
        }
        if let Some(topic) = &self.retained_cleared {
            batch.delete_retained(topic);
        }
        Ok(batch)
    }
}

/// Releases a connection's publish acknowledgements in arrival order, each once the batch
/// holding its message is durable.
pub(crate) struct AckSequencer {
    tx: mpsc::UnboundedSender<(oneshot::Receiver<Durable>, InboundAck, ReasonCode)>,
}

impl AckSequencer {
    pub fn spawn(mailbox: mpsc::UnboundedSender<Command>) -> AckSequencer {
        let (tx, mut rx) =
            mpsc::unbounded_channel::<(oneshot::Receiver<Durable>, InboundAck, ReasonCode)>();
        tokio::spawn(async move {
            while let Some((durable, ack, reason)) = rx.recv().await {
                let reason = match durable.await {
                    Ok(Durable::Yes) => reason,
                    // Not stored: refuse rather than acknowledge what could be lost.
                    Ok(Durable::Refused(code)) => code,
                    Err(_) => ReasonCode::ImplementationSpecificError,
                };
                if mailbox.send(Command::AcceptPublish(ack, reason)).is_err() {
                    return;
                }
            }
        });
        AckSequencer { tx }
    }

    /// Queues `ack`, to be released when `durable` resolves (at once for a ready one).
    pub fn push(&self, durable: oneshot::Receiver<Durable>, ack: InboundAck, reason: ReasonCode) {
        let _ = self.tx.send((durable, ack, reason));
    }
}

/// Whether a publish's writes are safe, and if not, the reason code to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durable {
    Yes,
    Refused(ReasonCode),
}

/// A receiver that is already resolved: for acknowledgements with nothing to store.
pub(crate) fn ready() -> oneshot::Receiver<Durable> {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(Durable::Yes);
    rx
}

impl Broker {
    /// Submits what a publish changed; the receiver resolves when it is durable. A store
    /// over `storage.max_store_bytes` refuses new writes (the publisher gets 0x97 quota
    /// exceeded) rather than growing without bound.
    pub(crate) fn persist_publish(&self, writes: PublishWrites) -> oneshot::Receiver<Durable> {
        let Some(committer) = self.committer.clone() else {
            return ready();
        };
        if writes.is_empty() {
            return ready();
        }
        if committer.store().live_bytes() >= self.config.max_store_bytes {
            Stats::add(&self.stats.messages_dropped, 1);
            tracing::warn!(
                limit = self.config.max_store_bytes,
                "store full (storage.max_store_bytes): publish refused with 0x97"
            );
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Durable::Refused(ReasonCode::QuotaExceeded));
            return rx;
        }
        let (tx, rx) = oneshot::channel();
        let batch = writes.into_batch(Now::from_clocks());
        tokio::spawn(async move {
            let outcome = match batch {
                Ok(batch) => match committer.submit(batch).await {
                    Ok(()) => Durable::Yes,
                    Err(err) => {
                        tracing::error!(error = %err, "store commit failed");
                        Durable::Refused(ReasonCode::ImplementationSpecificError)
                    }
                },
                Err(err) => {
                    tracing::error!(error = %err, "cannot encode a message for the store");
                    Durable::Refused(ReasonCode::ImplementationSpecificError)
                }
            };
            let _ = tx.send(outcome);
        });
        rx
    }

    /// Writes a persistent session that just went offline (whole), or deletes one that
    /// ended. Waits for the commit.
    pub(crate) async fn persist_session(&self, key: &SessionKey, will: Option<PendingWill>) {
        let Some(committer) = &self.committer else {
            return;
        };
        let entry = key.entry();
        let id = entry.client_id().as_str();
        let now = Now::from_clocks();
        let mut batch = WriteBatch::new(now);
        let snapshot = entry.with_offline_state(|state| state.snapshot());
        let result = match snapshot {
            Some(state) if entry.is_persistent() => {
                let subscriptions = self
                    .index
                    .subscriptions_of(key)
                    .into_iter()
                    .map(|(filter, s)| StoredSubscription {
                        filter,
                        options: s.options,
                        identifier: s.identifier,
                    })
                    .collect();
                let record = SessionRecord {
                    expiry_interval: entry.expiry(),
                    offline_since: Some(now.instant),
                    subscriptions,
                    will,
                    state,
                };
                batch.put_session(id, &record).map(|_| ())
            }
            _ => {
                batch.delete_session(id);
                Ok(())
            }
        };
        let result = match result {
            Ok(()) => committer.submit(batch).await.map_err(|e| e.to_string()),
            Err(err) => Err(err.to_string()),
        };
        if let Err(err) = result {
            tracing::error!(client_id = id, error = %err, "cannot store the session");
        }
    }

    /// Deletes a session from the store (it ended).
    pub(crate) async fn forget_session(&self, client_id: &str) {
        let Some(committer) = &self.committer else {
            return;
        };
        let mut batch = WriteBatch::new(Now::from_clocks());
        batch.delete_session(client_id);
        if let Err(err) = committer.submit(batch).await {
            tracing::error!(client_id, error = %err, "cannot delete the session from the store");
        }
    }

    /// Loads what the store recovered: offline sessions with their subscriptions and
    /// pending wills, retained messages, and the wills of sessions that expired while the
    /// broker was down (published now).
    pub fn restore(self: &Arc<Self>, recovered: Recovered, now: Instant) {
        let report = recovered.report;
        for session in recovered.sessions {
            let id = crate::broker::index::ClientId::from(session.client_id.as_str());
            let entry = self.registry.entry(&id);
            let key = SessionKey::new(Arc::clone(&entry));
            entry.restore_offline(
                crate::protocol::SessionState::restore(session.state),
                session.expiry_interval,
                session.expires_at,
            );
            for sub in session.subscriptions {
                if let Err(err) =
                    self.index
                        .subscribe(&key, &sub.filter, sub.options, sub.identifier)
                {
                    tracing::warn!(client_id = id.as_str(), filter = %sub.filter, error = %err, "stored subscription not restored");
                }
            }
            self.index.set_online(&key, false);
            if let Some(pending) = session.will {
                let delay = pending.due.saturating_duration_since(now);
                self.schedule_will_after(key, pending.will, delay);
            }
        }
        for message in recovered.retained {
            self.restore_retained(message);
        }
        for expired in recovered.wills_of_expired_sessions {
            tracing::info!(
                client_id = expired.client_id,
                "publishing the will of a session that expired while down"
            );
            self.schedule_will_after_key(expired.will);
        }
        tracing::info!(?report, "recovered from the store");
    }
}
