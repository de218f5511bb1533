//! Cross-node delivery over Redis pub/sub.
//!
//! Every node subscribes to `{prefix}:push` once, on its subscription [`Link`]; a
//! publish goes out on the node's command link (shared with the registry) as one
//! Lua script ([`crate::history::redis::PUBLISH`]) that gives the push the next
//! offset of the cluster's history, appends it to the history stream, `PUBLISH`es
//! the envelope (now carrying epoch and offset) and returns the cluster-wide count
//! of matching connections and the number of registered nodes, so the number the
//! caller gets back is the number of open connections, on all nodes, that matched
//! the target when the push was published, and `cluster_wide` says whether every
//! registered node was listening. One script, so the order of the `PUBLISH`es is
//! the order of the offsets on every subscriber. Each node — the publisher
//! included — delivers what its subscription receives, so no node delivers a push
//! twice.
//!
//! When the link is down the node keeps serving its own clients: a publish goes to
//! this node's hub and says so (`cluster_wide: false`). When a publish fails on the
//! way (a timeout while Redis is stalled), the push is delivered here at once and
//! its sequence number is remembered; if Redis runs the publish later, the echo that
//! comes back is skipped, so this node's clients get it once.
//!
//! Hand-off: redis-rs hands each message to a non-blocking callback; it goes into a
//! bounded queue ([`HANDOFF`]) read by one delivery task. A full queue drops the
//! message, counts it (`scenecast_bus_dropped_total`) and `/healthz` says so for
//! [`DROP_REPORT`]: memory stays bounded when the fan-out falls behind.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytestring::ByteString;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::{Fanout, Published};
use crate::config::{HistorySettings, RedisSettings};
use crate::history::redis::{PUBLISH, READ, eval, parse_read, target_fields, target_from_fields};
use crate::history::{Read, Stamp, epoch_text, new_epoch, parse_epoch};
use crate::metrics::Metrics;
use crate::push::{ConnKey, Name, Push, Target};
use crate::redis::link::Subscription;
use crate::redis::{Link, LinkDown, LogEvery, RedisKeys, unix_micros};

/// Messages from Redis waiting for this node's fan-out; past this they are dropped
/// and counted.
pub const HANDOFF: usize = 4096;
/// How often the history's head is read to find pushes this node's subscription
/// never delivered (see [`watch_holes`]); a head must have arrived one period
/// after it was read.
const HOLE_CHECK: Duration = Duration::from_secs(2);
/// How long `/healthz` reports dropped messages after the last drop.
const DROP_REPORT: Duration = Duration::from_secs(30);
/// Sequence numbers of pushes delivered here after a failed publish, kept until
/// their echo comes back (or until this many newer ones push them out).
const ECHOES: usize = 1024;

static PUBLISH_FAILED: LogEvery = LogEvery::new(Duration::from_secs(5));
static NOT_ALL_LISTENING: LogEvery = LogEvery::new(Duration::from_secs(10));
static DROPPED: LogEvery = LogEvery::new(Duration::from_secs(5));
static MALFORMED: LogEvery = LogEvery::new(Duration::from_secs(5));
static GAP: LogEvery = LogEvery::new(Duration::from_secs(5));

struct Shared {
    keys: RedisKeys,
    channel: String,
    /// This process's envelope origin (see [`crate::redis::instance_token`]).
    origin: u64,
    seq: AtomicU64,
    /// The subscription; its prober publishes on the node's probe channel.
    link: Link,
    /// Where pushes are published (a subscribed RESP3 socket would get its own
    /// messages inside the `MULTI` reply).
    commands: Link,
    fanout: Fanout,
    metrics: Arc<Metrics>,
    /// Pushes delivered here after a failed publish: their echo is skipped.
    echoes: Mutex<VecDeque<u64>>,
    dropped: Arc<Dropped>,
    /// `server.max_message_bytes`: a bus message carrying more than any ingress
    /// accepts was not published by a node, and is refused like other garbage.
    max_payload: usize,
    history: HistorySettings,
    /// The newest position this node has had from Redis: from the envelopes its
    /// subscription delivered, and from history reads (see [`Shared::advance`]).
    last: Mutex<Option<Stamp>>,
    /// Holes found so far (see [`super::Bus::holes`]).
    holes: AtomicU64,
}

/// A bus latency above this (or a send time in the future) comes from another
/// host's clock or a forged envelope; it is not put in the histogram.
const MAX_PLAUSIBLE_LATENCY_MICROS: u64 = 3_600_000_000;

/// Messages the hand-off dropped, and when the last one was; and how many wait in
/// it now.
#[derive(Default)]
struct Dropped {
    total: AtomicU64,
    last_micros: AtomicU64,
    queued: AtomicU64,
}

