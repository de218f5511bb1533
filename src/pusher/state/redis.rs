//! The channel state in Redis, shared by every node (`b` = [`RedisKeys::pusher`],
//! `{prefix}:pusher`):
//!
//! | key                          | type   | content                                          |
//! |------------------------------|--------|--------------------------------------------------|
//! | `{b}:{app}:ch:{channel}:socks` | hash | socket id → its presence user id (`""` if none)  |
//! | `{b}:{app}:ch:{channel}:users` | hash | presence user id → connections of that user      |
//! | `{b}:{app}:ch:{channel}:info`  | hash | presence user id → `user_info` JSON (first conn) |
//! | `{b}:{app}:channels`         | set    | occupied channels of the app                     |
//! | `{b}:{app}:cache:{channel}`  | string | cache channel's last event, TTL [`CACHE_TTL`]    |
//! | `{b}:node:{node}`            | set    | `"{app} {channel} {socket}"` owned by that node  |
//! | `{b}:nodes`                  | set    | nodes that hold entries                          |
//!
//! App ids (`[-_.a-zA-Z0-9]`), channel names (no space) and socket ids (`n.n`) never
//! hold a space, so the node entries split without ambiguity.
//!
//! Every change is one Lua script (`SUBSCRIBE`, `LEAVE`, `PURGE`): the script that
//! adds the first socket of a channel reports `occupied`, the one that removes a
//! user's last connection reports `member_removed`… so each transition is decided
//! once per cluster, by whichever node ran it, and that node carries out the
//! effects (webhooks; member events through the bus reach every node).
//!
//! One worker owns this node's writes, in order, as the registry's does: callers
//! queue (never wait, except `subscribe`, which awaits its own script's answer for
//! at most [`SUBSCRIBE_DEADLINE`]); a dropped event or a failed write makes the worker
//! resync: it compares this node's entries in Redis with the local map and runs
//! `LEAVE` for the stale ones and `SUBSCRIBE` for the missing ones, so the
//! transitions owed are carried out then, and only those. Each beat renews the
//! node's `{b}:nodes` membership (an `SADD` answering 1 means peers purged it: resync)
//! and purges the nodes whose registry liveness key (`{prefix}:node:{node}:alive`)
//! expired, with `PURGE`, which checks the key and removes in one script: one peer
//! wins and emits the dead sockets' `member_removed` / `channel_vacated`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use super::local::{CACHE_TTL, Local};
use super::{
    CachedEvent, ChannelSummary, Effects, Member, Presence, SUBSCRIBE_DEADLINE, Subscribed,
    Transition,
};
use crate::push::ConnKey;
use crate::pusher::channel::Channel;
use crate::redis::{Link, LogEvery, RedisKeys};

/// Operations waiting for the worker; past this the worker resyncs instead.
const CAPACITY: usize = 65_536;
/// Most operations written in one pipeline.
const BATCH: usize = 256;
/// Node entries re-checked per pipeline during a resync.
const RESYNC_CHUNK: usize = 500;
/// Pause after a failed write before the worker tries again.
const RETRY: Duration = Duration::from_millis(500);

static WRITE_FAILED: LogEvery = LogEvery::new(Duration::from_secs(5));

/// `leave(b, app, ch, sock, node)` → nil when not subscribed, else
/// `{vacated ('1'/'0'), removed user id or ''}`. Shared by `LEAVE` and `PURGE`.
const LEAVE_FN: &str = r#"
local function leave(b, app, ch, sock, node)
  local c = b .. ':' .. app .. ':ch:' .. ch
  local uid = redis.call('HGET', c .. ':socks', sock)
  if not uid then return nil end
  redis.call('HDEL', c .. ':socks', sock)
  redis.call('SREM', b .. ':node:' .. node, app .. ' ' .. ch .. ' ' .. sock)
  local removed = ''
  if uid ~= '' then
    if redis.call('HINCRBY', c .. ':users', uid, -1) <= 0 then
      redis.call('HDEL', c .. ':users', uid)
      redis.call('HDEL', c .. ':info', uid)
      removed = uid
    end
  end
  local vacated = '0'
  if redis.call('HLEN', c .. ':socks') == 0 then
    vacated = '1'
    redis.call('SREM', b .. ':' .. app .. ':channels', ch)
    redis.call('DEL', c .. ':users', c .. ':info')
  end
  return {vacated, removed}
