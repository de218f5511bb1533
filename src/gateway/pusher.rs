//! Pusher connections: the WebSocket at `/app/{key}` (PUSHER-NOTES §3.1–§3.5), on
//! the same bare-socket gateway as native ones — same frame reader, caps,
//! [`Membership`] guard, outbox and heartbeat. What differs is what a client frame
//! means ([`PusherConn::on_text`]) and how pushes are framed (the hub frames a push
//! once per kind: Pusher subscribers share one `{"event","channel","data"}` frame).
//!
//! Refusals follow Pusher: the upgrade succeeds, then `pusher:error` with the code
//! and a close frame with the same code — 4001 unknown key, 4003 app disabled,
//! 4004 the app's `max_connections` (this node's count), 4006/4007/4008 the
//! `?protocol=` check, 4100 `server.max_connections[_per_ip]`, 4200 stopping.
//! Only the origin check (403) and a broken handshake (400) answer in HTTP.

use std::num::NonZeroU32;
use std::sync::Arc;

use actix_codec::Framed;
use actix_http::body::BodySize;
use actix_http::h1;
use actix_http::{Request, header};
use futures_util::SinkExt;
use governor::{DefaultDirectRateLimiter, Quota};
use tokio::net::TcpStream;

use super::membership::Membership;
use crate::app::AppState;
use crate::edge::Query;
use crate::error::ApiError;
use crate::hub::{ConnId, ConnMeta, Outbox, frame};
use crate::ingress::throttle::WarnThrottle;
use crate::push::{ConnKey, EventName, Name};
use crate::pusher::protocol::{self, ClientFrame, PusherCode};
use crate::pusher::state::Member;
use crate::pusher::{Channel, ChannelKind, Publisher, PusherApp, sign};

/// The path prefix of Pusher WebSockets (`/app/{key}`).
pub(super) const PATH_PREFIX: &str = "/app/";

/// Channels one connection may be subscribed to at once: each costs an index
/// entry in the hub and the channel state, so a client may not grow them without
/// bound.
pub(super) const MAX_SUBSCRIPTIONS: usize = 1000;

/// One budget for every Pusher connection's refusal lines.
static REFUSALS: std::sync::LazyLock<WarnThrottle> =
    std::sync::LazyLock::new(|| WarnThrottle::new(module_path!()));

/// Answers one `/app/{key}` upgrade (see the module documentation).
pub(super) async fn upgrade(
    state: Arc<AppState>,
    request: Request,
    mut framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), actix_http::Error> {
    if let Err(refusal) = super::check_origin(
        &state.settings.server.allowed_origins,
        &request.head().headers,
    ) {
        state.metrics.rejected("origin");
        super::refuse(&mut framed, &refusal).await;
        return Ok(());
    }
    let response = match actix_http::ws::handshake(request.head()) {
        Ok(mut builder) => {
            if let Some(protocol) = super::first_protocol(&request.head().headers) {
                builder.insert_header((header::SEC_WEBSOCKET_PROTOCOL, protocol));
            }
            builder.finish().drop_body()
        }
        Err(e) => {
            state.metrics.rejected("handshake");
            let refusal = ApiError::bad_request(format!("websocket handshake failed: {e}"));
            super::refuse(&mut framed, &refusal).await;
            return Ok(());
        }
    };
    let admitted = admit(&state, &request).and_then(|(app, slot)| {
        let worker = state.bus.fanout().local_worker();
        let meta = ConnMeta {
            page: None,
            uid: None,
            session: None,
            connected_at: super::unix_now(),
        };
        let bridged = state.pusher.is_bridged(&app);
        let slot_name = Publisher::slot(&app).ok_or(PusherCode::AppNotFound)?;
        let (membership, outbox) =
            Membership::join_pusher(state.clone(), &meta, worker, slot, slot_name, bridged)
                .ok_or(PusherCode::Restart)?;
        Ok((app, membership, outbox, meta))
    });
    let sent = framed.send((response, BodySize::None).into()).await;
    if let Err(e) = sent {
        log::debug!("pusher upgrade answer not sent: {e}");
        return Ok(());
    }
    let peer = request.head().peer_addr;
    let parts = framed.into_parts();
    match admitted {
        Err(code) => {
            state.metrics.rejected(reason(code));
            REFUSALS.log(
                log::Level::Info,
                format_args!(
                    "pusher connect refused with {}: {} ({})",
                    code.code(),
                    code.message(),
                    request.path()
                ),
            );
            let mut bytes = frame::text(&protocol::error(code.message(), Some(code))).to_vec();
            bytes.extend_from_slice(&frame::close(code.code(), code.message()));
            let socket = parts.io;
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(state.settings.server.send_timeout_secs),
                super::connection::write_all(&socket, &bytes),
            )
            .await;
            super::connection::linger(&socket).await;
        }
        Ok((app, membership, outbox, meta)) => {
            let id = membership.id();
            let socket_id = state.hub.conn_key(id);
            // Queued before the socket is attached: the first frame after the 101.
            outbox.offer(&frame::text(&protocol::connection_established(
                &socket_id.to_string(),
                state.settings.pusher.activity_timeout_secs,
            )));
            let conn = PusherConn::new(state.clone(), app, id, socket_id);
            let _task = super::connection::start(
                state,
                membership,
                outbox,
                &meta,
                crate::auth::Role::Client,
                parts.io,
                &parts.read_buf,
                peer,
                None,
                Some(Box::new(conn)),
            );
        }
    }
    Ok(())
}

