//! The one error type of the client.

/// What can go wrong talking to herald.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the request with its JSON error.
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The server answered something this client does not expect.
    #[error("unexpected answer {status}: {body}")]
    Unexpected { status: u16, body: String },
    /// The request did not get an answer (connection refused, reset, …).
    #[error("transport: {0}")]
    Transport(String),
    /// An answer could not be decoded.
    #[error("decode: {0}")]
    Decode(String),
    /// The base URL is not usable.
    #[error("bad URL: {0}")]
    Url(String),
    /// The token cannot be sent (a character no header may carry).
    #[error("bad token: {0}")]
    Token(String),
}

impl Error {
    /// Whether retrying the same request later may succeed: transport
    /// failures and `503`.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport(_) => true,
            Error::Api { status, .. } | Error::Unexpected { status, .. } => {
                *status == 503 || *status == 502
            }
            Error::Decode(_) | Error::Url(_) | Error::Token(_) => false,
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Unexpected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        if e.is_decode() {
            return Error::Decode(e.to_string());
        }
        let cause = if e.is_timeout() {
            Some("timed out".to_owned())
        } else {
            cause(&e)
        };
        let what = match e.url() {
            Some(url) => format!("{} {url}", doing(&e)),
            None => doing(&e).to_owned(),
        };
        Error::Transport(match cause {
            Some(cause) => format!("{cause} ({what})"),
            None => chain(&e),
        })
    }
}

/// What a reqwest error was doing, for its message.
fn doing(e: &reqwest::Error) -> &'static str {
    if e.is_connect() {
        "connecting to"
    } else if e.is_body() {
        "reading the body of"
    } else {
        "requesting"
    }
}

/// A transport failure other than reqwest's (a WebSocket's, say): its cause
/// in plain words and then what it said, or its whole chain.
pub(crate) fn transport(error: &(dyn std::error::Error + 'static)) -> Error {
    Error::Transport(match cause(error) {
        Some(cause) => format!("{cause} ({error})"),
        None => chain(error),
    })
}

/// The cause of a transport failure in plain words — `connection refused`,
/// `timed out`, `DNS lookup failed: …`, `TLS handshake failed: …` — found by
/// walking [`std::error::Error::source`] down to the I/O or TLS error; `None`
/// when no known cause is in the chain.
pub(crate) fn cause(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    use std::io::ErrorKind;
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(format!("TLS handshake failed: {tls}"));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let plain = match io.kind() {
                ErrorKind::ConnectionRefused => Some("connection refused"),
                ErrorKind::ConnectionReset => Some("connection reset by the server"),
                ErrorKind::ConnectionAborted => Some("connection aborted"),
                ErrorKind::TimedOut => Some("timed out"),
                ErrorKind::UnexpectedEof => Some("the server closed the connection"),
                ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                    Some("host unreachable")
                }
                _ => None,
            };
            if let Some(plain) = plain {
                return Some(plain.to_owned());
            }
            // An io::Error's `source` skips the error it wraps (often
            // another io::Error around rustls's): go into it instead.
            if let Some(inner) = io.get_ref() {
                next = Some(inner);
                continue;
            }
        }
        let text = e.to_string();
        if text.starts_with("dns error") {
            let detail = e.source().map(|s| s.to_string()).unwrap_or_default();
            return Some(format!("DNS lookup failed: {detail}"));
        }
        next = e.source();
    }
    None
}

/// Every message of an error's chain, joined by `: `, each once.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}

/// Turns a non-success answer into an [`Error`], reading herald's JSON error
/// when there is one.
pub(crate) async fn from_response(response: reqwest::Response) -> Error {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    from_body(status, body)
}

/// Turns a non-success status and its body into an [`Error`].
pub(crate) fn from_body(status: u16, body: String) -> Error {
    match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(v) if v["error"]["code"].is_string() => Error::Api {
            status,
            code: v["error"]["code"].as_str().unwrap_or_default().to_owned(),
            message: v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        },
        _ => Error::Unexpected { status, body },
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// An error whose `source` is `inner`, as hyper's are.
    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Outer(#[source] io::Error);

    #[test]
    fn the_cause_is_found_under_wrappers() {
        let refused = Outer(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(cause(&refused).as_deref(), Some("connection refused"));
        // rustls's error inside an io::Error inside another, as
        // reqwest's TLS connector reports a plain server.
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        let wrapped = Outer(io::Error::other(tls));
        let said = cause(&wrapped).unwrap_or_default();
        assert!(said.starts_with("TLS handshake failed: "), "{said}");
        assert_eq!(cause(&Outer(io::Error::other("what"))), None);
        assert_eq!(
            chain(&Outer(io::Error::other("what"))),
            "client error (Connect): what"
        );
    }
}
