//! One Redis link: a redis-rs [`ConnectionManager`] (RESP3, one multiplexed socket)
//! that reconnects by itself with jittered exponential backoff, plus a prober that
//! asks for a reply every second and replaces the connection when a socket that
//! used to answer goes silent.
//!
//! Why both: the manager reconnects when the socket *errors* (reset, EOF, refused),
//! but a half-open socket — a NAT or firewall that dropped the flow, a failover
//! without RST, a proxy that black-holes — never errors; its commands just time
//! out, and a subscription on it hears nothing, for ever. The prober turns that
//! silence into a replacement within [`REPLACE_AFTER`], and the kernel's TCP
//! keepalive and `TCP_USER_TIMEOUT` (set on the socket) turn it into an error as a
//! second line of defence.
//!
//! A link may carry subscriptions (the bus): then the probe is a `PUBLISH` of a
//! number on the node's own probe channel, and the link checks that the previous
//! probe's number came back on this very socket. A receiver count alone would not
//! do: Redis still counts the subscription of a black-holed socket. A socket that
//! answers but hears nothing subscribes again. Pushes (pub/sub messages) go to the
//! handler given at [`Link::open`], which must not block (it runs on redis-rs's
//! reader; see the bus's bounded hand-off).
//!
//! Health is kept in atomics and one small mutex, so `/healthz` reads it without a
//! Redis round trip.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use redis::{FromRedisValue, IntoConnectionInfo, ProtocolVersion, PushInfo, RedisError};

/// How often the prober asks for a reply.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Silence after which the link counts as down (`/healthz` degraded, pushes stay
/// local). Longer than a `CLIENT PAUSE` or fork stall of a couple of seconds.
pub const DOWN_AFTER: Duration = Duration::from_millis(2_500);
/// Silence after which a socket that used to answer is dropped and replaced.
pub const REPLACE_AFTER: Duration = Duration::from_secs(4);
/// Deadline of one command or pipeline sent through [`Link::query`].
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Most time between two reconnect attempts (the manager's backoff is jittered
/// below this, so nodes that lost Redis together do not retry in lockstep).
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What receives the pub/sub messages of a subscribing link. Called on redis-rs's
/// reader task: it must hand the message off without waiting.
pub type PushHandler = Arc<dyn Fn(PushInfo) + Send + Sync>;

/// The subscriptions of a link: `probe` (only this node subscribes to it) first,
/// then the channels whose messages go to `handler`.
pub struct Subscription {
    pub probe: String,
    pub channels: Vec<String>,
    pub handler: PushHandler,
}

/// Why a link is down and since when; what `/healthz` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkDown {
    /// The link's name ("commands", "subscription").
    pub link: &'static str,
    /// Unix seconds of the first failure in this outage.
    pub since: u64,
    pub reason: String,
}

/// Handle to one link; cheap to clone.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    name: &'static str,
    client: redis::Client,
    subscription: Option<Subscription>,
    current: Mutex<Arc<Session>>,
    up: AtomicBool,
    /// Unix seconds since the link is down (0 while up).
    down_since: AtomicU64,
    reason: Mutex<String>,
    /// First unanswered probe or command since the last reply.
    silent_since: Mutex<Option<Instant>>,
    /// Number of the last probe sent, and the highest one heard back.
    probes_sent: AtomicU64,
    probes_heard: Arc<AtomicU64>,
}

/// One connection manager, and whether it ever answered (a manager still trying
/// its first connection is left to its own backoff, never replaced).
struct Session {
    manager: ConnectionManager,
    answered: AtomicBool,
    /// Whether this socket's SUBSCRIBE went through.
    subscribed: AtomicBool,
    /// The probe sent on this socket at the previous turn (0: none yet).
    last_probe: AtomicU64,
}

