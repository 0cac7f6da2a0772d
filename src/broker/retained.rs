//! The retained-message store: the last retained message of each topic [MQTT-3.3.1-5],
//! delivered to new subscriptions whose filter matches.
//!
//! A trie keyed by topic level. An exact filter walks one path; `+` visits the children of
//! one node and `#` a subtree, so a wildcard subscription reads only the part of the store
//! its filter can match, never the whole store (a `HashMap` by topic would need a full scan
//! for every wildcard subscribe). Children are in a `BTreeMap`, so results come in a stable
//! order: level by level, lexicographically.
//!
//! Messages are held as `Arc<RetainedMessage>`: a subscribe hands out references, not copies
//! of payloads and properties. Expired messages [MQTT-3.3.2-5] are skipped and removed when
//! a lookup meets them, and by [`RetainedStore::purge_expired`].
//!
//! The store is a plain `&mut self` structure (retained traffic is small next to routing);
//! the broker wraps it in a lock. Shared subscriptions get no retained messages on subscribe
//! [MQTT-4.8.2]: the broker does not call [`RetainedStore::matching`] for them.
//!
//! Walks use explicit stacks, not recursion, so a topic of 32 768 levels cannot overflow a
//! thread's stack.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::protocol::{Properties, QoS, TopicFilter, TopicName};

/// A message kept for future subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedMessage {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    /// As received; the broker rewrites the message expiry interval on delivery
    /// ([`RetainedMessage::remaining_expiry`]).
    pub properties: Properties,
    /// When the message expires, from its message expiry interval; `None` never expires.
    pub expires_at: Option<Instant>,
}

impl RetainedMessage {
    /// A retained message received at `received_at`, expiring after its message expiry
    /// interval if it has one. An interval too large to represent as an `Instant` never
    /// expires.
    pub fn new(
        topic: TopicName,
        payload: Bytes,
        qos: QoS,
        properties: Properties,
        received_at: Instant,
    ) -> RetainedMessage {
        let expires_at = properties
            .message_expiry_interval
            .and_then(|secs| received_at.checked_add(Duration::from_secs(u64::from(secs))));
        RetainedMessage {
            topic,
            payload,
            qos,
            properties,
            expires_at,
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// The message expiry interval to send with the message at `now`: the received one less
    /// the time spent waiting [MQTT-3.3.2-6], rounded up so a message still alive is not
    /// sent as already expired. `None` when the message has no expiry.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        let left = self.expires_at?.saturating_duration_since(now);
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        Some(u32::try_from(secs).unwrap_or(u32::MAX))
    }
}

/// Retained messages by topic. See the module docs.
#[derive(Default)]
pub struct RetainedStore {
    root: Node,
    len: usize,
}

impl RetainedStore {
    pub fn new() -> RetainedStore {
        RetainedStore::default()
    }