/// A task the node cannot work without, by name (see `server`'s supervisor).
pub type CriticalTask = (&'static str, tokio::task::JoinHandle<()>);

/// Handle to the Redis bus.
#[derive(Clone)]
pub struct RedisBus {
    shared: Arc<Shared>,
}

/// A bus envelope, decoded.
#[derive(Debug)]
struct Envelope {
    push: Push,
    /// The push's place in the history (set by the publish script).
    stamp: Option<Stamp>,
    origin: u64,
    seq: u64,
    sent_micros: u64,
}

impl RedisBus {
    /// Opens the subscription link and returns the bus with its critical tasks
    /// (the link's prober, the delivery task, the history hole watch); until the first subscription,
    /// publishes are delivered locally. Publishes go through `commands`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        settings: &RedisSettings,
        history: &HistorySettings,
        commands: Link,
        node: &str,
        origin: u64,
        fanout: Fanout,
        metrics: Arc<Metrics>,
        max_payload: usize,
    ) -> Result<(Self, Vec<CriticalTask>), String> {
        let keys = RedisKeys::new(&settings.prefix, node);
        let dropped = Arc::new(Dropped::default());
        let (handler, received) = handoff(HANDOFF, dropped.clone(), metrics.clone());
        let link = Link::open(
            "subscription",
            &settings.url,
            Some(Subscription {
                probe: keys.probe_channel(),
                channels: vec![keys.push_channel()],
                handler,
            }),
        )?;
        let shared = Arc::new(Shared {
            channel: keys.push_channel(),
            keys,
            origin,
            seq: AtomicU64::new(0),
            link: link.clone(),
            commands,
            fanout,
            metrics,
            echoes: Mutex::new(VecDeque::new()),
            dropped,
            max_payload,
            history: history.clone(),
            last: Mutex::new(None),
            holes: AtomicU64::new(0),
        });
        let tasks = vec![
            (
                "subscription link prober",
                tokio::spawn(link.probe_forever()),
            ),
            (
                "bus delivery",
                tokio::spawn(deliver(shared.clone(), received)),
            ),
            (
                "history hole watch",
                tokio::spawn(watch_holes(shared.clone())),
            ),
        ];
        Ok((Self { shared }, tasks))
    }

    /// See [`super::Bus::holes`].
    pub fn holes(&self) -> u64 {
        self.shared.holes.load(Ordering::SeqCst)
    }

    /// This node's fan-out, which delivers what the subscription receives.
    pub fn fanout(&self) -> &Fanout {
        &self.shared.fanout
    }

    /// Whether pushes currently travel through Redis.
    pub fn is_up(&self) -> bool {
        self.shared.link.is_up() && self.shared.commands.is_up()
    }

    /// Why the bus is not whole, when it is not: the link is down, or messages
    /// were dropped lately. Read from memory, without asking Redis.
    pub fn down(&self) -> Option<LinkDown> {
        if let Some(down) = self.shared.link.down() {
            return Some(down);
        }
        if let Some(down) = self.shared.commands.down() {
            return Some(down);
        }
        let dropped = &self.shared.dropped;
        let last = dropped.last_micros.load(Ordering::Relaxed);
        let window = u64::try_from(DROP_REPORT.as_micros()).unwrap_or(u64::MAX);
        (last > 0 && unix_micros().saturating_sub(last) < window).then(|| LinkDown {
            link: "subscription",
            since: last / 1_000_000,
            reason: format!(
                "{} pushes from redis dropped since start: this node's fan-out fell behind",
                dropped.total.load(Ordering::Relaxed)
            ),
        })
    }

    pub async fn publish(&self, push: Push) -> Published {
        let shared = &self.shared;
        if self.is_up() {
            let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
            let (head, tail) = encode_parts(&push, shared.origin, seq, unix_micros());
            let (kind, key) = target_fields(&push.target);
            let (count_kind, count_key) = match &push.target {
                Target::All => ("hlen", shared.keys.conns()),
                Target::Page(page) => ("scard", shared.keys.page(page)),
                Target::Uid(uid) => ("scard", shared.keys.uid(uid)),
                // The registry does not index connections by their cluster-wide id:
                // at most one matches.
                Target::Conn(_) => ("one", shared.keys.conns()),
                // Counted by the Pusher channel state, not the registry.
                Target::Channel(..) => ("none", shared.keys.conns()),
            };
            let keys = [
                shared.keys.history_epoch(),
                shared.keys.history(),
                count_key,
                shared.keys.nodes(),
            ];
            let mut script = eval(PUBLISH, &keys);
            script
                .arg(epoch_text(new_epoch()))
                .arg(shared.history.size)
                .arg(count_kind)
                .arg(head)
                .arg(tail)
                .arg(kind)
                .arg(key)
                .arg(push.exclude.map(|c| c.to_string()).unwrap_or_default())
                .arg(&*push.payload)
                .arg(&shared.channel)
                .arg(push.event.as_deref().unwrap_or_default())
                .arg(push.user_id.as_deref().unwrap_or_default());
            shared.floor_args(&mut script);
            let published = shared
                .commands
                .query::<(String, u64, usize, usize, usize, i64)>(&script)
                .await;
            match published {
                Ok((epoch, offset, matched, nodes, listening, len)) => {
                    shared.metrics.history_size.set(len);
                    let stamp = parse_epoch(&epoch).map(|epoch| Stamp { epoch, offset });
                    if listening == 0 {
                        // Nobody got it, this node's own subscription included (it is
                        // still coming back after Redis restarted, when the empty nodes
                        // set would make 0 of 0 look like everyone): deliver here, as
                        // for a failed publish; no echo can come back.
                        return Published {
                            delivered: shared.fanout.push_counted_stamped(push, stamp).await,
                            cluster_wide: false,
                            stamp,
                        };
                    }
                    let everyone = listening >= nodes;
                    if !everyone && let Some(suppressed) = NOT_ALL_LISTENING.admit() {
                        log::warn!(
                            "a push reached {listening} of {nodes} registered nodes: \
                             a node is not subscribed ({suppressed} similar since the last warning)"
                        );
                    }
                    return Published {
                        delivered: matched,
                        cluster_wide: everyone,
                        stamp,
                    };
                }
                Err(e) => {
                    shared.metrics.redis_errors.inc();
                    // Redis may still run it: deliver here now, skip the echo later.
                    shared.expect_echo(seq);
                    if let Some(suppressed) = PUBLISH_FAILED.admit() {
                        log::warn!(
                            "redis publish failed, delivered on this node only: {e} \
                             ({suppressed} more since the last warning)"
                        );
                    }
                }
            }
        }
        Published {
            delivered: shared.fanout.push_counted(push).await,
            cluster_wide: false,
            stamp: None,
        }
    }

    /// Asks every node to close the Pusher connections of `app` signed in as
    /// `uid` (see [`super::Bus::terminate_user`]): a `t{app}:{uid}` message on the
    /// bus channel, outside the history. This node closes its own at once (the
    /// message may not come back while the subscription is down). Returns false
    /// when Redis did not take it.
    pub async fn terminate_user(&self, app: &Name, uid: &Name) -> bool {
        let shared = &self.shared;
        terminate_here(&shared.fanout, app, uid);
        let mut publish = redis::cmd("PUBLISH");
        publish
            .arg(&shared.channel)
            .arg(format!("{TERMINATE}{app}:{uid}"));
        shared.commands.query::<i64>(&publish).await.is_ok()
    }

    /// See [`super::Bus::read_history`]: one script call reads the epoch, the
    /// head and the replay together (creating the epoch when Redis lost it), so the
    /// welcome never pairs a new epoch with an old offset.
    pub async fn read_history(&self, since: Option<Stamp>) -> Result<Read, LinkDown> {
        let shared = &self.shared;
        // Both links: a position read while this node's subscription is down would
        // be followed by pushes it never receives.
        if let Some(down) = shared.link.down().or_else(|| shared.commands.down()) {
            return Err(down);
        }
        let keys = [shared.keys.history_epoch(), shared.keys.history()];
        let mut script = eval(READ, &keys);
        script
            .arg(epoch_text(new_epoch()))
            .arg(since.map(|s| epoch_text(s.epoch)).unwrap_or_default())
            .arg(since.map(|s| s.offset.to_string()).unwrap_or_default())
            .arg(shared.history.ttl_secs.saturating_mul(1000));
        shared.floor_args(&mut script);
        let failed = |reason: String| LinkDown {
            link: "commands",
            since: unix_micros() / 1_000_000,
            reason,
        };
        match shared.commands.query::<Value>(&script).await {
            Ok(reply) => {
                let read = parse_read(&reply).ok_or_else(|| {
                    shared.metrics.rejected("history_reply");
                    failed("unexpected history reply".into())
                })?;
                if shared.read_head(read.head) {
                    shared.resume_all(read.head);
                }
                Ok(read)
            }
            Err(e) => {
                shared.metrics.redis_errors.inc();
                Err(failed(format!("history read failed: {e}")))
            }
        }
    }
}

