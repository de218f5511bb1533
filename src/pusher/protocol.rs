//! The Pusher Channels wire protocol, version 7 (PUSHER-NOTES §3.1–§3.4; pusher-js
//! `src/core/connection/protocol/protocol.ts`): client frames in, server frames out,
//! and the error/close codes.
//!
//! Frames are text JSON `{"event","channel"?,"data"?}`. pusher-js sends
//! `pusher:subscribe`'s `data` as an object and a client event's `data` as any JSON;
//! we accept a JSON-encoded string for the `pusher:*` ones too (older clients). The
//! server's `data` is a JSON-encoded *string* ("double encoding": pusher-js
//! `JSON.parse`s it and falls back to the raw string), except `pusher:error`'s,
//! which is an object as Pusher's own service sends it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A frame a client sent.
#[derive(Debug, Clone)]
pub enum ClientFrame {
    /// `pusher:subscribe` `{channel, auth?, channel_data?}`. The channel is not
    /// validated here: a bad name answers `pusher:subscription_error` for it. An
    /// empty `auth` (what pusher-js sends for public channels) is `None`.
    Subscribe {
        channel: String,
        auth: Option<String>,
        /// Presence: the exact JSON text the app signed (`{"user_id",…}`).
        channel_data: Option<String>,
    },
    /// `pusher:unsubscribe` `{channel}` (no reply).
    Unsubscribe { channel: String },
    /// `pusher:ping`: answer [`pong`].
    Ping,
    /// `pusher:pong`: the answer to our [`ping`].
    Pong,
    /// `pusher:signin` `{user_data, auth}`.
    Signin { user_data: String, auth: String },
    /// `client-*` on a channel; `data` is relayed as sent.
    ClientEvent {
        event: String,
        channel: String,
        data: Box<RawValue>,
    },
    /// Any other event name (ignored, as Pusher does).
    Other { event: String },
}

impl PartialEq for ClientFrame {
    fn eq(&self, other: &Self) -> bool {
        // RawValue has no PartialEq: a client event's data compares as text.
        use ClientFrame::*;
        match (self, other) {
            (
                Subscribe {
                    channel,
                    auth,
                    channel_data,
                },
                Subscribe {
                    channel: c,
                    auth: a,
                    channel_data: d,
                },
            ) => channel == c && auth == a && channel_data == d,
            (Unsubscribe { channel }, Unsubscribe { channel: c }) => channel == c,
            (Ping, Ping) | (Pong, Pong) => true,
            (
                Signin { user_data, auth },
                Signin {
                    user_data: u,
                    auth: a,
                },
            ) => user_data == u && auth == a,
            (
                ClientEvent {
                    event,
                    channel,
                    data,
                },
                ClientEvent {
                    event: e,
                    channel: c,
                    data: d,
                },
            ) => event == e && channel == c && data.get() == d.get(),
            (Other { event }, Other { event: e }) => event == e,
            _ => false,
        }
    }
}

/// Why a client frame is not understood; the text goes in a `pusher:error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not a JSON object with an event: {0}")]
    NotJson(String),
    #[error("{event}: {problem}")]
    Field {
        event: String,
        problem: &'static str,
    },
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SubscribeData {
    channel: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    channel_data: Option<String>,
}

#[derive(Deserialize)]
struct ChannelData {
    channel: String,
}

#[derive(Deserialize)]
struct SigninData {
    user_data: String,
    auth: String,
}

/// Parses one text frame. Never panics (proptested).
pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    let envelope: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| FrameError::NotJson(e.to_string()))?;
    let event = envelope.event.into_owned();
    let field = |problem| FrameError::Field {
        event: event.clone(),
        problem,
    };
    match event.as_str() {
        "pusher:subscribe" => {
            let data: SubscribeData = object(envelope.data)
                .ok_or_else(|| field("data must be {channel, auth?, channel_data?}"))?;
            Ok(ClientFrame::Subscribe {
                channel: data.channel,
                // pusher-js sends `"auth":""` on public channels: that is no auth.
                auth: data.auth.filter(|auth| !auth.is_empty()),
                channel_data: data.channel_data,
            })
        }
        "pusher:unsubscribe" => {
            let data: ChannelData =
                object(envelope.data).ok_or_else(|| field("data must be {channel}"))?;
            Ok(ClientFrame::Unsubscribe {
                channel: data.channel,
            })
        }
        "pusher:ping" => Ok(ClientFrame::Ping),
        "pusher:pong" => Ok(ClientFrame::Pong),
        "pusher:signin" => {
            let data: SigninData =
                object(envelope.data).ok_or_else(|| field("data must be {user_data, auth}"))?;
            Ok(ClientFrame::Signin {
                user_data: data.user_data,
                auth: data.auth,
            })
        }
        name if name.starts_with("client-") => {
            let channel = envelope
                .channel
                .ok_or_else(|| field("a client event needs a channel"))?;
            let data = envelope
                .data
                .map_or_else(
                    || RawValue::from_string("null".into()),
                    |d| Ok(d.to_owned()),
                )
                .map_err(|_| field("data is not JSON"))?;
            Ok(ClientFrame::ClientEvent {
                event: event.clone(),
                channel,
                data,
            })
        }
        _ => Ok(ClientFrame::Other { event }),
    }
}