end
"#;

/// ARGV: b, app, channel, socket, node, user id ('' none), user_info, presence
/// ('1'/'0'). Returns `{added, occupied, member_added, sockets, {id, info, …}}`.
const SUBSCRIBE: &str = r#"
local b, app, ch, sock, node, uid, info, presence = unpack(ARGV)
local c = b .. ':' .. app .. ':ch:' .. ch
local added = redis.call('HSETNX', c .. ':socks', sock, uid)
local occupied, member = 0, 0
if added == 1 then
  redis.call('SADD', b .. ':node:' .. node, app .. ' ' .. ch .. ' ' .. sock)
  if redis.call('HLEN', c .. ':socks') == 1 then
    occupied = 1
    redis.call('SADD', b .. ':' .. app .. ':channels', ch)
  end
  if uid ~= '' and redis.call('HINCRBY', c .. ':users', uid, 1) == 1 then
    member = 1
    redis.call('HSET', c .. ':info', uid, info)
  end
end
local members = {}
if presence == '1' then members = redis.call('HGETALL', c .. ':info') end
return {added, occupied, member, redis.call('HLEN', c .. ':socks'), members}
"#;

/// ARGV: b, app, channel, socket, node. Returns `{found, vacated, removed}` (strings).
static LEAVE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{LEAVE_FN}
local r = leave(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
if not r then return {{'0', '0', ''}} end
return {{'1', r[1], r[2]}}
"
    )
});

/// ARGV: b, the node's registry liveness key, node, '1' to purge only when that key
/// is gone (a peer's crash clean-up) or '0' (this node's graceful stop). Returns
/// `{'alive'}`, or `{'purged', app, channel, vacated, removed, …}`.
static PURGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{LEAVE_FN}
local b, alive, node, only_dead = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if only_dead == '1' and redis.call('EXISTS', alive) == 1 then return {{'alive'}} end
local out = {{'purged'}}
for _, e in ipairs(redis.call('SMEMBERS', b .. ':node:' .. node)) do
  local app, ch, sock = string.match(e, '^(%S+) (%S+) (%S+)$')
  if app then
    local r = leave(b, app, ch, sock, node)
    if r then
      table.insert(out, app)
      table.insert(out, ch)
      table.insert(out, r[1])
      table.insert(out, r[2])
    end
  end
end
redis.call('DEL', b .. ':node:' .. node)
redis.call('SREM', b .. ':nodes', node)
return out
"
    )
});

/// ARGV: b, app, prefix. Returns `{channel, sockets, users, …}` (strings).
const CHANNELS: &str = r#"
local b, app, prefix = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for _, ch in ipairs(redis.call('SMEMBERS', b .. ':' .. app .. ':channels')) do
  if string.sub(ch, 1, #prefix) == prefix then
    local c = b .. ':' .. app .. ':ch:' .. ch
    table.insert(out, ch)
    table.insert(out, tostring(redis.call('HLEN', c .. ':socks')))
    table.insert(out, tostring(redis.call('HLEN', c .. ':users')))
  end
end
return out
"#;

/// The scripts every subscription and leave runs, sent by hash (`EVALSHA`): each
/// resync loads them (`SCRIPT LOAD`), and a Redis that lost them (restarted) answers
/// `NOSCRIPT`, which fails the write and so brings a resync.
static SUBSCRIBE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SUBSCRIBE));
static LEAVE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(&LEAVE));

enum Op {
    Subscribe {
        app: Arc<str>,
        channel: Channel,
        socket: ConnKey,
        member: Option<Member>,
        reply: Option<oneshot::Sender<Subscribed>>,
    },
    Left {
        app: Arc<str>,
        channel: Channel,
        socket: ConnKey,
    },
    CacheStore {
        key: String,
        value: String,
    },
    Shutdown(oneshot::Sender<()>),
}

/// A cached event as stored in Redis.
#[derive(Serialize, Deserialize)]
struct Stored {
    event: String,
    data: String,
}

