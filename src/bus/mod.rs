//! Cross-node delivery. Every ingress hands its [`Push`] to the bus; the bus makes
//! sure each node's hub delivers it exactly once.
//!
//! Embedded mode hands the push to this node's fan-out (see [`fanout`]); redis mode
//! publishes on a channel every node subscribes to, and each node hands what it
//! receives to its own fan-out (see [`redis`]).

mod fanout;
mod redis;

pub use self::fanout::Fanout;
pub use self::redis::RedisBus;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::HistorySettings;
use crate::history::ring::Ring;
use crate::history::{Read, Stamp};
use crate::push::Push;
use crate::redis::LinkDown;

/// What a publish reports back to the ingress that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Open connections that matched the target when the push was published.
    pub delivered: usize,
    /// False when the number covers this node alone (Redis unreachable).
    pub cluster_wide: bool,
    /// The push's place in the cluster's history; `None` when it has none
    /// (published while Redis was unreachable).
    pub stamp: Option<Stamp>,
}

/// Handle to the bus.
#[derive(Clone)]
pub enum Bus {
    /// This node's fan-out and its in-memory history.
    Embedded(Fanout, Arc<Mutex<Ring>>),
    Redis(RedisBus),
}

impl Bus {
    /// Embedded mode: pushes go straight to this node's `fanout`, recorded in a
    /// history of `history.size` pushes in a new epoch.
    pub fn embedded(fanout: Fanout, history: &HistorySettings) -> Self {
        Bus::Embedded(fanout, Arc::new(Mutex::new(Ring::new(history))))
    }

    /// This node's fan-out, whichever the mode.
    pub fn fanout(&self) -> &Fanout {
        match self {
            Bus::Embedded(fanout, _) => fanout,
            Bus::Redis(bus) => bus.fanout(),
        }
    }

    /// Sends `push` to every matching connection of the server.
    pub async fn publish(&self, push: Push) -> Published {
        match self {
            // Counted when published, as in redis mode; the frames follow.
            Bus::Embedded(fanout, history) => {
                let (delivered, stamp) = fanout.push_recorded(push, history).await;
                Published {
                    delivered,
                    cluster_wide: true,
                    stamp,
                }
            }
            Bus::Redis(bus) => bus.publish(push).await,
        }
    }

    /// Closes the Pusher connections of app `app` signed in as `uid` on every
    /// node (`POST /apps/{id}/users/{uid}/terminate_connections`); false when
    /// Redis did not take the message (this node's are closed anyway).
    pub async fn terminate_user(
        &self,
        app: &crate::push::AppSlot,
        uid: &crate::push::Name,
    ) -> bool {
        match self {
            Bus::Embedded(fanout, _) => {
                redis::terminate_here(fanout, app, uid);
                true
            }
            Bus::Redis(bus) => bus.terminate_user(app, uid).await,
        }
    }

    /// The cluster's newest position and, with `since` (a position a reconnecting
    /// client gave), every push after it when the history still holds them all
    /// and `since` is in the current epoch (see [`Read`]). Read after the
    /// connection joined the hub holding, so no push falls between the two.
    pub async fn read_history(&self, since: Option<Stamp>) -> Result<Read, LinkDown> {
        match self {
            Bus::Embedded(_, history) => {
                let mut ring = history.lock().unwrap_or_else(|p| p.into_inner());
                let epoch = ring.head().epoch;
                let since = since.filter(|s| s.epoch == epoch).map(|s| s.offset);
                Ok(ring.read(since, Instant::now()))
            }
            Bus::Redis(bus) => bus.read_history(since).await,
        }
    }

    /// How many times this node found that its subscription missed pushes (or
    /// Redis lost the history) since it started; 0 in embedded mode, where nothing
    /// is missed. A `?recover=1` connection compares it before and after its
    /// preamble.
    pub fn holes(&self) -> u64 {
        match self {
            Bus::Embedded(..) => 0,
            Bus::Redis(bus) => bus.holes(),
        }
    }

    /// Pushes the history holds now on this node (embedded), or as last read.
    pub fn history_len(&self) -> usize {
        match self {
            Bus::Embedded(_, history) => history.lock().map_or(0, |ring| ring.len()),
            Bus::Redis(_) => 0,
        }
    }

    /// Why cross-node delivery is not whole now (`None` when it is, or embedded).
    pub fn down(&self) -> Option<LinkDown> {
        match self {
            Bus::Embedded(..) => None,
            Bus::Redis(bus) => bus.down(),
        }
    }

    /// Whether cross-node delivery works now (always true in embedded mode).
    pub fn is_up(&self) -> bool {
        match self {
            Bus::Embedded(..) => true,
            Bus::Redis(bus) => bus.is_up(),
        }
    }
}