impl Link {
    /// Prepares the link; nothing connects until [`Link::probe_forever`] or the
    /// first query runs. Errors name `redis.url`.
    pub fn open(
        name: &'static str,
        url: &str,
        subscription: Option<Subscription>,
    ) -> Result<Self, String> {
        let info = url
            .into_connection_info()
            .map_err(|e| format!("redis.url: {e}"))?;
        let redis = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let keepalive = TcpKeepalive::new()
            .with_time(Duration::from_secs(5))
            .with_interval(Duration::from_secs(2))
            .with_retries(3);
        let tcp = TcpSettings::default()
            .set_nodelay(true)
            .set_keepalive(keepalive)
            .set_user_timeout(Duration::from_secs(10));
        let info = info.set_redis_settings(redis).set_tcp_settings(tcp);
        let client = redis::Client::open(info).map_err(|e| format!("redis.url: {e}"))?;
        let probes_heard = Arc::new(AtomicU64::new(0));
        let session = Session::new(&client, subscription.as_ref(), &probes_heard)?;
        Ok(Self {
            inner: Arc::new(Inner {
                name,
                client,
                subscription,
                current: Mutex::new(Arc::new(session)),
                up: AtomicBool::new(false),
                down_since: AtomicU64::new(unix_secs()),
                reason: Mutex::new("not connected yet".into()),
                silent_since: Mutex::new(None),
                probes_sent: AtomicU64::new(0),
                probes_heard,
            }),
        })
    }

    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// Whether the last probe or command got its reply (and, for a subscribing
    /// link, the subscription is in place).
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// Why the link is down, or `None` while it is up.
    pub fn down(&self) -> Option<LinkDown> {
        if self.is_up() {
            return None;
        }
        Some(LinkDown {
            link: self.inner.name,
            since: self.inner.down_since.load(Ordering::Relaxed),
            reason: lock(&self.inner.reason).clone(),
        })
    }

    fn session(&self) -> Arc<Session> {
        lock(&self.inner.current).clone()
    }

    /// Runs `cmd` (a [`redis::Cmd`] or [`redis::Pipeline`]) within
    /// [`COMMAND_TIMEOUT`]. A failure is noted in the link's health; the caller
    /// decides what it means for its own work.
    pub async fn query<T: FromRedisValue + Send>(&self, cmd: &impl Query) -> redis::RedisResult<T> {
        let session = self.session();
        let mut conn = session.manager.clone();
        let result = match tokio::time::timeout(COMMAND_TIMEOUT, cmd.run(&mut conn)).await {
            Ok(result) => result,
            Err(_) => Err(timed_out()),
        };
        match &result {
            Ok(_) => self.answered(&session),
            // Redis answered (with an error, or a reply of another type): the link
            // works; the caller deals with the answer.
            Err(e) if answered_with_error(e) => self.answered(&session),
            Err(e) => self.failed(e),
        }
        result
    }

