//! One connection's outbound side: a queue bounded in bytes in front of its socket.
//!
//! A frame offered to an idle connection goes straight into the socket: the fan-out
//! writes it with one non-blocking `write`, on the thread that owns the connection,
//! and nobody is woken. Only when the kernel's send buffer is full (or frames are
//! already waiting) is the frame queued; the connection's task then waits until the
//! socket drains and writes everything queued in one vectored write. So a push to an
//! idle page costs each connection one syscall and no allocation, and a slow client
//! costs its own queue, never anyone else's time.
//!
//! Frames are queued already encoded and shared ([`super::frame`]): a queued frame is
//! a reference-count bump. Whoever writes holds the lock for the duration of that
//! non-blocking write, so bytes of two frames never interleave.
//!
//! A `std::sync::Mutex` is right here: it is never held across an `.await`, and is
//! taken by the connection's own thread except for the heartbeat's pings and closes.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;

use super::frame;
use crate::history::Stamp;

/// Bookkeeping cost charged per queued frame on top of its bytes, so that a flood
/// of empty frames is bounded too.
const FRAME_OVERHEAD: usize = 64;

/// Frames handed to the kernel in one vectored write at most.
const WRITE_BATCH: usize = 64;

/// Whole seconds since the first call: the coarse clock of `last_seen`, small enough
/// for an atomic and plenty for timeouts counted in seconds.
fn now_secs() -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let secs = EPOCH.get_or_init(Instant::now).elapsed().as_secs();
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// The socket side of an outbox: a non-blocking vectored write. The gateway
/// implements it for the connection's TCP stream.
pub trait Wire: Send + Sync {
    /// Writes what the socket takes now of `buf`; `WouldBlock` when it takes nothing.
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;

    /// [`Wire::try_write`] for several buffers at once.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
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
    /// Written to the socket, or queued behind frames that are.
    Queued,
    /// The queue was full: it has been emptied and the connection marked for close.
    Overflowed,
    /// The connection is already closing, or its socket broke.
    Closed,
    /// A `?recover=1` connection had it already: its position at connect (the
    /// floor) is at or past the push's offset, so the push was replayed or came
    /// before the welcome.
    Skipped,
}

/// What a [`Outbox::flush`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued is written; nothing more to do until the next offer.
    Idle,
    /// The socket took less than was queued: wait until it can take more.
    Blocked,
    /// The close frame is written (with this code): the connection is over.
    Closed(u16),
    /// The socket failed: the connection is gone.
    Broken,
}

/// The close frame a closing connection sends after its queued frames.
struct Closing {
    code: u16,
    /// What is left to write of the close frame.
    frame: Bytes,
    sent: bool,
}

#[derive(Default)]
struct State {
    /// Frames waiting; the first one may be partly written already.
    frames: VecDeque<Bytes>,
    /// The first frame is partly written and must be finished before anything else.
    front_started: bool,
    bytes: usize,
    closing: Option<Closing>,
    /// A write failed: nothing more will be written.
    broken: bool,
    /// The connection's task, woken when it has something to write.
    writer: Option<Waker>,
    /// Frames the socket has taken so far; a stall shows as no progress.
    taken: u64,
    /// `taken` at the previous [`Outbox::stalled_checks`], and how many checks in a
    /// row found frames waiting and no progress.
    taken_at_check: u64,
    stalled_checks: u32,
    /// `Some` for a `?recover=1` connection (see [`Recovering`]).
    recovering: Option<Recovering>,
    /// A Pusher connection: a slow consumer is closed with 4100 (pusher-js retries
    /// after a second) rather than 4008 (which would stop it for good).
    pusher: bool,
}

/// A `?recover=1` connection's side of the seam between its replay and live pushes
/// (DESIGN.md "Recovery": no gap and no duplicate at the seam).
///
/// The connection joins the hub *holding*, before its position is read: every push
/// offered from then on is held here (bounded by the queue limit, like any queue),
/// while the connection's own task writes the welcome and the replay. [`Outbox::release`]
/// then keeps the held pushes after the position read (the floor) and drops the
/// rest; from then on a push at or below the floor is skipped: this node's bus may
/// deliver pushes published before the read after it.
#[derive(Default)]
struct Recovering {
    holding: bool,
    held: VecDeque<(Option<Stamp>, Bytes)>,
    floor: Option<Stamp>,
}

