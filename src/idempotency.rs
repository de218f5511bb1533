//! Idempotent publish: a push sent with an idempotency key is published at most
//! once per key within `history.idempotency_secs`, cluster-wide; a repeat answers
//! the first reply's body (same status) plus `"duplicate":true` and the header
//! `Idempotent-Replayed: true` (Stripe's name), and pushes nothing.
//!
//! Where a key comes from ([`key_from`]): the `Idempotency-Key` header (any door),
//! `"idempotency_key"` in the `POST /api/push` body, or `&idempotency_key=` on a GET
//! trigger. A key is 1..=255 bytes of visible ASCII (RFC 5234 VCHAR, `!`..`~`); a
//! header value in the quoted form of the IETF draft "The Idempotency-Key HTTP
//! Header Field" (a structured-field string, `"abc"`) counts as its content. Only
//! the key's SHA-256 is kept: key text never appears in Redis key names or values.
//!
//! Rules (Contract v1 in DESIGN.md; Stripe's "Idempotent requests" otherwise):
//! - The key alone decides, whatever the body: a repeat with another body is a
//!   duplicate too (Stripe would refuse it with an error; DESIGN says the key
//!   decides). One namespace for every door: a key used on a GET trigger and
//!   then on `POST /api/push` is the same key.
//! - Only a request that published is remembered. A request refused before its
//!   push (400, 401, 404, 413) leaves no trace, so a corrected retry with the same
//!   key publishes. Publishing cannot fail after the push today (a push always
//!   answers 200), and an error from the wrapped work is never remembered.
//! - A repeat while the first is in flight waits for it, at most [`IN_FLIGHT_WAIT`],
//!   then answers 409 "in progress" (retry later: the first reply will be there).
//!   The first request's publish and the remembering of its reply run in their
//!   own task, so a client that hangs up cannot cancel between the two.
//! - Embedded mode: in memory, at most [`MEMORY_CAP`] replies (the oldest is
//!   forgotten first), each for the window.
//! - Redis mode: `SET {prefix}:idem:{sha256 hex} <pending marker> NX GET PX`
//!   claims the key for [`PENDING_TTL`]; the claimer publishes, then replaces its
//!   own marker (checked in a script) by the reply for the window. A repeat that
//!   finds the marker polls until the reply is there. A claim whose holder died
//!   (node crash, SIGKILL) expires after [`PENDING_TTL`] rather than the whole
//!   window: the holder's work is two Redis commands of at most 1 s each, so 10 s
//!   is a wide margin, and a retry after a crash publishes again within seconds
//!   instead of being refused for 5 minutes. The price: a node that died *after*
//!   publishing and *before* remembering leads to a second push on retry
//!   (at-least-once for that double fault, as for Stripe's own crashed requests).
//! - Redis unreachable: **503** and nothing is pushed (fail closed). A client
//!   that sends a key asked for at-most-once; pushing without the store could
//!   double a push the first attempt already made, and a 503 tells the client to
//!   retry with the same key, which works once Redis is back. Requests without
//!   a key keep today's behaviour (pushed on this node, `cluster_wide:false`).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderMap, HeaderName};
use actix_web::{HttpResponse, ResponseError as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::ingress::throttle::WarnThrottle;
use crate::metrics::Metrics;
use crate::redis::{Link, RedisKeys};

/// The request header carrying a key (matched in any case, as HTTP headers are).
pub const HEADER: &str = "idempotency-key";
/// The body field (`POST /api/push`) and query parameter (GET triggers).
pub const FIELD: &str = "idempotency_key";
/// The header a duplicate answer carries (Stripe's name).
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Longest key, in bytes (Stripe's limit).
pub const MAX_KEY_BYTES: usize = 255;
/// How long a repeat waits for the first request with its key to finish.
pub const IN_FLIGHT_WAIT: Duration = Duration::from_secs(10);
/// How long a Redis claim lives when its holder never finishes (see the module doc).
pub const PENDING_TTL: Duration = Duration::from_secs(10);
/// Most replies remembered in embedded mode; the oldest is forgotten first.
pub const MEMORY_CAP: usize = 100_000;
/// First and longest pause between two reads of a pending Redis claim.
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(100);

/// The log budget of the store's warnings (Redis failures, unreadable records).
static WARNINGS: LazyLock<WarnThrottle> = LazyLock::new(|| WarnThrottle::new(module_path!()));

/// A validated idempotency key, kept as the SHA-256 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdempotencyKey([u8; 32]);

impl std::fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdempotencyKey({})", self.hex())
    }
}

