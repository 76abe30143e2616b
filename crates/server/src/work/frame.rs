//! The frames of the worker socket, with no I/O: a worker's op parsed from a
//! text frame (borrowing from it: no `serde_json::Value` in between), and
//! the server's `task`, `ok` and `error` frames encoded.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

/// A worker's op on one task, borrowed from its frame.
#[derive(Debug)]
pub struct Op<'a> {
    /// Echoed in the answer, whatever JSON value it is.
    pub reference: Option<&'a RawValue>,
    pub id: Cow<'a, str>,
    /// The token of the claim that holds the task.
    pub lease: Cow<'a, str>,
    pub kind: Kind<'a>,
}

/// What the op does.
#[derive(Debug, PartialEq)]
pub enum Kind<'a> {
    /// Reports progress and extends the lease.
    Progress {
        progress: Option<f64>,
        message: Option<Cow<'a, str>>,
    },
    /// Finishes the task with its result.
    Complete(Outcome<'a>),
    /// Fails the task; with `retry` it is queued again if attempts are left.
    Fail { error: Cow<'a, str>, retry: bool },
}

/// A completed task's result, as the complete route stores a body.
#[derive(Debug, PartialEq)]
pub enum Outcome<'a> {
    /// `"result"`: stored as JSON (the value's own text).
    Json(&'a str),
    /// `"text"`: stored as text.
    Text(Cow<'a, str>),
}

impl Kind<'_> {
    /// Whether the op ends the worker's hold on the task when it is answered.
    pub fn finishes(&self) -> bool {
        !matches!(self, Kind::Progress { .. })
    }
}

/// A frame that is not an op: what the error answer can still name.
#[derive(Debug)]
pub struct Refused<'a> {
    pub reference: Option<&'a RawValue>,
    pub id: Option<Cow<'a, str>>,
    pub why: String,
}

/// Every field any op has; which belong together is checked afterwards, so
/// one pass of the parser reads the frame whatever its `op`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(borrow)]
    op: Str<'a>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    lease: Option<Str<'a>>,
    #[serde(rename = "ref", borrow, default, deserialize_with = "present")]
    reference: Option<&'a RawValue>,
    #[serde(default)]
    progress: Option<f64>,
    #[serde(borrow, default)]
    message: Option<Str<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    error: Option<Str<'a>>,
    #[serde(default)]
    retry: Option<bool>,
}

/// What a frame that failed to parse may still say, read leniently so its
/// error answer carries the worker's `ref` and `id`.
#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(rename = "ref", borrow, default, deserialize_with = "present")]
    reference: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
}

/// A string borrowed from the frame unless it has escapes (serde borrows a
/// `Cow` only when it is not inside an `Option`).
#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

fn cow<'a>(s: &Option<Str<'a>>) -> Option<Cow<'a, str>> {
    s.as_ref().map(|Str(c)| c.clone())
}

