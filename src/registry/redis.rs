//! The registry in Redis, shared by every node:
//!
//! | key                           | type   | content                                   |
//! |-------------------------------|--------|-------------------------------------------|
//! | `{prefix}:conns`              | hash   | connection id → JSON [`ConnRecord`]       |
//! | `{prefix}:page:{page}`        | set    | ids of connections on that page           |
//! | `{prefix}:uid:{uid}`          | set    | ids of connections bound to that uid      |
//! | `{prefix}:node:{node}:conns`  | set    | ids owned by that node (crash clean-up)   |
//! | `{prefix}:node:{node}:alive`  | string | liveness key, TTL `node_ttl_secs`         |
//! | `{prefix}:nodes`              | set    | nodes that registered                     |
//!
//! Connection ids are `{node}:{n}`, unique across nodes.
//!
//! One worker task owns all writes. Gateways hand it events through a bounded channel
//! and never wait; when Redis is away the worker drops events and, once Redis is back,
//! rewrites this node's whole state from the hub ("resync"). That one mechanism covers
//! start-up, Redis restarts that lost data, and a node that was presumed dead by its
//! peers while it was cut off. Memory stays bounded by the channel's capacity.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, oneshot};

use super::keys::RedisKeys as Keys;
use super::{ConnRecord, Count, PageCount, Stats, local_stats};
use crate::config::RedisSettings;
use crate::hub::{ConnId, ConnMeta, Hub};
use crate::metrics::Metrics;
use crate::push::Target;

/// Events waiting for the worker; past this the worker resyncs instead.
const EVENT_CAPACITY: usize = 65_536;
/// Most events written in one pipeline.
const BATCH: usize = 512;
/// Connections re-registered per pipeline during a resync.
const RESYNC_CHUNK: usize = 1_000;
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Removes every entry a node owns, and its index memberships. Used for a crashed
/// node (by the survivors), for a graceful stop, and before a resync.
const PURGE_NODE: &str = r#"
local p = ARGV[1]
local owned = p .. ':node:' .. ARGV[2] .. ':conns'
local ids = redis.call('SMEMBERS', owned)
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', p .. ':conns', id)
  if raw then
    local ok, rec = pcall(cjson.decode, raw)
    if ok and type(rec) == 'table' then
      if type(rec.page) == 'string' then redis.call('SREM', p .. ':page:' .. rec.page, id) end
      if type(rec.uid) == 'string' then redis.call('SREM', p .. ':uid:' .. rec.uid, id) end
    end
    redis.call('HDEL', p .. ':conns', id)
  end
end
redis.call('DEL', owned)
return #ids
"#;

enum Event {
    Opened(ConnId, ConnMeta),
    Closed(ConnId, ConnMeta),
    Shutdown(oneshot::Sender<()>),
}

struct Shared {
    keys: Keys,
    events: mpsc::Sender<Event>,
    /// Set when an event could not be queued: the worker must rewrite everything.
    resync: AtomicBool,
    up: AtomicBool,
    /// The worker's current connection, cloned by readers (presence, stats).
    conn: Mutex<Option<MultiplexedConnection>>,
    hub: Hub,
    metrics: Arc<Metrics>,
}

/// Handle to the Redis-backed registry.
#[derive(Clone)]
pub struct RedisRegistry {
    shared: Arc<Shared>,
}

impl RedisRegistry {
    pub fn start(
        settings: &RedisSettings,
        node: &str,
        hub: Hub,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let client =
            redis::Client::open(settings.url.as_str()).map_err(|e| format!("redis.url: {e}"))?;
        let (events, rx) = mpsc::channel(EVENT_CAPACITY);
        let shared = Arc::new(Shared {
            keys: Keys::new(&settings.prefix, node),
            events,
            resync: AtomicBool::new(true),
            up: AtomicBool::new(false),
            conn: Mutex::new(None),
            hub,
            metrics,
        });
        let worker = Worker {
            shared: shared.clone(),
            client,
            ttl: Duration::from_secs(settings.node_ttl_secs),
            rx,
        };
        tokio::spawn(worker.run());
        Ok(Self { shared })
    }

    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    fn send(&self, event: Event) {
        if self.shared.events.try_send(event).is_err() {
            self.shared.resync.store(true, Ordering::Relaxed);
        }
    }

    pub fn opened(&self, id: ConnId, meta: &ConnMeta) {
        self.send(Event::Opened(id, meta.clone()));
    }

    pub fn closed(&self, id: ConnId, meta: &ConnMeta) {
        self.send(Event::Closed(id, meta.clone()));
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        self.shared.conn.lock().ok().and_then(|c| c.clone())
    }

