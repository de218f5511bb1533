//! The registry in Redis, shared by every node:
//!
//! | key                           | type   | content                                   |
//! |-------------------------------|--------|-------------------------------------------|
//! | `{prefix}:conns`              | hash   | connection id → JSON [`ConnRecord`]       |
//! | `{prefix}:page:{page}`        | set    | ids of connections on that page           |
//! | `{prefix}:pages`              | set    | pages that had connections (for stats)    |
//! | `{prefix}:uid:{uid}`          | set    | ids of connections bound to that uid      |
//! | `{prefix}:node:{node}:conns`  | set    | ids owned by that node (crash clean-up)   |
//! | `{prefix}:node:{node}:alive`  | string | process token, TTL `node_ttl_secs`        |
//! | `{prefix}:nodes`              | set    | nodes that registered                     |
//!
//! Connection ids are `{node}:{n}`, unique across nodes.
//!
//! One worker task owns all writes. Gateways hand it events through a bounded channel
//! and never wait; when an event is dropped or a write fails the worker rewrites this
//! node's whole state from the hub ("resync"): it first throws away the events still
//! queued (the snapshot it then takes already holds their outcome, and replaying
//! them after it would bring back closed connections), purges, and writes the
//! snapshot. That one mechanism covers start-up, Redis restarts that lost data, and
//! a node that was purged by its peers while it was paused or cut off: each beat's
//! `SET alive token GET` returns nil when the key was gone, and `SADD nodes` returns
//! 1 when this node had been removed. Memory stays bounded by the channel's capacity.
//!
//! The liveness key holds this process's token: a beat that finds another token
//! there means a second live process uses this node id (a fatal error), and a start
//! that finds one refuses to run ([`StartRefused`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{ConnRecord, Count, PageCount, Stats, local_stats};
use crate::config::RedisSettings;
use crate::hub::{ConnId, ConnMeta, Hub};
use crate::metrics::Metrics;
use crate::push::Target;
use crate::redis::{Link, LinkDown, LogEvery, RedisKeys as Keys};

/// Events waiting for the worker; past this the worker resyncs instead.
const EVENT_CAPACITY: usize = 65_536;
/// Most events written in one pipeline.
const BATCH: usize = 512;
/// Connections re-registered per pipeline during a resync.
const RESYNC_CHUNK: usize = 1_000;
/// Pause after a failed write before the worker tries again (the link reconnects
/// by itself meanwhile).
const RETRY: Duration = Duration::from_millis(500);

static WRITE_FAILED: LogEvery = LogEvery::new(Duration::from_secs(5));

/// Removes every entry a node owns, its index memberships and its `nodes`
/// membership, in one script so that nothing runs between the check and the
/// removal. ARGV: prefix, node, and `1` to purge only when the node's liveness key
/// is gone (a peer's crash clean-up; returns -1 when the node is alive) or `0`
/// (this node's own resync or stop).
const PURGE_NODE: &str = r#"
local p = ARGV[1]
local node = ARGV[2]
if ARGV[3] == '1' and redis.call('EXISTS', p .. ':node:' .. node .. ':alive') == 1 then
  return -1
end
local owned = p .. ':node:' .. node .. ':conns'
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
if ARGV[3] == '1' then redis.call('SREM', p .. ':nodes', node) end
return #ids
"#;

/// Counts the connections of every page in `{prefix}:pages` and removes the pages
/// left empty, atomically (a page that gains a connection meanwhile is not lost).
/// ARGV: prefix. Returns `{pages, counts}`.
const PAGE_COUNTS: &str = r#"
local p = ARGV[1]
local pages, counts = {}, {}
for _, page in ipairs(redis.call('SMEMBERS', p .. ':pages')) do
  local n = redis.call('SCARD', p .. ':page:' .. page)
  if n == 0 then
    redis.call('SREM', p .. ':pages', page)
  else
    table.insert(pages, page)
    table.insert(counts, n)
  end
end
return {pages, counts}
"#;

/// Why a node may not start: another live process holds its node id.
#[derive(Debug, thiserror::Error)]
#[error(
    "server.node_id {node:?} is in use by another live node (its liveness key \
     {key} is held and renewed); give each node its own server.node_id, or leave it \
     empty for a unique default"
)]
pub struct StartRefused {
    pub node: String,
    pub key: String,
}

enum Event {
    Opened(ConnId, ConnMeta),
    Closed(ConnId, ConnMeta),
    Shutdown(oneshot::Sender<()>),
}

