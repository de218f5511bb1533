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

pub use outbox::{CloseReason, Flush, Kind, Offer, Outbox, Wire};

use crate::history::Stamp;
use crate::push::{AppSlot, ConnKey, MAX_CONN_NODE, Name, Push, Target};
use crate::pusher::channel::SERVER_TO_USER_PREFIX;

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
    /// A Pusher connection's side (`None` for a native one).
    pusher: Option<PusherSide>,
}

/// What the hub keeps of a Pusher connection: its app, the channels it is
/// subscribed to (as the [`Target`] whose pushes it takes: `Page` for the bridged
/// app, `Channel` for the others), and the user it signed in as.
struct PusherSide {
    app: AppSlot,
    bridged: bool,
    subscriptions: Vec<Target>,
    user: Option<Name>,
}

type Members = HashMap<ConnId, Arc<Outbox>>;

#[derive(Default)]
struct State {
    conns: HashMap<ConnId, Conn>,
    /// Native connections by page, and the bridged Pusher app's subscribers by
    /// channel: one namespace.
    by_page: HashMap<Name, Members>,
    /// Native connections by uid.
    by_uid: HashMap<Name, Members>,
    /// Subscribers of the channels of non-bridged Pusher apps, by (app, channel).
    by_channel: HashMap<(AppSlot, Name), Members>,
    /// Signed-in Pusher connections by (app, user id).
    by_user: HashMap<(AppSlot, Name), Members>,
    /// Pusher connections open.
    pusher_conns: usize,
    /// Pusher connections open per app.
    pusher_apps: HashMap<AppSlot, usize>,
}

impl State {
    fn for_each_match(&self, node: u64, target: &Target, mut f: impl FnMut(&Arc<Outbox>)) {
        match target {
            Target::Conn(conn) => {
                if conn.node == node
                    && let Some(c) = self.conns.get(&conn.local)
                    && c.pusher.is_none()
                {
                    f(&c.outbox);
                }
            }
            // Pusher has no broadcast channel: `all` is the native connections.
            Target::All => self
                .conns
                .values()
                .filter(|c| c.pusher.is_none())
                .for_each(|c| f(&c.outbox)),
            Target::Page(page) => {
                if let Some(members) = self.by_page.get(page) {
                    members.values().for_each(f);
                }
            }
            Target::Uid(uid) => {
                if let Some(members) = self.by_uid.get(uid) {
                    members.values().for_each(&mut f);
                }
                // The bridged app's signed-in subscribers of `#server-to-user-{uid}`
                // (only the user's own connections may subscribe to it).
                if self.pusher_conns > 0 {
                    let channel = format!("{SERVER_TO_USER_PREFIX}{uid}");
                    if let Some(members) = self.by_page.get(channel.as_str()) {
                        members.values().for_each(f);
                    }
                }
            }
            Target::Channel(app, channel) => {
                if let Some(members) = self.by_channel.get(&(app.clone(), channel.clone())) {
                    members.values().for_each(f);
                }
            }
        }
    }

    fn count(&self, node: u64, target: &Target) -> usize {
        match target {
            Target::All => self.conns.len() - self.pusher_conns,
            Target::Page(page) => self.by_page.get(page).map_or(0, HashMap::len),
            Target::Channel(app, channel) => self
                .by_channel
                .get(&(app.clone(), channel.clone()))
                .map_or(0, HashMap::len),
            Target::Uid(_) | Target::Conn(_) => {
                let mut n = 0;
                self.for_each_match(node, target, |_| n += 1);
                n
            }
        }
    }
}

/// The pushes a Pusher subscription to `channel` of `app` takes.
pub fn subscription_target(app: &AppSlot, bridged: bool, channel: &Name) -> Target {
    if bridged {
        Target::Page(channel.clone())
    } else {
        Target::Channel(app.clone(), channel.clone())
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

fn index<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Members>,
    key: &K,
    id: ConnId,
    outbox: &Arc<Outbox>,
) {
    map.entry(key.clone())
        .or_default()
        .insert(id, outbox.clone());
}

fn unindex<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Members>, key: &K, id: ConnId) {
    if let Some(members) = map.get_mut(key) {
        members.remove(&id);
        if members.is_empty() {
            map.remove(key);
        }
    }
}

