//! Connection metadata, the side channel of the data path: the gateway reports opens,
//! uid bindings and closes here, and presence/stats read it back.
//!
//! Two modes behind one handle:
//! - embedded: the hub's own indexes *are* the registry (one node, nothing stored twice);
//! - redis: the hash `{prefix}:conns` plus per-page/uid/node sets, kept by a background
//!   worker so that no connection ever waits on Redis (see [`redis`]).

mod redis;

use std::sync::Arc;

use serde::Serialize;

use crate::config::RedisSettings;
use crate::hub::{ConnId, ConnMeta, Hub};
use crate::metrics::Metrics;
use crate::push::Target;

pub use self::redis::{RedisRegistry, StartError, StartRefused};

use crate::redis::{Link, LinkDown};

/// The JSON value stored per connection in `{prefix}:conns`.
#[derive(Debug, Serialize)]
pub struct ConnRecord<'a> {
    pub page: Option<&'a str>,
    pub uid: Option<&'a str>,
    pub session: Option<&'a str>,
    pub node: &'a str,
    pub connected_at: u64,
}

impl<'a> ConnRecord<'a> {
    pub fn new(meta: &'a ConnMeta, node: &'a str) -> Self {
        Self {
            page: meta.page.as_deref(),
            uid: meta.uid.as_deref(),
            session: meta.session.as_deref(),
            node,
            connected_at: meta.connected_at,
        }
    }
}

/// A count, and whether it covers the whole cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub connections: usize,
    /// False when Redis could not be asked and the number is this node's alone.
    pub cluster_wide: bool,
}

/// Connections per page and in total.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub pages: Vec<PageCount>,
    pub connections: usize,
    pub nodes: usize,
    pub cluster_wide: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PageCount {
    pub page: String,
    pub connections: usize,
}

/// Handle to the registry in either mode.
#[derive(Clone)]
pub enum Registry {
    Embedded(Hub),
    Redis(RedisRegistry),
}

impl Registry {
    /// Embedded without a Redis `link`; otherwise claims `node` in Redis and
    /// starts the Redis worker (the server starts even if Redis is down). Returns
    /// the critical task to supervise with it. `origin` is this process's token
    /// ([`crate::redis::instance_token`]).
    pub async fn start(
        settings: &RedisSettings,
        link: Option<Link>,
        node: &str,
        origin: u64,
        hub: Hub,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Vec<(&'static str, tokio::task::JoinHandle<()>)>), StartError> {
        let Some(link) = link else {
            return Ok((Registry::Embedded(hub), Vec::new()));
        };
        let (registry, tasks) =
            RedisRegistry::start(settings, link, node, origin, hub, metrics).await?;
        Ok((Registry::Redis(registry), tasks))
    }

    pub fn mode(&self) -> &'static str {
        match self {
            Registry::Embedded(_) => "embedded",
            Registry::Redis(_) => "redis",
        }
    }

    /// Whether Redis is reachable now (always false in embedded mode).
    pub fn redis_up(&self) -> bool {
        match self {
            Registry::Embedded(_) => false,
            Registry::Redis(redis) => redis.is_up(),
        }
    }

    /// Why the registry's Redis link is down (`None` when up, or embedded).
    pub fn down(&self) -> Option<LinkDown> {
        match self {
            Registry::Embedded(_) => None,
            Registry::Redis(redis) => redis.down(),
        }
    }

    /// A connection opened. Never waits.
    pub fn opened(&self, id: ConnId, meta: &ConnMeta) {
        if let Registry::Redis(redis) = self {
            redis.opened(id, meta);
        }
    }

    /// A connection's metadata changed (a uid was bound). Never waits.
    pub fn updated(&self, id: ConnId, meta: &ConnMeta) {
        if let Registry::Redis(redis) = self {
            redis.opened(id, meta);
        }
    }

    /// A connection closed. Never waits.
    pub fn closed(&self, id: ConnId, meta: &ConnMeta) {
        if let Registry::Redis(redis) = self {
            redis.closed(id, meta);
        }
    }

    /// Open connections matching `target`, cluster-wide when Redis is on.
    pub async fn count(&self, target: &Target) -> Count {
        match self {
            Registry::Embedded(hub) => Count {
                connections: hub.count(target),
                cluster_wide: true,
            },
            Registry::Redis(redis) => redis.count(target).await,
        }
    }

    /// Connections per page and totals, cluster-wide when Redis is on.
    pub async fn stats(&self) -> Stats {
        match self {
            Registry::Embedded(hub) => local_stats(hub, true),
            Registry::Redis(redis) => redis.stats().await,
        }
    }

    /// Removes this node's entries (graceful stop).
    pub async fn shutdown(&self) {
        if let Registry::Redis(redis) = self {
            redis.shutdown().await;
        }
    }
}

/// Stats from this node's hub alone.
pub fn local_stats(hub: &Hub, cluster_wide: bool) -> Stats {
    Stats {
        pages: hub
            .page_counts()
            .into_iter()
            .map(|(page, connections)| PageCount {
                page: page.to_string(),
                connections,
            })
            .collect(),
        connections: hub.len(),
        nodes: 1,
        cluster_wide,
    }
}
