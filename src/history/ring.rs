//! The embedded-mode history: the last `history.size` pushes of this process, for
//! `history.ttl_secs`, in memory. The bus assigns each push its offset here, under
//! the same lock that hands it to the fan-out, so offset order is fan-out order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Entry, Read, Stamp};
use crate::config::HistorySettings;
use crate::push::Push;

/// A ring of at most `size` entries; entries older than `ttl` are dropped as it is
/// appended to or read.
#[derive(Debug)]
pub struct Ring {
    epoch: u64,
    /// The newest offset assigned (0: none yet).
    head: u64,
    size: usize,
    ttl: Duration,
    entries: VecDeque<(Instant, Entry)>,
}

impl Ring {
    /// An empty history in a new epoch.
    pub fn new(settings: &HistorySettings) -> Self {
        Self {
            epoch: super::new_epoch(),
            head: 0,
            size: settings.size,
            ttl: Duration::from_secs(settings.ttl_secs),
            entries: VecDeque::with_capacity(settings.size.min(4096)),
        }
    }

    /// Gives `push` the next offset and records it (when `size > 0`).
    pub fn append(&mut self, push: &Push, now: Instant) -> Stamp {
        self.head += 1;
        self.expire(now);
        if self.size > 0 {
            if self.entries.len() >= self.size {
                self.entries.pop_front();
            }
            self.entries.push_back((
                now,
                Entry {
                    offset: self.head,
                    target: push.target.clone(),
                    exclude: push.exclude,
                    event: push.event.clone(),
                    user_id: push.user_id.clone(),
                    payload: push.payload.clone(),
                },
            ));
        }
        self.head()
    }

    /// The newest position.
    pub fn head(&self) -> Stamp {
        Stamp {
            epoch: self.epoch,
            offset: self.head,
        }
    }

    /// Entries kept now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The head, and with `since` (a position in this ring's epoch, checked by the
    /// caller) every entry after it when the ring still holds all of them, else
    /// `None`: never part of them.
    pub fn read(&mut self, since: Option<u64>, now: Instant) -> Read {
        self.expire(now);
        let replay = since.and_then(|since| self.after(since));
        Read {
            head: self.head(),
            replay,
        }
    }

    fn after(&self, since: u64) -> Option<Vec<Entry>> {
        if self.size == 0 || since > self.head {
            return None;
        }
        if since == self.head {
            return Some(Vec::new());
        }
        // Offsets are contiguous: the ring covers `since` iff it still holds since+1.
        let first = self.entries.front()?.1.offset;
        if first > since + 1 {
            return None;
        }
        let skip = usize::try_from(since + 1 - first).ok()?;
        Some(
            self.entries
                .iter()
                .skip(skip)
                .map(|(_, e)| e.clone())
                .collect(),
        )
    }

    fn expire(&mut self, now: Instant) {
        while self
            .entries
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > self.ttl)
        {
            self.entries.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::Target;

    fn ring(size: usize, ttl_secs: u64) -> Ring {
        Ring::new(&HistorySettings {
            size,
            ttl_secs,
            ..HistorySettings::default()
        })
    }

    fn push(text: &str) -> Push {
        Push::new(Target::All, text.to_string())
    }

    fn offsets(read: &Read) -> Option<Vec<u64>> {
        read.replay
            .as_ref()
            .map(|entries| entries.iter().map(|e| e.offset).collect())
    }

    #[test]
    fn offsets_are_contiguous_and_a_replay_is_all_after_since() {
        let mut ring = ring(3, 60);
        let now = Instant::now();
        assert_eq!(ring.read(None, now).head.offset, 0);
        assert_eq!(offsets(&ring.read(Some(0), now)), Some(vec![]));
        for i in 1..=5 {
            assert_eq!(ring.append(&push(&i.to_string()), now).offset, i);
        }
        assert_eq!(ring.len(), 3, "at most size entries");
        assert_eq!(offsets(&ring.read(Some(2), now)), Some(vec![3, 4, 5]));
        assert_eq!(offsets(&ring.read(Some(4), now)), Some(vec![5]));
        assert_eq!(offsets(&ring.read(Some(5), now)), Some(vec![]));
        assert_eq!(
            offsets(&ring.read(Some(1), now)),
            None,
            "4 is gone: nothing"
        );
        assert_eq!(offsets(&ring.read(Some(6), now)), None, "past the head");
    }

    #[test]
    fn expired_entries_uncover_their_positions() {
        let mut ring = ring(10, 5);
        let then = Instant::now();
        ring.append(&push("old"), then);
        ring.append(&push("new"), then + Duration::from_secs(4));
        let now = then + Duration::from_secs(7);
        assert_eq!(offsets(&ring.read(Some(1), now)), Some(vec![2]));
        assert_eq!(offsets(&ring.read(Some(0), now)), None, "1 expired");
        let later = then + Duration::from_secs(20);
        assert_eq!(
            offsets(&ring.read(Some(2), later)),
            Some(vec![]),
            "at the head"
        );
        assert!(ring.is_empty());
    }

    #[test]
    fn size_zero_keeps_offsets_and_covers_nothing() {
        let mut ring = ring(0, 60);
        let now = Instant::now();
        assert_eq!(ring.append(&push("a"), now).offset, 1);
        assert!(ring.is_empty());
        assert_eq!(offsets(&ring.read(Some(1), now)), None);
        assert_eq!(offsets(&ring.read(Some(0), now)), None);
    }
}
