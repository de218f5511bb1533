//! One connection's outbound queue: bounded in bytes, filled by the fan-out without
//! ever waiting, drained by the connection's own task in batches.
//!
//! A `std::sync::Mutex` is right here: it guards a few pointer moves, is never held
//! across an `.await`, and is contended only by one producer at a time against the
//! one consumer.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytestring::ByteString;
use tokio::sync::Notify;

/// Bookkeeping cost charged per queued frame on top of its payload, so that a flood
/// of empty frames is bounded too.
const FRAME_OVERHEAD: usize = 64;

/// Why the server is closing a connection; each maps to a WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The server is stopping (1001).
    Shutdown,
    /// The client did not keep up with its pushes (4008).
    SlowConsumer,
}

/// Result of offering a frame to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// The queue was full: it has been emptied and the connection marked for close.
    Overflowed,
    /// The connection is already closing.
    Closed,
}

#[derive(Default)]
struct State {
    frames: VecDeque<ByteString>,
    bytes: usize,
    closing: Option<CloseReason>,
}

/// Outbound queue of one connection.
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    limit_bytes: usize,
}

impl Outbox {
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            limit_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding this lock cannot leave the queue in a
        // state worse than "some frames"; keep serving rather than poison-cascade.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `frame` without waiting. Never blocks on the client.
    pub fn offer(&self, frame: &ByteString) -> Offer {
        let cost = frame.len() + FRAME_OVERHEAD;
        let mut state = self.lock();
        if state.closing.is_some() {
            return Offer::Closed;
        }
        if state.bytes + cost > self.limit_bytes {
            state.frames = VecDeque::new();
            state.bytes = 0;
            state.closing = Some(CloseReason::SlowConsumer);
            drop(state);
            self.ready.notify_one();
            return Offer::Overflowed;
        }
        let was_empty = state.frames.is_empty();
        state.frames.push_back(frame.clone());
        state.bytes += cost;
        drop(state);
        // Only the first frame of a batch needs to wake the writer.
        if was_empty {
            self.ready.notify_one();
        }
        Offer::Queued
    }

    /// Asks the connection to close; frames already queued are still sent first.
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.lock();
        if state.closing.is_none() {
            state.closing = Some(reason);
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Resolves when there is something to drain or a close was requested.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Moves every queued frame into `batch` and reports a pending close.
    pub fn drain(&self, batch: &mut Vec<ByteString>) -> Option<CloseReason> {
        let mut state = self.lock();
        batch.extend(state.frames.drain(..));
        state.bytes = 0;
        state.closing
    }

    /// Bytes waiting, as charged against the limit.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_empties_the_queue_and_marks_slow() {
        let outbox = Outbox::new(3 * (10 + FRAME_OVERHEAD));
        let frame = ByteString::from("0123456789");
        for _ in 0..3 {
            assert_eq!(outbox.offer(&frame), Offer::Queued);
        }
        assert_eq!(outbox.offer(&frame), Offer::Overflowed);
        assert_eq!(outbox.queued_bytes(), 0);
        assert_eq!(outbox.offer(&frame), Offer::Closed);
        let mut batch = Vec::new();
        assert_eq!(outbox.drain(&mut batch), Some(CloseReason::SlowConsumer));
        assert!(batch.is_empty());
    }

    #[test]
    fn drain_takes_everything_in_order() {
        let outbox = Outbox::new(1 << 20);
        for i in 0..5 {
            outbox.offer(&ByteString::from(i.to_string()));
        }
        outbox.close(CloseReason::Shutdown);
        let mut batch = Vec::new();
        assert_eq!(outbox.drain(&mut batch), Some(CloseReason::Shutdown));
        let texts: Vec<&str> = batch.iter().map(|b| &**b).collect();
        assert_eq!(texts, ["0", "1", "2", "3", "4"]);
    }
}
