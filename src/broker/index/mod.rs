//! The subscription index: which clients receive a message published on a topic.
//!
//! ```text
//!  writers (SUBSCRIBE, UNSUBSCRIBE,        readers (every PUBLISH)
//!  session end), one at a time
//!        │                                        │
//!        ▼                                        ▼
//!  SharedIndex::update ──► SubscriptionIndex ──► Snapshot ◄── SharedIndex::matches
//!   (mutex, writers only)   (edits a persistent    (Arc'd trie root, published by an
//!                            trie by path copying)  atomic pointer swap; never locked)
//! ```
//!
//! - [`SubscriptionIndex`] is the plain structure: `&mut self` edits, `&self` lookups. It
//!   keeps the trie and, beside it, each client's subscriptions (for UNSUBSCRIBE, session
//!   end and persistence) and presence (online or not, for shared subscriptions).
//! - [`Snapshot`] is an immutable view of the trie: what a publish matches against.
//! - [`SharedIndex`] shares one index between tasks: writers serialise on a mutex, edit the
//!   index and publish a new snapshot with one atomic pointer store (`arc-swap`); readers load
//!   the current snapshot without locking and never wait for a writer.
//!
//! Matching rules: levels are separated by `/`, and empty levels are levels (`a/+` matches
//! `a/`, `/` has two empty levels); `+` matches exactly one level; `#` matches its parent
//! level and any number below it (`a/#` matches `a` and `a/b/c`) [MQTT-4.7.1-2]; `+` or `#`
//! in the first level does not match a topic that starts with `$` [MQTT-4.7.2-1].
//!
//! Shared subscriptions `$share/<group>/<filter>` [MQTT-4.8.2] are parsed by
//! [`parse_shared`]; each message goes to one member per group, chosen round robin among the
//! online members (see [`SubscriptionIndex::set_online`]).
//!
//! Cost of a write: the nodes on one root-to-leaf path are copied, O(1) each; the maps a
//! write edits (a node's children, a filter's subscribers) are persistent hash maps of which
//! an edit copies O(log32 n) small branches; a shared group's member list is copied whole
//! (groups are small). Everything else is shared with the snapshots readers hold. Measured
//! in `benches/topic.rs`.

mod filter;
mod pmap;
mod shared;
mod trie;

#[cfg(test)]
pub(crate) mod naive;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use crate::protocol::{SubscriptionOptions, TopicFilter, TopicName};

pub use filter::{parse_shared, ClientId, ClientKey, FilterError, SharedFilter};
pub use shared::SharedIndex;
pub use trie::{Route, Subscription};

use trie::{Node, Presence};

/// What a SUBSCRIBE changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOutcome {
    /// The client already had a subscription with this exact filter, now replaced
    /// [MQTT-3.8.4-3]. Retain handling 1 sends retained messages only when this is false.
    pub existed: bool,
}

/// Subscriptions by topic filter, with lookups by topic. See the module docs.
pub struct SubscriptionIndex<K: ClientKey = ClientId> {
    root: Arc<Node<K>>,
    clients: HashMap<K, ClientEntry>,
    len: usize,
}

struct ClientEntry {
    presence: Arc<Presence>,
    /// Keyed by the filter as subscribed, `$share/...` included.
    filters: BTreeMap<TopicFilter, Subscription>,
}

impl<K: ClientKey> SubscriptionIndex<K> {
    pub fn new() -> SubscriptionIndex<K> {
        SubscriptionIndex {
            root: Arc::new(Node::default()),
            clients: HashMap::new(),
            len: 0,
        }
    }

