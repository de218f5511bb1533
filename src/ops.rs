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

/// 200 whenever this node serves its own clients; `degraded` while Redis (in redis
/// mode) is unreachable.
async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let mode = state.registry.mode();
    let redis = state.redis_up();
    let status = if mode == "redis" && !redis {
        "degraded"
    } else {
        "ok"
    };
    HttpResponse::Ok().json(json!({
        "status": status,
        "mode": mode,
        "redis": redis,
        "node": &*state.node_id,
        "connections": state.hub.len(),
    }))
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
