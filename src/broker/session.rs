//! The session registry: one [`SessionEntry`] per client id, online (a connection task's
//! mailbox) or offline (its [`SessionState`] and expiry), and the takeover protocol between
//! two connections with the same client id.
//!
//! ```text
//!            connect (connect lock held)                 connection ends
//!  (none) ─────────────────────────────► Online ─────────────────────────► Offline
//!                                         ▲  │ takeover: old task is told 0x8E,    │
//!                                         │  │ the new one waits for Offline       │
//!                                         │  ▼                                     │
//!                                         └──────────── reconnect ◄────────────────┘
//!                                   Offline past its expiry: removed with its subscriptions
//! ```
//!
//! A publisher delivers to a session under that session's own lock (never a global one):
//! online, the message goes into the connection's mailbox; offline, into its queue. The
//! connection task flips Online to Offline under the same lock after draining its mailbox,
//! so no message falls between the two.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};

use crate::broker::auth::{Action, ClientAcl};
use crate::broker::index::ClientId;
use crate::protocol::{Delivery, QoS, QueueLimit, SessionState};
use crate::transport::Command;

/// Where a session is.
#[derive(Debug)]
pub enum Slot {
    /// Connected: deliveries go to the connection task. `generation` names the connection.
    Online {
        generation: u64,
        mailbox: mpsc::UnboundedSender<Command>,
    },
    /// Not connected: the session waits here until `expires_at` (`None`: never).
    Offline {
        state: SessionState,
        expires_at: Option<Instant>,
    },
}

/// One client id's session.
pub struct SessionEntry {
    client_id: ClientId,
    slot: Mutex<Slot>,
    /// Held by a connection while it resolves takeover and resumes, so two new
    /// connections with the same id take turns.
    pub(crate) connect_lock: tokio::sync::Mutex<()>,
    /// Notified whenever the slot becomes Offline.
    offline: Notify,
    /// Bumped on every connect: a pending will or expiry from an older connection checks it
    /// and stands down if the client came back.
    epoch: AtomicU64,
    queue_limit: QueueLimit,
    /// What the client may receive (ACL), set when it connects; checked on every delivery,
    /// live or queued.
    acl: std::sync::RwLock<Option<Arc<ClientAcl>>>,
    /// The session expiry in force (seconds; `u32::MAX` never; 0: ends with its
    /// connection). A session with a non-zero expiry is persistent and is written to the
    /// store.
    expiry: std::sync::atomic::AtomicU32,
}

impl fmt::Debug for SessionEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionEntry")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// A session as the subscription index keys it: compared, hashed and ordered by client id,
/// and cheap to clone, so a route leads straight to the session without a registry lookup.
#[derive(Clone)]
pub struct SessionKey(Arc<SessionEntry>);

impl SessionKey {
    pub fn entry(&self) -> &Arc<SessionEntry> {
        &self.0
    }
}

impl PartialEq for SessionKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.client_id == other.0.client_id
    }
}
impl Eq for SessionKey {}
impl Hash for SessionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.client_id.hash(state);
    }
}
impl PartialOrd for SessionKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SessionKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.client_id.cmp(&other.0.client_id)
    }
}
impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.client_id.as_str())
    }
}

/// What happened to a message handed to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    ToConnection,
    Queued,
    /// Queued; the oldest queued message made room, and its store row (if any) can go.
    QueuedDroppingOldest {
        evicted_row: Option<u64>,
    },
    Dropped,
    /// The client's ACL does not let it receive this topic.
    Refused,
}