impl Recovering {
    /// Whether the connection had the push at `stamp` already.
    fn below_floor(&self, stamp: Option<Stamp>) -> bool {
        match (stamp, self.floor) {
            (Some(stamp), Some(floor)) => {
                stamp.epoch == floor.epoch && stamp.offset <= floor.offset
            }
            _ => false,
        }
    }
}

impl State {
    /// Something is waiting for the socket (queued frames or an unsent close frame).
    fn has_pending(&self) -> bool {
        !self.frames.is_empty() || self.closing.as_ref().is_some_and(|c| !c.sent)
    }

    /// The socket failed: the connection's task will end the connection.
    fn mark_broken(&mut self) -> Offer {
        self.broken = true;
        self.wake_writer();
        Offer::Closed
    }

    fn wake_writer(&mut self) {
        if let Some(writer) = &self.writer {
            writer.wake_by_ref();
        }
    }

    /// No more frames are taken: a close was requested or the socket broke.
    fn refuses_frames(&self) -> bool {
        self.closing.is_some() || self.broken
    }

    /// Whether `frame` can be queued within `limit` bytes.
    fn fits(&self, frame: &Bytes, limit: usize) -> bool {
        self.bytes + frame.len() + FRAME_OVERHEAD <= limit
    }

    /// Starts closing a slow consumer: 4008, or 4100 for a Pusher connection.
    fn close_slow(&mut self) {
        if self.pusher {
            self.drop_unstarted();
            start_closing(
                self,
                PUSHER_SLOW,
                frame::close(PUSHER_SLOW, "slow consumer"),
            );
        } else {
            start_closing(self, CloseReason::SlowConsumer.code(), slow_close());
        }
    }

    /// Queues `frame` within `limit` bytes: `Some(was_idle)` (nothing was waiting
    /// before), or `None` when it did not fit and the connection is now closing as
    /// a slow consumer.
    fn enqueue(&mut self, frame: &Bytes, limit: usize) -> Option<bool> {
        let cost = frame.len() + FRAME_OVERHEAD;
        if !self.fits(frame, limit) {
            self.close_slow();
            return None;
        }
        let was_idle = !self.has_pending();
        self.frames.push_back(frame.clone());
        self.bytes += cost;
        Some(was_idle)
    }

    /// What becomes of a push to a `?recover=1` connection before it is written:
    /// `Some(outcome)` when it was held or skipped (or overflowed the hold), `None`
    /// when it goes through the queue as any frame.
    fn recover_gate(&mut self, stamp: Option<Stamp>, frame: &Bytes, limit: usize) -> Option<Offer> {
        let recovering = self.recovering.as_ref()?;
        if recovering.below_floor(stamp) {
            return Some(Offer::Skipped);
        }
        if !recovering.holding {
            return None;
        }
        if !self.fits(frame, limit) {
            self.close_slow();
            return Some(Offer::Overflowed);
        }
        self.bytes += frame.len() + FRAME_OVERHEAD;
        if let Some(recovering) = &mut self.recovering {
            recovering.held.push_back((stamp, frame.clone()));
        }
        Some(Offer::Queued)
    }

