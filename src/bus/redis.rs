//! Cross-node delivery over Redis pub/sub.
//!
//! Every node subscribes to `{prefix}:push` once; a publish is one `MULTI` with the
//! cluster-wide count of matching connections and the `PUBLISH`, so the number the
//! caller gets back is the number of open connections, on all nodes, that matched the
//! target when the push was published. Each node — the publisher included — delivers
//! what its one subscription receives, so no node delivers a push twice.
//!
//! When Redis is unreachable the node keeps serving its own clients: a publish falls
//! back to this node's hub and says so (`cluster_wide: false`). A link task reconnects
//! with backoff and resubscribes; the redis-rs pub/sub connection never reconnects by
//! itself (see STACK-NOTES), so the loop here is the reconnect logic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytestring::ByteString;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;

use super::{Fanout, Published};
use crate::config::RedisSettings;
use crate::metrics::Metrics;
use crate::push::{Push, Target};
use crate::registry::RedisKeys;

const MAX_BACKOFF: Duration = Duration::from_secs(2);

struct Shared {
    keys: RedisKeys,
    channel: String,
    fanout: Fanout,
    metrics: Arc<Metrics>,
    /// Connection for PUBLISH; `None` while the link is down.
    publisher: Mutex<Option<MultiplexedConnection>>,
    /// True while this node's subscription is live.
    subscribed: AtomicBool,
}

/// Handle to the Redis bus.
#[derive(Clone)]
pub struct RedisBus {
    shared: Arc<Shared>,
}

impl RedisBus {
    /// Starts the link task (connect, subscribe, deliver, reconnect) and returns at
    /// once; until the first subscription, publishes are delivered locally.
    pub fn start(
        settings: &RedisSettings,
        node: &str,
        fanout: Fanout,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), String> {
        let client =
            redis::Client::open(settings.url.as_str()).map_err(|e| format!("redis.url: {e}"))?;
        let keys = RedisKeys::new(&settings.prefix, node);
        let shared = Arc::new(Shared {
            channel: keys.push_channel(),
            keys,
            fanout,
            metrics,
            publisher: Mutex::new(None),
            subscribed: AtomicBool::new(false),
        });
        let link = tokio::spawn(link(shared.clone(), client));
        Ok((Self { shared }, link))
    }

    /// This node's fan-out, which delivers what the subscription receives.
    pub fn fanout(&self) -> &Fanout {
        &self.shared.fanout
    }

    /// Whether pushes currently travel through Redis.
    pub fn is_up(&self) -> bool {
        self.shared.subscribed.load(Ordering::Relaxed)
    }

    pub async fn publish(&self, push: Push) -> Published {
        let shared = &self.shared;
        let connection = shared.publisher.lock().ok().and_then(|c| c.clone());
        if let (true, Some(mut conn)) = (self.is_up(), connection) {
            let envelope = encode(&push, unix_micros());
            let result: redis::RedisResult<(usize, usize)> = redis::pipe()
                .atomic()
                .add_command(shared.keys.count(&push.target))
                .publish(&shared.channel, envelope)
                .query_async(&mut conn)
                .await;
            match result {
                Ok((matched, _subscribers)) => {
                    return Published {
                        delivered: matched,
                        cluster_wide: true,
                    };
                }
                Err(e) => {
                    shared.metrics.redis_errors.inc();
                    log::warn!("redis publish failed, delivering on this node only: {e}");
                }
            }
        }
        Published {
            delivered: shared.fanout.push_counted(push).await,
            cluster_wide: false,
        }
    }
}

/// Connects, subscribes and delivers until the connection drops; then again, with
/// backoff, for as long as the server runs.
async fn link(shared: Arc<Shared>, client: redis::Client) {
    let mut backoff = Duration::from_millis(100);
    let mut reported_down = false;
    loop {
        match subscribe(&shared, &client).await {
            Ok(mut messages) => {
                backoff = Duration::from_millis(100);
                reported_down = false;
                shared.metrics.redis_reconnects.inc();
                log::info!("bus subscribed to {}", shared.channel);
                while let Some(message) = messages.next().await {
                    on_message(&shared, message.get_payload_bytes()).await;
                }
                shared.subscribed.store(false, Ordering::Relaxed);
                if let Ok(mut publisher) = shared.publisher.lock() {
                    *publisher = None;
                }
                shared.metrics.redis_errors.inc();
                log::warn!(
                    "bus lost its redis subscription; pushes stay on this node until it is back"
                );
            }
            Err(e) => {
                shared.metrics.redis_errors.inc();
                if !reported_down {
                    log::warn!("bus cannot reach redis: {e}");
                    reported_down = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn subscribe(
    shared: &Shared,
    client: &redis::Client,
) -> redis::RedisResult<redis::aio::PubSubStream> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)));
    let publisher = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&shared.channel).await?;
    if let Ok(mut slot) = shared.publisher.lock() {
        *slot = Some(publisher);
    }
    shared.subscribed.store(true, Ordering::Relaxed);
    Ok(pubsub.into_on_message())
}

async fn on_message(shared: &Shared, bytes: &[u8]) {
    match decode(bytes) {
        Some((push, sent_micros)) => {
            let elapsed = unix_micros().saturating_sub(sent_micros);
            shared.metrics.bus_latency.observe(elapsed as f64 / 1e6);
            shared.fanout.push(push).await;
        }
        None => {
            shared.metrics.rejected("bus_message");
            log::warn!("ignored a malformed message on {}", shared.channel);
        }
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Wire format on the channel: `{kind}{sent_micros}:{key_len}:{key}{payload}` with
/// kind `a` (all), `p` (page) or `u` (uid). Length-prefixed so that page and uid
/// names may contain any character, and the payload is carried without re-escaping.
fn encode(push: &Push, sent_micros: u64) -> String {
    let (kind, key) = match &push.target {
        Target::All => ('a', ""),
        Target::Page(page) => ('p', &**page),
        Target::Uid(uid) => ('u', &**uid),
    };
    let mut out = String::with_capacity(push.payload.len() + key.len() + 32);
    out.push(kind);
    out.push_str(&format!("{sent_micros}:{}:", key.len()));
    out.push_str(key);
    out.push_str(&push.payload);
    out
}

fn decode(bytes: &[u8]) -> Option<(Push, u64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (kind, rest) = text.split_at_checked(1)?;
    let (sent, rest) = rest.split_once(':')?;
    let (key_len, rest) = rest.split_once(':')?;
    let key_len: usize = key_len.parse().ok()?;
    let key = rest.get(..key_len)?;
    let payload = rest.get(key_len..)?;
    let target = match kind {
        "a" if key.is_empty() => Target::All,
        "p" if !key.is_empty() => Target::Page(key.into()),
        "u" if !key.is_empty() => Target::Uid(key.into()),
        _ => return None,
    };
    let push = Push::new(target, ByteString::from(payload.to_owned()));
    Some((push, sent.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_any_target_name() {
        for target in [
            Target::All,
            Target::Page("home".into()),
            Target::Uid("名前:with:colons\n".into()),
        ] {
            let push = Push::new(target.clone(), r#"{"code":200,"message":"hi"}"#);
            let (back, sent) = decode(encode(&push, 42).as_bytes()).unwrap();
            assert_eq!(back.target, target);
            assert_eq!(back.payload, push.payload);
            assert_eq!(sent, 42);
        }
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        for bad in [
            "",
            "x1:0:{}",
            "p1:9:home{}",
            "a1:x:{}",
            "p1:0:{}",
            "a1:2:ab{}",
        ] {
            assert!(decode(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }
}
