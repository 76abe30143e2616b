//! herald's wire formats, as pure functions over bytes: no sockets, no clocks.
//!
//! Encoders take an event's fields and return bytes that the server shares
//! with every subscriber; decoders are fed bytes in arbitrary chunks and yield
//! what they have decoded so far, so the same code serves the server, the
//! client library and the tests.

pub mod json;
pub mod ndjson;
pub mod sse;
pub mod time;

pub use json::WireEvent;
