//! The broker shared by every connection task: routing, subscriptions, retained messages,
//! sessions, wills, `$SYS`, expiry and shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::auth::{Acl, Action, Authenticator, ClientAcl};
use super::index::{parse_shared, SharedFilter, SharedIndex};
use super::persist::{Durable, Pending};
use super::retained::{RetainedMessage, RetainedStore};
use super::session::{Delivered, Registry, SessionKey};
use crate::protocol::{
    ConnectionConfig, Delivery, PacketId, Properties, Publish, QoS, QosPid, QueuePolicy,
    ReasonCode, SubAck, Subscribe, TopicName, UnsubAck, Unsubscribe, Will,
};
use crate::store::{GroupCommitter, Now, WriteBatch};
use crate::transport::Command;

/// Broker-wide settings (the protocol limits of each connection included).
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub connection: ConnectionConfig,
    /// How long a new connection waits for the one it takes over to hand back the session.
    pub takeover_wait: Duration,
    /// `$SYS` publish interval; `None` turns `$SYS` off.
    pub sys_interval: Option<Duration>,
    /// How often offline sessions are checked for expiry.
    pub expiry_sweep: Duration,
    /// Past this many live bytes in the store, `store_full_policy` applies.
    pub max_store_bytes: u64,
    /// A full store: `DropNew` refuses new QoS 1/2 publishes (0x97), `DropOldest` drops the
    /// oldest messages queued for offline sessions to make room.
    pub store_full_policy: QueuePolicy,
    /// Who may connect (password file, client certificates, anonymous access).
    pub authenticator: Arc<Authenticator>,
    /// What each client may publish, subscribe to and receive.
    pub acl: Acl,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            connection: ConnectionConfig::default(),
            takeover_wait: Duration::from_secs(35),
            sys_interval: Some(Duration::from_secs(10)),
            expiry_sweep: Duration::from_secs(1),
            max_store_bytes: u64::MAX,
            store_full_policy: QueuePolicy::DropNew,
            authenticator: Arc::new(Authenticator::new(None, true)),
            acl: Acl::allow_all(),
        }
    }
}

/// What [`Broker::route`] did with a message.
pub(crate) struct Routed {
    /// Subscribers it was routed to.
    pub matched: usize,
    /// When its writes are durable (at once if there were none).
    pub durable: Pending,
}

/// Counters for `$SYS` and the benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    pub clients_connected: AtomicU64,
    pub connections_total: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The broker. Shared as `Arc<Broker>` by every connection task.
pub struct Broker {
    pub(crate) config: BrokerConfig,
    pub(crate) index: SharedIndex<SessionKey>,
    retained: Mutex<RetainedStore>,
    pub(crate) registry: Registry,
    pub stats: Stats,
    next_generation: AtomicU64,
    started: Instant,
    shutdown: watch::Sender<bool>,
    /// The store, unless `storage.durability = none`.
    pub(crate) committer: Option<GroupCommitter>,
    /// The next store row id (see `persist.rs`); continues after the recovered ones.
    pub(crate) next_row: AtomicU64,
    /// Store bytes that dropped messages will free once their removal is committed.
    pub(crate) freeing: Arc<AtomicU64>,
    /// Held while dropping old messages to make room in a full store.
    pub(crate) making_room: Mutex<()>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    pub fn new(config: BrokerConfig) -> Arc<Broker> {
        Broker::with_store(config, None)
    }

    /// A broker that writes persistent sessions and retained messages through `committer`.
    pub fn with_store(config: BrokerConfig, committer: Option<GroupCommitter>) -> Arc<Broker> {
        let (shutdown, _) = watch::channel(false);
        let queue_limit = config.connection.queue_limit();
        Arc::new(Broker {
            config,
            index: SharedIndex::new(),
            retained: Mutex::new(RetainedStore::new()),
            registry: Registry::new(queue_limit),
            stats: Stats::default(),
            next_generation: AtomicU64::new(1),
            started: Instant::now(),
            shutdown,
            committer,
            next_row: AtomicU64::new(0),
            freeing: Arc::default(),
            making_room: Mutex::new(()),
        })
    }

