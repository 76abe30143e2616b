//! Cursors: where a client stands in one topic or in several at once.
//!
//! A cursor over one topic is simply the id of the last event the client
//! has. A cursor over several topics must restore every topic's position, so
//! it is written `TOPIC=ID,TOPIC=ID,…` — unambiguous because neither topic
//! names nor ids may contain `=` or `,`; a client may also write `all` or
//! `now` as one topic's value. Anything the server cannot make
//! sense of is an *unknown* cursor, answered with a gap, never with an error:
//! a browser's EventSource gives up for good on an error status.

use std::fmt;

use crate::event::EventId;
use crate::name::Topic;

/// A cursor as the client sent it, before it is matched to topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorInput {
    /// `all`: from the oldest retained event.
    All,
    /// `now`: only events published from now on.
    Now,
    /// An id, a multi-topic cursor or junk; judged per topic.
    Given(String),
}

impl CursorInput {
    /// Reads a cursor value; an absent or empty value gives `default`.
    pub fn parse(raw: Option<&str>, default: CursorInput) -> CursorInput {
        match raw.map(str::trim) {
            None | Some("") => default,
            Some("all") => CursorInput::All,
            Some("now") => CursorInput::Now,
            Some(other) => CursorInput::Given(other.to_owned()),
        }
    }

    /// Where a subscription to `topic` starts under this cursor.
    pub fn start_for(&self, topic: &Topic) -> Start {
        match self {
            CursorInput::All => Start::Oldest,
            CursorInput::Now => Start::Head,
            CursorInput::Given(raw) if raw.contains('=') => {
                let value = raw.split(',').find_map(|pair| {
                    let (t, id) = pair.split_once('=')?;
                    (t.trim() == topic.as_str()).then(|| id.trim())
                });
                match value {
                    Some("all") => Start::Oldest,
                    Some("now") => Start::Head,
                    Some(v) => v
                        .parse()
                        .map_or_else(|_| Start::Unknown(v.to_owned()), Start::After),
                    None => Start::Unknown(raw.clone()),
                }
            }
            CursorInput::Given(raw) => raw
                .parse()
                .map_or_else(|_| Start::Unknown(raw.clone()), Start::After),
        }
    }
}

/// Where a subscription starts in one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// From the oldest retained event, no gap reported.
    Oldest,
    /// After the newest event at the moment of subscribing.
    Head,
    /// After this id; the store decides whether it is still known.
    After(EventId),
    /// A value that is not a cursor: replay from the oldest retained event
    /// and report a gap carrying the value given.
    Unknown(String),
}

/// The positions of a client in each topic it follows, in the order of the
/// request, ready to be handed back as a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub positions: Vec<(Topic, EventId)>,
}

impl Cursor {
    /// The position in `topic`, if the cursor covers it.
    pub fn get(&self, topic: &Topic) -> Option<EventId> {
        self.positions
            .iter()
            .find_map(|(t, id)| (t == topic).then_some(*id))
    }
}

impl fmt::Display for Cursor {
    /// One topic: its id. Several: `TOPIC=ID,…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.positions.as_slice() {
            [(_, id)] => write!(f, "{id}"),
            many => {
                for (i, (topic, id)) in many.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{topic}={id}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[test]
    fn keywords_and_defaults() {
        assert_eq!(CursorInput::parse(None, CursorInput::Now), CursorInput::Now);
        assert_eq!(
            CursorInput::parse(Some(""), CursorInput::All),
            CursorInput::All
        );
        assert_eq!(
            CursorInput::parse(Some("all"), CursorInput::Now),
            CursorInput::All
        );
        assert_eq!(
            CursorInput::parse(Some("now"), CursorInput::All),
            CursorInput::Now
        );
    }

    #[test]
    fn a_multi_topic_cursor_round_trips() {
        let c = Cursor {
            positions: vec![
                (t("a"), EventId { ms: 5, seq: 1 }),
                (t("b:c"), EventId::START),
            ],
        };
        let text = c.to_string();
        assert_eq!(text, "a=5-1,b:c=0-0");
        let input = CursorInput::Given(text);
        assert_eq!(
            input.start_for(&t("a")),
            Start::After(EventId { ms: 5, seq: 1 })
        );
        assert_eq!(input.start_for(&t("b:c")), Start::After(EventId::START));
        assert!(matches!(input.start_for(&t("z")), Start::Unknown(_)));
        let keywords = CursorInput::Given("a=now,b:c=all".into());
        assert_eq!(keywords.start_for(&t("a")), Start::Head);
        assert_eq!(keywords.start_for(&t("b:c")), Start::Oldest);
    }

    #[test]
    fn junk_is_unknown_never_an_error() {
        for junk in ["abc", "1-", "a=junk", "=,=", "\u{0}"] {
            let s = CursorInput::Given(junk.into()).start_for(&t("a"));
            assert!(matches!(s, Start::Unknown(_)), "{junk:?} gave {s:?}");
        }
    }
}