/// The bounded hand-off from redis-rs's reader (which must not wait) to the
/// delivery task: a message that finds the queue full is dropped and counted.
fn handoff(
    capacity: usize,
    dropped: Arc<Dropped>,
    metrics: Arc<Metrics>,
) -> (crate::redis::link::PushHandler, mpsc::Receiver<PushInfo>) {
    let (queue, received) = mpsc::channel::<PushInfo>(capacity);
    let handler = move |info: PushInfo| {
        if info.kind != PushKind::Message {
            return;
        }
        // Counted before it can be taken, so the count never goes below zero.
        dropped.queued.fetch_add(1, Ordering::Relaxed);
        if queue.try_send(info).is_err() {
            dropped.queued.fetch_sub(1, Ordering::Relaxed);
            dropped.total.fetch_add(1, Ordering::Relaxed);
            dropped.last_micros.store(unix_micros(), Ordering::Relaxed);
            metrics.bus_dropped.inc();
            if let Some(suppressed) = DROPPED.admit() {
                log::warn!(
                    "bus dropped a push from redis: this node's fan-out is behind \
                     ({suppressed} more dropped since the last warning)"
                );
            }
        }
    };
    (Arc::new(handler), received)
}

impl Shared {
    /// Adds the scripts' last two arguments: the newest position this node had from
    /// Redis (epoch text, offset), or two empty strings before any. A Redis whose
    /// offset is lower in that epoch went back in time (`crate::history::redis`).
    fn floor_args(&self, script: &mut redis::Cmd) {
        let floor = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        match floor {
            Some(floor) => script.arg(epoch_text(floor.epoch)).arg(floor.offset),
            None => script.arg("").arg(""),
        };
    }

