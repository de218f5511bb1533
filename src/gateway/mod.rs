//! One WebSocket connection: check the upgrade (origin, token, query), register the
//! connection, then serve it with two parts: the response body is the writer (see
//! [`writer`]: it streams the connection's outbox to the socket), and one task reads
//! the client's frames. Pings and timeouts come from the node's [`heartbeat`].
//! Everything the server sends — pushes, pongs, pings, the close frame — goes
//! through the outbox, in order.
//!
//! Close codes the server sends:
//!
//! | code | when                                                   |
//! |------|--------------------------------------------------------|
//! | 1000 | the client closed first (echo)                         |
//! | 1001 | the server is stopping                                 |
//! | 1007 | a publisher sent a frame that is not a routable object |
//! | 1009 | a message over `server.max_message_bytes`              |
//! | 4001 | nothing arrived for `heartbeat.idle_timeout_secs`      |
//! | 4008 | slow consumer: the send queue overflowed, or its       |
//! |      | frames did not move for `server.send_timeout_secs`     |

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, ProtocolError};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::{Refusal, Role};
use crate::config::WsPublish;
use crate::error::ApiError;
use crate::hub::{ConnId, ConnMeta, Outbox, frame};
use crate::push::{Ingress, route_json_line};

pub mod heartbeat;
mod writer;

/// Longest page, uid or session name accepted.
const MAX_NAME_LEN: usize = 128;
/// Longest first frame taken as a uid (Workerman's `ws.send(uid)`).
const MAX_BOUND_UID_LEN: usize = 64;
/// `{"type":"pong"}` as a text frame, the answer to the seed client's heartbeat.
const PONG: Bytes = Bytes::from_static(b"\x81\x0f{\"type\":\"pong\"}");

const NORMAL: u16 = 1000;
const INVALID: u16 = 1007;
const TOO_BIG: u16 = 1009;

/// What the connect URL may carry.
#[derive(Debug, Default, Deserialize)]
struct ConnectQuery {
    token: Option<String>,
    page: Option<String>,
    uid: Option<String>,
    session: Option<String>,
}

/// Whether `req` asks for a WebSocket upgrade.
pub fn is_upgrade(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn name(field: &str, value: Option<String>) -> Result<Option<Arc<str>>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if v.len() > MAX_NAME_LEN || v.chars().any(char::is_control) => {
            Err(ApiError::bad_request(format!(
                "{field} must be at most {MAX_NAME_LEN} bytes without control characters"
            )))
        }
        Some(v) => Ok(Some(Arc::from(v))),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Handles an upgrade request on `/` or `/ws`.
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // Counted here; the refusal is logged once, by `ApiError`'s response.
    let reject = |reason: &'static str, error: ApiError| {
        state.metrics.rejected(reason);
        error
    };

    let allowed = &state.settings.server.allowed_origins;
    let origin = req.headers().get(header::ORIGIN);
    // Browsers always send Origin; other services (curl, PHP) do not and are allowed.
    if let (false, Some(origin)) = (allowed.is_empty(), origin) {
        let origin = origin.to_str().unwrap_or("");
        if !allowed.iter().any(|o| o == origin) {
            return Err(reject(
                "origin",
                ApiError::forbidden(format!("origin {origin:?} is not allowed")),
            ));
        }
    }

    let query: ConnectQuery = serde_urlencoded::from_str(req.query_string()).map_err(|e| {
        reject(
            "query",
            ApiError::bad_request(format!("bad query string: {e}")),
        )
    })?;
    let role = match state.tokens.connect_role(query.token.as_deref()) {
        Ok(role) => role,
        Err(Refusal::MissingToken) => {
            return Err(reject("token", ApiError::unauthorized("missing token")));
        }
        Err(Refusal::UnknownToken) => {
            return Err(reject("token", ApiError::unauthorized("invalid token")));
        }
    };
    let meta = ConnMeta {
        page: name("page", query.page).map_err(|e| reject("query", e))?,
        uid: name("uid", query.uid).map_err(|e| reject("query", e))?,
        session: name("session", query.session).map_err(|e| reject("query", e))?,
        connected_at: unix_now(),
    };

    // The handshake and the reading side come from actix-ws; its `Session` is not
    // used: everything sent goes through the outbox and the response body.
    let (response, _session, stream) = actix_ws::handle(&req, body).map_err(|e| {
        reject(
            "handshake",
            ApiError::bad_request(format!("websocket handshake failed: {e}")),
        )
    })?;
    let max = state.settings.server.max_message_bytes;
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);

    let (id, outbox) = state.hub.open(meta.clone());
    state.registry.opened(id, &meta);
    log::debug!(
        "conn {id} open from {}: page={:?} uid={:?} {role:?}",
        req.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
        meta.page,
        meta.uid
    );

    let writer = outbox.clone();
    let response = response
        .map_body(|_, handshake_body| writer::Writer::new(writer, handshake_body))
        .map_into_boxed_body();
    let connection = Connection {
        id,
        role,
        uid_bound: meta.uid.is_some(),
        state: state.into_inner(),
        outbox,
    };
    actix_web::rt::spawn(connection.run(stream));
    Ok(response)
}

/// How a connection ended, for the log.
#[derive(Debug)]
enum Ended {
    ClientClosed,
    Disconnected,
    ServerClosed(u16),
}

