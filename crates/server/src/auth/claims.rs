//! What a token says: its `herald` claim of patterns per action, the
//! registered claims herald checks, and the [`Grant`] a verified token
//! becomes.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_core::{NameError, Topic};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which names a scope covers: a name (`news`), `*` (every name), or a
/// prefix ending in `*` (`chat.*`).
///
/// A prefix pattern matches every name that starts with the prefix,
/// including the prefix itself when that is a name: `chat.*` matches
/// `chat.room1` and also `chat.` — it is a plain prefix test, with no
/// notion of segments, so what an operator writes is exactly what is
/// compared. `*` is the empty prefix.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern(Box<str>);

/// Why a pattern given on the command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("{0:?}: `*` may only end a pattern (`*`, `chat.*`)")]
    StarInside(String),
    #[error("{text:?}: {reason}")]
    BadName { text: String, reason: NameError },
}

impl Pattern {
    /// Checks `text` as an operator's pattern: `*`, a name, or a name
    /// followed by `*`. Patterns inside tokens are not checked this way (see
    /// the `Deserialize` impl).
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        let text = text.trim();
        let name = text.strip_suffix('*').unwrap_or(text);
        if name.contains('*') {
            return Err(PatternError::StarInside(text.to_owned()));
        }
        if !(name.is_empty() && text == "*") {
            Topic::new(name).map_err(|reason| PatternError::BadName {
                text: text.to_owned(),
                reason,
            })?;
        }
        Ok(Pattern(text.into()))
    }

    /// Whether `name` is covered.
    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => *name == *self.0,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Taken as written, without [`Pattern::parse`]'s checks: the issuer signed
/// it, and a pattern no name can match (`a*b`, `bad name`) only grants
/// nothing, which is safe — refusing the whole token for it would not be.
impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Pattern(s.into()))
    }
}

/// Whether any of `patterns` covers `name`.
pub fn any_matches(patterns: &[Pattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

/// The `herald` claim: what the token allows. Every field may be left out
/// (nothing of that kind is allowed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scopes {
    /// Topics it may publish to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<Pattern>,
    /// Topics it may read, by any transport.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<Pattern>,
    /// Queues it may enqueue to, and whose tasks it may read, wait on and
    /// cancel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enqueue: Vec<Pattern>,
    /// Queues it may claim tasks from and report on as a worker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub work: Vec<Pattern>,
    /// The listings and `/metrics`. Not a superuser flag: it grants nothing
    /// else.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// One thing a request asks to do, as the scopes name it. Borrowed: one is
/// built per request (per topic of a multi-topic subscribe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    Publish(&'a str),
    Subscribe(&'a str),
    Enqueue(&'a str),
    Work(&'a str),
    Admin,
    /// Anything a valid token may do whatever its scopes (`/sse`).
    AnyValidToken,
}

impl fmt::Display for Action<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Publish(t) => write!(f, "publish to topic {t:?}"),
            Action::Subscribe(t) => write!(f, "subscribe to topic {t:?}"),
            Action::Enqueue(q) => write!(f, "use the tasks of queue {q:?}"),
            Action::Work(q) => write!(f, "work on queue {q:?}"),
            Action::Admin => f.write_str("use the admin routes"),
            Action::AnyValidToken => f.write_str("use this route"),
        }
    }
}

impl Scopes {
    /// Whether these scopes cover `action`.
    pub fn allows(&self, action: &Action<'_>) -> bool {
        match *action {
            Action::Publish(t) => any_matches(&self.publish, t),
            Action::Subscribe(t) => any_matches(&self.subscribe, t),
            Action::Enqueue(q) => any_matches(&self.enqueue, q),
            Action::Work(q) => any_matches(&self.work, q),
            Action::Admin => self.admin,
            Action::AnyValidToken => true,
        }
    }
}

/// What a verified token grants, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub scopes: Scopes,
    /// The token's subject, when it has one: who the client is (for
    /// per-client limits and logs).
    pub sub: Option<String>,
    /// When the token expires (its `exp`, without the leeway), if it does.
    /// A stream opened with it must end then; a token accepted within the
    /// leeway has an `exp` already past, and its stream ends at once.
    pub exp: Option<SystemTime>,
}

impl Grant {
    pub fn allows(&self, action: &Action<'_>) -> bool {
        self.scopes.allows(action)
    }
}

/// The claims herald reads; any others are ignored.
#[derive(Debug, Deserialize)]
pub(crate) struct Claims {
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub exp: Option<NumericDate>,
    #[serde(default)]
    pub nbf: Option<NumericDate>,
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub aud: Option<Audience>,
    /// `Option` so that `"herald": null` reads as no scopes.
    #[serde(default)]
    pub herald: Option<Scopes>,
}

/// `aud`: one string or an array of them (RFC 7519 §4.1.3).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::One(a) => a == wanted,
            Audience::Many(all) => all.iter().any(|a| a == wanted),
        }
    }
}

