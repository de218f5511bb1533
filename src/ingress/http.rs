//! HTTP ingress: the seed's `GET /?func=NAME&token=...` trigger, the JSON push API,
//! and the read APIs (presence, stats). Every answer is JSON.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use bytestring::ByteString;
use futures_util::StreamExt;
use serde::{Deserialize, Deserializer};
use serde_json::json;
use serde_json::value::RawValue;

use crate::app::AppState;
use crate::bus::Published;
use crate::edge::{Query, bearer_token, strip_bom_bytes};
use crate::error::ApiError;
use crate::idempotency::{self, Reply};
use crate::push::{ConnKey, Ingress, Name, Push, Target};
use crate::scenes::Params;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(root))
        .route("/ws", web::get().to(ws_only))
        .route("/api/push", web::post().to(api_push))
        .route("/api/presence", web::get().to(presence))
        .route("/api/stats", web::get().to(stats));
}

/// `/` serves both the WebSocket upgrade and the func trigger, as the seeds do; the
/// upgrades never get here (the gateway takes them before routing).
async fn root(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // A browser opening the root URL gets a page saying where things are.
    if crate::web::wants_index(&req) {
        return Ok(crate::web::index(&req, &state));
    }
    trigger(&req, &state).await
}

/// A plain request to the WebSocket endpoint (upgrades go to the gateway).
async fn ws_only() -> Result<HttpResponse, ApiError> {
    Err(ApiError::bad_request(
        "this endpoint takes WebSocket upgrades only",
    ))
}

/// Where a handler takes its API token from.
#[derive(Clone, Copy)]
enum TokenFrom<'a> {
    /// `Authorization: Bearer` only (`POST /api/push`).
    Header,
    /// The header, else this `?token=` value (GET triggers and read APIs).
    HeaderOrQuery(Option<&'a str>),
}

/// The API token from `Authorization: Bearer ...` (any case of `Bearer`), else
/// from `?token=` where the endpoint takes it.
fn api_token<'a>(req: &'a HttpRequest, from: TokenFrom<'a>) -> Option<&'a str> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match from {
        TokenFrom::Header => header,
        TokenFrom::HeaderOrQuery(query) => header.or(query),
    }
}

fn require_api_token(
    req: &HttpRequest,
    from: TokenFrom<'_>,
    state: &AppState,
) -> Result<(), ApiError> {
    match api_token(req, from) {
        Some(token) if state.tokens.is_api(token) => Ok(()),
        Some(_) => {
            state.metrics.rejected("api_token");
            Err(ApiError::unauthorized("invalid API token"))
        }
        None => {
            state.metrics.rejected("api_token");
            Err(ApiError::unauthorized(match from {
                // A body-carrying API keeps its secret out of URLs (and so out of
                // access logs): the hint names the header only.
                TokenFrom::Header => {
                    "missing API token: send the header Authorization: Bearer API_TOKEN \
                     (POST /api/push does not read ?token=)"
                }
                TokenFrom::HeaderOrQuery(_) => {
                    "missing API token (Authorization: Bearer ... or ?token=)"
                }
            }))
        }
    }
}

/// The request's query, or a 400 naming the parameter that is not UTF-8.
fn parse_query(req: &HttpRequest, state: &AppState) -> Result<Query, ApiError> {
    Query::parse(req.query_string()).map_err(|e| {
        state.metrics.rejected("query");
        ApiError::bad_request(e.to_string())
    })
}