    pub async fn count(&self, target: &Target) -> Count {
        let keys = &self.shared.keys;
        let counted: Option<usize> = match self.connection() {
            None => None,
            Some(mut conn) => {
                let result: redis::RedisResult<usize> =
                    keys.count(target).query_async(&mut conn).await;
                result.inspect_err(|e| self.failed("count", e)).ok()
            }
        };
        match counted {
            Some(connections) => Count {
                connections,
                cluster_wide: true,
            },
            None => Count {
                connections: self.shared.hub.count(target),
                cluster_wide: false,
            },
        }
    }

    pub async fn stats(&self) -> Stats {
        match self.cluster_stats().await {
            Ok(stats) => stats,
            Err(e) => {
                self.failed("stats", &e);
                local_stats(&self.shared.hub, false)
            }
        }
    }

    async fn cluster_stats(&self) -> redis::RedisResult<Stats> {
        let keys = &self.shared.keys;
        let mut conn = self
            .connection()
            .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "not connected")))?;
        let pattern = format!("{}:page:*", keys.prefix);
        let mut page_keys: Vec<String> = Vec::new();
        {
            let mut iter: redis::AsyncIter<'_, String> = conn.scan_match(&pattern).await?;
            while let Some(key) = iter.next_item().await {
                page_keys.push(key?);
            }
        }
        page_keys.sort();
        let mut pipe = redis::pipe();
        for key in &page_keys {
            pipe.scard(key);
        }
        pipe.hlen(keys.conns()).scard(keys.nodes());
        let mut counts: Vec<usize> = pipe.query_async(&mut conn).await?;
        let nodes = counts.pop().unwrap_or(0);
        let connections = counts.pop().unwrap_or(0);
        let strip = keys.prefix.len() + ":page:".len();
        let pages = page_keys
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|(key, connections)| PageCount {
                page: key.get(strip..).unwrap_or_default().to_string(),
                connections,
            })
            .collect();
        Ok(Stats {
            pages,
            connections,
            nodes,
            cluster_wide: true,
        })
    }

    fn failed(&self, what: &str, error: &redis::RedisError) {
        self.shared.metrics.redis_errors.inc();
        log::warn!("redis {what} failed: {error}");
    }

    /// Removes this node's entries and liveness; waits at most two seconds.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.shared.events.send(Event::Shutdown(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    client: redis::Client,
    ttl: Duration,
    rx: mpsc::Receiver<Event>,
}

impl Worker {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        let mut conn: Option<MultiplexedConnection> = None;
        let mut beat = tokio::time::interval((self.ttl / 3).max(Duration::from_millis(500)));
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch: Vec<Event> = Vec::with_capacity(BATCH);

        loop {
            if conn.is_none() {
                match self.connect().await {
                    Ok(c) => {
                        log::info!("redis connected; registering this node's connections");
                        self.shared.metrics.redis_reconnects.inc();
                        conn = Some(c);
                        self.shared.resync.store(true, Ordering::Relaxed);
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
                        self.set_down(&e);
                        // Drop what waits: the resync after reconnecting rewrites it all.
                        if self.discard_events_for(backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };

            if self.shared.resync.swap(false, Ordering::Relaxed) {
                if let Err(e) = self.resync(c).await {
                    self.shared.resync.store(true, Ordering::Relaxed);
                    self.lost(&mut conn, &e);
                    continue;
                }
                self.set_up(c);
            }

            let result = tokio::select! {
                received = self.rx.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        return; // every handle is gone: the server stopped
                    }
                    self.apply(c, &mut batch).await
                }
                _ = beat.tick() => self.heartbeat(c).await,
            };
            match result {
                Ok(Some(done)) => {
                    log::info!("removed this node's entries from redis");
                    let _ = done.send(());
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    self.shared.resync.store(true, Ordering::Relaxed);
                    self.lost(&mut conn, &e);
                }
            }
        }
    }

    async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    fn set_up(&self, conn: &MultiplexedConnection) {
        if let Ok(mut shared) = self.shared.conn.lock() {
            *shared = Some(conn.clone());
        }
        if !self.shared.up.swap(true, Ordering::Relaxed) {
            log::info!(
                "redis registry in sync ({} connections)",
                self.shared.hub.len()
            );
        }
    }

    fn set_down(&self, error: &redis::RedisError) {
        self.shared.metrics.redis_errors.inc();
        if let Ok(mut shared) = self.shared.conn.lock() {
            *shared = None;
        }
        if self.shared.up.swap(false, Ordering::Relaxed) {
            log::warn!("redis unreachable, serving this node's connections only: {error}");
        } else {
            log::debug!("redis still unreachable: {error}");
        }
    }

    fn lost(&self, conn: &mut Option<MultiplexedConnection>, error: &redis::RedisError) {
        *conn = None;
        self.set_down(error);
    }

