//! Unit tests for the subscription index, one per rule.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use crate::protocol::{QoS, RetainHandling, SubscriptionOptions, TopicFilter, TopicName};

use super::*;

fn topic(s: &str) -> TopicName {
    TopicName::new(s).expect("valid topic")
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s).expect("valid filter")
}

fn id(n: u32) -> Option<NonZeroU32> {
    NonZeroU32::new(n)
}

fn qos(q: u8) -> SubscriptionOptions {
    SubscriptionOptions::qos(QoS::from_bits(q).expect("qos"))
}

fn no_local(q: u8) -> SubscriptionOptions {
    SubscriptionOptions {
        no_local: true,
        ..qos(q)
    }
}

fn index_with(subs: &[(u32, &str)]) -> SubscriptionIndex<u32> {
    let mut index = SubscriptionIndex::new();
    for (client, f) in subs {
        index
            .subscribe(client, &filter(f), qos(0), None)
            .expect("subscribe");
    }
    index
}

/// The clients that receive `t` through ordinary subscriptions.
fn receivers(index: &SubscriptionIndex<u32>, t: &str) -> Vec<u32> {
    clients(
        index
            .matches(&topic(t), None)
            .into_iter()
            .filter(|r| r.share.is_none())
            .collect(),
    )
}

/// The receiving clients, sorted (routes come in no particular order).
fn clients(routes: Vec<Route<u32>>) -> Vec<u32> {
    let mut clients: Vec<u32> = routes.into_iter().map(|r| r.client).collect();
    clients.sort_unstable();
    clients
}

fn matches_one(f: &str, t: &str) -> bool {
    receivers(&index_with(&[(1, f)]), t) == [1]
}

#[test]
fn multi_level_wildcard_matches_parent_and_descendants() {
    assert!(matches_one("a/#", "a"));
    assert!(matches_one("a/#", "a/b"));
    assert!(matches_one("a/#", "a/b/c"));
    assert!(matches_one("a/#", "a/"));
    assert!(!matches_one("a/#", "b"));
    assert!(!matches_one("a/#", "ab"));
    assert!(matches_one("#", "a/b/c"));
    assert!(matches_one("#", "/"));
}

#[test]
fn single_level_wildcard_matches_exactly_one_level_including_empty() {
    assert!(matches_one("a/+", "a/b"));
    assert!(matches_one("a/+", "a/"));
    assert!(!matches_one("a/+", "a"));
    assert!(!matches_one("a/+", "a/b/c"));
    assert!(matches_one("+/+", "/"));
    assert!(matches_one("+", "a"));
    assert!(!matches_one("+", "/a"));
    assert!(matches_one("a/+/c", "a//c"));
}

#[test]
fn empty_levels_are_real_levels() {
    assert!(matches_one("/a", "/a"));
    assert!(!matches_one("/a", "a"));
    assert!(matches_one("+/a", "/a"));
    assert!(matches_one("a/", "a/"));
    assert!(!matches_one("a/", "a"));
    assert!(!matches_one("a", "a/"));
    assert!(matches_one("//", "//"));
    assert!(matches_one("/#", "/"));
}

#[test]
fn leading_wildcards_do_not_match_dollar_topics() {
    // [MQTT-4.7.2-1]
    assert!(!matches_one("#", "$SYS/x"));
    assert!(!matches_one("+/x", "$SYS/x"));
    assert!(!matches_one("+", "$SYS"));
    assert!(matches_one("$SYS/#", "$SYS/x"));
    assert!(matches_one("$SYS/#", "$SYS"));
    assert!(matches_one("$SYS/+", "$SYS/x"));
    assert!(matches_one("$SYS/x", "$SYS/x"));
    // Only the first level is special.
    assert!(matches_one("a/+", "a/$x"));
    assert!(matches_one("a/#", "a/$x/y"));
    assert!(matches_one("#", "a$"));
}

