//! The errors of the engine.

/// A store could not do what was asked. Every variant means "nothing was
/// changed": a failed append stored none of its events.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or written now (disk full, Redis down);
    /// the client may retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Something that should not happen; details are for the log, not the
    /// client.
    #[error("store failure: {0}")]
    Internal(String),
}
