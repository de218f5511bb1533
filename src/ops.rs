//! Operations endpoints: `/healthz` for load balancers and `/metrics` for Prometheus,
//! plus the JSON 404 every unknown route gets.
//!
//! `/metrics` lists page names; with `ops.metrics_token` set it answers only
//! `Authorization: Bearer <token>` (scheme case-insensitive, RFC 7235 §2.1) and
//! refuses anything else with 401 JSON.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::app::AppState;
use crate::error::ApiError;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics));
}

/// 200 whenever this node serves its own clients. In redis mode `status` is
/// `degraded` while a Redis link does not answer (or the bus dropped pushes in the
/// last 30 s); then `reason` names the link and what is wrong, and `since` is the
/// Unix time (seconds) the trouble started. Answered from memory: no Redis round
/// trip per call.
async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let mode = state.registry.mode();
    let redis = state.redis_up();
    let mut body = json!({
        "status": "ok",
        "mode": mode,
        "redis": redis,
        "node": &*state.node_id,
        "connections": state.hub.len(),
    });
    if mode == "redis"
        && let Some(down) = state.cluster_down()
        && let Some(fields) = body.as_object_mut()
    {
        fields.insert("status".into(), json!("degraded"));
        let reason = format!("redis link {}: {}", down.link, down.reason);
        fields.insert("reason".into(), json!(reason));
        fields.insert("since".into(), json!(down.since));
    }
    HttpResponse::Ok().json(body)
}

async fn metrics(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let expected = &state.settings.ops.metrics_token;
    if !expected.is_empty() {
        let given = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer);
        match given {
            None => {
                state.metrics.rejected("metrics_token");
                return Err(ApiError::unauthorized(
                    "/metrics needs Authorization: Bearer <ops.metrics_token>",
                ));
            }
            Some(given)
                if !crate::auth::constant_time_eq(given.as_bytes(), expected.as_bytes()) =>
            {
                state.metrics.rejected("metrics_token");
                return Err(ApiError::unauthorized("invalid metrics token"));
            }
            Some(_) => {}
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render()))
}

/// The credentials of `Bearer <token>`, the scheme matched case-insensitively.
fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Unknown route or method.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}
