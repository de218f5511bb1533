//! This node's open connections, indexed by page and by uid, and the fan-out.
//!
//! The hub knows nothing of HTTP or Redis: it maps targets to outboxes. Each outbox
//! belongs to the fan-out worker of the thread serving its connection; a push is
//! framed once ([`frame`]) and every worker offers the shared frame to its own
//! matching outboxes ([`Hub::collect`]), never waiting for a client. Opens and
//! closes take the write lock briefly.
//!
//! `std::sync::RwLock` rather than tokio's: no guard is ever held across an `.await`,
//! and fan-outs from several threads proceed in parallel under the read lock.

pub mod frame;
mod outbox;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use outbox::{CloseReason, Flush, Offer, Outbox, Wire};

use crate::history::Stamp;
use crate::push::{ConnKey, MAX_CONN_NODE, Name, Push, Target};

/// Node-local connection number: random (see [`Hub::open_with`]), never 0, unique
/// among the node's open connections.
pub type ConnId = u64;

/// What is known about a connection, as recorded in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnMeta {
    pub page: Option<Name>,
    pub uid: Option<Name>,
    pub session: Option<Name>,
    /// Unix time in seconds.
    pub connected_at: u64,
}

/// The outcome of one fan-out on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Connections whose queue took the frame.
    pub delivered: usize,
    /// Connections closed because their queue was full.
    pub slow_consumers: usize,
}

struct Conn {
    meta: ConnMeta,
    outbox: Arc<Outbox>,
}

type Members = HashMap<ConnId, Arc<Outbox>>;

#[derive(Default)]
struct State {
    conns: HashMap<ConnId, Conn>,
    by_page: HashMap<Name, Members>,
    by_uid: HashMap<Name, Members>,
}

impl State {
    fn for_each_match(&self, node: u64, target: &Target, mut f: impl FnMut(&Arc<Outbox>)) {
        match target {
            Target::Conn(conn) => {
                if conn.node == node
                    && let Some(c) = self.conns.get(&conn.local)
                {
                    f(&c.outbox);
                }
            }
            Target::All => self.conns.values().for_each(|c| f(&c.outbox)),
            Target::Page(page) => {
                if let Some(members) = self.by_page.get(page) {
                    members.values().for_each(f);
                }
            }
            Target::Uid(uid) => {
                if let Some(members) = self.by_uid.get(uid) {
                    members.values().for_each(f);
                }
            }
        }
    }
}

impl Delivery {
    /// Offers `frame` to `outbox` and counts the outcome.
    pub fn offer(&mut self, outbox: &Outbox, frame: &bytes::Bytes) {
        self.count(outbox.offer(frame));
    }

    /// Counts the outcome of one offer.
    pub fn count(&mut self, offer: Offer) {
        match offer {
            Offer::Queued => self.delivered += 1,
            Offer::Overflowed => self.slow_consumers += 1,
            Offer::Closed | Offer::Skipped => {}
        }
    }
}

struct Shared {
    state: RwLock<State>,
    /// Set by [`Hub::stop`]: no connection opens any more. Read and set under the
    /// state lock, so no open slips in after the stop closed everyone.
    stopped: AtomicBool,
    /// Connections opened, the input of [`Shared::id_key`] when the OS's random
    /// source fails.
    next_id: AtomicU64,
    /// Keys the fallback connection numbers (a keyed hash of [`Shared::next_id`]).
    id_key: std::hash::RandomState,
    /// Sockets no longer in the indexes that are still finishing their close.
    closing: AtomicUsize,
    queue_limit_bytes: usize,
    /// This hub's node number, the first part of its connections' [`ConnKey`]s.
    node: u64,
}

/// See [`Hub::closing_guard`].
pub struct ClosingGuard {
    shared: Arc<Shared>,
}

