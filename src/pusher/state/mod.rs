//! Pusher channel state (PUSHER-NOTES §3.2, issue 14 parts 2 and 5): which sockets
//! are subscribed to which channel of which app, the presence members (unique users,
//! each with a connection count and the `user_info` of their first connection), and
//! the cache channels' last events.
//!
//! The state decides the transitions and carries out their effects:
//!
//! | transition                         | effect                                                    |
//! |------------------------------------|-----------------------------------------------------------|
//! | first subscriber of a channel      | `channel_occupied` webhook                                |
//! | last subscriber left               | `channel_vacated` webhook                                 |
//! | a user's first connection (presence) | `member_added` webhook, `pusher_internal:member_added` to the others |
//! | a user's last connection left      | `member_removed` webhook, `pusher_internal:member_removed` |
//!
//! Two modes behind one handle:
//! - embedded: this process's map is the whole truth; transitions are decided under
//!   its lock;
//! - redis: the map is this node's share, mirrored to Redis by one worker
//!   (`redis.rs`); every transition is decided by an atomic Lua script, so once per
//!   cluster, whichever node runs it. A dead node's entries are removed by a peer
//!   with the same kind of script (crash clean-up, like the registry's), which emits
//!   the `member_removed` / `channel_vacated` those sockets owed, exactly once.
//!
//! Nothing here waits for Redis on the fan-out path: [`ChannelState::left`] and
//! [`ChannelState::cache_store`] only queue; [`ChannelState::subscribe`] awaits the
//! script's answer (bounded by a deadline) on the subscribing connection's task.

mod local;
mod metrics;
mod redis;
mod sink;

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::channel::Channel;
use super::webhook::{WebhookEvent, WebhookSender};
use crate::push::ConnKey;

pub use self::local::CACHE_TTL;
use self::local::Local;
pub use self::metrics::StateCollector;
use self::redis::RedisState;
pub use self::sink::PublisherSink;

/// An app's id (`[[pusher.apps]] id`): channel namespaces are per app.
pub type AppId = Arc<str>;

/// Longest presence `user_id`, in bytes (Pusher documents 128 characters).
pub const MAX_USER_ID_BYTES: usize = 128;
/// Longest `user_info` JSON text, in bytes (Pusher's limit on presence user data: 1 KB).
pub const MAX_USER_INFO_BYTES: usize = 1024;

/// A presence member: the `user_id` and `user_info` of a subscription's signed
/// `channel_data` (`{"user_id":"7","user_info":{...}}`; a numeric `user_id` is taken
/// as its decimal text, as pusher-js and Laravel send both).
#[derive(Debug, Clone)]
pub struct Member {
    pub user_id: Arc<str>,
    /// JSON (`null` when `channel_data` has none).
    pub user_info: Arc<RawValue>,
}

/// Why `channel_data` is not a presence member; the text is the
/// `pusher:subscription_error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    #[error("channel_data must be a JSON object {{user_id, user_info?}}")]
    NotObject,
    #[error("channel_data.user_id must be a non-empty string or an integer")]
    BadUserId,
    #[error(
        "channel_data.user_id must be at most {MAX_USER_ID_BYTES} bytes without control characters"
    )]
    UserIdTooLong,
    #[error("channel_data.user_info must be at most {MAX_USER_INFO_BYTES} bytes")]
    UserInfoTooLong,
}

impl Member {
    /// Parses a subscription's `channel_data` text. Never panics (proptested).
    pub fn parse(channel_data: &str) -> Result<Self, MemberError> {
        #[derive(Deserialize)]
        struct Data<'a> {
            #[serde(borrow)]
            user_id: &'a RawValue,
            #[serde(default, borrow)]
            user_info: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Id {
            S(String),
            I(i64),
            U(u64),
        }
        let data: Data<'_> =
            serde_json::from_str(channel_data).map_err(|_| MemberError::NotObject)?;
        let user_id = match serde_json::from_str::<Id>(data.user_id.get()) {
            Ok(Id::S(s)) => s,
            Ok(Id::I(n)) => n.to_string(),
            Ok(Id::U(n)) => n.to_string(),
            Err(_) => return Err(MemberError::BadUserId),
        };
        Self::new(&user_id, data.user_info.map_or("null", RawValue::get))
    }

