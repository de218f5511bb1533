//! Operations endpoints: `/healthz` for load balancers and `/metrics` for Prometheus,
//! plus the JSON 404 every unknown route gets.

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

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

/// Unknown route or method.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}
