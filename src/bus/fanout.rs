//! This node's delivery: every push, from any ingress or from Redis, is framed once
//! and handed to each HTTP worker, and each worker writes it to the connections it
//! serves. Both cores write at once, each to its own sockets, on the thread whose
//! reactor owns them: no cross-thread wake-up per connection, no lock shared by two
//! connections.
//!
//! Order: one task takes the pushes in the order they were published and passes each
//! to every worker's queue in that order, so every connection sees pushes in the
//! same order. A worker writes a push to a few hundred connections at a time, letting
//! requests and client frames on its thread run in between, so a 10k fan-out does not
//! hold up the HTTP trigger that follows it.
//!
//! Back-pressure: the queues are bounded; when workers fall behind, the ordering
//! task waits, then publishers wait. Nothing waits on a client: a client that does
//! not keep up has its own bounded queue ([`crate::hub::Outbox`]).

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;
use tokio::sync::mpsc;

use crate::history::ring::Ring;
use crate::history::{Stamp, push_frame};
use crate::hub::{ConnId, Delivery, Hub, Outbox, frame};
use crate::ingress::throttle::WarnThrottle;
use crate::metrics::Metrics;
use crate::push::{Push, Target};

/// Pushes waiting for their fan-out, in the ordering queue and in each worker's.
const QUEUE: usize = 1024;

/// Connections written per turn of a worker before it lets other tasks run.
const CHUNK: usize = 256;

/// One budget for the slow-consumer warning: a burst of closes is one line a second.
static SLOW_CONSUMERS: LazyLock<WarnThrottle> = LazyLock::new(|| WarnThrottle::new(module_path!()));

/// Pushes a worker that fell behind takes at once (see [`run_worker`]).
const BATCH: usize = 16;

/// A push with its place in the history (`None`: published while Redis was down).
struct Stamped {
    push: Push,
    stamp: Option<Stamp>,
}

/// One push, framed, as every worker receives it.
struct Job {
    target: Target,
    /// The local connection the push skips.
    exclude: Option<ConnId>,
    /// The raw frame, for connections without `recover`.
    frame: Bytes,
    stamp: Option<Stamp>,
    payload: ByteString,
    /// The envelope frame for `?recover=1` connections, made by the first worker
    /// that has one to write to: once per push, and never when none matches.
    envelope: OnceLock<Bytes>,
    /// The Pusher channel event, made likewise (`None`: Pusher connections do
    /// not take this push).
    pusher: OnceLock<Option<Bytes>>,
    /// What the Pusher frame is made of (event name, user id), kept with the push.
    push: Push,
}

impl Job {
    fn envelope(&self) -> &Bytes {
        self.envelope
            .get_or_init(|| push_frame(self.stamp.map(|s| s.offset), &self.payload))
    }

    fn pusher(&self) -> Option<&Bytes> {
        self.pusher
            .get_or_init(|| crate::hub::pusher_frame(&self.push))
            .as_ref()
    }

    /// Offers the push to `outbox` in the form it takes.
    fn offer(&self, outbox: &Outbox) -> crate::hub::Offer {
        if outbox.is_pusher() {
            self.pusher()
                .map_or(crate::hub::Offer::Skipped, |frame| outbox.offer(frame))
        } else if outbox.is_recover() {
            outbox.offer_push(self.stamp, self.envelope())
        } else {
            outbox.offer(&self.frame)
        }
    }

    /// [`Job::offer`] for a batch (see [`Outbox::offer_deferred`]).
    fn offer_deferred(&self, outbox: &Outbox) -> (crate::hub::Offer, bool) {
        if outbox.is_pusher() {
            self.pusher()
                .map_or((crate::hub::Offer::Skipped, false), |frame| {
                    outbox.offer_deferred(frame)
                })
        } else if outbox.is_recover() {
            outbox.offer_push_deferred(self.stamp, self.envelope())
        } else {
            outbox.offer_deferred(&self.frame)
        }
    }
}