    /// Takes the position of an envelope this node's subscription delivered; true
    /// when pushes before it never arrived here: an offset hole in the same epoch,
    /// or a new epoch (Redis lost the history).
    fn advance(&self, stamp: Stamp) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let gap = match *last {
            Some(l) if l.epoch == stamp.epoch => stamp.offset > l.offset.saturating_add(1),
            Some(_) => true,
            None => false,
        };
        match *last {
            Some(l) if l.epoch == stamp.epoch && l.offset >= stamp.offset => {}
            _ => *last = Some(stamp),
        }
        gap
    }

    /// Takes the head a history read found. Before any envelope, it is where the
    /// subscription must go on from (every push up to it was published before the
    /// read). Later reads do not move the position: a read past a hole would hide
    /// it from the connections that missed its pushes. True when the head is in a
    /// new epoch: Redis lost the history.
    fn read_head(&self, head: Stamp) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some(l) if l.epoch == head.epoch => false,
            Some(_) => {
                *last = Some(head);
                true
            }
            None => {
                *last = Some(head);
                false
            }
        }
    }

    /// Whether `head`, read from Redis, is below what this node already had in the
    /// same epoch: Redis went back in time (see `crate::history::redis`).
    fn went_back(&self, head: Stamp) -> bool {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.is_some_and(|l| l.epoch == head.epoch && head.offset < l.offset)
    }

    /// Whether the subscription is behind `head`, a head read a while ago: the
    /// pushes up to it should have arrived by now. A new epoch counts too (Redis
    /// lost the history while no push came). Moves the position to `head` when so,
    /// so that one hole is reported once.
    fn behind(&self, head: Stamp) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let behind = match *last {
            Some(l) if l.epoch == head.epoch => l.offset < head.offset,
            Some(_) => true,
            // Nothing delivered nor read yet: no recover connection to protect.
            None => false,
        };
        if behind {
            *last = Some(head);
        }
        behind
    }

    /// Asks this node's recover connections to reconnect: pushes before `at`
    /// never reached it, or the history was lost.
    fn resume_all(&self, at: Stamp) {
        // First: a connection between its read and its release checks this.
        self.holes.fetch_add(1, Ordering::SeqCst);
        let closed = self.fanout.hub().close_recovering(
            crate::history::RESUME_CODE,
            "missed pushes: reconnect with your position",
        );
        if let Some(suppressed) = GAP.admit() {
            log::warn!(
                "pushes before offset {} (epoch {}) never reached this node, or the history \
                 was lost; {closed} recover connection(s) asked to reconnect and recover \
                 ({suppressed} similar since the last warning)",
                at.offset,
                epoch_text(at.epoch)
            );
        }
    }

    fn expect_echo(&self, seq: u64) {
        let mut echoes = self.echoes.lock().unwrap_or_else(|p| p.into_inner());
        if echoes.len() >= ECHOES {
            echoes.pop_front();
        }
        echoes.push_back(seq);
    }

    /// True (and forgotten) when `seq` of this process was delivered here already.
    fn is_echo(&self, seq: u64) -> bool {
        let mut echoes = self.echoes.lock().unwrap_or_else(|p| p.into_inner());
        match echoes.iter().position(|s| *s == seq) {
            Some(at) => {
                echoes.remove(at);
                true
            }
            None => false,
        }
    }
}