impl SessionEntry {
    fn new(client_id: ClientId, queue_limit: QueueLimit) -> SessionEntry {
        SessionEntry {
            client_id,
            slot: Mutex::new(Slot::Offline {
                state: SessionState::new(),
                expires_at: Some(crate::transport::now()),
            }),
            connect_lock: tokio::sync::Mutex::new(()),
            offline: Notify::new(),
            epoch: AtomicU64::new(0),
            queue_limit,
            acl: std::sync::RwLock::new(None),
            expiry: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Whether the session outlives its connection (and so is written to the store).
    pub fn is_persistent(&self) -> bool {
        self.expiry.load(Ordering::Acquire) > 0
    }

    pub fn set_expiry(&self, seconds: u32) {
        self.expiry.store(seconds, Ordering::Release);
    }

    pub fn expiry(&self) -> u32 {
        self.expiry.load(Ordering::Acquire)
    }

    /// A session recovered from the store at start-up: offline, with its state.
    pub fn restore_offline(&self, state: SessionState, expiry: u32, expires_at: Option<Instant>) {
        self.set_expiry(expiry);
        *self.slot() = Slot::Offline { state, expires_at };
    }

    /// Sets what the client may receive (at each connect: the rules follow the identity).
    pub fn set_acl(&self, acl: Arc<ClientAcl>) {
        *self.acl.write().unwrap_or_else(|p| p.into_inner()) = Some(acl);
    }

    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        // A panic while holding this lock would be a bug in a few lines of our own code;
        // the slot is still consistent (every write is a single assignment), so go on.
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands a message to the session: to the connection if online, into the offline
    /// queue otherwise (QoS 0 is not queued for offline clients, as in mosquitto).
    pub fn deliver(&self, delivery: Delivery) -> Delivered {
        let allowed = match &*self.acl.read().unwrap_or_else(|p| p.into_inner()) {
            Some(acl) => acl.check(Action::Receive, delivery.topic.as_str()),
            None => true,
        };
        if !allowed {
            return Delivered::Refused;
        }
        let mut slot = self.slot();
        match &mut *slot {
            // The task keeps its mailbox open until it has flipped the slot to Offline
            // under this lock, so a send here always reaches it.
            Slot::Online { mailbox, .. } => match mailbox.send(Command::Deliver(delivery)) {
                Ok(()) => Delivered::ToConnection,
                Err(_) => Delivered::Dropped,
            },
            Slot::Offline { state, .. } => {
                if delivery.qos == QoS::AtMostOnce {
                    return Delivered::Dropped;
                }
                match state.enqueue(delivery, self.queue_limit) {
                    Ok(None) => Delivered::Queued,
                    // The oldest message made room for this one: one was dropped all the same.
                    Ok(Some(evicted)) => Delivered::QueuedDroppingOldest {
                        evicted_row: evicted.row,
                    },
                    Err(_) => Delivered::Dropped,
                }
            }
        }
    }

    /// Sends a command to the connection, if online.
    pub fn command(&self, command: Command) -> bool {
        match &*self.slot() {
            Slot::Online { mailbox, .. } => mailbox.send(command).is_ok(),
            Slot::Offline { .. } => false,
        }
    }

    /// Called with the connect lock held. Takes the session for a new connection: waits
    /// for a connected one to end (after telling it `0x8E`), bounded by `wait`. Returns the
    /// previous state (`None` if the wait ran out) and marks the session online.
    pub async fn take_for_connect(
        &self,
        generation: u64,
        mailbox: mpsc::UnboundedSender<Command>,
        wait: Duration,
    ) -> Option<(SessionState, bool)> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut told = false;
        loop {
            let notified = self.offline.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut slot = self.slot();
                match &mut *slot {
                    Slot::Offline { state, expires_at } => {
                        let now = crate::transport::now();
                        let expired = expires_at.is_some_and(|at| now >= at);
                        let state = std::mem::take(state);
                        self.epoch.fetch_add(1, Ordering::AcqRel);
                        *slot = Slot::Online {
                            generation,
                            mailbox,
                        };
                        return Some(if expired {
                            (SessionState::new(), false)
                        } else {
                            (state, true)
                        });
                    }
                    Slot::Online { mailbox: old, .. } if old.is_closed() => {
                        // Its task ended without handing the session back (it panicked):
                        // what it held is gone; start afresh rather than wait forever.
                        tracing::error!(
                            client_id = self.client_id.as_str(),
                            "previous connection vanished"
                        );
                        self.epoch.fetch_add(1, Ordering::AcqRel);
                        *slot = Slot::Online {
                            generation,
                            mailbox,
                        };
                        return Some((SessionState::new(), false));
                    }
                    Slot::Online { mailbox: old, .. } => {
                        if !told {
                            // [MQTT-3.1.4-3]: the existing connection is told and closed.
                            let _ = old.send(Command::Disconnect(
                                crate::protocol::ReasonCode::SessionTakenOver,
                            ));
                            told = true;
                        }
                    }
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// A connection ends: unless it was taken over, the session goes offline with
    /// `state`, and any delivery still in the mailbox joins its queue. Returns false if a
    /// newer connection owns the session (the state is then handed over through the slot).
    pub fn go_offline(
        &self,
        generation: u64,
        mut state: SessionState,
        mailbox: &mut mpsc::UnboundedReceiver<Command>,
        expires_at: Option<Instant>,
    ) {
        let mut slot = self.slot();
        if let Slot::Online { generation: g, .. } = &*slot {
            if *g != generation {
                // Cannot happen: a takeover waits for this connection to go offline first.
                tracing::error!(
                    client_id = self.client_id.as_str(),
                    "session owned by another connection"
                );
                return;
            }
        }
        while let Ok(command) = mailbox.try_recv() {
            match command {
                Command::Deliver(delivery) => {
                    let _ = state.enqueue(delivery, self.queue_limit);
                }
                // The connection ended before it could resume the session it was given:
                // that session, not the empty one the connection held, is the one to keep.
                Command::AcceptConnect(accept) => {
                    state.absorb_into(accept.session, self.queue_limit)
                }
                _ => {}
            }
        }
        *slot = Slot::Offline { state, expires_at };
        drop(slot);
        self.offline.notify_waiters();
    }

    /// Whether the session is offline and past its expiry.
    pub fn is_expired(&self, now: Instant) -> bool {
        matches!(&*self.slot(), Slot::Offline { expires_at: Some(at), .. } if now >= *at)
    }

    pub fn is_online(&self) -> bool {
        matches!(&*self.slot(), Slot::Online { .. })
    }

    /// The store row of the oldest message queued for this offline session, if it has one.
    pub fn oldest_queued_row(&self) -> Option<u64> {
        match &*self.slot() {
            Slot::Offline { state, .. } => state.queued().next().and_then(|d| d.row),
            Slot::Online { .. } => None,
        }
    }

    /// Drops the oldest queued message of this offline session if it is still the one in
    /// store row `row` (the store is full and this is the oldest message in it).
    pub fn drop_oldest_queued(&self, row: u64) -> Option<Delivery> {
        match &mut *self.slot() {
            Slot::Offline { state, .. } => state.drop_oldest_if(row),
            Slot::Online { .. } => None,
        }
    }

    /// Empties an offline session (it is being removed) and returns what it held.
    pub fn take_offline_state(&self) -> Option<SessionState> {
        match &mut *self.slot() {
            Slot::Offline { state, .. } => Some(std::mem::take(state)),
            Slot::Online { .. } => None,
        }
    }
}

/// Client id -> session, sharded so that connects do not queue behind one lock. Used on
/// connect, disconnect and expiry only; publishes reach sessions through the index.
pub struct Registry {
    shards: Vec<Mutex<HashMap<ClientId, Arc<SessionEntry>>>>,
    queue_limit: QueueLimit,
}

const SHARDS: usize = 32;

impl Registry {
    pub fn new(queue_limit: QueueLimit) -> Registry {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            queue_limit,
        }
    }

    fn shard(&self, id: &ClientId) -> MutexGuard<'_, HashMap<ClientId, Arc<SessionEntry>>> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        let index = (hasher.finish() as usize) % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The entry for `id`, created (offline, already expired, empty) if missing.
    pub fn entry(&self, id: &ClientId) -> Arc<SessionEntry> {
        self.shard(id)
            .entry(id.clone())
            .or_insert_with(|| Arc::new(SessionEntry::new(id.clone(), self.queue_limit)))
            .clone()
    }

    pub fn get(&self, id: &ClientId) -> Option<Arc<SessionEntry>> {
        self.shard(id).get(id).cloned()
    }

    /// Removes `id` if it is still `entry` and offline past its expiry.
    pub fn remove_if_expired(&self, entry: &Arc<SessionEntry>, now: Instant) -> bool {
        let mut shard = self.shard(entry.client_id());
        let same = shard
            .get(entry.client_id())
            .is_some_and(|e| Arc::ptr_eq(e, entry));
        if same && entry.is_expired(now) && entry.connect_lock.try_lock().is_ok() {
            shard.remove(entry.client_id());
            return true;
        }
        false
    }

    /// Every entry, for sweeps and shutdown.
    pub fn entries(&self) -> Vec<Arc<SessionEntry>> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SessionKey {
    pub fn new(entry: Arc<SessionEntry>) -> SessionKey {
        SessionKey(entry)
    }
}
