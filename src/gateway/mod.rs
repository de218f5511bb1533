//! WebSocket connections: the upgrade (origin, token, query, handshake), then the
//! connection itself on the bare socket ([`connection`]). Pings and timeouts come
//! from the node's [`heartbeat`].
//!
//! actix's HTTP/1 dispatcher hands every `Upgrade: websocket` request to
//! [`upgrade_service`] together with the socket, before routing. After the `101`
//! the dispatcher and its 8 KiB read and write buffers are gone: an idle connection
//! holds its socket, its outbox and a small task, nothing more (see the README's
//! Performance section for what that saves).
//!
//! Refused upgrades (JSON `{"code","message"}`, before any `101`): 401 token
//! (missing, unknown, or a JWT that is expired or does not verify), 403 origin or
//! what a token does not allow (another `?uid=` than its `sub`, a page outside its
//! `pages`, an unsigned uid under `auth.require_signed_uid`), 400 query, 404 path,
//! 429 `server.max_connections_per_ip`, 503 `server.max_connections`, the server
//! is stopping, or (`?recover=1` in cluster mode) the history cannot be read
//! because Redis is unreachable.
//!
//! Close codes the server sends:
//!
//! | code | when                                                   |
//! |------|--------------------------------------------------------|
//! | 1000 | the client closed first (echo)                         |
//! | 1001 | the server is stopping                                 |
//! | 1002 | the client broke the WebSocket protocol                |
//! | 1007 | a text frame that is not UTF-8, or a publisher frame   |
//! |      | that is not a routable object                          |
//! | 1009 | a message over `server.max_message_bytes`, refused at  |
//! |      | the frame header that announces it (before its payload)|
//! | 1012 | `?recover=1` only: this node missed pushes (or Redis   |
//! |      | lost the history); reconnect with your position        |
//! | 4001 | nothing arrived for `heartbeat.idle_timeout_secs`      |
//! | 4008 | slow consumer: the send queue overflowed, or its       |
//! |      | frames did not move for `server.send_timeout_secs`     |

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_codec::Framed;
use actix_http::body::{BodySize, MessageBody};
use actix_http::h1;
use actix_http::header::{self, HeaderMap};
use actix_http::{ConnectionType, Request, Response};
use actix_service::{ServiceFactory, fn_factory, fn_service};
use actix_web::ResponseError;
use actix_web::http::StatusCode;
use futures_util::SinkExt;
use tokio::net::TcpStream;

use crate::app::AppState;
use crate::auth::{Refusal, Role};
use crate::edge::Query;
use crate::error::ApiError;
use crate::hub::ConnMeta;
use crate::net::{CapRefusal, Slot};
use crate::push::Name;

mod connection;
pub mod heartbeat;
mod membership;
mod pusher;
mod recovery;

use membership::Membership;

/// Paths that take a WebSocket upgrade.
const WS_PATHS: [&str; 2] = ["/", "/ws"];

/// A connect that passed every check, with its place under the connection caps.
struct Accepted {
    meta: ConnMeta,
    role: Role,
    slot: Slot,
    /// `?recover=1`: pushes as envelopes, after a welcome (and a replay).
    recover: Option<recovery::Ask>,
}

/// The service actix's HTTP/1 dispatcher calls with each WebSocket upgrade request
/// and its socket.
pub fn upgrade_service(
    state: Arc<AppState>,
) -> impl ServiceFactory<
    (Request, Framed<TcpStream, h1::Codec>),
    Config = (),
    Response = (),
    Error = actix_http::Error,
    InitError = (),
> {
    fn_factory(move || {
        let state = state.clone();
        async move {
            Ok(fn_service(
                move |(request, framed): (Request, Framed<TcpStream, h1::Codec>)| {
                    upgrade(state.clone(), request, framed)
                },
            ))
        }
    })
}

