//! The events of pages read lately that someone still holds, by topic and
//! id: a new read of the same rows hands those out instead of its own copies.
//!
//! A SQLite or Redis read builds every event anew. In a storm, clients a
//! page or so apart read the same rows in different reads, and each holds
//! its own copy (the data and, once written, its SSE encoding) until its
//! socket took it all. A stored event never changes and its id is never
//! given out again, so any copy still in memory will do: this way a storm
//! holds and encodes each event about once, as the memory store does. Only
//! events someone holds are found; nothing here keeps one alive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::event::{Event, EventId};
use crate::name::Topic;
use crate::store::Page;

/// Below this many entries, dead ones are left until the next sweep.
const FIRST_SWEEP: usize = 4096;

/// Copies of recently read events, while held.
#[derive(Default)]
pub(super) struct Recent {
    /// A std mutex, held for one page's lookups with no `.await` inside.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    topics: HashMap<Topic, HashMap<EventId, Weak<Event>>>,
    /// Entries, live or dead.
    len: usize,
    /// `len` at which dead entries are swept: twice what was live at the
    /// last sweep, so sweeping costs O(1) per entry added.
    sweep_at: usize,
}

impl Recent {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent at each step (a
        // stale `len` only moves a sweep).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Swaps each event of `page` (read from `topic`) for the copy already
    /// in memory, if any, and notes the others.
    pub(super) fn share(&self, topic: &Topic, page: &mut Page) {
        if page.events.is_empty() {
            return;
        }
        let mut state = self.lock();
        let State { topics, len, .. } = &mut *state;
        let known = topics.entry(topic.clone()).or_default();
        for event in &mut page.events {
            match known.get(&event.id).and_then(Weak::upgrade) {
                Some(live) => *event = live,
                None => {
                    if known.insert(event.id, Arc::downgrade(event)).is_none() {
                        *len += 1;
                    }
                }
            }
        }
        if state.len >= state.sweep_at.max(FIRST_SWEEP) {
            state.sweep();
        }
    }

    /// Entries kept, live or dead, for tests.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len
    }
}

impl State {
    /// Forgets the events nobody holds any more.
    fn sweep(&mut self) {
        self.topics.retain(|_, known| {
            known.retain(|_, e| e.strong_count() > 0);
            !known.is_empty()
        });
        self.len = self.topics.values().map(HashMap::len).sum();
        self.sweep_at = 2 * self.len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::EventType;

    fn page(topic: &Topic, seqs: std::ops::Range<u64>) -> Page {
        let events: Vec<Arc<Event>> = seqs
            .map(|seq| {
                Arc::new(Event::new(
                    EventId { ms: 1, seq },
                    topic.clone(),
                    EventType::message(),
                    format!("{seq}"),
                ))
            })
            .collect();
        Page {
            next: events.last().map_or(EventId::START, |e| e.id),
            events,
            gap: false,
        }
    }

    #[test]
    fn overlapping_reads_hand_out_one_copy() {
        let recent = Recent::default();
        let (t, u) = (Topic::new("t").unwrap(), Topic::new("u").unwrap());
        let mut first = page(&t, 0..4);
        recent.share(&t, &mut first);
        let mut second = page(&t, 2..6);
        recent.share(&t, &mut second);
        assert!(Arc::ptr_eq(&first.events[2], &second.events[0]));
        assert!(Arc::ptr_eq(&first.events[3], &second.events[1]));
        assert_eq!(second.events[2].id.seq, 4);
        // Another topic's ids are other events.
        let mut other = page(&u, 0..1);
        recent.share(&u, &mut other);
        assert!(!Arc::ptr_eq(&first.events[0], &other.events[0]));
    }

    #[test]
    fn an_event_nobody_holds_is_read_afresh_and_forgotten() {
        let recent = Recent::default();
        let t = Topic::new("t").unwrap();
        let mut first = page(&t, 0..1);
        recent.share(&t, &mut first);
        drop(first);
        let mut again = page(&t, 0..1);
        let fresh = Arc::clone(&again.events[0]);
        recent.share(&t, &mut again);
        assert!(Arc::ptr_eq(&again.events[0], &fresh));
        assert_eq!(recent.len(), 1);
        drop((again, fresh));
        // Pages nobody keeps: the entries stay below two sweeps' worth.
        for k in 0..10u64 {
            let from = 1 + k * FIRST_SWEEP as u64;
            let mut p = page(&t, from..from + FIRST_SWEEP as u64);
            recent.share(&t, &mut p);
        }
        assert!(recent.len() <= FIRST_SWEEP);
    }
}
