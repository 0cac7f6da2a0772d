//! A deliberately plain topic matcher, written from the spec's words rather than from the
//! trie, that the property tests hold the index and the retained store to.

/// Whether `filter` matches `topic`: level by level, `+` is any one level, `#` is the rest
/// (including nothing, so `a/#` matches `a`), and a topic starting with `$` is not matched
/// by a filter starting with a wildcard [MQTT-4.7.2-1].
pub(crate) fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let filter: Vec<&str> = filter.split('/').collect();
    let topic: Vec<&str> = topic.split('/').collect();
    let mut i = 0;
    loop {
        match (filter.get(i), topic.get(i)) {
            (Some(&"#"), _) => return true,
            (Some(&"+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
        i += 1;
    }
}

#[test]
fn naive_matcher_knows_the_spec_examples() {
    // The examples of §4.7.1.
    assert!(filter_matches(
        "sport/tennis/player1/#",
        "sport/tennis/player1"
    ));
    assert!(filter_matches(
        "sport/tennis/player1/#",
        "sport/tennis/player1/ranking"
    ));
    assert!(filter_matches("sport/#", "sport"));
    assert!(filter_matches("sport/tennis/+", "sport/tennis/player1"));
    assert!(!filter_matches(
        "sport/tennis/+",
        "sport/tennis/player1/ranking"
    ));
    assert!(!filter_matches("sport/+", "sport"));
    assert!(filter_matches("sport/+", "sport/"));
    assert!(filter_matches("+/+", "/finance"));
    assert!(filter_matches("/+", "/finance"));
    assert!(!filter_matches("+", "/finance"));
    assert!(!filter_matches("#", "$SYS/x"));
    assert!(filter_matches("$SYS/#", "$SYS/x"));
}