#[test]
fn overlapping_subscriptions_deliver_once_at_highest_qos_with_every_identifier() {
    let mut index = SubscriptionIndex::<u32>::new();
    let rap = SubscriptionOptions {
        retain_as_published: true,
        ..qos(0)
    };
    index
        .subscribe(&1, &filter("a/+"), qos(1), id(7))
        .expect("ok");
    index
        .subscribe(&1, &filter("a/#"), qos(2), id(3))
        .expect("ok");
    index.subscribe(&1, &filter("a/b"), rap, None).expect("ok");
    index
        .subscribe(&1, &filter("#"), qos(0), id(7))
        .expect("ok");
    index
        .subscribe(&2, &filter("a/b"), qos(0), id(9))
        .expect("ok");

    let mut routes = index.matches(&topic("a/b"), None);
    routes.sort_by_key(|r| r.client);
    assert_eq!(
        routes,
        vec![
            Route {
                client: 1,
                qos: QoS::ExactlyOnce,
                retain_as_published: true,
                subscription_ids: vec![
                    NonZeroU32::new(3).expect("3"),
                    NonZeroU32::new(7).expect("7")
                ],
                share: None,
            },
            Route {
                client: 2,
                qos: QoS::AtMostOnce,
                retain_as_published: false,
                subscription_ids: vec![NonZeroU32::new(9).expect("9")],
                share: None,
            },
        ]
    );
}

#[test]
fn no_local_skips_only_the_publishers_own_subscription() {
    // [MQTT-3.8.3-3]
    let mut index = SubscriptionIndex::<u32>::new();
    index
        .subscribe(&1, &filter("a/b"), no_local(2), id(1))
        .expect("ok");
    index
        .subscribe(&2, &filter("a/b"), no_local(1), None)
        .expect("ok");
    let receivers =
        |publisher: Option<u32>| clients(index.matches(&topic("a/b"), publisher.as_ref()));
    assert_eq!(receivers(Some(1)), [2]);
    assert_eq!(receivers(Some(2)), [1]);
    assert_eq!(receivers(Some(3)), [1, 2]);
    assert_eq!(receivers(None), [1, 2]);

    // Another matching subscription without no local still delivers, on its own terms.
    index
        .subscribe(&1, &filter("a/+"), qos(0), id(5))
        .expect("ok");
    let routes = index.matches(&topic("a/b"), Some(&1));
    let own = routes.iter().find(|r| r.client == 1).expect("still routed");
    assert_eq!(own.qos, QoS::AtMostOnce);
    assert_eq!(own.subscription_ids, [NonZeroU32::new(5).expect("5")]);
}

#[test]
fn resubscribing_replaces_and_reports_existence() {
    let mut index = SubscriptionIndex::<u32>::new();
    let f = filter("a/+");
    let first = index.subscribe(&1, &f, qos(1), id(4)).expect("ok");
    assert!(!first.existed);
    let same = index.subscribe(&1, &f, qos(1), id(4)).expect("ok");
    assert!(same.existed);
    let replaced = index.subscribe(&1, &f, qos(2), None).expect("ok");
    assert!(replaced.existed);
    assert_eq!(index.len(), 1);
    let routes = index.matches(&topic("a/x"), None);
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].qos, QoS::ExactlyOnce);
    // The replacing SUBSCRIBE had no identifier, so the old one is gone [MQTT-3.8.4-3].
    assert!(routes[0].subscription_ids.is_empty());
    // Another client's subscription to the same filter is new for that client.
    assert!(!index.subscribe(&2, &f, qos(0), None).expect("ok").existed);
}

#[test]
fn unsubscribe_removes_only_the_exact_filter() {
    let mut index = index_with(&[(1, "a/+"), (1, "a/#"), (2, "a/+")]);
    assert_eq!(index.len(), 3);
    assert!(!index.unsubscribe(&1, &filter("a/b")));
    assert!(!index.unsubscribe(&3, &filter("a/+")));
    assert!(index.unsubscribe(&1, &filter("a/+")));
    assert!(!index.unsubscribe(&1, &filter("a/+")));
    assert_eq!(index.len(), 2);
    assert_eq!(receivers(&index, "a/b"), [1, 2]);
    assert!(index.unsubscribe(&1, &filter("a/#")));
    assert_eq!(receivers(&index, "a/b"), [2]);
    assert_eq!(receivers(&index, "a"), Vec::<u32>::new());
}

#[test]
fn remove_client_drops_all_its_subscriptions() {
    let mut index = index_with(&[(1, "a/+"), (1, "#"), (1, "$share/g/a/b"), (2, "a/b")]);
    assert_eq!(index.remove_client(&1), 3);
    assert_eq!(index.remove_client(&1), 0);
    assert_eq!(index.len(), 1);
    assert_eq!(index.subscriptions_of(&1), Vec::new());
    let routes = index.matches(&topic("a/b"), None);
    assert_eq!(routes.iter().map(|r| r.client).collect::<Vec<_>>(), [2]);
}

