//! Access control lists in mosquitto's `acl_file` format, with mosquitto 2.0's semantics.
//!
//! ```text
//! # Lines before the first `user` line apply to anonymous clients only.
//! topic read public/#
//!
//! user alice                   # the rules below apply to alice only
//! topic readwrite alice/#
//! topic deny alice/secret
//! topic sensors/#              # no access type: readwrite
//!
//! # Patterns apply to every client, wherever they appear in the file.
//! pattern write devices/%c/status    # %c: the client identifier
//! pattern read users/%u/#            # %u: the user name; skipped for anonymous clients
//! ```
//!
//! Access types are `read` (receive messages, subscribe), `write` (publish), `readwrite` and
//! `deny`. A client's decision for a topic is taken as mosquitto takes it:
//!
//! 1. its own section (the anonymous section, or its user's section): `deny` rules first,
//!    then the others in file order; the first rule whose filter matches the topic decides:
//!    `deny` refuses, a rule granting the access allows, any other rule is passed over;
//! 2. if the file has patterns and the client identifier or user name contains `+` or `#`,
//!    refuse (such a name could widen a pattern);
//! 3. the patterns, after substituting `%c` and `%u`, in the same way;
//! 4. nothing matched: refuse.
//!
//! A topic starting with `$` is only matched by a rule whose filter starts with `$`, so
//! `topic read #` does not grant `$SYS`.
//!
//! Subscriptions: mosquitto's default ACL grants every SUBSCRIBE and enforces `read` on each
//! message as it is delivered. twinmq does the same delivery check ([`Action::Receive`]) and
//! adds an early one at SUBSCRIBE ([`Action::Subscribe`]) that refuses a filter no message
//! could ever pass: one that no `read` rule overlaps, or that a `deny` rule covers entirely
//! before any `read` rule overlaps it. Everything the early check lets through is still
//! filtered per message, so it never grants more than mosquitto would deliver.
//!
//! Differences from mosquitto, all on the strict side: unknown keywords and malformed lines
//! are load errors naming the file and line (mosquitto skips unknown keywords), and a file
//! with no rules refuses everything (mosquitto would ignore it).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::password::read;
use super::topic::{covers, is_valid_filter, matches, overlaps, strip_share};
use super::{AuthError, Identity};
use crate::config::AuthSettings;

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// PUBLISH to a topic name (also a will's topic, checked at CONNECT): needs `write`.
    Publish,
    /// SUBSCRIBE with a topic filter (`$share/<group>/` is ignored): needs `read` somewhere
    /// under the filter. Does not replace [`Action::Receive`].
    Subscribe,
    /// Receive a message published on a topic name, checked for every message delivered,
    /// retained messages included: needs `read`.
    Receive,
}

/// A loaded ACL, or none (everything allowed). Cheap to share: clone it or put it in an
/// `Arc`.
#[derive(Debug, Clone)]
pub struct Acl {
    rules: Option<Arc<Rules>>,
}

impl Acl {
    /// No ACL: every client may do everything.
    pub fn allow_all() -> Acl {
        Acl { rules: None }
    }

    /// The ACL `auth.acl_file` names, or [`Acl::allow_all`] when it is unset.
    pub fn from_settings(settings: &AuthSettings) -> Result<Acl, AuthError> {
        match &settings.acl_file {
            Some(path) => Acl::load(path),
            None => Ok(Acl::allow_all()),
        }
    }

    /// Reads and parses an ACL file.
    pub fn load(path: &Path) -> Result<Acl, AuthError> {
        let text = read(path)?;
        Acl::parse(&text, path)
    }

    /// Parses ACL text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Acl, AuthError> {
        Ok(Acl {
            rules: Some(Arc::new(Rules::parse(text, path)?)),
        })
    }

    /// Whether this ACL restricts anything at all.
    pub fn is_allow_all(&self) -> bool {
        self.rules.is_none()
    }

    /// The rules that apply to one connection, with its patterns substituted: build this
    /// once after CONNECT and keep it for the connection's life.
    pub fn for_client(&self, identity: &Identity, client_id: &str) -> ClientAcl {
        let Some(rules) = &self.rules else {
            return ClientAcl {
                inner: ClientRules::AllowAll,
            };
        };
        let username = identity.username();
        let own = match username {
            Some(name) => rules.users.get(name).cloned(),
            None => Some(rules.anonymous.clone()),
        }
        .unwrap_or_default();
        let patterns = if rules.patterns.is_empty() {
            Patterns::None
        } else if client_id.contains(['+', '#']) || username.is_some_and(|u| u.contains(['+', '#']))
        {
            Patterns::Refuse
        } else {
            Patterns::Substituted(
                rules
                    .patterns
                    .iter()
                    .filter_map(|rule| rule.substitute(client_id, username))
                    .collect(),
            )
        };
        ClientAcl {
            inner: ClientRules::Rules { own, patterns },
        }
    }

    /// One-off check; on a hot path use [`Acl::for_client`] once and
    /// [`ClientAcl::check`] per message.
    pub fn check(
        &self,
        identity: &Identity,
        client_id: &str,
        action: Action,
        topic_or_filter: &str,
    ) -> bool {
        self.for_client(identity, client_id)
            .check(action, topic_or_filter)
    }
}