/// Why a key was refused; the text completes "idempotency key ...".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is empty")]
    Empty,
    #[error("is {0} bytes, over the {MAX_KEY_BYTES} allowed")]
    TooLong(usize),
    #[error("may hold visible ASCII only (! to ~), found byte 0x{0:02x}")]
    Invisible(u8),
    #[error("must be a JSON string")]
    NotAString,
    #[error("is a malformed quoted string")]
    BadQuotes,
    #[error("was given twice with different values (header, body field, query)")]
    Conflicting,
}

impl IdempotencyKey {
    /// A key from its text: 1..=[`MAX_KEY_BYTES`] bytes, each `!`..=`~`.
    pub fn parse(text: &[u8]) -> Result<Self, KeyError> {
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        if text.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong(text.len()));
        }
        if let Some(&bad) = text.iter().find(|b| !(b'!'..=b'~').contains(*b)) {
            return Err(KeyError::Invisible(bad));
        }
        Ok(Self(Sha256::digest(text).into()))
    }

    /// A key from a header value: a plain key, or a structured-field string
    /// (RFC 8941 §3.3.3: `"..."` with `\"` and `\\` escapes) holding one.
    pub fn from_header(value: &[u8]) -> Result<Self, KeyError> {
        let Some(quoted) = value.strip_prefix(b"\"") else {
            return Self::parse(value);
        };
        let inner = quoted.strip_suffix(b"\"").ok_or(KeyError::BadQuotes)?;
        let mut text = Vec::with_capacity(inner.len());
        let mut bytes = inner.iter();
        while let Some(&b) = bytes.next() {
            match b {
                b'\\' => match bytes.next() {
                    Some(&e @ (b'"' | b'\\')) => text.push(e),
                    _ => return Err(KeyError::BadQuotes),
                },
                b'"' => return Err(KeyError::BadQuotes),
                _ => text.push(b),
            }
        }
        Self::parse(&text)
    }

    /// A key from the body field: a JSON string (escapes decoded) holding one.
    pub fn from_json(raw: &RawValue) -> Result<Self, KeyError> {
        match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::String(text)) => Self::parse(text.as_bytes()),
            _ => Err(KeyError::NotAString),
        }
    }

    /// The SHA-256 in lower-case hex (64 characters).
    pub fn hex(&self) -> String {
        use std::fmt::Write as _;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

/// The key of a request, from the header, the body field or the query parameter
/// (`None` when none is given). The same key may be given more than once; two
/// different ones, or two `Idempotency-Key` headers, are refused. The error is a
/// 400 naming the key's source.
pub fn key_from(
    headers: &HeaderMap,
    body: Option<&RawValue>,
    query: Option<&str>,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let refused = |source: &str, e: KeyError| {
        ApiError::bad_request(format!("{source} {e}"))
            .with("expected", "1 to 255 visible ASCII characters (! to ~)")
    };
    let mut values = headers.get_all(HeaderName::from_static(HEADER));
    let header = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(value), None) => Some(
            IdempotencyKey::from_header(value.as_bytes())
                .map_err(|e| refused("Idempotency-Key header", e))?,
        ),
        (Some(_), Some(_)) => {
            return Err(refused("Idempotency-Key header", KeyError::Conflicting));
        }
    };
    let body = body
        .map(IdempotencyKey::from_json)
        .transpose()
        .map_err(|e| refused("\"idempotency_key\"", e))?;
    let query = query
        .map(|q| IdempotencyKey::parse(q.as_bytes()))
        .transpose()
        .map_err(|e| refused("?idempotency_key=", e))?;
    let mut keys = [header, body, query].into_iter().flatten();
    let first = keys.next();
    if keys.any(|k| Some(k) != first) {
        return Err(refused("idempotency key", KeyError::Conflicting));
    }
    Ok(first)
}

/// A reply worth remembering: a success status and its JSON body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// A 200 with `body`.
    pub fn ok(body: Value) -> Self {
        Self { status: 200, body }
    }

    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK)
    }

    fn response(self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(self.body)
    }

    /// The answer to a repeat: the same status and body, plus `"duplicate":true`.
    fn duplicate(self) -> HttpResponse {
        let status = self.status_code();
        let mut body = self.body;
        if let Value::Object(fields) = &mut body {
            fields.insert("duplicate".into(), Value::Bool(true));
        }
        HttpResponse::build(status)
            .insert_header((REPLAYED_HEADER, "true"))
            .json(body)
    }
}