    /// A member from its parts; `user_info` must be JSON text.
    pub fn new(user_id: &str, user_info: &str) -> Result<Self, MemberError> {
        if user_id.is_empty() {
            return Err(MemberError::BadUserId);
        }
        if user_id.len() > MAX_USER_ID_BYTES || user_id.chars().any(char::is_control) {
            return Err(MemberError::UserIdTooLong);
        }
        if user_info.len() > MAX_USER_INFO_BYTES {
            return Err(MemberError::UserInfoTooLong);
        }
        let info =
            RawValue::from_string(user_info.to_string()).map_err(|_| MemberError::NotObject)?;
        Ok(Self {
            user_id: user_id.into(),
            user_info: Arc::from(info),
        })
    }
}

/// The unique users of a presence channel, for `subscription_succeeded`.
#[derive(Debug, Clone, Default)]
pub struct Presence {
    /// Each user once, with their `user_info`, sorted by id.
    pub members: Vec<(Arc<str>, Arc<RawValue>)>,
}

impl Presence {
    /// The borrowed form `protocol::subscription_succeeded` takes.
    pub fn as_protocol(&self) -> super::protocol::Presence<'_> {
        super::protocol::Presence {
            members: self
                .members
                .iter()
                .map(|(id, info)| (&**id, &**info))
                .collect(),
        }
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|(id, _)| &**id)
    }
}

/// What [`ChannelState::subscribe`] answers.
#[derive(Debug, Clone)]
pub struct Subscribed {
    /// False when this socket was subscribed already (a repeated `pusher:subscribe`):
    /// nothing changed.
    pub new: bool,
    /// Presence channels: the members after this subscription, this user included.
    pub presence: Option<Presence>,
    /// Sockets subscribed to the channel after this one.
    pub subscription_count: usize,
    /// False when Redis could not answer in time and the numbers are this node's
    /// alone (the subscription is still recorded and reaches Redis at the next resync).
    pub cluster_wide: bool,
}

/// `GET /apps/{id}/channels/{ch}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelInfo {
    pub occupied: bool,
    pub subscription_count: usize,
    /// Distinct users; `Some` on presence channels only.
    pub user_count: Option<usize>,
    pub cluster_wide: bool,
}

/// One occupied channel in `GET /apps/{id}/channels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSummary {
    pub channel: String,
    pub subscription_count: usize,
    /// Distinct users; `Some` on presence channels only.
    pub user_count: Option<usize>,
}

/// The last event of a cache channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedEvent {
    pub event: String,
    /// The event's `data` string, as published.
    pub data: String,
}

/// Where member events go to the channel's subscribers (P1's `pusher::Publisher`,
/// cluster-wide through the bus). Called from `Drop` paths and Redis workers: it
/// must not block (spawn if it needs to await).
pub trait MemberSink: Send + Sync + 'static {
    /// Publishes `event` (`pusher_internal:member_added` / `_removed`) with `data`
    /// (the JSON text that becomes the frame's `data` string) on `channel` of `app`,
    /// to every subscriber but `exclude`.
    fn publish(
        &self,
        app: &str,
        channel: &Channel,
        event: &'static str,
        data: String,
        exclude: Option<ConnKey>,
    );

    /// Events accepted and not yet published (a graceful stop waits for 0).
    fn pending(&self) -> usize {
        0
    }
}

/// A state change decided once (per process in embedded mode, per cluster in
/// Redis mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Occupied,
    Vacated,
    MemberAdded {
        user_id: Arc<str>,
        /// JSON text.
        user_info: String,
        /// The socket whose subscription added the member (not told about itself).
        joiner: Option<ConnKey>,
    },
    MemberRemoved {
        user_id: Arc<str>,
    },
}