/// Reads the history's head every [`HOLE_CHECK`] and, one period later, checks
/// that the subscription delivered up to it (skipped while messages wait in the
/// hand-off: a node that is behind is not missing anything yet): pushes published while this node's
/// subscription was down (and none after them) would otherwise go unnoticed until
/// the next push, leaving its recover connections silently behind. A critical task.
async fn watch_holes(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(HOLE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: Option<Stamp> = None;
    loop {
        tick.tick().await;
        let behind_here = shared.dropped.queued.load(Ordering::Relaxed) > 0;
        if !(shared.link.is_up() && shared.commands.is_up()) || behind_here {
            // Down: compare again from a head read once both are back. Messages
            // waiting in the hand-off: this node is slow, not holed (a hole shows
            // as an offset gap when they are taken).
            previous = None;
            continue;
        }
        if let Some(head) = previous.take()
            && shared.behind(head)
        {
            shared.resume_all(head);
        }
        let mut read = redis::cmd("HMGET");
        read.arg(shared.keys.history_epoch())
            .arg("epoch")
            .arg("offset");
        if let Ok((Some(epoch), Some(offset))) = shared
            .commands
            .query::<(Option<String>, Option<u64>)>(&read)
            .await
            && let Some(epoch) = parse_epoch(&epoch)
        {
            let head = Stamp { epoch, offset };
            if shared.went_back(head) {
                // Redis went back in time and nobody has published or reconnected
                // since: a read (with this node's floor) starts the new epoch now and
                // sends this node's recover connections to resume.
                let _ = (RedisBus {
                    shared: shared.clone(),
                })
                .read_history(None)
                .await;
                continue;
            }
            previous = Some(head);
        }
    }
}

/// The delivery task: takes messages off the hand-off in order and gives each to
/// this node's fan-out. A critical task.
async fn deliver(shared: Arc<Shared>, mut received: mpsc::Receiver<PushInfo>) {
    while let Some(info) = received.recv().await {
        shared.dropped.queued.fetch_sub(1, Ordering::Relaxed);
        // A `message` push is [channel, payload]; anything else is not ours.
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
            (info.data.first(), info.data.get(1))
        else {
            continue;
        };
        if channel.as_slice() != shared.channel.as_bytes() {
            continue; // the probe channel
        }
        if let Some(rest) = payload.strip_prefix(TERMINATE.as_bytes()) {
            // `t{app}:{uid}`; the origin closed its own already, and closing twice
            // is harmless.
            let parsed = std::str::from_utf8(rest)
                .ok()
                .and_then(|text| text.split_once(':'))
                .and_then(|(app, uid)| {
                    Some((Name::try_from(app).ok()?, Name::try_from(uid).ok()?))
                });
            match parsed {
                Some((app, uid)) => terminate_here(&shared.fanout, &app, &uid),
                None => shared.metrics.rejected("bus_message"),
            }
            continue;
        }
        match decode(payload).filter(|e| e.push.payload.len() <= shared.max_payload) {
            Some(envelope) => {
                if let Some(stamp) = envelope.stamp
                    && shared.advance(stamp)
                {
                    let closed = shared.fanout.hub().close_recovering(
                        crate::history::RESUME_CODE,
                        "missed pushes: reconnect with your position",
                    );
                    if let Some(suppressed) = GAP.admit() {
                        log::warn!(
                            "pushes before offset {} (epoch {}) never reached this node; \
                             {closed} recover connection(s) asked to reconnect and recover \
                             ({suppressed} similar since the last warning)",
                            stamp.offset,
                            epoch_text(stamp.epoch)
                        );
                    }
                }
                if envelope.origin == shared.origin && shared.is_echo(envelope.seq) {
                    continue;
                }
                let elapsed = unix_micros().checked_sub(envelope.sent_micros);
                if let Some(elapsed) = elapsed.filter(|&e| e < MAX_PLAUSIBLE_LATENCY_MICROS) {
                    shared.metrics.bus_latency.observe(elapsed as f64 / 1e6);
                }
                shared
                    .fanout
                    .push_stamped(envelope.push, envelope.stamp)
                    .await;
            }
            None => {
                shared.metrics.rejected("bus_message");
                if let Some(suppressed) = MALFORMED.admit() {
                    log::warn!(
                        "ignored a malformed message on {} ({suppressed} more since the last warning)",
                        shared.channel
                    );
                }
            }
        }
    }
}

/// Wire format on the channel:
/// `{kind}{sent_micros}:{origin:x}:{seq}:{epoch}:{offset}:{exclude}:{key_len}:{key}{event_len}:{event}{user_len}:{user_id}{payload}`
/// with kind `a` (all), `p` (page), `u` (uid), `c` (conn) or `h` (a Pusher
/// channel of a non-bridged app, key `{app}:{channel}`); `event` the Pusher event
/// name and `user_id` a presence client event's user, each empty for none; `origin` tells this
/// process's envelopes from others', `seq` numbers them; `epoch` (16 hex digits)
/// and `offset` (decimal) are the push's place in the history, written by the
/// publish script; `exclude` a connection id or empty. Length-prefixed so that page
/// and uid names may contain any character, and the payload is carried without
/// re-escaping.
#[cfg(test)]
fn encode(push: &Push, stamp: Option<Stamp>, origin: u64, seq: u64, sent_micros: u64) -> String {
    let (head, tail) = encode_parts(push, origin, seq, sent_micros);
    let (epoch, offset) = stamp.map_or((String::new(), String::new()), |s| {
        (epoch_text(s.epoch), s.offset.to_string())
    });
    format!("{head}{epoch}:{offset}:{tail}{}", push.payload)
}

/// The envelope around the epoch and offset that the publish script puts in:
/// what comes before them, and what comes after them up to the payload.
fn encode_parts(push: &Push, origin: u64, seq: u64, sent_micros: u64) -> (String, String) {
    let (kind, key) = target_fields(&push.target);
    let head = format!("{kind}{sent_micros}:{origin:x}:{seq}:");
    let exclude = push.exclude.map(|c| c.to_string()).unwrap_or_default();
    let event = push.event.as_deref().unwrap_or_default();
    let user = push.user_id.as_deref().unwrap_or_default();
    let tail = format!(
        "{exclude}:{}:{key}{}:{event}{}:{user}",
        key.len(),
        event.len(),
        user.len()
    );
    (head, tail)
}

/// Parses an envelope; `None` for anything else (bytes on the channel come from
/// whoever can reach Redis, so nothing here may panic).
fn decode(bytes: &[u8]) -> Option<Envelope> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (kind, rest) = text.split_at_checked(1)?;
    let (sent, rest) = rest.split_once(':')?;
    let (origin, rest) = rest.split_once(':')?;
    let (seq, rest) = rest.split_once(':')?;
    let (epoch, rest) = rest.split_once(':')?;
    let (offset, rest) = rest.split_once(':')?;
    let (exclude, rest) = rest.split_once(':')?;
    let (key_len, rest) = rest.split_once(':')?;
    let key_len: usize = key_len.parse().ok()?;
    let (key, rest) = rest.split_at_checked(key_len)?;
    let (event, rest) = counted(rest)?;
    let (user_id, payload) = counted(rest)?;
    if payload.is_empty() {
        return None; // no ingress publishes an empty frame
    }
    let stamp = match (epoch, offset) {
        ("", "") => None,
        (epoch, offset) => Some(Stamp {
            epoch: parse_epoch(epoch)?,
            offset: offset
                .parse()
                .ok()
                .filter(|_| offset.bytes().all(|b| b.is_ascii_digit()))?,
        }),
    };
    let exclude = match exclude {
        "" => None,
        text => Some(ConnKey::parse(text).ok()?),
    };
    let push = Push::new(
        target_from_fields(kind, key)?,
        ByteString::from(payload.to_owned()),
    )
    .excluding(exclude)
    .with_event(crate::history::redis::optional(event, |e| {
        crate::push::EventName::try_from(e).ok()
    })?);
    let push = Push {
        user_id: crate::history::redis::optional(user_id, |u| Name::try_from(u).ok())?,
        ..push
    };
    Some(Envelope {
        push,
        stamp,
        origin: u64::from_str_radix(origin, 16).ok()?,
        seq: seq.parse().ok()?,
        sent_micros: sent.parse().ok()?,
    })
}