struct Shared {
    keys: RedisKeys,
    /// `{prefix}:pusher`.
    base: String,
    link: Link,
    ops: mpsc::Sender<Op>,
    resync: AtomicBool,
    local: Arc<Mutex<Local>>,
    effects: Arc<Effects>,
}

/// The Redis side of [`super::ChannelState`].
pub(super) struct RedisState {
    shared: Arc<Shared>,
}

impl RedisState {
    /// Starts the worker; returns the critical task to supervise. `keys.node` is
    /// this node's `server.node_id` (its registry liveness key says it is alive).
    pub(super) fn start(
        link: Link,
        keys: RedisKeys,
        ttl: Duration,
        local: Arc<Mutex<Local>>,
        effects: Arc<Effects>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        Self::start_with(link, keys, ttl, local, effects, CAPACITY)
    }

    fn start_with(
        link: Link,
        keys: RedisKeys,
        ttl: Duration,
        local: Arc<Mutex<Local>>,
        effects: Arc<Effects>,
        capacity: usize,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (ops, rx) = mpsc::channel(capacity);
        let shared = Arc::new(Shared {
            base: keys.pusher(),
            keys,
            link,
            ops,
            resync: AtomicBool::new(true),
            local,
            effects,
        });
        let worker = Worker {
            shared: shared.clone(),
            ttl,
            rx,
            registered: false,
        };
        (Self { shared }, tokio::spawn(worker.run()))
    }

    fn send(&self, op: Op) {
        if self.shared.ops.try_send(op).is_err() {
            self.shared.resync.store(true, Ordering::Relaxed);
        }
    }

    /// `None` when Redis did not answer within [`SUBSCRIBE_DEADLINE`] (the local
    /// record reaches Redis at the next resync).
    pub(super) async fn subscribe(
        &self,
        app: &str,
        channel: &Channel,
        socket: ConnKey,
        member: Option<Member>,
    ) -> Option<Subscribed> {
        // Redis is known down (or a resync is due): still queued, so that it is
        // written in order, but nobody waits for an answer that would not come.
        let waits = self.shared.link.is_up() && !self.shared.resync.load(Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        self.send(Op::Subscribe {
            app: app.into(),
            channel: channel.clone(),
            socket,
            member,
            reply: waits.then_some(reply),
        });
        if !waits {
            return None;
        }
        tokio::time::timeout(SUBSCRIBE_DEADLINE, answer)
            .await
            .ok()?
            .ok()
    }

    pub(super) fn left(&self, app: &str, channel: &Channel, socket: ConnKey) {
        self.send(Op::Left {
            app: app.into(),
            channel: channel.clone(),
            socket,
        });
    }

    /// The channel's cluster-wide sockets and members (`new: false`); `None` when
    /// Redis does not answer.
    pub(super) async fn view(&self, app: &str, channel: &Channel) -> Option<Subscribed> {
        let c = channel_key(&self.shared.base, app, channel);
        let mut pipe = redis::pipe();
        pipe.hlen(format!("{c}:socks")).hgetall(format!("{c}:info"));
        let (sockets, members): (usize, Vec<(String, String)>) =
            self.query("read a channel", &pipe).await?;
        Some(Subscribed {
            new: false,
            presence: channel.kind().is_presence().then(|| presence(members)),
            subscription_count: sockets,
            cluster_wide: true,
        })
    }

    /// The channel's cluster-wide socket and user counts (two `HLEN`s, not the
    /// member list); `None` when Redis does not answer.
    pub(super) async fn counts(&self, app: &str, channel: &Channel) -> Option<(usize, usize)> {
        let c = channel_key(&self.shared.base, app, channel);
        let mut pipe = redis::pipe();
        pipe.hlen(format!("{c}:socks")).hlen(format!("{c}:users"));
        self.query("count a channel", &pipe).await
    }

    pub(super) async fn channels(&self, app: &str, prefix: &str) -> Option<Vec<ChannelSummary>> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CHANNELS)
            .arg(0)
            .arg(&self.shared.base)
            .arg(app)
            .arg(prefix);
        let flat: Vec<String> = self.query("list channels", &cmd).await?;
        let mut list: Vec<ChannelSummary> = flat
            .chunks_exact(3)
            .filter_map(|row| {
                let [name, sockets, users] = row else {
                    return None;
                };
                let channel = Channel::parse(name).ok()?;
                let sockets: usize = sockets.parse().ok()?;
                (sockets > 0).then(|| ChannelSummary {
                    channel: name.clone(),
                    subscription_count: sockets,
                    user_count: channel
                        .kind()
                        .is_presence()
                        .then(|| users.parse().unwrap_or(0)),
                })
            })
            .collect();
        list.sort_by(|a, b| a.channel.cmp(&b.channel));
        Some(list)
    }

    /// `None` when Redis does not answer; `Some(None)` when nothing is cached.
    pub(super) async fn cache_last(
        &self,
        app: &str,
        channel: &Channel,
    ) -> Option<Option<CachedEvent>> {
        let key = cache_key(&self.shared.base, app, channel);
        let raw: Option<String> = self
            .query("read a cache channel", redis::cmd("GET").arg(key))
            .await?;
        // An unreadable value (another version, a hand edit) is a miss, not a failure.
        Some(
            raw.and_then(|raw| serde_json::from_str::<Stored>(&raw).ok())
                .map(|s| CachedEvent {
                    event: s.event,
                    data: s.data,
                }),
        )
    }

    pub(super) fn cache_store(&self, app: &str, channel: &Channel, cached: &CachedEvent) {
        let value = serde_json::to_string(&Stored {
            event: cached.event.clone(),
            data: cached.data.clone(),
        })
        .unwrap_or_default();
        self.send(Op::CacheStore {
            key: cache_key(&self.shared.base, app, channel),
            value,
        });
    }

    /// Writes what is queued, then removes this node's entries (carrying out their
    /// transitions). Waits a few seconds at most.
    pub(super) async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            if self.shared.ops.send(Op::Shutdown(done)).await.is_ok() {
                let _ = finished.await;
            }
        })
        .await;
    }

    async fn query<T: redis::FromRedisValue + Send>(
        &self,
        what: &str,
        cmd: &impl crate::redis::link::Query,
    ) -> Option<T> {
        if !self.shared.link.is_up() {
            return None;
        }
        self.shared
            .link
            .query(cmd)
            .await
            .inspect_err(|e| {
                if let Some(suppressed) = WRITE_FAILED.admit() {
                    log::warn!("pusher state: could not {what} in redis: {e} ({suppressed} more)");
                }
            })
            .ok()
    }
}

