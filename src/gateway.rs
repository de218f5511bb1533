//! One WebSocket connection: check the upgrade (origin, token, query), register the
//! connection, then run a single task that multiplexes the client's frames, the
//! connection's outbox, the ping timer and the idle deadline.
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
//! | 4008 | slow consumer: the send queue overflowed               |

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError, Session};
use bytestring::ByteString;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::time::{Instant, sleep_until, timeout};

use crate::app::AppState;
use crate::auth::{Refusal, Role};
use crate::config::WsPublish;
use crate::error::ApiError;
use crate::hub::{CloseReason as ServerClose, ConnId, ConnMeta, Outbox};
use crate::push::{Ingress, route_json_line};

/// Longest page, uid or session name accepted.
const MAX_NAME_LEN: usize = 128;
/// Longest first frame taken as a uid (Workerman's `ws.send(uid)`).
const MAX_BOUND_UID_LEN: usize = 64;
const PONG: &str = r#"{"type":"pong"}"#;
/// How long the echo of a client's close frame may wait for room in the send channel.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

const IDLE_TIMEOUT: u16 = 4001;
const SLOW_CONSUMER: u16 = 4008;

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

    let (response, session, stream) = actix_ws::handle(&req, body).map_err(|e| {
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

    let connection = Connection {
        id,
        role,
        uid_bound: meta.uid.is_some(),
        state: state.into_inner(),
        outbox,
        session,
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
    session: Session,
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
        let heartbeat = &self.state.settings.heartbeat;
        let ping_every = Duration::from_secs(heartbeat.interval_secs);
        let idle_after = Duration::from_secs(heartbeat.idle_timeout_secs);
        let send_timeout = Duration::from_secs(self.state.settings.server.send_timeout_secs);

        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut last_seen = Instant::now();
        // Re-armed only when it fires, not on every frame: resetting a timer per
        // frame costs more than checking `last_seen` when it wakes.
        let idle = sleep_until(last_seen + idle_after);
        tokio::pin!(idle);
        let mut first_text = true;
        let mut batch: Vec<ByteString> = Vec::new();

        loop {
            tokio::select! {
                biased;

                () = self.outbox.ready() => {
                    let closing = self.outbox.drain(&mut batch);
                    for frame in batch.drain(..) {
                        match timeout(send_timeout, self.session.text(frame)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => return Ended::Disconnected,
                            Err(_) => {
                                self.state.metrics.slow_consumers.inc();
                                log::warn!("conn {} closed: client stopped reading", self.id);
                                return Ended::ServerClosed(SLOW_CONSUMER);
                            }
                        }
                    }
                    match closing {
                        Some(ServerClose::Shutdown) => {
                            return self.close(CloseCode::Away, "server shutting down").await;
                        }
                        Some(ServerClose::SlowConsumer) => {
                            return self.close(CloseCode::Other(SLOW_CONSUMER), "slow consumer").await;
                        }
                        None => {}
                    }
                }

                message = stream.next() => {
                    last_seen = Instant::now();
                    match message {
                        None => return Ended::Disconnected,
                        Some(Err(ProtocolError::Overflow)) => {
                            self.state.metrics.rejected("too_big");
                            log::info!("conn {} closed: message over server.max_message_bytes", self.id);
                            return self.close(CloseCode::Size, "message too big").await;
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
                            if self.session.pong(&bytes).await.is_err() {
                                return Ended::Disconnected;
                            }
                        }
                        Some(Ok(AggregatedMessage::Pong(_) | AggregatedMessage::Binary(_))) => {}
                        Some(Ok(AggregatedMessage::Close(reason))) => {
                            let session = self.session.clone();
                            let _ = timeout(CLOSE_TIMEOUT, session.close(reason)).await;
                            return Ended::ClientClosed;
                        }
                    }
                }

                _ = ping.tick() => {
                    match timeout(send_timeout, self.session.ping(b"")).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Ended::Disconnected,
                        Err(_) => return Ended::ServerClosed(SLOW_CONSUMER),
                    }
                }

                () = &mut idle => {
                    let deadline = last_seen + idle_after;
                    if deadline > Instant::now() {
                        idle.as_mut().reset(deadline);
                    } else {
                        log::info!("conn {} closed: idle for {}s", self.id, idle_after.as_secs());
                        return self.close(CloseCode::Other(IDLE_TIMEOUT), "idle timeout").await;
                    }
                }
            }
        }
    }

    /// Handles one text frame; `Some` ends the connection.
    async fn on_text(&mut self, text: &str, first: bool) -> Option<Ended> {
        if text == "heartbeat" || is_ping(text) {
            return match self.session.text(PONG).await {
                Ok(()) => None,
                Err(_) => Some(Ended::Disconnected),
            };
        }
        if self.may_publish() && text.starts_with('{') {
            return match route_json_line(text, None) {
                Ok(push) => {
                    self.state.publish(push, Ingress::Publisher).await;
                    None
                }
                Err(e) => {
                    self.state.metrics.rejected("publisher_frame");
                    log::warn!("conn {} publisher frame refused: {e}", self.id);
                    let reason = format!("not routable: {e}");
                    Some(self.close(CloseCode::Invalid, &reason).await)
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

    async fn close(&self, code: CloseCode, description: &str) -> Ended {
        let reason = CloseReason {
            code,
            description: Some(truncate(description, 120).to_string()),
        };
        // A client that is behind (slow consumer) gets as long as any write to take
        // its close frame, so that it learns why when it reads again.
        let wait = Duration::from_secs(self.state.settings.server.send_timeout_secs);
        let _ = timeout(wait, self.session.clone().close(Some(reason))).await;
        Ended::ServerClosed(code.into())
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

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
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
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("ééé", 3), "é");
    }
}