/// A field that is there, even as `null`: `"result": null` is a result.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Reads a worker's text frame as an op.
pub fn parse(text: &str) -> Result<Op<'_>, Refused<'_>> {
    let wire: Wire<'_> = match serde_json::from_str(text) {
        Ok(w) => w,
        Err(e) => {
            let tag = serde_json::from_str::<Tag<'_>>(text).ok();
            return Err(Refused {
                reference: tag.as_ref().and_then(|t| t.reference),
                id: tag.and_then(|t| t.id).map(|Str(c)| c),
                why: format!("not a worker op: {e}"),
            });
        }
    };
    let refuse = |why: String| Refused {
        reference: wire.reference,
        id: cow(&wire.id),
        why,
    };
    let (Some(id), Some(lease)) = (cow(&wire.id), cow(&wire.lease)) else {
        return Err(refuse(
            "an op needs \"id\" (the task) and \"lease\" (its claim's token)".into(),
        ));
    };
    let has = |f: bool| usize::from(f);
    let outcome = has(wire.result.is_some()) + has(wire.text.is_some());
    let report = has(wire.progress.is_some()) + has(wire.message.is_some());
    let failure = has(wire.error.is_some()) + has(wire.retry.is_some());
    let kind = match wire.op.0.as_ref() {
        "progress" if outcome + failure == 0 => {
            if wire.progress.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
                return Err(refuse("progress must be between 0 and 1".into()));
            }
            Kind::Progress {
                progress: wire.progress,
                message: cow(&wire.message),
            }
        }
        "complete" if outcome == 1 && report + failure == 0 => match (wire.result, &wire.text) {
            (Some(raw), _) => Kind::Complete(Outcome::Json(raw.get())),
            (None, Some(Str(text))) => Kind::Complete(Outcome::Text(text.clone())),
            (None, None) => return Err(refuse("complete needs a result".into())),
        },
        "fail" if outcome + report == 0 => match &wire.error {
            Some(Str(error)) => Kind::Fail {
                error: error.clone(),
                retry: wire.retry.unwrap_or(false),
            },
            None => return Err(refuse("fail needs \"error\"".into())),
        },
        "progress" => {
            return Err(refuse(
                "progress takes \"progress\" and \"message\" only".into(),
            ));
        }
        "complete" => {
            return Err(refuse(
                "complete takes exactly one of \"result\" (JSON) and \"text\"".into(),
            ));
        }
        "fail" => return Err(refuse("fail takes \"error\" and \"retry\" only".into())),
        other => {
            return Err(refuse(format!(
                "unknown op {other:?}: progress, complete or fail"
            )));
        }
    };
    Ok(Op {
        reference: wire.reference,
        id,
        lease,
        kind,
    })
}

/// `{"type":"task","lease":{"expires","token"},"task":TASK}`: the claim
/// route's answer, already written once as bytes, with its type in front
/// (so a task handed over a socket costs no second encoding).
pub fn task(claim: &[u8]) -> String {
    // `claim` is an object the task writer wrote from `&str`s: `{`, then
    // its fields, so it is UTF-8 (lossy conversion never changes it).
    let fields = claim.strip_prefix(b"{").unwrap_or(claim);
    let mut out = String::with_capacity(fields.len() + 16);
    out.push_str("{\"type\":\"task\",");
    out.push_str(&String::from_utf8_lossy(fields));
    out
}

/// `{"type":"ok","ref":REF,"id":ID,"status":STATUS}` (`ref` only when the
/// op had one).
pub fn ok(reference: Option<&RawValue>, id: &str, status: &str) -> String {
    #[derive(Serialize)]
    struct Frame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a RawValue>,
        id: &'a str,
        status: &'a str,
    }
    encode(&Frame {
        kind: "ok",
        reference,
        id,
        status,
    })
}

/// `{"type":"error","ref":REF,"id":ID,"error":{"code","message"},"status":N}`
/// (`ref` and `id` only when known).
pub fn error(
    reference: Option<&RawValue>,
    id: Option<&str>,
    code: &str,
    message: &str,
    status: u16,
) -> String {
    #[derive(Serialize)]
    struct Error<'a> {
        code: &'a str,
        message: &'a str,
    }
    #[derive(Serialize)]
    struct Frame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        error: Error<'a>,
        status: u16,
    }
    encode(&Frame {
        kind: "error",
        reference,
        id,
        error: Error { code, message },
        status,
    })
}