#[test]
fn subscriptions_of_lists_filters_as_subscribed() {
    let mut index = SubscriptionIndex::<ClientId>::new();
    let c = ClientId::new("sensor-1");
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::SendIfNew,
    };
    index
        .subscribe(&c, &filter("b/#"), options, id(2))
        .expect("ok");
    index
        .subscribe(&c, &filter("$share/g/a"), qos(0), None)
        .expect("ok");
    let listed = index.subscriptions_of(&c);
    assert_eq!(
        listed,
        vec![
            (
                filter("$share/g/a"),
                Subscription {
                    options: qos(0),
                    identifier: None
                }
            ),
            (
                filter("b/#"),
                Subscription {
                    options,
                    identifier: id(2)
                }
            ),
        ]
    );
    assert_eq!(
        index.subscription(&c, &filter("b/#")).map(|s| s.identifier),
        Some(id(2))
    );
    assert_eq!(index.subscription(&c, &filter("b/+")), None);
}

#[test]
fn emptied_trie_is_pruned_to_an_empty_root() {
    let subs = [
        (1, "a/b/c"),
        (2, "a/+/c"),
        (1, "a/#"),
        (3, "#"),
        (1, "$share/g/a/b"),
        (2, "x"),
    ];
    let mut index = index_with(&subs);
    for (client, f) in subs {
        assert!(index.unsubscribe(&client, &filter(f)), "{f}");
    }
    assert!(index.root.is_empty());
    assert_eq!(index.client_count(), 0);
    assert!(index.is_empty());
}

#[test]
fn pruning_keeps_nodes_still_in_use() {
    let mut index = index_with(&[(1, "a/b/c/d"), (2, "a/b")]);
    assert!(index.unsubscribe(&1, &filter("a/b/c/d")));
    assert_eq!(receivers(&index, "a/b"), [2]);
    let mut index = index_with(&[(1, "a/b/c/d"), (2, "a/b/x")]);
    assert!(index.unsubscribe(&1, &filter("a/b/c/d")));
    assert_eq!(receivers(&index, "a/b/x"), [2]);
    let mut index = index_with(&[(1, "a/b"), (2, "a/b/#")]);
    assert!(index.unsubscribe(&2, &filter("a/b/#")));
    assert_eq!(receivers(&index, "a/b"), [1]);
}

#[test]
fn malformed_shared_filters_are_refused_without_side_effects() {
    let mut index = SubscriptionIndex::<u32>::new();
    for bad in ["$share//a", "$share/+/a", "$share/g", "$share/#"] {
        assert!(
            index.subscribe(&1, &filter(bad), qos(0), None).is_err(),
            "{bad}"
        );
    }
    assert!(index.is_empty());
    assert_eq!(index.client_count(), 0);
    assert!(!index.unsubscribe(&1, &filter("$share/g")));
}

fn share(s: &str) -> SharedFilter {
    parse_shared(&filter(s)).expect("valid").expect("shared")
}

#[test]
fn shared_group_delivers_to_one_member_per_message_round_robin() {
    let index = index_with(&[
        (1, "$share/g/a/+"),
        (2, "$share/g/a/+"),
        (3, "$share/g/a/+"),
    ]);
    let mut got = Vec::new();
    for _ in 0..6 {
        let routes = index.matches(&topic("a/b"), None);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].share, Some(share("$share/g/a/+")));
        got.push(routes[0].client);
    }
    assert_eq!(got, [1, 2, 3, 1, 2, 3]);
}

#[test]
fn each_group_and_each_shared_filter_delivers_independently() {
    let index = index_with(&[
        (1, "$share/g/a/+"),
        (2, "$share/g/a/+"),
        (3, "$share/h/a/+"),
        (4, "$share/g/a/#"),
        (1, "a/b"),
    ]);
    let routes = index.matches(&topic("a/b"), None);
    // Client 1 direct; one of g/a/+; h's only member; g/a/#'s only member.
    let direct: Vec<_> = routes
        .iter()
        .filter(|r| r.share.is_none())
        .map(|r| r.client)
        .collect();
    assert_eq!(direct, [1]);
    let mut shared: Vec<_> = routes
        .iter()
        .filter_map(|r| r.share.as_ref().map(|s| (s.to_string(), r.client)))
        .collect();
    shared.sort();
    assert_eq!(
        shared,
        [
            ("$share/g/a/#".to_owned(), 4),
            ("$share/g/a/+".to_owned(), 1),
            ("$share/h/a/+".to_owned(), 3),
        ]
    );
    // Client 1's shared delivery is a separate route, not merged with its direct one.
    assert_eq!(routes.iter().filter(|r| r.client == 1).count(), 2);
}

