//! What the broker writes to the store, and when (DESIGN §5, ADR 0004).
//!
//! Every QoS 1/2 copy routed to a persistent session is a row of its own, under a row id
//! the broker gives it ([`Delivery::row`]), and the row follows its flow step by step:
//!
//! | step                                        | written                 | what waits for it     |
//! |---------------------------------------------|-------------------------|-----------------------|
//! | a QoS 1/2 publish is routed                 | the copies' rows, the retained change, the publisher's inbound QoS 2 id: one batch | the publisher's PUBACK/PUBREC |
//! | a stored QoS 2 copy takes a packet id       | row: in flight, id      | its PUBLISH           |
//! | its PUBREC comes                            | row: released           | its PUBREL            |
//! | its flow ends (PUBACK/PUBCOMP) or it drops  | row deleted             | nothing               |
//! | the publisher's PUBREL                      | inbound id deleted      | its PUBCOMP           |
//! | a persistent session connects               | session meta            | its CONNACK           |
//! | it subscribes or unsubscribes               | session meta            | its SUBACK/UNSUBACK   |
//! | it goes offline                             | meta with offline time and pending will | the hand-back of the session |
//! | a session ends                              | deleted                 | nothing               |
//!
//! So a crash at any point resumes each flow where the client last saw it: a QoS 2 copy is
//! never sent under a packet id the store does not hold, nor released before the store
//! knows. Batches go to the committer in the order these steps happen
//! ([`GroupCommitter::enqueue`](crate::store::GroupCommitter::enqueue)), and a publish's
//! batch is enqueued before any of its copies is handed to a session, so a step never
//! lands before the row it changes. QoS 0 and clean sessions never touch the store; with
//! `storage.durability = none` there is no store at all.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::core::{Broker, Stats};
use super::session::SessionKey;
use crate::protocol::{Delivery, FlowStep, InboundAck, PacketId, QueuePolicy, ReasonCode};
use crate::store::{
    Commit, GroupCommitter, Now, PendingWill, Recovered, SessionMeta, StoredSubscription,
    WriteBatch,
};
use crate::transport::Command;

/// Whether a publish's writes are safe, and if not, the reason code to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durable {
    Yes,
    Refused(ReasonCode),
}

/// A publish's writes: decided already, or waiting for their commit.
#[derive(Debug)]
pub(crate) enum Pending {
    Ready(Durable),
    Commit(Commit),
}

impl Pending {
    /// Refused already (not routed): the store is full.
    pub fn is_refused(&self) -> bool {
        matches!(self, Pending::Ready(Durable::Refused(_)))
    }

    pub async fn outcome(self) -> Durable {
        match self {
            Pending::Ready(durable) => durable,
            Pending::Commit(commit) => match commit.await {
                Ok(()) => Durable::Yes,
                Err(err) => {
                    // Not stored: refuse rather than acknowledge what could be lost.
                    tracing::error!(error = %err, "store commit failed");
                    Durable::Refused(ReasonCode::ImplementationSpecificError)
                }
            },
        }
    }
}

/// What a connection is told once the writes it waits for resolve.
pub(crate) enum AfterCommit {
    /// Acknowledge an inbound publish with `reason`, or with the code that refused it.
    Ack(InboundAck, ReasonCode),
    /// Send this command (a reply or a recorded flow step); a failed commit ends the
    /// connection instead: the store can no longer keep its promises, and the client's
    /// retry after reconnecting is safe. Boxed: a SUBACK is large, an ack is not.
    Then(Box<Command>),
}

/// Releases what a connection waits for from the store, in the order it was asked for
/// (publish acknowledgements in arrival order [MQTT-4.6.0-2]; commits resolve in that
/// order anyway), each once its writes are durable. One task per connection, not one per
/// commit.
pub(crate) struct CommitSequencer {
    tx: mpsc::UnboundedSender<(Pending, AfterCommit)>,
}

impl CommitSequencer {
    pub fn spawn(mailbox: mpsc::UnboundedSender<Command>, span: tracing::Span) -> CommitSequencer {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Pending, AfterCommit)>();
        tokio::spawn(
            async move {
                while let Some((pending, after)) = rx.recv().await {
                    let command = match (pending.outcome().await, after) {
                        (Durable::Yes, AfterCommit::Ack(ack, reason)) => {
                            Command::AcceptPublish(ack, reason)
                        }
                        (Durable::Refused(code), AfterCommit::Ack(ack, _)) => {
                            Command::AcceptPublish(ack, code)
                        }
                        (Durable::Yes, AfterCommit::Then(command)) => *command,
                        (Durable::Refused(_), AfterCommit::Then(_)) => {
                            tracing::error!("the store failed: disconnecting");
                            Command::Disconnect(ReasonCode::ImplementationSpecificError)
                        }
                    };
                    if mailbox.send(command).is_err() {
                        return;
                    }
                }
            }
            .instrument(span),
        );
        CommitSequencer { tx }
    }

    /// Queues `after`, to be released when `pending` resolves (at once for a ready one,
    /// unless something queued before it still waits).
    pub fn push(&self, pending: Pending, after: AfterCommit) {
        let _ = self.tx.send((pending, after));
    }
}