/// The metric reason of a refused Pusher connect.
fn reason(code: PusherCode) -> &'static str {
    match code {
        PusherCode::AppNotFound => "pusher_app",
        PusherCode::AppDisabled => "pusher_app_disabled",
        PusherCode::OverQuota => "pusher_quota",
        PusherCode::OverCapacity => "max_connections",
        PusherCode::Restart => "stopping",
        _ => "pusher_protocol",
    }
}

/// The checks of a Pusher connect, in Pusher's order: key, protocol, enabled,
/// the app's quota, the node's caps.
fn admit(
    state: &AppState,
    request: &Request,
) -> Result<(Arc<PusherApp>, crate::net::Slot), PusherCode> {
    let key = request
        .path()
        .strip_prefix(PATH_PREFIX)
        .unwrap_or_default()
        .trim_end_matches('/');
    let app = state
        .pusher
        .app_by_key(key)
        .filter(|_| !key.is_empty())
        .ok_or(PusherCode::AppNotFound)?;
    let query = Query::parse(request.uri().query().unwrap_or(""))
        .map_err(|_| PusherCode::InvalidVersionFormat)?;
    protocol::check_protocol(query.get("protocol"))?;
    if !app.enabled {
        return Err(PusherCode::AppDisabled);
    }
    if app.max_connections > 0 && state.hub.pusher_app_len(&app.id) >= app.max_connections {
        return Err(PusherCode::OverQuota);
    }
    if state.hub.is_stopped() {
        return Err(PusherCode::Restart);
    }
    let slot = super::admit(state, request).map_err(|_| PusherCode::OverCapacity)?;
    Ok((app, slot))
}

/// One subscription of a Pusher connection.
struct Subscription {
    channel: Channel,
    /// The presence member it joined as.
    user_id: Option<Name>,
}

/// What a Pusher connection keeps besides its hub entry: its app, its
/// subscriptions (to give back to the channel state when it leaves), the user it
/// signed in as, and its client-event budget.
pub(super) struct PusherConn {
    state: Arc<AppState>,
    /// Shared with every connection of the app (see [`Publisher::app_by_key`]).
    app: Arc<PusherApp>,
    id: ConnId,
    socket_id: ConnKey,
    /// Few per connection (pusher-js apps subscribe to one or two channels): a
    /// `Vec` searched by name costs less memory than a map for an idle connection.
    subscriptions: Vec<Subscription>,
    user: Option<Name>,
    /// Built at the first client event.
    limiter: Option<DefaultDirectRateLimiter>,
}

/// What the connection must do after a frame.
pub(super) enum After {
    Nothing,
    /// Close with this code and reason (after what is queued).
    Close(u16, &'static str),
}

impl PusherConn {
    fn new(state: Arc<AppState>, app: Arc<PusherApp>, id: ConnId, socket_id: ConnKey) -> Self {
        Self {
            state,
            app,
            id,
            socket_id,
            subscriptions: Vec::new(),
            user: None,
            limiter: None,
        }
    }