    /// Stores `message` as the retained message of its topic, replacing the previous one.
    /// An empty payload instead removes the topic's retained message and stores nothing
    /// [MQTT-3.3.1-6, MQTT-3.3.1-7]. Returns the message it replaced or removed.
    ///
    /// A message with an empty topic name (an unresolved topic alias, which the connection
    /// never lets through) is not stored.
    pub fn set(&mut self, message: RetainedMessage) -> Option<Arc<RetainedMessage>> {
        if message.payload.is_empty() {
            return self.remove(&message.topic);
        }
        if message.topic.is_empty() {
            return None;
        }
        let mut node = &mut self.root;
        for level in message.topic.as_str().split('/') {
            node = node.children.entry(Box::from(level)).or_default();
        }
        let previous = node.message.replace(Arc::new(message));
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes the retained message of `topic`, returning it.
    pub fn remove(&mut self, topic: &TopicName) -> Option<Arc<RetainedMessage>> {
        let levels: Vec<&str> = topic.as_str().split('/').collect();
        // Read-only pass: the deepest node on the path that must stay if the target node
        // ends up empty (the root, or one with a message or another child).
        let mut cut = 0;
        let mut node = &self.root;
        for (depth, level) in levels.iter().enumerate() {
            if depth == 0 || node.message.is_some() || node.children.len() > 1 {
                cut = depth;
            }
            node = node.children.get(*level)?;
        }
        node.message.as_ref()?;
        let prune = node.children.is_empty();

        let mut node = &mut self.root;
        for level in &levels[..cut] {
            node = node.children.get_mut(*level)?;
        }
        let removed = if prune {
            // Everything below `cut` on this path held only the path itself.
            let mut detached = node.children.remove(levels[cut])?;
            for level in &levels[cut + 1..] {
                detached = detached.children.remove(*level)?;
            }
            detached.message.take()
        } else {
            for level in &levels[cut..] {
                node = node.children.get_mut(*level)?;
            }
            node.message.take()
        };
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The retained message of exactly `topic`, unless it has expired.
    pub fn get(&self, topic: &TopicName, now: Instant) -> Option<Arc<RetainedMessage>> {
        let mut node = &self.root;
        for level in topic.as_str().split('/') {
            node = node.children.get(level)?;
        }
        node.message
            .as_ref()
            .filter(|message| !message.is_expired(now))
            .cloned()
    }

    /// The unexpired retained messages whose topics match `filter`, with the usual rules
    /// (`+` one level, `#` the parent level and all below, no `+`/`#` first level for
    /// `$`-topics [MQTT-4.7.2-1]). Expired messages met on the way are removed.
    pub fn matching(&mut self, filter: &TopicFilter, now: Instant) -> Vec<Arc<RetainedMessage>> {
        let mut found = Vec::new();
        let mut expired = Vec::new();
        self.visit_matching(filter, |message| {
            if message.is_expired(now) {
                expired.push(message.topic.clone());
            } else {
                found.push(Arc::clone(message));
            }
        });
        for topic in &expired {
            self.remove(topic);
        }
        found
    }

    /// Removes every expired message; returns how many.
    pub fn purge_expired(&mut self, now: Instant) -> usize {
        let expired: Vec<TopicName> = self
            .iter()
            .filter(|message| message.is_expired(now))
            .map(|message| message.topic.clone())
            .collect();
        for topic in &expired {
            self.remove(topic);
        }
        expired.len()
    }

    /// Every stored message, expired or not (for persistence), in topic-level order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            stack: vec![&self.root],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn visit_matching(&self, filter: &TopicFilter, mut visit: impl FnMut(&Arc<RetainedMessage>)) {
        let levels: Vec<&str> = filter.as_str().split('/').collect();
        // Children are pushed in reverse so they pop, and are reported, in key order.
        let mut stack: Vec<(&Node, usize)> = vec![(&self.root, 0)];
        while let Some((node, depth)) = stack.pop() {
            let first = depth == 0;
            let visible = |name: &str| !(first && name.starts_with('$'));
            match levels.get(depth).copied() {
                None => {
                    if let Some(message) = &node.message {
                        visit(message);
                    }
                }
                Some("#") => {
                    // `a/#` matches `a` itself [MQTT-4.7.1-2]; the root holds no message.
                    if let Some(message) = &node.message {
                        visit(message);
                    }
                    let mut below: Vec<&Node> = node
                        .children
                        .iter()
                        .rev()
                        .filter(|(name, _)| visible(name))
                        .map(|(_, child)| child)
                        .collect();
                    while let Some(node) = below.pop() {
                        if let Some(message) = &node.message {
                            visit(message);
                        }
                        below.extend(node.children.values().rev());
                    }
                }
                Some("+") => {
                    stack.extend(
                        node.children
                            .iter()
                            .rev()
                            .filter(|(name, _)| visible(name))
                            .map(|(_, child)| (child, depth + 1)),
                    );
                }
                Some(level) => {
                    if let Some(child) = node.children.get(level) {
                        stack.push((child, depth + 1));
                    }
                }
            }
        }
    }
}

impl fmt::Debug for RetainedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedStore")
            .field("messages", &self.len)
            .finish_non_exhaustive()
    }
}

/// The messages of a [`RetainedStore`], from [`RetainedStore::iter`].
pub struct Iter<'a> {
    stack: Vec<&'a Node>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a Arc<RetainedMessage>;

    fn next(&mut self) -> Option<Self::Item> {
        while let Some(node) = self.stack.pop() {
            self.stack.extend(node.children.values().rev());
            if let Some(message) = &node.message {
                return Some(message);
            }
        }
        None
    }
}

#[derive(Default)]
struct Node {
    children: BTreeMap<Box<str>, Node>,
    message: Option<Arc<RetainedMessage>>,
}

