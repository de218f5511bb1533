//! The Pusher HTTP API, as the server SDKs call it (PUSHER-NOTES §3.6; Pusher's
//! "HTTP API reference"): Laravel's `pusher`/`reverb` broadcasters and the Node,
//! PHP and Python SDKs publish through it.
//!
//! | Route | Reply (200, JSON) |
//! |---|---|
//! | `POST /apps/{id}/events` | `{}`, or `{"channels":{name:{user_count?,subscription_count?}}}` with `info` |
//! | `POST /apps/{id}/batch_events` | `{}`, or `{"batch":[{…},…]}` when an event asks for `info` |
//! | `GET /apps/{id}/channels` | `{"channels":{name:{user_count?}}}` (occupied channels) |
//! | `GET /apps/{id}/channels/{channel}` | `{"occupied",user_count?,subscription_count?}` |
//! | `GET /apps/{id}/channels/{channel}/users` | `{"users":[{"id"},…]}` (presence channels) |
//! | `POST /apps/{id}/users/{uid}/terminate_connections` | `{}` |
//!
//! `POST /users/{uid}/terminate_connections` (no `/apps/{id}`) is served too: the
//! Python SDK 3.3 sends that path; the app is then the one whose key is `auth_key`.
//!
//! Every request is signed ([`sign::check_api_request`]: `auth_key`,
//! `auth_timestamp` within 600 s, `auth_version=1.0`, `body_md5`, `auth_signature`
//! compared in constant time). Refusals are JSON `{"error": "<why>", "code": <status>}`
//! (soketi's shape; the SDKs show the body): 400 malformed, 401 signature, 403 app
//! disabled, 404 unknown app, 413 body or data over the limit. Each is counted in
//! `scenecast_rejected_total{reason="pusher_api_*"}` and logged through one throttle.
//! The PHP SDK accepts only a 200 with a JSON body: success is always `200 {}` or more.

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use futures_util::StreamExt as _;
use serde_json::{Map, Value, json};

use bytestring::ByteString;

use crate::app::AppState;
use crate::ingress::throttle::WarnThrottle;
use crate::push::{Ingress, Name};
use crate::pusher::Publisher;
use crate::pusher::apps::PusherApp;
use crate::pusher::channel::{Channel, ChannelKind};
use crate::pusher::sign::{self, ApiParams, ApiRequest};
use crate::pusher::state::ChannelState;
use crate::pusher::trigger::{self, Event, Info, Limits};

/// The log budget of refused API requests.
static REFUSALS: LazyLock<WarnThrottle> = LazyLock::new(|| WarnThrottle::new(module_path!()));

/// Bytes of a bodyless request (GETs; a POST with `{}`) we read at most.
const SMALL_BODY_BYTES: usize = 4096;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/apps/{app_id}/events", web::post().to(events))
        .route("/apps/{app_id}/batch_events", web::post().to(batch_events))
        .route("/apps/{app_id}/channels", web::get().to(channels))
        .route("/apps/{app_id}/channels/{channel}", web::get().to(channel))
        .route(
            "/apps/{app_id}/channels/{channel}/users",
            web::get().to(users),
        )
        .route(
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            web::post().to(terminate),
        )
        .route(
            "/users/{user_id}/terminate_connections",
            web::post().to(terminate_python),
        );
}

/// A refused API request: `{"error": "...", "code": status}`.
#[derive(Debug)]
pub struct PusherApiError {
    status: StatusCode,
    message: String,
}

impl PusherApiError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for PusherApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl ResponseError for PusherApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        REFUSALS.log(
            log::Level::Info,
            format_args!("Pusher API request refused: {self}"),
        );
        HttpResponse::build(self.status)
            .json(json!({"error": self.message, "code": self.status.as_u16()}))
    }
}

type Reply = Result<HttpResponse, PusherApiError>;

/// Counts a refusal under `scenecast_rejected_total{reason}` and makes its reply.
fn refuse(
    state: &AppState,
    reason: &'static str,
    status: u16,
    message: impl Into<String>,
) -> PusherApiError {
    state.metrics.rejected(reason);
    PusherApiError::new(status, message)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A request that passed the checks: its app, the non-auth query parameters and
/// the body.
struct Signed<'s> {
    app: &'s PusherApp,
    params: ApiParams,
    body: web::BytesMut,
}