    /// Handles one text message of the client.
    pub(super) async fn on_text(&mut self, outbox: &Outbox, text: &str) -> After {
        let frame = match protocol::parse(text) {
            Ok(frame) => frame,
            Err(e) => {
                // Pusher answers `pusher:error` and keeps the connection.
                self.state.metrics.rejected("pusher_frame");
                REFUSALS.log(
                    log::Level::Info,
                    format_args!("pusher conn {} frame refused: {e}", self.socket_id),
                );
                send(outbox, &protocol::error(&e.to_string(), None));
                return After::Nothing;
            }
        };
        match frame {
            ClientFrame::Ping => send(outbox, &protocol::pong()),
            ClientFrame::Pong | ClientFrame::Other { .. } => {}
            ClientFrame::Subscribe {
                channel,
                auth,
                channel_data,
            } => {
                self.subscribe(outbox, &channel, auth.as_deref(), channel_data.as_deref())
                    .await;
            }
            ClientFrame::Unsubscribe { channel } => self.unsubscribe(&channel),
            ClientFrame::Signin { user_data, auth } => {
                return self.signin(outbox, &user_data, &auth);
            }
            ClientFrame::ClientEvent {
                event,
                channel,
                data,
            } => {
                self.client_event(outbox, &event, &channel, data.get())
                    .await
            }
        }
        After::Nothing
    }

    async fn subscribe(
        &mut self,
        outbox: &Outbox,
        name: &str,
        auth: Option<&str>,
        channel_data: Option<&str>,
    ) {
        let refuse = |kind: &str, message: &str, status: u16| {
            self.state.metrics.rejected("pusher_subscribe");
            send(
                outbox,
                &protocol::subscription_error(name, kind, message, status),
            );
        };
        let channel = match Channel::parse(name) {
            Ok(channel) => channel,
            Err(e) => return refuse("InvalidChannel", &e.to_string(), 400),
        };
        let Ok(page) = Name::try_from(channel.as_str()) else {
            return refuse("InvalidChannel", "not a valid channel name", 400);
        };
        let mut member = None;
        match channel.kind() {
            ChannelKind::Public | ChannelKind::Cache => {}
            ChannelKind::ServerToUser(uid) => {
                if self.user.as_deref() != Some(&**uid) {
                    return refuse(
                        "AuthError",
                        "#server-to-user-{id} is only for that user's own signed-in connections",
                        403,
                    );
                }
            }
            kind => {
                let data = channel_data.filter(|_| kind.is_presence());
                if kind.is_presence() && data.is_none() {
                    return refuse("AuthError", "presence channels need channel_data", 401);
                }
                if let Err(e) = sign::check_channel_auth(
                    &self.app.key,
                    &self.app.secret,
                    &self.socket_id.to_string(),
                    channel.as_str(),
                    data,
                    auth,
                ) {
                    return refuse("AuthError", &e.to_string(), 401);
                }
                if let Some(data) = data {
                    match Member::parse(data) {
                        Ok(m) => member = Some(m),
                        Err(e) => return refuse("AuthError", &e.to_string(), 400),
                    }
                }
            }
        }
        let known = self.subscription(name);
        if self.subscriptions.len() >= MAX_SUBSCRIPTIONS && known.is_none() {
            return refuse(
                "LimitReached",
                "too many subscriptions on this connection (1000)",
                400,
            );
        }
        let user_id = member
            .as_ref()
            .and_then(|m| Name::try_from(&*m.user_id).ok());
        // Recorded before the await: a connection dropped meanwhile still gives
        // the subscription back (see `Drop`).
        let sub = Subscription {
            channel: channel.clone(),
            user_id,
        };
        match known.and_then(|i| self.subscriptions.get_mut(i)) {
            Some(known) => *known = sub,
            None => self.subscriptions.push(sub),
        }
        let subscribed = self
            .state
            .channels
            .subscribe(&self.app.id, &channel, self.socket_id, member)
            .await;
        let presence = subscribed.presence.as_ref().map(|p| p.as_protocol());
        send(
            outbox,
            &protocol::subscription_succeeded(name, presence.as_ref()),
        );
        self.state.hub.subscribe(self.id, &page);
        if channel.kind().is_cache() {
            match self.state.channels.cache_last(&self.app.id, &channel).await {
                Some(last) => send(
                    outbox,
                    &protocol::pushed_event(&last.event, name, &last.data, None),
                ),
                None => {
                    send(outbox, &protocol::cache_miss(name));
                    self.state.channels.cache_miss(&self.app.id, &channel);
                }
            }
        }
    }

