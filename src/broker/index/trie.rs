//! The persistent topic trie behind [`super::SubscriptionIndex`] and [`super::Snapshot`].
//!
//! Every node sits behind an `Arc`. A writer reaches the node it changes through
//! `Arc::make_mut`, which clones a node only while a published snapshot still shares it, so
//! a write copies the nodes on one root-to-leaf path and nothing else; every other node stays
//! shared with the snapshots readers hold. A node's children and a filter's ordinary
//! subscribers are persistent hash maps ([`PersistentMap`]), so copying a node is O(1) and
//! editing one of its maps copies O(log n) of it, however wide the node or crowded the
//! filter.
//!
//! Nothing here recurses over the depth of a topic: a filter may have 32 768 levels, and
//! matching, editing and dropping walk with explicit stacks so no input can overflow a
//! thread's stack.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::protocol::{SubscriptionOptions, TopicFilter, TopicName};

use super::filter::{ClientKey, SharedFilter};
use super::pmap::PersistentMap;

/// One subscription as SUBSCRIBE stated it: the options byte and the optional subscription
/// identifier (v5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    pub identifier: Option<NonZeroU32>,
}

/// One delivery decided by a match: who receives the message and how.
///
/// A client with several matching ordinary subscriptions gets one route carrying the
/// highest QoS among them [MQTT-3.3.4-2], `retain_as_published` if any of them has it, and
/// every identifier among them [MQTT-3.3.4-3] (sorted, without repeats). The broker sends
/// at the lower of this QoS and the message's.
///
/// A shared subscription yields its own route (`share` is `Some`) for the member chosen,
/// never merged with that member's ordinary subscriptions: each shared subscription is a
/// separate subscription that delivers independently, so a client subscribed to `a/+` and a
/// member of `$share/g/a/+` may receive a message on `a/b` twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<K> {
    pub client: K,
    pub qos: crate::protocol::QoS,
    pub retain_as_published: bool,
    pub subscription_ids: Vec<NonZeroU32>,
    pub share: Option<SharedFilter>,
}

impl<K> Route<K> {
    fn new(client: K, subscription: &Subscription, share: Option<SharedFilter>) -> Route<K> {
        Route {
            client,
            qos: subscription.options.qos,
            retain_as_published: subscription.options.retain_as_published,
            subscription_ids: subscription.identifier.into_iter().collect(),
            share,
        }
    }

    fn absorb(&mut self, other: &mut Route<K>) {
        self.qos = self.qos.max(other.qos);
        self.retain_as_published |= other.retain_as_published;
        self.subscription_ids.append(&mut other.subscription_ids);
    }
}

/// Whether a client is connected, shared by every shared-group membership of the client and
/// by every snapshot, so flipping it is one atomic store and needs no new snapshot.
#[derive(Debug)]
pub(super) struct Presence(AtomicBool);

impl Presence {
    pub(super) fn new(online: bool) -> Presence {
        Presence(AtomicBool::new(online))
    }

    pub(super) fn is_online(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub(super) fn set(&self, online: bool) {
        self.0.store(online, Ordering::Relaxed);
    }
}

/// The subscribers of one filter: ordinary ones by client, shared ones by group.
///
/// Copying it for an edit costs O(1) for the ordinary subscribers (a persistent map) plus
/// one pointer per shared group; editing a group copies that group's member list.
#[derive(Clone)]
pub(super) struct Subscribers<K> {
    direct: PersistentMap<K, Subscription>,
    /// Sorted by group name; every group has at least one member.
    shared: Vec<Arc<SharedGroup<K>>>,
}

impl<K> Default for Subscribers<K> {
    fn default() -> Self {
        Subscribers {
            direct: PersistentMap::default(),
            shared: Vec::new(),
        }
    }
}

#[derive(Clone)]
struct SharedGroup<K> {
    share: SharedFilter,
    /// Sorted by client.
    members: Vec<Member<K>>,
    /// Position of the next member to try. Shared by every copy of this group, old snapshots
    /// included, so round robin continues across membership changes.
    cursor: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Member<K> {
    client: K,
    subscription: Subscription,
    presence: Arc<Presence>,
}

impl<K: ClientKey> Subscribers<K> {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }

    pub(super) fn upsert_direct(&mut self, client: &K, subscription: Subscription) {
        self.direct.insert(client.clone(), subscription);
    }

    pub(super) fn remove_direct(&mut self, client: &K) -> bool {
        self.direct.remove(client).is_some()
    }