fn channel_key(base: &str, app: &str, channel: &Channel) -> String {
    format!("{base}:{app}:ch:{channel}")
}

fn cache_key(base: &str, app: &str, channel: &Channel) -> String {
    format!("{base}:{app}:cache:{channel}")
}

/// Members from `HGETALL info` pairs; an entry that is not JSON counts as `null`.
fn presence(members: Vec<(String, String)>) -> Presence {
    let mut members: Vec<(Arc<str>, Arc<RawValue>)> = members
        .into_iter()
        .map(|(id, info)| {
            let info = RawValue::from_string(info).unwrap_or_else(|_| RawValue::NULL.to_owned());
            (Arc::from(id), Arc::from(info))
        })
        .collect();
    members.sort_by(|a, b| a.0.cmp(&b.0));
    Presence { members }
}

struct Worker {
    shared: Arc<Shared>,
    ttl: Duration,
    rx: mpsc::Receiver<Op>,
    /// Whether this node's `{b}:nodes` membership was written since the last resync.
    registered: bool,
}

/// A subscribe or leave op as written, to turn its script's reply into transitions.
enum Written {
    Subscribe {
        app: Arc<str>,
        channel: Channel,
        socket: ConnKey,
        member: Option<Member>,
        reply: Option<oneshot::Sender<Subscribed>>,
    },
    Left {
        app: Arc<str>,
        channel: Channel,
    },
    Other,
}

