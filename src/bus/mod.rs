//! Cross-node delivery. Every ingress hands its [`Push`] to the bus; the bus makes
//! sure each node's hub delivers it exactly once.
//!
//! Embedded mode is a direct call into this node's hub; redis mode publishes on a
//! channel every node subscribes to (see [`redis`]).

mod redis;

use std::sync::Arc;

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
    Embedded { hub: Hub, metrics: Arc<Metrics> },
    Redis(RedisBus),
}

impl Bus {
    pub fn embedded(hub: Hub, metrics: Arc<Metrics>) -> Self {
        Bus::Embedded { hub, metrics }
    }

    /// Sends `push` to every matching connection of the server.
    pub async fn publish(&self, push: Push) -> Published {
        match self {
            Bus::Embedded { hub, metrics } => Published {
                delivered: deliver_local(hub, metrics, &push).delivered,
                cluster_wide: true,
            },
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