    pub(super) fn upsert_shared(
        &mut self,
        share: &SharedFilter,
        client: &K,
        subscription: Subscription,
        presence: Arc<Presence>,
    ) {
        let g = match self.group_position(share.group()) {
            Ok(g) => g,
            Err(g) => {
                self.shared.insert(
                    g,
                    Arc::new(SharedGroup {
                        share: share.clone(),
                        members: Vec::new(),
                        cursor: Arc::new(AtomicUsize::new(0)),
                    }),
                );
                g
            }
        };
        let members = &mut Arc::make_mut(&mut self.shared[g]).members;
        match members.binary_search_by(|m| m.client.cmp(client)) {
            Ok(i) => members[i].subscription = subscription,
            Err(i) => members.insert(
                i,
                Member {
                    client: client.clone(),
                    subscription,
                    presence,
                },
            ),
        }
    }

    pub(super) fn remove_shared(&mut self, group: &str, client: &K) -> bool {
        let Ok(g) = self.group_position(group) else {
            return false;
        };
        let members = &mut Arc::make_mut(&mut self.shared[g]).members;
        let Ok(i) = members.binary_search_by(|m| m.client.cmp(client)) else {
            return false;
        };
        members.remove(i);
        if members.is_empty() {
            self.shared.remove(g);
        }
        true
    }

    fn group_position(&self, group: &str) -> Result<usize, usize> {
        self.shared.binary_search_by(|g| g.share.group().cmp(group))
    }
}

impl<K: ClientKey> SharedGroup<K> {
    /// Picks the member that receives the next message, advancing the round robin.
    ///
    /// Eligible: not `excluding`, and not the publisher when the member asked for no local
    /// (a protocol error on a shared subscription [MQTT-3.8.3-4], honoured anyway). Online
    /// eligible members are served strictly in turn. Only when none is online does an
    /// offline one get the message, in turn among the offline: an offline member is still in
    /// the index only because its session outlives the connection, so the broker queues the
    /// message in that session rather than losing it.
    fn select(&self, publisher: Option<&K>, excluding: Option<&K>) -> Option<&Member<K>> {
        let eligible = |m: &Member<K>| {
            Some(&m.client) != excluding
                && !(m.subscription.options.no_local && Some(&m.client) == publisher)
        };
        self.select_where(|m| eligible(m) && m.presence.is_online())
            .or_else(|| self.select_where(eligible))
    }

    fn select_where(&self, accept: impl Fn(&Member<K>) -> bool) -> Option<&Member<K>> {
        let n = self.members.len();
        let mut start = self.cursor.load(Ordering::Relaxed);
        loop {
            let pos = (0..n)
                .map(|step| start.wrapping_add(step))
                .find(|pos| accept(&self.members[pos % n]))?;
            // Advancing past the chosen member (not just by one) keeps the turn order fair
            // among the accepted members when others are skipped.
            match self.cursor.compare_exchange_weak(
                start,
                pos.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(&self.members[pos % n]),
                Err(current) => start = current,
            }
        }
    }

    fn route(member: &Member<K>, share: &SharedFilter) -> Route<K> {
        Route::new(
            member.client.clone(),
            &member.subscription,
            Some(share.clone()),
        )
    }
}

/// A trie node. The edge into it is one filter level; `#` is not an edge but the `multi`
/// slot of the node it follows, since it is always last.
pub(super) struct Node<K> {
    literal: PersistentMap<Arc<str>, Arc<Node<K>>>,
    plus: Option<Arc<Node<K>>>,
    /// Filters that end at this node.
    exact: Option<Arc<Subscribers<K>>>,
    /// Filters that end with `/#` after this node (or are `#`, at the root).
    multi: Option<Arc<Subscribers<K>>>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Node {
            literal: PersistentMap::default(),
            plus: None,
            exact: None,
            multi: None,
        }
    }
}

impl<K: Clone> Clone for Node<K> {
    fn clone(&self) -> Self {
        Node {
            literal: self.literal.clone(),
            plus: self.plus.clone(),
            exact: self.exact.clone(),
            multi: self.multi.clone(),
        }
    }
}

impl<K> Drop for Node<K> {
    /// Dismantles uniquely owned descendants with a stack instead of letting each node drop
    /// its children recursively: a deep trie must not overflow the stack.
    fn drop(&mut self) {
        let mut stack: Vec<Arc<Node<K>>> = self.take_children().collect();
        while let Some(child) = stack.pop() {
            if let Some(mut node) = Arc::into_inner(child) {
                stack.extend(node.take_children());
            }
        }
    }
}