    /// Waits `period` while throwing events away; true when a shutdown was asked
    /// (there is nothing to remove from a Redis we cannot reach).
    async fn discard_events_for(&mut self, period: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + period;
        loop {
            tokio::select! {
                event = self.rx.recv() => match event {
                    None => return true,
                    Some(Event::Shutdown(done)) => { let _ = done.send(()); return true; }
                    Some(_) => self.shared.resync.store(true, Ordering::Relaxed),
                },
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }

    /// Writes a batch of events in one pipeline. Returns the shutdown reply channel
    /// when the batch ended with a shutdown (after removing this node's entries).
    async fn apply(
        &self,
        conn: &mut MultiplexedConnection,
        batch: &mut Vec<Event>,
    ) -> redis::RedisResult<Option<oneshot::Sender<()>>> {
        let keys = &self.shared.keys;
        let mut pipe = redis::pipe();
        let mut shutdown = None;
        let mut commands = 0;
        for event in batch.drain(..) {
            commands += 1;
            match event {
                Event::Opened(id, meta) => add_conn(&mut pipe, keys, id, &meta),
                Event::Closed(id, meta) => {
                    let cid = keys.conn_id(id);
                    pipe.hdel(keys.conns(), &cid).ignore();
                    pipe.srem(keys.owned(&keys.node), &cid).ignore();
                    if let Some(page) = &meta.page {
                        pipe.srem(keys.page(page), &cid).ignore();
                    }
                    if let Some(uid) = &meta.uid {
                        pipe.srem(keys.uid(uid), &cid).ignore();
                    }
                }
                Event::Shutdown(done) => {
                    commands -= 1;
                    shutdown = Some(done);
                }
            }
        }
        if commands > 0 {
            pipe.query_async::<()>(conn).await?;
        }
        if let Some(done) = shutdown {
            purge(conn, keys, &keys.node).await?;
            let _: () = redis::pipe()
                .del(keys.alive(&keys.node))
                .ignore()
                .srem(keys.nodes(), &keys.node)
                .ignore()
                .query_async(conn)
                .await?;
            return Ok(Some(done));
        }
        Ok(None)
    }

    /// Rewrites this node's entries from the hub's live connections.
    async fn resync(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let keys = &self.shared.keys;
        self.beat(conn).await?;
        purge(conn, keys, &keys.node).await?;
        let live = self.shared.hub.snapshot();
        for chunk in live.chunks(RESYNC_CHUNK) {
            let mut pipe = redis::pipe();
            for (id, meta) in chunk {
                add_conn(&mut pipe, keys, *id, meta);
            }
            pipe.query_async::<()>(conn).await?;
        }
        log::debug!("resynced {} connections to redis", live.len());
        Ok(())
    }

    async fn beat(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let keys = &self.shared.keys;
        redis::pipe()
            .set_ex(keys.alive(&keys.node), 1, self.ttl.as_secs())
            .ignore()
            .sadd(keys.nodes(), &keys.node)
            .ignore()
            .query_async(conn)
            .await
    }

    /// Refreshes this node's liveness and removes the entries of nodes whose
    /// liveness key expired (they crashed or were cut off for longer than the TTL).
    async fn heartbeat(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> redis::RedisResult<Option<oneshot::Sender<()>>> {
        let keys = &self.shared.keys;
        self.beat(conn).await?;
        let nodes: Vec<String> = conn.smembers(keys.nodes()).await?;
        for node in nodes.iter().filter(|n| **n != keys.node) {
            let alive: bool = conn.exists(keys.alive(node)).await?;
            if !alive {
                let removed = purge(conn, keys, node).await?;
                let _: () = conn.srem(keys.nodes(), node).await?;
                log::warn!(
                    "node {node} stopped renewing its liveness key; removed its {removed} connections"
                );
            }
        }
        Ok(None)
    }
}

fn add_conn(pipe: &mut redis::Pipeline, keys: &Keys, id: ConnId, meta: &ConnMeta) {
    let cid = keys.conn_id(id);
    let record = ConnRecord::new(meta, &keys.node);
    let json = serde_json::to_string(&record).unwrap_or_default();
    pipe.hset(keys.conns(), &cid, json).ignore();
    pipe.sadd(keys.owned(&keys.node), &cid).ignore();
    if let Some(page) = &meta.page {
        pipe.sadd(keys.page(page), &cid).ignore();
    }
    if let Some(uid) = &meta.uid {
        pipe.sadd(keys.uid(uid), &cid).ignore();
    }
}

async fn purge(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    node: &str,
) -> redis::RedisResult<usize> {
    redis::Script::new(PURGE_NODE)
        .arg(&keys.prefix)
        .arg(node)
        .invoke_async(conn)
        .await
}
