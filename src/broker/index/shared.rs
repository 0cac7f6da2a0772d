//! [`SharedIndex`]: one subscription index shared by every connection task, with lookups
//! that never wait for a writer.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::protocol::{SubscriptionOptions, TopicFilter, TopicName};

use super::{
    ClientId, ClientKey, FilterError, Route, SharedFilter, Snapshot, SubscribeOutcome,
    Subscription, SubscriptionIndex,
};

/// A [`SubscriptionIndex`] behind a writer mutex, published to readers as [`Snapshot`]s.
///
/// - Reads ([`matches`](Self::matches), [`snapshot`](Self::snapshot)) load the current
///   snapshot from an `ArcSwap`: no lock, no waiting on writers, no contention between
///   readers beyond a reference count.
/// - Writes lock the mutex (writers queue behind each other, never readers), edit the index
///   by path copying, and publish the result with one atomic pointer store. A batch of edits
///   in one [`update`](Self::update) publishes once and copies each shared node at most once.
/// - A reader holding an older snapshot keeps seeing the subscriptions as they were, while
///   shared-group turns and presence are live in every snapshot.
pub struct SharedIndex<K: ClientKey = ClientId> {
    writer: Mutex<SubscriptionIndex<K>>,
    current: ArcSwap<Snapshot<K>>,
}

impl<K: ClientKey> SharedIndex<K> {
    pub fn new() -> SharedIndex<K> {
        SharedIndex::from_index(SubscriptionIndex::new())
    }

    /// Shares an index built beforehand (for example, restored from the store).
    pub fn from_index(index: SubscriptionIndex<K>) -> SharedIndex<K> {
        let current = ArcSwap::from_pointee(index.snapshot());
        SharedIndex {
            writer: Mutex::new(index),
            current,
        }
    }

    /// The current snapshot, to match several topics against one consistent view.
    pub fn snapshot(&self) -> Arc<Snapshot<K>> {
        self.current.load_full()
    }

    /// [`Snapshot::matches`] on the current snapshot. Lock-free.
    pub fn matches(&self, topic: &TopicName, publisher: Option<&K>) -> Vec<Route<K>> {
        self.current.load().matches(topic, publisher)
    }

    /// [`Snapshot::matches_into`] on the current snapshot. Lock-free.
    pub fn matches_into(&self, topic: &TopicName, publisher: Option<&K>, out: &mut Vec<Route<K>>) {
        self.current.load().matches_into(topic, publisher, out)
    }

    /// [`Snapshot::pick_shared`] on the current snapshot. Lock-free.
    pub fn pick_shared(&self, share: &SharedFilter, excluding: Option<&K>) -> Option<Route<K>> {
        self.current.load().pick_shared(share, excluding)
    }

    /// Runs `edit` on the index under the writer lock, then publishes the result if the
    /// subscriptions changed. Readers see all of the edits or none.
    pub fn update<R>(&self, edit: impl FnOnce(&mut SubscriptionIndex<K>) -> R) -> R {
        let mut index = self.lock();
        let result = edit(&mut index);
        let snapshot = index.snapshot();
        if !Arc::ptr_eq(&snapshot.root, &self.current.load().root) {
            self.current.store(Arc::new(snapshot));
        }
        result
    }

    /// [`SubscriptionIndex::subscribe`], published.
    pub fn subscribe(
        &self,
        client: &K,
        filter: &TopicFilter,
        options: SubscriptionOptions,
        identifier: Option<NonZeroU32>,
    ) -> Result<SubscribeOutcome, FilterError> {
        self.update(|index| index.subscribe(client, filter, options, identifier))
    }

    /// [`SubscriptionIndex::unsubscribe`], published.
    pub fn unsubscribe(&self, client: &K, filter: &TopicFilter) -> bool {
        self.update(|index| index.unsubscribe(client, filter))
    }

    /// [`SubscriptionIndex::remove_client`], published.
    pub fn remove_client(&self, client: &K) -> usize {
        self.update(|index| index.remove_client(client))
    }

    /// [`SubscriptionIndex::set_online`]. Takes the writer lock briefly to find the client;
    /// readers see the change at once without a new snapshot.
    pub fn set_online(&self, client: &K, online: bool) {
        self.lock().set_online(client, online)
    }

    /// [`SubscriptionIndex::subscriptions_of`], under the writer lock (not a hot path).
    pub fn subscriptions_of(&self, client: &K) -> Vec<(TopicFilter, Subscription)> {
        self.lock().subscriptions_of(client)
    }

    /// The number of subscriptions in the current snapshot. Lock-free.
    pub fn len(&self) -> usize {
        self.current.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, SubscriptionIndex<K>> {
        // The index is never left half-edited by a panic inside it (no code path panics), so
        // a poisoned lock (a panic in a caller's `update` closure) still guards a usable index.
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<K: ClientKey> Default for SharedIndex<K> {
    fn default() -> Self {
        SharedIndex::new()
    }
}

impl<K: ClientKey> std::fmt::Debug for SharedIndex<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedIndex")
            .field("current", &*self.current.load())
            .finish_non_exhaustive()
    }
}
