//! Cross-node delivery. Every ingress hands its [`Push`] to the bus; the bus makes
//! sure each node's hub delivers it exactly once.
//!
//! Embedded mode queues the push for this node's fan-out task (see [`fanout`]); redis
//! mode publishes on a channel every node subscribes to (see [`redis`]).

mod fanout;
mod redis;

use std::sync::Arc;

pub use self::fanout::Fanout;
pub use self::redis::RedisBus;

use crate::hub::{Delivery, Hub};
use crate::metrics::Metrics;
use crate::push::Push;

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
    Embedded { hub: Hub, fanout: Fanout },
    Redis(RedisBus),
}

impl Bus {
    /// Starts the fan-out task on the current runtime.
    pub fn embedded(hub: Hub, metrics: Arc<Metrics>) -> Self {
        let fanout = Fanout::start(hub.clone(), metrics);
        Bus::Embedded { hub, fanout }
    }

    /// Sends `push` to every matching connection of the server.
    pub async fn publish(&self, push: Push) -> Published {
        match self {
            Bus::Embedded { hub, fanout } => {
                // Counted when published, as in redis mode; the frames follow.
                let matched = hub.count(&push.target);
                let queued = fanout.push(push).await;
                Published {
                    delivered: if queued { matched } else { 0 },
                    cluster_wide: true,
                }
            }
            Bus::Redis(bus) => bus.publish(push).await,
        }
    }

    /// Whether cross-node delivery works now (always true in embedded mode).
    pub fn is_up(&self) -> bool {
        match self {
            Bus::Embedded { .. } => true,
            Bus::Redis(bus) => bus.is_up(),
        }
    }
}

/// Fans `push` out on this node and accounts for it.
pub fn deliver_local(hub: &Hub, metrics: &Metrics, push: &Push) -> Delivery {
    let delivery = hub.deliver(push);
    metrics.deliveries.inc_by(delivery.delivered as u64);
    if delivery.slow_consumers > 0 {
        metrics
            .slow_consumers
            .inc_by(delivery.slow_consumers as u64);
        log::warn!(
            "closed {} slow consumer(s) on {}: send queue full",
            delivery.slow_consumers,
            push.target
        );
    }
    delivery
}