#[test]
fn shared_selection_skips_offline_members_and_falls_back_when_none_online() {
    let mut index = index_with(&[(1, "$share/g/t"), (2, "$share/g/t"), (3, "$share/g/t")]);
    index.set_online(&2, false);
    assert!(!index.is_online(&2));
    let pick = |index: &SubscriptionIndex<u32>| index.matches(&topic("t"), None)[0].client;
    let got: Vec<u32> = (0..4).map(|_| pick(&index)).collect();
    assert_eq!(got, [1, 3, 1, 3]);

    index.set_online(&1, false);
    index.set_online(&3, false);
    // Nobody online: an offline member (a kept session) gets it queued, still in turn.
    let got: Vec<u32> = (0..3).map(|_| pick(&index)).collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 2, 3]);

    index.set_online(&2, true);
    assert!((0..3).all(|_| pick(&index) == 2));
}

#[test]
fn offline_mark_survives_until_subscriptions_are_restored() {
    let mut index = SubscriptionIndex::<u32>::new();
    // A session restored at start-up: marked offline before its subscriptions come back.
    index.set_online(&1, false);
    index
        .subscribe(&1, &filter("$share/g/t"), qos(1), None)
        .expect("ok");
    index
        .subscribe(&2, &filter("$share/g/t"), qos(1), None)
        .expect("ok");
    assert!((0..3).all(|_| index.matches(&topic("t"), None)[0].client == 2));
    // Marking online a client without subscriptions keeps no entry.
    index.set_online(&9, true);
    index.set_online(&9, false);
    index.set_online(&9, true);
    assert_eq!(index.client_count(), 2);
    assert_eq!(index.remove_client(&1), 1);
    assert!(index.is_online(&1));
}

#[test]
fn pick_shared_finds_another_member_for_a_stranded_message() {
    let index = index_with(&[(1, "$share/g/a/#"), (2, "$share/g/a/#")]);
    let s = share("$share/g/a/#");
    for _ in 0..4 {
        let route = index.pick_shared(&s, Some(&1)).expect("member 2");
        assert_eq!(route.client, 2);
        assert_eq!(route.share.as_ref(), Some(&s));
    }
    let lone = index_with(&[(1, "$share/g/a")]);
    assert_eq!(lone.pick_shared(&share("$share/g/a"), Some(&1)), None);
    assert_eq!(lone.pick_shared(&share("$share/h/a"), None), None);
    assert_eq!(lone.pick_shared(&share("$share/g/b"), None), None);
}

#[test]
fn shared_subscriptions_follow_the_dollar_rule_on_their_inner_filter() {
    let index = index_with(&[(1, "$share/g/#"), (2, "$share/g/$SYS/#")]);
    let routes = index.matches(&topic("$SYS/uptime"), None);
    assert_eq!(routes.iter().map(|r| r.client).collect::<Vec<_>>(), [2]);
}

#[test]
fn shared_no_local_excludes_the_publisher_from_the_turn() {
    let mut index = SubscriptionIndex::<u32>::new();
    index
        .subscribe(&1, &filter("$share/g/t"), no_local(0), None)
        .expect("ok");
    index
        .subscribe(&2, &filter("$share/g/t"), no_local(0), None)
        .expect("ok");
    assert!((0..4).all(|_| index.matches(&topic("t"), Some(&1))[0].client == 2));
    let lone = {
        let mut lone = SubscriptionIndex::<u32>::new();
        lone.subscribe(&1, &filter("$share/g/t"), no_local(0), None)
            .expect("ok");
        lone
    };
    assert!(lone.matches(&topic("t"), Some(&1)).is_empty());
}

#[test]
fn snapshots_do_not_see_later_writes() {
    let mut index = index_with(&[(1, "a/#")]);
    let before = index.snapshot();
    index
        .subscribe(&2, &filter("a/b"), qos(0), None)
        .expect("ok");
    index.unsubscribe(&1, &filter("a/#"));
    assert_eq!(clients(before.matches(&topic("a/b"), None)), [1]);
    assert_eq!(before.len(), 1);
    assert_eq!(clients(index.matches(&topic("a/b"), None)), [2]);
}