impl Drop for Node {
    /// Drops descendants from a stack rather than recursively, so a deep topic cannot
    /// overflow the stack.
    fn drop(&mut self) {
        let mut stack: Vec<Node> = std::mem::take(&mut self.children).into_values().collect();
        while let Some(mut node) = stack.pop() {
            stack.extend(std::mem::take(&mut node.children).into_values());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::broker::index::naive::filter_matches;

    fn topic(s: &str) -> TopicName {
        TopicName::new(s).expect("valid topic")
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s).expect("valid filter")
    }

    fn message(
        t: &str,
        payload: &'static str,
        now: Instant,
        expiry: Option<u32>,
    ) -> RetainedMessage {
        let properties = Properties {
            message_expiry_interval: expiry,
            ..Properties::default()
        };
        RetainedMessage::new(
            topic(t),
            Bytes::from_static(payload.as_bytes()),
            QoS::AtLeastOnce,
            properties,
            now,
        )
    }

    fn topics(messages: &[Arc<RetainedMessage>]) -> Vec<&str> {
        messages.iter().map(|m| m.topic.as_str()).collect()
    }

    fn store_of(now: Instant, names: &[&str]) -> RetainedStore {
        let mut store = RetainedStore::new();
        for name in names {
            store.set(message(name, "p", now, None));
        }
        store
    }

    #[test]
    fn set_replaces_and_empty_payload_clears() {
        // [MQTT-3.3.1-5], [MQTT-3.3.1-6], [MQTT-3.3.1-7]
        let now = Instant::now();
        let mut store = RetainedStore::new();
        assert!(store.set(message("a/b", "one", now, None)).is_none());
        let replaced = store
            .set(message("a/b", "two", now, None))
            .expect("replaced");
        assert_eq!(replaced.payload, "one");
        assert_eq!(store.len(), 1);
        assert_eq!(store.get(&topic("a/b"), now).expect("kept").payload, "two");

        let cleared = store.set(message("a/b", "", now, None)).expect("cleared");
        assert_eq!(cleared.payload, "two");
        assert!(store.is_empty());
        assert!(store.get(&topic("a/b"), now).is_none());
        // A zero-byte retained message is never stored, even on an empty topic slot.
        assert!(store.set(message("x", "", now, None)).is_none());
        assert!(store.is_empty());
        assert!(store
            .set(RetainedMessage {
                topic: TopicName::empty_for_alias(),
                ..message("x", "p", now, None)
            })
            .is_none());
        assert!(store.is_empty());
    }

    #[test]
    fn matching_follows_wildcard_rules() {
        let now = Instant::now();
        let mut store = store_of(
            now,
            &["a", "a/b", "a/b/c", "a/", "/a", "b", "$SYS/x", "a/$x"],
        );
        let mut m = |f: &str| -> Vec<String> {
            topics(&store.matching(&filter(f), now))
                .into_iter()
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(m("a/b"), ["a/b"]);
        assert_eq!(m("a/#"), ["a", "a/", "a/$x", "a/b", "a/b/c"]);
        assert_eq!(m("a/+"), ["a/", "a/$x", "a/b"]);
        assert_eq!(m("+"), ["a", "b"]);
        assert_eq!(m("+/a"), ["/a"]);
        assert_eq!(m("#"), ["/a", "a", "a/", "a/$x", "a/b", "a/b/c", "b"]);
        assert_eq!(m("$SYS/#"), ["$SYS/x"]);
        assert_eq!(m("+/x"), Vec::<String>::new());
        assert_eq!(m("c/#"), Vec::<String>::new());
    }

    #[test]
    fn expired_messages_are_skipped_and_purged() {
        // [MQTT-3.3.2-5]
        let t0 = Instant::now();
        let mut store = RetainedStore::new();
        store.set(message("a/short", "p", t0, Some(5)));
        store.set(message("a/long", "p", t0, Some(60)));
        store.set(message("a/never", "p", t0, None));
        store.set(message("b/short", "p", t0, Some(5)));
        let later = t0 + Duration::from_secs(5);
        assert!(store.get(&topic("a/short"), later).is_none());
        assert_eq!(
            topics(&store.matching(&filter("a/+"), later)),
            ["a/long", "a/never"]
        );
        assert_eq!(store.len(), 3, "the expired match was removed");
        assert_eq!(store.purge_expired(later), 1);
        assert_eq!(store.len(), 2);
        assert_eq!(store.iter().count(), 2);
    }

    #[test]
    fn remaining_expiry_counts_down_and_rounds_up() {
        // [MQTT-3.3.2-6]
        let t0 = Instant::now();
        let m = message("a", "p", t0, Some(10));
        assert_eq!(m.remaining_expiry(t0), Some(10));
        assert_eq!(
            m.remaining_expiry(t0 + Duration::from_millis(3_500)),
            Some(7)
        );
        assert_eq!(m.remaining_expiry(t0 + Duration::from_secs(20)), Some(0));
        assert_eq!(message("a", "p", t0, None).remaining_expiry(t0), None);
        let far = message("a", "p", t0, Some(u32::MAX));
        assert!(!far.is_expired(t0 + Duration::from_secs(1 << 20)));
    }

    #[test]
    fn remove_prunes_only_unused_nodes() {
        let now = Instant::now();
        let mut store = store_of(now, &["a/b/c/d", "a/b", "a/x"]);
        assert!(store.remove(&topic("a/b/c/d")).is_some());
        assert!(store.remove(&topic("a/b/c/d")).is_none());
        assert!(store.remove(&topic("a/b/c")).is_none());
        assert_eq!(topics(&store.matching(&filter("#"), now)), ["a/b", "a/x"]);
        assert!(store.remove(&topic("a/b")).is_some());
        assert!(store.remove(&topic("a/x")).is_some());
        assert!(store.root.children.is_empty());
        // A message on an inner node stays when a deeper one goes, and vice versa.
        let mut store = store_of(now, &["a", "a/b"]);
        assert!(store.remove(&topic("a")).is_some());
        assert_eq!(topics(&store.iter().cloned().collect::<Vec<_>>()), ["a/b"]);
    }

    #[test]
    fn very_deep_topics_do_not_overflow_the_stack() {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let now = Instant::now();
                let deep = format!("{}x", "/".repeat(32_000));
                let mut store = RetainedStore::new();
                store.set(message(&deep, "p", now, None));
                assert_eq!(store.matching(&filter("#"), now).len(), 1);
                assert_eq!(
                    store
                        .matching(&filter(&format!("{}#", "/".repeat(100))), now)
                        .len(),
                    1
                );
                assert_eq!(store.iter().count(), 1);
                store.set(message("/", "p", now, None));
                assert!(store.remove(&topic(&deep)).is_some());
                store.set(message(&deep, "p", now, None));
                drop(store);
            })
            .expect("spawn")
            .join()
            .expect("no overflow");
    }