/// The app of `/apps/{app_id}` (404 unknown), the body up to `limit` bytes (413),
/// the signature (400/401), the app enabled (403).
async fn signed<'s>(
    req: &HttpRequest,
    payload: web::Payload,
    state: &'s AppState,
    app: Option<&'s PusherApp>,
    limit: usize,
) -> Result<Signed<'s>, PusherApiError> {
    let Some(app) = app else {
        return Err(refuse(
            state,
            "pusher_api_app",
            404,
            "unknown app: no [[pusher.apps]] entry has this id",
        ));
    };
    let body = read_body(payload, limit)
        .await
        .map_err(|(status, message)| refuse(state, "pusher_api_body", status, message))?;
    let request = ApiRequest {
        method: req.method().as_str(),
        path: req.path(),
        query: req.query_string(),
        body: &body,
    };
    let params = sign::check_api_request(&app.key, &app.secret, request, now_secs())
        .map_err(|e| refuse(state, "pusher_api_signature", e.status(), e.to_string()))?;
    if !app.enabled {
        return Err(refuse(
            state,
            "pusher_api_disabled",
            403,
            "this app is disabled (enabled = false)",
        ));
    }
    Ok(Signed { app, params, body })
}

/// The app named by the path's `{app_id}`.
fn app_by_id<'s>(state: &'s AppState, req: &HttpRequest) -> Option<&'s PusherApp> {
    let id = req.match_info().get("app_id")?;
    state.settings.pusher.apps.iter().find(|a| a.id == id)
}