/// `GET /?func=NAME&token=API_TOKEN[&params]`: runs a scene.
async fn trigger(req: &HttpRequest, state: &web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // A repeated key counts with its last value, as in PHP's `$_GET`.
    let query = parse_query(req, state)?;
    let func = match query.get("func") {
        Some(func) if !func.is_empty() => func.to_string(),
        _ => {
            state.metrics.rejected("missing_func");
            return Err(ApiError::bad_request(
                "missing func: call /?func=NAME&token=API_TOKEN",
            ));
        }
    };
    require_api_token(req, TokenFrom::HeaderOrQuery(query.get("token")), state)?;
    let key = idempotency_key(req, None, query.get(idempotency::FIELD), state)?;
    let Some(scene) = state.scenes.get(&func) else {
        state.metrics.rejected("unknown_func");
        return Err(ApiError::not_found(format!("unknown func {func:?}"))
            .with("funcs", state.scenes.funcs()));
    };
    let exclude = query
        .non_empty("exclude")
        .map(|text| {
            ConnKey::parse(text).map_err(|e| {
                state.metrics.rejected("api_target");
                ApiError::bad_request(format!("?exclude= {e}"))
            })
        })
        .transpose()?;
    let push = scene
        .render(&Params::from_query(&query))
        .map_err(|e| {
            state.metrics.rejected("scene_params");
            ApiError::bad_request(format!("{func}: {e}"))
        })?
        .excluding(exclude);
    if push.payload.len() > state.settings.server.max_message_bytes {
        return Err(ApiError::new(
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            "rendered message is over server.max_message_bytes",
        ));
    }
    let publisher = state.clone();
    let publish = async move {
        let published = publisher.publish(push, Ingress::HttpFunc).await;
        let mut reply = json!({
            "code": 200,
            "message": "ok",
            "func": func,
            "delivered": published.delivered,
            "cluster_wide": published.cluster_wide,
        });
        with_offset(&mut reply, &published, &publisher);
        Ok(Reply::ok(reply))
    };
    state.idempotency.once(key, publish).await
}

/// Adds the push's `"offset"` to a push reply when the history is on
/// (`history.size > 0`) and the push has one (not while Redis is unreachable).
fn with_offset(reply: &mut serde_json::Value, published: &Published, state: &AppState) {
    if state.settings.history.size > 0
        && let (Some(stamp), Some(object)) = (published.stamp, reply.as_object_mut())
    {
        object.insert(
            "offset".into(),
            crate::history::offset_text(stamp.offset).into(),
        );
    }
}

/// The request's idempotency key (see [`idempotency::key_from`]), counted when refused.
fn idempotency_key(
    req: &HttpRequest,
    body: Option<&RawValue>,
    query: Option<&str>,
    state: &AppState,
) -> Result<Option<idempotency::IdempotencyKey>, ApiError> {
    idempotency::key_from(req.headers(), body, query)
        .inspect_err(|_| state.metrics.rejected("idempotency_key"))
}

/// Reads a request body up to `limit` bytes.
async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::new(
                actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is over server.max_message_bytes ({limit})"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The body of `POST /api/push`. `page` and `uid` are kept as written so that an
/// explicit `null` is told from an absent field (and refused), and an integer id
/// keeps every digit.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushRequest<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    page: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    uid: Option<&'a RawValue>,
    #[serde(default)]
    all: bool,
    #[serde(default, borrow, deserialize_with = "present")]
    conn: Option<&'a RawValue>,
    /// `null` is no exclude, as an absent field: a back office that passes on
    /// `$socketId ?? null` (Laravel's `toOthers()` without a socket) still pushes.
    #[serde(default, borrow)]
    exclude: Option<&'a RawValue>,
    /// The Pusher event name Pusher subscribers of the page get (default
    /// `scenecast.push`).
    #[serde(default)]
    event: Option<crate::push::EventName>,
    /// Forwarded as written: key order, number spelling and spacing are the
    /// sender's, as on the text port.
    #[serde(borrow)]
    message: &'a RawValue,
    /// Checked by [`idempotency::key_from`] (a string of visible ASCII).
    #[serde(default, borrow)]
    idempotency_key: Option<&'a RawValue>,
}

/// A field that is present, whatever its value: `null` becomes `Some("null")`,
/// where serde's `Option` would make it `None`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

fn push_target(request: &PushRequest<'_>) -> Result<Target, ApiError> {
    let named = |raw: &RawValue, field: &str| {
        Name::from_raw_json(raw).map_err(|e| ApiError::bad_request(format!("{field} {e}")))
    };
    match (request.page, request.uid, request.all, request.conn) {
        (Some(page), None, false, None) => Ok(Target::Page(named(page, "page")?)),
        (None, Some(uid), false, None) => Ok(Target::Uid(named(uid, "uid")?)),
        (None, None, true, None) => Ok(Target::All),
        (None, None, false, Some(conn)) => Ok(Target::Conn(conn_key(conn, "conn")?)),
        _ => Err(ApiError::bad_request(
            "give exactly one target: \"page\", \"uid\", \"all\": true or \"conn\"",
        )),
    }
}