/// Remembers the replies of keyed pushes; cheap to clone.
#[derive(Clone)]
pub struct Idempotency {
    store: Store,
    metrics: Arc<Metrics>,
}

#[derive(Clone)]
enum Store {
    Memory(Arc<Memory>),
    Redis(Arc<RedisStore>),
}

/// What looking a key up found.
enum Begin {
    /// Nobody had it: this request publishes and must [`Idempotency::finish`].
    Claimed(Claim),
    /// A finished request's reply.
    Done(Reply),
    /// Another request holds it now.
    Pending(Pending),
}

enum Claim {
    Memory(IdempotencyKey, watch::Sender<Option<Reply>>),
    Redis(String, String),
}

enum Pending {
    Memory(watch::Receiver<Option<Reply>>),
    Redis(String),
}

impl Idempotency {
    /// The in-memory store of embedded mode, remembering replies for `window`.
    pub fn memory(window: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            store: Store::Memory(Arc::new(Memory::new(window, MEMORY_CAP))),
            metrics,
        }
    }

    /// The cluster-wide store of redis mode, through the node's command link.
    pub fn redis(link: Link, keys: RedisKeys, window: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            store: Store::Redis(Arc::new(RedisStore { link, keys, window })),
            metrics,
        }
    }

    /// Runs `first` (the publish and the reply it makes) unless `key` was seen
    /// within the window; see the module doc for every outcome. Without a key,
    /// runs `first` as it is. Errors: 409 when the first request with the key
    /// is still in flight after [`IN_FLIGHT_WAIT`]; 503 when Redis cannot be
    /// asked (nothing was pushed); 500 when a stored record is unreadable.
    pub async fn once<F>(
        &self,
        key: Option<IdempotencyKey>,
        first: F,
    ) -> Result<HttpResponse, ApiError>
    where
        F: Future<Output = Result<Reply, ApiError>> + 'static,
    {
        let Some(key) = key else {
            return first.await.map(Reply::response);
        };
        let deadline = Instant::now() + IN_FLIGHT_WAIT;
        let mut first = Some(first);
        loop {
            let pending = match self.begin(key).await.inspect_err(|e| self.count(e))? {
                Begin::Claimed(claim) => {
                    let Some(first) = first.take() else {
                        return Err(internal("idempotency: the work ran already"));
                    };
                    return self.run(claim, first).await.map(Reply::response);
                }
                Begin::Done(reply) => return Ok(self.duplicate(reply)),
                Begin::Pending(pending) => pending,
            };
            match self
                .wait(pending, deadline)
                .await
                .inspect_err(|e| self.count(e))?
            {
                Some(reply) => return Ok(self.duplicate(reply)),
                // Released (the first request failed before publishing, or its
                // claim expired): claim it again, if time is left.
                None if Instant::now() < deadline => {}
                None => return Err(self.in_progress()),
            }
        }
    }

    fn duplicate(&self, reply: Reply) -> HttpResponse {
        self.metrics.idempotent_duplicates.inc();
        reply.duplicate()
    }

    fn in_progress(&self) -> ApiError {
        self.metrics.rejected("idempotency_in_progress");
        ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "a request with this idempotency key is still in progress after {} s; \
                 retry later with the same key",
                IN_FLIGHT_WAIT.as_secs()
            ),
        )
    }

    /// Publishes and remembers in a task of its own: a client hanging up drops
    /// the handler, and must not drop the work between the push and the record.
    async fn run<F>(&self, claim: Claim, first: F) -> Result<Reply, ApiError>
    where
        F: Future<Output = Result<Reply, ApiError>> + 'static,
    {
        let store = self.store.clone();
        let task = actix_web::rt::spawn(async move {
            let outcome = first.await;
            store.finish(claim, outcome.as_ref().ok()).await;
            outcome
        });
        task.await
            .unwrap_or_else(|_| Err(internal("the publish task stopped")))
    }

    async fn begin(&self, key: IdempotencyKey) -> Result<Begin, ApiError> {
        match &self.store {
            Store::Memory(memory) => Ok(memory.begin(key)),
            Store::Redis(redis) => redis.begin(key).await,
        }
    }

    /// Counts a failure of the store by its status (503: Redis unavailable,
    /// 500: a record scenecast did not write).
    fn count(&self, error: &ApiError) {
        match error.status_code() {
            StatusCode::SERVICE_UNAVAILABLE => self.metrics.rejected("idempotency_unavailable"),
            StatusCode::INTERNAL_SERVER_ERROR => self.metrics.rejected("idempotency_unreadable"),
            _ => {}
        }
    }

    /// Waits until `pending` finishes (`Some(reply)`), is released (`None`), or
    /// `deadline` passes (`None`).
    async fn wait(&self, pending: Pending, deadline: Instant) -> Result<Option<Reply>, ApiError> {
        match (pending, &self.store) {
            (Pending::Memory(mut rx), _) => {
                let done = tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await;
                Ok(match done {
                    Ok(Ok(reply)) => reply.clone(),
                    // The sender went away without a reply (released), or time is up.
                    Ok(Err(_)) | Err(_) => None,
                })
            }
            (Pending::Redis(name), Store::Redis(redis)) => redis.wait(&name, deadline).await,
            (Pending::Redis(_), Store::Memory(_)) => Ok(None),
        }
    }
}

