//! `[pusher]` settings: the activity timeout and the `[[pusher.apps]]` table
//! (README "Pusher settings"). Checked at start by [`PusherSettings::validate`]
//! (called from `Settings::validate`; a bad value exits 2 naming the key).

use serde::{Deserialize, Deserializer, Serialize};

use crate::config::ConfigError;

/// The webhook event names scenecast sends: Pusher's (`pusher-http-node:
/// lib/webhook.js`) except `subscription_count`, which a receiver would wait for in
/// vain (see [`UNSENT_WEBHOOK_EVENTS`]).
pub const WEBHOOK_EVENTS: [&str; 6] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
];

/// Pusher webhook names scenecast does not send: asking for one is a config error
/// that says so, rather than a receiver silently never called.
pub const UNSENT_WEBHOOK_EVENTS: [&str; 1] = ["subscription_count"];

/// `[pusher]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PusherSettings {
    /// Seconds of silence after which a client pings (sent in
    /// `connection_established`); a client silent for longer plus a grace is
    /// closed with 4201.
    pub activity_timeout_secs: u64,
    /// The apps, each with its own key and secret. None = Pusher mode off.
    pub apps: Vec<PusherApp>,
}

impl Default for PusherSettings {
    fn default() -> Self {
        Self {
            activity_timeout_secs: 30,
            apps: Vec::new(),
        }
    }
}

/// One `[[pusher.apps]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PusherApp {
    /// The `app_id` of the HTTP API path `/apps/{id}/…` (a number in TOML is taken as
    /// its decimal text).
    #[serde(deserialize_with = "text")]
    pub id: String,
    /// The public key of the WebSocket path `/app/{key}` and of `auth_key`.
    #[serde(deserialize_with = "text")]
    pub key: String,
    /// Signs subscriptions, sign-ins, API requests and webhooks. Keep it secret.
    pub secret: String,
    /// `false` refuses new connections with 4003 and API calls with 403.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Whether clients may send `client-*` events on private and presence channels.
    #[serde(default)]
    pub client_events: bool,
    /// Connections of this app at most on each node (4004 over it); 0 = no cap.
    #[serde(default)]
    pub max_connections: usize,
    /// Client events per connection per second (4301 over it, as Pusher's 10/s).
    #[serde(default = "ten")]
    pub client_event_rate: u32,
    /// Channels one `POST /events` may name (Pusher's limit: 100).
    #[serde(default = "hundred")]
    pub max_channels_per_event: usize,
    /// Events one `POST /batch_events` may carry.
    #[serde(default = "ten_usize")]
    pub max_batch: usize,
    /// This app's public channels are the native pages (one namespace). Needed only
    /// when there are several apps; the only app is bridged anyway.
    #[serde(default)]
    pub bridge: bool,
    /// Where channel events are POSTed (see `webhook.rs`).
    #[serde(default)]
    pub webhooks: Vec<WebhookTarget>,
}

/// One webhook receiver of an app.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookTarget {
    /// `http://` or `https://` URL.
    pub url: String,
    /// The event names sent there ([`WEBHOOK_EVENTS`]); empty = all of them.
    #[serde(default)]
    pub events: Vec<String>,
}

impl WebhookTarget {
    /// Whether events named `name` go to this receiver.
    pub fn wants(&self, name: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == name)
    }
}

fn yes() -> bool {
    true
}
fn ten() -> u32 {
    10
}
fn ten_usize() -> usize {
    10
}
fn hundred() -> usize {
    100
}

/// A string, or an integer taken as its decimal text (`id = 1234`).
fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        S(String),
        U(u64),
    }
    Ok(match Text::deserialize(deserializer)? {
        Text::S(s) => s,
        Text::U(n) => n.to_string(),
    })
}

