//! Property tests: the index against a model built from [`super::naive::filter_matches`].

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use proptest::prelude::*;

use crate::protocol::{QoS, SubscriptionOptions, TopicFilter, TopicName};

use super::naive::filter_matches;
use super::*;

const CLIENTS: u32 = 4;

fn topic_level() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("a"), Just("b"), Just(""), Just("$x")]
}

fn topic_text() -> impl Strategy<Value = String> {
    prop::collection::vec(topic_level(), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("topic names are not empty", |t| !t.is_empty())
}

/// Filters over the same small alphabet plus `+` and a trailing `#`, sometimes shared.
fn filter_text() -> impl Strategy<Value = String> {
    let level = prop_oneof![Just("a"), Just("b"), Just(""), Just("$x"), Just("+")];
    (
        prop::collection::vec(level, 0..4),
        any::<bool>(),
        prop_oneof![3 => Just(None), 1 => Just(Some("g")), 1 => Just(Some("h"))],
    )
        .prop_filter_map("valid filter", |(mut levels, hash, group)| {
            if hash || levels.is_empty() {
                levels.push("#");
            }
            let inner = levels.join("/");
            TopicFilter::new(&inner).ok()?;
            let text = match group {
                Some(g) => format!("$share/{g}/{inner}"),
                None => inner,
            };
            TopicFilter::new(&text).ok().map(|_| text)
        })
}

#[derive(Debug, Clone)]
enum Op {
    Subscribe {
        client: u32,
        filter: String,
        subscription: Subscription,
    },
    Unsubscribe {
        client: u32,
        filter: String,
    },
    RemoveClient(u32),
    SetOnline(u32, bool),
}

fn subscription() -> impl Strategy<Value = Subscription> {
    (
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        prop::option::of(1u32..4),
    )
        .prop_map(
            |(q, no_local, retain_as_published, identifier)| Subscription {
                options: SubscriptionOptions {
                    qos: QoS::from_bits(q).unwrap_or(QoS::AtMostOnce),
                    no_local,
                    retain_as_published,
                    ..SubscriptionOptions::qos(QoS::AtMostOnce)
                },
                identifier: identifier.and_then(NonZeroU32::new),
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..CLIENTS, filter_text(), subscription()).prop_map(|(client, filter, subscription)| {
            Op::Subscribe { client, filter, subscription }
        }),
        2 => (0..CLIENTS, filter_text()).prop_map(|(client, filter)| Op::Unsubscribe { client, filter }),
        1 => (0..CLIENTS).prop_map(Op::RemoveClient),
        2 => (0..CLIENTS, any::<bool>()).prop_map(|(c, online)| Op::SetOnline(c, online)),
    ]
}

/// What the index should hold: subscriptions by (client, filter as subscribed), presence.
#[derive(Debug, Clone, Default)]
struct Model {
    subscriptions: BTreeMap<(u32, String), Subscription>,
    offline: BTreeMap<u32, ()>,
}

impl Model {
    fn apply(&mut self, index: &mut SubscriptionIndex<u32>, op: &Op) {
        match op {
            Op::Subscribe {
                client,
                filter,
                subscription,
            } => {
                let f = TopicFilter::new(filter).expect("generated valid");
                let outcome = index
                    .subscribe(client, &f, subscription.options, subscription.identifier)
                    .expect("generated share names are valid");
                let previous = self
                    .subscriptions
                    .insert((*client, filter.clone()), *subscription);
                assert_eq!(outcome.existed, previous.is_some());
            }
            Op::Unsubscribe { client, filter } => {
                let f = TopicFilter::new(filter).expect("generated valid");
                let removed = index.unsubscribe(client, &f);
                assert_eq!(
                    removed,
                    self.subscriptions
                        .remove(&(*client, filter.clone()))
                        .is_some()
                );
            }
            Op::RemoveClient(client) => {
                let before = self.subscriptions.len();
                self.subscriptions.retain(|(c, _), _| c != client);
                self.offline.remove(client);
                assert_eq!(
                    index.remove_client(client),
                    before - self.subscriptions.len()
                );
            }
            Op::SetOnline(client, online) => {
                index.set_online(client, *online);
                if *online {
                    self.offline.remove(client);
                } else {
                    self.offline.insert(*client, ());
                }
            }
        }
    }

    /// The merged ordinary routes for `topic`, sorted by client.
    fn direct_routes(&self, topic: &str, publisher: Option<u32>) -> Vec<Route<u32>> {
        let mut routes: BTreeMap<u32, Route<u32>> = BTreeMap::new();
        for ((client, filter), sub) in &self.subscriptions {
            if filter.starts_with("$share/")
                || !filter_matches(filter, topic)
                || (sub.options.no_local && publisher == Some(*client))
            {
                continue;
            }
            let route = routes.entry(*client).or_insert(Route {
                client: *client,
                qos: QoS::AtMostOnce,
                retain_as_published: false,
                subscription_ids: Vec::new(),
                share: None,
            });
            route.qos = route.qos.max(sub.options.qos);
            route.retain_as_published |= sub.options.retain_as_published;
            route.subscription_ids.extend(sub.identifier);
        }
        routes
            .into_values()
            .map(|mut route| {
                route.subscription_ids.sort();
                route.subscription_ids.dedup();
                route
            })
            .collect()
    }

    /// Shared subscriptions matching `topic`: for each, the members eligible to receive it.
    fn shared_candidates(
        &self,
        topic: &str,
        publisher: Option<u32>,
    ) -> BTreeMap<String, Vec<(u32, Subscription)>> {
        let mut groups: BTreeMap<String, Vec<(u32, Subscription)>> = BTreeMap::new();
        for ((client, filter), sub) in &self.subscriptions {
            let Some(rest) = filter.strip_prefix("$share/") else {
                continue;
            };
            let Some((_, inner)) = rest.split_once('/') else {
                continue;
            };
            if !filter_matches(inner, topic) {
                continue;
            }
            let members = groups.entry(filter.clone()).or_default();
            if !(sub.options.no_local && publisher == Some(*client)) {
                members.push((*client, *sub));
            }
        }
        groups.retain(|_, members| !members.is_empty());
        groups
    }

    fn check(&self, index: &Snapshot<u32>, topic: &str, publisher: Option<u32>) {
        let t = TopicName::new(topic).expect("generated valid");
        let routes = index.matches(&t, publisher.as_ref());
        let (mut direct, shared): (Vec<_>, Vec<_>) =
            routes.into_iter().partition(|r| r.share.is_none());
        direct.sort_by_key(|r| r.client);
        assert_eq!(
            direct,
            self.direct_routes(topic, publisher),
            "topic {topic:?}"
        );

        let candidates = self.shared_candidates(topic, publisher);
        let mut seen: BTreeMap<String, u32> = BTreeMap::new();
        for route in &shared {
            let key = route
                .share
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let members = candidates
                .get(&key)
                .unwrap_or_else(|| panic!("unexpected share {key}"));
            let (_, sub) = members
                .iter()
                .find(|(c, _)| *c == route.client)
                .unwrap_or_else(|| panic!("{} is not an eligible member of {key}", route.client));
            let any_online = members.iter().any(|(c, _)| !self.offline.contains_key(c));
            assert!(
                !any_online || !self.offline.contains_key(&route.client),
                "offline member chosen while another is online"
            );
            assert_eq!(route.qos, sub.options.qos);
            assert_eq!(
                route.subscription_ids,
                sub.identifier.into_iter().collect::<Vec<_>>()
            );
            assert!(
                seen.insert(key, route.client).is_none(),
                "one member per group"
            );
        }
        assert_eq!(
            seen.len(),
            candidates.len(),
            "every matching group delivers"
        );
    }

    fn check_listing(&self, index: &SubscriptionIndex<u32>) {
        assert_eq!(index.len(), self.subscriptions.len());
        for client in 0..CLIENTS {
            let expected: Vec<(String, Subscription)> = self
                .subscriptions
                .iter()
                .filter(|((c, _), _)| *c == client)
                .map(|((_, f), s)| (f.clone(), *s))
                .collect();
            let mut listed: Vec<(String, Subscription)> = index
                .subscriptions_of(&client)
                .into_iter()
                .map(|(f, s)| (f.as_str().to_owned(), s))
                .collect();
            listed.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(listed, expected);
            assert_eq!(
                index.is_online(&client),
                !self.offline.contains_key(&client)
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random subscribe/unsubscribe/remove/presence sequences, then random publishes: the
    /// index agrees with the naive model on merged ordinary routes (QoS, retain as
    /// published, identifiers, no local), on one eligible member per matching shared group,
    /// and on listings. A snapshot taken halfway still answers as the model did then, and
    /// `SharedIndex` answers like the plain index.
    #[test]
    fn matches_agree_with_naive_matcher(
        ops in prop::collection::vec(op(), 0..40),
        split in any::<prop::sample::Index>(),
        publishes in prop::collection::vec((topic_text(), prop::option::of(0..CLIENTS)), 1..10),
    ) {
        let mut index = SubscriptionIndex::<u32>::new();
        let shared = SharedIndex::<u32>::new();
        let mut model = Model::default();
        let split = split.index(ops.len() + 1);
        let mut halfway = None;
        for (i, op) in ops.iter().enumerate() {
            if i == split {
                halfway = Some((index.snapshot(), model.clone()));
            }
            model.apply(&mut index, op);
            shared.update(|shared_index| Model::default().apply_unchecked(shared_index, op));
        }
        model.check_listing(&index);
        prop_assert_eq!(shared.len(), index.len());
        for (topic, publisher) in &publishes {
            model.check(&index.snapshot(), topic, *publisher);
            model.check(&shared.snapshot(), topic, *publisher);
            if let Some((snapshot, old)) = &halfway {
                let t = TopicName::new(topic).expect("valid");
                let mut direct: Vec<_> = snapshot
                    .matches(&t, publisher.as_ref())
                    .into_iter()
                    .filter(|r| r.share.is_none())
                    .collect();
                direct.sort_by_key(|r| r.client);
                prop_assert_eq!(direct, old.direct_routes(topic, *publisher));
            }
        }
    }

    /// k messages to a group of n members, some offline: each online member receives
    /// ⌊k/m⌋ or ⌈k/m⌉ of them (m online members), offline members none; with nobody
    /// online, the same holds over all members. Whatever turns were taken before.
    #[test]
    fn shared_round_robin_is_fair(
        online in prop::collection::vec(any::<bool>(), 1..7),
        warmup in 0usize..10,
        k in 0usize..60,
    ) {
        let mut index = SubscriptionIndex::<u32>::new();
        let f = TopicFilter::new("$share/g/t/+").expect("valid");
        let n = online.len() as u32;
        for client in 0..n {
            index.subscribe(&client, &f, SubscriptionOptions::qos(QoS::AtLeastOnce), None).expect("ok");
        }
        // A direct subscriber and another group on the same topic do not disturb the turns.
        index.subscribe(&99, &TopicFilter::new("t/#").expect("valid"), SubscriptionOptions::qos(QoS::AtMostOnce), None).expect("ok");
        index.subscribe(&98, &TopicFilter::new("$share/h/t/+").expect("valid"), SubscriptionOptions::qos(QoS::AtMostOnce), None).expect("ok");
        let topic = TopicName::new("t/x").expect("valid");
        for _ in 0..warmup {
            index.matches(&topic, None);
        }
        for (client, is_online) in online.iter().enumerate() {
            index.set_online(&(client as u32), *is_online);
        }
        let mut counts = vec![0usize; online.len()];
        for _ in 0..k {
            let routes = index.matches(&topic, None);
            let in_group: Vec<_> = routes.iter().filter(|r| r.share.as_ref().is_some_and(|s| s.group() == "g")).collect();
            prop_assert_eq!(in_group.len(), 1);
            counts[in_group[0].client as usize] += 1;
        }
        let m = online.iter().filter(|o| **o).count();
        let served: Vec<usize> = if m == 0 { (0..online.len()).collect() } else { (0..online.len()).filter(|i| online[*i]).collect() };
        let per = served.len();
        for (client, count) in counts.iter().enumerate() {
            if served.contains(&client) {
                prop_assert!(*count == k / per || *count == k.div_ceil(per), "client {} got {} of {}", client, count, k);
            } else {
                prop_assert_eq!(*count, 0);
            }
        }
    }
}

impl Model {
    /// Applies `op` to an index without checking (the checked run is on the plain index).
    fn apply_unchecked(&mut self, index: &mut SubscriptionIndex<u32>, op: &Op) {
        match op {
            Op::Subscribe {
                client,
                filter,
                subscription,
            } => {
                let f = TopicFilter::new(filter).expect("generated valid");
                let _ = index.subscribe(client, &f, subscription.options, subscription.identifier);
            }
            Op::Unsubscribe { client, filter } => {
                let f = TopicFilter::new(filter).expect("generated valid");
                index.unsubscribe(client, &f);
            }
            Op::RemoveClient(client) => {
                index.remove_client(client);
            }
            Op::SetOnline(client, online) => index.set_online(client, *online),
        }
    }
}
