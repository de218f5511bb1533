//! The bodies of the HTTP API's `POST /apps/{id}/events` and `/batch_events`, parsed
//! and checked before anything is published (PUSHER-NOTES §3.6; Pusher's HTTP API
//! reference "Publish events" / "Publish batch events"):
//!
//! - events: `{"name", "data": "<string>", "channels": [...] | "channel": "...",
//!   "socket_id"?, "info"?}`;
//! - batch: `{"batch": [{"channel", "name", "data", "socket_id"?, "info"?}, ...]}`.
//!
//! Unknown fields are ignored (the Node SDK spreads its `params` into the body).
//! A whole request is checked before any event of it is published: a bad event
//! in a batch publishes none.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::push::{ConnKey, EventName};
use crate::pusher::channel::{Channel, ChannelError};

/// Longest event name, in bytes (the SDKs' limit: 200 characters).
pub const MAX_EVENT_NAME_BYTES: usize = crate::push::MAX_EVENT_BYTES;

/// What one API key may ask of one request (from the app's settings and
/// `server.max_message_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Channels per event (`max_channels_per_event`, Pusher: 100).
    pub max_channels: usize,
    /// Bytes of one event's `data` string (`server.max_message_bytes`; Pusher: 10 KB).
    pub max_data_bytes: usize,
    /// Events per batch (`max_batch`, Pusher: 10).
    pub max_batch: usize,
}

impl Limits {
    /// Bytes of a request body that can hold a valid single event: its data (which
    /// JSON escaping may double), its channels and name, and slack for the rest.
    pub fn event_body_bytes(&self) -> usize {
        self.max_data_bytes
            .saturating_mul(2)
            .saturating_add(self.max_channels.saturating_mul(2 * 130))
            .saturating_add(4096)
    }

    /// Bytes of a batch body that can hold `max_batch` valid events.
    pub fn batch_body_bytes(&self) -> usize {
        self.max_batch.saturating_mul(
            self.max_data_bytes
                .saturating_mul(2)
                .saturating_add(2 * 130 + 1024),
        )
    }
}

/// The `info` attributes a caller asked for (`info=user_count,subscription_count`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Info {
    /// Distinct users (presence channels only).
    pub user_count: bool,
    /// Subscribed connections.
    pub subscription_count: bool,
}

impl Info {
    /// A comma-separated list of `user_count` and `subscription_count`; an empty
    /// list or none asks for nothing. Other names are refused (400).
    pub fn parse(text: Option<&str>) -> Result<Self, TriggerError> {
        let mut info = Info::default();
        for attribute in text.unwrap_or("").split(',').map(str::trim) {
            match attribute {
                "" => {}
                "user_count" => info.user_count = true,
                "subscription_count" => info.subscription_count = true,
                other => return Err(TriggerError::Info(other.chars().take(64).collect())),
            }
        }
        Ok(info)
    }

    pub fn any(&self) -> bool {
        self.user_count || self.subscription_count
    }
}

/// One event to publish, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Distinct channels, in the order given.
    pub channels: Vec<Channel>,
    /// An [`EventName`] (1..=[`MAX_EVENT_NAME_BYTES`] bytes, no control characters),
    /// not `pusher:` or `pusher_internal:` (those names are the protocol's own).
    pub name: EventName,
    /// The `data` string as sent; subscribers receive it as the frame's `data`,
    /// native page connections as the frame text.
    pub data: String,
    /// The connection that does not get it (`socket_id`, Laravel's `toOthers()`).
    pub exclude: Option<ConnKey>,
    pub info: Info,
}

/// Why a body is refused; [`TriggerError::status`] is the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    #[error("malformed JSON body: {0}")]
    Json(String),
    #[error("give \"channels\" (an array) or \"channel\", not both")]
    BothChannelFields,
    #[error("no channel given: \"channels\" must name at least one")]
    NoChannels,
    #[error("too many channels: {given}, at most {max} per event")]
    TooManyChannels { given: usize, max: usize },
    #[error("channel {channel:?}: {error}")]
    Channel {
        channel: String,
        error: ChannelError,
    },
    #[error("an event on an encrypted channel must name that channel only")]
    EncryptedWithOthers,
    #[error("event name must be 1..={MAX_EVENT_NAME_BYTES} bytes without control characters")]
    Name,
    #[error("event names starting with pusher: or pusher_internal: are reserved")]
    ReservedName,
    #[error("data must be a string (the SDKs JSON-encode objects)")]
    DataNotString,
    #[error("data is {given} bytes, over the limit of {max} (server.max_message_bytes)")]
    DataTooLarge { given: usize, max: usize },
    #[error("socket_id must be two numbers joined by a dot, as connection_established gave it")]
    SocketId,
    #[error("unknown info attribute {0:?} (user_count, subscription_count)")]
    Info(String),
    #[error("too many events: {given}, at most {max} per batch")]
    TooManyEvents { given: usize, max: usize },
}

impl TriggerError {
    /// 413 for data over the limit, 400 for everything else.
    pub fn status(&self) -> u16 {
        match self {
            Self::DataTooLarge { .. } => 413,
            _ => 400,
        }
    }
}