struct Shared {
    keys: Keys,
    /// This process's token, the value of its liveness key.
    token: String,
    events: mpsc::Sender<Event>,
    /// Set when an event could not be queued or written: the worker must rewrite
    /// everything.
    resync: AtomicBool,
    link: Link,
    hub: Hub,
    metrics: Arc<Metrics>,
}

/// Handle to the Redis-backed registry.
#[derive(Clone)]
pub struct RedisRegistry {
    shared: Arc<Shared>,
}

/// A registry and the critical task that keeps it (its worker), named for the
/// supervisor.
pub type Started = (
    RedisRegistry,
    Vec<(&'static str, tokio::task::JoinHandle<()>)>,
);

impl RedisRegistry {
    /// Claims `node` in Redis (waiting up to one TTL for a crashed predecessor's
    /// liveness key to expire) and starts the worker. When Redis cannot be reached
    /// the claim is left to the worker's first beat. Errors: `redis.url`, or
    /// [`StartRefused`] as text when a live process holds the node id.
    pub async fn start(
        settings: &RedisSettings,
        link: Link,
        node: &str,
        origin: u64,
        hub: Hub,
        metrics: Arc<Metrics>,
    ) -> Result<Started, StartError> {
        Self::start_with(settings, link, node, origin, hub, metrics, EVENT_CAPACITY).await
    }

    async fn start_with(
        settings: &RedisSettings,
        link: Link,
        node: &str,
        origin: u64,
        hub: Hub,
        metrics: Arc<Metrics>,
        capacity: usize,
    ) -> Result<Started, StartError> {
        let keys = Keys::new(&settings.prefix, node);
        let token = format!("{origin:x}");
        let ttl = Duration::from_secs(settings.node_ttl_secs);
        claim(&link, &keys, &token, ttl).await?;
        let (events, rx) = mpsc::channel(capacity);
        let shared = Arc::new(Shared {
            keys,
            token,
            events,
            resync: AtomicBool::new(true),
            link: link.clone(),
            hub,
            metrics,
        });
        let worker = Worker {
            shared: shared.clone(),
            ttl,
            rx,
            beaten: false,
        };
        let tasks = vec![("registry worker", tokio::spawn(worker.run()))];
        Ok((Self { shared }, tasks))
    }

    pub fn is_up(&self) -> bool {
        self.shared.link.is_up()
    }

    /// Why the registry's link is down, or `None` while it is up.
    pub fn down(&self) -> Option<LinkDown> {
        self.shared.link.down()
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

    pub async fn count(&self, target: &Target) -> Count {
        let shared = &self.shared;
        let counted = if shared.link.is_up() {
            let result: redis::RedisResult<usize> =
                shared.link.query(&shared.keys.count(target)).await;
            result.inspect_err(|e| self.failed("count", e)).ok()
        } else {
            None
        };
        match counted {
            Some(connections) => Count {
                connections,
                cluster_wide: true,
            },
            None => Count {
                connections: shared.hub.count(target),
                cluster_wide: false,
            },
        }
    }

    pub async fn stats(&self) -> Stats {
        if !self.shared.link.is_up() {
            return local_stats(&self.shared.hub, false);
        }
        match self.cluster_stats().await {
            Ok(stats) => stats,
            Err(e) => {
                self.failed("stats", &e);
                local_stats(&self.shared.hub, false)
            }
        }
    }

    /// Cluster-wide stats in one round trip, from the `{prefix}:pages` index (no
    /// keyspace scan).
    async fn cluster_stats(&self) -> redis::RedisResult<Stats> {
        let keys = &self.shared.keys;
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(PAGE_COUNTS)
            .arg(0)
            .arg(&keys.prefix)
            .hlen(keys.conns())
            .scard(keys.nodes());
        let ((pages, counts), connections, nodes): ((Vec<String>, Vec<usize>), usize, usize) =
            self.shared.link.query(&pipe).await?;
        let mut pages: Vec<PageCount> = pages
            .into_iter()
            .zip(counts)
            .map(|(page, connections)| PageCount { page, connections })
            .collect();
        pages.sort_by(|a, b| a.page.cmp(&b.page));
        Ok(Stats {
            pages,
            connections,
            nodes,
            cluster_wide: true,
        })
    }

    fn failed(&self, what: &str, error: &redis::RedisError) {
        self.shared.metrics.redis_errors.inc();
        if let Some(suppressed) = WRITE_FAILED.admit() {
            log::warn!("redis {what} failed: {error} ({suppressed} more since the last warning)");
        }
    }

    /// Removes this node's entries and liveness; waits at most two seconds in all.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            if self.shared.events.send(Event::Shutdown(done)).await.is_ok() {
                let _ = wait.await;
            }
        })
        .await;
    }
}