    /// Asks for a reply every [`PROBE_EVERY`] for as long as the process runs; a
    /// critical task (the link's health and replacement depend on it).
    pub async fn probe_forever(self) {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let session = self.session();
            let outcome = tokio::time::timeout(COMMAND_TIMEOUT, self.probe(&session)).await;
            match outcome {
                Ok(Ok(())) => self.answered(&session),
                Ok(Err(e)) => self.failed(&e),
                Err(_) => self.failed(&timed_out()),
            }
            let silent_for = lock(&self.inner.silent_since).map(|t| t.elapsed());
            if silent_for.is_some_and(|s| s >= REPLACE_AFTER)
                && session.answered.load(Ordering::Relaxed)
            {
                self.replace(&session);
                tick.reset_immediately();
            }
        }
    }

    /// One probe: PING, or for a subscribing link a PUBLISH on its probe channel
    /// (a reply *and* proof that this socket is subscribed); subscribes again when
    /// the receiver count says the subscription is gone.
    async fn probe(&self, session: &Session) -> redis::RedisResult<()> {
        let mut conn = session.manager.clone();
        let Some(subscription) = &self.inner.subscription else {
            return redis::cmd("PING").query_async::<()>(&mut conn).await;
        };
        if !session.subscribed.load(Ordering::Relaxed) {
            conn.subscribe(&subscription.probe).await?;
            conn.subscribe(&subscription.channels).await?;
            session.subscribed.store(true, Ordering::Relaxed);
            session.last_probe.store(0, Ordering::Relaxed);
            log::info!(
                "redis link {}: subscribed to {}",
                self.inner.name,
                subscription.channels.join(", ")
            );
            return Ok(());
        }
        let probe = self.inner.probes_sent.fetch_add(1, Ordering::Relaxed) + 1;
        let _: usize = redis::cmd("PUBLISH")
            .arg(&subscription.probe)
            .arg(probe)
            .query_async(&mut conn)
            .await?;
        // The previous probe's echo has had a whole turn to come back.
        let previous = session.last_probe.swap(probe, Ordering::Relaxed);
        if previous > self.inner.probes_heard.load(Ordering::Relaxed) {
            session.subscribed.store(false, Ordering::Relaxed);
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "the subscription hears nothing (its own probe did not come back); subscribing again",
            )));
        }
        Ok(())
    }

    fn answered(&self, session: &Session) {
        session.answered.store(true, Ordering::Relaxed);
        *lock(&self.inner.silent_since) = None;
        if !self.inner.up.swap(true, Ordering::Relaxed) {
            let since = self.inner.down_since.swap(0, Ordering::Relaxed);
            log::info!(
                "redis link {} is up (was down {} s)",
                self.inner.name,
                unix_secs().saturating_sub(since)
            );
        }
    }

    /// Notes a failed probe or command: an error that says the socket is gone
    /// marks the link down at once; silence does after [`DOWN_AFTER`].
    fn failed(&self, error: &RedisError) {
        let silent_for = {
            let mut silent = lock(&self.inner.silent_since);
            silent.get_or_insert_with(Instant::now).elapsed()
        };
        let silent = error.is_timeout();
        if silent && silent_for < DOWN_AFTER {
            return;
        }
        let reason = if silent {
            format!("no reply from redis for {} s", silent_for.as_secs())
        } else {
            format!("redis error: {error}")
        };
        *lock(&self.inner.reason) = reason.clone();
        if self.inner.up.swap(false, Ordering::Relaxed) {
            self.inner.down_since.store(unix_secs(), Ordering::Relaxed);
            log::warn!("redis link {} is down: {reason}", self.inner.name);
        }
    }

    /// Drops a silent socket and starts a new manager on a new one (the
    /// subscription, if any, is made again by the next probe).
    fn replace(&self, silent: &Arc<Session>) {
        let Ok(fresh) = Session::new(
            &self.inner.client,
            self.inner.subscription.as_ref(),
            &self.inner.probes_heard,
        ) else {
            return;
        };
        let mut current = lock(&self.inner.current);
        if Arc::ptr_eq(&current, silent) {
            *current = Arc::new(fresh);
            *lock(&self.inner.silent_since) = Some(Instant::now());
            log::warn!(
                "redis link {}: no reply for {} s on a socket that used to answer; replaced it",
                self.inner.name,
                REPLACE_AFTER.as_secs()
            );
        }
    }
}

impl Session {
    fn new(
        client: &redis::Client,
        subscription: Option<&Subscription>,
        probes_heard: &Arc<AtomicU64>,
    ) -> Result<Self, String> {
        let mut config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(usize::MAX)
            .set_max_delay(MAX_BACKOFF);
        if let Some(subscription) = subscription {
            let handler = subscription.handler.clone();
            let probe = subscription.probe.clone();
            let heard = probes_heard.clone();
            config = config
                .set_push_sender(move |info: PushInfo| {
                    match probe_heard(&info, &probe) {
                        Some(number) => {
                            heard.fetch_max(number, Ordering::Relaxed);
                        }
                        None => handler(info),
                    }
                    Ok::<(), std::convert::Infallible>(())
                })
                .set_automatic_resubscription();
        }
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| format!("redis.url: {e}"))?;
        Ok(Self {
            manager,
            answered: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            last_probe: AtomicU64::new(0),
        })
    }
}

/// The number a probe carried, when `info` is a message on the `probe` channel
/// (0 for one that does not parse: still ours, never passed on).
fn probe_heard(info: &PushInfo, probe: &str) -> Option<u64> {
    use redis::{PushKind, Value};
    let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
        (info.data.first(), info.data.get(1))
    else {
        return None;
    };
    if info.kind != PushKind::Message || channel.as_slice() != probe.as_bytes() {
        return None;
    }
    Some(
        std::str::from_utf8(payload)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    )
}

/// A command or a pipeline, as [`Link::query`] takes them.
pub trait Query: Sync {
    fn run<T: FromRedisValue + Send>(
        &self,
        conn: &mut ConnectionManager,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send;
}

impl Query for redis::Cmd {
    fn run<T: FromRedisValue + Send>(
        &self,
        conn: &mut ConnectionManager,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

impl Query for redis::Pipeline {
    fn run<T: FromRedisValue + Send>(
        &self,
        conn: &mut ConnectionManager,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

/// Whether `error` is Redis's answer rather than a missing one.
fn answered_with_error(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        redis::ErrorKind::Server(_) | redis::ErrorKind::UnexpectedReturnType
    )
}

fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no reply in time",
    ))
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
