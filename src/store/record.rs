//! What the store keeps and what recovery hands back: plain data, in the broker's terms
//! (`Instant`s, protocol types). Conversion to wall-clock time happens on the way in and
//! out, against a [`Now`].

use std::fmt;
use std::num::NonZeroU32;
use std::time::{Instant, SystemTime};

use crate::broker::retained::RetainedMessage;
use crate::protocol::{SessionSnapshot, SubscriptionOptions, TopicFilter, Will};

/// A session expiry interval that never ends [MQTT-3.1.2-23] (v5 `0xFFFFFFFF`).
pub const NEVER_EXPIRES: u32 = u32::MAX;

/// Both clocks read at one moment. An `Instant` means nothing after a restart, so the
/// store writes every time as wall-clock time, converting with the `Now` of the batch, and
/// converts back with the `Now` of recovery. Pass the broker's own monotonic clock (under
/// tokio's paused test clock, `tokio::time::Instant::now().into_std()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub instant: Instant,
    pub system: SystemTime,
}

impl Now {
    pub fn new(instant: Instant, system: SystemTime) -> Now {
        Now { instant, system }
    }

    /// `std`'s two clocks, read one after the other.
    pub fn from_clocks() -> Now {
        Now {
            instant: Instant::now(),
            system: SystemTime::now(),
        }
    }
}

/// A persistent session as the broker writes it with
/// [`WriteBatch::put_session`](super::WriteBatch::put_session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Session expiry interval in seconds, counted from `offline_since`;
    /// [`NEVER_EXPIRES`] never expires.
    pub expiry_interval: u32,
    /// When the client disconnected; `None` while it is connected. A session that was
    /// connected when the broker stopped counts as disconnected at the restart.
    pub offline_since: Option<Instant>,
    pub subscriptions: Vec<StoredSubscription>,
    /// A will waiting for its delay [MQTT-3.1.3-9], if any.
    pub will: Option<PendingWill>,
    /// In-flight messages, queue and inbound QoS 2 ids, from
    /// [`SessionState::snapshot`](crate::protocol::SessionState::snapshot).
    pub state: SessionSnapshot,
}

impl SessionRecord {
    /// Everything but the messages and inbound ids.
    pub fn meta(&self) -> SessionMeta {
        SessionMeta {
            expiry_interval: self.expiry_interval,
            offline_since: self.offline_since,
            subscriptions: self.subscriptions.clone(),
            will: self.will.clone(),
        }
    }
}

/// What a session is apart from its messages, written with
/// [`WriteBatch::put_meta`](super::WriteBatch::put_meta): the fields of a
/// [`SessionRecord`] without its `state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionMeta {
    pub expiry_interval: u32,
    /// When the client disconnected; `None` while it is connected.
    pub offline_since: Option<Instant>,
    pub subscriptions: Vec<StoredSubscription>,
    pub will: Option<PendingWill>,
}

/// One subscription of a session, with everything SUBSCRIBE gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    pub filter: TopicFilter,
    pub options: SubscriptionOptions,
    /// The subscription identifier [MQTT-3.8.2.1.2], if the SUBSCRIBE carried one.
    pub identifier: Option<NonZeroU32>,
}

/// A will to publish at `due` unless the client comes back first. The will delay interval
/// stays in `will.properties` and is restored with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWill {
    pub will: Will,
    /// When to publish it; after a restart a time already past reads as the restart time.
    pub due: Instant,
}

/// What [`Store::recover`](super::Store::recover) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Live sessions, in client id order, expired queued messages removed.
    pub sessions: Vec<RecoveredSession>,
    /// Live retained messages, in topic order.
    pub retained: Vec<RetainedMessage>,
    /// Wills of sessions that expired while the broker was down: a session's end
    /// publishes its will [MQTT-3.1.3-9], so these are due now.
    pub wills_of_expired_sessions: Vec<ExpiredSessionWill>,
    /// Above every row id in the file: where the broker's row ids continue.
    pub next_row: u64,
    pub report: RecoveryReport,
}

/// The will of a session that expired while the broker was down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredSessionWill {
    pub client_id: String,
    pub will: Will,
}

/// One live session after a restart, ready for
/// [`SessionState::restore`](crate::protocol::SessionState::restore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSession {
    pub client_id: String,
    pub expiry_interval: u32,
    /// When it was disconnected (the restart, if it was connected when the broker stopped).
    pub offline_since: Instant,
    /// When it expires; `None` never (or beyond what an `Instant` can hold).
    pub expires_at: Option<Instant>,
    pub subscriptions: Vec<StoredSubscription>,
    /// Its pending will, to schedule (it stands down if the client reconnects first).
    pub will: Option<PendingWill>,
    pub state: SessionSnapshot,
}

/// Counts of what recovery loaded and dropped. Its `Display` is the summary line logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub sessions: u64,
    /// Sessions past their expiry, removed with their messages.
    pub expired_sessions: u64,
    /// In-flight and queued messages loaded.
    pub messages: u64,
    /// Queued messages past their message expiry, removed [MQTT-3.3.2-5]. In-flight ones
    /// are kept: their delivery has begun.
    pub expired_messages: u64,
    /// Messages that went with an expired session.
    pub messages_of_expired_sessions: u64,
    pub retained: u64,
    pub expired_retained: u64,
    /// Pending wills of live sessions.
    pub wills: u64,
    /// Wills of expired sessions, due now.
    pub wills_due: u64,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sessions ({} messages, {} pending wills), {} retained messages; dropped: {} \
             expired sessions ({} messages, {} wills due now), {} expired queued messages, {} \
             expired retained messages",
            self.sessions,
            self.messages,
            self.wills,
            self.retained,
            self.expired_sessions,
            self.messages_of_expired_sessions,
            self.wills_due,
            self.expired_messages,
            self.expired_retained
        )
    }
}
