//! How much one client, and all of them, may take: open connections,
//! open subscriptions per client, publishes per second per client. A
//! client is its token's subject, else its address ([`ClientId`]). Every
//! refusal is counted in `herald_refused_total{reason}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::ApiError;

/// The client a limit counts: the token's subject, else the address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientId {
    Subject(String),
    Address(std::net::IpAddr),
    Unknown,
}

/// The limits, as configured (`None`: no limit).
#[derive(Debug, Clone, Copy)]
pub struct LimitConfig {
    pub max_connections: Option<usize>,
    pub max_subscriptions_per_client: Option<usize>,
    /// Events per second per client; bursts of twice as many.
    pub publish_rate: Option<f64>,
    pub max_topics_per_subscription: usize,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig {
            max_connections: None,
            max_subscriptions_per_client: None,
            publish_rate: None,
            max_topics_per_subscription: 64,
        }
    }
}

pub use crate::error::refused;

/// The live counts the limits are checked against.
#[derive(Debug, Default)]
pub struct Limits {
    config: LimitConfig,
    connections: AtomicUsize,
    subscriptions: Mutex<HashMap<ClientId, usize>>,
    buckets: Mutex<HashMap<ClientId, Bucket>>,
}

impl Limits {
    pub fn new(config: LimitConfig) -> Arc<Limits> {
        Arc::new(Limits {
            config,
            ..Limits::default()
        })
    }

    pub fn config(&self) -> &LimitConfig {
        &self.config
    }

    /// A new connection: its place, or `None` at `--max-connections`.
    pub fn connection(self: &Arc<Self>) -> Option<Connection> {
        let now = self.connections.fetch_add(1, Ordering::AcqRel);
        if self.config.max_connections.is_some_and(|max| now >= max) {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            refused("connections");
            return None;
        }
        Some(Connection(Arc::clone(self)))
    }

    /// A new subscription of `client` (stream, WebSocket or long poll): its
    /// place, or `429` at `--max-subscriptions-per-client`.
    pub fn subscription(self: &Arc<Self>, client: &ClientId) -> Result<Option<Slot>, ApiError> {
        let Some(max) = self.config.max_subscriptions_per_client else {
            return Ok(None);
        };
        let mut open = lock(&self.subscriptions);
        let count = open.entry(client.clone()).or_insert(0);
        if *count >= max {
            drop(open);
            refused("subscriptions");
            return Err(ApiError::TooMany {
                message: format!("at most {max} open subscriptions per client"),
                retry_after: 5,
            });
        }
        *count += 1;
        Ok(Some(Slot {
            limits: Arc::clone(self),
            client: client.clone(),
        }))
    }

    /// Charges `client` for publishing `events` events: `429` with the
    /// seconds until it may, beyond `--publish-rate`.
    pub fn publish(&self, client: &ClientId, events: usize) -> Result<(), ApiError> {
        let Some(rate) = self.config.publish_rate else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        // Full buckets say nothing: dropped now and then, so the map holds
        // only clients that published lately.
        if buckets.len() > 10_000 {
            buckets.retain(|_, b| !b.is_full(rate, now));
        }
        let bucket = buckets.entry(client.clone()).or_insert(Bucket {
            tokens: 2.0 * rate,
            at: now,
        });
        match bucket.take(rate, events as f64, now) {
            Ok(()) => Ok(()),
            Err(wait) => {
                drop(buckets);
                refused("publish_rate");
                Err(ApiError::TooMany {
                    message: format!("at most {rate} events per second per client"),
                    retry_after: wait.as_secs().max(1),
                })
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An open connection's place; given back when dropped.
#[derive(Debug)]
pub struct Connection(Arc<Limits>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An open subscription's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<Limits>,
    client: ClientId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = lock(&self.limits.subscriptions);
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// A token bucket: `2 × rate` deep, refilled at `rate` per second.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, rate: f64, now: Instant) {
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(2.0 * rate);
        self.at = now;
    }

    fn is_full(&mut self, rate: f64, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= 2.0 * rate
    }

    /// Takes `n` tokens, or says how long until there are enough. A
    /// batch larger than the whole bucket passes when the bucket is full,
    /// and leaves it in debt: otherwise it could never pass, however long
    /// its client waited, and the rate still holds on average.
    fn take(&mut self, rate: f64, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        let depth = 2.0 * rate;
        if self.tokens >= n || self.tokens >= depth {
            self.tokens -= n;
            return Ok(());
        }
        let short = n.min(depth) - self.tokens;
        Err(Duration::from_secs_f64((short / rate).ceil().max(1.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(n: u8) -> ClientId {
        ClientId::Subject(format!("c{n}"))
    }

    #[test]
    fn connections_are_counted_and_given_back() {
        let limits = Limits::new(LimitConfig {
            max_connections: Some(2),
            ..LimitConfig::default()
        });
        let a = limits.connection().unwrap();
        let _b = limits.connection().unwrap();
        assert!(limits.connection().is_none());
        drop(a);
        assert!(limits.connection().is_some());
    }

    #[test]
    fn subscriptions_are_per_client() {
        let limits = Limits::new(LimitConfig {
            max_subscriptions_per_client: Some(1),
            ..LimitConfig::default()
        });
        let one = limits.subscription(&client(1)).unwrap();
        assert!(limits.subscription(&client(1)).is_err());
        let _other = limits.subscription(&client(2)).unwrap();
        drop(one);
        assert!(limits.subscription(&client(1)).is_ok());
        assert!(lock(&limits.subscriptions).get(&client(1)).is_none());
    }

    #[test]
    fn a_bucket_allows_a_burst_of_twice_the_rate_then_the_rate() {
        let now = Instant::now();
        let mut b = Bucket {
            tokens: 20.0,
            at: now,
        };
        assert!(b.take(10.0, 20.0, now).is_ok());
        assert_eq!(b.take(10.0, 5.0, now), Err(Duration::from_secs(1)));
        assert!(b.take(10.0, 5.0, now + Duration::from_millis(500)).is_ok());
        // Larger than the whole bucket: refused until it is full (2 s),
        // then let through, leaving the bucket in debt.
        assert_eq!(b.take(10.0, 100.0, now), Err(Duration::from_secs(2)));
        let full = now + Duration::from_secs(3);
        assert!(b.take(10.0, 100.0, full).is_ok());
        assert_eq!(b.take(10.0, 1.0, full), Err(Duration::from_secs(9)));
    }
}