    /// Adds `client`'s subscription to `filter`, or replaces the one it had with that exact
    /// filter (options and identifier both; a replacing SUBSCRIBE without an identifier
    /// removes the old one) [MQTT-3.8.4-3].
    ///
    /// Fails only for a malformed `$share/...` filter; nothing is changed then.
    pub fn subscribe(
        &mut self,
        client: &K,
        filter: &TopicFilter,
        options: SubscriptionOptions,
        identifier: Option<NonZeroU32>,
    ) -> Result<SubscribeOutcome, FilterError> {
        let share = parse_shared(filter)?;
        let subscription = Subscription {
            options,
            identifier,
        };
        let entry = self
            .clients
            .entry(client.clone())
            .or_insert_with(|| ClientEntry {
                presence: Arc::new(Presence::new(true)),
                filters: BTreeMap::new(),
            });
        let previous = entry.filters.insert(filter.clone(), subscription);
        if previous == Some(subscription) {
            return Ok(SubscribeOutcome { existed: true });
        }
        match &share {
            None => {
                trie::subscribers_mut(&mut self.root, filter).upsert_direct(client, subscription)
            }
            Some(share) => trie::subscribers_mut(&mut self.root, share.filter()).upsert_shared(
                share,
                client,
                subscription,
                Arc::clone(&entry.presence),
            ),
        }
        if previous.is_none() {
            self.len += 1;
        }
        Ok(SubscribeOutcome {
            existed: previous.is_some(),
        })
    }

    /// Removes `client`'s subscription to exactly `filter`; false if it had none.
    pub fn unsubscribe(&mut self, client: &K, filter: &TopicFilter) -> bool {
        let Some(entry) = self.clients.get_mut(client) else {
            return false;
        };
        if entry.filters.remove(filter).is_none() {
            return false;
        }
        if entry.filters.is_empty() && entry.presence.is_online() {
            self.clients.remove(client);
        }
        self.remove_from_trie(client, filter);
        self.len -= 1;
        true
    }

    /// Removes every subscription of `client` and forgets its presence (a session that
    /// ended). Returns how many subscriptions it had.
    pub fn remove_client(&mut self, client: &K) -> usize {
        let Some(entry) = self.clients.remove(client) else {
            return 0;
        };
        for filter in entry.filters.keys() {
            self.remove_from_trie(client, filter);
        }
        self.len -= entry.filters.len();
        entry.filters.len()
    }

    /// Marks `client` connected or not. Shared-subscription groups deliver to online members
    /// and fall back to an offline one only when no member is online.
    ///
    /// Clients are online unless marked otherwise, so the broker marks a session offline
    /// when its connection ends and the session is kept, including sessions restored at
    /// start-up (before or after restoring their subscriptions: the mark is kept for a client
    /// without subscriptions until [`remove_client`](Self::remove_client)). The mark is an
    /// atomic shared with every snapshot, so it takes effect without a new snapshot.
    pub fn set_online(&mut self, client: &K, online: bool) {
        match self.clients.get(client) {
            Some(entry) => {
                entry.presence.set(online);
                if online && entry.filters.is_empty() {
                    self.clients.remove(client);
                }
            }
            None if !online => {
                self.clients.insert(
                    client.clone(),
                    ClientEntry {
                        presence: Arc::new(Presence::new(false)),
                        filters: BTreeMap::new(),
                    },
                );
            }
            None => {}
        }
    }

    pub fn is_online(&self, client: &K) -> bool {
        match self.clients.get(client) {
            Some(entry) => entry.presence.is_online(),
            None => true,
        }
    }