impl Broker {
    /// A new row id: unique across the store, increasing, so row order is routing order.
    pub(crate) fn next_row(&self) -> u64 {
        self.next_row
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Hands `batch` to the committer behind everything enqueued before it; `None` without
    /// a store.
    pub(crate) fn enqueue(&self, batch: WriteBatch) -> Option<Commit> {
        self.committer
            .as_ref()
            .map(|committer| committer.enqueue(batch))
    }

    /// What the store has committed so far, if there is one.
    pub fn store_stats(&self) -> Option<crate::store::StoreStats> {
        self.committer.as_ref().map(|c| c.store().stats())
    }

    /// Live bytes in the store (what `storage.max_store_bytes` bounds), if there is one.
    pub fn store_usage(&self) -> Option<u64> {
        self.committer.as_ref().map(|c| c.store().live_bytes())
    }

    /// What the store will hold once the writes on their way to it are committed: live
    /// bytes, plus batches still queued, less what queued drops will free.
    fn store_bytes_to_be(committer: &GroupCommitter, freeing: &AtomicU64) -> u64 {
        (committer.store().live_bytes() + committer.queued_bytes())
            .saturating_sub(freeing.load(Ordering::Relaxed))
    }

    /// Whether `adding` more bytes would take the store past `storage.max_store_bytes`.
    pub(crate) fn store_full(&self, adding: usize) -> bool {
        self.committer.as_ref().is_some_and(|c| {
            Broker::store_bytes_to_be(c, &self.freeing).saturating_add(adding as u64)
                > self.config.max_store_bytes
        })
    }

    /// Makes room for `adding` bytes, if the store needs it and may: with
    /// `storage.full_policy = drop_oldest`, drops the oldest messages queued for offline
    /// sessions (oldest by row id, across sessions) until a tenth of the limit would be
    /// free after the write. Returns whether the write now fits; with `reject` only if it
    /// fitted already.
    pub(crate) fn make_room(&self, adding: usize) -> bool {
        let Some(committer) = &self.committer else {
            return true;
        };
        if !self.store_full(adding) {
            return true;
        }
        if self.config.store_full_policy != QueuePolicy::DropOldest {
            return false;
        }
        // One publisher makes room at a time; the next sees what it freed.
        let _making = self
            .making_room
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !self.store_full(adding) {
            return true;
        }
        let limit = self.config.max_store_bytes;
        let target = Broker::store_bytes_to_be(committer, &self.freeing)
            .saturating_add(adding as u64)
            .saturating_sub(limit - limit / 10);
        // Every offline session's oldest stored message, oldest first.
        let mut fronts: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
        let entries = self.registry.entries();
        for (i, entry) in entries.iter().enumerate() {
            if let Some(row) = entry.oldest_queued_row() {
                fronts.push(Reverse((row, i)));
            }
        }
        let mut batch = WriteBatch::new(Now::from_clocks());
        let (mut freed, mut dropped) = (0u64, 0u64);
        while freed < target {
            let Some(Reverse((row, i))) = fronts.pop() else {
                break;
            };
            let entry = &entries[i];
            if let Some(message) = entry.drop_oldest_queued(row) {
                let id = entry.client_id().as_str();
                batch.delete_row(id, row);
                freed += stored_size(id, &message);
                dropped += 1;
            }
            if let Some(next) = entry.oldest_queued_row() {
                fronts.push(Reverse((next, i)));
            }
        }
        if dropped == 0 {
            return !self.store_full(adding);
        }
        Stats::add(&self.stats.messages_dropped, dropped);
        tracing::warn!(
            dropped,
            freed_bytes = freed,
            limit,
            "store full (storage.max_store_bytes): dropped the oldest queued messages \
             (storage.full_policy = drop_oldest)"
        );
        // Counted as free until the removal is committed and the live bytes show it.
        self.freeing.fetch_add(freed, Ordering::Relaxed);
        let commit = committer.enqueue(batch);
        let freeing = Arc::clone(&self.freeing);
        tokio::spawn(async move {
            if let Err(err) = commit.await {
                tracing::error!(error = %err, "dropping queued messages from the store failed");
            }
            freeing.fetch_sub(freed, Ordering::Relaxed);
        });
        !self.store_full(adding)
    }

    /// Records a step of a stored outbound flow. The returned commit resolves when the
    /// step is durable (what waits for it is up to the caller); a finished row's removal
    /// rides on the next durable commit (losing it repeats at most a QoS 1 message or a
    /// PUBREL, both allowed).
    pub(crate) fn record_flow(&self, client_id: &str, step: FlowStep) -> Option<Commit> {
        let committer = self.committer.as_ref()?;
        let mut batch = WriteBatch::new(Now::from_clocks());
        match step {
            FlowStep::Sending { row, packet_id } => {
                batch.mark_inflight(client_id, row, packet_id, false)
            }
            FlowStep::Received { row, packet_id } => {
                batch.mark_inflight(client_id, row, packet_id, true)
            }
            FlowStep::Finished { row } => {
                batch.delete_row(client_id, row);
                return Some(committer.enqueue_lazy(batch));
            }
        }
        Some(committer.enqueue(batch))
    }

    /// Forgets a stored row (its message was dropped before reaching the session).
    pub(crate) fn forget_row(&self, key: &SessionKey, row: Option<u64>) {
        if let Some(row) = row {
            self.record_flow(key.entry().client_id().as_str(), FlowStep::Finished { row });
        }
    }

    /// Forgets an inbound QoS 2 packet id the client released.
    pub(crate) fn record_release(&self, client_id: &str, packet_id: PacketId) -> Option<Commit> {
        let mut batch = WriteBatch::new(Now::from_clocks());
        batch.delete_inbound(client_id, packet_id);
        self.enqueue(batch)
    }

    /// Gives `delivery` a row (and adds it to `batch`) if it is a QoS 1/2 copy for a
    /// persistent session and the broker has a store.
    pub(crate) fn stamp_row(
        &self,
        key: &SessionKey,
        delivery: &mut Delivery,
        batch: &mut WriteBatch,
    ) {
        if self.committer.is_none()
            || delivery.qos == crate::protocol::QoS::AtMostOnce
            || !key.entry().is_persistent()
        {
            return;
        }
        delivery.row = Some(self.next_row());
        if let Err(err) = batch.append_queued(key.entry().client_id().as_str(), delivery) {
            tracing::error!(client_id = ?key, error = %err, "message not stored");
            delivery.row = None;
        }
    }

    /// Writes a persistent session's meta: online (`offline_since` `None`) or gone offline
    /// with its pending will; `rows` are stored messages to add with it (retained
    /// messages sent on subscribe). `None` without a store or for a session that is not
    /// persistent.
    pub(crate) fn write_meta(
        &self,
        key: &SessionKey,
        offline_since: Option<Instant>,
        will: Option<PendingWill>,
        batch: WriteBatch,
    ) -> Option<Commit> {
        self.committer.as_ref()?;
        let entry = key.entry();
        if !entry.is_persistent() {
            return None;
        }
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
        let meta = SessionMeta {
            expiry_interval: entry.expiry(),
            offline_since,
            subscriptions,
            will,
        };
        let mut with_meta = WriteBatch::new(Now::from_clocks());
        if let Err(err) = with_meta.put_meta(entry.client_id().as_str(), &meta) {
            tracing::error!(client_id = ?key, error = %err, "session not stored");
            return None;
        }
        with_meta.append(batch);
        self.enqueue(with_meta)
    }

    /// Deletes a session from the store (it ended); the commit resolves when that is
    /// durable.
    pub(crate) fn forget_session(&self, client_id: &str) -> Option<Commit> {
        let mut batch = WriteBatch::new(Now::from_clocks());
        batch.delete_session(client_id);
        self.enqueue(batch)
    }

    /// Loads what the store recovered: offline sessions with their subscriptions and
    /// pending wills, retained messages, and the wills of sessions that expired while the
    /// broker was down (published now).
    pub fn restore(self: &Arc<Self>, recovered: Recovered, now: Instant) {
        self.next_row
            .fetch_max(recovered.next_row, std::sync::atomic::Ordering::Relaxed);
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
    }
}

/// About what a message's row takes in the store (its key, topic, payload and framing).
fn stored_size(client_id: &str, message: &Delivery) -> u64 {
    (client_id.len() + 8 + message.topic.len() + message.payload.len() + 32) as u64
}
