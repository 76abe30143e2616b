//! herald's engine: the event model, cursors, topics and their fan-out, the
//! storage trait with its backends, and the hub that ties them together.
//!
//! Nothing here knows HTTP. The server crate turns requests into calls on a
//! [`Hub`] and the values it returns into bytes on a transport.

pub mod cursor;
pub mod error;
pub mod event;
pub mod fanout;
pub mod heartbeat;
pub mod hub;
pub mod long_poll;
pub mod name;
pub mod presence;
pub mod store;
pub mod subscription;
pub mod task;

pub use cursor::{Cursor, CursorInput};
pub use error::StoreError;
pub use event::{Event, EventId};
pub use hub::{Hub, HubConfig, PollAnswer};
pub use name::{EventType, NameError, Topic};
pub use store::{Retention, Store};
pub use subscription::{Next, Subscription};