    /// Writes queued frames, then the close frame, until done or the socket is full.
    fn write_pending(&mut self, wire: &dyn Wire) -> Flush {
        if self.broken {
            return Flush::Broken;
        }
        loop {
            let result = {
                let mut slices = [IoSlice::new(&[]); WRITE_BATCH];
                let mut n = 0;
                for (slot, frame) in slices.iter_mut().zip(self.frames.iter()) {
                    *slot = IoSlice::new(frame);
                    n += 1;
                }
                let close_slot = match &self.closing {
                    Some(closing) if !closing.sent && n == self.frames.len() => {
                        slices.get_mut(n).map(|slot| (slot, &closing.frame))
                    }
                    _ => None,
                };
                let close_included = match close_slot {
                    Some((slot, frame)) => {
                        *slot = IoSlice::new(frame);
                        n += 1;
                        true
                    }
                    None => false,
                };
                if n == 0 {
                    return match &self.closing {
                        Some(closing) => Flush::Closed(closing.code),
                        None => Flush::Idle,
                    };
                }
                // One buffer goes through `send`, cheaper in the kernel than `writev`.
                let written = match slices.get(..n).unwrap_or_default() {
                    [one] => wire.try_write(one),
                    several => wire.try_write_vectored(several),
                };
                written.map(|written| (written, close_included))
            };
            match result {
                Ok((0, _)) => {
                    self.broken = true;
                    return Flush::Broken;
                }
                Ok((written, close_included)) => self.consume(written, close_included),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flush::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.broken = true;
                    return Flush::Broken;
                }
            }
        }
    }

    /// Drops what the socket took: `written` bytes from the front of the queue, then
    /// of the close frame when it was part of the write.
    fn consume(&mut self, mut written: usize, close_included: bool) {
        while written > 0 {
            let Some(front) = self.frames.front_mut() else {
                break;
            };
            if written < front.len() {
                *front = front.slice(written..);
                self.bytes -= written;
                self.front_started = true;
                return;
            }
            written -= front.len();
            self.bytes -= front.len() + FRAME_OVERHEAD;
            self.frames.pop_front();
            self.front_started = false;
            self.taken += 1;
        }
        if let (true, Some(closing)) = (close_included && written > 0, &mut self.closing) {
            if written < closing.frame.len() {
                closing.frame = closing.frame.slice(written..);
            } else {
                closing.sent = true;
            }
        }
    }

    /// Drops queued frames that have not started (a partly written frame must be
    /// finished, or the byte stream would be corrupt), and every held one.
    fn drop_unstarted(&mut self) {
        if let Some(recovering) = &mut self.recovering {
            for (_, frame) in recovering.held.drain(..) {
                self.bytes -= frame.len() + FRAME_OVERHEAD;
            }
        }
        let keep = usize::from(self.front_started);
        while self.frames.len() > keep {
            if let Some(frame) = self.frames.pop_back() {
                self.bytes -= frame.len() + FRAME_OVERHEAD;
            }
        }
    }
}

/// Outbound side of one connection.
pub struct Outbox {
    state: Mutex<State>,
    /// The socket, once the connection is established; without it (tests, benches)
    /// frames only queue and are taken with [`Outbox::try_next`].
    wire: OnceLock<Arc<dyn Wire>>,
    /// When something last arrived from the client ([`now_secs`]).
    last_seen: AtomicU32,
    limit_bytes: usize,
    /// The fan-out worker that writes to this connection (the thread serving it).
    worker: usize,
    /// The hub's number for the connection (0 outside a hub).
    id: u64,
    /// Opened with `?recover=1`: pushes come as `{"type":"push",...}` frames through
    /// [`Outbox::offer_push`], starting held (see [`Recovering`]).
    recover: bool,
    /// A Pusher connection (`/app/{key}`): pushes come as Pusher channel events.
    pusher: bool,
}

/// How a connection takes pushes: the frame kinds a push is framed into, once
/// each, lazily, for all the connections of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The payload as the frame text (native).
    Raw,
    /// `{"type":"push","offset",…}` envelopes (native `?recover=1`).
    Recover,
    /// `{"event","channel","data"}` (Pusher).
    Pusher,
}

impl Outbox {
    pub fn new(limit_bytes: usize, worker: usize) -> Self {
        Self::for_conn(limit_bytes, worker, 0, false)
    }

    /// The outbox of hub connection `id`; with `recover`, holding (see [`Recovering`]).
    pub fn for_conn(limit_bytes: usize, worker: usize, id: u64, recover: bool) -> Self {
        let kind = if recover { Kind::Recover } else { Kind::Raw };
        Self::of_kind(limit_bytes, worker, id, kind)
    }

    /// The outbox of hub connection `id` taking pushes as `kind`.
    pub fn of_kind(limit_bytes: usize, worker: usize, id: u64, kind: Kind) -> Self {
        let recover = kind == Kind::Recover;
        let state = State {
            pusher: kind == Kind::Pusher,
            recovering: recover.then(|| Recovering {
                holding: true,
                ..Recovering::default()
            }),
            ..State::default()
        };
        Self {
            state: Mutex::new(state),
            wire: OnceLock::new(),
            last_seen: AtomicU32::new(now_secs()),
            limit_bytes,
            worker,
            id,
            recover,
            pusher: kind == Kind::Pusher,
        }
    }

