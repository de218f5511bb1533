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

use crate::push::Push;
use crate::redis::LinkDown;

/// What a publish reports back to the ingress that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Open connections that matched the target when the push was published.
    pub delivered: usize,
    /// False when the number covers this node alone (Redis unreachable).
    pub cluster_wide: bool,
}

/// Handle to the bus.
#[derive(Clone)]
pub enum Bus {
    Embedded(Fanout),
    Redis(RedisBus),
}

impl Bus {
    /// Embedded mode: pushes go straight to this node's `fanout`.
    pub fn embedded(fanout: Fanout) -> Self {
        Bus::Embedded(fanout)
    }

    /// This node's fan-out, whichever the mode.
    pub fn fanout(&self) -> &Fanout {
        match self {
            Bus::Embedded(fanout) => fanout,
            Bus::Redis(bus) => bus.fanout(),
        }
    }

    /// Sends `push` to every matching connection of the server.
    pub async fn publish(&self, push: Push) -> Published {
        match self {
            // Counted when published, as in redis mode; the frames follow.
            Bus::Embedded(fanout) => Published {
                delivered: fanout.push_counted(push).await,
                cluster_wide: true,
            },
            Bus::Redis(bus) => bus.publish(push).await,
        }
    }

    /// Why cross-node delivery is not whole now (`None` when it is, or embedded).
    pub fn down(&self) -> Option<LinkDown> {
        match self {
            Bus::Embedded(_) => None,
            Bus::Redis(bus) => bus.down(),
        }
    }

    /// Whether cross-node delivery works now (always true in embedded mode).
    pub fn is_up(&self) -> bool {
        match self {
            Bus::Embedded(_) => true,
            Bus::Redis(bus) => bus.is_up(),
        }
    }
}