/// The workers' queues, in worker order.
type Workers = Arc<Mutex<Vec<mpsc::Sender<Arc<Job>>>>>;

thread_local! {
    /// The workers this thread is, one per fan-out (tests run several servers in
    /// one process): `(fan-out id, worker index)`.
    static LOCAL_WORKERS: RefCell<Vec<(usize, usize)>> = const { RefCell::new(Vec::new()) };
}

/// Handle to this node's fan-out.
#[derive(Clone)]
pub struct Fanout {
    id: usize,
    queue: mpsc::Sender<Stamped>,
    workers: Workers,
    hub: Hub,
    metrics: Arc<Metrics>,
}

impl Fanout {
    /// Spawns the ordering task on the current runtime and returns its handle (a
    /// critical task, to supervise); it ends when every handle is dropped.
    pub fn start(hub: Hub, metrics: Arc<Metrics>) -> (Self, tokio::task::JoinHandle<()>) {
        static IDS: AtomicUsize = AtomicUsize::new(0);
        let (queue, mut pushes) = mpsc::channel::<Stamped>(QUEUE);
        let workers = Workers::default();
        let targets = workers.clone();
        let local = hub.clone();
        let ordering = tokio::spawn(async move {
            while let Some(Stamped { push, stamp }) = pushes.recv().await {
                let job = Arc::new(Job {
                    frame: frame::text(&push.payload),
                    exclude: local.local_id(push.exclude),
                    target: push.target.clone(),
                    stamp,
                    payload: push.payload.clone(),
                    envelope: OnceLock::new(),
                    pusher: OnceLock::new(),
                    push,
                });
                let queues = lock(&targets).clone();
                for queue in queues {
                    // A worker's queue closes only when its thread is gone.
                    let _ = queue.send(job.clone()).await;
                }
            }
        });
        let fanout = Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            queue,
            workers,
            hub,
            metrics,
        };
        (fanout, ordering)
    }

    /// Queues `push` for delivery on this node; `false` when the fan-out is gone
    /// (the server is stopping).
    pub async fn push(&self, push: Push) -> bool {
        self.push_stamped(push, None).await
    }

    /// [`Fanout::push`] of a push with its place in the cluster's history.
    pub async fn push_stamped(&self, push: Push, stamp: Option<Stamp>) -> bool {
        self.queue.send(Stamped { push, stamp }).await.is_ok()
    }

    /// Queues `push` for delivery on this node and returns how many of this node's
    /// connections match it now (0 when the fan-out is gone): the publisher's
    /// `delivered` when this node is all there is, or all that can be reached.
    pub async fn push_counted(&self, push: Push) -> usize {
        self.push_counted_stamped(push, None).await
    }

    /// [`Fanout::push_counted`] of a push with its place in the cluster's history.
    pub async fn push_counted_stamped(&self, push: Push, stamp: Option<Stamp>) -> usize {
        let matched = self.matching(&push);
        if self.push_stamped(push, stamp).await {
            matched
        } else {
            0
        }
    }

    /// Embedded mode: gives `push` the next offset of `history` and queues it, under
    /// the history's lock, so that offset order is the order of the fan-out. Returns
    /// the matching connections (as [`Fanout::push_counted`]) and the push's place,
    /// `None` when the fan-out is gone.
    pub async fn push_recorded(&self, push: Push, history: &Mutex<Ring>) -> (usize, Option<Stamp>) {
        let matched = self.matching(&push);
        // The queue's room is taken first: nobody waits while holding the lock.
        let Ok(permit) = self.queue.reserve().await else {
            return (0, None);
        };
        let mut ring = lock(history);
        let stamp = ring.append(&push, Instant::now());
        permit.send(Stamped {
            push,
            stamp: Some(stamp),
        });
        self.metrics
            .history_size
            .set(i64::try_from(ring.len()).unwrap_or(i64::MAX));
        (matched, Some(stamp))
    }

    /// This node's hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// This node's connections that `push` reaches now.
    fn matching(&self, push: &Push) -> usize {
        self.hub
            .count_except(&push.target, self.hub.local_id(push.exclude))
    }

    /// The worker index of the calling thread, which must be an HTTP worker (inside
    /// a tokio `LocalSet`); its first call on a thread starts that worker's loop.
    pub fn local_worker(&self) -> usize {
        LOCAL_WORKERS.with(|locals| {
            let mut locals = locals.borrow_mut();
            if let Some(&(_, worker)) = locals.iter().find(|(id, _)| *id == self.id) {
                return worker;
            }
            let (sender, jobs) = mpsc::channel(QUEUE);
            let worker = {
                let mut workers = lock(&self.workers);
                workers.push(sender);
                workers.len() - 1
            };
            tokio::task::spawn_local(run_worker(
                worker,
                jobs,
                self.hub.clone(),
                self.metrics.clone(),
            ));
            locals.push((self.id, worker));
            worker
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// One worker's loop: writes each push to the worker's matching connections.
///
/// One push waiting: each idle socket gets the frame with one `send`. Several waiting
/// (pushes arrive faster than the kernel takes them, e.g. 200 pushes 5 ms apart to
/// 10k clients): they are taken together, queued first, and each connection gets all
/// of its frames in one vectored write, so the syscall cost is paid per connection
/// per batch instead of per frame.
async fn run_worker(
    worker: usize,
    mut jobs: mpsc::Receiver<Arc<Job>>,
    hub: Hub,
    metrics: Arc<Metrics>,
) {
    // Reused from push to push: a fan-out allocates nothing per connection.
    let mut outboxes: Vec<Arc<Outbox>> = Vec::new();
    let mut to_flush: Vec<Arc<Outbox>> = Vec::new();
    let mut batch: Vec<Arc<Job>> = Vec::with_capacity(BATCH);
    while jobs.recv_many(&mut batch, BATCH).await > 0 {
        if let [job] = batch.as_slice() {
            hub.collect(&job.target, job.exclude, worker, &mut outboxes);
            let mut delivery = Delivery::default();
            in_turns(&outboxes, |outbox| delivery.count(job.offer(outbox))).await;
            account(&metrics, &job.target, delivery);
        } else {
            for job in &batch {
                hub.collect(&job.target, job.exclude, worker, &mut outboxes);
                let mut delivery = Delivery::default();
                for outbox in &outboxes {
                    let (offer, owes_flush) = job.offer_deferred(outbox);
                    delivery.count(offer);
                    if owes_flush {
                        to_flush.push(outbox.clone());
                    }
                }
                account(&metrics, &job.target, delivery);
            }
            in_turns(&to_flush, |outbox| outbox.flush_or_wake()).await;
            to_flush.clear();
        }
        outboxes.clear();
        batch.clear();
    }
}

/// Runs `f` on every item, [`CHUNK`] at a time, letting the worker's other tasks
/// run between chunks.
async fn in_turns<T>(items: &[T], mut f: impl FnMut(&T)) {
    for (i, chunk) in items.chunks(CHUNK).enumerate() {
        if i > 0 {
            tokio::task::yield_now().await;
        }
        chunk.iter().for_each(&mut f);
    }
}

/// Counts a fan-out's deliveries and slow consumers.
fn account(metrics: &Metrics, target: &Target, delivery: Delivery) {
    metrics.deliveries.inc_by(delivery.delivered as u64);
    if delivery.slow_consumers > 0 {
        metrics
            .slow_consumers
            .inc_by(delivery.slow_consumers as u64);
        SLOW_CONSUMERS.warn(format_args!(
            "closed {} slow consumer(s) on {target}: send queue full",
            delivery.slow_consumers,
        ));
    }
}