fn encode(frame: &impl Serialize) -> String {
    // Serializing plain strings, numbers and already-valid JSON into a
    // String cannot fail; an empty object keeps the socket speaking JSON.
    serde_json::to_string(frame).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_op() {
        let op = parse(
            r#"{"op":"progress","id":"t","lease":"l","progress":0.5,"message":"half","ref":7}"#,
        )
        .unwrap();
        assert_eq!(op.reference.map(RawValue::get), Some("7"));
        assert_eq!((op.id.as_ref(), op.lease.as_ref()), ("t", "l"));
        assert_eq!(
            op.kind,
            Kind::Progress {
                progress: Some(0.5),
                message: Some("half".into())
            }
        );
        let op = parse(r#"{"op":"complete","id":"t","lease":"l","result":{"a":[1, 2]}}"#).unwrap();
        assert_eq!(op.kind, Kind::Complete(Outcome::Json(r#"{"a":[1, 2]}"#)));
        assert!(op.kind.finishes());
        let op = parse(r#"{"op":"complete","id":"t","lease":"l","result":null}"#).unwrap();
        assert_eq!(op.kind, Kind::Complete(Outcome::Json("null")));
        let op = parse(r#"{"op":"complete","id":"t","lease":"l","text":"a\nb"}"#).unwrap();
        assert_eq!(op.kind, Kind::Complete(Outcome::Text("a\nb".into())));
        let op =
            parse(r#"{"op":"fail","id":"t","lease":"l","error":"disk","retry":true,"ref":"x"}"#)
                .unwrap();
        assert_eq!(
            op.kind,
            Kind::Fail {
                error: "disk".into(),
                retry: true
            }
        );
        assert_eq!(op.reference.map(RawValue::get), Some(r#""x""#));
    }

    #[test]
    fn borrows_from_the_frame() {
        let op = parse(r#"{"op":"fail","id":"t","lease":"l","error":"plain"}"#).unwrap();
        assert!(matches!(op.id, Cow::Borrowed(_)));
        assert!(matches!(
            op.kind,
            Kind::Fail {
                error: Cow::Borrowed(_),
                retry: false
            }
        ));
    }

    #[test]
    fn refuses_what_is_not_an_op_and_keeps_its_ref() {
        for (frame, ref_, id) in [
            ("not json", None, None),
            (
                r#"{"op":"nap","id":"t","lease":"l","ref":1}"#,
                Some("1"),
                Some("t"),
            ),
            (
                r#"{"op":"complete","id":"t","lease":"l","ref":2}"#,
                Some("2"),
                Some("t"),
            ),
            (
                r#"{"op":"complete","id":"t","lease":"l","result":1,"text":"x"}"#,
                None,
                Some("t"),
            ),
            (r#"{"op":"fail","id":"t","lease":"l"}"#, None, Some("t")),
            (
                r#"{"op":"progress","id":"t","lease":"l","progress":2}"#,
                None,
                Some("t"),
            ),
            (
                r#"{"op":"progress","id":"t","progress":0.1,"ref":3}"#,
                Some("3"),
                Some("t"),
            ),
            (
                r#"{"op":"progress","id":"t","lease":"l","extra":1,"ref":4}"#,
                Some("4"),
                Some("t"),
            ),
            (
                r#"{"op":"progress","id":"t","lease":"l","error":"x"}"#,
                None,
                Some("t"),
            ),
            (r#"[1,2]"#, None, None),
        ] {
            let refused = parse(frame).unwrap_err();
            assert_eq!(refused.reference.map(RawValue::get), ref_, "{frame}");
            assert_eq!(refused.id.as_deref(), id, "{frame}");
            assert!(!refused.why.is_empty());
        }
    }

    #[test]
    fn encodes_the_answers() {
        let r = RawValue::from_string("\"a\"".into()).unwrap();
        assert_eq!(
            ok(Some(&r), "t", "succeeded"),
            r#"{"type":"ok","ref":"a","id":"t","status":"succeeded"}"#
        );
        assert_eq!(
            ok(None, "t", "running"),
            r#"{"type":"ok","id":"t","status":"running"}"#
        );
        assert_eq!(
            error(None, Some("t"), "conflict", "lost \"it\"", 409),
            r#"{"type":"error","id":"t","error":{"code":"conflict","message":"lost \"it\""},"status":409}"#
        );
        assert_eq!(
            task(br#"{"lease":{"expires":"2026-01-01T00:00:00.000Z","token":"k"},"task":{"id":"t"}}"#),
            r#"{"type":"task","lease":{"expires":"2026-01-01T00:00:00.000Z","token":"k"},"task":{"id":"t"}}"#
        );
    }
}