    /// Starts the background tasks ($SYS, session expiry). They end at shutdown.
    pub fn start(self: &Arc<Self>) {
        let broker = Arc::clone(self);
        let mut stop = self.shutdown.subscribe();
        tokio::spawn(async move {
            let mut sweep = tokio::time::interval(broker.config.expiry_sweep);
            let mut sys = broker.config.sys_interval.map(tokio::time::interval);
            loop {
                tokio::select! {
                    _ = sweep.tick() => broker.expire_sessions(crate::transport::now()),
                    _ = tick(&mut sys) => broker.publish_sys(crate::transport::now()),
                    _ = stop.changed() => return,
                }
            }
        });
    }

    /// A receiver that turns true when the broker shuts down (for listeners).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Tells every connected client the server is shutting down (v5: DISCONNECT 0x8B),
    /// keeps their sessions, and waits (bounded) until they have gone offline.
    pub async fn shutdown(&self, wait: Duration) {
        let _ = self.shutdown.send(true);
        for entry in self.registry.entries() {
            entry.command(Command::Disconnect(ReasonCode::ServerShuttingDown));
        }
        let deadline = tokio::time::Instant::now() + wait;
        while self.registry.entries().iter().any(|e| e.is_online()) {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("shutdown: some connections did not close in time");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // What the connections wrote on their way out (lazy removals too) reaches the disk
        // before the process ends.
        if let Some(committer) = &self.committer {
            if let Err(err) = committer.flush().await {
                tracing::error!(error = %err, "shutdown: the store's last writes failed");
            }
        }
    }

    pub(crate) fn next_generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    fn retained(&self) -> MutexGuard<'_, RetainedStore> {
        self.retained
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Routes an application message to every matching subscriber (and the retained
    /// store). Returns how many subscribers it was routed to.
    pub fn publish(
        &self,
        publisher: Option<&SessionKey>,
        message: &Publish,
        now: Instant,
    ) -> usize {
        self.route(publisher, message, now, None).matched
    }

    /// [`Broker::publish`], storing a QoS 1/2 message's copies for persistent sessions and
    /// its retained change (with `inbound`, the publisher's QoS 2 packet id) in one batch,
    /// enqueued before any copy is handed over. A batch that would take the store past
    /// `storage.max_store_bytes` (after `storage.full_policy` made what room it may)
    /// refuses the message (0x97 quota exceeded): nothing is routed or retained.
    pub(crate) fn route(
        &self,
        publisher: Option<&SessionKey>,
        message: &Publish,
        now: Instant,
        inbound: Option<PacketId>,
    ) -> Routed {
        let stored = self.committer.is_some() && message.qos() > QoS::AtMostOnce;
        // QoS 0 (and a broker without a store) never builds a batch.
        let mut batch = stored.then(|| WriteBatch::new(Now::from_clocks()));
        let expires_at = message
            .properties
            .message_expiry_interval
            .and_then(|secs| now.checked_add(Duration::from_secs(u64::from(secs))));
        let retained = message
            .retain
            .then(|| retained_message(message, expires_at));
        if let (Some(batch), Some(retained)) = (batch.as_mut(), &retained) {
            match retained {
                Some(retained) => {
                    if let Err(err) = batch.put_retained(retained) {
                        tracing::error!(error = %err, "retained message not stored");
                    }
                }
                None => batch.delete_retained(&message.topic),
            }
        }
        if let (Some(batch), Some(publisher), Some(id)) = (batch.as_mut(), publisher, inbound) {
            if publisher.entry().is_persistent() {
                batch.put_inbound(publisher.entry().client_id().as_str(), id);
            }
        }
        let forwarded = Arc::new(forwarded_properties(&message.properties));
        let routes = self.index.matches(&message.topic, publisher);
        let matched = routes.len();
        let mut copies = Vec::with_capacity(matched);
        for route in routes {
            let mut delivery = Delivery {
                topic: message.topic.clone(),
                payload: message.payload.clone(),
                qos: message.qos().min(route.qos),
                // Retain is kept only for subscriptions that asked for it [MQTT-3.3.1-12].
                retain: message.retain && route.retain_as_published,
                properties: Arc::clone(&forwarded),
                subscription_ids: route.subscription_ids,
                shared: route.share.as_ref().and_then(shared_filter),
                expires_at,
                row: None,
            };
            if let Some(batch) = batch.as_mut() {
                self.stamp_row(&route.client, &mut delivery, batch);
            }
            copies.push((route.client, delivery));
        }
        if let Some(batch) = &batch {
            if !self.make_room(batch.encoded_bytes()) {
                Stats::add(&self.stats.messages_dropped, 1);
                tracing::warn!(
                    limit = self.config.max_store_bytes,
                    topic = %message.topic,
                    "store full (storage.max_store_bytes): publish refused with 0x97"
                );
                return Routed {
                    matched: 0,
                    durable: Pending::Ready(Durable::Refused(ReasonCode::QuotaExceeded)),
                };
            }
        }
        Stats::add(&self.stats.messages_received, 1);
        if let Some(retained) = retained {
            self.set_retained(&message.topic, retained);
        }
        let durable = match batch.and_then(|batch| self.enqueue(batch)) {
            Some(commit) => Pending::Commit(commit),
            None => Pending::Ready(Durable::Yes),
        };
        for (client, delivery) in copies {
            self.hand_over(&client, delivery);
        }
        Routed { matched, durable }
    }

    /// Hands a copy to its session, counting it; a stored copy that did not get there
    /// loses its row.
    pub(crate) fn hand_over(&self, client: &SessionKey, delivery: Delivery) {
        let row = delivery.row;
        match client.entry().deliver(delivery) {
            Delivered::ToConnection | Delivered::Queued => Stats::add(&self.stats.messages_sent, 1),
            Delivered::QueuedDroppingOldest { evicted_row } => {
                Stats::add(&self.stats.messages_sent, 1);
                Stats::add(&self.stats.messages_dropped, 1);
                tracing::debug!(client_id = ?client, "queue full: oldest queued message dropped");
                self.forget_row(client, evicted_row);
            }
            Delivered::Dropped => {
                Stats::add(&self.stats.messages_dropped, 1);
                tracing::debug!(client_id = ?client, "queue full: message dropped");
                self.forget_row(client, row);
            }
            Delivered::Refused => self.forget_row(client, row),
        }
    }

    /// Sets the retained message of `topic`, or clears it (`None`: an empty payload
    /// [MQTT-3.3.1-6]).
    fn set_retained(&self, topic: &TopicName, retained: Option<RetainedMessage>) {
        let mut store = self.retained();
        // What was retained before is not needed.
        let _previous = match retained {
            Some(message) => store.set(message),
            None => store.remove(topic),
        };
    }

    /// Subscribes, answers with SUBACK, and returns the retained messages to send after
    /// it, per each filter's retain handling [MQTT-3.3.1-9..11].
    pub(crate) fn subscribe(
        &self,
        client: &SessionKey,
        acl: &ClientAcl,
        subscribe: Subscribe,
        now: Instant,
    ) -> (SubAck, Vec<Delivery>) {
        let identifier = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        let max_qos = self.config.connection.maximum_qos;
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        for (filter, mut options) in subscribe.filters {
            if !acl.check(Action::Subscribe, filter.as_str()) {
                tracing::info!(%filter, "subscription refused by the ACL");
                reasons.push(ReasonCode::NotAuthorized);
                continue;
            }
            options.qos = options.qos.min(max_qos);
            let outcome = self.index.subscribe(client, &filter, options, identifier);
            let Ok(outcome) = outcome else {
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            };
            reasons.push(ReasonCode::granted(options.qos));
            let shared = filter.as_str().starts_with("$share/");
            let send_retained = match options.retain_handling {
                crate::protocol::RetainHandling::SendAtSubscribe => true,
                crate::protocol::RetainHandling::SendIfNew => !outcome.existed,
                crate::protocol::RetainHandling::DoNotSend => false,
            };
            // Retained messages are not sent for shared subscriptions [MQTT-4.8.2].
            if send_retained && !shared {
                for message in self.retained().matching(&filter, now) {
                    if !acl.check(Action::Receive, message.topic.as_str()) {
                        continue;
                    }
                    retained.push(Delivery {
                        topic: message.topic.clone(),
                        payload: message.payload.clone(),
                        qos: message.qos.min(options.qos),
                        retain: true,
                        properties: Arc::new(message.properties.clone()),
                        subscription_ids: identifier.into_iter().collect(),
                        shared: None,
                        expires_at: message.expires_at,
                        row: None,
                    });
                }
            }
        }
        let suback = SubAck {
            packet_id: subscribe.packet_id,
            reasons,
            properties: Properties::default(),
        };
        (suback, retained)
    }

    pub(crate) fn unsubscribe(&self, client: &SessionKey, unsubscribe: Unsubscribe) -> UnsubAck {
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                if self.index.unsubscribe(client, filter) {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                }
            })
            .collect();
        UnsubAck {
            packet_id: unsubscribe.packet_id,
            reasons,
            properties: Properties::default(),
        }
    }

