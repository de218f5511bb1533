//! One connection's outbound queue: bounded in bytes, filled by the fan-out without
//! ever waiting, drained by the connection's writer (its response body, polled by the
//! HTTP dispatcher that owns the socket) as fast as the socket takes bytes.
//!
//! Frames are queued already encoded and shared ([`super::frame`]): an offer is a
//! reference-count bump and a queue push. The writer takes every queued frame in one
//! wake-up, so frames that piled up while the client was busy leave in one write.
//!
//! A `std::sync::Mutex` is right here: it guards a few pointer moves, is never held
//! across an `.await`, and is contended only by one producer at a time against the
//! one consumer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Notify;

use super::frame;
use super::wake::WakeBatch;

/// Bookkeeping cost charged per queued frame on top of its bytes, so that a flood
/// of empty frames is bounded too.
const FRAME_OVERHEAD: usize = 64;

/// Whole seconds since the first call: the coarse clock of `last_seen`, small enough
/// for an atomic and plenty for timeouts counted in seconds.
fn now_secs() -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let secs = EPOCH.get_or_init(Instant::now).elapsed().as_secs();
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// Why the server closes a connection; each maps to a WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The server is stopping (1001).
    Shutdown,
    /// The client did not keep up with its pushes (4008).
    SlowConsumer,
    /// Nothing arrived from the client for `heartbeat.idle_timeout_secs` (4001).
    IdleTimeout,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Shutdown => 1001,
            CloseReason::SlowConsumer => 4008,
            CloseReason::IdleTimeout => 4001,
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            CloseReason::Shutdown => "server shutting down",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::IdleTimeout => "idle timeout",
        }
    }
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

/// The close frame a closing connection sends after its queued frames.
struct Closing {
    code: u16,
    frame: Bytes,
    sent: bool,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Bytes>,
    bytes: usize,
    closing: Option<Closing>,
    /// The writer, when it found nothing to send.
    writer: Option<Waker>,
    /// Frames the writer has taken so far; a stall shows as no progress.
    taken: u64,
    /// `taken` at the previous [`Outbox::stalled_checks`], and how many checks in a
    /// row found frames waiting and no progress.
    taken_at_check: u64,
    stalled_checks: u32,
}

/// Outbound queue of one connection.
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the connection's reader task when a close is requested.
    closed: Notify,
    /// Where the writer is woken from, when it lives on another thread's batch.
    wake_batch: OnceLock<Arc<WakeBatch>>,
    /// When something last arrived from the client ([`now_secs`]).
    last_seen: AtomicU32,
    limit_bytes: usize,
}