/// `data` as an object, or as a string holding a JSON object.
fn object<T: serde::de::DeserializeOwned>(data: Option<&RawValue>) -> Option<T> {
    let raw = data?.get();
    serde_json::from_str::<T>(raw).ok().or_else(|| {
        let text: String = serde_json::from_str(raw).ok()?;
        serde_json::from_str(&text).ok()
    })
}

/// A server frame whose `data` is a JSON-encoded string.
#[derive(Serialize)]
struct Frame<'a> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

fn frame(event: &str, channel: Option<&str>, data: Option<&str>) -> String {
    let frame = Frame {
        event,
        channel,
        data,
        user_id: None,
    };
    serde_json::to_string(&frame).unwrap_or_default()
}

fn json(value: &serde_json::Value) -> String {
    value.to_string()
}

/// `pusher:connection_established` with `{socket_id, activity_timeout}` (seconds;
/// pusher-js throws without it). `socket_id` must match `^\d+\.\d+$` (§3.1).
pub fn connection_established(socket_id: &str, activity_timeout_secs: u64) -> String {
    let data =
        serde_json::json!({"socket_id": socket_id, "activity_timeout": activity_timeout_secs});
    frame("pusher:connection_established", None, Some(&json(&data)))
}

/// `pusher:ping` (`data` `{}`): a client answers `pusher:pong`.
pub fn ping() -> String {
    frame("pusher:ping", None, Some("{}"))
}

/// `pusher:pong` (`data` `{}`), the answer to `pusher:ping`.
pub fn pong() -> String {
    frame("pusher:pong", None, Some("{}"))
}

/// `pusher:error` `{"message","code"}` — `data` is an object here, as Pusher sends it.
pub fn error(message: &str, code: Option<PusherCode>) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<u16>,
        message: &'a str,
    }
    #[derive(Serialize)]
    struct Error<'a> {
        event: &'a str,
        data: Data<'a>,
    }
    let data = Data {
        code: code.map(PusherCode::code),
        message,
    };
    serde_json::to_string(&Error {
        event: "pusher:error",
        data,
    })
    .unwrap_or_default()
}

/// Presence members for `subscription_succeeded`: unique users, each with the
/// `user_info` JSON from their `channel_data` (`null` when none).
#[derive(Debug, Clone, Default)]
pub struct Presence<'a> {
    pub members: Vec<(&'a str, &'a RawValue)>,
}

/// `pusher_internal:subscription_succeeded`. Public/private: `data` `"{}"`;
/// presence: `{"presence":{"ids":[…],"hash":{id:info},"count":n}}` (pusher-js
/// `presence_channel.ts` reads `data.presence.hash` and `.count`).
pub fn subscription_succeeded(channel: &str, presence: Option<&Presence<'_>>) -> String {
    let data = match presence {
        None => "{}".to_string(),
        Some(presence) => {
            let ids: Vec<&str> = presence.members.iter().map(|(id, _)| *id).collect();
            let hash: serde_json::Map<String, serde_json::Value> = presence
                .members
                .iter()
                .map(|(id, info)| {
                    let info = serde_json::from_str(info.get()).unwrap_or(serde_json::Value::Null);
                    ((*id).to_string(), info)
                })
                .collect();
            json(&serde_json::json!({"presence": {"ids": ids, "hash": hash, "count": ids.len()}}))
        }
    };
    frame(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        Some(&data),
    )
}