impl Worker {
    /// A critical task: returns when every handle is gone or after a shutdown.
    async fn run(mut self) {
        let mut beat = tokio::time::interval((self.ttl / 3).max(Duration::from_millis(500)));
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch: Vec<Op> = Vec::with_capacity(BATCH);
        loop {
            if self.shared.resync.swap(false, Ordering::Relaxed) {
                if let Some(done) = self.discard_queued() {
                    self.shut_down(done).await;
                    return;
                }
                if let Err(e) = self.resync().await {
                    self.shared.resync.store(true, Ordering::Relaxed);
                    self.failed(&e);
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
            let result = tokio::select! {
                received = self.rx.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        return;
                    }
                    match self.apply(&mut batch).await {
                        Ok(Some(done)) => {
                            self.shut_down(done).await;
                            return;
                        }
                        Ok(None) => Ok(()),
                        Err(e) => Err(e),
                    }
                }
                _ = beat.tick() => self.heartbeat().await,
            };
            if let Err(e) = result {
                self.shared.resync.store(true, Ordering::Relaxed);
                self.failed(&e);
                tokio::time::sleep(RETRY).await;
            }
        }
    }

    fn failed(&self, error: &redis::RedisError) {
        if let Some(suppressed) = WRITE_FAILED.admit() {
            log::warn!(
                "pusher channel state: redis write failed, will resync: {error} ({suppressed} \
                 more since the last warning)"
            );
        }
    }

    fn discard_queued(&mut self) -> Option<oneshot::Sender<()>> {
        let mut shutdown = None;
        while let Ok(op) = self.rx.try_recv() {
            if let Op::Shutdown(done) = op {
                shutdown = Some(done);
            }
        }
        shutdown
    }

    /// `members`: the reply lists the channel's members (someone waits for them).
    fn subscribe_cmd(
        &self,
        app: &str,
        channel: &Channel,
        socket: ConnKey,
        member: Option<&Member>,
        members: bool,
    ) -> redis::Cmd {
        let (uid, info) = member.map_or(("", "null"), |m| (&*m.user_id, m.user_info.get()));
        redis::cmd("EVALSHA")
            .arg(SUBSCRIBE_SCRIPT.get_hash())
            .arg(0)
            .arg(&self.shared.base)
            .arg(app)
            .arg(channel.as_str())
            .arg(socket.to_string())
            .arg(&self.shared.keys.node)
            .arg(uid)
            .arg(info)
            .arg(if members && channel.kind().is_presence() {
                "1"
            } else {
                "0"
            })
            .clone()
    }

    fn leave_cmd(&self, app: &str, channel: &str, socket: &str) -> redis::Cmd {
        redis::cmd("EVALSHA")
            .arg(LEAVE_SCRIPT.get_hash())
            .arg(0)
            .arg(&self.shared.base)
            .arg(app)
            .arg(channel)
            .arg(socket)
            .arg(&self.shared.keys.node)
            .clone()
    }

    /// Writes a batch in one pipeline and carries out the transitions the scripts
    /// report. Returns a shutdown's reply channel when the batch held one.
    async fn apply(
        &mut self,
        batch: &mut Vec<Op>,
    ) -> redis::RedisResult<Option<oneshot::Sender<()>>> {
        let mut pipe = redis::pipe();
        let mut written = Vec::with_capacity(batch.len());
        let mut shutdown = None;
        for op in batch.drain(..) {
            match op {
                Op::Subscribe {
                    app,
                    channel,
                    socket,
                    member,
                    reply,
                } => {
                    pipe.add_command(self.subscribe_cmd(
                        &app,
                        &channel,
                        socket,
                        member.as_ref(),
                        reply.is_some(),
                    ));
                    written.push(Written::Subscribe {
                        app,
                        channel,
                        socket,
                        member,
                        reply,
                    });
                }
                Op::Left {
                    app,
                    channel,
                    socket,
                } => {
                    pipe.add_command(self.leave_cmd(&app, channel.as_str(), &socket.to_string()));
                    written.push(Written::Left { app, channel });
                }
                Op::CacheStore { key, value } => {
                    pipe.cmd("SET")
                        .arg(key)
                        .arg(value)
                        .arg("EX")
                        .arg(CACHE_TTL.as_secs());
                    written.push(Written::Other);
                }
                Op::Shutdown(done) => shutdown = Some(done),
            }
        }
        if written.is_empty() {
            return Ok(shutdown);
        }
        let replies: Vec<redis::Value> = self.shared.link.query(&pipe).await?;
        for (op, reply) in written.into_iter().zip(replies) {
            self.carry_out(op, reply);
        }
        Ok(shutdown)
    }