/// An event object as sent. `data` is kept raw to tell a string from other JSON.
#[derive(Deserialize)]
struct RawEvent<'a> {
    name: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

#[derive(Deserialize)]
struct RawBatch<'a> {
    #[serde(borrow)]
    batch: Vec<RawEvent<'a>>,
}

/// Parses and checks a `POST /events` body.
pub fn parse_event(body: &[u8], limits: &Limits) -> Result<Event, TriggerError> {
    let raw: RawEvent<'_> = serde_json::from_slice(crate::edge::strip_bom_bytes(body))
        .map_err(|e| TriggerError::Json(e.to_string()))?;
    check(raw, limits)
}

/// Parses and checks a `POST /batch_events` body: every event, before any is
/// published.
pub fn parse_batch(body: &[u8], limits: &Limits) -> Result<Vec<Event>, TriggerError> {
    let raw: RawBatch<'_> = serde_json::from_slice(crate::edge::strip_bom_bytes(body))
        .map_err(|e| TriggerError::Json(e.to_string()))?;
    if raw.batch.len() > limits.max_batch {
        return Err(TriggerError::TooManyEvents {
            given: raw.batch.len(),
            max: limits.max_batch,
        });
    }
    raw.batch.into_iter().map(|e| check(e, limits)).collect()
}

fn check(raw: RawEvent<'_>, limits: &Limits) -> Result<Event, TriggerError> {
    let names = match (raw.channels, raw.channel) {
        (Some(_), Some(_)) => return Err(TriggerError::BothChannelFields),
        (Some(many), None) => many,
        (None, Some(one)) => vec![one],
        (None, None) => Vec::new(),
    };
    if names.is_empty() {
        return Err(TriggerError::NoChannels);
    }
    if names.len() > limits.max_channels {
        return Err(TriggerError::TooManyChannels {
            given: names.len(),
            max: limits.max_channels,
        });
    }
    let mut channels: Vec<Channel> = Vec::with_capacity(names.len());
    for name in names {
        let channel = Channel::parse(&name).map_err(|error| TriggerError::Channel {
            channel: name.chars().take(140).collect(),
            error,
        })?;
        if !channels.contains(&channel) {
            channels.push(channel);
        }
    }
    if channels.len() > 1 && channels.iter().any(|c| c.kind().is_encrypted()) {
        return Err(TriggerError::EncryptedWithOthers);
    }
    let name = check_name(&raw.name)?;
    let data = raw.data.get();
    if !data.starts_with('"') {
        return Err(TriggerError::DataNotString);
    }
    let data: String = serde_json::from_str(data).map_err(|_| TriggerError::DataNotString)?;
    if data.len() > limits.max_data_bytes {
        return Err(TriggerError::DataTooLarge {
            given: data.len(),
            max: limits.max_data_bytes,
        });
    }
    let exclude = match raw.socket_id.as_deref() {
        None | Some("") => None,
        Some(text) => Some(ConnKey::parse(text).map_err(|_| TriggerError::SocketId)?),
    };
    Ok(Event {
        channels,
        name,
        data,
        exclude,
        info: Info::parse(raw.info.as_deref())?,
    })
}