    /// Publishes `will` now, or after `delay` (`will_delay`) unless the client comes back
    /// first [MQTT-3.1.3-9].
    pub(crate) fn schedule_will_after(
        self: &Arc<Self>,
        client: SessionKey,
        will: Will,
        delay: Duration,
    ) {
        let message = will_message(will);
        if delay.is_zero() {
            self.publish(None, &message, crate::transport::now());
            return;
        }
        let epoch = client.entry().epoch();
        let broker = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if client.entry().epoch() == epoch {
                broker.publish(None, &message, crate::transport::now());
            }
        });
    }

    /// Publishes a will now (its session is gone).
    pub(crate) fn schedule_will_after_key(&self, will: Will) {
        self.publish(None, &will_message(will), crate::transport::now());
    }

    /// A retained message recovered from the store.
    pub(crate) fn restore_retained(&self, message: RetainedMessage) {
        self.retained().set(message);
    }

    /// Drops offline sessions past their expiry, with their subscriptions.
    pub fn expire_sessions(self: &Arc<Self>, now: Instant) {
        for entry in self.registry.entries() {
            if entry.is_expired(now) && self.registry.remove_if_expired(&entry, now) {
                self.end_session(&SessionKey::new(entry), true);
            }
        }
    }

    /// A session is gone for good: its subscriptions go, and messages it held from shared
    /// subscriptions go to another member of their group [MQTT-4.8.2].
    /// `stored`: the session was persistent, so the store may hold it.
    pub(crate) fn end_session(self: &Arc<Self>, key: &SessionKey, stored: bool) {
        self.index.remove_client(key);
        if stored {
            // Enqueued now, so it lands before anything a new session of this id writes.
            self.forget_session(key.entry().client_id().as_str());
        }
        let Some(state) = key.entry().take_offline_state() else {
            return;
        };
        // The moved messages' new rows, stored in one batch before any is handed over.
        let mut batch = WriteBatch::new(Now::from_clocks());
        let mut moved = Vec::new();
        for mut delivery in state.into_messages() {
            let Some(share) = delivery
                .shared
                .as_ref()
                .and_then(|f| parse_shared(f).ok().flatten())
            else {
                continue;
            };
            match self.index.pick_shared(&share, Some(key)) {
                Some(route) => {
                    tracing::debug!(client_id = ?key, topic = %delivery.topic, share = %share, "shared message moved to another member");
                    delivery.qos = delivery.qos.min(route.qos);
                    delivery.subscription_ids = route.subscription_ids;
                    // Its row went with the ended session; the new one gets its own.
                    delivery.row = None;
                    self.stamp_row(&route.client, &mut delivery, &mut batch);
                    moved.push((route.client, delivery));
                }
                None => Stats::add(&self.stats.messages_dropped, 1),
            }
        }
        self.enqueue(batch);
        for (client, delivery) in moved {
            self.hand_over(&client, delivery);
        }
    }

    /// Publishes the `$SYS/broker/...` topics as retained messages.
    pub fn publish_sys(&self, now: Instant) {
        let s = &self.stats;
        let mut topics: Vec<(&str, String)> = vec![
            (
                "$SYS/broker/version",
                format!("twinmq {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "$SYS/broker/uptime",
                format!("{} seconds", self.started.elapsed().as_secs()),
            ),
            (
                "$SYS/broker/clients/connected",
                Stats::get(&s.clients_connected).to_string(),
            ),
            ("$SYS/broker/clients/total", self.registry.len().to_string()),
            (
                "$SYS/broker/messages/received",
                Stats::get(&s.messages_received).to_string(),
            ),
            (
                "$SYS/broker/messages/sent",
                Stats::get(&s.messages_sent).to_string(),
            ),
            (
                "$SYS/broker/messages/dropped",
                Stats::get(&s.messages_dropped).to_string(),
            ),
            (
                "$SYS/broker/bytes/received",
                Stats::get(&s.bytes_received).to_string(),
            ),
            (
                "$SYS/broker/bytes/sent",
                Stats::get(&s.bytes_sent).to_string(),
            ),
            (
                "$SYS/broker/subscriptions/count",
                self.index.len().to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                self.retained().len().to_string(),
            ),
        ];
        if let Some(bytes) = self.store_usage() {
            topics.push(("$SYS/broker/store/bytes", bytes.to_string()));
        }
        for (topic, value) in topics {
            let Ok(topic) = TopicName::new(topic) else {
                continue;
            };
            let message = Publish {
                dup: false,
                qos_pid: QosPid::AtMostOnce,
                retain: true,
                topic,
                payload: bytes::Bytes::from(value),
                properties: Properties::default(),
            };
            // $SYS messages are not counted as client traffic.
            self.set_retained(&message.topic, retained_message(&message, None));
            for route in self.index.matches(&message.topic, None) {
                route.client.entry().deliver(Delivery {
                    retain: route.retain_as_published,
                    subscription_ids: route.subscription_ids,
                    ..Delivery::new(
                        message.topic.clone(),
                        message.payload.clone(),
                        QoS::AtMostOnce,
                    )
                });
            }
        }
        let _ = now;
    }

    /// Number of retained messages.
    pub fn retained_count(&self) -> usize {
        self.retained().len()
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The properties a subscriber receives: those of the publish, without the topic alias
/// (per connection) and subscription identifiers (per subscriber) [MQTT-3.3.4].
fn forwarded_properties(properties: &Properties) -> Properties {
    Properties {
        payload_format_indicator: properties.payload_format_indicator,
        content_type: properties.content_type.clone(),
        response_topic: properties.response_topic.clone(),
        correlation_data: properties.correlation_data.clone(),
        user_properties: properties.user_properties.clone(),
        message_expiry_interval: properties.message_expiry_interval,
        ..Properties::default()
    }
}

/// What a retained PUBLISH leaves as the topic's retained message; `None` clears it (an
/// empty payload [MQTT-3.3.1-6]).
fn retained_message(message: &Publish, expires_at: Option<Instant>) -> Option<RetainedMessage> {
    (!message.payload.is_empty()).then(|| RetainedMessage {
        topic: message.topic.clone(),
        payload: message.payload.clone(),
        qos: message.qos(),
        properties: forwarded_properties(&message.properties),
        expires_at,
    })
}

/// The full `$share/<group>/<filter>` a shared route came from.
fn shared_filter(share: &SharedFilter) -> Option<crate::protocol::TopicFilter> {
    crate::protocol::TopicFilter::new(&share.to_string()).ok()
}

/// The will delay in force: the will's own, bounded by the session expiry [MQTT-3.1.3-9].
pub(crate) fn will_delay(will: &Will, session_expiry: u32) -> Duration {
    let secs = will
        .properties
        .will_delay_interval
        .unwrap_or(0)
        .min(session_expiry);
    Duration::from_secs(u64::from(secs))
}

fn will_message(will: Will) -> Publish {
    let qos_pid = match will.qos {
        QoS::AtMostOnce => QosPid::AtMostOnce,
        // Routing ignores the id: each subscriber's connection assigns its own.
        QoS::AtLeastOnce => QosPid::AtLeastOnce(crate::protocol::PacketId::MIN),
        QoS::ExactlyOnce => QosPid::ExactlyOnce(crate::protocol::PacketId::MIN),
    };
    let mut properties = forwarded_properties(&will.properties);
    properties.will_delay_interval = None;
    Publish {
        dup: false,
        qos_pid,
        retain: will.retain,
        topic: will.topic,
        payload: will.payload,
        properties,
    }
}
