//! Webhook sender (PUSHER-NOTES §3.7): events go into a bounded queue that never
//! blocks the caller (a full queue drops the event and counts it), are batched per
//! app (up to [`WebhookOptions::batch_max`] events or [`WebhookOptions::batch_wait`]
//! after the first), and are POSTed to each of the app's receivers that wants them:
//!
//! ```text
//! POST <url>
//! Content-Type: application/json
//! X-Pusher-Key: <app key>
//! X-Pusher-Signature: hex(HMAC-SHA256(app secret, body))
//!
//! {"time_ms":1700000000000,"events":[{"name":"channel_occupied","channel":"orders"}]}
//! ```
//!
//! A 5xx, 429, timeout or connection error is retried with doubling back-off, up to
//! [`WebhookOptions::attempts`] tries; any other non-2xx is given up at once. Deliveries
//! run beside the batching task, at most [`WebhookOptions::parallel`] at a time; when
//! all are busy the queue fills and new events are dropped (counted), never awaited.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use std::sync::atomic::AtomicUsize;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;

use super::apps::{PusherApp, WebhookTarget};
use super::sign::webhook_signature;

/// One webhook event (`pusher-http-node: lib/webhook.js` shapes): `name` is one of
/// [`super::apps::WEBHOOK_EVENTS`]; the optional fields appear when they apply
/// (`user_id` for member events, `event`/`data`/`socket_id` for `client_event`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookEvent {
    pub name: &'static str,
    pub channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<String>,
}

impl WebhookEvent {
    fn new(name: &'static str, channel: &str) -> Self {
        Self {
            name,
            channel: channel.to_string(),
            user_id: None,
            event: None,
            data: None,
            socket_id: None,
        }
    }
    pub fn channel_occupied(channel: &str) -> Self {
        Self::new("channel_occupied", channel)
    }
    pub fn channel_vacated(channel: &str) -> Self {
        Self::new("channel_vacated", channel)
    }
    pub fn member_added(channel: &str, user_id: &str) -> Self {
        Self {
            user_id: Some(user_id.into()),
            ..Self::new("member_added", channel)
        }
    }
    pub fn member_removed(channel: &str, user_id: &str) -> Self {
        Self {
            user_id: Some(user_id.into()),
            ..Self::new("member_removed", channel)
        }
    }
    /// `data` is the client event's data as JSON text; `user_id` on presence channels.
    pub fn client_event(
        channel: &str,
        event: &str,
        data: &str,
        socket_id: &str,
        user_id: Option<&str>,
    ) -> Self {
        Self {
            event: Some(event.into()),
            data: Some(data.into()),
            socket_id: Some(socket_id.into()),
            user_id: user_id.map(Into::into),
            ..Self::new("client_event", channel)
        }
    }
    pub fn cache_miss(channel: &str) -> Self {
        Self::new("cache_miss", channel)
    }
}

/// Sender tuning; [`Default`] suits production.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    /// Events waiting at most, all apps together; beyond it events are dropped.
    pub queue: usize,
    /// Events in one POST at most.
    pub batch_max: usize,
    /// How long the first event of a batch waits for company.
    pub batch_wait: Duration,
    /// One POST's timeout (connect + answer).
    pub timeout: Duration,
    /// Tries per batch and receiver, the first included.
    pub attempts: u32,
    /// Wait before the first retry; doubled for each next one.
    pub backoff: Duration,
    /// Deliveries in flight at most.
    pub parallel: usize,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        Self {
            queue: 10_000,
            batch_max: 50,
            batch_wait: Duration::from_millis(100),
            timeout: Duration::from_secs(5),
            attempts: 4,
            backoff: Duration::from_millis(500),
            parallel: 16,
        }
    }
}

/// Counters, for metrics and tests.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events refused because the queue was full (or the sender stopped).
    pub dropped: AtomicU64,
    /// Batches a receiver answered 2xx.
    pub delivered: AtomicU64,
    /// Batches given up (attempts exhausted or a 4xx).
    pub failed: AtomicU64,
    /// Retries made.
    pub retries: AtomicU64,
}

/// The app data a delivery needs.
struct AppHooks {
    key: String,
    secret: String,
    targets: Vec<WebhookTarget>,
}

/// Handle to the sender task; cheap to clone. Dropping every handle ends the task
/// once the queue is drained.
#[derive(Clone)]
pub struct WebhookSender {
    queue: mpsc::Sender<(Arc<str>, WebhookEvent)>,
    stats: Arc<WebhookStats>,
    idle: Arc<Idle>,
}

/// What [`WebhookSender::flush`] waits for: no event queued or batched, no
/// delivery in flight.
struct Idle {
    /// Events accepted and not yet handed to a delivery (or discarded).
    unsent: AtomicUsize,
    /// Delivery slots; all free = nothing in flight.
    slots: Arc<Semaphore>,
    parallel: usize,
    /// Asks the batching task to send what it holds now.
    now: Notify,
}

impl WebhookSender {
    /// Starts the sender on the current tokio runtime for `apps` (those without
    /// webhooks are skipped: their events are dropped without counting). Fails only
    /// when the HTTP client cannot be built (no TLS roots on the system, say).
    pub fn start(apps: &[PusherApp], options: WebhookOptions) -> Result<Self, reqwest::Error> {
        let hooks: HashMap<Arc<str>, Arc<AppHooks>> = apps
            .iter()
            .filter(|a| !a.webhooks.is_empty())
            .map(|a| {
                let hooks = AppHooks {
                    key: a.key.clone(),
                    secret: a.secret.clone(),
                    targets: a.webhooks.clone(),
                };
                (Arc::from(a.id.as_str()), Arc::new(hooks))
            })
            .collect();
        let (queue, rx) = mpsc::channel(options.queue.max(1));
        let stats = Arc::new(WebhookStats::default());
        let idle = Arc::new(Idle {
            unsent: AtomicUsize::new(0),
            slots: Arc::new(Semaphore::new(options.parallel.max(1))),
            parallel: options.parallel.max(1),
            now: Notify::new(),
        });
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .build()?;
        tokio::spawn(run(rx, hooks, options, client, stats.clone(), idle.clone()));
        Ok(Self { queue, stats, idle })
    }