impl<K> Node<K> {
    /// The children this node alone owns (children in map branches still shared with
    /// another copy of the node are left to that copy).
    fn take_children(&mut self) -> impl Iterator<Item = Arc<Node<K>>> {
        let plus = self.plus.take();
        self.literal.take_owned_values().into_iter().chain(plus)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.plus.is_none()
            && self.exact.is_none()
            && self.multi.is_none()
    }

    #[cfg(test)]
    pub(super) fn literal_child(&self, level: &str) -> Option<&Arc<Node<K>>> {
        self.literal.get(level)
    }

    fn child(&self, edge: &str) -> Option<&Arc<Node<K>>> {
        match edge {
            "+" => self.plus.as_ref(),
            literal => self.literal.get(literal),
        }
    }

    fn edge_count(&self) -> usize {
        self.literal.len() + usize::from(self.plus.is_some())
    }

    fn remove_edge(&mut self, edge: &str) {
        match edge {
            "+" => self.plus = None,
            literal => {
                self.literal.remove(literal);
            }
        }
    }

    fn slot(&self, slot: Slot) -> &Option<Arc<Subscribers<K>>> {
        match slot {
            Slot::Exact => &self.exact,
            Slot::Multi => &self.multi,
        }
    }

    fn slot_mut(&mut self, slot: Slot) -> &mut Option<Arc<Subscribers<K>>> {
        match slot {
            Slot::Exact => &mut self.exact,
            Slot::Multi => &mut self.multi,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Exact,
    Multi,
}

/// A filter as a path through the trie: the edges to walk, then the slot at the end.
struct Path<'a> {
    edges: Vec<&'a str>,
    slot: Slot,
}

impl<'a> Path<'a> {
    fn of(filter: &'a TopicFilter) -> Path<'a> {
        let mut edges: Vec<&str> = filter.as_str().split('/').collect();
        // A valid filter has `#` only as its last level.
        let slot = if edges.last() == Some(&"#") {
            edges.pop();
            Slot::Multi
        } else {
            Slot::Exact
        };
        Path { edges, slot }
    }
}

/// The subscriber list of `filter`, created if missing, made unique for editing.
pub(super) fn subscribers_mut<'t, K: ClientKey>(
    root: &'t mut Arc<Node<K>>,
    filter: &TopicFilter,
) -> &'t mut Subscribers<K> {
    let path = Path::of(filter);
    let mut node = Arc::make_mut(root);
    for edge in path.edges {
        let child = match edge {
            "+" => node.plus.get_or_insert_with(Default::default),
            literal => node
                .literal
                .get_or_insert_with(literal, || (Arc::from(literal), Arc::default())),
        };
        node = Arc::make_mut(child);
    }
    Arc::make_mut(
        node.slot_mut(path.slot)
            .get_or_insert_with(Default::default),
    )
}

/// Applies `edit` to the subscriber list of `filter` if it exists, then prunes the list and
/// any nodes left without subscribers or children. Returns what `edit` returned, or false
/// when the filter has no subscribers at all (then nothing is copied).
pub(super) fn edit_subscribers<K: ClientKey>(
    root: &mut Arc<Node<K>>,
    filter: &TopicFilter,
    edit: impl FnOnce(&mut Subscribers<K>) -> bool,
) -> bool {
    let path = Path::of(filter);
    // Read-only pass: find the list, and the deepest node that must survive if the target
    // node empties: the root, or one with subscribers or another edge.
    let mut cut = 0;
    let mut node: &Node<K> = root;
    for (depth, edge) in path.edges.iter().enumerate() {
        if depth == 0 || node.exact.is_some() || node.multi.is_some() || node.edge_count() > 1 {
            cut = depth;
        }
        match node.child(edge) {
            Some(child) => node = child,
            None => return false,
        }
    }
    if node.slot(path.slot).is_none() {
        return false;
    }

    let mut node = Arc::make_mut(root);
    for edge in &path.edges {
        let child = match *edge {
            "+" => node.plus.as_mut(),
            literal => node.literal.get_mut(literal),
        };
        match child {
            Some(child) => node = Arc::make_mut(child),
            None => return false,
        }
    }
    let slot = node.slot_mut(path.slot);
    let Some(subscribers) = slot.as_mut() else {
        return false;
    };
    let changed = edit(Arc::make_mut(subscribers));
    if subscribers.is_empty() {
        *slot = None;
    }
    if !node.is_empty() || path.edges.is_empty() {
        return changed;
    }

    // The target node is empty: drop the chain below `cut`, whose nodes had nothing but the
    // one edge on the path. These nodes were made unique above, so this copies nothing.
    let mut node = Arc::make_mut(root);
    for edge in &path.edges[..cut] {
        let child = match *edge {
            "+" => node.plus.as_mut(),
            literal => node.literal.get_mut(literal),
        };
        match child {
            Some(child) => node = Arc::make_mut(child),
            None => return changed,
        }
    }
    node.remove_edge(path.edges[cut]);
    changed
}