    /// Turns one script reply into transitions (and the subscriber's answer).
    fn carry_out(&self, op: Written, reply: redis::Value) {
        match op {
            Written::Subscribe {
                app,
                channel,
                socket,
                member,
                reply: answer,
            } => {
                let Ok((added, occupied, member_added, sockets, members)) =
                    redis::from_redis_value::<(u8, u8, u8, usize, Vec<(String, String)>)>(reply)
                else {
                    self.shared.resync.store(true, Ordering::Relaxed);
                    return;
                };
                let mut transitions = Vec::new();
                if occupied == 1 {
                    transitions.push(Transition::Occupied);
                }
                if let (1, Some(member)) = (member_added, &member) {
                    transitions.push(Transition::MemberAdded {
                        user_id: member.user_id.clone(),
                        user_info: member.user_info.get().to_string(),
                        joiner: Some(socket),
                    });
                }
                self.shared.effects.apply(&app, &channel, &transitions);
                if let Some(answer) = answer {
                    let _ = answer.send(Subscribed {
                        new: added == 1,
                        presence: channel.kind().is_presence().then(|| presence(members)),
                        subscription_count: sockets,
                        cluster_wide: true,
                    });
                }
            }
            Written::Left { app, channel } => {
                let Ok((found, vacated, removed)) =
                    redis::from_redis_value::<(String, String, String)>(reply)
                else {
                    self.shared.resync.store(true, Ordering::Relaxed);
                    return;
                };
                if found == "1" {
                    self.shared
                        .effects
                        .apply(&app, &channel, &left_transitions(&vacated, removed));
                }
            }
            Written::Other => {}
        }
    }