impl Store {
    /// Remembers `reply` for the window, or releases the claim when there is none.
    async fn finish(&self, claim: Claim, reply: Option<&Reply>) {
        match (self, claim) {
            (Store::Memory(memory), Claim::Memory(key, tx)) => memory.finish(key, tx, reply),
            (Store::Redis(redis), Claim::Redis(name, marker)) => {
                redis.finish(&name, &marker, reply).await;
            }
            _ => {}
        }
    }
}

fn internal(message: &str) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
}

// ---- Embedded mode -----------------------------------------------------------------

/// Replies by key, in memory: at most `cap` finished ones, each for `window`.
struct Memory {
    window: Duration,
    cap: usize,
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    slots: HashMap<IdempotencyKey, Slot>,
    /// Finished keys, oldest first: all live for the same window, so this is
    /// also their expiry order.
    order: VecDeque<(IdempotencyKey, Instant)>,
}

enum Slot {
    /// In flight; the sender is the claimer's, dropped without a reply on release.
    Pending(watch::Receiver<Option<Reply>>),
    Done {
        reply: Reply,
        expires: Instant,
    },
}

impl Memory {
    fn new(window: Duration, cap: usize) -> Self {
        Self {
            window,
            cap,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn begin(&self, key: IdempotencyKey) -> Begin {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire(now);
        match inner.slots.get(&key) {
            Some(Slot::Done { reply, expires }) if *expires > now => {
                return Begin::Done(reply.clone());
            }
            // A claimer whose task ended without finishing (it panicked) left a
            // closed channel: the key is free again.
            Some(Slot::Pending(rx)) if rx.has_changed().is_ok() => {
                return Begin::Pending(Pending::Memory(rx.clone()));
            }
            _ => {}
        }
        let (tx, rx) = watch::channel(None);
        inner.slots.insert(key, Slot::Pending(rx));
        Begin::Claimed(Claim::Memory(key, tx))
    }

    fn finish(&self, key: IdempotencyKey, tx: watch::Sender<Option<Reply>>, reply: Option<&Reply>) {
        let now = Instant::now();
        let mut inner = self.lock();
        let ours = matches!(inner.slots.get(&key), Some(Slot::Pending(rx)) if rx.same_channel(&tx.subscribe()));
        if !ours {
            return;
        }
        match reply {
            None => {
                inner.slots.remove(&key);
            }
            Some(reply) => {
                let expires = now + self.window;
                let done = Slot::Done {
                    reply: reply.clone(),
                    expires,
                };
                inner.slots.insert(key, done);
                inner.order.push_back((key, expires));
                while inner.order.len() > self.cap {
                    inner.forget_oldest();
                }
                // Waiters see the reply; a dropped sender without one tells them
                // the key was released.
                tx.send_replace(Some(reply.clone()));
            }
        }
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.lock().order.len()
    }
}

impl MemoryInner {
    fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(_, expires)| *expires <= now)
        {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((key, expires)) = self.order.pop_front()
            && matches!(self.slots.get(&key), Some(Slot::Done { expires: e, .. }) if *e == expires)
        {
            self.slots.remove(&key);
        }
    }
}

// ---- Redis mode ----------------------------------------------------------------------

/// Replaces the claimer's own pending marker (`ARGV[1]`) by the reply (`ARGV[2]`)
/// for `ARGV[3]` ms; 0 when the marker is gone (expired, or claimed by another).
const STORE_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 else return 0 end";
/// Deletes the key if it still holds the claimer's own marker.
const RELEASE_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('DEL', KEYS[1]) else return 0 end";

/// A pending marker starts with this; a finished record with [`DONE`].
const PENDING: &str = "pending:";
const DONE: &str = "done:";

struct RedisStore {
    link: Link,
    keys: RedisKeys,
    window: Duration,
}

/// What a key's value in Redis says.
#[derive(Debug, PartialEq)]
enum Record {
    Pending,
    Done(Reply),
}

/// Reads a value found in Redis (untrusted: never panics; `None` when it is
/// neither a pending marker nor a finished record with a 2xx status).
fn parse_record(value: &[u8]) -> Option<Record> {
    if value.starts_with(PENDING.as_bytes()) {
        return Some(Record::Pending);
    }
    let json = value.strip_prefix(DONE.as_bytes())?;
    let reply: Reply = serde_json::from_slice(json).ok()?;
    (200..300)
        .contains(&reply.status)
        .then_some(Record::Done(reply))
}

impl RedisStore {
    fn unavailable(&self, e: &redis::RedisError) -> ApiError {
        WARNINGS.warn(format_args!(
            "idempotency: redis did not answer ({e}); keyed pushes answer 503"
        ));
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the idempotency store (Redis) is unavailable: nothing was pushed; \
             retry with the same idempotency key",
        )
    }