    fn topic_text() -> impl Strategy<Value = String> {
        let level = prop_oneof![Just("a"), Just("b"), Just(""), Just("$x")];
        prop::collection::vec(level, 1..5)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("not empty", |t| !t.is_empty())
    }

    fn filter_text() -> impl Strategy<Value = String> {
        let level = prop_oneof![Just("a"), Just("b"), Just(""), Just("$x"), Just("+")];
        (prop::collection::vec(level, 0..4), any::<bool>()).prop_filter_map(
            "valid filter",
            |(mut levels, hash)| {
                if hash || levels.is_empty() {
                    levels.push("#");
                }
                let text = levels.join("/");
                TopicFilter::new(&text).ok().map(|_| text)
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Random sets (some clearing, some expiring), then a lookup at a random time: the
        /// store returns exactly the unexpired messages the naive matcher accepts, removes
        /// the expired ones it met, and keeps its count and iteration consistent.
        #[test]
        fn matching_agrees_with_naive_filtering(
            sets in prop::collection::vec(
                (topic_text(), any::<bool>(), prop::option::of(0u32..4)),
                0..30,
            ),
            filters in prop::collection::vec((filter_text(), 0u64..5), 1..6),
        ) {
            let t0 = Instant::now();
            let mut store = RetainedStore::new();
            let mut model: BTreeMap<String, Option<Instant>> = BTreeMap::new();
            for (name, empty, expiry) in &sets {
                let payload = if *empty { "" } else { "p" };
                let m = message(name, payload, t0, *expiry);
                if *empty {
                    model.remove(name);
                } else {
                    model.insert(name.clone(), m.expires_at);
                }
                store.set(m);
            }
            prop_assert_eq!(store.len(), model.len());
            for (f, secs) in &filters {
                let now = t0 + Duration::from_secs(*secs);
                let mut got: Vec<String> = topics(&store.matching(&filter(f), now))
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                got.sort();
                let matched: Vec<(String, bool)> = model
                    .iter()
                    .filter(|(t, _)| filter_matches(f, t))
                    .map(|(t, at)| (t.clone(), at.is_some_and(|at| now >= at)))
                    .collect();
                let expected: Vec<String> = matched.iter().filter(|(_, gone)| !gone).map(|(t, _)| t.clone()).collect();
                prop_assert_eq!(got, expected, "filter {:?}", f);
                for (t, gone) in matched {
                    if gone {
                        model.remove(&t);
                    }
                }
                prop_assert_eq!(store.len(), model.len());
                let mut all: Vec<String> = store.iter().map(|m| m.topic.as_str().to_owned()).collect();
                all.sort();
                prop_assert_eq!(all, model.keys().cloned().collect::<Vec<_>>());
            }
        }
    }
}
