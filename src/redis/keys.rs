//! Names of every Redis key and channel scenecast uses, under `redis.prefix`.
//! The registry writes them; the bus reads the counts and publishes on the channel.

use crate::hub::ConnId;
use crate::push::{Name, Target};

#[derive(Debug, Clone)]
pub struct RedisKeys {
    pub prefix: String,
    /// This node's id.
    pub node: String,
}

impl RedisKeys {
    pub fn new(prefix: &str, node: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            node: node.to_string(),
        }
    }

    /// Hash: connection id → JSON record.
    pub fn conns(&self) -> String {
        format!("{}:conns", self.prefix)
    }
    /// Set: ids of connections on `page` (a [`Name`]: bounded, no control characters).
    pub fn page(&self, page: &Name) -> String {
        format!("{}:page:{page}", self.prefix)
    }
    /// Set: pages that had connections (`/api/stats` reads it instead of scanning
    /// the keyspace; emptied pages are removed as it reads).
    pub fn pages(&self) -> String {
        format!("{}:pages", self.prefix)
    }
    /// Set: ids of connections bound to `uid` (a [`Name`]).
    pub fn uid(&self, uid: &Name) -> String {
        format!("{}:uid:{uid}", self.prefix)
    }
    /// Set: ids owned by `node` (for crash clean-up).
    pub fn owned(&self, node: &str) -> String {
        format!("{}:node:{node}:conns", self.prefix)
    }
    /// String with TTL: `node` is alive while it exists.
    pub fn alive(&self, node: &str) -> String {
        format!("{}:node:{node}:alive", self.prefix)
    }
    /// Set: nodes that registered.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    /// Pub/sub channel every node subscribes to.
    pub fn push_channel(&self) -> String {
        format!("{}:push", self.prefix)
    }
    /// Pub/sub channel only this node subscribes to: its bus link's health probe
    /// publishes there, and the receiver count says whether the subscription lives.
    pub fn probe_channel(&self) -> String {
        format!("{}:node:{}:probe", self.prefix, self.node)
    }
    /// Hash: the history's `epoch` (16 hex digits) and its newest `offset`; gone
    /// when Redis lost its data, and then made again in a new epoch.
    pub fn history_epoch(&self) -> String {
        format!("{}:history:epoch", self.prefix)
    }
    /// Stream: the last `history.size` pushes, entry id `<offset>-0`.
    pub fn history(&self) -> String {
        format!("{}:history", self.prefix)
    }
    /// String with TTL: the pending marker or the remembered reply of one
    /// idempotency key, named by the key's SHA-256 in hex (never the key's text).
    pub fn idempotency(&self, sha256_hex: &str) -> String {
        format!("{}:idem:{sha256_hex}", self.prefix)
    }
    /// Base of the Pusher channel state's keys (`{prefix}:pusher:…`; the layout is
    /// in `src/pusher/state/redis.rs`).
    pub fn pusher(&self) -> String {
        format!("{}:pusher", self.prefix)
    }
    /// Cluster-unique id of a local connection.
    pub fn conn_id(&self, id: ConnId) -> String {
        format!("{}:{id}", self.node)
    }

    /// The command counting open connections that match `target`, cluster-wide.
    pub fn count(&self, target: &Target) -> redis::Cmd {
        match target {
            Target::All => redis::cmd("HLEN").arg(self.conns()).clone(),
            Target::Page(page) => redis::cmd("SCARD").arg(self.page(page)).clone(),
            Target::Uid(uid) => redis::cmd("SCARD").arg(self.uid(uid)).clone(),
            // The registry does not index connections by their cluster-wide id:
            // at most one connection matches.
            Target::Conn(_) => redis::cmd("ECHO").arg(1).clone(),
            // The registry does not index Pusher channels of non-bridged apps (the
            // channel state does).
            Target::Channel(..) => redis::cmd("ECHO").arg(0).clone(),
        }
    }
}