/// `pusher:subscription_error` `{"type","error","status"}` (soketi's shape;
/// laravel-echo's `.error()` binds this event). `kind` e.g. `"AuthError"`.
pub fn subscription_error(channel: &str, kind: &str, message: &str, status: u16) -> String {
    let data = serde_json::json!({"type": kind, "error": message, "status": status});
    frame(
        "pusher:subscription_error",
        Some(channel),
        Some(&json(&data)),
    )
}

/// `pusher_internal:member_added` `{"user_id","user_info"}` (a user's first connection).
pub fn member_added(channel: &str, user_id: &str, user_info: &RawValue) -> String {
    let info: serde_json::Value = serde_json::from_str(user_info.get()).unwrap_or_default();
    let data = serde_json::json!({"user_id": user_id, "user_info": info});
    frame(
        "pusher_internal:member_added",
        Some(channel),
        Some(&json(&data)),
    )
}

/// `pusher_internal:member_removed` `{"user_id"}` (a user's last connection left).
pub fn member_removed(channel: &str, user_id: &str) -> String {
    let data = serde_json::json!({"user_id": user_id});
    frame(
        "pusher_internal:member_removed",
        Some(channel),
        Some(&json(&data)),
    )
}

/// `pusher_internal:subscription_count` `{"subscription_count": n}`.
pub fn subscription_count(channel: &str, count: u64) -> String {
    let data = serde_json::json!({"subscription_count": count});
    frame(
        "pusher_internal:subscription_count",
        Some(channel),
        Some(&json(&data)),
    )
}

/// A channel event: `{"event","channel","data":"<data>"}`; `data` is the event's
/// text as published (an HTTP API `data` string, a native push's payload), sent as
/// a JSON string. Framed once per channel and shared by every subscriber.
pub fn channel_event(event: &str, channel: &str, data: &str) -> String {
    frame(event, Some(channel), Some(data))
}

/// A channel event from the bus (a native push, an API event, a relayed client
/// event): [`channel_event`] plus `user_id` when a presence client event carries
/// one. `data` goes out as a JSON string; pusher-js `JSON.parse`s it back, so a
/// client event's object data arrives as the object it was.
pub fn pushed_event(event: &str, channel: &str, data: &str, user_id: Option<&str>) -> String {
    let frame = Frame {
        event,
        channel: Some(channel),
        data: Some(data),
        user_id,
    };
    serde_json::to_string(&frame).unwrap_or_default()
}

/// A relayed `client-*` event: `data` as the sender sent it (any JSON), plus
/// `user_id` on presence channels (pusher-js copies it to the event).
pub fn client_event(event: &str, channel: &str, data: &RawValue, user_id: Option<&str>) -> String {
    #[derive(Serialize)]
    struct Relay<'a> {
        event: &'a str,
        channel: &'a str,
        data: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<&'a str>,
    }
    serde_json::to_string(&Relay {
        event,
        channel,
        data,
        user_id,
    })
    .unwrap_or_default()
}

/// `pusher:cache_miss` for a cache channel with no kept event.
pub fn cache_miss(channel: &str) -> String {
    frame("pusher:cache_miss", Some(channel), Some("{}"))
}

/// `pusher:signin_success` `{"user_data": "<the signed string>"}` (pusher-js
/// `user.ts` parses `user_data` again).
pub fn signin_success(user_data: &str) -> String {
    let data = serde_json::json!({"user_data": user_data});
    frame("pusher:signin_success", None, Some(&json(&data)))
}

/// Pusher's error and close codes (PUSHER-NOTES §3.4, from the protocol page's
/// table; what pusher-js does with each is `protocol.ts getCloseAction`). Since
/// protocol 6 the code travels in the WebSocket close frame; we also send a
/// `pusher:error` with it first, as soketi and Reverb do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PusherCode {
    /// 4000: TLS only; pusher-js switches to TLS and retries at once.
    SslOnly,
    /// 4001: no app with this key. 4001–4099: pusher-js does not reconnect.
    AppNotFound,
    /// 4003: the app is disabled (`enabled = false`).
    AppDisabled,
    /// 4004: the app's `max_connections` is reached.
    OverQuota,
    /// 4005: not `/app/{key}`.
    PathNotFound,
    /// 4006: `?protocol=` is not a number.
    InvalidVersionFormat,
    /// 4007: `?protocol=` names a version we do not speak.
    UnsupportedProtocol,
    /// 4008: no `?protocol=`.
    NoProtocol,
    /// 4009: unauthorized (e.g. sign-in refused). Never for a shutdown: pusher-js
    /// would not come back (sockudo PR #144).
    Unauthorized,
    /// 4100: over capacity; 4100–4199: pusher-js retries after 1 s.
    OverCapacity,
    /// 4200: closing for a restart or shutdown; 4200–4299: pusher-js reconnects at once.
    Restart,
    /// 4201: no pong (or any frame) within the activity window.
    PongTimeout,
    /// 4202: closed after a long inactivity.
    Inactive,
    /// 4301: a client event was refused (rate, size, not allowed). Send it as a
    /// `pusher:error` only, **never as a close**: pusher-js stops for good on ≥4300.
    ClientEventRejected,
}