    fn unsubscribe(&mut self, name: &str) {
        if let Some(i) = self.subscription(name) {
            let sub = self.subscriptions.swap_remove(i);
            if let Ok(page) = Name::try_from(name) {
                self.state.hub.unsubscribe(self.id, &page);
            }
            self.state
                .channels
                .left(&self.app.id, &sub.channel, self.socket_id);
        }
    }

    fn signin(&mut self, outbox: &Outbox, user_data: &str, auth: &str) -> After {
        let code = PusherCode::Unauthorized;
        if let Err(e) = sign::check_user_auth(
            &self.app.key,
            &self.app.secret,
            &self.socket_id.to_string(),
            user_data,
            Some(auth),
        ) {
            self.state.metrics.rejected("pusher_signin");
            send(outbox, &protocol::error(&e.to_string(), Some(code)));
            return After::Close(code.code(), "sign-in refused");
        }
        let Some(uid) = user_id(user_data) else {
            self.state.metrics.rejected("pusher_signin");
            let message = "user_data must be a JSON object with a string id";
            send(outbox, &protocol::error(message, Some(code)));
            return After::Close(code.code(), "sign-in refused");
        };
        if self.user.is_none()
            && let Some(meta) = self.state.hub.bind_user(self.id, uid.clone())
        {
            self.state.registry.updated(self.id, &meta);
            self.user = Some(uid);
        }
        send(outbox, &protocol::signin_success(user_data));
        After::Nothing
    }

    async fn client_event(&mut self, outbox: &Outbox, event: &str, name: &str, data: &str) {
        let reject = |message: &str| {
            self.state.metrics.rejected("pusher_client_event");
            send(
                outbox,
                &protocol::error(message, Some(PusherCode::ClientEventRejected)),
            );
        };
        if !self.app.client_events {
            return reject("client events are not enabled for this app");
        }
        let Some(sub) = self
            .subscription(name)
            .and_then(|i| self.subscriptions.get(i))
        else {
            return reject("client events need a subscription to the channel");
        };
        if !sub.channel.kind().allows_client_events() {
            return reject("client events are only allowed on private and presence channels");
        }
        let Ok(event_name) = EventName::try_from(event) else {
            return reject("invalid event name");
        };
        let rate = NonZeroU32::new(self.app.client_event_rate).unwrap_or(NonZeroU32::MIN);
        let limiter = self
            .limiter
            .get_or_insert_with(|| DefaultDirectRateLimiter::direct(Quota::per_second(rate)));
        if limiter.check().is_err() {
            self.state.metrics.rejected("rate_limited");
            return reject("client event rate limit reached (client_event_rate per second)");
        }
        let channel = sub.channel.clone();
        let user_id = sub.user_id.clone();
        self.state.channels.client_event(
            &self.app.id,
            &channel,
            event,
            data,
            self.socket_id,
            user_id.as_deref(),
        );
        self.state
            .pusher
            .publish_as(
                &self.app,
                &channel,
                event_name,
                data.to_string().into(),
                Some(self.socket_id),
                user_id,
            )
            .await;
    }

    /// Where the subscription to channel `name` is in `subscriptions`.
    fn subscription(&self, name: &str) -> Option<usize> {
        self.subscriptions
            .iter()
            .position(|sub| sub.channel.as_str() == name)
    }

    /// Gives every subscription back to the channel state (the hub's indexes go
    /// with the [`Membership`]). Idempotent: called when the connection leaves and
    /// again on drop.
    pub(super) fn release(&mut self) {
        for sub in self.subscriptions.drain(..) {
            self.state
                .channels
                .left(&self.app.id, &sub.channel, self.socket_id);
        }
    }
}

impl Drop for PusherConn {
    fn drop(&mut self) {
        self.release();
    }
}

/// The `id` of a sign-in's `user_data` (`{"id":"7",…}`; a number is taken as its
/// decimal text), as a name.
fn user_id(user_data: &str) -> Option<Name> {
    #[derive(serde::Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        id: &'a serde_json::value::RawValue,
    }
    let data: Data<'_> = serde_json::from_str(user_data).ok()?;
    Name::from_raw_json(data.id).ok()
}