/// Reads the body, up to `limit` bytes (else 413 without reading the rest).
async fn read_body(
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, (u16, String)> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| (400, format!("reading the body: {e}")))?;
        if body.len().saturating_add(chunk.len()) > limit {
            return Err((
                413,
                format!("request body is over {limit} bytes (see server.max_message_bytes)"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn limits(state: &AppState, app: &PusherApp) -> Limits {
    Limits {
        max_channels: app.max_channels_per_event,
        max_data_bytes: state.settings.server.max_message_bytes,
        max_batch: app.max_batch,
    }
}

fn ok(body: Value) -> Reply {
    Ok(HttpResponse::Ok().json(body))
}

/// `POST /apps/{id}/events`.
async fn events(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Reply {
    let app = app_by_id(&state, &req);
    let limit = app.map_or(0, |a| limits(&state, a).event_body_bytes());
    let signed = signed(&req, payload, &state, app, limit).await?;
    let event = trigger::parse_event(&signed.body, &limits(&state, signed.app))
        .map_err(|e| refuse(&state, "pusher_api_request", e.status(), e.to_string()))?;
    publish(&state, signed.app, &event).await;
    if !event.info.any() {
        return ok(json!({}));
    }
    let mut channels = Map::new();
    for channel in &event.channels {
        channels.insert(
            channel.as_str().to_owned(),
            channel_info(&state, signed.app, channel, event.info).await,
        );
    }
    ok(json!({ "channels": channels }))
}

/// `POST /apps/{id}/batch_events`.
async fn batch_events(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Reply {
    let app = app_by_id(&state, &req);
    let limit = app.map_or(0, |a| limits(&state, a).batch_body_bytes());
    let signed = signed(&req, payload, &state, app, limit).await?;
    let events = trigger::parse_batch(&signed.body, &limits(&state, signed.app))
        .map_err(|e| refuse(&state, "pusher_api_request", e.status(), e.to_string()))?;
    for event in &events {
        publish(&state, signed.app, event).await;
    }
    if !events.iter().any(|e| e.info.any()) {
        return ok(json!({}));
    }
    let mut batch = Vec::with_capacity(events.len());
    for event in &events {
        let info = match event.channels.first() {
            Some(channel) if event.info.any() => {
                channel_info(&state, signed.app, channel, event.info).await
            }
            _ => json!({}),
        };
        batch.push(info);
    }
    ok(json!({ "batch": batch }))
}

/// `GET /apps/{id}/channels[?filter_by_prefix=…&info=user_count]`: the occupied
/// channels. `user_count` needs `filter_by_prefix` to start with `presence-`
/// (Pusher's rule: only presence channels count users).
async fn channels(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Reply {
    let app = app_by_id(&state, &req);
    let signed = signed(&req, payload, &state, app, SMALL_BODY_BYTES).await?;
    let info = Info::parse(signed.params.get("info"))
        .map_err(|e| refuse(&state, "pusher_api_request", 400, e.to_string()))?;
    let prefix = signed.params.get("filter_by_prefix").unwrap_or("");
    if info.user_count && !prefix.starts_with("presence-") {
        return Err(refuse(
            &state,
            "pusher_api_request",
            400,
            "info=user_count is only for presence channels: add filter_by_prefix=presence-",
        ));
    }
    let mut channels = Map::new();
    for (name, counts) in list_channels(&state, signed.app, prefix).await {
        let mut fields = Map::new();
        if info.user_count {
            fields.insert("user_count".into(), counts.user_count.into());
        }
        if info.subscription_count {
            fields.insert(
                "subscription_count".into(),
                counts.subscription_count.into(),
            );
        }
        channels.insert(name, Value::Object(fields));
    }
    ok(json!({ "channels": channels }))
}

/// The path's `{channel}`, checked (400).
fn path_channel(state: &AppState, req: &HttpRequest) -> Result<Channel, PusherApiError> {
    let raw = req.match_info().get("channel").unwrap_or("");
    Channel::parse(raw).map_err(|e| refuse(state, "pusher_api_request", 400, e.to_string()))
}

/// `GET /apps/{id}/channels/{channel}[?info=user_count,subscription_count]`.
async fn channel(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Reply {
    let app = app_by_id(&state, &req);
    let signed = signed(&req, payload, &state, app, SMALL_BODY_BYTES).await?;
    let channel = path_channel(&state, &req)?;
    let info = Info::parse(signed.params.get("info"))
        .map_err(|e| refuse(&state, "pusher_api_request", 400, e.to_string()))?;
    if info.user_count && !channel.kind().is_presence() {
        return Err(refuse(
            &state,
            "pusher_api_request",
            400,
            "info=user_count is only for presence channels",
        ));
    }
    let counts = channel_counts(&state, signed.app, &channel).await;
    let mut reply = json!({ "occupied": counts.subscription_count > 0 });
    if let Some(fields) = reply.as_object_mut() {
        if info.user_count {
            fields.insert("user_count".into(), counts.user_count.into());
        }
        if info.subscription_count {
            fields.insert(
                "subscription_count".into(),
                counts.subscription_count.into(),
            );
        }
    }
    ok(reply)
}

/// `GET /apps/{id}/channels/{channel}/users`: presence channels only (else 400).
async fn users(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Reply {
    let app = app_by_id(&state, &req);
    let signed = signed(&req, payload, &state, app, SMALL_BODY_BYTES).await?;
    let channel = path_channel(&state, &req)?;
    if !channel.kind().is_presence() {
        return Err(refuse(
            &state,
            "pusher_api_request",
            400,
            "users are listed for presence channels only",
        ));
    }
    let users: Vec<Value> = channel_users(&state, signed.app, &channel)
        .await
        .into_iter()
        .map(|id| json!({ "id": id }))
        .collect();
    ok(json!({ "users": users }))
}

/// `POST /apps/{id}/users/{uid}/terminate_connections`.
async fn terminate(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Reply {
    let app = app_by_id(&state, &req);
    terminate_for(&req, payload, &state, app).await
}

/// `POST /users/{uid}/terminate_connections` (the Python SDK's path): the app
/// whose key is the query's `auth_key`; the signature then proves the caller
/// holds that app's secret, as on the `/apps/{id}` path.
async fn terminate_python(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Reply {
    let key = sign_key(req.query_string());
    let app = key.and_then(|key| state.settings.pusher.apps.iter().find(|a| a.key == key));
    terminate_for(&req, payload, &state, app).await
}

/// The `auth_key` of a raw query.
fn sign_key(query: &str) -> Option<String> {
    let params: Vec<(String, String)> = serde_urlencoded::from_str(query).ok()?;
    params
        .into_iter()
        .find(|(k, _)| k == "auth_key")
        .map(|(_, v)| v)
}

async fn terminate_for(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    app: Option<&PusherApp>,
) -> Reply {
    let signed = signed(req, payload, state, app, SMALL_BODY_BYTES).await?;
    let raw = req.match_info().get("user_id").unwrap_or("");
    let uid = crate::push::Name::try_from(raw)
        .map_err(|e| refuse(state, "pusher_api_request", 400, format!("user id {e}")))?;
    terminate_user(state, signed.app, uid).await;
    ok(json!({}))
}

/// Publishes one checked event on each of its channels (one push per channel,
/// framed once per channel by the fan-out), skipping `socket_id`'s connection;
/// `#server-to-user-{uid}` goes to that user's signed-in connections. (The
/// publisher keeps events on cache channels for their next subscribers.)
///
/// The channels are published concurrently: in Redis mode each is a round trip;
/// a 100-channel event took 61 ms one channel after the other and 15-24 ms
/// concurrently (debug build, loaded 2-core machine; one channel: 1.5 ms). Order between channels is not a Pusher guarantee; order on one
/// channel across requests holds, since the reply waits for every publish.
async fn publish(state: &AppState, app: &PusherApp, event: &Event) {
    let data = ByteString::from(event.data.as_str());
    let publisher = publisher(state);
    let pushes = event.channels.iter().map(|channel| {
        state.metrics.push_received(Ingress::PusherApi);
        let (name, data) = (event.name.clone(), data.clone());
        async move {
            match channel.kind() {
                ChannelKind::ServerToUser(uid) => {
                    if let Ok(uid) = Name::try_from(&**uid) {
                        publisher.publish_to_user(app, &uid, name, data).await;
                    }
                }
                _ => {
                    publisher
                        .publish_event(app, channel, name, data, event.exclude)
                        .await;
                }
            }
        }
    });
    futures_util::future::join_all(pushes).await;
}

/// The `info` object of one channel: `user_count` (presence channels only) and
/// `subscription_count`, as asked.
async fn channel_info(state: &AppState, app: &PusherApp, channel: &Channel, info: Info) -> Value {
    let counts = channel_counts(state, app, channel).await;
    let mut fields = Map::new();
    if info.user_count && channel.kind().is_presence() {
        fields.insert("user_count".into(), counts.user_count.into());
    }
    if info.subscription_count {
        fields.insert(
            "subscription_count".into(),
            counts.subscription_count.into(),
        );
    }
    Value::Object(fields)
}

/// A channel's subscribed connections and distinct users, cluster-wide.
struct Counts {
    subscription_count: usize,
    user_count: usize,
}

async fn channel_counts(state: &AppState, app: &PusherApp, channel: &Channel) -> Counts {
    let info = channel_state(state).channel(&app.id, channel).await;
    Counts {
        subscription_count: info.subscription_count,
        user_count: info.user_count.unwrap_or(0),
    }
}

/// The occupied channels of `app` whose names start with `prefix`, sorted.
async fn list_channels(state: &AppState, app: &PusherApp, prefix: &str) -> Vec<(String, Counts)> {
    channel_state(state)
        .channels(&app.id, prefix)
        .await
        .into_iter()
        .map(|summary| {
            let counts = Counts {
                subscription_count: summary.subscription_count,
                user_count: summary.user_count.unwrap_or(0),
            };
            (summary.channel, counts)
        })
        .collect()
}

/// The distinct user ids of a presence channel.
async fn channel_users(state: &AppState, app: &PusherApp, channel: &Channel) -> Vec<String> {
    channel_state(state)
        .users(&app.id, channel)
        .await
        .into_iter()
        .map(|id| id.to_string())
        .collect()
}

/// Closes `uid`'s signed-in connections of `app` on every node.
async fn terminate_user(state: &AppState, app: &PusherApp, uid: Name) {
    publisher(state).terminate_user(app, &uid).await;
}

fn channel_state(state: &AppState) -> &ChannelState {
    &state.channels
}

fn publisher(state: &AppState) -> &Publisher {
    &state.pusher
}