impl PusherCode {
    pub fn code(self) -> u16 {
        match self {
            Self::SslOnly => 4000,
            Self::AppNotFound => 4001,
            Self::AppDisabled => 4003,
            Self::OverQuota => 4004,
            Self::PathNotFound => 4005,
            Self::InvalidVersionFormat => 4006,
            Self::UnsupportedProtocol => 4007,
            Self::NoProtocol => 4008,
            Self::Unauthorized => 4009,
            Self::OverCapacity => 4100,
            Self::Restart => 4200,
            Self::PongTimeout => 4201,
            Self::Inactive => 4202,
            Self::ClientEventRejected => 4301,
        }
    }

    /// The text for `pusher:error` and the close reason.
    pub fn message(self) -> &'static str {
        match self {
            Self::SslOnly => "Use TLS",
            Self::AppNotFound => "App key does not exist",
            Self::AppDisabled => "App is disabled",
            Self::OverQuota => "App connection quota reached",
            Self::PathNotFound => "Path not found: use /app/{key}",
            Self::InvalidVersionFormat => "Invalid protocol version format",
            Self::UnsupportedProtocol => "Unsupported protocol version",
            Self::NoProtocol => "No protocol version given",
            Self::Unauthorized => "Connection is unauthorized",
            Self::OverCapacity => "Server over capacity, retry later",
            Self::Restart => "Server is restarting, reconnect",
            Self::PongTimeout => "Pong reply not received",
            Self::Inactive => "Closed after inactivity",
            Self::ClientEventRejected => "Client event rejected",
        }
    }

    /// Whether the connection is closed with this code (every code but 4301).
    pub fn closes(self) -> bool {
        self != Self::ClientEventRejected
    }
}

/// The protocol versions we speak (pusher-js 8 sends 7; close codes in the close
/// frame need ≥ 6).
pub const PROTOCOLS: std::ops::RangeInclusive<u32> = 5..=7;

