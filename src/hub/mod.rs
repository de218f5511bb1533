//! This node's open connections, indexed by page and by uid, and the fan-out.
//!
//! The hub knows nothing of HTTP or Redis: it maps targets to outboxes.
//! [`Hub::deliver`] frames the payload once ([`frame`]), takes a read lock, offers the
//! shared frame to every matching outbox (a reference-count bump and a queue push
//! each) and returns; it never waits for a client. Opens and closes take the write
//! lock briefly.
//!
//! `std::sync::RwLock` rather than tokio's: no guard is ever held across an `.await`,
//! and fan-outs from several threads proceed in parallel under the read lock.

pub mod frame;
mod outbox;
mod wake;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use outbox::{CloseReason, Offer, Outbox};
pub use wake::WakeBatch;

use crate::push::{Push, Target};

/// Node-local connection number; unique for the life of the process.
pub type ConnId = u64;

/// What is known about a connection, as recorded in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnMeta {
    pub page: Option<Arc<str>>,
    pub uid: Option<Arc<str>>,
    pub session: Option<Arc<str>>,
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
    by_page: HashMap<Arc<str>, Members>,
    by_uid: HashMap<Arc<str>, Members>,
}

struct Shared {
    state: RwLock<State>,
    next_id: AtomicU64,
    queue_limit_bytes: usize,
}

/// Cheap-to-clone handle to this node's connections.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

fn index(map: &mut HashMap<Arc<str>, Members>, key: &Arc<str>, id: ConnId, outbox: &Arc<Outbox>) {
    map.entry(key.clone())
        .or_default()
        .insert(id, outbox.clone());
}

fn unindex(map: &mut HashMap<Arc<str>, Members>, key: &Arc<str>, id: ConnId) {
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
                next_id: AtomicU64::new(1),
                queue_limit_bytes,
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

    /// Adds a connection and returns its id and the outbox its writer drains.
    pub fn open(&self, meta: ConnMeta) -> (ConnId, Arc<Outbox>) {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::new(self.shared.queue_limit_bytes));
        let mut state = self.write();
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
        (id, outbox)
    }

    /// Binds `uid` to a connection that has none yet; returns the updated metadata,
    /// or `None` when the connection is gone or already has a uid.
    pub fn bind_uid(&self, id: ConnId, uid: Arc<str>) -> Option<ConnMeta> {
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

    /// Offers `push` to every matching connection on this node, without waiting.
    pub fn deliver(&self, push: &Push) -> Delivery {
        let frame = frame::text(&push.payload);
        let state = self.read();
        let mut delivery = Delivery::default();
        let mut offer = |outbox: &Outbox| match outbox.offer(&frame) {
            Offer::Queued => delivery.delivered += 1,
            Offer::Overflowed => delivery.slow_consumers += 1,
            Offer::Closed => {}
        };
        match &push.target {
            Target::All => state.conns.values().for_each(|c| offer(&c.outbox)),
            Target::Page(page) => {
                if let Some(members) = state.by_page.get(page) {
                    members.values().for_each(|o| offer(o));
                }
            }
            Target::Uid(uid) => {
                if let Some(members) = state.by_uid.get(uid) {
                    members.values().for_each(|o| offer(o));
                }
            }
        }
        delivery
    }

    /// Open connections on this node that match `target`.
    pub fn count(&self, target: &Target) -> usize {
        let state = self.read();
        match target {
            Target::All => state.conns.len(),
            Target::Page(page) => state.by_page.get(page).map_or(0, HashMap::len),
            Target::Uid(uid) => state.by_uid.get(uid).map_or(0, HashMap::len),
        }
    }

    /// Open connections on this node.
    pub fn len(&self) -> usize {
        self.read().conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections per page on this node (connections without a page are not listed).
    pub fn page_counts(&self) -> Vec<(Arc<str>, usize)> {
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

    /// Runs `f` on every open connection's outbox, under the read lock (keep `f`
    /// short: opens and closes wait meanwhile).
    pub fn for_each_outbox(&self, mut f: impl FnMut(ConnId, &Outbox)) {
        let state = self.read();
        for (id, conn) in &state.conns {
            f(*id, &conn.outbox);
        }
    }

    /// Asks every connection to close (graceful stop).
    pub fn close_all(&self, reason: CloseReason) {
        let state = self.read();
        for conn in state.conns.values() {
            conn.outbox.close(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(page: Option<&str>, uid: Option<&str>) -> ConnMeta {
        ConnMeta {
            page: page.map(Arc::from),
            uid: uid.map(Arc::from),
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
        let (_, home) = hub.open(meta(Some("home"), Some("7")));
        let (_, home2) = hub.open(meta(Some("home"), None));
        let (_, list) = hub.open(meta(Some("list"), Some("7")));

        let page = hub.deliver(&Push::new(Target::Page("home".into()), "h"));
        assert_eq!(page.delivered, 2);
        let uid = hub.deliver(&Push::new(Target::Uid("7".into()), "u"));
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
        let (a, _) = hub.open(meta(Some("home"), None));
        let (b, _) = hub.open(meta(Some("home"), None));
        assert!(hub.bind_uid(a, "u1".into()).is_some());
        assert!(
            hub.bind_uid(a, "u2".into()).is_none(),
            "a bound uid is never re-bound"
        );
        assert_eq!(hub.count(&Target::Uid("u1".into())), 1);
        assert_eq!(hub.close(a).unwrap().uid.as_deref(), Some("u1"));
        assert_eq!(hub.count(&Target::Uid("u1".into())), 0);
        assert_eq!(hub.count(&Target::Page("home".into())), 1);
        hub.close(b);
        assert!(hub.page_counts().is_empty());
        assert!(hub.is_empty());
    }
}