/// A connection id field (`conn`, `exclude`): a string as the welcome frame gave it.
fn conn_key(raw: &RawValue, field: &str) -> Result<ConnKey, ApiError> {
    ConnKey::from_raw_json(raw).map_err(|e| ApiError::bad_request(format!("{field} {e}")))
}

/// `POST /api/push` with `{"page"|"uid"|"all", "message"}`.
async fn api_push(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_api_token(&req, TokenFrom::Header, &state)?;
    let limit = state.settings.server.max_message_bytes;
    let body = read_body(payload, limit.saturating_mul(2)).await?;
    // A BOM in front of the JSON (.NET, PowerShell) is skipped.
    let request: PushRequest<'_> = serde_json::from_slice(strip_bom_bytes(&body)).map_err(|e| {
        state.metrics.rejected("bad_json");
        ApiError::bad_request(format!("malformed JSON: {e}"))
    })?;
    let target = push_target(&request).inspect_err(|_| state.metrics.rejected("api_target"))?;
    let exclude = request
        .exclude
        .map(|raw| conn_key(raw, "exclude"))
        .transpose()
        .inspect_err(|_| state.metrics.rejected("api_target"))?;
    let key = idempotency_key(&req, request.idempotency_key, None, &state)?;
    let text = request.message.get();
    if text.len() > limit {
        return Err(ApiError::new(
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("message is over server.max_message_bytes ({limit})"),
        ));
    }
    let push = Push::new(target, ByteString::from(text.to_owned()))
        .excluding(exclude)
        .with_event(request.event.clone());
    let publisher = state.clone();
    let publish = async move {
        let published = publisher.publish(push, Ingress::HttpApi).await;
        let mut reply = json!({
            "code": 200,
            "message": "ok",
            "delivered": published.delivered,
            "cluster_wide": published.cluster_wide,
        });
        with_offset(&mut reply, &published, &publisher);
        Ok(Reply::ok(reply))
    };
    state.idempotency.once(key, publish).await
}

/// `GET /api/presence?page=P` or `?uid=U`.
async fn presence(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // Unknown keys (cache busters such as `_=123`) are ignored.
    let query = parse_query(&req, &state)?;
    require_api_token(&req, TokenFrom::HeaderOrQuery(query.get("token")), &state)?;
    let named = |field: &str, value: &str| {
        Name::try_from(value).map_err(|e| {
            state.metrics.rejected("query");
            ApiError::bad_request(format!("?{field}= {e}"))
        })
    };
    let (field, target) = match (query.get("page"), query.get("uid")) {
        (Some(page), None) => ("page", Target::Page(named("page", page)?)),
        (None, Some(uid)) => ("uid", Target::Uid(named("uid", uid)?)),
        _ => return Err(ApiError::bad_request("give exactly one of ?page= or ?uid=")),
    };
    let count = state.registry.count(&target).await;
    let name = match &target {
        Target::Page(n) | Target::Uid(n) => n.to_string(),
        Target::All | Target::Conn(_) | Target::Channel(..) => String::new(),
    };
    Ok(HttpResponse::Ok().json(json!({
        "code": 200,
        field: name,
        "connections": count.connections,
        "cluster_wide": count.cluster_wide,
    })))
}

/// `GET /api/stats`: connections per page and totals.
async fn stats(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // Unknown keys (cache busters such as `_=123`) are ignored.
    let query = parse_query(&req, &state)?;
    require_api_token(&req, TokenFrom::HeaderOrQuery(query.get("token")), &state)?;
    let stats = state.registry.stats().await;
    Ok(HttpResponse::Ok().json(json!({
        "code": 200,
        "connections": stats.connections,
        "pages": stats.pages,
        "nodes": stats.nodes,
        "cluster_wide": stats.cluster_wide,
        "node": &*state.node_id,
        "node_connections": state.hub.len(),
        "node_pusher_connections": state.hub.pusher_len(),
        "pushes": state.metrics.pushes_total(),
    })))
}