    /// Queues `event` for app `app_id`; never waits. `false` when the queue is full
    /// (the event is dropped and counted in [`WebhookStats::dropped`]).
    pub fn send(&self, app_id: &str, event: WebhookEvent) -> bool {
        self.idle.unsent.fetch_add(1, Ordering::Relaxed);
        match self.queue.try_send((Arc::from(app_id), event)) {
            Ok(()) => true,
            Err(_) => {
                self.idle.unsent.fetch_sub(1, Ordering::Relaxed);
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn stats(&self) -> &WebhookStats {
        &self.stats
    }

    /// Sends what is batched now and waits until nothing is queued or in flight
    /// (a graceful stop), `within` at most. False when time ran out.
    pub async fn flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            self.idle.now.notify_one();
            if self.idle.unsent.load(Ordering::Relaxed) == 0
                && self.idle.slots.available_permits() == self.idle.parallel
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Batches events per app and hands full or due batches to delivery tasks.
async fn run(
    mut rx: mpsc::Receiver<(Arc<str>, WebhookEvent)>,
    hooks: HashMap<Arc<str>, Arc<AppHooks>>,
    options: WebhookOptions,
    client: reqwest::Client,
    stats: Arc<WebhookStats>,
    idle: Arc<Idle>,
) {
    let slots = idle.slots.clone();
    let mut pending: HashMap<Arc<str>, (Instant, Vec<WebhookEvent>)> = HashMap::new();
    let batch_max = options.batch_max.max(1);
    loop {
        let due = pending
            .values()
            .map(|(since, _)| *since + options.batch_wait)
            .min();
        let mut flush = false;
        let received = match due {
            Some(due) => tokio::select! {
                next = rx.recv() => Some(next),
                () = tokio::time::sleep_until(due) => None,
                () = idle.now.notified() => { flush = true; None }
            },
            None => tokio::select! {
                next = rx.recv() => Some(next),
                () = idle.now.notified() => { flush = true; None }
            },
        };
        let closed = matches!(received, Some(None));
        if let Some(Some((app, event))) = received {
            if hooks.contains_key(&app) {
                let batch = pending
                    .entry(app)
                    .or_insert_with(|| (Instant::now(), Vec::new()));
                batch.1.push(event);
            } else {
                // An app without webhooks: nothing to send.
                idle.unsent.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let now = Instant::now();
        let ready: Vec<Arc<str>> = pending
            .iter()
            .filter(|(_, (since, events))| {
                closed || flush || events.len() >= batch_max || now >= *since + options.batch_wait
            })
            .map(|(app, _)| app.clone())
            .collect();
        for app in ready {
            let (Some((_, events)), Some(hooks)) = (pending.remove(&app), hooks.get(&app)) else {
                continue;
            };
            for target in &hooks.targets {
                let wanted: Vec<&WebhookEvent> =
                    events.iter().filter(|e| target.wants(e.name)).collect();
                if wanted.is_empty() {
                    continue;
                }
                let body = serde_json::json!({"time_ms": now_ms(), "events": wanted}).to_string();
                // Waiting for a slot here backs the queue up: callers then drop, never wait.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let delivery = Delivery {
                    client: client.clone(),
                    url: target.url.clone(),
                    key: hooks.key.clone(),
                    signature: webhook_signature(&hooks.secret, body.as_bytes()),
                    body,
                };
                let (options, stats) = (options.clone(), stats.clone());
                tokio::spawn(async move {
                    delivery.send(&options, &stats).await;
                    drop(slot);
                });
            }
            // Handed over (their deliveries hold slots) or filtered out.
            idle.unsent.fetch_sub(events.len(), Ordering::Relaxed);
        }
        if closed {
            return;
        }
    }
}

struct Delivery {
    client: reqwest::Client,
    url: String,
    key: String,
    signature: String,
    body: String,
}

impl Delivery {
    async fn send(self, options: &WebhookOptions, stats: &WebhookStats) {
        let mut wait = options.backoff;
        for attempt in 1..=options.attempts.max(1) {
            let sent = self
                .client
                .post(&self.url)
                .header("Content-Type", "application/json")
                .header("X-Pusher-Key", &self.key)
                .header("X-Pusher-Signature", &self.signature)
                .body(self.body.clone())
                .send()
                .await;
            let outcome = match &sent {
                Ok(reply) if reply.status().is_success() => {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(reply) => {
                    let status = reply.status();
                    if !(status.is_server_error() || status.as_u16() == 429) {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        warn_throttled(&format!(
                            "webhook {} answered {status}: batch dropped",
                            self.url
                        ));
                        return;
                    }
                    status.to_string()
                }
                Err(e) => e.to_string(),
            };
            if attempt == options.attempts.max(1) {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                warn_throttled(&format!(
                    "webhook {} failed {attempt} times ({outcome}): batch dropped",
                    self.url
                ));
                return;
            }
            stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
            wait = wait.saturating_mul(2);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One warning per 10 s at most: a dead receiver must not flood the log.
fn warn_throttled(message: &str) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = now_ms() / 1000;
    let last = LAST.load(Ordering::Relaxed);
    if now >= last.saturating_add(10)
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        log::warn!("{message}");
    }
}
