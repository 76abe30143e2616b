//! The names the seed articles' routes use: the topic behind
//! `/api/notifications` and the queue behind `/api/queue`. A leaf, so the
//! routes, the subscribe decision and the gate share them without
//! depending on each other.

/// The topic behind `/api/notifications`.
pub const NOTIFICATIONS_TOPIC: &str = "api.notifications";
/// The type of every notification event.
pub const NOTIFICATION_EVENT: &str = "notification";
/// The comment line each notification event carries, as in the article.
pub const NOTIFICATION_COMMENT: &[u8] = b": notification\n";
/// The queue behind `/api/queue`.
pub const ARTICLE_QUEUE: &str = "default";
