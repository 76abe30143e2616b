//! The errors of the engine.

/// A store could not do what was asked. Every variant but
/// [`StoreError::OutcomeUnknown`] means "nothing was changed": a failed
/// append stored none of its events.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or written now (disk full, Redis down);
    /// the client may retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store has no room to write: its disk is full, or it reached the
    /// size it may grow to. Nothing was changed; writes may succeed again
    /// once room is made (retention drops events, an operator frees space).
    #[error("store full: {0}")]
    Full(String),
    /// A write was sent and no answer came back, and sending it again (it
    /// carries its own id, so a second arrival changes nothing) got no
    /// answer either: it may or may not have been applied. Only a store on
    /// the network (Redis) can say this.
    #[error("store outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// Something that should not happen; details are for the log, not the
    /// client.
    #[error("store failure: {0}")]
    Internal(String),
}