/// The rules for one connection. Checking does not allocate.
#[derive(Debug, Clone)]
pub struct ClientAcl {
    inner: ClientRules,
}

impl ClientAcl {
    /// Allows everything (what [`Acl::allow_all`] hands out).
    pub fn allow_all() -> ClientAcl {
        ClientAcl {
            inner: ClientRules::AllowAll,
        }
    }

    /// Whether the client may perform `action` on `topic_or_filter`: a topic name for
    /// [`Action::Publish`] and [`Action::Receive`], a topic filter for
    /// [`Action::Subscribe`].
    pub fn check(&self, action: Action, topic_or_filter: &str) -> bool {
        let (own, patterns) = match &self.inner {
            ClientRules::AllowAll => return true,
            ClientRules::Rules { own, patterns } => (own, patterns),
        };
        let decide = |rules: &[Rule]| match action {
            Action::Publish | Action::Receive => decide_topic(rules, action, topic_or_filter),
            Action::Subscribe => decide_filter(rules, strip_share(topic_or_filter)),
        };
        if let Some(decision) = decide(own) {
            return decision;
        }
        match patterns {
            Patterns::None | Patterns::Refuse => false,
            Patterns::Substituted(rules) => decide(rules).unwrap_or(false),
        }
    }
}

#[derive(Debug, Clone)]
enum ClientRules {
    AllowAll,
    Rules {
        /// The anonymous section or the user's section, denials first.
        own: Arc<[Rule]>,
        patterns: Patterns,
    },
}

#[derive(Debug, Clone)]
enum Patterns {
    /// The file has none.
    None,
    /// The client identifier or user name contains `+` or `#`: patterns refuse.
    Refuse,
    /// Denials first, `%c` and `%u` replaced; patterns using `%u` dropped for anonymous
    /// clients.
    Substituted(Vec<Rule>),
}

/// The parsed file.
#[derive(Debug, Default)]
struct Rules {
    anonymous: Arc<[Rule]>,
    users: HashMap<String, Arc<[Rule]>>,
    patterns: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn parse(word: &str) -> Option<Access> {
        match word {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "readwrite" => Some(Access::ReadWrite),
            "deny" => Some(Access::Deny),
            _ => None,
        }
    }