    /// Whether this is a Pusher connection's outbox.
    pub fn is_pusher(&self) -> bool {
        self.pusher
    }

    /// The hub's number for this connection.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the connection takes pushes as envelopes ([`Outbox::offer_push`]).
    pub fn is_recover(&self) -> bool {
        self.recover
    }

    /// Offers a push's envelope `frame` (its position `stamp`, `None` for a push
    /// without one) to a `?recover=1` connection: held while the connection
    /// recovers, skipped when at or below its floor, else as [`Outbox::offer`].
    pub fn offer_push(&self, stamp: Option<Stamp>, frame: &Bytes) -> Offer {
        let mut state = self.lock();
        if state.refuses_frames() {
            return Offer::Closed;
        }
        if let Some(offer) = state.recover_gate(stamp, frame, self.limit_bytes) {
            return offer;
        }
        self.offer_locked(state, frame)
    }

    /// [`Outbox::offer_push`] for a worker writing several pushes at once (see
    /// [`Outbox::offer_deferred`]).
    pub fn offer_push_deferred(&self, stamp: Option<Stamp>, frame: &Bytes) -> (Offer, bool) {
        let mut state = self.lock();
        if state.refuses_frames() {
            return (Offer::Closed, false);
        }
        if let Some(offer) = state.recover_gate(stamp, frame, self.limit_bytes) {
            return (offer, false);
        }
        self.offer_deferred_locked(state, frame)
    }

    /// Whether a `?recover=1` connection is still holding (writing its preamble).
    pub fn is_holding(&self) -> bool {
        self.lock().recovering.as_ref().is_some_and(|r| r.holding)
    }

    /// Ends the hold of a `?recover=1` connection whose welcome and replay end at
    /// `floor`: held pushes after it are queued in order, the others dropped, and
    /// from now on pushes at or below it are skipped. Returns how many held pushes
    /// were kept.
    pub fn release(&self, floor: Stamp) -> usize {
        self.release_unless(floor, || false).unwrap_or(0)
    }

    /// [`Outbox::release`] unless `hole()` says, under the outbox's lock, that the
    /// node missed pushes meanwhile: then `None` and the connection stays holding
    /// (its caller closes it). Under the lock, so that a hole found at the same
    /// time either is seen here or finds the connection released (and closes it).
    pub fn release_unless(&self, floor: Stamp, hole: impl FnOnce() -> bool) -> Option<usize> {
        let mut state = self.lock();
        if hole() {
            return None;
        }
        let state = &mut *state;
        let Some(recovering) = &mut state.recovering else {
            return Some(0);
        };
        recovering.holding = false;
        recovering.floor = Some(floor);
        let mut kept = 0;
        for (stamp, frame) in std::mem::take(&mut recovering.held) {
            if recovering.below_floor(stamp) {
                state.bytes -= frame.len() + FRAME_OVERHEAD;
            } else {
                state.frames.push_back(frame);
                kept += 1;
            }
        }
        if kept > 0 {
            state.wake_writer();
        }
        Some(kept)
    }

    /// Connects the outbox to its socket; frames offered from now on are written.
    pub fn attach(&self, wire: Arc<dyn Wire>) {
        let _ = self.wire.set(wire);
    }

