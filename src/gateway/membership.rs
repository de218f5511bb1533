//! A connection's place on this node: its hub entry (indexes and outbox), its
//! registry entry and its place under the connection caps, owned by one value whose
//! `Drop` gives them all back — on a normal close, a panic in the connection's task,
//! or the task being dropped (an aborted task, a worker's `LocalSet` torn down) alike.
//! Cleanup that ran only when `run()` returned would leave the hub entry (and with it
//! the outbox, which holds the socket: one descriptor leaked for the life of the
//! process), the page and uid index entries and the Redis entry behind.

use std::sync::Arc;

use crate::app::AppState;
use crate::hub::{ConnId, ConnMeta, Outbox};
use crate::net::Slot;

/// See the module documentation. Created before the `101` is written, so that a
/// push sent right after a successful connect reaches the connection.
pub(super) struct Membership {
    id: ConnId,
    state: Arc<AppState>,
    _slot: Slot,
}

impl Membership {
    /// Enters the connection in the hub (served by fan-out `worker`; with
    /// `recover`, holding its pushes: see [`Outbox::release`]) and in the
    /// registry, holding `slot` until it leaves. `None` once the hub is stopped
    /// (graceful stop): the connection must be refused.
    pub(super) fn join(
        state: Arc<AppState>,
        meta: &ConnMeta,
        worker: usize,
        slot: Slot,
        recover: bool,
    ) -> Option<(Self, Arc<Outbox>)> {
        let (id, outbox) = state.hub.open_with(meta.clone(), worker, recover)?;
        state.registry.opened(id, meta);
        Some((
            Self {
                id,
                state,
                _slot: slot,
            },
            outbox,
        ))
    }

    /// [`Membership::join`] for a Pusher connection of `app` (`bridged`: its
    /// public channels are the native pages).
    pub(super) fn join_pusher(
        state: Arc<AppState>,
        meta: &ConnMeta,
        worker: usize,
        slot: Slot,
        app: crate::push::AppSlot,
        bridged: bool,
    ) -> Option<(Self, Arc<Outbox>)> {
        let (id, outbox) = state.hub.open_pusher(meta.clone(), worker, app, bridged)?;
        state.registry.opened(id, meta);
        Some((
            Self {
                id,
                state,
                _slot: slot,
            },
            outbox,
        ))
    }

    pub(super) fn id(&self) -> ConnId {
        self.id
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Some(meta) = self.state.hub.close(self.id) {
            self.state.registry.closed(self.id, &meta);
        }
    }
}

/// A node's state as `server::start` builds it in embedded mode, for tests that
/// run the gateway's parts without an HTTP server.
#[cfg(test)]
pub(super) fn test_state(max_connections: usize, per_ip: usize) -> Arc<AppState> {
    test_state_with(crate::config::Settings::default(), max_connections, per_ip)
}

/// [`test_state`] with `settings`.
#[cfg(test)]
pub(super) fn test_state_with(
    settings: crate::config::Settings,
    max_connections: usize,
    per_ip: usize,
) -> Arc<AppState> {
    use crate::auth::Tokens;
    use crate::bus::{Bus, Fanout};
    use crate::hub::Hub;
    use crate::metrics::Metrics;
    use crate::net::ConnectionCaps;
    use crate::registry::Registry;
    use crate::scenes::SceneTable;

    let hub = Hub::new(settings.server.send_queue_bytes);
    let metrics = Metrics::new(hub.clone());
    let bus = Bus::embedded(
        Fanout::start(hub.clone(), metrics.clone()).0,
        &settings.history,
    );
    let channels = crate::pusher::ChannelState::embedded(None);
    Arc::new(AppState {
        node_id: Arc::from("test"),
        registry: Registry::Embedded(hub.clone()),
        pusher: crate::pusher::Publisher::new(bus.clone(), &settings.pusher, channels.clone()),
        bus,
        tokens: Tokens::new(&settings.auth),
        scenes: SceneTable::compile(&settings.scene_configs()).unwrap(),
        caps: ConnectionCaps::new(max_connections, per_ip),
        idempotency: crate::idempotency::Idempotency::memory(
            std::time::Duration::from_secs(settings.history.idempotency_secs),
            metrics.clone(),
        ),
        settings: Arc::new(settings),
        hub,
        metrics,
        channels,
    })
}

#[cfg(test)]
pub(super) fn test_meta(page: &str) -> ConnMeta {
    ConnMeta {
        page: Some(crate::push::Name::try_from(page).unwrap()),
        uid: None,
        session: None,
        connected_at: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    const PEER: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));

    fn join(state: &Arc<AppState>) -> Membership {
        let slot = state.caps.admit(PEER).unwrap();
        Membership::join(state.clone(), &test_meta("home"), 0, slot, false)
            .unwrap()
            .0
    }

    /// Nothing of the connection is left: hub entry, page index, cap places.
    fn assert_left(state: &AppState) {
        assert!(state.hub.is_empty());
        assert!(state.hub.page_counts().is_empty());
        assert_eq!(state.caps.open(), 0);
        assert_eq!(state.caps.addresses(), 0);
    }

    #[tokio::test]
    async fn dropping_the_membership_is_leaving() {
        let state = test_state(10, 10);
        let membership = join(&state);
        assert_eq!(state.hub.len(), 1);
        assert_eq!((state.caps.open(), state.caps.addresses()), (1, 1));
        drop(membership);
        assert_left(&state);
    }

    #[tokio::test]
    async fn a_task_that_panics_leaves() {
        let state = test_state(10, 10);
        let membership = join(&state);
        let task = tokio::spawn(async move {
            let _membership = membership;
            panic!("a bug in the connection's task");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_left(&state);
    }

    #[tokio::test]
    async fn a_task_that_is_aborted_leaves() {
        let state = test_state(10, 10);
        let membership = join(&state);
        let task = tokio::spawn(async move {
            let _membership = membership;
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        assert_eq!(state.hub.len(), 1);
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_left(&state);
    }

    #[tokio::test]
    async fn a_stopped_hub_admits_nobody_and_gives_the_slot_back() {
        let state = test_state(10, 10);
        state.hub.stop();
        let slot = state.caps.admit(PEER).unwrap();
        assert!(Membership::join(state.clone(), &test_meta("home"), 0, slot, false).is_none());
        assert_left(&state);
    }
}