#[test]
fn shared_index_publishes_each_update_once() {
    let shared = SharedIndex::<u32>::new();
    shared
        .subscribe(&1, &filter("a/+"), qos(1), None)
        .expect("ok");
    let old = shared.snapshot();
    shared.update(|index| {
        index
            .subscribe(&2, &filter("a/+"), qos(1), None)
            .expect("ok");
        index
            .subscribe(&3, &filter("a/#"), qos(1), None)
            .expect("ok");
    });
    assert_eq!(old.len(), 1);
    assert_eq!(shared.len(), 3);
    assert_eq!(clients(shared.matches(&topic("a/b"), None)), [1, 2, 3]);
    // A no-op update publishes nothing new.
    let current = shared.snapshot();
    assert!(!shared.unsubscribe(&9, &filter("a/+")));
    assert!(Arc::ptr_eq(&current, &shared.snapshot()));
    assert_eq!(shared.remove_client(&2), 1);
    assert_eq!(shared.subscriptions_of(&1).len(), 1);
}

#[test]
fn writes_copy_only_the_path_they_change() {
    let mut index = index_with(&[(1, "a/b/c"), (2, "x/y/z")]);
    let before = index.snapshot();
    index
        .subscribe(&3, &filter("a/b/d"), qos(0), None)
        .expect("ok");
    let old_x = before.root.literal_child("x").expect("x");
    let new_x = index.root.literal_child("x").expect("x");
    assert!(Arc::ptr_eq(old_x, new_x), "untouched subtree is shared");
    let old_a = before.root.literal_child("a").expect("a");
    let new_a = index.root.literal_child("a").expect("a");
    assert!(!Arc::ptr_eq(old_a, new_a), "the edited path is copied");
}

#[test]
fn shared_index_readers_run_while_writers_churn() {
    let shared = Arc::new(SharedIndex::<u32>::new());
    shared
        .subscribe(&0, &filter("t/#"), qos(0), None)
        .expect("ok");
    let writer = {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            for i in 1..2000u32 {
                let f = filter(&format!("t/{}", i % 50));
                shared.subscribe(&i, &f, qos(1), None).expect("ok");
                shared.unsubscribe(&i, &f);
            }
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                for i in 0..2000u32 {
                    let routes = shared.matches(&topic(&format!("t/{}", i % 50)), None);
                    // The permanent subscriber is always there; at most one churner is.
                    assert!(routes.iter().any(|r| r.client == 0));
                    assert!(routes.len() <= 2);
                }
            })
        })
        .collect();
    writer.join().expect("writer");
    for reader in readers {
        reader.join().expect("reader");
    }
    assert_eq!(shared.len(), 1);
}

#[test]
fn shared_round_robin_is_shared_across_threads() {
    let index = Arc::new(index_with(&[
        (1, "$share/g/t"),
        (2, "$share/g/t"),
        (3, "$share/g/t"),
    ]));
    let counts: Vec<BTreeMap<u32, usize>> = (0..4)
        .map(|_| {
            let index = Arc::clone(&index);
            std::thread::spawn(move || {
                let mut counts = BTreeMap::new();
                for _ in 0..300 {
                    for route in index.matches(&topic("t"), None) {
                        *counts.entry(route.client).or_insert(0) += 1;
                    }
                }
                counts
            })
        })
        .map(|handle| handle.join().expect("thread"))
        .collect();
    let mut total = BTreeMap::new();
    for c in counts {
        for (k, v) in c {
            *total.entry(k).or_insert(0) += v;
        }
    }
    // 1200 picks, each advancing the shared turn exactly once.
    assert_eq!(
        total.into_iter().collect::<Vec<_>>(),
        [(1, 400), (2, 400), (3, 400)]
    );
}

#[test]
fn very_deep_filters_do_not_overflow_the_stack() {
    // 32 000 levels, in a thread with a small stack: matching, editing and dropping must not
    // recurse per level.
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let deep = "/".repeat(32_000);
            let f = filter(&deep);
            let mut index = SubscriptionIndex::<u32>::new();
            index.subscribe(&1, &f, qos(0), None).expect("ok");
            index
                .subscribe(&2, &filter(&format!("{deep}#")), qos(0), None)
                .expect("ok");
            index
                .subscribe(&3, &filter(&format!("{deep}+")), qos(0), None)
                .expect("ok");
            let routes = index.matches(&topic(&deep), None);
            // The last empty level is matched by `+` as well.
            assert_eq!(clients(routes), [1, 2, 3]);
            let routes = index.matches(&topic(&format!("{deep}x/y")), None);
            assert_eq!(routes.iter().map(|r| r.client).collect::<Vec<_>>(), [2]);
            let snapshot = index.snapshot();
            assert!(index.unsubscribe(&1, &f));
            drop(snapshot);
            drop(index);
        })
        .expect("spawn")
        .join()
        .expect("no overflow");
}
