//! HTTP/1 as the direct path speaks it, as functions over buffers with no
//! I/O: reading request heads from what has arrived ([`head`]), writing
//! response heads ([`head::response`]), chunk framing ([`chunk`]), and
//! writing a queue of shared buffers to something that may take only part
//! of them ([`write`]). The direct path ([`crate::direct`]) wraps these
//! around a socket; the tests here drive them with split reads and capped
//! writes.

pub mod chunk;
pub mod head;
pub mod write;