/// Checks the `?protocol=` query value: none → 4008, not a number → 4006, outside
/// [`PROTOCOLS`] → 4007.
pub fn check_protocol(value: Option<&str>) -> Result<u32, PusherCode> {
    let value = value.ok_or(PusherCode::NoProtocol)?;
    let version: u32 = value
        .parse()
        .map_err(|_| PusherCode::InvalidVersionFormat)?;
    if PROTOCOLS.contains(&version) {
        Ok(version)
    } else {
        Err(PusherCode::UnsupportedProtocol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_what_pusher_js_sends() {
        let sub = r#"{"event":"pusher:subscribe","data":{"auth":"k:s","channel":"presence-a","channel_data":"{\"user_id\":\"1\"}"}}"#;
        assert_eq!(
            parse(sub).unwrap(),
            ClientFrame::Subscribe {
                channel: "presence-a".into(),
                auth: Some("k:s".into()),
                channel_data: Some(r#"{"user_id":"1"}"#.into()),
            }
        );
        let sub = r#"{"event":"pusher:subscribe","data":{"auth":"","channel":"a"}}"#;
        assert!(matches!(
            parse(sub).unwrap(),
            ClientFrame::Subscribe { auth: None, .. }
        ));
        let sub = r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#;
        assert!(matches!(
            parse(sub).unwrap(),
            ClientFrame::Subscribe { auth: None, .. }
        ));
        assert_eq!(
            parse(r#"{"event":"pusher:unsubscribe","data":{"channel":"a"}}"#).unwrap(),
            ClientFrame::Unsubscribe {
                channel: "a".into()
            }
        );
        assert_eq!(
            parse(r#"{"event":"pusher:ping","data":{}}"#).unwrap(),
            ClientFrame::Ping
        );
        assert_eq!(
            parse(r#"{"event":"pusher:signin","data":{"user_data":"{}","auth":"k:s"}}"#).unwrap(),
            ClientFrame::Signin {
                user_data: "{}".into(),
                auth: "k:s".into()
            }
        );
        let ClientFrame::ClientEvent {
            event,
            channel,
            data,
        } = parse(r#"{"event":"client-typing","channel":"private-a","data":{"x":[1, 2]}}"#)
            .unwrap()
        else {
            panic!("not a client event")
        };
        assert_eq!(
            (event.as_str(), channel.as_str(), data.get()),
            ("client-typing", "private-a", r#"{"x":[1, 2]}"#)
        );
        assert!(matches!(
            parse(r#"{"event":"x"}"#).unwrap(),
            ClientFrame::Other { .. }
        ));
        assert!(matches!(parse("nope"), Err(FrameError::NotJson(_))));
        assert!(matches!(
            parse(r#"{"event":"pusher:subscribe"}"#),
            Err(FrameError::Field { .. })
        ));
        assert!(matches!(
            parse(r#"{"event":"client-x","data":1}"#),
            Err(FrameError::Field { .. })
        ));
    }

    #[test]
    fn exact_server_frames() {
        assert_eq!(
            connection_established("1.2", 30),
            r#"{"event":"pusher:connection_established","data":"{\"activity_timeout\":30,\"socket_id\":\"1.2\"}"}"#
        );
        assert_eq!(pong(), r#"{"event":"pusher:pong","data":"{}"}"#);
        assert_eq!(
            error(
                "Client event rejected",
                Some(PusherCode::ClientEventRejected)
            ),
            r#"{"event":"pusher:error","data":{"code":4301,"message":"Client event rejected"}}"#
        );
        assert_eq!(
            channel_event("scenecast.push", "home", r#"{"a":"é"}"#),
            r#"{"event":"scenecast.push","channel":"home","data":"{\"a\":\"é\"}"}"#
        );
        let info = RawValue::from_string(r#"{"name":"Ann"}"#.into()).unwrap();
        let presence = Presence {
            members: vec![("7", &info)],
        };
        assert_eq!(
            subscription_succeeded("presence-r", Some(&presence)),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"presence-r","data":"{\"presence\":{\"count\":1,\"hash\":{\"7\":{\"name\":\"Ann\"}},\"ids\":[\"7\"]}}"}"#
        );
        assert_eq!(
            member_removed("presence-r", "7"),
            r#"{"event":"pusher_internal:member_removed","channel":"presence-r","data":"{\"user_id\":\"7\"}"}"#
        );
        let data = RawValue::from_string("[1]".into()).unwrap();
        assert_eq!(
            client_event("client-a", "presence-r", &data, Some("7")),
            r#"{"event":"client-a","channel":"presence-r","data":[1],"user_id":"7"}"#
        );
    }

    #[test]
    fn codes_and_protocol_versions() {
        assert_eq!(check_protocol(Some("7")), Ok(7));
        assert_eq!(check_protocol(None), Err(PusherCode::NoProtocol));
        assert_eq!(
            check_protocol(Some("x")),
            Err(PusherCode::InvalidVersionFormat)
        );
        assert_eq!(
            check_protocol(Some("8")),
            Err(PusherCode::UnsupportedProtocol)
        );
        assert!(!PusherCode::ClientEventRejected.closes());
        assert_eq!(PusherCode::Restart.code(), 4200);
    }

    proptest! {
        /// Any text: a frame or a typed error, never a panic.
        #[test]
        fn any_text(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }

        /// Any envelope-shaped text with arbitrary event/data.
        #[test]
        fn any_envelope(event in "(pusher:(subscribe|unsubscribe|signin|ping)|client-[a-z]{0,3}|[a-z:]{0,8})",
                        data in "\\PC{0,60}", channel in proptest::option::of("\\PC{0,10}")) {
            let mut frame = serde_json::json!({"event": event, "data": data});
            if let (Some(channel), Some(map)) = (channel, frame.as_object_mut()) {
                map.insert("channel".into(), channel.into());
            }
            let _ = parse(&frame.to_string());
            let raw = format!(r#"{{"event":{},"data":{}}}"#, serde_json::Value::from(event), data);
            let _ = parse(&raw);
        }
    }
}