/// Counters of the state's effects.
#[derive(Debug, Default)]
pub struct StateStats {
    pub occupied: std::sync::atomic::AtomicU64,
    pub vacated: std::sync::atomic::AtomicU64,
    pub members_added: std::sync::atomic::AtomicU64,
    pub members_removed: std::sync::atomic::AtomicU64,
}

/// Carries out transitions: webhooks and member events.
pub(crate) struct Effects {
    webhooks: Option<WebhookSender>,
    sink: OnceLock<Arc<dyn MemberSink>>,
    stats: StateStats,
}

impl Effects {
    fn apply(&self, app: &str, channel: &Channel, transitions: &[Transition]) {
        use std::sync::atomic::Ordering::Relaxed;
        for transition in transitions {
            let name = channel.as_str();
            let (hook, member) = match transition {
                Transition::Occupied => {
                    self.stats.occupied.fetch_add(1, Relaxed);
                    (WebhookEvent::channel_occupied(name), None)
                }
                Transition::Vacated => {
                    self.stats.vacated.fetch_add(1, Relaxed);
                    (WebhookEvent::channel_vacated(name), None)
                }
                Transition::MemberAdded {
                    user_id,
                    user_info,
                    joiner,
                } => {
                    self.stats.members_added.fetch_add(1, Relaxed);
                    let info: serde_json::Value =
                        serde_json::from_str(user_info).unwrap_or(serde_json::Value::Null);
                    let data = serde_json::json!({"user_id": &**user_id, "user_info": info});
                    (
                        WebhookEvent::member_added(name, user_id),
                        Some(("pusher_internal:member_added", data.to_string(), *joiner)),
                    )
                }
                Transition::MemberRemoved { user_id } => {
                    self.stats.members_removed.fetch_add(1, Relaxed);
                    let data = serde_json::json!({"user_id": &**user_id});
                    (
                        WebhookEvent::member_removed(name, user_id),
                        Some(("pusher_internal:member_removed", data.to_string(), None)),
                    )
                }
            };
            if let Some(webhooks) = &self.webhooks {
                webhooks.send(app, hook);
            }
            if let (Some((event, data, exclude)), Some(sink)) = (member, self.sink.get()) {
                sink.publish(app, channel, event, data, exclude);
            }
        }
    }
}

fn effects(webhooks: Option<WebhookSender>) -> Arc<Effects> {
    Arc::new(Effects {
        webhooks,
        sink: OnceLock::new(),
        stats: StateStats::default(),
    })
}

struct Inner {
    local: Arc<Mutex<Local>>,
    effects: Arc<Effects>,
    cluster: Option<RedisState>,
}

/// Handle to the channel state; cheap to clone.
#[derive(Clone)]
pub struct ChannelState {
    inner: Arc<Inner>,
}