    /// `client`'s subscriptions in filter order, as subscribed (`$share/...` included): for
    /// persisting a session and for listing.
    pub fn subscriptions_of(&self, client: &K) -> Vec<(TopicFilter, Subscription)> {
        self.clients
            .get(client)
            .map(|entry| {
                entry
                    .filters
                    .iter()
                    .map(|(filter, subscription)| (filter.clone(), *subscription))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `client` has a subscription with exactly this filter.
    pub fn subscription(&self, client: &K, filter: &TopicFilter) -> Option<Subscription> {
        self.clients.get(client)?.filters.get(filter).copied()
    }

    /// The number of subscriptions, counting each (client, filter) once.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of clients with at least one subscription or marked offline.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// An immutable view of the current subscriptions; O(1), shares the trie.
    pub fn snapshot(&self) -> Snapshot<K> {
        Snapshot {
            root: Arc::clone(&self.root),
            len: self.len,
        }
    }

    /// See [`Snapshot::matches`].
    pub fn matches(&self, topic: &TopicName, publisher: Option<&K>) -> Vec<Route<K>> {
        let mut out = Vec::new();
        trie::collect_routes(&self.root, topic, publisher, &mut out);
        out
    }

    /// See [`Snapshot::matches_into`].
    pub fn matches_into(&self, topic: &TopicName, publisher: Option<&K>, out: &mut Vec<Route<K>>) {
        trie::collect_routes(&self.root, topic, publisher, out);
    }

    /// See [`Snapshot::pick_shared`].
    pub fn pick_shared(&self, share: &SharedFilter, excluding: Option<&K>) -> Option<Route<K>> {
        trie::pick_shared(&self.root, share, excluding)
    }

    fn remove_from_trie(&mut self, client: &K, filter: &TopicFilter) {
        match parse_shared(filter) {
            Ok(Some(share)) => {
                trie::edit_subscribers(&mut self.root, share.filter(), |subscribers| {
                    subscribers.remove_shared(share.group(), client)
                });
            }
            // Only filters that parsed were stored, so `Err` cannot be here.
            Ok(None) | Err(_) => {
                trie::edit_subscribers(&mut self.root, filter, |subscribers| {
                    subscribers.remove_direct(client)
                });
            }
        }
    }
}

impl<K: ClientKey> Default for SubscriptionIndex<K> {
    fn default() -> Self {
        SubscriptionIndex::new()
    }
}

impl<K: ClientKey> fmt::Debug for SubscriptionIndex<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionIndex")
            .field("subscriptions", &self.len)
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

/// An immutable view of the subscriptions at one moment. Cheap to clone (one `Arc`); later
/// writes to the index do not change it. Shared-group turn counters and client presence are
/// live, not frozen: they are shared with the index.
pub struct Snapshot<K: ClientKey = ClientId> {
    root: Arc<Node<K>>,
    len: usize,
}

impl<K: ClientKey> Snapshot<K> {
    /// The deliveries for a message on `topic`: one [`Route`] per client over its ordinary
    /// subscriptions (merged), then one per shared subscription that matches (its chosen
    /// member). `publisher` is the client that published it, for no local; `None` for
    /// messages the broker makes itself (wills, `$SYS`).
    ///
    /// Routes come in no particular order. Each call advances the round robin of every
    /// matching shared group, so call it once per message.
    pub fn matches(&self, topic: &TopicName, publisher: Option<&K>) -> Vec<Route<K>> {
        let mut out = Vec::new();
        trie::collect_routes(&self.root, topic, publisher, &mut out);
        out
    }

    /// [`matches`](Self::matches), appending to `out` so a caller can reuse its allocation.
    pub fn matches_into(&self, topic: &TopicName, publisher: Option<&K>, out: &mut Vec<Route<K>>) {
        trie::collect_routes(&self.root, topic, publisher, out);
    }

    /// Chooses another member of a shared subscription for a message that was routed to
    /// `excluding` and is now stranded (its connection went away with it in flight). Same
    /// policy as [`matches`](Self::matches); `None` if the group has no other member.
    pub fn pick_shared(&self, share: &SharedFilter, excluding: Option<&K>) -> Option<Route<K>> {
        trie::pick_shared(&self.root, share, excluding)
    }

    /// The number of subscriptions when the snapshot was taken.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<K: ClientKey> Clone for Snapshot<K> {
    fn clone(&self) -> Self {
        Snapshot {
            root: Arc::clone(&self.root),
            len: self.len,
        }
    }
}

impl<K: ClientKey> fmt::Debug for Snapshot<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("subscriptions", &self.len)
            .finish_non_exhaustive()
    }
}
