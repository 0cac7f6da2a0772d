//! What a subscription is keyed by: the subscriber ([`ClientId`] or any [`ClientKey`]) and
//! its filter, either plain or shared (`$share/<group>/<filter>`).

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use crate::protocol::{MqttString, TopicFilter};

/// What the index needs of a subscriber key: cheap to clone (every [`super::Route`] carries
/// one), hashable and ordered (routes are merged per client by sorting, and shared-group
/// members are kept in key order so round robin is deterministic).
///
/// Blanket-implemented; the broker uses [`ClientId`], tests use small integers.
pub trait ClientKey: Clone + Eq + Hash + Ord + fmt::Debug {}

impl<T: Clone + Eq + Hash + Ord + fmt::Debug> ClientKey for T {}

/// A client identifier as the broker keys sessions and subscriptions.
///
/// `Arc<str>` rather than `String` or [`MqttString`]: a publish to n subscribers clones n keys
/// into routes, and a clone here is one reference-count increment with no allocation.
/// Equality, hashing and ordering are those of the string, so `&str` can look one up.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

impl ClientId {
    pub fn new(id: &str) -> ClientId {
        ClientId(Arc::from(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ClientId {
    fn from(id: &str) -> ClientId {
        ClientId::new(id)
    }
}

impl From<String> for ClientId {
    fn from(id: String) -> ClientId {
        ClientId(Arc::from(id))
    }
}

impl From<&MqttString> for ClientId {
    fn from(id: &MqttString) -> ClientId {
        ClientId::new(id.as_str())
    }
}

impl Borrow<str> for ClientId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a syntactically valid topic filter cannot be subscribed to. The broker answers these
/// with SUBACK reason 0x8F, Topic Filter Invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// `$share//a`: the share name must be at least one character [MQTT-4.8.2-1].
    #[error("shared subscription has an empty share name")]
    EmptyShareName,
    /// `$share/g+/a`, `$share/#`: the share name must not contain `+` or `#` [MQTT-4.8.2-2].
    #[error("share name contains a wildcard")]
    WildcardInShareName,
    /// `$share/g` or `$share/g/`: a topic filter must follow the share name [MQTT-4.8.2-1].
    #[error("shared subscription has no topic filter after the share name")]
    MissingSharedFilter,
}

/// A shared subscription `$share/<group>/<filter>`, parsed. Both parts are slices of the
/// original filter's buffer, so cloning one into a route copies no bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedFilter {
    group: MqttString,
    filter: TopicFilter,
}

impl SharedFilter {
    /// The share name.
    pub fn group(&self) -> &str {
        self.group.as_str()
    }

    /// The filter after the share name, matched against topics like any other filter
    /// (including the `$` rule: `$share/g/#` does not receive `$SYS/...`).
    pub fn filter(&self) -> &TopicFilter {
        &self.filter
    }
}

impl fmt::Display for SharedFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHARE_PREFIX}{}/{}", self.group, self.filter)
    }
}

const SHARE_PREFIX: &str = "$share/";

/// Splits a shared subscription into its group and filter.
///
/// `Ok(None)`: an ordinary filter (not starting with `$share/`; a bare `$share` is an ordinary
/// one-level filter). `Ok(Some(_))`: a well-formed shared subscription. `Err(_)`: it starts
/// with `$share/` but breaks [MQTT-4.8.2-1] or [MQTT-4.8.2-2].
pub fn parse_shared(filter: &TopicFilter) -> Result<Option<SharedFilter>, FilterError> {
    let text = filter.as_str();
    let Some(rest) = text.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    let (group, inner) = match rest.split_once('/') {
        Some((group, inner)) => (group, Some(inner)),
        None => (rest, None),
    };
    if group.is_empty() {
        return Err(FilterError::EmptyShareName);
    }
    if group.contains(['+', '#']) {
        return Err(FilterError::WildcardInShareName);
    }
    let Some(inner) = inner else {
        return Err(FilterError::MissingSharedFilter);
    };
    let bytes = filter.as_mqtt_string().as_bytes();
    let group_start = SHARE_PREFIX.len();
    let inner_start = group_start + group.len() + 1;
    // Sub-slices of a valid filter on level boundaries are valid strings, and the levels of
    // the inner filter are levels of the outer one, so only emptiness can fail here.
    let group = MqttString::from_bytes(bytes.slice(group_start..group_start + group.len()))
        .map_err(|_| FilterError::EmptyShareName)?;
    let inner = MqttString::from_bytes(bytes.slice(inner_start..inner_start + inner.len()))
        .ok()
        .and_then(|s| TopicFilter::from_string(s).ok())
        .ok_or(FilterError::MissingSharedFilter)?;
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<(String, String)>, FilterError> {
        let filter = TopicFilter::new(s).expect("valid filter");
        parse_shared(&filter)
            .map(|o| o.map(|s| (s.group().to_owned(), s.filter().as_str().to_owned())))
    }

    #[test]
    fn plain_filters_are_not_shared() {
        for plain in ["a/b", "#", "$share", "$SYS/#", "$sharex/g/a", "share/g/a"] {
            assert_eq!(parse(plain), Ok(None), "{plain}");
        }
    }

    #[test]
    fn shared_filters_split_into_group_and_filter() {
        let pair = |g: &str, f: &str| Ok(Some((g.to_owned(), f.to_owned())));
        assert_eq!(parse("$share/g/a/b"), pair("g", "a/b"));
        assert_eq!(parse("$share/g/#"), pair("g", "#"));
        assert_eq!(parse("$share/g//"), pair("g", "/"));
        assert_eq!(parse("$share/g/$share/h/x"), pair("g", "$share/h/x"));
        assert_eq!(parse("$share/grp-1/+/t"), pair("grp-1", "+/t"));
    }

    #[test]
    fn malformed_shared_filters_are_errors() {
        assert_eq!(parse("$share/"), Err(FilterError::EmptyShareName));
        assert_eq!(parse("$share//a"), Err(FilterError::EmptyShareName));
        assert_eq!(parse("$share/+/a"), Err(FilterError::WildcardInShareName));
        assert_eq!(parse("$share/#"), Err(FilterError::WildcardInShareName));
        assert_eq!(parse("$share/g"), Err(FilterError::MissingSharedFilter));
        assert_eq!(parse("$share/g/"), Err(FilterError::MissingSharedFilter));
    }

    #[test]
    fn shared_filter_displays_as_subscribed() {
        let filter = TopicFilter::new("$share/g/a/+").expect("valid");
        let shared = parse_shared(&filter).expect("ok").expect("shared");
        assert_eq!(shared.to_string(), "$share/g/a/+");
    }

    #[test]
    fn client_ids_look_up_by_str() {
        let mut map = std::collections::HashMap::new();
        map.insert(ClientId::new("c1"), 1);
        assert_eq!(map.get("c1"), Some(&1));
        assert_eq!(format!("{:?}", ClientId::new("c1")), "\"c1\"");
    }
}
