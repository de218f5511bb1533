//! One error shape for every HTTP answer that is not a success:
//! `{"code": <HTTP status>, "message": "..."}` (plus optional detail fields),
//! including failures of actix's own extractors and unknown routes.

use std::sync::LazyLock;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{Map, Value, json};

use crate::ingress::throttle::WarnThrottle;

/// The log budget of every refused HTTP request and upgrade.
static REFUSALS: LazyLock<WarnThrottle> = LazyLock::new(|| WarnThrottle::new(module_path!()));

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            extra: Map::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// Adds a field to the JSON body (e.g. the list of known funcs on a 404).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        // Every refused request may leave a line, whichever handler refused it, but
        // through one process-wide budget: a loop of bad requests costs no disk.
        REFUSALS.log(log::Level::Info, format_args!("request refused: {self}"));
        let mut body = json!({"code": self.status.as_u16(), "message": self.message});
        if let Value::Object(fields) = &mut body {
            fields.extend(self.extra.clone());
        }
        HttpResponse::build(self.status).json(body)
    }
}