/// Why the registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Refused(#[from] StartRefused),
}

/// Takes `{prefix}:node:{node}:alive` for this process. A key held by another
/// token is waited on for one TTL plus a beat (a crashed predecessor's key
/// expires); a key still held then is renewed by a live node: refused.
async fn claim(link: &Link, keys: &Keys, token: &str, ttl: Duration) -> Result<(), StartRefused> {
    let alive = keys.alive(&keys.node);
    let deadline = tokio::time::Instant::now() + ttl + Duration::from_secs(1);
    let mut reported = false;
    loop {
        let claimed: redis::RedisResult<Option<String>> = link
            .query(
                redis::cmd("SET")
                    .arg(&alive)
                    .arg(token)
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl.as_secs())
                    .arg("GET"),
            )
            .await;
        match claimed {
            Ok(None) => return Ok(()),
            Ok(Some(held)) if held == token => return Ok(()),
            Ok(Some(_)) if tokio::time::Instant::now() < deadline => {
                if !reported {
                    log::warn!(
                        "server.node_id {:?}: {alive} is held by another process; waiting \
                         up to {} s for it to expire",
                        keys.node,
                        ttl.as_secs() + 1
                    );
                    reported = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(Some(_)) => {
                return Err(StartRefused {
                    node: keys.node.clone(),
                    key: alive,
                });
            }
            Err(e) => {
                // Unreachable now: the worker's first beat claims it (and stops the
                // process if another one holds it).
                log::warn!("redis not reachable at start ({e}); serving this node's clients");
                return Ok(());
            }
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    ttl: Duration,
    rx: mpsc::Receiver<Event>,
    /// Whether a beat has succeeded since the last resync.
    beaten: bool,
}

/// How a beat went.
enum Beat {
    Fine,
    /// This node's liveness key or `nodes` membership was gone: it was purged
    /// (or Redis restarted empty).
    Evicted,
}

/// Why the worker stops.
enum Stop {
    /// Every handle is gone, or a shutdown was asked and done.
    Done,
    /// Another live process holds this node id.
    Duplicate(String),
}

impl Worker {
    /// A critical task: returns only when the server stops. A second process
    /// holding this node id is fatal (logged, then the task ends and the
    /// supervisor stops the process).
    async fn run(mut self) {
        match self.work().await {
            Stop::Done => {}
            Stop::Duplicate(other) => log::error!(
                "server.node_id {:?} is now held by another live process (token {other}): \
                 two nodes with one id corrupt each other's registry entries; stopping",
                self.shared.keys.node
            ),
        }
    }

    async fn work(&mut self) -> Stop {
        let mut beat = tokio::time::interval((self.ttl / 3).max(Duration::from_millis(500)));
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch: Vec<Event> = Vec::with_capacity(BATCH);

        loop {
            if self.shared.resync.swap(false, Ordering::Relaxed) {
                if let Some(done) = self.discard_queued() {
                    return self.shut_down(done).await;
                }
                match self.resync().await {
                    Ok(Ok(())) => {}
                    Ok(Err(stop)) => return stop,
                    Err(e) => {
                        self.shared.resync.store(true, Ordering::Relaxed);
                        self.write_failed(&e);
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }

            let result = tokio::select! {
                received = self.rx.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        return Stop::Done; // every handle is gone: the server stopped
                    }
                    match self.apply(&mut batch).await {
                        Ok(Some(done)) => return self.shut_down(done).await,
                        Ok(None) => Ok(Beat::Fine),
                        Err(e) => Err(e),
                    }
                }
                _ = beat.tick() => self.heartbeat().await,
            };
            match result {
                Ok(Beat::Fine) => {}
                Ok(Beat::Evicted) => {
                    log::warn!(
                        "this node's registry entries were gone (purged by its peers after a \
                         pause, or redis restarted empty); registering its {} connections again",
                        self.shared.hub.len()
                    );
                    self.shared.resync.store(true, Ordering::Relaxed);
                }
                Err(BeatError::Duplicate(other)) => return Stop::Duplicate(other),
                Err(BeatError::Redis(e)) => {
                    self.shared.resync.store(true, Ordering::Relaxed);
                    self.write_failed(&e);
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    fn write_failed(&self, error: &redis::RedisError) {
        self.shared.metrics.redis_errors.inc();
        if let Some(suppressed) = WRITE_FAILED.admit() {
            log::warn!(
                "redis registry write failed, will resync: {error} ({suppressed} more since \
                 the last warning)"
            );
        }
    }

    /// Throws away every queued event: the snapshot a resync takes next holds
    /// their outcome. Returns a queued shutdown's reply channel.
    fn discard_queued(&mut self) -> Option<oneshot::Sender<()>> {
        let mut shutdown = None;
        while let Ok(event) = self.rx.try_recv() {
            if let Event::Shutdown(done) = event {
                shutdown = Some(done);
            }
        }
        shutdown
    }

    async fn shut_down(&self, done: oneshot::Sender<()>) -> Stop {
        let keys = &self.shared.keys;
        let mut pipe = redis::pipe();
        pipe.add_command(purge_cmd(keys, &keys.node, false))
            .ignore()
            // Drops the pages this node's closes left empty from `{prefix}:pages`.
            .cmd("EVAL")
            .arg(PAGE_COUNTS)
            .arg(0)
            .arg(&keys.prefix)
            .ignore()
            .del(keys.alive(&keys.node))
            .ignore()
            .srem(keys.nodes(), &keys.node)
            .ignore();
        match self.shared.link.query::<()>(&pipe).await {
            Ok(()) => log::info!("removed this node's entries from redis"),
            Err(e) => log::warn!("could not remove this node's entries from redis: {e}"),
        }
        let _ = done.send(());
        Stop::Done
    }

    /// Writes a batch of events in one pipeline. Returns the shutdown reply channel
    /// when the batch held a shutdown (the caller then removes this node's entries).
    async fn apply(
        &self,
        batch: &mut Vec<Event>,
    ) -> Result<Option<oneshot::Sender<()>>, BeatError> {
        let keys = &self.shared.keys;
        let mut pipe = redis::pipe();
        let mut shutdown = None;
        let mut commands = 0;
        for event in batch.drain(..) {
            match event {
                Event::Opened(id, meta) => {
                    commands += 1;
                    add_conn(&mut pipe, keys, id, &meta);
                }
                Event::Closed(id, meta) => {
                    commands += 1;
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
                Event::Shutdown(done) => shutdown = Some(done),
            }
        }
        if commands > 0 {
            self.shared.link.query::<()>(&pipe).await?;
        }
        Ok(shutdown)
    }

    /// Rewrites this node's entries from the hub's live connections.
    async fn resync(&mut self) -> redis::RedisResult<Result<(), Stop>> {
        let shared = self.shared.clone();
        let keys = &shared.keys;
        self.beaten = false;
        match self.beat().await {
            Ok(_) => {}
            Err(BeatError::Duplicate(other)) => return Ok(Err(Stop::Duplicate(other))),
            Err(BeatError::Redis(e)) => return Err(e),
        }
        self.shared
            .link
            .query::<i64>(&purge_cmd(keys, &keys.node, false))
            .await?;
        let live = self.shared.hub.snapshot();
        for chunk in live.chunks(RESYNC_CHUNK) {
            let mut pipe = redis::pipe();
            for (id, meta) in chunk {
                add_conn(&mut pipe, keys, *id, meta);
            }
            self.shared.link.query::<()>(&pipe).await?;
        }
        self.shared.metrics.redis_reconnects.inc();
        log::info!("registered this node's {} connections in redis", live.len());
        Ok(Ok(()))
    }

    /// Renews this node's liveness key and `nodes` membership, and tells whether
    /// either was gone since the last beat.
    async fn beat(&mut self) -> Result<Beat, BeatError> {
        let keys = &self.shared.keys;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(keys.alive(&keys.node))
            .arg(&self.shared.token)
            .arg("EX")
            .arg(self.ttl.as_secs())
            .arg("GET")
            .sadd(keys.nodes(), &keys.node);
        let (previous, added): (Option<String>, usize) = self.shared.link.query(&pipe).await?;
        let first = !std::mem::replace(&mut self.beaten, true);
        match previous {
            Some(other) if other != self.shared.token => Err(BeatError::Duplicate(other)),
            None if !first => Ok(Beat::Evicted),
            _ if added == 1 && !first => Ok(Beat::Evicted),
            _ => Ok(Beat::Fine),
        }
    }

    /// Renews this node's liveness and removes the entries of nodes whose liveness
    /// key expired (they crashed or were cut off for longer than the TTL). The check
    /// and the removal are one script: a node that beats in between keeps its entries.
    async fn heartbeat(&mut self) -> Result<Beat, BeatError> {
        let beat = self.beat().await?;
        let shared = self.shared.clone();
        let keys = &shared.keys;
        let link = &shared.link;
        let nodes: Vec<String> = link.query(redis::cmd("SMEMBERS").arg(keys.nodes())).await?;
        let others: Vec<&String> = nodes.iter().filter(|n| **n != keys.node).collect();
        if others.is_empty() {
            return Ok(beat);
        }
        let mut pipe = redis::pipe();
        for node in &others {
            pipe.exists(keys.alive(node));
        }
        let alive: Vec<bool> = link.query(&pipe).await?;
        for (node, alive) in others.iter().zip(alive) {
            if alive {
                continue;
            }
            let removed: i64 = link.query(&purge_cmd(keys, node, true)).await?;
            if removed >= 0 {
                log::warn!(
                    "node {node} stopped renewing its liveness key; removed its {removed} connections"
                );
            }
        }
        Ok(beat)
    }
}

/// A beat's failure: Redis did not answer, or another process holds this node id.
enum BeatError {
    Redis(redis::RedisError),
    Duplicate(String),
}

impl From<redis::RedisError> for BeatError {
    fn from(error: redis::RedisError) -> Self {
        BeatError::Redis(error)
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
        pipe.sadd(keys.pages(), &**page).ignore();
    }
    if let Some(uid) = &meta.uid {
        pipe.sadd(keys.uid(uid), &cid).ignore();
    }
}

/// [`PURGE_NODE`] for `node`; `only_if_dead` makes it a peer's crash clean-up.
fn purge_cmd(keys: &Keys, node: &str, only_if_dead: bool) -> redis::Cmd {
    redis::cmd("EVAL")
        .arg(PURGE_NODE)
        .arg(0)
        .arg(&keys.prefix)
        .arg(node)
        .arg(if only_if_dead { "1" } else { "0" })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::redis::test_server::TestRedis;

    fn meta(page: &str) -> ConnMeta {
        ConnMeta {
            page: Some(crate::push::Name::try_from(page).unwrap()),
            uid: None,
            session: None,
            connected_at: 0,
        }
    }

    /// Case 6 of issue 13: a connection whose close was dropped (queue full) while
    /// its open was still queued must not come back after the resync.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resync_does_not_replay_events_queued_before_it() {
        let redis = TestRedis::start();
        let settings = RedisSettings {
            url: redis.url.clone(),
            prefix: "ghost".into(),
            node_ttl_secs: 10,
        };
        let hub = Hub::new(1 << 20);
        let metrics = Metrics::new(hub.clone());
        let link = Link::open("commands", &redis.url, None).unwrap();
        let (registry, _tasks) =
            RedisRegistry::start_with(&settings, link, "n", 1, hub.clone(), metrics, 1)
                .await
                .unwrap();
        let registered = |id: ConnId| -> bool {
            redis.query(
                redis::cmd("HEXISTS")
                    .arg("ghost:conns")
                    .arg(format!("n:{id}")),
            )
        };
        let (first, _) = hub.open(meta("home"), 0).unwrap();
        registry.opened(first, &meta("home"));
        for _ in 0..200 {
            if registered(first) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(registered(first));

        // Redis stalls; the worker takes one event and waits on it.
        redis.query::<()>(redis::cmd("CLIENT").arg("PAUSE").arg(2000).arg("WRITE"));
        let (busy, _) = hub.open(meta("home"), 0).unwrap();
        registry.opened(busy, &meta("home"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        // X opens (queued: the queue holds one) and closes (dropped: full).
        let (ghost, _) = hub.open(meta("home"), 0).unwrap();
        registry.opened(ghost, &meta("home"));
        let closed = hub.close(ghost).unwrap();
        registry.closed(ghost, &closed);

        // Once Redis is back and the worker resynced, a later event is applied;
        // the queued open of X must not have been replayed before it.
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        let (later, _) = hub.open(meta("home"), 0).unwrap();
        for _ in 0..400 {
            registry.opened(later, &meta("home"));
            if registered(later) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(registered(later));
        assert!(registered(busy));
        assert!(!registered(ghost), "a closed connection came back");
        let members: usize = redis.query(redis::cmd("SCARD").arg("ghost:page:home"));
        assert_eq!(members, 3);
    }
}
