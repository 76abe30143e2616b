//! Who follows which topic on this node: per topic, how many subscriptions
//! are open, for `GET /topics`. The fan-out's rings cannot tell: a lot of
//! caught-up streams shares one watch, and a catch-up may hold a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::name::Topic;

/// The counts of one node.
#[derive(Debug, Default)]
pub struct Presence {
    /// A std mutex: each critical section is a few map updates, no `.await`.
    counts: Mutex<HashMap<Topic, usize>>,
}

impl Presence {
    fn lock(&self) -> MutexGuard<'_, HashMap<Topic, usize>> {
        // Each update is whole before the guard drops.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one subscription of `topics` until the guard is dropped.
    pub fn enter(self: &Arc<Self>, topics: &[Topic]) -> Present {
        let mut counts = self.lock();
        for t in topics {
            *counts.entry(t.clone()).or_default() += 1;
        }
        Present {
            presence: Arc::clone(self),
            topics: topics.to_vec(),
        }
    }

    /// Open subscriptions of `topic` on this node.
    pub fn count(&self, topic: &Topic) -> usize {
        self.lock().get(topic).copied().unwrap_or(0)
    }
}

/// One subscription, counted until dropped.
#[derive(Debug)]
pub struct Present {
    presence: Arc<Presence>,
    topics: Vec<Topic>,
}

impl Drop for Present {
    fn drop(&mut self) {
        let mut counts = self.presence.lock();
        for t in &self.topics {
            if let Some(n) = counts.get_mut(t) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(t);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_open_subscriptions_per_topic() {
        let presence = Arc::new(Presence::default());
        let (a, b) = (Topic::new("a").unwrap(), Topic::new("b").unwrap());
        let one = presence.enter(&[a.clone(), b.clone()]);
        let two = presence.enter(std::slice::from_ref(&a));
        assert_eq!((presence.count(&a), presence.count(&b)), (2, 1));
        drop(one);
        assert_eq!((presence.count(&a), presence.count(&b)), (1, 0));
        drop(two);
        assert!(presence.lock().is_empty());
    }
}