/// Answers one upgrade request: `101` and the connection's task, or the refusal as
/// JSON (like every other HTTP error) and the socket closed.
///
/// The connection joins the hub and the registry *before* its `101` is written: a
/// client may push (or have its back office push) the moment its connect succeeds,
/// and that push must find it. Frames offered before the socket is attached wait in
/// the outbox and follow the `101`. If the `101` cannot be written, dropping the
/// [`Membership`] takes the connection out again.
async fn upgrade(
    state: Arc<AppState>,
    request: Request,
    mut framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), actix_http::Error> {
    if request.path().starts_with(pusher::PATH_PREFIX) {
        return pusher::upgrade(state, request, framed).await;
    }
    let accepted = match accept(&state, &request) {
        Ok(accepted) => accepted,
        Err(refusal) => {
            refuse(&mut framed, &refusal).await;
            return Ok(());
        }
    };
    let response = match actix_http::ws::handshake(request.head()) {
        Ok(mut builder) => {
            if let Some(protocol) = first_protocol(&request.head().headers) {
                builder.insert_header((header::SEC_WEBSOCKET_PROTOCOL, protocol));
            }
            builder.finish().drop_body()
        }
        Err(e) => {
            state.metrics.rejected("handshake");
            let refusal = ApiError::bad_request(format!("websocket handshake failed: {e}"));
            refuse(&mut framed, &refusal).await;
            return Ok(());
        }
    };
    let worker = state.bus.fanout().local_worker();
    let recover = accepted.recover.is_some();
    let Some((membership, outbox)) = Membership::join(
        state.clone(),
        &accepted.meta,
        worker,
        accepted.slot,
        recover,
    ) else {
        state.metrics.rejected("stopping");
        let refusal = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server is stopping");
        refuse(&mut framed, &refusal).await;
        return Ok(());
    };
    // Read after the join: every push from here on is held for the connection, and
    // every push before is in what was read.
    let preamble = match &accepted.recover {
        None => None,
        Some(ask) => {
            let conn = state.hub.conn_key(membership.id());
            match recovery::prepare(&state, ask, conn, &accepted.meta).await {
                Ok(preamble) => Some(preamble),
                Err(down) => {
                    state.metrics.rejected("history");
                    log::debug!(
                        "recover connect refused: history unreadable: {}",
                        down.reason
                    );
                    let refusal = ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "history unavailable (redis unreachable); retry",
                    );
                    refuse(&mut framed, &refusal).await;
                    return Ok(());
                }
            }
        }
    };
    if let Err(e) = framed.send((response, BodySize::None).into()).await {
        log::debug!("upgrade answer not sent: {e}");
        return Ok(());
    }
    let peer = request.head().peer_addr;
    let parts = framed.into_parts();
    let _task = connection::start(
        state,
        membership,
        outbox,
        &accepted.meta,
        accepted.role,
        parts.io,
        &parts.read_buf,
        peer,
        preamble,
        None,
    );
    Ok(())
}

/// Writes `refusal` as the JSON error response and lets the socket close.
pub(super) async fn refuse(framed: &mut Framed<TcpStream, h1::Codec>, refusal: &ApiError) {
    // `error_response` logs the refusal, as for every other HTTP error.
    let response: Response<_> = refusal.error_response().into();
    let (mut head, body) = response.into_parts();
    let body = body.try_into_bytes().unwrap_or_default();
    head.head_mut().set_connection_type(ConnectionType::Close);
    // One write: clients read the body only if it comes with the head.
    let sent = async {
        framed
            .feed((head, BodySize::Sized(body.len() as u64)).into())
            .await?;
        framed.feed(h1::Message::Chunk(Some(body))).await?;
        framed.send(h1::Message::Chunk(None)).await
    };
    if let Err(e) = sent.await {
        log::debug!("refusal not sent: {e}");
    }
}

