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
    /// Enters the connection in the hub (served by fan-out `worker`) and in the
    /// registry, holding `slot` until it leaves. `None` once the hub is stopped
    /// (graceful stop): the connection must be refused.
    pub(super) fn join(
        state: Arc<AppState>,
        meta: &ConnMeta,
        worker: usize,
        slot: Slot,
    ) -> Option<(Self, Arc<Outbox>)> {
        let (id, outbox) = state.hub.open(meta.clone(), worker)?;
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