fn invalid(key: String, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

impl PusherSettings {
    /// Checks what types cannot: ids and keys unique and path-safe, secrets set (and
    /// not a published `demo-`/`change-me` one when `exposed`, i.e. `server.bind` is
    /// not loopback), limits in range, webhook URLs and event names valid, at most one
    /// bridged app.
    pub fn validate(&self, exposed: bool) -> Result<(), ConfigError> {
        if self.activity_timeout_secs == 0 || self.activity_timeout_secs > 3600 {
            return Err(invalid(
                "pusher.activity_timeout_secs".into(),
                "must be 1..=3600 (seconds; pusher-js pings after this much silence)",
            ));
        }
        for (i, app) in self.apps.iter().enumerate() {
            let key = |field: &str| format!("pusher.apps[{i}].{field}");
            for (field, value) in [("id", &app.id), ("key", &app.key)] {
                if value.is_empty() || value.len() > 128 {
                    return Err(invalid(key(field), "must be 1..=128 characters"));
                }
                if !value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                {
                    return Err(invalid(
                        key(field),
                        "may only contain a-z, A-Z, 0-9, -, _ and .",
                    ));
                }
            }
            if let Some(j) = self.apps.iter().take(i).position(|a| a.id == app.id) {
                return Err(invalid(
                    key("id"),
                    format!("{:?} is also pusher.apps[{j}].id", app.id),
                ));
            }
            if let Some(j) = self.apps.iter().take(i).position(|a| a.key == app.key) {
                return Err(invalid(
                    key("key"),
                    format!("{:?} is also pusher.apps[{j}].key", app.key),
                ));
            }
            if app.secret.is_empty() {
                return Err(invalid(key("secret"), "must not be empty"));
            }
            if app
                .secret
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(invalid(key("secret"), "may not contain whitespace"));
            }
            if exposed && crate::config::is_demo_token(&app.secret) {
                return Err(invalid(
                    key("secret"),
                    "is a published example secret and server.bind is not loopback: \
                     set your own secret or bind to 127.0.0.1",
                ));
            }
            if app.client_event_rate == 0 {
                return Err(invalid(
                    key("client_event_rate"),
                    "must be at least 1 (per second)",
                ));
            }
            if !(1..=100).contains(&app.max_channels_per_event) {
                return Err(invalid(key("max_channels_per_event"), "must be 1..=100"));
            }
            if app.max_batch == 0 {
                return Err(invalid(key("max_batch"), "must be at least 1"));
            }
            for (w, hook) in app.webhooks.iter().enumerate() {
                let field = |f: &str| key(&format!("webhooks[{w}].{f}"));
                match reqwest::Url::parse(&hook.url) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                    }
                    _ => {
                        return Err(invalid(
                            field("url"),
                            format!("{:?} is not an http:// or https:// URL", hook.url),
                        ));
                    }
                }
                if let Some(bad) = hook
                    .events
                    .iter()
                    .find(|e| !WEBHOOK_EVENTS.contains(&e.as_str()))
                {
                    let why = if UNSENT_WEBHOOK_EVENTS.contains(&bad.as_str()) {
                        "is a Pusher event scenecast does not send"
                    } else {
                        "is not a webhook event"
                    };
                    return Err(invalid(
                        field("events"),
                        format!("{bad:?} {why}; these are: {}", WEBHOOK_EVENTS.join(", ")),
                    ));
                }
            }
        }
        let bridged: Vec<usize> = (0..self.apps.len())
            .filter(|&i| self.apps.get(i).is_some_and(|a| a.bridge))
            .collect();
        if let [_, second, ..] = bridged.as_slice() {
            return Err(invalid(
                format!("pusher.apps[{second}].bridge"),
                "only one app may be bridged to the native pages",
            ));
        }
        Ok(())
    }

    /// The app whose public channels are the native pages: the one with
    /// `bridge = true`, else the only app.
    pub fn bridged(&self) -> Option<&PusherApp> {
        match self.apps.as_slice() {
            [only] => Some(only),
            apps => apps.iter().find(|a| a.bridge),
        }
    }

    /// The app with WebSocket key `key`.
    pub fn by_key(&self, key: &str) -> Option<&PusherApp> {
        self.apps.iter().find(|a| a.key == key)
    }

    /// The app with HTTP API id `id`.
    pub fn by_id(&self, id: &str) -> Option<&PusherApp> {
        self.apps.iter().find(|a| a.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> PusherSettings {
        toml::from_str(toml).unwrap()
    }

    const ONE: &str = r#"
        [[apps]]
        id = 1
        key = "k1"
        secret = "s1"
    "#;

    #[test]
    fn defaults_and_numeric_id() {
        let s = settings(ONE);
        let app = s.apps.first().unwrap();
        assert_eq!(
            (app.id.as_str(), app.enabled, app.client_events),
            ("1", true, false)
        );
        assert_eq!(
            (
                app.client_event_rate,
                app.max_channels_per_event,
                app.max_batch
            ),
            (10, 100, 10)
        );
        assert_eq!(s.activity_timeout_secs, 30);
        assert!(s.validate(true).is_ok());
        assert_eq!(s.bridged().unwrap().id, "1");
    }

    fn error(toml: &str, exposed: bool) -> String {
        settings(toml).validate(exposed).unwrap_err().to_string()
    }

    #[test]
    fn refusals_name_the_key() {
        let two = format!("{ONE}\n[[apps]]\nid = 1\nkey = \"k2\"\nsecret = \"s\"");
        assert!(
            error(&two, false).starts_with("pusher.apps[1].id:"),
            "{}",
            error(&two, false)
        );
        let two = format!("{ONE}\n[[apps]]\nid = 2\nkey = \"k1\"\nsecret = \"s\"");
        assert!(error(&two, false).starts_with("pusher.apps[1].key:"));
        let empty = "[[apps]]\nid = 1\nkey = \"k\"\nsecret = \"\"";
        assert!(error(empty, false).starts_with("pusher.apps[0].secret:"));
        let demo = "[[apps]]\nid = 1\nkey = \"k\"\nsecret = \"demo-secret\"";
        assert!(settings(demo).validate(false).is_ok());
        assert!(error(demo, true).starts_with("pusher.apps[0].secret:"));
        let hook = format!("{ONE}\nwebhooks = [{{ url = \"ftp://x\" }}]");
        assert!(error(&hook, false).starts_with("pusher.apps[0].webhooks[0].url:"));
        let hook = format!(
            "{ONE}\nwebhooks = [{{ url = \"http://x/h\", events = [\"channel_opened\"] }}]"
        );
        assert!(error(&hook, false).starts_with("pusher.apps[0].webhooks[0].events:"));
        let slash = "[[apps]]\nid = \"a/b\"\nkey = \"k\"\nsecret = \"s\"";
        assert!(error(slash, false).starts_with("pusher.apps[0].id:"));
        let two_bridges = "[[apps]]\nid = 1\nkey = \"a\"\nsecret = \"s\"\nbridge = true\n[[apps]]\nid = 2\nkey = \"b\"\nsecret = \"s\"\nbridge = true";
        assert!(error(two_bridges, false).starts_with("pusher.apps[1].bridge:"));
        assert!(
            error("activity_timeout_secs = 0", false).starts_with("pusher.activity_timeout_secs:")
        );
    }

    #[test]
    fn webhook_filter() {
        let all = WebhookTarget {
            url: "http://x".into(),
            events: vec![],
        };
        assert!(all.wants("member_added"));
        let some = WebhookTarget {
            url: "http://x".into(),
            events: vec!["channel_vacated".into()],
        };
        assert!(some.wants("channel_vacated") && !some.wants("channel_occupied"));
    }
}
