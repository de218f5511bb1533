//! The state every handler shares, built once at start and injected with `web::Data`.

use std::sync::Arc;

use crate::auth::Tokens;
use crate::bus::{Bus, Published};
use crate::config::Settings;
use crate::hub::Hub;
use crate::idempotency::Idempotency;
use crate::metrics::Metrics;
use crate::net::ConnectionCaps;
use crate::push::{Ingress, Push};
use crate::redis::LinkDown;
use crate::registry::Registry;
use crate::scenes::SceneTable;

pub struct AppState {
    pub settings: Arc<Settings>,
    pub node_id: Arc<str>,
    pub hub: Hub,
    pub registry: Registry,
    pub bus: Bus,
    pub tokens: Tokens,
    pub scenes: SceneTable,
    pub metrics: Arc<Metrics>,
    /// The WebSocket connection caps (`server.max_connections[_per_ip]`).
    pub caps: ConnectionCaps,
    /// Replies of keyed pushes (`Idempotency-Key`), in memory or in Redis.
    pub idempotency: Idempotency,
    /// Pusher channel state: subscriptions, presence members, cache channels.
    pub channels: crate::pusher::ChannelState,
    /// Pusher events onto the bus (gateway, HTTP API, member events).
    pub pusher: crate::pusher::Publisher,
}

impl AppState {
    /// The one entry to the push path for every ingress.
    pub async fn publish(&self, push: Push, ingress: Ingress) -> Published {
        self.metrics.push_received(ingress);
        if let crate::push::Target::Page(page) = &push.target {
            self.pusher
                .cache_native(page, push.event_name(), &push.payload);
        }
        let published = self.bus.publish(push).await;
        log::debug!(
            "{} push delivered to {}",
            ingress.as_str(),
            published.delivered
        );
        published
    }

    /// Redis mode with both the registry and the bus connected.
    pub fn redis_up(&self) -> bool {
        self.registry.redis_up() && self.bus.is_up()
    }

    /// The first Redis link that is down (or lost pushes lately), with why and
    /// since when; `None` in embedded mode or when all is well. Read from memory:
    /// no Redis round trip.
    pub fn cluster_down(&self) -> Option<LinkDown> {
        self.bus.down().or_else(|| self.registry.down())
    }
}