/// A JWT time: seconds since the Unix epoch, which RFC 7519 allows to be
/// fractional; kept as whole seconds, rounded down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NumericDate(pub i64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        if let Some(i) = n.as_i64() {
            return Ok(NumericDate(i));
        }
        if n.as_u64().is_some() {
            // Beyond i64: far enough in the future to be "never".
            return Ok(NumericDate(i64::MAX));
        }
        match n.as_f64() {
            // `as` saturates, which is what a time this far out wants.
            Some(f) if f.is_finite() => Ok(NumericDate(f.floor() as i64)),
            _ => Err(serde::de::Error::custom("not a time")),
        }
    }
}

impl NumericDate {
    /// As a `SystemTime`; times before the epoch become the epoch, and
    /// times past the year 30000 that year (no platform's `SystemTime`
    /// overflows there).
    pub fn to_system_time(self) -> SystemTime {
        const FAR_FUTURE: u64 = 900_000_000_000;
        let secs = u64::try_from(self.0).unwrap_or(0).min(FAR_FUTURE);
        UNIX_EPOCH + Duration::from_secs(secs)
    }
}

/// `now` in whole seconds since the epoch (0 before it).
pub(crate) fn unix_seconds(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Pattern {
        match Pattern::parse(text) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn patterns_are_a_name_everything_or_a_prefix() {
        assert!(p("news").matches("news"));
        assert!(!p("news").matches("news2"));
        assert!(!p("news").matches("new"));
        assert!(p("*").matches("anything"));
        assert!(p("chat.*").matches("chat.room1"));
        // A plain prefix: the prefix itself is covered when it is a name.
        assert!(p("chat.*").matches("chat."));
        assert!(!p("chat.*").matches("chat"));
        assert!(!p("chat.*").matches("chatroom"));
        assert!(p("chat*").matches("chat"));
        assert!(p("chat*").matches("chatroom"));
    }

    #[test]
    fn operator_patterns_are_checked() {
        assert!(Pattern::parse("a*b").is_err());
        assert!(Pattern::parse("**").is_err());
        assert!(Pattern::parse("bad name").is_err());
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("caf\u{e9}").is_err());
        assert_eq!(p(" news ").as_str(), "news");
    }

    #[test]
    fn token_patterns_are_taken_as_written_and_grant_nothing_odd() {
        let s: Scopes =
            serde_json::from_str(r#"{"publish":["a*b","x"]}"#).unwrap_or_else(|e| panic!("{e}"));
        assert!(!s.allows(&Action::Publish("ab")));
        assert!(s.allows(&Action::Publish("x")));
    }

    #[test]
    fn each_scope_covers_its_own_action_only() {
        let s: Scopes = serde_json::from_str(
            r#"{"publish":["news","chat.*"],"subscribe":["*"],"enqueue":["images"],"work":["resize"]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.allows(&Action::Publish("news")));
        assert!(s.allows(&Action::Publish("chat.a")));
        assert!(!s.allows(&Action::Publish("sport")));
        assert!(s.allows(&Action::Subscribe("sport")));
        assert!(s.allows(&Action::Enqueue("images")));
        assert!(!s.allows(&Action::Work("images")));
        assert!(s.allows(&Action::Work("resize")));
        assert!(!s.allows(&Action::Enqueue("resize")));
        assert!(!s.allows(&Action::Admin));
        assert!(s.allows(&Action::AnyValidToken));
        let admin: Scopes =
            serde_json::from_str(r#"{"admin":true}"#).unwrap_or_else(|e| panic!("{e}"));
        assert!(admin.allows(&Action::Admin));
        // Admin is not a superuser.
        assert!(!admin.allows(&Action::Publish("news")));
    }

    #[test]
    fn scopes_default_to_nothing_and_serialize_only_what_is_granted() {
        let none: Scopes = serde_json::from_str("{}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(none, Scopes::default());
        assert!(!none.allows(&Action::Subscribe("a")));
        let s = Scopes {
            subscribe: vec![p("news")],
            ..Scopes::default()
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap_or_default(),
            r#"{"subscribe":["news"]}"#
        );
    }

    #[test]
    fn audience_is_a_string_or_an_array_and_times_may_be_fractional() {
        let c: Claims = serde_json::from_str(r#"{"aud":"a","exp":10.7,"nbf":-3}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.aud.as_ref().is_some_and(|a| a.contains("a")));
        assert_eq!(c.exp, Some(NumericDate(10)));
        assert_eq!(c.nbf.map(NumericDate::to_system_time), Some(UNIX_EPOCH));
        let c: Claims = serde_json::from_str(r#"{"aud":["a","b"],"herald":null}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.aud.as_ref().is_some_and(|a| a.contains("b")));
        assert!(c.aud.as_ref().is_some_and(|a| !a.contains("c")));
        assert!(c.herald.is_none());
        assert!(serde_json::from_str::<Claims>(r#"{"exp":"soon"}"#).is_err());
        assert!(serde_json::from_str::<Claims>(r#"{"herald":{"publish":"news"}}"#).is_err());
    }
}