/// Appends to `out` the routes for a message on `topic` published by `publisher`.
pub(super) fn collect_routes<K: ClientKey>(
    root: &Node<K>,
    topic: &TopicName,
    publisher: Option<&K>,
    out: &mut Vec<Route<K>>,
) {
    let levels: Vec<&str> = topic.as_str().split('/').collect();
    // Wildcards in the first level do not match topics starting with `$` [MQTT-4.7.2-1].
    let dollar = topic.as_str().starts_with('$');
    let direct_start = out.len();
    let mut direct_lists = 0usize;
    let mut shared_routes = Vec::new();

    let mut visit = |subscribers: &Subscribers<K>, out: &mut Vec<Route<K>>| {
        let before = out.len();
        subscribers.direct.for_each(|client, subscription| {
            // No local: never back to the connection that published it [MQTT-3.8.3-3].
            if !(subscription.options.no_local && Some(client) == publisher) {
                out.push(Route::new(client.clone(), subscription, None));
            }
        });
        if out.len() > before {
            direct_lists += 1;
        }
        for group in &subscribers.shared {
            if let Some(member) = group.select(publisher, None) {
                shared_routes.push(SharedGroup::route(member, &group.share));
            }
        }
    };

    let mut stack: Vec<(&Node<K>, usize)> = vec![(root, 0)];
    while let Some((node, depth)) = stack.pop() {
        let wildcards_match = depth > 0 || !dollar;
        if wildcards_match {
            // `a/#` matches `a` itself and everything below it [MQTT-4.7.1-2].
            if let Some(multi) = &node.multi {
                visit(multi, out);
            }
        }
        match levels.get(depth) {
            None => {
                if let Some(exact) = &node.exact {
                    visit(exact, out);
                }
            }
            Some(level) => {
                if let Some(child) = node.literal.get(*level) {
                    stack.push((child, depth + 1));
                }
                if wildcards_match {
                    if let Some(plus) = &node.plus {
                        stack.push((plus, depth + 1));
                    }
                }
            }
        }
    }

    if direct_lists > 1 {
        merge_per_client(out, direct_start);
    }
    out.append(&mut shared_routes);
}

/// The subscriber chosen to receive the next message of one shared subscription, skipping
/// `excluding` (the member whose connection just went away with the message in flight).
pub(super) fn pick_shared<K: ClientKey>(
    root: &Node<K>,
    share: &SharedFilter,
    excluding: Option<&K>,
) -> Option<Route<K>> {
    let path = Path::of(share.filter());
    let mut node = root;
    for edge in &path.edges {
        node = node.child(edge)?;
    }
    let subscribers = node.slot(path.slot).as_ref()?;
    let g = subscribers.group_position(share.group()).ok()?;
    let group = &subscribers.shared[g];
    group
        .select(None, excluding)
        .map(|member| SharedGroup::route(member, &group.share))
}

/// Merges the routes in `out[start..]` into one per client (they arrive one per client per
/// matching filter).
fn merge_per_client<K: ClientKey>(out: &mut Vec<Route<K>>, start: usize) {
    out[start..].sort_unstable_by(|a, b| a.client.cmp(&b.client));
    let mut write = start;
    for read in start + 1..out.len() {
        if out[read].client == out[write].client {
            let (kept, rest) = out.split_at_mut(read);
            kept[write].absorb(&mut rest[0]);
        } else {
            write += 1;
            out.swap(write, read);
        }
    }
    out.truncate(write + 1);
    for route in &mut out[start..] {
        if route.subscription_ids.len() > 1 {
            route.subscription_ids.sort_unstable();
            route.subscription_ids.dedup();
        }
    }
}
