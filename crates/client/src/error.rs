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
            Error::Decode(e.to_string())
        } else {
            Error::Transport(e.to_string())
        }
    }
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