/// Every check a connect must pass, in the order a client would fix them.
fn accept(state: &AppState, request: &Request) -> Result<Accepted, ApiError> {
    // Counted here; the refusal is logged once, when it is answered.
    let reject = |reason: &'static str, error: ApiError| {
        state.metrics.rejected(reason);
        error
    };

    let path = request.path();
    if !WS_PATHS.contains(&path) {
        return Err(reject(
            "handshake",
            ApiError::not_found(format!("no WebSocket endpoint at {path}; use / or /ws")),
        ));
    }
    check_origin(
        &state.settings.server.allowed_origins,
        &request.head().headers,
    )
    .map_err(|e| reject("origin", e))?;

    // A repeated key counts with its last value; unknown keys are ignored.
    let query = Query::parse(request.uri().query().unwrap_or(""))
        .map_err(|e| reject("query", ApiError::bad_request(e.to_string())))?;
    let refused = |refusal: Refusal| reject(refusal.reason(), auth_refusal(refusal));
    let grant = state.tokens.connect(query.get("token")).map_err(refused)?;
    let page = name(&query, "page").map_err(|e| reject("query", e))?;
    if let Some(page) = &page
        && !is_open_page(page)
    {
        return Err(reject(
            "page",
            ApiError::forbidden(format!(
                "?page= {page:?} is a Pusher private, presence, encrypted or # channel: \
                 only Pusher subscriptions with their auth may read it"
            )),
        ));
    }
    let uid = name(&query, "uid").map_err(|e| reject("query", e))?;
    // A signed `sub` binds the uid; `?uid=` may only repeat it (README "Signed identities").
    let uid = grant
        .bind(page.as_ref(), uid, state.settings.auth.require_signed_uid)
        .map_err(refused)?;
    let meta = ConnMeta {
        page,
        uid,
        session: name(&query, "session").map_err(|e| reject("query", e))?,
        connected_at: unix_now(),
    };
    let recover = recovery::ask(&query);
    let slot = admit(state, request).map_err(|cap| reject(cap.reason(), cap_refusal(cap)))?;
    Ok(Accepted {
        meta,
        role: grant.role,
        slot,
        recover,
    })
}

/// Whether a native connection may open on `page`: any page but the bridged
/// Pusher app's private, presence, encrypted and `#` channels, which need an auth
/// a native connect does not give (`?page=private-x` would read a private channel).
fn is_open_page(page: &Name) -> bool {
    use crate::pusher::channel::ChannelKind;
    if page.starts_with('#') {
        return false;
    }
    match crate::pusher::Channel::parse(page) {
        Ok(channel) => matches!(channel.kind(), ChannelKind::Public | ChannelKind::Cache),
        // Not a channel name (another charset): no Pusher client can reach it.
        Err(_) => true,
    }
}

/// 401 for the token itself (missing, unknown, expired, not verifying), 403 for
/// what a valid token does not allow (another uid, another page, an unsigned uid).
fn auth_refusal(refusal: Refusal) -> ApiError {
    let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    ApiError::new(status, refusal.message())
}

/// A place under the connection caps, taken last: only a connect that would
/// otherwise succeed counts against them.
pub(super) fn admit(state: &AppState, request: &Request) -> Result<Slot, CapRefusal> {
    let peer = request.head().peer_addr.map(|addr| addr.ip());
    state.caps.admit(peer)
}

/// 503 when the node is full (come back later, or elsewhere), 429 when the client's
/// own address holds its share.
fn cap_refusal(cap: CapRefusal) -> ApiError {
    let status = match cap {
        CapRefusal::Full { .. } => StatusCode::SERVICE_UNAVAILABLE,
        CapRefusal::FullForIp { .. } => StatusCode::TOO_MANY_REQUESTS,
    };
    ApiError::new(status, cap.to_string())
}

/// Browsers always send `Origin`; other services (curl, PHP) do not and are allowed.
pub(super) fn check_origin(allowed: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    match (allowed.is_empty(), headers.get(header::ORIGIN)) {
        (false, Some(origin)) => {
            let origin = origin.to_str().unwrap_or("");
            if allowed.iter().any(|o| o == origin) {
                Ok(())
            } else {
                Err(ApiError::forbidden(format!(
                    "origin {origin:?} is not allowed"
                )))
            }
        }
        _ => Ok(()),
    }
}

/// `?{field}=` as a [`Name`]; absent or empty means none (the seed pages build
/// their URL with an empty `uid=` when nobody is logged in).
fn name(query: &Query, field: &str) -> Result<Option<Name>, ApiError> {
    query
        .non_empty(field)
        .map(|value| {
            Name::try_from(value).map_err(|e| ApiError::bad_request(format!("?{field}= {e}")))
        })
        .transpose()
}

/// The first protocol of the client's `Sec-WebSocket-Protocol` offer (RFC 6455
/// §4.2.2: the server selects one of the offered values). Browsers abort a
/// handshake whose `101` selects none after they offered some; scenecast speaks
/// the same frames whatever the name, so it takes the client's first choice.
pub(super) fn first_protocol(headers: &HeaderMap) -> Option<header::HeaderValue> {
    let offer = headers.get(header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
    let first = offer.split(',').next()?.trim();
    // An RFC 9110 token, as RFC 6455 §4.1 requires of protocol names.
    let is_token = !first.is_empty()
        && first
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !is_token {
        return None;
    }
    header::HeaderValue::from_str(first).ok()
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
