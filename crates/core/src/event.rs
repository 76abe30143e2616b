//! Events and their ids, and the wire encodings an event caches so that it
//! is encoded once however many subscribers receive it.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_protocol::sse::SseEncoded;
use herald_protocol::{json, ndjson, sse, time};

use crate::name::{EventType, Topic};

/// An event id: the millisecond it was stored and a sequence number within
/// that millisecond, written `MS-SEQ`.
///
/// The same shape as a Redis Streams id, so every store can hand out ids that
/// order the same way. Within a topic ids strictly increase. Clients treat
/// them as opaque; the server parses them to find a cursor's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl EventId {
    /// The position before every event of a topic (`0-0`).
    pub const START: EventId = EventId { ms: 0, seq: 0 };

    /// The id that follows `last` at wall-clock time `now_ms`: a new
    /// millisecond starts at sequence 0; a clock that stands still or goes
    /// back keeps the last millisecond and counts up, so ids never repeat.
    pub fn next_after(last: EventId, now_ms: u64) -> EventId {
        if now_ms > last.ms {
            EventId { ms: now_ms, seq: 0 }
        } else {
            EventId {
                ms: last.ms,
                seq: last.seq + 1,
            }
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A string that is not an event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an event id")]
pub struct BadEventId;

impl FromStr for EventId {
    type Err = BadEventId;

    /// Accepts exactly `DIGITS-DIGITS` (what [`Display`](fmt::Display) writes).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.split_once('-').ok_or(BadEventId)?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(BadEventId);
        }
        Ok(EventId {
            ms: ms.parse().map_err(|_| BadEventId)?,
            seq: seq.parse().map_err(|_| BadEventId)?,
        })
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A stored event. Shared as `Arc<Event>` between the store's history, the
/// fan-out and every subscriber, so its cached encodings are computed at most
/// once per wire format.
#[derive(Debug)]
pub struct Event {
    pub id: EventId,
    pub topic: Topic,
    pub kind: EventType,
    pub data: String,
    sse: OnceLock<SseEncoded>,
    json_line: OnceLock<Bytes>,
}

impl Event {
    pub fn new(id: EventId, topic: Topic, kind: EventType, data: String) -> Self {
        Event {
            id,
            topic,
            kind,
            data,
            sse: OnceLock::new(),
            json_line: OnceLock::new(),
        }
    }

    /// When the event was stored, as milliseconds since the epoch.
    pub fn time_ms(&self) -> u64 {
        self.id.ms
    }

    /// When the event was stored, as RFC 3339 with milliseconds.
    pub fn time(&self) -> String {
        time::rfc3339_ms(self.time_ms())
    }

    /// The event as SSE (`id:`, `event:`, `data:` lines), encoded on first use.
    pub fn sse(&self) -> &SseEncoded {
        self.sse.get_or_init(|| {
            sse::encode_event(Some(&self.id.to_string()), self.kind.as_str(), &self.data)
        })
    }

    /// The event as one NDJSON line (JSON plus `\n`), encoded on first use.
    pub fn json_line(&self) -> &Bytes {
        self.json_line.get_or_init(|| {
            let text = json::encode_event(
                Some(&self.id.to_string()),
                self.topic.as_str(),
                self.kind.as_str(),
                &self.data,
                Some(&self.time()),
            );
            ndjson::line(&text)
        })
    }

    /// The event as a JSON object, sharing the bytes of [`Event::json_line`].
    pub fn json(&self) -> Bytes {
        let line = self.json_line();
        line.slice(..line.len().saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_order() {
        let a: EventId = "1700000000000-2".parse().unwrap();
        assert_eq!(a.to_string(), "1700000000000-2");
        assert!(a < "1700000000000-10".parse().unwrap());
        assert!(a < "1700000000001-0".parse().unwrap());
        for bad in [
            "",
            "1",
            "-1",
            "1-",
            "a-1",
            "1-1-1",
            "+1-0",
            " 1-0",
            "99999999999999999999-0",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn next_id_never_repeats_when_the_clock_stalls_or_goes_back() {
        let a = EventId::next_after(EventId::START, 100);
        assert_eq!(a, EventId { ms: 100, seq: 0 });
        let b = EventId::next_after(a, 100);
        let c = EventId::next_after(b, 50);
        assert!(a < b && b < c);
        assert_eq!(EventId::next_after(c, 101), EventId { ms: 101, seq: 0 });
    }

    #[test]
    fn encodings_are_cached_and_shared() {
        let e = Event::new(
            EventId { ms: 1, seq: 0 },
            Topic::new("t").unwrap(),
            EventType::message(),
            "hi\n".into(),
        );
        assert_eq!(e.sse().full().as_ptr(), e.sse().full().as_ptr());
        assert_eq!(&e.sse().full()[..], b"id: 1-0\ndata: hi\ndata:\n\n");
        assert_eq!(e.json().as_ptr(), e.json_line().as_ptr());
        assert_eq!(
            &e.json()[..],
            br#"{"id":"1-0","topic":"t","event":"message","data":"hi\n","time":"1970-01-01T00:00:00.001Z"}"#
        );
    }
}