/// The first byte of a `terminate_connections` message on the bus channel (no
/// push envelope starts with it: their kinds are `a`, `p`, `u`, `c`, `h`).
const TERMINATE: &str = "t";

/// Closes this node's Pusher connections of `app` signed in as `uid` with 4009
/// (Pusher's code for `terminate_connections`).
pub(super) fn terminate_here(fanout: &Fanout, app: &Name, uid: &Name) {
    let code = crate::pusher::PusherCode::Unauthorized;
    fanout.hub().terminate_user(
        app,
        uid,
        code.code(),
        "Connections terminated by the server",
    );
}

/// `{len}:{text}` at the start of `rest`: the text and what follows it.
fn counted(rest: &str) -> Option<(&str, &str)> {
    let (len, rest) = rest.split_once(':')?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.split_at_checked(len.parse().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn envelopes_round_trip_any_target_name() {
        let stamp = Some(Stamp {
            epoch: 0xfeed,
            offset: 12,
        });
        for target in [
            Target::All,
            Target::Page(Name::try_from("home").unwrap()),
            Target::Uid(Name::try_from("名前:with:colons").unwrap()),
            Target::Conn(ConnKey { node: 9, local: 1 }),
            Target::Channel(
                Name::try_from("app-1").unwrap(),
                Name::try_from("private-x:y").unwrap(),
            ),
        ] {
            let mut push = Push::new(target.clone(), r#"{"code":200,"message":"hi"}"#)
                .excluding(Some(ConnKey { node: 3, local: 4 }))
                .with_event(Some(
                    crate::push::EventName::try_from("client-é:1").unwrap(),
                ));
            push.user_id = Some(Name::try_from("u:7").unwrap());
            let back = decode(encode(&push, stamp, 0xabc, 7, 42).as_bytes()).unwrap();
            assert_eq!(back.push.target, target);
            assert_eq!(back.push.payload, push.payload);
            assert_eq!(back.push.exclude, push.exclude);
            assert_eq!(back.push.event, push.event);
            assert_eq!(back.push.user_id, push.user_id);
            assert_eq!(back.stamp, stamp);
            assert_eq!((back.origin, back.seq, back.sent_micros), (0xabc, 7, 42));
        }
        let text = encode(&Push::new(Target::All, "{}"), stamp, 1, 2, 3);
        assert_eq!(text, "a3:1:2:000000000000feed:12::0:0:0:{}");
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        assert!(
            decode(b"a1:0:0::::0:0:0:{}").is_some(),
            "the well-formed base"
        );
        for bad in [
            "",
            "é",
            "é1:0:0::::0:{}",
            "pé:0:0::::1:é{}",
            "p1:0:0::::1:é",
            "x1:0:0::::0:{}",
            "p1:0:0::::9:home{}",
            "a1:x:0::::0:{}",
            "a1:0:x::::0:{}",
            "p1:0:0::::0:{}",
            "a1:0:0::::2:ab{}",
            "a1:0:0::::0:",
            "p1:0:0::::4:home",
            "a1:0:0:000000000000feed:::0:{}",
            "a1:0:0::5::0:{}",
            "a1:0:0:FEED000000000000:5::0:{}",
            "a1:0:0:000000000000feed:+5::0:{}",
            "a1:0:0::::x:0:{}",
            "c1:0:0::::3:1-2{}",
            "a1:0:0:0:{}",
            "a1:0:0::::0:{}",
            "a1:0:0::::0:0:{}",
            "a1:0:0::::0:1:\u{7}0:{}",
            "a1:0:0::::0:0:9:x{}",
            "h1:0:0::::4:app:0:0:{}",
            "h1:0:0::::3:app0:0:{}",
        ] {
            assert!(decode(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    fn shared_for_tests() -> Shared {
        let hub = crate::hub::Hub::new(1024);
        let metrics = Metrics::new(hub.clone());
        let fanout = crate::bus::Fanout::start(hub, metrics.clone()).0;
        let link = Link::open("test", "redis://127.0.0.1:1/", None).unwrap();
        let keys = RedisKeys::new("t", "n");
        Shared {
            channel: keys.push_channel(),
            keys,
            origin: 1,
            seq: AtomicU64::new(0),
            link: link.clone(),
            commands: link,
            fanout,
            metrics,
            echoes: Mutex::new(VecDeque::new()),
            dropped: Arc::default(),
            max_payload: 1024,
            history: HistorySettings::default(),
            last: Mutex::new(None),
            holes: AtomicU64::new(0),
        }
    }

    #[tokio::test]
    async fn holes_and_new_epochs_are_found_and_lagging_pushes_are_not_holes() {
        let shared = shared_for_tests();
        let at = |epoch, offset| Stamp { epoch, offset };
        assert!(
            !shared.advance(at(1, 5)),
            "the first envelope sets the position"
        );
        assert!(!shared.advance(at(1, 6)));
        assert!(shared.advance(at(1, 8)), "7 never came");
        assert!(!shared.advance(at(1, 9)));
        assert!(
            shared.advance(at(2, 1)),
            "a new epoch: the history was lost"
        );
        // A read's head before any envelope is where the subscription goes on from.
        let fresh = shared_for_tests();
        assert!(!fresh.read_head(at(3, 10)));
        assert!(
            !fresh.advance(at(3, 9)),
            "published before the read, arriving late"
        );
        assert!(!fresh.advance(at(3, 11)));
        assert!(
            !fresh.read_head(at(3, 20)),
            "later reads do not move the position..."
        );
        assert!(
            fresh.advance(at(3, 21)),
            "...so a hole behind them is still found"
        );
        assert!(fresh.read_head(at(4, 0)), "a read in a new epoch");
        assert!(!fresh.advance(at(4, 1)));
        // The watch: a head read a period ago must have arrived.
        assert!(!fresh.behind(at(4, 1)));
        assert!(fresh.behind(at(4, 3)), "2 and 3 never came");
        assert!(!fresh.behind(at(4, 3)), "one hole is reported once");
        assert!(!fresh.advance(at(4, 3)), "a late arrival is no hole");
        assert!(
            fresh.behind(at(5, 0)),
            "Redis lost the history while no push came"
        );
        assert!(
            !shared_for_tests().behind(at(1, 9)),
            "nothing to protect yet"
        );
    }

    /// Case 8 of issue 13: what Redis sends faster than the fan-out takes it is
    /// dropped and counted, not buffered without bound.
    #[test]
    fn the_hand_off_is_bounded_and_counts_drops() {
        let metrics = Metrics::new(crate::hub::Hub::new(1024));
        let dropped = Arc::new(Dropped::default());
        let (handler, mut received) = handoff(2, dropped.clone(), metrics.clone());
        let message = || PushInfo {
            kind: PushKind::Message,
            data: vec![
                Value::BulkString(b"p:push".to_vec()),
                Value::BulkString(b"a1:0:0::::0:{}".to_vec()),
            ],
        };
        for _ in 0..5 {
            handler(message());
        }
        assert_eq!(dropped.total.load(Ordering::Relaxed), 3);
        assert!(metrics.render().contains("scenecast_bus_dropped_total 3"));
        assert!(received.try_recv().is_ok());
        assert!(received.try_recv().is_ok());
        assert!(received.try_recv().is_err());
    }

    fn target() -> impl Strategy<Value = Target> {
        prop_oneof![
            Just(Target::All),
            ".{1,40}".prop_filter_map("a name", |p| Name::try_from(p).ok().map(Target::Page)),
            ".{1,40}".prop_filter_map("a name", |u| Name::try_from(u).ok().map(Target::Uid)),
            (any::<u64>(), any::<u64>())
                .prop_map(|(node, local)| Target::Conn(ConnKey { node, local })),
            ("[a-z0-9._-]{1,10}", "[-a-zA-Z0-9_=@,.;:]{1,20}").prop_map(|(a, c)| Target::Channel(
                Name::try_from(a).unwrap(),
                Name::try_from(c).unwrap()
            )),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_any_text(text in "[apucht]?[0-9:.éa-z{}]{0,40}") {
            let _ = decode(text.as_bytes());
        }

        #[test]
        fn every_envelope_round_trips(
            target in target(),
            payload in ".{1,80}",
            origin in any::<u64>(),
            seq in any::<u64>(),
            sent in any::<u64>(),
            stamp in proptest::option::of((any::<u64>(), any::<u64>())),
            exclude in proptest::option::of((any::<u64>(), any::<u64>())),
            event in proptest::option::of("[^\\p{Cc}]{1,20}"),
            user_id in proptest::option::of("[a-z:0-9é]{1,10}"),
        ) {
            let stamp = stamp.map(|(epoch, offset)| Stamp { epoch, offset });
            let exclude = exclude.map(|(node, local)| ConnKey { node, local });
            let mut push = Push::new(target, ByteString::from(payload))
                .excluding(exclude)
                .with_event(event.map(|e| crate::push::EventName::try_from(e.as_str()).unwrap()));
            push.user_id = user_id.map(|u| Name::try_from(u).unwrap());
            let back = decode(encode(&push, stamp, origin, seq, sent).as_bytes()).unwrap();
            prop_assert_eq!(&back.push.event, &push.event);
            prop_assert_eq!(&back.push.user_id, &push.user_id);
            prop_assert_eq!(&back.push.target, &push.target);
            prop_assert_eq!(&back.push.payload, &push.payload);
            prop_assert_eq!(back.push.exclude, exclude);
            prop_assert_eq!(back.stamp, stamp);
            prop_assert_eq!((back.origin, back.seq, back.sent_micros), (origin, seq, sent));
        }
    }
}