fn unindex_target(state: &mut State, target: &Target, id: ConnId) {
    match target {
        Target::Page(page) => unindex(&mut state.by_page, page, id),
        Target::Channel(app, channel) => {
            unindex(&mut state.by_channel, &(app.clone(), channel.clone()), id)
        }
        _ => {}
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
        let id = self.fresh_id(&state);
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
                pusher: None,
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
    /// Never 0, never an open connection's (`state` is the write-locked state).
    fn fresh_id(&self, state: &State) -> ConnId {
        use std::hash::BuildHasher;
        loop {
            let n = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            let id = getrandom::u64().unwrap_or_else(|_| self.shared.id_key.hash_one(n));
            if id != 0 && !state.conns.contains_key(&id) {
                return id;
            }
        }
    }

    /// Adds a Pusher connection of `app` (`bridged`: its public channels are the
    /// native pages) served by fan-out `worker`; it takes no push until it
    /// subscribes ([`Hub::subscribe`]). `None` once the hub is stopped.
    pub fn open_pusher(
        &self,
        meta: ConnMeta,
        worker: usize,
        app: AppSlot,
        bridged: bool,
    ) -> Option<(ConnId, Arc<Outbox>)> {
        let mut state = self.write();
        if self.shared.stopped.load(Ordering::Relaxed) {
            return None;
        }
        let id = self.fresh_id(&state);
        let outbox = Arc::new(Outbox::of_kind(
            self.shared.queue_limit_bytes,
            worker,
            id,
            Kind::Pusher,
        ));
        state.pusher_conns += 1;
        *state.pusher_apps.entry(app.clone()).or_default() += 1;
        state.conns.insert(
            id,
            Conn {
                meta,
                outbox: outbox.clone(),
                pusher: Some(PusherSide {
                    app,
                    bridged,
                    subscriptions: Vec::new(),
                    user: None,
                }),
            },
        );
        Some((id, outbox))
    }

    /// Subscribes Pusher connection `id` to `channel`; false when it is gone, not
    /// a Pusher connection, or subscribed already.
    pub fn subscribe(&self, id: ConnId, channel: &Name) -> bool {
        let mut state = self.write();
        let state = &mut *state;
        let Some(conn) = state.conns.get_mut(&id) else {
            return false;
        };
        let Some(side) = conn.pusher.as_mut() else {
            return false;
        };
        let target = subscription_target(&side.app, side.bridged, channel);
        if side.subscriptions.contains(&target) {
            return false;
        }
        match &target {
            Target::Page(page) => index(&mut state.by_page, page, id, &conn.outbox),
            Target::Channel(app, channel) => index(
                &mut state.by_channel,
                &(app.clone(), channel.clone()),
                id,
                &conn.outbox,
            ),
            _ => return false,
        }
        side.subscriptions.push(target);
        true
    }

    /// Unsubscribes Pusher connection `id` from `channel`; false when it was not
    /// subscribed.
    pub fn unsubscribe(&self, id: ConnId, channel: &Name) -> bool {
        let mut state = self.write();
        let state = &mut *state;
        let Some(side) = state.conns.get_mut(&id).and_then(|c| c.pusher.as_mut()) else {
            return false;
        };
        let target = subscription_target(&side.app, side.bridged, channel);
        let Some(at) = side.subscriptions.iter().position(|t| *t == target) else {
            return false;
        };
        side.subscriptions.swap_remove(at);
        unindex_target(state, &target, id);
        true
    }

    /// Whether Pusher connection `id` is subscribed to `channel`.
    pub fn is_subscribed(&self, id: ConnId, channel: &Name) -> bool {
        let state = self.read();
        state
            .conns
            .get(&id)
            .and_then(|c| c.pusher.as_ref())
            .is_some_and(|side| {
                let target = subscription_target(&side.app, side.bridged, channel);
                side.subscriptions.contains(&target)
            })
    }

    /// Binds Pusher connection `id` to user `uid` (`pusher:signin`); returns its
    /// updated metadata, `None` when it is gone, not a Pusher connection, or
    /// signed in already.
    pub fn bind_user(&self, id: ConnId, uid: Name) -> Option<ConnMeta> {
        let mut state = self.write();
        let state = &mut *state;
        let conn = state.conns.get_mut(&id)?;
        let side = conn.pusher.as_mut()?;
        if side.user.is_some() {
            return None;
        }
        index(
            &mut state.by_user,
            &(side.app.clone(), uid.clone()),
            id,
            &conn.outbox,
        );
        side.user = Some(uid.clone());
        conn.meta.uid = Some(uid);
        Some(conn.meta.clone())
    }

    /// The user Pusher connection `id` signed in as.
    pub fn user_of(&self, id: ConnId) -> Option<Name> {
        let state = self.read();
        state.conns.get(&id)?.pusher.as_ref()?.user.clone()
    }

    /// Closes this node's Pusher connections of `app` signed in as `uid` with
    /// `code` (`terminate_connections`); returns how many.
    pub fn terminate_user(&self, app: &AppSlot, uid: &Name, code: u16, reason: &str) -> usize {
        let close = frame::close(code, reason);
        let state = self.read();
        let Some(members) = state.by_user.get(&(app.clone(), uid.clone())) else {
            return 0;
        };
        for outbox in members.values() {
            outbox.close_with(code, close.clone());
        }
        members.len()
    }

    /// Pusher connections of `app` open on this node.
    pub fn pusher_app_len(&self, app: &str) -> usize {
        self.read().pusher_apps.get(app).copied().unwrap_or(0)
    }

    /// Pusher connections open on this node.
    pub fn pusher_len(&self) -> usize {
        self.read().pusher_conns
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
        let state = &mut *state;
        let conn = state.conns.remove(&id)?;
        if let Some(page) = &conn.meta.page {
            unindex(&mut state.by_page, page, id);
        }
        match conn.pusher {
            None => {
                if let Some(uid) = &conn.meta.uid {
                    unindex(&mut state.by_uid, uid, id);
                }
            }
            Some(side) => {
                state.pusher_conns = state.pusher_conns.saturating_sub(1);
                if let Some(n) = state.pusher_apps.get_mut(&side.app) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        state.pusher_apps.remove(&side.app);
                    }
                }
                for target in &side.subscriptions {
                    unindex_target(state, target, id);
                }
                if let Some(user) = side.user {
                    unindex(&mut state.by_user, &(side.app, user), id);
                }
            }
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
        let mut pusher = None;
        let exclude = self.local_id(push.exclude);
        let state = self.read();
        let mut delivery = Delivery::default();
        state.for_each_match(self.shared.node, &push.target, |outbox| {
            if Some(outbox.id()) == exclude {
                return;
            }
            if outbox.is_pusher() {
                if let Some(frame) = pusher.get_or_insert_with(|| pusher_frame(push)) {
                    delivery.offer(outbox, frame);
                }
            } else if outbox.is_recover() {
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
        self.read().count(self.shared.node, target)
    }

    /// [`Hub::count`] without local connection `exclude`.
    pub fn count_except(&self, target: &Target, exclude: Option<ConnId>) -> usize {
        let count = self.count(target);
        let excluded = exclude.is_some_and(|id| {
            let state = self.read();
            state.conns.get(&id).is_some_and(|conn| match &conn.pusher {
                // A uid push reaches a Pusher connection through its
                // `#server-to-user-{uid}` subscription.
                Some(side) => match target {
                    Target::Uid(uid) => side.subscriptions.iter().any(|t| {
                        matches!(t, Target::Page(page)
                            if page.strip_prefix(SERVER_TO_USER_PREFIX) == Some(uid.as_str()))
                    }),
                    _ => side.subscriptions.contains(target),
                },
                None => match target {
                    Target::All => true,
                    Target::Page(page) => conn.meta.page.as_ref() == Some(page),
                    Target::Uid(uid) => conn.meta.uid.as_ref() == Some(uid),
                    Target::Conn(key) => key.local == id,
                    Target::Channel(..) => false,
                },
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

/// The channel a Pusher subscriber sees a push to `target` on: the page, the
/// channel, or the user's `#server-to-user-{uid}`; `None` for targets Pusher
/// connections never take (`all`, `conn`).
pub fn pusher_channel(target: &Target) -> Option<std::borrow::Cow<'_, str>> {
    match target {
        Target::Page(page) => Some(page.as_str().into()),
        Target::Channel(_, channel) => Some(channel.as_str().into()),
        Target::Uid(uid) => Some(format!("{SERVER_TO_USER_PREFIX}{uid}").into()),
        Target::All | Target::Conn(_) => None,
    }
}

/// The frame Pusher subscribers get for `push` (framed once per push, shared by
/// all of them); `None` when Pusher connections do not take it.
pub fn pusher_frame(push: &Push) -> Option<bytes::Bytes> {
    let channel = pusher_channel(&push.target)?;
    Some(frame::text(&crate::pusher::protocol::pushed_event(
        push.event_name(),
        &channel,
        &push.payload,
        push.user_id.as_deref(),
    )))
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
    fn pusher_subscribers_share_one_event_frame_and_natives_get_the_payload() {
        use crate::push::EventName;
        let hub = Hub::new(1 << 20);
        let (_, native) = hub.open(meta(Some("orders"), None), 0).unwrap();
        let (a, bridged) = hub
            .open_pusher(meta(None, None), 0, name("1"), true)
            .unwrap();
        let (b, other) = hub
            .open_pusher(meta(None, None), 0, name("2"), false)
            .unwrap();
        assert!(hub.subscribe(a, &name("orders")));
        assert!(!hub.subscribe(a, &name("orders")), "subscribed once");
        assert!(hub.subscribe(b, &name("orders")));
        assert_eq!(hub.count(&Target::Page(name("orders"))), 2);

        let push = Push::new(Target::Page(name("orders")), r#"{"id":1}"#)
            .with_event(Some(EventName::try_from("paid").unwrap()));
        assert_eq!(hub.deliver(&push).delivered, 2);
        assert_eq!(drained(&native), [r#"{"id":1}"#]);
        assert_eq!(
            drained(&bridged),
            [r#"{"event":"paid","channel":"orders","data":"{\"id\":1}"}"#]
        );
        assert!(
            drained(&other).is_empty(),
            "app 2's orders is another channel"
        );

        let push = Push::new(Target::Channel(name("2"), name("orders")), "x");
        assert_eq!(hub.deliver(&push).delivered, 1);
        assert_eq!(
            drained(&other),
            [r#"{"event":"scenecast.push","channel":"orders","data":"x"}"#]
        );
        assert_eq!(hub.deliver(&Push::new(Target::All, "all")).delivered, 1);
        assert_eq!(drained(&native), ["all"]);
        assert!(drained(&bridged).is_empty(), "all is native only");

        // A signed-in user's #server-to-user channel takes that uid's pushes.
        assert!(hub.bind_user(a, name("7")).is_some());
        assert!(hub.bind_user(a, name("8")).is_none(), "signed in once");
        assert!(hub.subscribe(a, &name("#server-to-user-7")));
        assert_eq!(
            hub.deliver(&Push::new(Target::Uid(name("7")), "u"))
                .delivered,
            1
        );
        assert_eq!(
            drained(&bridged),
            [r##"{"event":"scenecast.push","channel":"#server-to-user-7","data":"u"}"##]
        );
        assert_eq!(hub.terminate_user(&name("1"), &name("7"), 4009, "bye"), 1);
        assert_eq!(bridged.closing(), Some(4009));

        hub.close(a);
        hub.close(b);
        assert_eq!(hub.count(&Target::Page(name("orders"))), 1);
        assert_eq!(hub.pusher_len(), 0);
        assert_eq!(hub.pusher_app_len("1"), 0);
        assert_eq!(hub.terminate_user(&name("1"), &name("7"), 4009, "bye"), 0);
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
