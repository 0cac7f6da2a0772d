//! Topic-filter relations the ACL needs: a filter matching a topic name, one filter covering
//! another, and two filters overlapping.
//!
//! The rules are the index's (see [`crate::broker::index`]): levels split on `/`, empty levels
//! count, `+` is one level, `#` is its parent and everything below, and a wildcard in the
//! first level never matches a topic that starts with `$` [MQTT-4.7.2-1]. None of these
//! allocate; each walks the two strings level by level once.

/// Whether the filter `filter` matches the topic name `topic`.
pub(crate) fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && !filter.starts_with('$') {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic name `inner` matches is also matched by `outer`.
pub(crate) fn covers(outer: &str, inner: &str) -> bool {
    if can_match_dollar(inner) && !outer.starts_with('$') {
        return false;
    }
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            // `inner` reaches arbitrarily deep here (and back up to the parent); only `#`
            // follows it there.
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(ol), Some(il)) if ol == il && il != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic name matches both `a` and `b`.
pub(crate) fn overlaps(a: &str, b: &str) -> bool {
    let (a_dollar, b_dollar) = (can_match_dollar(a), can_match_dollar(b));
    if a_dollar != b_dollar {
        // One matches only `$` topics, the other none.
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some(xl), Some(yl)) if xl == "+" || yl == "+" || xl == yl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `filter` can match a topic starting with `$`: only when its first level is a
/// literal starting with `$`.
fn can_match_dollar(filter: &str) -> bool {
    filter.starts_with('$')
}

/// Whether `filter` is a well-formed topic filter: non-empty, `+` and `#` fill whole levels,
/// `#` is last [MQTT-4.7.1-1, MQTT-4.7.1-2].
pub(crate) fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let valid = match level {
            "#" => levels.peek().is_none(),
            "+" => true,
            other => !other.contains(['+', '#']),
        };
        if !valid {
            return false;
        }
    }
    true
}

/// The filter a subscription matches with: `$share/<group>/<filter>` without its share
/// prefix [MQTT-4.8.2], anything else as it is.
pub(crate) fn strip_share(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_group, inner)| inner)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn matches_follows_the_spec_examples() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(!matches("#", "$SYS/broker"));
        assert!(!matches("+/broker", "$SYS/broker"));
        assert!(matches("$SYS/#", "$SYS/broker"));
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
    }

    #[test]
    fn covers_examples() {
        assert!(covers("#", "a/b"));
        assert!(covers("#", "#"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/#"));
        assert!(covers("a/#", "a/+/c"));
        assert!(covers("a/+", "a/b"));
        assert!(covers("a/+", "a/+"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/+/#", "a/#"));
        assert!(!covers("a/b", "a"));
        assert!(!covers("#", "$SYS/x"));
        assert!(covers("$SYS/#", "$SYS/x"));
        assert!(!covers("a", "a/b"));
    }

    #[test]
    fn overlaps_examples() {
        assert!(overlaps("#", "a/b"));
        assert!(overlaps("a/+", "+/b"));
        assert!(overlaps("a/#", "a"));
        assert!(overlaps("a", "a/#"));
        assert!(!overlaps("a/+", "b/+"));
        assert!(!overlaps("a/b", "a/b/c"));
        assert!(!overlaps("#", "$SYS/x"));
        assert!(overlaps("$SYS/#", "$SYS/+"));
        assert!(!overlaps("+/+", "a"));
    }

    #[test]
    fn strip_share_removes_only_a_complete_share_prefix() {
        assert_eq!(strip_share("$share/g/a/b"), "a/b");
        assert_eq!(strip_share("$share/g/#"), "#");
        assert_eq!(strip_share("$share/g"), "$share/g");
        assert_eq!(strip_share("a/b"), "a/b");
    }

    #[test]
    fn filter_validity() {
        for ok in ["#", "+", "a/+/b", "a/#", "/", "a//b", "$SYS/#", "+/+/#"] {
            assert!(is_valid_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+/b", "a/b+", "##"] {
            assert!(!is_valid_filter(bad), "{bad}");
        }
    }

    /// Small alphabets so that filters and topics collide often.
    fn level() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "", "$x"])
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..4).prop_map(|levels| levels.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(vec!["a", "b", "", "+", "$x"]), 0..4),
            any::<bool>(),
        )
            .prop_filter_map("empty filter", |(levels, hash)| {
                let mut levels = levels;
                if hash {
                    levels.push("#");
                }
                let f = levels.join("/");
                is_valid_filter(&f).then_some(f)
            })
    }

    /// Every topic of up to five levels over the alphabet, a superset of what the
    /// strategies above can match at depth four.
    fn all_topics() -> Vec<String> {
        let alphabet = ["a", "b", "", "$x", "c"];
        let mut out: Vec<String> = alphabet.iter().map(|s| s.to_string()).collect();
        let mut frontier = out.clone();
        for _ in 1..5 {
            let mut next = Vec::new();
            for t in &frontier {
                for l in alphabet {
                    next.push(format!("{t}/{l}"));
                }
            }
            out.extend(next.iter().cloned());
            frontier = next;
        }
        out
    }

    proptest! {
        #[test]
        fn covers_agrees_with_enumeration(outer in filter(), inner in filter()) {
            let topics = all_topics();
            let naive = topics
                .iter()
                .filter(|t| matches(&inner, t))
                .all(|t| matches(&outer, t));
            // `covers` may only say yes when enumeration agrees; enumeration over a finite
            // alphabet may say yes where an unseen level would break it, so compare one way
            // plus the exact answer for wildcard-free filters.
            if covers(&outer, &inner) {
                prop_assert!(naive, "covers({outer:?}, {inner:?}) but a topic escapes");
            }
            if !inner.contains(['+', '#']) {
                prop_assert_eq!(covers(&outer, &inner), matches(&outer, &inner));
            }
        }

        #[test]
        fn overlaps_agrees_with_enumeration(a in filter(), b in filter()) {
            let topics = all_topics();
            let naive = topics.iter().any(|t| matches(&a, t) && matches(&b, t));
            prop_assert_eq!(overlaps(&a, &b), naive, "overlaps({:?}, {:?})", a, b);
        }

        #[test]
        fn a_topic_is_its_own_filter(t in topic()) {
            prop_assert!(matches(&t, &t));
        }
    }
}