    /// The fan-out worker serving this connection.
    pub fn worker(&self) -> usize {
        self.worker
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding this lock cannot leave the queue in a
        // state worse than "some frames"; keep serving rather than poison-cascade.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes or queues an encoded `frame` without waiting. Never blocks on the client.
    pub fn offer(&self, frame: &Bytes) -> Offer {
        let state = self.lock();
        if state.refuses_frames() {
            return Offer::Closed;
        }
        self.offer_locked(state, frame)
    }

    fn offer_locked(&self, state: MutexGuard<'_, State>, frame: &Bytes) -> Offer {
        match self.wire.get() {
            // Nothing ahead of it: straight into the socket.
            Some(wire) if state.frames.is_empty() => self.write_now(state, wire.as_ref(), frame),
            _ => self.queue(state, frame),
        }
    }

    fn write_now(&self, mut state: MutexGuard<'_, State>, wire: &dyn Wire, frame: &Bytes) -> Offer {
        match wire.try_write(frame) {
            Ok(n) if n == frame.len() => {
                state.taken += 1;
                Offer::Queued
            }
            Ok(0) => state.mark_broken(),
            Ok(n) => {
                // The socket is full: the rest waits for the connection's task.
                state.frames.push_back(frame.slice(n..));
                state.front_started = true;
                state.bytes += frame.len() - n + FRAME_OVERHEAD;
                state.wake_writer();
                Offer::Queued
            }
            Err(e) if is_transient(&e) => self.queue(state, frame),
            Err(_) => state.mark_broken(),
        }
    }

    /// Queues `frame` without writing it or waking anyone, for a worker that writes
    /// several pushes at once. The flag is true when nothing was waiting before: the
    /// caller then owes the outbox one [`Outbox::flush_or_wake`].
    ///
    /// The limit is on what the socket refused, not on what a batch holds: when
    /// `frame` would not fit, what is queued is written first, and only what the
    /// socket does not take counts (a burst of large pushes must not close a client
    /// that reads).
    pub fn offer_deferred(&self, frame: &Bytes) -> (Offer, bool) {
        let state = self.lock();
        if state.refuses_frames() {
            return (Offer::Closed, false);
        }
        self.offer_deferred_locked(state, frame)
    }

    fn offer_deferred_locked(
        &self,
        mut state: MutexGuard<'_, State>,
        frame: &Bytes,
    ) -> (Offer, bool) {
        if !state.fits(frame, self.limit_bytes) {
            match self.write_pending(&mut state) {
                Flush::Broken => return (state.mark_broken(), false),
                // The rest waits for the socket: the connection's task takes it.
                Flush::Blocked => state.wake_writer(),
                Flush::Idle | Flush::Closed(_) => {}
            }
        }
        match state.enqueue(frame, self.limit_bytes) {
            Some(was_idle) => (Offer::Queued, was_idle),
            None => (Offer::Overflowed, false),
        }
    }

    /// Writes what [`Outbox::offer_deferred`] queued, in one vectored write; what the
    /// socket does not take is left to the connection's task, which is woken for it.
    pub fn flush_or_wake(&self) {
        let mut state = self.lock();
        if self.write_pending(&mut state) != Flush::Idle {
            state.wake_writer();
        }
    }

    fn queue(&self, mut state: MutexGuard<'_, State>, frame: &Bytes) -> Offer {
        match state.enqueue(frame, self.limit_bytes) {
            Some(was_idle) => {
                if was_idle {
                    state.wake_writer();
                }
                Offer::Queued
            }
            None => Offer::Overflowed,
        }
    }

    /// Asks the connection to close with `reason`; frames already queued are sent
    /// first, except to a slow consumer, who gets the close frame as soon as the
    /// socket takes it. The first close requested wins.
    pub fn close(&self, reason: CloseReason) {
        if self.pusher {
            // Pusher's codes: pusher-js reconnects at once on 42xx (PUSHER-NOTES
            // §3.4), where 1001 would wait and 4001/4008 would stop it for good.
            let code = match reason {
                CloseReason::Shutdown => 4200,
                CloseReason::IdleTimeout => 4201,
                CloseReason::SlowConsumer => {
                    let mut state = self.lock();
                    if state.closing.is_none() {
                        state.close_slow();
                    }
                    return;
                }
            };
            return self.close_with(code, frame::close(code, reason.description()));
        }
        self.close_with(reason.code(), close_frame(reason));
    }

    /// Like [`Outbox::close`] with any close `code` and the encoded close `frame`.
    pub fn close_with(&self, code: u16, frame: Bytes) {
        let mut state = self.lock();
        if state.closing.is_none() {
            start_closing(&mut state, code, frame);
        }
    }

    /// The close code once a close was requested.
    pub fn closing(&self) -> Option<u16> {
        self.lock().closing.as_ref().map(|c| c.code)
    }

    /// The connection task's side: remembers `waker` to be woken when there is
    /// something to write (a frame queued behind a full socket, a close).
    pub fn set_writer(&self, waker: &Waker) {
        let mut state = self.lock();
        match &state.writer {
            Some(current) if current.will_wake(waker) => {}
            _ => state.writer = Some(waker.clone()),
        }
    }

    /// Whether the connection's task has work: frames or a close frame waiting for
    /// the socket, or a broken socket to give up on.
    pub fn wants_flush(&self) -> bool {
        let state = self.lock();
        state.has_pending() || state.broken
    }

    /// The connection task's side, when the socket can take bytes: writes what is
    /// queued, then the close frame once a close was requested.
    pub fn flush(&self) -> Flush {
        self.write_pending(&mut self.lock())
    }

    /// Without a socket nothing can be written: `Blocked`.
    fn write_pending(&self, state: &mut State) -> Flush {
        match self.wire.get() {
            Some(wire) => state.write_pending(wire.as_ref()),
            None => Flush::Blocked,
        }
    }

    /// Without a socket (tests, benches): the next frame a writer would send,
    /// queued frames in order then the close frame; `None` after that.
    pub fn try_next(&self) -> Option<Bytes> {
        let mut state = self.lock();
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

    /// Records that something arrived from the client.
    pub fn touch(&self) {
        self.last_seen.store(now_secs(), Ordering::Relaxed);
    }

    /// Whole seconds since something last arrived from the client.
    pub fn idle_secs(&self) -> u32 {
        now_secs().saturating_sub(self.last_seen.load(Ordering::Relaxed))
    }

    /// Called at a steady pace by the heartbeat: how many calls in a row found
    /// frames waiting while the socket took none (the client stopped reading).
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

fn start_closing(state: &mut State, code: u16, frame: Bytes) {
    if code == CloseReason::SlowConsumer.code() {
        // A client that stopped reading gets no more of what it did not read.
        state.drop_unstarted();
    }
    state.closing = Some(Closing {
        code,
        frame,
        sent: false,
    });
    state.wake_writer();
}

/// Errors after which the write may be retried once the socket drains.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

fn close_frame(reason: CloseReason) -> Bytes {
    frame::close(reason.code(), reason.description())
}

/// Pusher's "over capacity, retry in a second" code, for a Pusher slow consumer.
const PUSHER_SLOW: u16 = 4100;

fn slow_close() -> Bytes {
    close_frame(CloseReason::SlowConsumer)
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

    /// A socket whose send buffer takes `room` more bytes, then `WouldBlock`.
    #[derive(Default)]
    struct Buffer {
        room: Mutex<usize>,
        sent: Mutex<Vec<u8>>,
    }

    impl Buffer {
        fn open(&self, bytes: usize) {
            *self.room.lock().unwrap() += bytes;
        }

        fn sent_texts(&self) -> Vec<String> {
            let sent = self.sent.lock().unwrap();
            let mut rest = &sent[..];
            let mut texts = Vec::new();
            while let Some((_, payload)) = frame::parse(rest) {
                texts.push(String::from_utf8_lossy(payload).into_owned());
                rest = &rest[2 + payload.len()..];
            }
            assert!(rest.is_empty(), "a frame was cut: {rest:?}");
            texts
        }
    }

    impl Wire for Buffer {
        fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
            self.try_write_vectored(&[IoSlice::new(buf)])
        }

        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            if *room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut sent = self.sent.lock().unwrap();
            let mut written = 0;
            for buf in bufs {
                let n = buf.len().min(*room);
                sent.extend_from_slice(&buf[..n]);
                *room -= n;
                written += n;
            }
            Ok(written)
        }
    }

    #[test]
    fn overflow_empties_the_queue_and_ends_with_4008() {
        let one = frame::text("0123456789");
        let outbox = Outbox::new(3 * (one.len() + FRAME_OVERHEAD), 0);
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
    fn pusher_connections_close_with_pusher_codes() {
        let one = frame::text("0123456789");
        let outbox = Outbox::of_kind(2 * (one.len() + FRAME_OVERHEAD), 0, 1, Kind::Pusher);
        assert!(outbox.is_pusher());
        while outbox.offer(&one) == Offer::Queued {}
        assert_eq!(outbox.closing(), Some(4100), "pusher-js retries after 1 s");
        let close = outbox.try_next().unwrap();
        assert_eq!(frame::parse(&close).unwrap().1[..2], 4100u16.to_be_bytes());
        for (reason, code) in [
            (CloseReason::Shutdown, 4200),
            (CloseReason::IdleTimeout, 4201),
            (CloseReason::SlowConsumer, 4100),
        ] {
            let outbox = Outbox::of_kind(1 << 10, 0, 1, Kind::Pusher);
            outbox.close(reason);
            assert_eq!(outbox.closing(), Some(code), "{reason:?}");
        }
    }

    #[test]
    fn queued_frames_go_before_the_close_frame() {
        let outbox = Outbox::new(1 << 20, 0);
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
        let outbox = Outbox::new(1 << 20, 0);
        assert_eq!(outbox.stalled_checks(), 0, "nothing waits");
        outbox.offer(&frame::text("a"));
        assert_eq!(outbox.stalled_checks(), 1);
        assert_eq!(outbox.stalled_checks(), 2);
        outbox.offer(&frame::text("b"));
        outbox.try_next();
        assert_eq!(outbox.stalled_checks(), 0, "the writer took one");
        assert_eq!(outbox.stalled_checks(), 1);
    }

    #[test]
    fn an_idle_socket_is_written_at_once_and_a_full_one_queues_in_order() {
        let wire = Arc::new(Buffer::default());
        let outbox = Outbox::new(1 << 20, 0);
        outbox.attach(wire.clone());
        wire.open(3);
        assert_eq!(outbox.offer(&frame::text("first")), Offer::Queued);
        assert!(outbox.wants_flush(), "4 of 7 bytes wait");
        outbox.offer(&frame::text("second"));
        outbox.offer(&frame::text("third"));
        assert_eq!(outbox.flush(), Flush::Blocked);
        wire.open(10);
        assert_eq!(outbox.flush(), Flush::Blocked, "the socket filled again");
        wire.open(1 << 10);
        assert_eq!(outbox.flush(), Flush::Idle);
        assert_eq!(wire.sent_texts(), ["first", "second", "third"]);
        assert_eq!(outbox.queued_bytes(), 0);
    }

    #[test]
    fn deferred_offers_leave_in_one_write() {
        let wire = Arc::new(Buffer::default());
        let outbox = Outbox::new(1 << 20, 0);
        outbox.attach(wire.clone());
        wire.open(1 << 10);
        assert_eq!(
            outbox.offer_deferred(&frame::text("a")),
            (Offer::Queued, true)
        );
        assert_eq!(
            outbox.offer_deferred(&frame::text("b")),
            (Offer::Queued, false)
        );
        assert!(wire.sent_texts().is_empty(), "nothing written yet");
        outbox.flush_or_wake();
        assert_eq!(wire.sent_texts(), ["a", "b"]);
        assert!(!outbox.wants_flush());
    }

    #[test]
    fn deferred_offers_count_only_what_the_socket_refused() {
        let one = frame::text(&"x".repeat(100));
        let limit = 3 * (one.len() + FRAME_OVERHEAD);
        let wire = Arc::new(Buffer::default());
        let outbox = Outbox::new(limit, 0);
        outbox.attach(wire.clone());
        wire.open(4 * one.len());
        // A batch of 6 frames, twice the limit: the 4th finds the queue full, the
        // 3 queued go to the socket, and the batch goes on.
        for _ in 0..6 {
            assert_eq!(outbox.offer_deferred(&one).0, Offer::Queued);
        }
        assert_eq!(outbox.queued_bytes(), limit);
        // Once the socket takes nothing more, the limit holds.
        assert_eq!(outbox.offer_deferred(&one).0, Offer::Queued);
        assert_eq!(outbox.offer_deferred(&one).0, Offer::Overflowed);
        assert_eq!(outbox.closing(), Some(4008));
        wire.open(1 << 20);
        assert_eq!(outbox.flush(), Flush::Closed(4008));
        assert_eq!(
            wire.sent_texts().len(),
            4 + 1,
            "the 4 taken, then the close"
        );
    }

    fn stamp(offset: u64) -> Option<Stamp> {
        Some(Stamp { epoch: 9, offset })
    }

    #[test]
    fn a_recovering_outbox_holds_then_keeps_only_pushes_past_its_floor() {
        let outbox = Outbox::for_conn(1 << 20, 0, 1, true);
        for offset in 3..=6 {
            let frame = frame::text(&offset.to_string());
            assert_eq!(outbox.offer_push(stamp(offset), &frame), Offer::Queued);
        }
        // Not recoverable: no offset, never below a floor.
        outbox.offer_push(None, &frame::text("none"));
        outbox.offer(&frame::text("pong"));
        assert_eq!(
            texts(&outbox),
            ["pong"],
            "pushes are held, other frames are not"
        );
        // The replay ended at 4: 3 and 4 were in it.
        assert_eq!(
            outbox.release(Stamp {
                epoch: 9,
                offset: 4
            }),
            3
        );
        assert_eq!(texts(&outbox), ["5", "6", "none"]);
        // From now on the floor holds: a late echo of 4 is skipped, 7 passes, and
        // another epoch's offsets pass.
        assert_eq!(
            outbox.offer_push(stamp(4), &frame::text("4")),
            Offer::Skipped
        );
        assert_eq!(
            outbox.offer_push(stamp(7), &frame::text("7")),
            Offer::Queued
        );
        let other_epoch = Some(Stamp {
            epoch: 10,
            offset: 1,
        });
        assert_eq!(
            outbox.offer_push_deferred(other_epoch, &frame::text("e")).0,
            Offer::Queued
        );
        assert_eq!(
            outbox.offer_push_deferred(stamp(2), &frame::text("2")).0,
            Offer::Skipped
        );
        assert_eq!(texts(&outbox), ["7", "e"]);
        assert_eq!(
            outbox.queued_bytes(),
            0,
            "skipped and dropped frames cost nothing"
        );
    }

    #[test]
    fn a_hole_found_during_the_hold_sends_nothing_held() {
        let outbox = Outbox::for_conn(1 << 20, 0, 1, true);
        outbox.offer_push(stamp(5), &frame::text("5"));
        let floor = Stamp {
            epoch: 9,
            offset: 4,
        };
        assert_eq!(outbox.release_unless(floor, || true), None);
        assert!(outbox.is_holding(), "still holding: its caller closes it");
        outbox.close_with(1012, frame::close(1012, "reconnect"));
        let sent = texts(&outbox);
        assert_eq!(sent.len(), 1, "only the close frame: {sent:?}");
        assert!(sent[0].ends_with("reconnect"));
        let fresh = Outbox::for_conn(1 << 20, 0, 2, true);
        fresh.offer_push(stamp(5), &frame::text("5"));
        assert_eq!(fresh.release_unless(floor, || false), Some(1));
        assert!(!fresh.is_holding());
        assert_eq!(texts(&fresh), ["5"]);
    }

    #[test]
    fn a_hold_past_the_queue_limit_is_a_slow_consumer() {
        let one = frame::text("0123456789");
        let outbox = Outbox::for_conn(2 * (one.len() + FRAME_OVERHEAD), 0, 1, true);
        assert_eq!(outbox.offer_push(stamp(1), &one), Offer::Queued);
        assert_eq!(outbox.offer_push(stamp(2), &one), Offer::Queued);
        assert_eq!(outbox.offer_push(stamp(3), &one), Offer::Overflowed);
        assert_eq!(outbox.closing(), Some(4008));
        assert_eq!(outbox.queued_bytes(), 0, "the held frames are dropped");
        assert_eq!(
            outbox.release(Stamp {
                epoch: 9,
                offset: 0
            }),
            0
        );
        let close = outbox.try_next().unwrap();
        assert_eq!(frame::parse(&close).unwrap().1[..2], 4008u16.to_be_bytes());
    }

    #[test]
    fn a_slow_consumer_keeps_only_the_frame_it_started() {
        let wire = Arc::new(Buffer::default());
        let outbox = Outbox::new(1 << 20, 0);
        outbox.attach(wire.clone());
        wire.open(2);
        outbox.offer(&frame::text("started"));
        outbox.offer(&frame::text("never sent"));
        outbox.close(CloseReason::SlowConsumer);
        wire.open(1 << 10);
        assert_eq!(outbox.flush(), Flush::Closed(4008));
        let sent = wire.sent_texts();
        assert_eq!(sent[0], "started");
        assert!(sent[1].ends_with("slow consumer"));
        assert_eq!(sent.len(), 2);
        assert_eq!(outbox.offer(&frame::text("late")), Offer::Closed);
    }
}