fn check_name(name: &str) -> Result<EventName, TriggerError> {
    let checked = EventName::try_from(name).map_err(|_| TriggerError::Name)?;
    // pusher-js handles `pusher_internal:*` on a channel itself (members, the
    // subscription state) and Echo reads `pusher:subscription_error`: an API event
    // with those names would corrupt the clients' state.
    if name.starts_with("pusher:") || name.starts_with("pusher_internal:") {
        return Err(TriggerError::ReservedName);
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_channels: 3,
        max_data_bytes: 16,
        max_batch: 2,
    };

    fn event(body: &str) -> Result<Event, TriggerError> {
        parse_event(body.as_bytes(), &LIMITS)
    }

    #[test]
    fn an_event_as_the_sdks_send_it() {
        let e = event(
            r#"{"name":"Ev","data":"{\"a\":1}","channels":["a","private-b","a"],"socket_id":"12.34","info":"subscription_count"}"#,
        )
        .unwrap();
        assert_eq!(
            e.channels.iter().map(Channel::as_str).collect::<Vec<_>>(),
            ["a", "private-b"]
        );
        assert_eq!(e.name.as_str(), "Ev");
        assert_eq!(e.data, r#"{"a":1}"#);
        assert_eq!(
            e.exclude,
            Some(ConnKey {
                node: 12,
                local: 34
            })
        );
        assert_eq!(
            e.info,
            Info {
                user_count: false,
                subscription_count: true
            }
        );
        let e = event(r#"{"name":"Ev","data":"x","channel":"c","extra":[1]}"#).unwrap();
        assert_eq!(e.channels.len(), 1);
        assert_eq!(e.exclude, None);
    }

    #[test]
    fn refusals_name_the_problem() {
        for (body, want) in [
            (r#"{"name":"e","data":"x"}"#, TriggerError::NoChannels),
            (
                r#"{"name":"e","data":"x","channels":[]}"#,
                TriggerError::NoChannels,
            ),
            (
                r#"{"name":"e","data":"x","channels":["a"],"channel":"b"}"#,
                TriggerError::BothChannelFields,
            ),
            (
                r#"{"name":"e","data":"x","channels":["a","b","c","d"]}"#,
                TriggerError::TooManyChannels { given: 4, max: 3 },
            ),
            (
                r#"{"name":"e","data":{"a":1},"channel":"a"}"#,
                TriggerError::DataNotString,
            ),
            (
                r#"{"name":"e","data":"01234567890123456","channel":"a"}"#,
                TriggerError::DataTooLarge { given: 17, max: 16 },
            ),
            (
                r#"{"name":"e","data":"x","channel":"a","socket_id":"abc"}"#,
                TriggerError::SocketId,
            ),
            (
                r#"{"name":"","data":"x","channel":"a"}"#,
                TriggerError::Name,
            ),
            (
                r#"{"name":"pusher_internal:member_added","data":"x","channel":"a"}"#,
                TriggerError::ReservedName,
            ),
            (
                r#"{"name":"e","data":"x","channels":["private-encrypted-a","b"]}"#,
                TriggerError::EncryptedWithOthers,
            ),
            (
                r#"{"name":"e","data":"x","channel":"a","info":"bogus"}"#,
                TriggerError::Info("bogus".into()),
            ),
        ] {
            assert_eq!(event(body), Err(want.clone()), "{body}");
            assert_eq!(
                want.status(),
                if matches!(want, TriggerError::DataTooLarge { .. }) {
                    413
                } else {
                    400
                }
            );
        }
        assert!(matches!(
            event(r#"{"name":"e","data":"x","channel":"a b"}"#),
            Err(TriggerError::Channel { .. })
        ));
        assert!(matches!(event("{"), Err(TriggerError::Json(_))));
    }

    #[test]
    fn batches_are_checked_whole() {
        let ok = br#"{"batch":[{"channel":"a","name":"e","data":"1"},{"channel":"b","name":"f","data":"2","info":"user_count"}]}"#;
        let events = parse_batch(ok, &LIMITS).unwrap();
        assert_eq!(events.len(), 2);
        assert!(events[1].info.user_count);
        let three = br#"{"batch":[{"channel":"a","name":"e","data":"1"},{"channel":"a","name":"e","data":"1"},{"channel":"a","name":"e","data":"1"}]}"#;
        assert_eq!(
            parse_batch(three, &LIMITS),
            Err(TriggerError::TooManyEvents { given: 3, max: 2 })
        );
        let one_bad = br#"{"batch":[{"channel":"a","name":"e","data":"1"},{"channel":"a b","name":"e","data":"1"}]}"#;
        assert!(parse_batch(one_bad, &LIMITS).is_err());
    }

    #[test]
    fn body_limits_fit_a_valid_request() {
        let limits = Limits {
            max_channels: 100,
            max_data_bytes: 10_240,
            max_batch: 10,
        };
        let channels: Vec<String> = (0..100).map(|i| format!("{i:0>128}")).collect();
        let data = "\"".repeat(10_240);
        let body = serde_json::json!({"name": "e".repeat(200), "data": data, "channels": channels, "socket_id": "1.2", "info": "user_count,subscription_count"});
        let text = body.to_string();
        assert!(text.len() <= limits.event_body_bytes(), "{}", text.len());
        assert!(parse_event(text.as_bytes(), &limits).is_ok());
        let one = serde_json::json!({"channel": "c".repeat(128), "name": "e".repeat(200), "data": data, "socket_id": "1.2", "info": "user_count,subscription_count"});
        let batch = serde_json::json!({"batch": vec![one; 10]}).to_string();
        assert!(batch.len() <= limits.batch_body_bytes(), "{}", batch.len());
        assert!(parse_batch(batch.as_bytes(), &limits).is_ok());
    }

    proptest! {
        /// Any bytes: an event or a typed refusal, never a panic; a parsed event
        /// holds every rule.
        #[test]
        fn any_body(body in proptest::collection::vec(any::<u8>(), 0..200), text in "\\PC{0,200}") {
            for bytes in [body.as_slice(), text.as_bytes()] {
                if let Ok(e) = parse_event(bytes, &LIMITS) {
                    prop_assert!(!e.channels.is_empty() && e.channels.len() <= LIMITS.max_channels);
                    prop_assert!(e.data.len() <= LIMITS.max_data_bytes);
                }
                let _ = parse_batch(bytes, &LIMITS);
            }
        }

        #[test]
        fn any_event_fields(name in "\\PC{0,210}", data in "\\PC{0,20}", channel in "[-a-z#_=@,.;: ]{0,10}", socket in "[0-9. a]{0,8}", info in "[a-z_, ]{0,30}") {
            let body = serde_json::json!({"name": name, "data": data, "channel": channel, "socket_id": socket, "info": info});
            if let Ok(e) = parse_event(body.to_string().as_bytes(), &LIMITS) {
                prop_assert!(check_name(&e.name).is_ok());
                prop_assert_eq!(e.channels.len(), 1);
                prop_assert_eq!(e.data, data);
            }
        }
    }
}