    fn grants(self, action: Action) -> bool {
        match action {
            Action::Publish => matches!(self, Access::Write | Access::ReadWrite),
            Action::Subscribe | Action::Receive => {
                matches!(self, Access::Read | Access::ReadWrite)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    filter: String,
}

impl Rule {
    /// The pattern with `%c` and `%u` replaced; `None` if it uses `%u` and there is no user.
    fn substitute(&self, client_id: &str, username: Option<&str>) -> Option<Rule> {
        if self.filter.contains("%u") && username.is_none() {
            return None;
        }
        let mut filter = String::with_capacity(self.filter.len() + client_id.len());
        let mut rest = self.filter.as_str();
        while let Some(at) = rest.find('%') {
            filter.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            match (after.chars().next(), username) {
                (Some('c'), _) => filter.push_str(client_id),
                (Some('u'), Some(user)) => filter.push_str(user),
                _ => {
                    filter.push('%');
                    rest = after;
                    continue;
                }
            }
            rest = &after[1..];
        }
        filter.push_str(rest);
        Some(Rule {
            access: self.access,
            filter,
        })
    }
}

/// Rules are in evaluation order (denials first): the first whose filter matches the topic
/// and either denies or grants `action` decides.
fn decide_topic(rules: &[Rule], action: Action, topic: &str) -> Option<bool> {
    rules.iter().find_map(|rule| {
        if !matches(&rule.filter, topic) {
            return None;
        }
        match rule.access {
            Access::Deny => Some(false),
            access if access.grants(action) => Some(true),
            _ => None,
        }
    })
}

/// The SUBSCRIBE form of [`decide_topic`]: a denial decides when it covers the whole filter,
/// a `read` grant when it overlaps it.
fn decide_filter(rules: &[Rule], filter: &str) -> Option<bool> {
    rules.iter().find_map(|rule| match rule.access {
        Access::Deny if covers(&rule.filter, filter) => Some(false),
        access if access.grants(Action::Subscribe) && overlaps(&rule.filter, filter) => Some(true),
        _ => None,
    })
}

impl Rules {
    fn parse(text: &str, path: &Path) -> Result<Rules, AuthError> {
        let mut anonymous = Vec::new();
        let mut users: HashMap<String, Vec<Rule>> = HashMap::new();
        let mut patterns = Vec::new();
        let mut current_user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let error = |reason: String| AuthError::AclFile {
                path: path.to_path_buf(),
                line: index + 1,
                reason,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(line);
            match keyword {
                "topic" | "pattern" => {
                    let rule = parse_rule(keyword, rest).map_err(error)?;
                    if keyword == "pattern" {
                        patterns.push(rule);
                    } else if let Some(user) = &current_user {
                        users.entry(user.clone()).or_default().push(rule);
                    } else {
                        anonymous.push(rule);
                    }
                }
                "user" => {
                    if rest.is_empty() {
                        return Err(error("`user` without a user name".to_string()));
                    }
                    users.entry(rest.to_string()).or_default();
                    current_user = Some(rest.to_string());
                }
                other => {
                    return Err(error(format!(
                        "unknown keyword {other:?}: expected `topic`, `pattern` or `user`"
                    )))
                }
            }
        }
        Ok(Rules {
            anonymous: denials_first(anonymous).into(),
            users: users
                .into_iter()
                .map(|(name, rules)| (name, denials_first(rules).into()))
                .collect(),
            patterns: denials_first(patterns),
        })
    }
}

/// `topic|pattern [read|write|readwrite|deny] <filter>`; the filter may contain spaces when
/// the access type is given.
fn parse_rule(keyword: &str, rest: &str) -> Result<Rule, String> {
    let (first, after) = split_word(rest);
    if first.is_empty() {
        return Err(format!("`{keyword}` without a topic filter"));
    }
    let (access, filter) = if after.is_empty() {
        (Access::ReadWrite, first)
    } else {
        let access = Access::parse(first).ok_or_else(|| {
            format!(
                "invalid access type {first:?}: expected read, write, readwrite or deny \
                 (or none, meaning readwrite)"
            )
        })?;
        (access, after)
    };
    if !is_valid_filter(filter) {
        return Err(format!(
            "invalid topic filter {filter:?}: `+` and `#` must fill a whole level and `#` \
             must be last"
        ));
    }
    Ok(Rule {
        access,
        filter: filter.to_string(),
    })
}

/// The first space- or tab-separated word and the trimmed rest.
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once([' ', '\t']) {
        Some((word, rest)) => (word, rest.trim()),
        None => (s, ""),
    }
}

/// mosquitto puts `deny` rules at the front of each list; the order among the others stays.
fn denials_first(mut rules: Vec<Rule>) -> Vec<Rule> {
    rules.sort_by_key(|rule| rule.access != Access::Deny);
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(text: &str) -> Acl {
        Acl::parse(text, Path::new("acl")).unwrap()
    }

    fn user(name: &str) -> Identity {
        Identity::User(name.to_string())
    }

    const ANON: Identity = Identity::Anonymous;

    #[test]
    fn no_file_allows_everything() {
        let acl = Acl::allow_all();
        assert!(acl.is_allow_all());
        for action in [Action::Publish, Action::Subscribe, Action::Receive] {
            assert!(acl.check(&ANON, "c", action, "$SYS/x"));
        }
    }

    #[test]
    fn an_empty_file_refuses_everything() {
        let acl = acl("# nothing\n\n");
        assert!(!acl.check(&ANON, "c", Action::Publish, "a"));
        assert!(!acl.check(&user("u"), "c", Action::Subscribe, "#"));
    }

    #[test]
    fn lines_before_any_user_apply_to_anonymous_clients_only() {
        let acl = acl("topic read public/#\nuser alice\ntopic alice/#\n");
        assert!(acl.check(&ANON, "c", Action::Receive, "public/news"));
        assert!(!acl.check(&ANON, "c", Action::Publish, "public/news"));
        assert!(!acl.check(&ANON, "c", Action::Receive, "alice/x"));
        // As in mosquitto: a user gets its own section, not the anonymous one.
        assert!(!acl.check(&user("alice"), "c", Action::Receive, "public/news"));
        assert!(acl.check(&user("alice"), "c", Action::Publish, "alice/x"));
        assert!(!acl.check(&user("bob"), "c", Action::Receive, "alice/x"));
    }

    #[test]
    fn read_write_and_readwrite() {
        let acl = acl("user u\ntopic read r/#\ntopic write w/#\ntopic readwrite rw/#\n");
        let u = user("u");
        let check = |action, topic| acl.check(&u, "c", action, topic);
        assert!(check(Action::Receive, "r/1") && !check(Action::Publish, "r/1"));
        assert!(!check(Action::Receive, "w/1") && check(Action::Publish, "w/1"));
        assert!(check(Action::Receive, "rw/1") && check(Action::Publish, "rw/1"));
        assert!(check(Action::Subscribe, "r/+") && !check(Action::Subscribe, "w/+"));
    }

    #[test]
    fn a_write_rule_does_not_stop_the_search_for_read() {
        let acl = acl("user u\ntopic write a/#\ntopic read a/b\n");
        assert!(acl.check(&user("u"), "c", Action::Receive, "a/b"));
    }

    #[test]
    fn deny_wins_wherever_it_is_written() {
        let acl = acl("user u\ntopic readwrite a/#\ntopic deny a/secret/#\n");
        let u = user("u");
        assert!(acl.check(&u, "c", Action::Publish, "a/open"));
        assert!(!acl.check(&u, "c", Action::Publish, "a/secret"));
        assert!(!acl.check(&u, "c", Action::Receive, "a/secret/x"));
        assert!(!acl.check(&u, "c", Action::Subscribe, "a/secret/#"));
        assert!(!acl.check(&u, "c", Action::Subscribe, "a/secret/+"));
        // Partly denied: granted, and the denied part is filtered per message.
        assert!(acl.check(&u, "c", Action::Subscribe, "a/#"));
        assert!(acl.check(&u, "c", Action::Subscribe, "#"));
    }

    #[test]
    fn wildcards_in_rules() {
        let acl = acl("user u\ntopic read sensors/+/temp\ntopic write cmd/#\n");
        let u = user("u");
        assert!(acl.check(&u, "c", Action::Receive, "sensors/k1/temp"));
        assert!(!acl.check(&u, "c", Action::Receive, "sensors/k1/hum"));
        assert!(!acl.check(&u, "c", Action::Receive, "sensors/k1/temp/x"));
        assert!(acl.check(&u, "c", Action::Publish, "cmd"));
        assert!(acl.check(&u, "c", Action::Publish, "cmd/a/b"));
    }

    #[test]
    fn subscribe_needs_some_readable_topic_under_the_filter() {
        let acl = acl("user u\ntopic read a/+/c\n");
        let u = user("u");
        for granted in ["a/b/c", "a/+/c", "a/#", "+/+/c", "#", "$share/g/a/b/c"] {
            assert!(acl.check(&u, "c", Action::Subscribe, granted), "{granted}");
        }
        for refused in ["a/b", "a/b/d", "b/#", "a/b/c/d", "$share/g/b/#"] {
            assert!(!acl.check(&u, "c", Action::Subscribe, refused), "{refused}");
        }
    }

    #[test]
    fn dollar_topics_need_dollar_rules() {
        let acl = acl("user u\ntopic read #\ntopic read $SYS/broker/#\n");
        let u = user("u");
        assert!(acl.check(&u, "c", Action::Receive, "a/b"));
        assert!(!acl.check(&u, "c", Action::Receive, "$SYS/load"));
        assert!(acl.check(&u, "c", Action::Receive, "$SYS/broker/uptime"));
        // `#` does not reach `$SYS`, but `$SYS/broker/#` lies under `$SYS/#`.
        assert!(acl.check(&u, "c", Action::Subscribe, "$SYS/#"));
        assert!(acl.check(&u, "c", Action::Subscribe, "$SYS/broker/+"));
        assert!(!acl.check(&u, "c", Action::Subscribe, "$SYS/load/#"));
        assert!(!acl.check(&u, "c", Action::Subscribe, "$other"));
    }

    #[test]
    fn patterns_substitute_client_id_and_username_for_everyone() {
        let acl =
            acl("user alice\ntopic read x\npattern write dev/%c/out\npattern read home/%u/#\n");
        let alice = user("alice");
        assert!(acl.check(&alice, "k1", Action::Publish, "dev/k1/out"));
        assert!(!acl.check(&alice, "k1", Action::Publish, "dev/k2/out"));
        assert!(acl.check(&alice, "k1", Action::Receive, "home/alice/lamp"));
        assert!(!acl.check(&alice, "k1", Action::Receive, "home/bob/lamp"));
        // A user without a section still gets the patterns.
        assert!(acl.check(&user("bob"), "k2", Action::Receive, "home/bob/lamp"));
        // Anonymous: %c patterns apply, %u patterns do not.
        assert!(acl.check(&ANON, "k3", Action::Publish, "dev/k3/out"));
        assert!(!acl.check(&ANON, "k3", Action::Receive, "home//lamp"));
        assert!(!acl.check(&ANON, "k3", Action::Receive, "home/%u/lamp"));
    }

    #[test]
    fn substitution_anywhere_in_a_level_and_more_than_once() {
        let acl = acl("pattern readwrite %u/%c/dev-%c/100%\n");
        let u = user("u");
        assert!(acl.check(&u, "k", Action::Publish, "u/k/dev-k/100%"));
        assert!(!acl.check(&u, "k", Action::Publish, "u/k/dev-j/100%"));
    }

    #[test]
    fn wildcards_in_names_disable_patterns() {
        let acl = acl("pattern readwrite dev/%c/#\nuser e+vil\ntopic read own/#\n");
        assert!(!acl.check(&ANON, "+", Action::Publish, "dev/x/y"));
        assert!(!acl.check(&ANON, "#", Action::Publish, "dev/#/y"));
        assert!(!acl.check(&user("a#"), "k", Action::Publish, "dev/k/y"));
        // Rules of the user's own section are consulted before the check, as in mosquitto.
        assert!(acl.check(&user("e+vil"), "k", Action::Receive, "own/x"));
        assert!(!acl.check(&user("e+vil"), "k", Action::Receive, "dev/k/x"));
    }

    #[test]
    fn own_section_decides_before_patterns() {
        let acl = acl("pattern deny dev/%c/#\nuser u\ntopic read dev/#\n");
        // mosquitto checks the user's rules first; a user grant beats a pattern denial.
        assert!(acl.check(&user("u"), "k", Action::Receive, "dev/k/x"));
        // A pattern denial still beats a pattern grant.
        let acl2 = Acl::parse(
            "pattern read dev/#\npattern deny dev/%c/#\n",
            Path::new("acl"),
        )
        .unwrap();
        assert!(!acl2.check(&user("u"), "k", Action::Receive, "dev/k/x"));
        assert!(acl2.check(&user("u"), "k", Action::Receive, "dev/j/x"));
    }

    #[test]
    fn repeated_user_sections_merge() {
        let acl = acl("user u\ntopic read a\nuser v\ntopic read b\nuser u\ntopic read c\n");
        let u = user("u");
        assert!(acl.check(&u, "k", Action::Receive, "a"));
        assert!(acl.check(&u, "k", Action::Receive, "c"));
        assert!(!acl.check(&u, "k", Action::Receive, "b"));
    }

    #[test]
    fn filters_and_user_names_may_contain_spaces() {
        let acl = acl("user John Smith\ntopic read  my topic/with spaces \n");
        assert!(acl.check(
            &user("John Smith"),
            "k",
            Action::Receive,
            "my topic/with spaces"
        ));
    }

    #[test]
    fn client_acl_matches_one_off_checks() {
        let acl = acl("topic read a/#\nuser u\ntopic write b\npattern read c/%c\n");
        for identity in [ANON, user("u")] {
            let client = acl.for_client(&identity, "k");
            for action in [Action::Publish, Action::Subscribe, Action::Receive] {
                for topic in ["a/x", "b", "c/k", "c/j", "a/#"] {
                    assert_eq!(
                        client.check(action, topic),
                        acl.check(&identity, "k", action, topic),
                        "{identity:?} {action:?} {topic}"
                    );
                }
            }
        }
        assert!(ClientAcl::allow_all().check(Action::Publish, "x"));
    }

    #[test]
    fn load_errors_name_the_file_and_line() {
        let cases = [
            (
                "topic read a\ntopci read b\n",
                2,
                "unknown keyword \"topci\"",
            ),
            ("\n\ntopic\n", 3, "without a topic filter"),
            ("topic reed a/b\n", 1, "invalid access type \"reed\""),
            ("# c\ntopic read a/#/b\n", 2, "invalid topic filter"),
            ("pattern write a+/%c\n", 1, "invalid topic filter"),
            ("topic a\nuser\n", 2, "without a user name"),
        ];
        for (text, line, reason) in cases {
            let err = Acl::parse(text, Path::new("/etc/twinmq/acl")).unwrap_err();
            let shown = err.to_string();
            assert!(shown.contains("/etc/twinmq/acl"), "{shown}");
            assert!(shown.contains(&format!("line {line}")), "{shown}");
            assert!(shown.contains(reason), "{shown}");
            assert!(matches!(err, AuthError::AclFile { line: l, .. } if l == line));
        }
    }
}