fn send(outbox: &Outbox, text: &str) {
    outbox.offer(&frame::text(text));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn test_conn() -> (PusherConn, Arc<Outbox>) {
        let mut settings = crate::config::Settings::default();
        settings.pusher.apps = vec![
            toml::from_str(
                r#"
id = "1"
key = "k"
secret = "s"
client_events = true
"#,
            )
            .unwrap(),
        ];
        let state = super::super::membership::test_state_with(settings, 10, 10);
        let app = state.pusher.app_by_key("k").unwrap();
        let slot = state.caps.admit(None).unwrap();
        let (membership, outbox) = Membership::join_pusher(
            state.clone(),
            &ConnMeta {
                page: None,
                uid: None,
                session: None,
                connected_at: 0,
            },
            0,
            slot,
            Name::try_from("1").unwrap(),
            true,
        )
        .unwrap();
        let id = membership.id();
        std::mem::forget(membership);
        let key = state.hub.conn_key(id);
        (PusherConn::new(state, app, id, key), outbox)
    }

    #[test]
    fn user_ids_come_from_user_data() {
        assert_eq!(user_id(r#"{"id":"7","name":"x"}"#).unwrap().as_str(), "7");
        assert_eq!(user_id(r#"{"id":12}"#).unwrap().as_str(), "12");
        assert!(user_id(r#"{"id":null}"#).is_none());
        assert!(user_id(r#"{"name":"x"}"#).is_none());
        assert!(user_id("[]").is_none());
    }

    fn texts(outbox: &Outbox) -> Vec<Value> {
        std::iter::from_fn(|| outbox.try_next())
            .map(|f| serde_json::from_slice(frame::parse(&f).unwrap().1).unwrap())
            .collect()
    }

    #[test]
    fn subscriptions_are_capped_per_connection() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, async {
            let (mut conn, outbox) = test_conn();
            for i in 0..MAX_SUBSCRIPTIONS {
                let text = format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"c{i}"}}}}"#);
                conn.on_text(&outbox, &text).await;
                let frames = texts(&outbox);
                assert_eq!(
                    frames.last().unwrap()["event"],
                    "pusher_internal:subscription_succeeded"
                );
            }
            conn.on_text(
                &outbox,
                r#"{"event":"pusher:subscribe","data":{"channel":"one-more"}}"#,
            )
            .await;
            let refused = texts(&outbox);
            assert_eq!(
                refused.last().unwrap()["event"],
                "pusher:subscription_error"
            );
            // Unsubscribing makes room again.
            conn.on_text(
                &outbox,
                r#"{"event":"pusher:unsubscribe","data":{"channel":"c0"}}"#,
            )
            .await;
            conn.on_text(
                &outbox,
                r#"{"event":"pusher:subscribe","data":{"channel":"one-more"}}"#,
            )
            .await;
            assert_eq!(
                texts(&outbox).last().unwrap()["event"],
                "pusher_internal:subscription_succeeded"
            );
            assert_eq!(conn.state.channels.local_counts().0, MAX_SUBSCRIPTIONS);
            conn.release();
            assert_eq!(conn.state.channels.local_counts().0, 0);
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_client_frame_is_handled_without_a_panic(
            text in "\\PC{0,60}|\\{\"event\":\"(pusher:subscribe|pusher:signin|client-x|pusher:ping|pusher:unsubscribe)\",\"channel\":\"[-a-z#]{0,12}\",\"data\":(\\{\"channel\":\"[-a-z#]{0,10}\",\"auth\":\"[a-z:0-9]{0,8}\"\\}|\"[a-z{}]{0,6}\"|\\{\"user_data\":\"[a-z{}]{0,8}\",\"auth\":\"k:[0-9a-f]{0,6}\"\\}|null|[0-9]{1,3})\\}"
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async {
                let (mut conn, outbox) = test_conn();
                let _ = conn.on_text(&outbox, &text).await;
                conn.release();
            });
        }
    }
}