impl Outbox {
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            closed: Notify::new(),
            wake_batch: OnceLock::new(),
            last_seen: AtomicU32::new(now_secs()),
            limit_bytes,
        }
    }

    /// Wakes the writer through `batch` (its thread's flusher) from now on.
    pub fn wake_writer_through(&self, batch: Arc<WakeBatch>) {
        let _ = self.wake_batch.set(batch);
    }

    fn wake_writer(&self, writer: Waker) {
        match self.wake_batch.get() {
            Some(batch) => batch.defer(writer),
            None => writer.wake(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding this lock cannot leave the queue in a
        // state worse than "some frames"; keep serving rather than poison-cascade.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues an encoded `frame` without waiting. Never blocks on the client.
    pub fn offer(&self, frame: &Bytes) -> Offer {
        let cost = frame.len() + FRAME_OVERHEAD;
        let mut state = self.lock();
        if state.closing.is_some() {
            return Offer::Closed;
        }
        if state.bytes + cost > self.limit_bytes {
            state.frames = VecDeque::new();
            state.bytes = 0;
            self.start_closing(
                state,
                CloseReason::SlowConsumer.code(),
                close_frame(CloseReason::SlowConsumer),
            );
            return Offer::Overflowed;
        }
        state.frames.push_back(frame.clone());
        state.bytes += cost;
        let writer = state.writer.take();
        drop(state);
        if let Some(writer) = writer {
            self.wake_writer(writer);
        }
        Offer::Queued
    }

    /// Asks the connection to close with `reason`; frames already queued are sent
    /// first. The first close requested wins.
    pub fn close(&self, reason: CloseReason) {
        self.close_with(reason.code(), close_frame(reason));
    }

    /// Like [`Outbox::close`] with any close `code` and the encoded close `frame`.
    pub fn close_with(&self, code: u16, frame: Bytes) {
        let state = self.lock();
        if state.closing.is_none() {
            self.start_closing(state, code, frame);
        }
    }

    fn start_closing(&self, mut state: std::sync::MutexGuard<'_, State>, code: u16, frame: Bytes) {
        state.closing = Some(Closing {
            code,
            frame,
            sent: false,
        });
        let writer = state.writer.take();
        drop(state);
        if let Some(writer) = writer {
            self.wake_writer(writer);
        }
        self.closed.notify_one();
    }

    /// The close code once a close was requested.
    pub fn closing(&self) -> Option<u16> {
        self.lock().closing.as_ref().map(|c| c.code)
    }

    /// Resolves once a close was requested (for the task that reads the client).
    pub async fn closed(&self) -> u16 {
        loop {
            if let Some(code) = self.closing() {
                return code;
            }
            // `notify_one` leaves a permit when nobody waits, so a close between
            // the check above and this await is not missed.
            self.closed.notified().await;
        }
    }

    /// The next frame to write: queued frames in order, then the close frame once
    /// a close was requested; `None` after that.
    pub fn try_next(&self) -> Option<Bytes> {
        let mut state = self.lock();
        Self::next_locked(&mut state)
    }

    fn next_locked(state: &mut State) -> Option<Bytes> {
        if let Some(frame) = state.frames.pop_front() {
            state.bytes -= frame.len() + FRAME_OVERHEAD;
            state.taken += 1;
            return Some(frame);
        }
        match &mut state.closing {
            Some(closing) if !closing.sent => {
                closing.sent = true;
                Some(closing.frame.clone())
            }
            _ => None,
        }
    }

    /// The writer's side: `Ready(Some(frame))` to write, `Ready(None)` when the
    /// close frame has gone and the stream ends, `Pending` until there is more.
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut state = self.lock();
        if let Some(frame) = Self::next_locked(&mut state) {
            return Poll::Ready(Some(frame));
        }
        if state.closing.is_some() {
            return Poll::Ready(None);
        }
        match &state.writer {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.writer = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Records that something arrived from the client.
    pub fn touch(&self) {
        self.last_seen.store(now_secs(), Ordering::Relaxed);
    }

    /// Whole seconds since something last arrived from the client.
    pub fn idle_secs(&self) -> u32 {
        now_secs().saturating_sub(self.last_seen.load(Ordering::Relaxed))
    }

    /// Called at a steady pace by the heartbeat: how many calls in a row found
    /// frames waiting while the writer took none (the client stopped reading).
    pub fn stalled_checks(&self) -> u32 {
        let mut state = self.lock();
        if state.frames.is_empty() || state.taken != state.taken_at_check {
            state.stalled_checks = 0;
        } else {
            state.stalled_checks += 1;
        }
        state.taken_at_check = state.taken;
        state.stalled_checks
    }

    /// Bytes waiting, as charged against the limit.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }
}

fn close_frame(reason: CloseReason) -> Bytes {
    frame::close(reason.code(), reason.description())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(outbox: &Outbox) -> Vec<String> {
        std::iter::from_fn(|| outbox.try_next())
            .map(|f| {
                let (_, payload) = frame::parse(&f).unwrap();
                String::from_utf8_lossy(payload).into_owned()
            })
            .collect()
    }

    #[test]
    fn overflow_empties_the_queue_and_ends_with_4008() {
        let one = frame::text("0123456789");
        let outbox = Outbox::new(3 * (one.len() + FRAME_OVERHEAD));
        for _ in 0..3 {
            assert_eq!(outbox.offer(&one), Offer::Queued);
        }
        assert_eq!(outbox.offer(&one), Offer::Overflowed);
        assert_eq!(outbox.queued_bytes(), 0);
        assert_eq!(outbox.offer(&one), Offer::Closed);
        assert_eq!(outbox.closing(), Some(4008));
        let close = outbox.try_next().unwrap();
        assert_eq!(frame::parse(&close).unwrap().1[..2], 4008u16.to_be_bytes());
        assert!(outbox.try_next().is_none());
    }

    #[test]
    fn queued_frames_go_before_the_close_frame() {
        let outbox = Outbox::new(1 << 20);
        for i in 0..5 {
            outbox.offer(&frame::text(&i.to_string()));
        }
        outbox.close(CloseReason::Shutdown);
        outbox.close(CloseReason::IdleTimeout);
        assert_eq!(outbox.closing(), Some(1001), "the first close wins");
        let sent = texts(&outbox);
        assert_eq!(sent[..5], ["0", "1", "2", "3", "4"]);
        assert!(sent[5].ends_with("server shutting down"));
        assert_eq!(sent.len(), 6);
    }

    #[test]
    fn a_stall_is_waiting_frames_without_progress() {
        let outbox = Outbox::new(1 << 20);
        assert_eq!(outbox.stalled_checks(), 0, "nothing waits");
        outbox.offer(&frame::text("a"));
        assert_eq!(outbox.stalled_checks(), 1);
        assert_eq!(outbox.stalled_checks(), 2);
        outbox.offer(&frame::text("b"));
        outbox.try_next();
        assert_eq!(outbox.stalled_checks(), 0, "the writer took one");
        assert_eq!(outbox.stalled_checks(), 1);
    }
}
