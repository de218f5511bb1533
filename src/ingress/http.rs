//! HTTP ingress: the seed's `GET /?func=NAME&token=...` trigger, the JSON push API,
//! and the read APIs (presence, stats). Every answer is JSON.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use bytestring::ByteString;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::error::ApiError;
use crate::push::{Ingress, Push, Target};
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

/// The API token from `Authorization: Bearer ...`, else from `?token=`.
fn api_token<'a>(req: &'a HttpRequest, query_token: Option<&'a str>) -> Option<&'a str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or(query_token)
}

fn require_api_token(
    req: &HttpRequest,
    query_token: Option<&str>,
    state: &AppState,
) -> Result<(), ApiError> {
    match api_token(req, query_token) {
        Some(token) if state.tokens.is_api(token) => Ok(()),
        Some(_) => {
            state.metrics.rejected("api_token");
            Err(ApiError::unauthorized("invalid API token"))
        }
        None => {
            state.metrics.rejected("api_token");
            Err(ApiError::unauthorized(
                "missing API token (Authorization: Bearer ... or ?token=)",
            ))
        }
    }
}

/// `GET /?func=NAME&token=API_TOKEN[&params]`: runs a scene.
async fn trigger(req: &HttpRequest, state: &AppState) -> Result<HttpResponse, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    let find = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let func = match find("func") {
        Some(func) if !func.is_empty() => func.to_string(),
        _ => {
            state.metrics.rejected("missing_func");
            return Err(ApiError::bad_request(
                "missing func: call /?func=NAME&token=API_TOKEN",
            ));
        }
    };
    require_api_token(req, find("token"), state)?;
    let Some(scene) = state.scenes.get(&func) else {
        state.metrics.rejected("unknown_func");
        return Err(ApiError::not_found(format!("unknown func {func:?}"))
            .with("funcs", state.scenes.funcs()));
    };
    let push = scene
        .render(&Params::from_pairs(pairs))
        .map_err(|e| ApiError::bad_request(format!("{func}: {e}")))?;
    if push.payload.len() > state.settings.server.max_message_bytes {
        return Err(ApiError::new(
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            "rendered message is over server.max_message_bytes",
        ));
    }
    let published = state.publish(push, Ingress::HttpFunc).await;
    Ok(HttpResponse::Ok().json(json!({
        "code": 200,
        "message": "ok",
        "func": func,
        "delivered": published.delivered,
        "cluster_wide": published.cluster_wide,
    })))
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

/// A page or uid given as a string or a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Name {
    Text(String),
    Number(serde_json::Number),
}

impl Name {
    fn into_string(self) -> String {
        match self {
            Name::Text(s) => s,
            Name::Number(n) => n.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushRequest {
    page: Option<Name>,
    uid: Option<Name>,
    #[serde(default)]
    all: bool,
    message: serde_json::Value,
}

fn push_target(request: &mut PushRequest) -> Result<Target, ApiError> {
    let named = |name: Name, field: &str| {
        let name = name.into_string();
        if name.is_empty() {
            Err(ApiError::bad_request(format!("{field} must not be empty")))
        } else {
            Ok(name)
        }
    };
    match (request.page.take(), request.uid.take(), request.all) {
        (Some(page), None, false) => Ok(Target::Page(named(page, "page")?.into())),
        (None, Some(uid), false) => Ok(Target::Uid(named(uid, "uid")?.into())),
        (None, None, true) => Ok(Target::All),
        _ => Err(ApiError::bad_request(
            "give exactly one target: \"page\", \"uid\" or \"all\": true",
        )),
    }
}

/// `POST /api/push` with `{"page"|"uid"|"all", "message"}`.
async fn api_push(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // Only the header here: a body-carrying API keeps its secret out of URLs (and
    // so out of access logs), so the hint must not suggest `?token=`.
    if api_token(&req, None).is_none() {
        state.metrics.rejected("api_token");
        return Err(ApiError::unauthorized(
            "missing API token: send the header Authorization: Bearer API_TOKEN \
             (POST /api/push does not read ?token=)",
        ));
    }
    require_api_token(&req, None, &state)?;
    let limit = state.settings.server.max_message_bytes;
    let body = read_body(payload, limit.saturating_mul(2)).await?;
    let mut request: PushRequest = serde_json::from_slice(&body).map_err(|e| {
        state.metrics.rejected("bad_json");
        ApiError::bad_request(format!("malformed JSON: {e}"))
    })?;
    let target = push_target(&mut request)?;
    let text = request.message.to_string();
    if text.len() > limit {
        return Err(ApiError::new(
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("message is over server.max_message_bytes ({limit})"),
        ));
    }
    let published = state
        .publish(Push::new(target, ByteString::from(text)), Ingress::HttpApi)
        .await;
    Ok(HttpResponse::Ok().json(json!({
        "code": 200,
        "message": "ok",
        "delivered": published.delivered,
        "cluster_wide": published.cluster_wide,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceQuery {
    page: Option<String>,
    uid: Option<String>,
    token: Option<String>,
}

/// `GET /api/presence?page=P` or `?uid=U`.
async fn presence(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let query: PresenceQuery = serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    require_api_token(&req, query.token.as_deref(), &state)?;
    let (field, target) = match (query.page, query.uid) {
        (Some(page), None) if !page.is_empty() => ("page", Target::Page(page.into())),
        (None, Some(uid)) if !uid.is_empty() => ("uid", Target::Uid(uid.into())),
        _ => return Err(ApiError::bad_request("give exactly one of ?page= or ?uid=")),
    };
    let count = state.registry.count(&target).await;
    let name = match &target {
        Target::Page(n) | Target::Uid(n) => n.to_string(),
        Target::All => String::new(),
    };
    Ok(HttpResponse::Ok().json(json!({
        "code": 200,
        field: name,
        "connections": count.connections,
        "cluster_wide": count.cluster_wide,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenQuery {
    token: Option<String>,
}

/// `GET /api/stats`: connections per page and totals.
async fn stats(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let query: TokenQuery = serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    require_api_token(&req, query.token.as_deref(), &state)?;
    let stats = state.registry.stats().await;
    Ok(HttpResponse::Ok().json(json!({
        "code": 200,
        "connections": stats.connections,
        "pages": stats.pages,
        "nodes": stats.nodes,
        "cluster_wide": stats.cluster_wide,
        "node": &*state.node_id,
        "node_connections": state.hub.len(),
        "pushes": state.metrics.pushes_total(),
    })))
}