    fn unreadable(&self, name: &str) -> ApiError {
        WARNINGS.warn(format_args!(
            "idempotency: {name} holds a value scenecast did not write"
        ));
        internal("the idempotency record of this key is unreadable")
    }

    async fn begin(&self, key: IdempotencyKey) -> Result<Begin, ApiError> {
        let name = self.keys.idempotency(&key.hex());
        let marker = format!("{PENDING}{:016x}", crate::redis::instance_token());
        let claim = redis::cmd("SET")
            .arg(&name)
            .arg(&marker)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(millis(PENDING_TTL))
            .clone();
        let previous: Option<Vec<u8>> = self
            .link
            .query(&claim)
            .await
            .map_err(|e| self.unavailable(&e))?;
        let Some(previous) = previous else {
            return Ok(Begin::Claimed(Claim::Redis(name, marker)));
        };
        match parse_record(&previous) {
            Some(Record::Done(reply)) => Ok(Begin::Done(reply)),
            Some(Record::Pending) => Ok(Begin::Pending(Pending::Redis(name))),
            None => Err(self.unreadable(&name)),
        }
    }

    /// Polls `name` until its reply is there (`Some`), it is gone (`None`:
    /// released or expired), or `deadline` passes (`None`).
    async fn wait(&self, name: &str, deadline: Instant) -> Result<Option<Reply>, ApiError> {
        let mut pause = POLL_FIRST;
        loop {
            if Instant::now() + pause >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
            let value: Option<Vec<u8>> = self
                .link
                .query(redis::cmd("GET").arg(name))
                .await
                .map_err(|e| self.unavailable(&e))?;
            match value.as_deref().map(parse_record) {
                None => return Ok(None),
                Some(Some(Record::Pending)) => {}
                Some(Some(Record::Done(reply))) => return Ok(Some(reply)),
                Some(None) => return Err(self.unreadable(name)),
            }
        }
    }