struct Connection {
    id: ConnId,
    role: Role,
    /// A uid is bound (at connect or by the first frame); it never changes after.
    uid_bound: bool,
    state: Arc<AppState>,
    outbox: Arc<Outbox>,
}

impl Connection {
    async fn run(mut self, mut stream: actix_ws::AggregatedMessageStream) {
        match self.serve(&mut stream).await {
            Ended::ServerClosed(code) => log::debug!("conn {} closed by server ({code})", self.id),
            ended => log::debug!("conn {} ended: {ended:?}", self.id),
        }
        if let Some(meta) = self.state.hub.close(self.id) {
            self.state.registry.closed(self.id, &meta);
        }
    }

    async fn serve(&mut self, stream: &mut actix_ws::AggregatedMessageStream) -> Ended {
        let mut first_text = true;
        loop {
            let message = tokio::select! {
                biased;
                code = self.outbox.closed() => return Ended::ServerClosed(code),
                message = stream.next() => message,
            };
            self.outbox.touch();
            match message {
                None => return Ended::Disconnected,
                Some(Err(ProtocolError::Overflow)) => {
                    self.state.metrics.rejected("too_big");
                    log::info!(
                        "conn {} closed: message over server.max_message_bytes",
                        self.id
                    );
                    return self.close(TOO_BIG, "message too big");
                }
                // Every other error is a broken connection: same clean-up.
                Some(Err(e)) => {
                    log::debug!("conn {} read error: {e}", self.id);
                    return Ended::Disconnected;
                }
                Some(Ok(AggregatedMessage::Text(text))) => {
                    let first = std::mem::take(&mut first_text);
                    if let Some(ended) = self.on_text(&text, first).await {
                        return ended;
                    }
                }
                Some(Ok(AggregatedMessage::Ping(bytes))) => {
                    self.outbox.offer(&frame::pong(&bytes));
                }
                Some(Ok(AggregatedMessage::Pong(_) | AggregatedMessage::Binary(_))) => {}
                Some(Ok(AggregatedMessage::Close(reason))) => {
                    let (code, description) = reason.map_or((NORMAL, String::new()), |r| {
                        (r.code.into(), r.description.unwrap_or_default())
                    });
                    self.outbox
                        .close_with(code, frame::close(code, &description));
                    return Ended::ClientClosed;
                }
            }
        }
    }

    /// Handles one text frame; `Some` ends the connection.
    async fn on_text(&mut self, text: &str, first: bool) -> Option<Ended> {
        if text == "heartbeat" || is_ping(text) {
            self.outbox.offer(&PONG);
            return None;
        }
        if self.may_publish() && text.starts_with('{') {
            return match route_json_line(text, None) {
                Ok(push) => {
                    // Boxed: publishing (in redis mode a Redis round trip) is rare on
                    // a connection and would otherwise size every connection's task.
                    Box::pin(self.state.publish(push, Ingress::Publisher)).await;
                    None
                }
                Err(e) => {
                    self.state.metrics.rejected("publisher_frame");
                    log::warn!("conn {} publisher frame refused: {e}", self.id);
                    Some(self.close(INVALID, &format!("not routable: {e}")))
                }
            };
        }
        if first && !self.uid_bound && is_plain_id(text) {
            self.uid_bound = true;
            if let Some(meta) = self.state.hub.bind_uid(self.id, Arc::from(text)) {
                self.state.registry.updated(self.id, &meta);
                log::debug!("conn {} bound uid {text:?} by first frame", self.id);
            }
            return None;
        }
        log::debug!("conn {} frame ignored ({} bytes)", self.id, text.len());
        None
    }

    fn may_publish(&self) -> bool {
        match self.state.settings.ingress.ws_publish {
            WsPublish::Any => true,
            WsPublish::ApiToken => self.role == Role::Publisher,
            WsPublish::Off => false,
        }
    }

    /// Queues the close frame (after whatever is queued) and ends the reading side.
    fn close(&self, code: u16, description: &str) -> Ended {
        self.outbox
            .close_with(code, frame::close(code, description));
        Ended::ServerClosed(code)
    }
}

/// `{"type":"ping"}` (with any spacing).
fn is_ping(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Typed<'a> {
        #[serde(borrow, rename = "type")]
        kind: Option<&'a str>,
    }
    text.starts_with('{')
        && text.len() < 64
        && serde_json::from_str::<Typed<'_>>(text).is_ok_and(|t| t.kind == Some("ping"))
}

/// A Workerman-style uid frame: short, no whitespace, not JSON, not `heartbeat`.
fn is_plain_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_BOUND_UID_LEN
        && text != "heartbeat"
        && !text.starts_with(['{', '[', '"'])
        && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_short_bare_words() {
        assert!(is_plain_id("1"));
        assert!(is_plain_id("uid1"));
        assert!(!is_plain_id("heartbeat"));
        assert!(!is_plain_id(r#"{"type":"ping"}"#));
        assert!(!is_plain_id("two words"));
        assert!(!is_plain_id(&"x".repeat(65)));
    }

    #[test]
    fn ping_is_recognised_in_json() {
        assert!(is_ping(r#"{"type":"ping"}"#));
        assert!(is_ping(r#"{ "type" : "ping" }"#));
        assert!(!is_ping(r#"{"type":"pong"}"#));
        assert!(!is_ping("ping"));
    }

    #[test]
    fn pong_is_the_text_frame_of_the_seed_reply() {
        assert_eq!(frame::text(r#"{"type":"pong"}"#), PONG);
    }
}