/// A task the node cannot work without, named for the supervisor.
pub type CriticalTask = (&'static str, tokio::task::JoinHandle<()>);

/// The state `server::start` builds: embedded without a Redis `link`, else in Redis
/// under `keys` (this node's `server.node_id`; `ttl` = `redis.node_ttl_secs`), with
/// a webhook sender when an app has webhooks. Returns the critical tasks to
/// supervise. Fails only when the webhook HTTP client cannot be built.
pub fn start(
    settings: &super::PusherSettings,
    link: Option<(crate::redis::Link, crate::redis::RedisKeys, Duration)>,
) -> Result<(ChannelState, Vec<CriticalTask>), reqwest::Error> {
    let webhooks = if settings.apps.iter().any(|a| !a.webhooks.is_empty()) {
        Some(WebhookSender::start(
            &settings.apps,
            super::WebhookOptions::default(),
        )?)
    } else {
        None
    };
    Ok(match link {
        None => (ChannelState::embedded(webhooks), Vec::new()),
        Some((link, keys, ttl)) => {
            let (state, task) = ChannelState::redis(webhooks, link, keys, ttl);
            (state, vec![("pusher channel state worker", task)])
        }
    })
}

/// How long [`ChannelState::subscribe`] waits for Redis before answering with this
/// node's view.
pub const SUBSCRIBE_DEADLINE: Duration = Duration::from_secs(5);

impl ChannelState {
    /// The embedded state: one process, nothing stored elsewhere. `webhooks`:
    /// where the transitions' webhooks go (none: not sent).
    pub fn embedded(webhooks: Option<WebhookSender>) -> Self {
        Self::with_cluster(webhooks, None)
    }

    fn with_cluster(webhooks: Option<WebhookSender>, cluster: Option<RedisState>) -> Self {
        Self::with_parts(Arc::default(), effects(webhooks), cluster)
    }

    fn with_parts(
        local: Arc<Mutex<Local>>,
        effects: Arc<Effects>,
        cluster: Option<RedisState>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                local,
                effects,
                cluster,
            }),
        }
    }

    /// The Redis state (see `redis.rs`) and its worker, a critical task.
    pub fn redis(
        webhooks: Option<WebhookSender>,
        link: crate::redis::Link,
        keys: crate::redis::RedisKeys,
        ttl: Duration,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let local = Arc::<Mutex<Local>>::default();
        let effects = effects(webhooks);
        let (cluster, task) = RedisState::start(link, keys, ttl, local.clone(), effects.clone());
        (Self::with_parts(local, effects, Some(cluster)), task)
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.inner
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `"embedded"` or `"redis"`.
    pub fn mode(&self) -> &'static str {
        if self.inner.cluster.is_some() {
            "redis"
        } else {
            "embedded"
        }
    }

    /// Sets where member events are published (once; later calls are ignored).
    pub fn set_sink(&self, sink: Arc<dyn MemberSink>) {
        let _ = self.inner.effects.sink.set(sink);
    }

    /// Counters of the transitions carried out by this node.
    pub fn stats(&self) -> &StateStats {
        &self.inner.effects.stats
    }

    /// The webhook sender, if any (its counters feed the metrics).
    pub fn webhooks(&self) -> Option<&WebhookSender> {
        self.inner.effects.webhooks.as_ref()
    }

    /// Records `socket`'s subscription to `channel` of `app` (after its auth was
    /// checked), with its `member` on presence channels (`None` elsewhere; a presence
    /// subscription without a member counts as a socket only). Decides and carries out
    /// the transitions (occupied, member_added — published to every other subscriber,
    /// not to `socket`). A repeated subscription changes nothing (`new: false`).
    pub async fn subscribe(
        &self,
        app: &str,
        channel: &Channel,
        socket: ConnKey,
        member: Option<Member>,
    ) -> Subscribed {
        let member = member.filter(|_| channel.kind().is_presence());
        let (local_view, transitions) =
            self.local().subscribe(app, channel, socket, member.clone());
        match &self.inner.cluster {
            None => {
                self.inner.effects.apply(app, channel, &transitions);
                local_view
            }
            Some(cluster) => {
                if !local_view.new {
                    // Already recorded (locally and, through the worker, in Redis).
                    return match cluster.view(app, channel).await {
                        Some(view) => view,
                        None => self.local().view(app, channel),
                    };
                }
                cluster
                    .subscribe(app, channel, socket, member)
                    .await
                    .unwrap_or(Subscribed {
                        cluster_wide: false,
                        ..local_view
                    })
            }
        }
    }

    /// `socket` left `channel` of `app` (unsubscribed or closed). Never waits: safe
    /// from `Drop`. Unknown subscriptions are ignored.
    pub fn left(&self, app: &str, channel: &Channel, socket: ConnKey) {
        let Some(transitions) = self.local().left(app, channel, socket) else {
            return;
        };
        match &self.inner.cluster {
            None => self.inner.effects.apply(app, channel, &transitions),
            Some(cluster) => cluster.left(app, channel, socket),
        }
    }

    /// Occupied channels of `app` whose names start with `prefix`, with their
    /// socket counts and, for presence channels, user counts; cluster-wide in Redis
    /// mode (this node's alone when Redis does not answer). Sorted by name.
    pub async fn channels(&self, app: &str, prefix: &str) -> Vec<ChannelSummary> {
        if let Some(cluster) = &self.inner.cluster
            && let Some(list) = cluster.channels(app, prefix).await
        {
            return list;
        }
        self.local().channels(app, prefix)
    }

    /// One channel's numbers (unoccupied: all zero, `user_count` still `Some(0)` on
    /// presence channels).
    pub async fn channel(&self, app: &str, channel: &Channel) -> ChannelInfo {
        if let Some(cluster) = &self.inner.cluster {
            if let Some((sockets, users)) = cluster.counts(app, channel).await {
                return ChannelInfo {
                    occupied: sockets > 0,
                    subscription_count: sockets,
                    user_count: channel.kind().is_presence().then_some(users),
                    cluster_wide: true,
                };
            }
            return ChannelInfo {
                cluster_wide: false,
                ..self.local().info(app, channel)
            };
        }
        self.local().info(app, channel)
    }

    /// The user ids of a presence channel (empty otherwise), sorted.
    pub async fn users(&self, app: &str, channel: &Channel) -> Vec<Arc<str>> {
        if let Some(cluster) = &self.inner.cluster
            && let Some(view) = cluster.view(app, channel).await
        {
            return view
                .presence
                .map(|p| p.members.into_iter().map(|(id, _)| id).collect())
                .unwrap_or_default();
        }
        self.local().users(app, channel)
    }

    /// The last event published on cache channel `channel` (within [`CACHE_TTL`]).
    pub async fn cache_last(&self, app: &str, channel: &Channel) -> Option<CachedEvent> {
        if let Some(cluster) = &self.inner.cluster
            && let Some(found) = cluster.cache_last(app, channel).await
        {
            return found;
        }
        self.local().cache_last(app, channel)
    }

    /// Keeps `event`/`data` as the last event of cache channel `channel` (other kinds
    /// are ignored). Never waits.
    pub fn cache_store(&self, app: &str, channel: &Channel, event: &str, data: &str) {
        if !channel.kind().is_cache() {
            return;
        }
        let cached = CachedEvent {
            event: event.to_string(),
            data: data.to_string(),
        };
        if let Some(cluster) = &self.inner.cluster {
            cluster.cache_store(app, channel, &cached);
        }
        self.local().cache_store(app, channel, cached);
    }

    /// A subscriber of cache channel `channel` found nothing cached (the gateway
    /// sent `pusher:cache_miss`): the `cache_miss` webhook.
    pub fn cache_miss(&self, app: &str, channel: &Channel) {
        if let Some(webhooks) = &self.inner.effects.webhooks {
            webhooks.send(app, WebhookEvent::cache_miss(channel.as_str()));
        }
    }

    /// A client event was relayed: the `client_event` webhook (`data` as JSON text,
    /// `user_id` on presence channels).
    pub fn client_event(
        &self,
        app: &str,
        channel: &Channel,
        event: &str,
        data: &str,
        socket: ConnKey,
        user_id: Option<&str>,
    ) {
        if let Some(webhooks) = &self.inner.effects.webhooks {
            webhooks.send(
                app,
                WebhookEvent::client_event(
                    channel.as_str(),
                    event,
                    data,
                    &socket.to_string(),
                    user_id,
                ),
            );
        }
    }

    /// Occupied channels and presence members this node holds (metrics).
    pub fn local_counts(&self) -> (usize, usize) {
        self.local().counts()
    }

    /// Graceful stop, after the connections closed: removes this node's entries
    /// (their transitions are carried out: the others see the members leave and the
    /// channels vacate), then waits until the member events are published and the
    /// webhooks delivered (a few seconds at most).
    pub async fn shutdown(&self) {
        if let Some(cluster) = &self.inner.cluster {
            cluster.shutdown().await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Some(sink) = self.inner.effects.sink.get()
            && sink.pending() > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(webhooks) = &self.inner.effects.webhooks
            && !webhooks.flush(Duration::from_secs(3)).await
        {
            log::warn!("stopping with pusher webhooks still undelivered");
        }
    }
}

#[cfg(test)]
mod tests;
