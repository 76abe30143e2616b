//! The JSON form of an event, as WebSocket frames, NDJSON lines and poll
//! answers carry it: `{"id","topic","event","data","time"}`.

use serde::{Deserialize, Serialize};

/// One event on the wire. Borrowed for encoding, owned after decoding.
///
/// `id` is absent only for the `gap` signal, which must not move a client's
/// cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub topic: String,
    pub event: String,
    pub data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

/// The borrowed twin of [`WireEvent`], so encoding copies nothing but the
/// output.
#[derive(Serialize)]
struct WireEventRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    topic: &'a str,
    event: &'a str,
    data: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<&'a str>,
}

/// Encodes one event as a JSON object (no trailing newline).
pub fn encode_event(
    id: Option<&str>,
    topic: &str,
    event: &str,
    data: &str,
    time: Option<&str>,
) -> String {
    let wire = WireEventRef {
        id,
        topic,
        event,
        data,
        time,
    };
    // Serialising a struct of strings into a String cannot fail.
    serde_json::to_string(&wire).unwrap_or_default()
}

/// The data of a `gap` signal: the cursor the client gave, and the topic
/// it was for.
pub fn gap_data(topic: &str, cursor: &str) -> String {
    serde_json::json!({ "cursor": cursor, "topic": topic }).to_string()
}

/// Encodes `s` as a JSON string literal, quotes included.
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_serde() {
        let text = encode_event(
            Some("1-0"),
            "news",
            "message",
            "a\r\nb \"q\"",
            Some("1970-01-01T00:00:00.001Z"),
        );
        let back: WireEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(back.id.as_deref(), Some("1-0"));
        assert_eq!(back.data, "a\r\nb \"q\"");
        assert_eq!(back.time.as_deref(), Some("1970-01-01T00:00:00.001Z"));
    }

    #[test]
    fn gap_has_no_id() {
        let text = encode_event(None, "news", "gap", "{}", None);
        assert!(!text.contains("\"id\""));
        assert!(!text.contains("\"time\""));
    }
}