    /// Makes this node's entries in Redis equal to the local map: `LEAVE` for the
    /// entries no longer held, `SUBSCRIBE` for the missing ones (their transitions
    /// are carried out as they are found).
    async fn resync(&mut self) -> redis::RedisResult<()> {
        let shared = self.shared.clone();
        let node = &shared.keys.node;
        // Entries are written only while the registry holds this node's liveness key:
        // before it, peers would take them for a dead node's.
        let alive: bool = shared
            .link
            .query(redis::cmd("EXISTS").arg(shared.keys.alive(node)))
            .await?;
        if !alive {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "this node's liveness key is not written yet",
            )));
        }
        let mut load = redis::pipe();
        load.cmd("SCRIPT").arg("LOAD").arg(SUBSCRIBE).ignore();
        load.cmd("SCRIPT").arg("LOAD").arg(&*LEAVE).ignore();
        shared.link.query::<()>(&load).await?;
        let stored: HashSet<String> = shared
            .link
            .query(redis::cmd("SMEMBERS").arg(format!("{}:node:{node}", shared.base)))
            .await?;
        let snapshot = shared
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .snapshot();
        let mut held = HashSet::with_capacity(snapshot.len());
        let mut missing = Vec::new();
        for (app, channel, socket, member) in snapshot {
            let entry = format!("{app} {channel} {socket}");
            if !stored.contains(&entry) {
                missing.push(Written::Subscribe {
                    app,
                    channel,
                    socket,
                    member,
                    reply: None,
                });
            }
            held.insert(entry);
        }
        let mut stale = Vec::new();
        for entry in stored.difference(&held) {
            let mut parts = entry.split(' ');
            if let (Some(app), Some(channel), Some(socket), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
                && let Ok(channel) = Channel::parse(channel)
            {
                stale.push((Arc::<str>::from(app), channel, socket.to_string()));
            }
        }
        for chunk in stale.chunks(RESYNC_CHUNK) {
            let mut pipe = redis::pipe();
            for (app, channel, socket) in chunk {
                pipe.add_command(self.leave_cmd(app, channel.as_str(), socket));
            }
            let replies: Vec<redis::Value> = shared.link.query(&pipe).await?;
            for ((app, channel, _), reply) in chunk.iter().zip(replies) {
                self.carry_out(
                    Written::Left {
                        app: app.clone(),
                        channel: channel.clone(),
                    },
                    reply,
                );
            }
        }
        let (added, removed) = (missing.len(), stale.len());
        let mut missing = missing.into_iter().peekable();
        while missing.peek().is_some() {
            let chunk: Vec<Written> = missing.by_ref().take(RESYNC_CHUNK).collect();
            let mut pipe = redis::pipe();
            for op in &chunk {
                if let Written::Subscribe {
                    app,
                    channel,
                    socket,
                    member,
                    ..
                } = op
                {
                    pipe.add_command(self.subscribe_cmd(
                        app,
                        channel,
                        *socket,
                        member.as_ref(),
                        false,
                    ));
                }
            }
            let replies: Vec<redis::Value> = shared.link.query(&pipe).await?;
            for (op, reply) in chunk.into_iter().zip(replies) {
                self.carry_out(op, reply);
            }
        }
        self.registered = false;
        self.register().await?;
        if added + removed > 0 {
            log::info!(
                "pusher channel state resynced in redis: {added} subscriptions written, {removed} stale removed"
            );
        }
        Ok(())
    }

    /// Renews this node's `{b}:nodes` membership; an `SADD` answering 1 after the
    /// first means peers purged this node (it was paused past the TTL): resync.
    async fn register(&mut self) -> redis::RedisResult<()> {
        let added: usize = self
            .shared
            .link
            .query(
                redis::cmd("SADD")
                    .arg(format!("{}:nodes", self.shared.base))
                    .arg(&self.shared.keys.node),
            )
            .await?;
        if added == 1 && std::mem::replace(&mut self.registered, true) {
            log::warn!(
                "this node's pusher channel entries were purged by its peers; writing them again"
            );
            self.shared.resync.store(true, Ordering::Relaxed);
        }
        self.registered = true;
        Ok(())
    }

    /// Renews the membership and purges the nodes whose liveness key expired.
    async fn heartbeat(&mut self) -> redis::RedisResult<()> {
        self.register().await?;
        let shared = self.shared.clone();
        let nodes: Vec<String> = shared
            .link
            .query(redis::cmd("SMEMBERS").arg(format!("{}:nodes", shared.base)))
            .await?;
        for node in nodes.iter().filter(|n| **n != shared.keys.node) {
            self.purge(node, true).await?;
        }
        Ok(())
    }

    /// Runs `PURGE` for `node` and carries out the transitions it reports.
    async fn purge(&self, node: &str, only_if_dead: bool) -> redis::RedisResult<()> {
        let keys = &self.shared.keys;
        let flat: Vec<String> = self
            .shared
            .link
            .query(
                redis::cmd("EVAL")
                    .arg(&*PURGE)
                    .arg(0)
                    .arg(&self.shared.base)
                    .arg(keys.alive(node))
                    .arg(node)
                    .arg(if only_if_dead { "1" } else { "0" }),
            )
            .await?;
        let Some((status, rows)) = flat.split_first() else {
            return Ok(());
        };
        if status != "purged" {
            return Ok(());
        }
        let mut sockets = 0;
        for row in rows.chunks_exact(4) {
            let [app, channel, vacated, removed] = row else {
                continue;
            };
            let Ok(channel) = Channel::parse(channel) else {
                continue;
            };
            sockets += 1;
            self.shared
                .effects
                .apply(app, &channel, &left_transitions(vacated, removed.clone()));
        }
        if only_if_dead && sockets > 0 {
            log::warn!(
                "node {node} stopped renewing its liveness key; removed its {sockets} pusher subscriptions"
            );
        }
        Ok(())
    }

    async fn shut_down(&mut self, done: oneshot::Sender<()>) {
        let node = self.shared.keys.node.clone();
        match self.purge(&node, false).await {
            Ok(()) => log::info!("removed this node's pusher channel entries from redis"),
            Err(e) => {
                log::warn!("could not remove this node's pusher channel entries from redis: {e}")
            }
        }
        let _ = done.send(());
    }
}

fn left_transitions(vacated: &str, removed: String) -> Vec<Transition> {
    let mut transitions = Vec::new();
    if !removed.is_empty() {
        transitions.push(Transition::MemberRemoved {
            user_id: removed.into(),
        });
    }
    if vacated == "1" {
        transitions.push(Transition::Vacated);
    }
    transitions
}