    async fn finish(&self, name: &str, marker: &str, reply: Option<&Reply>) {
        let command = match reply {
            Some(reply) => {
                let Ok(json) = serde_json::to_string(reply) else {
                    return;
                };
                redis::cmd("EVAL")
                    .arg(STORE_SCRIPT)
                    .arg(1)
                    .arg(name)
                    .arg(marker)
                    .arg(format!("{DONE}{json}"))
                    .arg(millis(self.window))
                    .clone()
            }
            None => redis::cmd("EVAL")
                .arg(RELEASE_SCRIPT)
                .arg(1)
                .arg(name)
                .arg(marker)
                .clone(),
        };
        match self.link.query::<i64>(&command).await {
            Ok(1) => {}
            Ok(_) if reply.is_some() => WARNINGS.warn(format_args!(
                "idempotency: a claim expired before its push was remembered \
                 (over {} s); a retry may push again",
                PENDING_TTL.as_secs()
            )),
            Ok(_) => {}
            // The claim expires by itself after PENDING_TTL.
            Err(e) => WARNINGS.warn(format_args!(
                "idempotency: remembering a pushed key failed ({e}); a retry after {} s \
                 may push again",
                PENDING_TTL.as_secs()
            )),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(text: &str) -> IdempotencyKey {
        IdempotencyKey::parse(text.as_bytes()).unwrap()
    }

    fn claim(memory: &Memory, k: IdempotencyKey) -> watch::Sender<Option<Reply>> {
        match memory.begin(k) {
            Begin::Claimed(Claim::Memory(_, tx)) => tx,
            _ => panic!("expected a claim"),
        }
    }

    fn done(memory: &Memory, k: IdempotencyKey) -> Option<Reply> {
        match memory.begin(k) {
            Begin::Done(reply) => Some(reply),
            _ => None,
        }
    }

    #[test]
    fn keys_are_visible_ascii_of_1_to_255_bytes() {
        assert!(IdempotencyKey::parse(b"a").is_ok());
        assert!(IdempotencyKey::parse("!~".repeat(127).as_bytes()).is_ok());
        assert!(IdempotencyKey::parse(&[b'k'; 255]).is_ok());
        assert_eq!(
            IdempotencyKey::parse(&[b'k'; 256]),
            Err(KeyError::TooLong(256))
        );
        assert_eq!(IdempotencyKey::parse(b""), Err(KeyError::Empty));
        assert_eq!(
            IdempotencyKey::parse(b"a b"),
            Err(KeyError::Invisible(b' '))
        );
        assert_eq!(
            IdempotencyKey::parse("clé".as_bytes()),
            Err(KeyError::Invisible(0xc3))
        );
        assert_eq!(IdempotencyKey::parse(b"a\tb"), Err(KeyError::Invisible(9)));
    }

    #[test]
    fn a_quoted_header_is_its_content_and_the_hash_hides_the_text() {
        assert_eq!(IdempotencyKey::from_header(b"\"abc\""), Ok(key("abc")));
        assert_eq!(
            IdempotencyKey::from_header(br#""a\"b\\c""#),
            Ok(key(r#"a"b\c"#))
        );
        assert_eq!(IdempotencyKey::from_header(b"abc"), Ok(key("abc")));
        assert_eq!(
            IdempotencyKey::from_header(b"\"abc"),
            Err(KeyError::BadQuotes)
        );
        assert_eq!(
            IdempotencyKey::from_header(br#""a\x""#),
            Err(KeyError::BadQuotes)
        );
        assert_eq!(IdempotencyKey::from_header(b"\"\""), Err(KeyError::Empty));
        let hex = key("order-42").hex();
        assert_eq!(hex.len(), 64);
        assert!(!hex.contains("order"));
        assert_ne!(key("a"), key("b"));
    }

    #[test]
    fn the_body_field_must_be_a_json_string() {
        let raw = |s: &str| serde_json::from_str::<Box<RawValue>>(s).unwrap();
        assert_eq!(
            IdempotencyKey::from_json(&raw(r#""k\u0031""#)),
            Ok(key("k1"))
        );
        assert_eq!(
            IdempotencyKey::from_json(&raw("12")),
            Err(KeyError::NotAString)
        );
        assert_eq!(
            IdempotencyKey::from_json(&raw("null")),
            Err(KeyError::NotAString)
        );
    }

    #[test]
    fn header_body_and_query_must_agree() {
        let raw = serde_json::from_str::<Box<RawValue>>(r#""k""#).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static(HEADER),
            actix_web::http::header::HeaderValue::from_static("k"),
        );
        assert_eq!(
            key_from(&headers, Some(&raw), Some("k")).unwrap(),
            Some(key("k"))
        );
        assert!(key_from(&headers, None, Some("other")).is_err());
        assert_eq!(key_from(&HeaderMap::new(), None, None).unwrap(), None);
        headers.append(
            HeaderName::from_static(HEADER),
            actix_web::http::header::HeaderValue::from_static("k"),
        );
        assert!(key_from(&headers, None, None).is_err());
    }

    #[tokio::test]
    async fn memory_remembers_for_the_window_then_forgets() {
        let memory = Memory::new(Duration::from_millis(50), 10);
        let k = key("k");
        let tx = claim(&memory, k);
        memory.finish(k, tx, Some(&Reply::ok(serde_json::json!({"n": 1}))));
        assert_eq!(
            done(&memory, k),
            Some(Reply::ok(serde_json::json!({"n": 1})))
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(matches!(memory.begin(k), Begin::Claimed(_)));
        assert_eq!(memory.remembered(), 0);
    }

    #[tokio::test]
    async fn memory_forgets_the_oldest_over_its_cap() {
        let memory = Memory::new(Duration::from_secs(60), 3);
        for n in 0..5 {
            let k = key(&format!("k{n}"));
            let tx = claim(&memory, k);
            memory.finish(k, tx, Some(&Reply::ok(Value::from(n))));
        }
        assert_eq!(memory.remembered(), 3);
        assert!(matches!(memory.begin(key("k0")), Begin::Claimed(_)));
        assert!(matches!(memory.begin(key("k1")), Begin::Claimed(_)));
        for n in 2..5 {
            assert_eq!(
                done(&memory, key(&format!("k{n}"))),
                Some(Reply::ok(Value::from(n)))
            );
        }
    }

    #[tokio::test]
    async fn waiters_get_the_reply_or_learn_of_a_release() {
        let memory = Memory::new(Duration::from_secs(60), 10);
        let k = key("k");
        let tx = claim(&memory, k);
        let Begin::Pending(Pending::Memory(mut rx)) = memory.begin(k) else {
            panic!("a second begin waits");
        };
        let waiter =
            tokio::spawn(async move { rx.wait_for(Option::is_some).await.map(|r| r.clone()) });
        memory.finish(k, tx, Some(&Reply::ok(Value::from(7))));
        assert_eq!(
            waiter.await.unwrap().unwrap(),
            Some(Reply::ok(Value::from(7)))
        );

        // A failed first request releases the key: waiters see the channel close,
        // and the next begin claims.
        let k = key("released");
        let tx = claim(&memory, k);
        let Begin::Pending(Pending::Memory(mut rx)) = memory.begin(k) else {
            panic!("a second begin waits");
        };
        memory.finish(k, tx, None);
        assert!(rx.wait_for(Option::is_some).await.is_err());
        assert!(matches!(memory.begin(k), Begin::Claimed(_)));
        // Only the first key's reply is remembered.
        assert_eq!(memory.remembered(), 1);
    }

    #[tokio::test]
    async fn a_claimer_that_vanished_frees_its_key() {
        let memory = Memory::new(Duration::from_secs(60), 10);
        let k = key("k");
        drop(claim(&memory, k));
        assert!(matches!(memory.begin(k), Begin::Claimed(_)));
    }

    #[test]
    fn records_from_redis_are_read_without_trust() {
        assert_eq!(parse_record(b"pending:00ff"), Some(Record::Pending));
        assert_eq!(
            parse_record(br#"done:{"status":200,"body":{"a":1}}"#),
            Some(Record::Done(Reply::ok(serde_json::json!({"a": 1}))))
        );
        assert_eq!(parse_record(br#"done:{"status":500,"body":{}}"#), None);
        assert_eq!(parse_record(b"done:{"), None);
        assert_eq!(parse_record(b""), None);
        assert_eq!(parse_record(b"\xff\xfe"), None);
    }

    proptest! {
        #[test]
        fn key_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let plain = IdempotencyKey::parse(&bytes);
            let _ = IdempotencyKey::from_header(&bytes);
            let ok = !bytes.is_empty()
                && bytes.len() <= MAX_KEY_BYTES
                && bytes.iter().all(|b| (b'!'..=b'~').contains(b));
            prop_assert_eq!(plain.is_ok(), ok);
            if let Ok(text) = std::str::from_utf8(&bytes)
                && let Ok(raw) = serde_json::value::to_raw_value(text)
            {
                prop_assert_eq!(IdempotencyKey::from_json(&raw).is_ok(), ok);
            }
            let _ = parse_record(&bytes);
        }

        #[test]
        fn quoted_keys_round_trip(text in "[!-~]{1,200}") {
            let quoted = format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""));
            prop_assert_eq!(IdempotencyKey::from_header(quoted.as_bytes()), Ok(key(&text)));
        }
    }
}