impl Drop for ClosingGuard {
    fn drop(&mut self) {
        self.shared.closing.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Cheap-to-clone handle to this node's connections.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

fn index(map: &mut HashMap<Name, Members>, key: &Name, id: ConnId, outbox: &Arc<Outbox>) {
    map.entry(key.clone())
        .or_default()
        .insert(id, outbox.clone());
}

fn unindex(map: &mut HashMap<Name, Members>, key: &Name, id: ConnId) {
    if let Some(members) = map.get_mut(key) {
        members.remove(&id);
        if members.is_empty() {
            map.remove(key);
        }
    }
}

impl Hub {
    /// `queue_limit_bytes` bounds each connection's outbound queue.
    pub fn new(queue_limit_bytes: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: RwLock::new(State::default()),
                stopped: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
                id_key: std::hash::RandomState::new(),
                closing: AtomicUsize::new(0),
                queue_limit_bytes,
                node: crate::redis::instance_token() % MAX_CONN_NODE + 1,
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // The state stays consistent even if a holder panicked (every update is a
        // few inserts), so recover the guard instead of failing every later call.
        self.shared.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.shared.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's number: the first part of every local connection's [`ConnKey`]
    /// (random in 1..=[`MAX_CONN_NODE`], drawn when the hub is made).
    pub fn node(&self) -> u64 {
        self.shared.node
    }

    /// The cluster-wide id of local connection `id`.
    pub fn conn_key(&self, id: ConnId) -> ConnKey {
        ConnKey {
            node: self.shared.node,
            local: id,
        }
    }

    /// The local connection a cluster-wide id names, when it is one of this node's.
    pub fn local_id(&self, key: Option<ConnKey>) -> Option<ConnId> {
        key.filter(|k| k.node == self.shared.node).map(|k| k.local)
    }

    /// Adds a connection served by fan-out `worker` and returns its id and outbox;
    /// `None` once the hub is stopped ([`Hub::stop`]).
    pub fn open(&self, meta: ConnMeta, worker: usize) -> Option<(ConnId, Arc<Outbox>)> {
        self.open_with(meta, worker, false)
    }

    /// [`Hub::open`]; with `recover`, the connection takes pushes as envelopes and
    /// starts holding them (see [`Outbox::release`]).
    pub fn open_with(
        &self,
        meta: ConnMeta,
        worker: usize,
        recover: bool,
    ) -> Option<(ConnId, Arc<Outbox>)> {
        let mut state = self.write();
        if self.shared.stopped.load(Ordering::Relaxed) {
            return None;
        }
        let id = loop {
            let id = self.fresh_id();
            if id != 0 && !state.conns.contains_key(&id) {
                break id;
            }
        };
        let outbox = Arc::new(Outbox::for_conn(
            self.shared.queue_limit_bytes,
            worker,
            id,
            recover,
        ));
        if let Some(page) = &meta.page {
            index(&mut state.by_page, page, id, &outbox);
        }
        if let Some(uid) = &meta.uid {
            index(&mut state.by_uid, uid, id, &outbox);
        }
        state.conns.insert(
            id,
            Conn {
                meta,
                outbox: outbox.clone(),
            },
        );
        Some((id, outbox))
    }

    /// A connection number nobody can derive from other connections' ids: 64 bits
    /// from the OS's random source (a keyed hash of a counter should that fail).
    /// A connection id (`"{node}.{local}"`) is what proves a reconnect is the
    /// connection it names with `prev` (its `conn` pushes are replayed to it), and
    /// what a back office names in `conn` / `exclude`: with a counter, a visitor's
    /// own welcome told it its neighbours' ids, and `prev` replayed their pushes.
    fn fresh_id(&self) -> ConnId {
        use std::hash::BuildHasher;
        let n = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        getrandom::u64().unwrap_or_else(|_| self.shared.id_key.hash_one(n))
    }

    /// Binds `uid` to a connection that has none yet; returns the updated metadata,
    /// or `None` when the connection is gone or already has a uid.
    pub fn bind_uid(&self, id: ConnId, uid: Name) -> Option<ConnMeta> {
        let mut state = self.write();
        let state = &mut *state;
        let conn = state.conns.get_mut(&id)?;
        if conn.meta.uid.is_some() {
            return None;
        }
        index(&mut state.by_uid, &uid, id, &conn.outbox);
        conn.meta.uid = Some(uid);
        Some(conn.meta.clone())
    }

    /// Removes a connection; returns its metadata if it was open.
    pub fn close(&self, id: ConnId) -> Option<ConnMeta> {
        let mut state = self.write();
        let conn = state.conns.remove(&id)?;
        if let Some(page) = &conn.meta.page {
            unindex(&mut state.by_page, page, id);
        }
        if let Some(uid) = &conn.meta.uid {
            unindex(&mut state.by_uid, uid, id);
        }
        Some(conn.meta)
    }

    /// Offers `push` to every matching connection on this node, whatever worker
    /// serves it, from the calling thread (tests and benches; the server fans out
    /// per worker, see [`crate::bus::Fanout`]).
    pub fn deliver(&self, push: &Push) -> Delivery {
        self.deliver_stamped(push, None)
    }

    /// [`Hub::deliver`] of a push at `stamp` in the history: raw frames to raw
    /// connections, envelopes (made once, when the first one matches) to
    /// `?recover=1` connections.
    pub fn deliver_stamped(&self, push: &Push, stamp: Option<Stamp>) -> Delivery {
        let frame = frame::text(&push.payload);
        let mut envelope = None;
        let exclude = self.local_id(push.exclude);
        let state = self.read();
        let mut delivery = Delivery::default();
        state.for_each_match(self.shared.node, &push.target, |outbox| {
            if Some(outbox.id()) == exclude {
                return;
            }
            if outbox.is_recover() {
                let envelope = envelope.get_or_insert_with(|| {
                    crate::history::push_frame(stamp.map(|s| s.offset), &push.payload)
                });
                delivery.count(outbox.offer_push(stamp, envelope));
            } else {
                delivery.offer(outbox, &frame);
            }
        });
        delivery
    }

    /// Replaces `out` with the outboxes of worker `worker` that match `target`,
    /// except local connection `exclude`; the worker then writes to them without
    /// holding the hub's lock.
    pub fn collect(
        &self,
        target: &Target,
        exclude: Option<ConnId>,
        worker: usize,
        out: &mut Vec<Arc<Outbox>>,
    ) {
        out.clear();
        let state = self.read();
        state.for_each_match(self.shared.node, target, |outbox| {
            if outbox.worker() == worker && Some(outbox.id()) != exclude {
                out.push(outbox.clone());
            }
        });
    }

    /// Open connections on this node that match `target`.
    pub fn count(&self, target: &Target) -> usize {
        let state = self.read();
        match target {
            Target::Conn(conn) => {
                usize::from(conn.node == self.shared.node && state.conns.contains_key(&conn.local))
            }
            Target::All => state.conns.len(),
            Target::Page(page) => state.by_page.get(page).map_or(0, HashMap::len),
            Target::Uid(uid) => state.by_uid.get(uid).map_or(0, HashMap::len),
        }
    }

    /// [`Hub::count`] without local connection `exclude`.
    pub fn count_except(&self, target: &Target, exclude: Option<ConnId>) -> usize {
        let count = self.count(target);
        let excluded = exclude.is_some_and(|id| {
            let state = self.read();
            state.conns.get(&id).is_some_and(|conn| match target {
                Target::All => true,
                Target::Page(page) => conn.meta.page.as_ref() == Some(page),
                Target::Uid(uid) => conn.meta.uid.as_ref() == Some(uid),
                Target::Conn(key) => key.local == id,
            })
        });
        count.saturating_sub(usize::from(excluded))
    }

    /// Open connections on this node.
    pub fn len(&self) -> usize {
        self.read().conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts a closed connection whose socket is still finishing its close
    /// handshake, until the guard is dropped.
    pub fn closing_guard(&self) -> ClosingGuard {
        self.shared.closing.fetch_add(1, Ordering::Relaxed);
        ClosingGuard {
            shared: self.shared.clone(),
        }
    }

    /// No connection open, and none still closing (graceful stop).
    pub fn is_drained(&self) -> bool {
        self.is_empty() && self.shared.closing.load(Ordering::Relaxed) == 0
    }

    /// Connections per page on this node (connections without a page are not listed).
    pub fn page_counts(&self) -> Vec<(Name, usize)> {
        let state = self.read();
        let mut counts: Vec<_> = state
            .by_page
            .iter()
            .map(|(page, members)| (page.clone(), members.len()))
            .collect();
        counts.sort();
        counts
    }

    /// Every open connection's metadata, for re-registering after a Redis outage.
    pub fn snapshot(&self) -> Vec<(ConnId, ConnMeta)> {
        let state = self.read();
        state
            .conns
            .iter()
            .map(|(id, conn)| (*id, conn.meta.clone()))
            .collect()
    }

    /// Replaces `out` with every open connection's id and outbox, taken under the
    /// read lock and used after it: a walk that locks each outbox and writes to
    /// sockets must not hold up opens and closes (writers wait behind readers).
    pub fn outboxes(&self, out: &mut Vec<(ConnId, Arc<Outbox>)>) {
        out.clear();
        let state = self.read();
        out.extend(
            state
                .conns
                .iter()
                .map(|(id, conn)| (*id, conn.outbox.clone())),
        );
    }

    /// Asks every connection to close (graceful stop).
    pub fn close_all(&self, reason: CloseReason) {
        let state = self.read();
        for conn in state.conns.values() {
            conn.outbox.close(reason);
        }
    }

    /// Closes every `?recover=1` connection with `code` (see
    /// [`crate::history::RESUME_CODE`]): this node missed pushes they should have
    /// had, and they get them by reconnecting with their position. Connections
    /// still writing their preamble are left alone: their position was read from
    /// Redis just now. Returns how many were asked to close.
    pub fn close_recovering(&self, code: u16, reason: &str) -> usize {
        let close = frame::close(code, reason);
        let state = self.read();
        let mut closed = 0;
        for conn in state
            .conns
            .values()
            .filter(|c| c.outbox.is_recover() && !c.outbox.is_holding())
        {
            conn.outbox.close_with(code, close.clone());
            closed += 1;
        }
        closed
    }

    /// Graceful stop: no connection opens from now on ([`Hub::open`] says `None`),
    /// and every open one is asked to close with 1001.
    pub fn stop(&self) {
        let state = self.write();
        self.shared.stopped.store(true, Ordering::Relaxed);
        for conn in state.conns.values() {
            conn.outbox.close(CloseReason::Shutdown);
        }
    }

    /// Whether [`Hub::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> Name {
        Name::try_from(text).unwrap()
    }

    fn meta(page: Option<&str>, uid: Option<&str>) -> ConnMeta {
        ConnMeta {
            page: page.map(name),
            uid: uid.map(name),
            session: None,
            connected_at: 0,
        }
    }

    fn drained(outbox: &Outbox) -> Vec<String> {
        std::iter::from_fn(|| outbox.try_next())
            .map(|f| String::from_utf8_lossy(frame::parse(&f).unwrap().1).into_owned())
            .collect()
    }

    #[test]
    fn delivers_by_page_uid_and_all() {
        let hub = Hub::new(1 << 20);
        let (_, home) = hub.open(meta(Some("home"), Some("7")), 0).unwrap();
        let (_, home2) = hub.open(meta(Some("home"), None), 0).unwrap();
        let (_, list) = hub.open(meta(Some("list"), Some("7")), 0).unwrap();

        let page = hub.deliver(&Push::new(Target::Page(name("home")), "h"));
        assert_eq!(page.delivered, 2);
        let uid = hub.deliver(&Push::new(Target::Uid(name("7")), "u"));
        assert_eq!(uid.delivered, 2);
        let all = hub.deliver(&Push::new(Target::All, "a"));
        assert_eq!(all.delivered, 3);

        assert_eq!(drained(&home), ["h", "u", "a"]);
        assert_eq!(drained(&home2), ["h", "a"]);
        assert_eq!(drained(&list), ["u", "a"]);
    }

    #[test]
    fn close_and_bind_keep_indexes_exact() {
        let hub = Hub::new(1 << 20);
        let (a, _) = hub.open(meta(Some("home"), None), 0).unwrap();
        let (b, _) = hub.open(meta(Some("home"), None), 0).unwrap();
        assert!(hub.bind_uid(a, name("u1")).is_some());
        assert!(
            hub.bind_uid(a, name("u2")).is_none(),
            "a bound uid is never re-bound"
        );
        assert_eq!(hub.count(&Target::Uid(name("u1"))), 1);
        assert_eq!(hub.close(a).unwrap().uid.as_deref(), Some("u1"));
        assert_eq!(hub.count(&Target::Uid(name("u1"))), 0);
        assert_eq!(hub.count(&Target::Page(name("home"))), 1);
        hub.close(b);
        assert!(hub.page_counts().is_empty());
        assert!(hub.is_empty());
    }

    #[test]
    fn a_stopped_hub_closes_everyone_and_opens_nobody() {
        let hub = Hub::new(1 << 20);
        let (_, open) = hub.open(meta(Some("home"), None), 0).unwrap();
        hub.stop();
        assert_eq!(open.closing(), Some(1001));
        assert!(hub.open(meta(Some("home"), None), 0).is_none());
        assert_eq!(
            hub.len(),
            1,
            "the open one leaves when its close is written"
        );
    }
}
