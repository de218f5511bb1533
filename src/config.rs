//! Settings: built-in defaults (serde `default`), then a TOML file, then
//! `SCENECAST__SECTION__KEY` environment variables, layered by the `config` crate and
//! validated once at start.
//!
//! The environment layer keeps every value the text typed (`try_parsing(false)`):
//! the field's type decides, so `SCENECAST__SERVER__NODE_ID=007` stays `"007"` and
//! `SCENECAST__SERVER__WORKERS=3` is the number 3. A list setting takes a TOML array
//! or one comma-separated string (`list`).
//!
//! Unknown keys are errors (`deny_unknown_fields`, for the file and the variables
//! alike): a typo must not turn into a silently ignored setting. Every error names the
//! key it is about, and where it was set: the variable, or the file and the line (the
//! crate keeps no positions, so the line is looked up in the file by the key), because
//! the binary prints it as its one line before exiting with status 2.

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, Error as _, IntoDeserializer as _};
use serde::{Deserialize, Deserializer, Serialize};

/// Everything the server needs to start; cheap to clone, read-only after start.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub redis: RedisSettings,
    pub heartbeat: HeartbeatSettings,
    pub ingress: IngressSettings,
    pub ops: OpsSettings,
    pub history: HistorySettings,
    /// Pusher Channels mode (`src/pusher/apps.rs`).
    pub pusher: crate::pusher::PusherSettings,
    /// The func handler table. `None` (no `[[scenes]]` in any layer) means the
    /// built-in defaults; a config that lists scenes replaces them entirely.
    pub scenes: Option<Vec<SceneConfig>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// HTTP and WebSocket share this address, as in the seed recipes.
    pub bind: String,
    /// Unique across the cluster; empty means `hostname-pid`.
    pub node_id: String,
    /// Browsers' `Origin` values allowed to open a WebSocket; empty allows any.
    #[serde(deserialize_with = "list")]
    pub allowed_origins: Vec<String>,
    /// Largest inbound WebSocket message, text line or datagram.
    pub max_message_bytes: usize,
    /// Bytes that may wait in one connection's outbound queue before the
    /// connection is closed as a slow consumer (close code 4008).
    pub send_queue_bytes: usize,
    /// How long one write to a WebSocket may wait for the client to read.
    pub send_timeout_secs: u64,
    /// HTTP worker threads; 0 = one per CPU core.
    pub workers: usize,
    /// How long a graceful stop waits for clients to receive their 1001 close.
    pub shutdown_timeout_secs: u64,
    /// WebSocket connections this node holds at most; over it an upgrade gets 503.
    /// 0 = no cap; unset = the file-descriptor limit minus a reserve
    /// ([`crate::net::auto_max_connections`]).
    pub max_connections: Option<usize>,
    /// WebSocket connections from one peer address at most; over it an upgrade gets
    /// 429. 0 = no cap (the default: behind a proxy or NAT many users share one).
    pub max_connections_per_ip: usize,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Accepted in `?token=` on WebSocket connect (browsers).
    #[serde(deserialize_with = "list")]
    pub client_tokens: Vec<String>,
    /// Accepted on push triggers; on WebSocket connect they make a publisher.
    #[serde(deserialize_with = "list")]
    pub api_tokens: Vec<String>,
    /// Accept WebSocket connects without any token (the seeds' browser code).
    pub allow_anonymous: bool,
    /// HS256 key for signed connect tokens (JWTs in `?token=`); at least 32 bytes;
    /// empty = off. `scenecast token` signs with it.
    pub jwt_secret: String,
    /// A PEM public key (RSA → RS256, EC P-256 → ES256) for signed connect tokens
    /// minted elsewhere; empty = off.
    pub jwt_public_key_file: String,
    /// A uid comes only from a JWT's `sub`: `?uid=` without one gets 403 and the
    /// first-frame uid binding is off.
    pub require_signed_uid: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// Empty = embedded mode: one node, everything in memory.
    pub url: String,
    /// Prefix of every key and channel this server touches.
    pub prefix: String,
    /// TTL of this node's liveness key; a dead node's entries go within 2 x TTL.
    pub node_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatSettings {
    /// The server sends a WebSocket ping this often.
    pub interval_secs: u64,
    /// A connection from which nothing arrived for this long is closed (4001).
    pub idle_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressSettings {
    /// Workerman-style text port (newline-delimited JSON); empty = off.
    pub text_bind: String,
    /// When set, every text line must carry `"token": "<this>"`.
    pub text_token: String,
    /// Swoole-style UDP side port (one JSON object per datagram); empty = off.
    pub udp_bind: String,
    /// Who may publish by sending JSON frames on a WebSocket.
    #[serde(deserialize_with = "one_of")]
    pub ws_publish: WsPublish,
    /// A text-port connection that sends nothing for this long (between lines) is
    /// closed; 0 = never.
    pub text_idle_timeout_secs: u64,
    /// Text-port connections one peer IP may hold at once (of the port's 1024);
    /// one more is closed at accept. 0 = no per-IP limit.
    pub text_max_connections_per_ip: usize,
    /// Pushes per second one source may make on average: a peer IP on the text
    /// and UDP ports, one publisher WebSocket. 0 = no limit.
    pub push_rate_per_sec: u32,
    /// Pushes one source may make at once before `push_rate_per_sec` applies
    /// (at least the rate; 0 = the rate).
    pub push_burst: u32,
}

/// The recent-push log behind recovery on reconnect and idempotent publish.
/// Largest `history.size` (pushes kept for recovery).
pub const MAX_HISTORY_SIZE: usize = 100_000;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySettings {
    /// Pushes kept for recovery (`?recover=1`); 0 keeps none, so every `since`
    /// answers `recovered:false`.
    pub size: usize,
    /// Seconds a push stays recoverable.
    pub ttl_secs: u64,
    /// Seconds an `Idempotency-Key` is remembered, cluster-wide.
    pub idempotency_secs: u64,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            size: 1000,
            ttl_secs: 300,
            idempotency_secs: 300,
        }
    }
}

/// `/metrics` exposure.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsSettings {
    /// When set, `GET /metrics` needs `Authorization: Bearer <this>` (else 401).
    pub metrics_token: String,
    /// Pages that get their own `scenecast_page_connections` series, besides the
    /// literal pages of `[[scenes]]`; every other page is summed as `_other`.
    #[serde(deserialize_with = "list")]
    pub metrics_pages: Vec<String>,
}

/// Who may publish `{"user_id":..}` / `{"page":..}` frames over a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WsPublish {
    /// Only connections opened with an API token.
    ApiToken,
    /// Every connection (the Swoole + Laravel seed's behaviour).
    Any,
    /// Nobody.
    Off,
}

/// One row of the func handler table, as written in `[[scenes]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SceneConfig {
    pub func: String,
    /// The Pusher event name the push carries to Pusher subscribers of its page
    /// (default `scenecast.push`; Echo listens with `.listen('.name')`).
    #[serde(default)]
    pub event: Option<String>,
    #[serde(default)]
    pub page: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub all: bool,
    pub message: serde_json::Value,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:9502".into(),
            node_id: String::new(),
            allowed_origins: Vec::new(),
            max_message_bytes: 64 * 1024,
            send_queue_bytes: 1024 * 1024,
            send_timeout_secs: 10,
            workers: 0,
            shutdown_timeout_secs: 3,
            max_connections: None,
            max_connections_per_ip: 0,
        }
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            prefix: "scenecast".into(),
            node_ttl_secs: 10,
        }
    }
}

impl Default for HeartbeatSettings {
    fn default() -> Self {
        Self {
            // Under the 60 s idle timeout of nginx and AWS ALB, so that a proxy never
            // drops a connection whose client only ever receives.
            interval_secs: 25,
            idle_timeout_secs: 121,
        }
    }
}

impl Default for IngressSettings {
    fn default() -> Self {
        Self {
            text_bind: String::new(),
            text_token: String::new(),
            udp_bind: String::new(),
            ws_publish: WsPublish::ApiToken,
            text_idle_timeout_secs: 300,
            text_max_connections_per_ip: 128,
            // Far above what a back office or the seed recipes send; a ceiling
            // against floods, not a quota.
            push_rate_per_sec: 10_000,
            push_burst: 20_000,
        }
    }
}

/// A setting that cannot be used, with the key it is about and, when known, where
/// it was set (the file and line, or the environment variable).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
    /// A key no section knows (a typo): names the keys that section does know.
    #[error("unknown setting {key}{known}")]
    Unknown { key: String, known: String },
    /// A file that cannot be read or is not TOML.
    #[error("{file}: {problem}")]
    File { file: String, problem: String },
    /// `error`, and where it came from: `FILE`, `FILE line N` or `SCENECAST__X__Y`.
    #[error("{origin}: {error}")]
    At {
        origin: String,
        error: Box<ConfigError>,
    },
}

impl ConfigError {
    /// The key the error is about (`server.bind`), when it names one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } | ConfigError::Unknown { key, .. } => Some(key),
            ConfigError::File { .. } => None,
            ConfigError::At { error, .. } => error.key(),
        }
    }

    fn at(self, origin: impl Into<String>) -> Self {
        ConfigError::At {
            origin: origin.into(),
            error: Box::new(self),
        }
    }
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// The prefix of every setting in the environment: `SCENECAST__SECTION__KEY`.
pub const ENV_PREFIX: &str = "SCENECAST__";

/// Where the settings in force came from, for the start log and `check-config`.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The TOML file that was read, if any.
    pub file: Option<PathBuf>,
    /// The `SCENECAST__...` variables that were applied, by name, sorted.
    pub env: Vec<String>,
}

impl std::fmt::Display for ConfigSource {
    /// `config file scenecast.toml + 2 SCENECAST__ variables (A, B)`, or
    /// `no config file; defaults + environment`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.file {
            Some(file) => write!(f, "config file {}", file.display())?,
            None => write!(f, "no config file; defaults + environment")?,
        }
        match self.env.as_slice() {
            [] => Ok(()),
            names => write!(
                f,
                " + {} {ENV_PREFIX} variable{} ({})",
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                names.join(", ")
            ),
        }
    }
}

/// One `SCENECAST__...` variable and the setting it names.
struct Variable {
    name: String,
    /// `server.bind`, as the `config` crate keys it.
    key: String,
    value: String,
}

impl Settings {
    /// Loads defaults → `file` (required when given; else `scenecast.toml` when it
    /// exists in the working directory) → `SCENECAST__SECTION__KEY` variables, then
    /// validates. Errors name the key, and the file and line or the variable.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_source(file).map(|(settings, _)| settings)
    }

    /// [`Settings::load`], also saying which file and variables were used.
    pub fn load_with_source(file: Option<&Path>) -> Result<(Self, ConfigSource), ConfigError> {
        Self::load_from(file, std::env::vars_os())
    }

    /// [`Settings::load_with_source`] with the environment given (for tests).
    ///
    /// An environment value is taken as the exact text typed for a text setting
    /// (`SCENECAST__SERVER__NODE_ID=007` is `"007"`, never the number 7); a list
    /// setting splits on commas (items trimmed, empty items dropped); a number or
    /// boolean setting parses it, and a value that does not parse is an error naming
    /// the variable.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<(Self, ConfigSource), ConfigError> {
        let file = match file {
            Some(path) if !path.exists() || path.is_dir() => {
                return Err(invalid(
                    "--config",
                    format!("{} does not exist or is a directory", path.display()),
                ));
            }
            Some(path) => Some(path.to_path_buf()),
            None => Some(PathBuf::from("scenecast.toml")).filter(|p| p.is_file()),
        };
        let name = file.as_ref().map(|p| p.display().to_string());
        let mut layers = config::Config::builder();
        // Read here rather than by the crate: an error's line is looked up in it.
        let mut text = String::new();
        if let (Some(path), Some(name)) = (&file, &name) {
            text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                file: name.clone(),
                problem: format!("cannot read: {e}"),
            })?;
            layers = layers.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        let vars = env_variables(env)?;
        let environment = config::Environment::with_prefix("SCENECAST")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(false)
            .source(Some(
                vars.iter()
                    .map(|v| (v.name.clone(), v.value.clone()))
                    .collect(),
            ));
        // Where the value an error is about was set: the variable (the last layer),
        // else the file's line, when the file sets it.
        let place = |error: ConfigError| {
            let key = error.key().unwrap_or_default().to_string();
            let inside = format!("{key}.");
            let var = vars
                .iter()
                .find(|v| v.key == key || v.key.starts_with(&inside));
            match (var, &name, line_of(&text, &key)) {
                (Some(var), _, _) => error.at(var.name.clone()),
                (None, Some(name), Some(line)) => error.at(format!("{name} line {line}")),
                _ => error,
            }
        };
        let settings: Settings = layers
            .add_source(environment)
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|error| match error {
                // Not TOML: toml's own message, and its line.
                config::ConfigError::FileParse { cause, .. } => {
                    let toml = cause.downcast_ref::<toml::de::Error>();
                    let line = toml.and_then(toml::de::Error::span);
                    let line = line.map(|s| format!(" line {}", line_at(&text, s.start)));
                    ConfigError::File {
                        file: name.clone().unwrap_or_default() + &line.unwrap_or_default(),
                        problem: one_line(&toml.map_or(cause.to_string(), |e| e.message().into())),
                    }
                }
                error => place(from_crate(error)),
            })?;
        settings.validate().map_err(place)?;
        let source = ConfigSource {
            file,
            env: vars.into_iter().map(|v| v.name).collect(),
        };
        Ok((settings, source))
    }

    /// Checks what types alone cannot: addresses parse, numbers are in range,
    /// tokens are usable, scenes are well formed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_addr("server.bind", &self.server.bind)?;
        if !self.ingress.text_bind.is_empty() {
            parse_addr("ingress.text_bind", &self.ingress.text_bind)?;
        }
        if !self.ingress.udp_bind.is_empty() {
            parse_addr("ingress.udp_bind", &self.ingress.udp_bind)?;
        }
        if self.server.max_message_bytes < 64 {
            return Err(invalid("server.max_message_bytes", "must be at least 64"));
        }
        if self.server.send_queue_bytes < self.server.max_message_bytes {
            return Err(invalid(
                "server.send_queue_bytes",
                "must be at least server.max_message_bytes",
            ));
        }
        if self.server.send_timeout_secs == 0 {
            return Err(invalid("server.send_timeout_secs", "must be at least 1"));
        }
        if self.heartbeat.interval_secs == 0 {
            return Err(invalid("heartbeat.interval_secs", "must be at least 1"));
        }
        // Two pings fit in the idle window: a client that only answers pings is
        // never closed, even when one ping is late (a slow heartbeat walk).
        if self.heartbeat.idle_timeout_secs < self.heartbeat.interval_secs.saturating_mul(2) {
            let (idle, interval) = (
                self.heartbeat.idle_timeout_secs,
                self.heartbeat.interval_secs,
            );
            return Err(invalid(
                "heartbeat.idle_timeout_secs",
                format!(
                    "is {idle}, must be at least 2 x heartbeat.interval_secs ({interval}): \
                     set it to {} or more, or lower the interval",
                    interval.saturating_mul(2)
                ),
            ));
        }
        if self.history.idempotency_secs == 0 {
            return Err(invalid("history.idempotency_secs", "must be at least 1"));
        }
        if self.redis.node_ttl_secs < 2 {
            return Err(invalid("redis.node_ttl_secs", "must be at least 2"));
        }
        // The whole history can be replayed to one reconnect, and held in memory
        // (embedded) or in one Redis reply (cluster): keep it bounded.
        if self.history.size > MAX_HISTORY_SIZE {
            return Err(invalid(
                "history.size",
                format!("must be at most {MAX_HISTORY_SIZE} (0 turns recovery off)"),
            ));
        }
        if self.history.size > 0 && self.history.ttl_secs == 0 {
            return Err(invalid(
                "history.ttl_secs",
                "must be at least 1 while history.size > 0",
            ));
        }
        if self.redis.prefix.is_empty() {
            return Err(invalid("redis.prefix", "must not be empty"));
        }
        let url = &self.redis.url;
        let known_scheme = ["redis://", "rediss://", "unix://"]
            .iter()
            .any(|scheme| url.starts_with(scheme));
        if !url.is_empty() && !known_scheme {
            return Err(invalid(
                "redis.url",
                "must start with redis://, rediss:// or unix:// (or be empty for embedded mode)",
            ));
        }
        check_tokens("auth.client_tokens", &self.auth.client_tokens)?;
        check_tokens("auth.api_tokens", &self.auth.api_tokens)?;
        self.check_jwt_keys()?;
        if self
            .auth
            .api_tokens
            .iter()
            .any(|t| self.auth.client_tokens.contains(t))
        {
            return Err(invalid(
                "auth.api_tokens",
                "a token may not be both a client token and an API token",
            ));
        }
        if !self.ops.metrics_token.is_empty() {
            check_tokens(
                "ops.metrics_token",
                std::slice::from_ref(&self.ops.metrics_token),
            )?;
        }
        if self.ops.metrics_pages.iter().any(String::is_empty) {
            return Err(invalid("ops.metrics_pages", "page names may not be empty"));
        }
        self.refuse_demo_tokens()?;
        let exposed = resolve_addr("", &self.server.bind)
            .is_ok_and(|addrs| addrs.iter().any(|a| !a.ip().is_loopback()));
        self.pusher.validate(exposed)?;
        for origin in &self.server.allowed_origins {
            check_origin(origin)?;
        }
        // Scene templates are compiled (and their errors reported) by the scene table.
        crate::scenes::SceneTable::compile(&self.scene_configs())?;
        Ok(())
    }

    /// The JWT keys are usable: a secret long enough for HS256, a key file that
    /// reads as a public key.
    fn check_jwt_keys(&self) -> Result<(), ConfigError> {
        let secret = &self.auth.jwt_secret;
        let min = crate::auth::MIN_JWT_SECRET_BYTES;
        if !secret.is_empty() && secret.len() < min {
            return Err(invalid(
                "auth.jwt_secret",
                format!(
                    "is {} bytes, must be at least {min} (e.g. openssl rand -base64 48)",
                    secret.len()
                ),
            ));
        }
        let file = &self.auth.jwt_public_key_file;
        if !file.is_empty() {
            crate::auth::load_public_key(Path::new(file))
                .map_err(|e| invalid("auth.jwt_public_key_file", e))?;
        }
        Ok(())
    }

    /// Fail closed: a token published in this repository (README, examples,
    /// docker-compose.yml) is no secret, so it may guard loopback only.
    fn refuse_demo_tokens(&self) -> Result<(), ConfigError> {
        // A host name counts as what it resolves to, as the listener will bind it.
        let exposed = |bind: &str| {
            !bind.is_empty()
                && resolve_addr("", bind)
                    .is_ok_and(|addrs| addrs.iter().any(|a| !a.ip().is_loopback()))
        };
        let server = exposed(&self.server.bind);
        let lists = [
            ("auth.client_tokens", &self.auth.client_tokens, server),
            ("auth.api_tokens", &self.auth.api_tokens, server),
        ];
        for (key, tokens, exposed) in lists {
            if let Some(token) = tokens.iter().find(|t| is_demo_token(t)).filter(|_| exposed) {
                return Err(demo_token(key, token, "server.bind", &self.server.bind));
            }
        }
        let text = &self.ingress.text_token;
        for (bind_key, bind) in [
            ("ingress.text_bind", &self.ingress.text_bind),
            ("ingress.udp_bind", &self.ingress.udp_bind),
        ] {
            if is_demo_token(text) && exposed(bind) {
                return Err(demo_token("ingress.text_token", text, bind_key, bind));
            }
        }
        if is_demo_token(&self.auth.jwt_secret) && server {
            return Err(demo_token(
                "auth.jwt_secret",
                &self.auth.jwt_secret,
                "server.bind",
                &self.server.bind,
            ));
        }
        if is_demo_token(&self.ops.metrics_token) && server {
            return Err(demo_token(
                "ops.metrics_token",
                &self.ops.metrics_token,
                "server.bind",
                &self.server.bind,
            ));
        }
        Ok(())
    }

    /// The scenes in force: the configured ones, or the built-in defaults.
    pub fn scene_configs(&self) -> Vec<SceneConfig> {
        self.scenes.clone().unwrap_or_else(default_scenes)
    }

    /// `node_id`, or `hostname-pid-random` when none is configured: unique per
    /// call, so two processes sharing a hostname and a PID (containers that run as
    /// PID 1) never share an id. Call it once per server.
    pub fn node_id(&self) -> String {
        if !self.server.node_id.is_empty() {
            return self.server.node_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "scenecast".into());
        let random = crate::redis::instance_token() & 0xff_ffff;
        format!("{host}-{}-{random:06x}", std::process::id())
    }
}

/// The addresses `value` (an `ip:port` or `host:port`, e.g. `localhost:9502`)
/// stands for, resolved as the listener will resolve it; the error names `key`.
pub fn resolve_addr(key: &str, value: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let like = "an address like 127.0.0.1:9502 or localhost:9502";
    if value
        .rsplit_once(':')
        .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(invalid(key, format!("{value:?} is not {like}")));
    }
    let addrs: Vec<SocketAddr> = value
        .to_socket_addrs()
        .map_err(|e| invalid(key, format!("{value:?} does not resolve: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(invalid(key, format!("{value:?} resolves to no address")));
    }
    Ok(addrs)
}

fn parse_addr(key: &str, value: &str) -> Result<(), ConfigError> {
    resolve_addr(key, value).map(|_| ())
}

/// A browser's `Origin` is `scheme://host[:port]`: a bare host never matches one,
/// so every browser would get 403 (RFC 6454 §6.1).
fn check_origin(origin: &str) -> Result<(), ConfigError> {
    let key = "server.allowed_origins";
    let Some((scheme, host)) = origin.split_once("://") else {
        let host = origin.trim_end_matches('/');
        return Err(invalid(
            key,
            format!(
                "{origin:?} has no scheme: an origin is scheme://host[:port], \
                 like \"https://{host}\" (browsers send the scheme, so {origin:?} would match none)"
            ),
        ));
    };
    if scheme.is_empty() || host.is_empty() || host.contains('/') {
        return Err(invalid(
            key,
            format!(
                "{origin:?} is not an origin like \"https://shop.example\" \
                 (scheme://host[:port], no path, no trailing slash)"
            ),
        ));
    }
    Ok(())
}

fn check_tokens(key: &str, tokens: &[String]) -> Result<(), ConfigError> {
    for token in tokens {
        if token.is_empty() {
            return Err(invalid(key, "tokens may not be empty"));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(key, "tokens may not contain whitespace"));
        }
    }
    Ok(())
}

/// The tokens this repository publishes as examples (`demo-*`, `change-me*`).
pub fn is_demo_token(token: &str) -> bool {
    token.starts_with("demo-") || token.starts_with("change-me")
}

fn demo_token(key: &str, token: &str, bind_key: &str, bind: &str) -> ConfigError {
    invalid(
        key,
        format!(
            "{token:?} is a published example token and {bind_key} = {bind:?} is not loopback: \
             set your own secret (e.g. SCENECAST__{}) or bind to 127.0.0.1",
            key.to_uppercase().replace('.', "__")
        ),
    )
}

/// The seed's two scenes, used when the config has no `[[scenes]]`.
pub fn default_scenes() -> Vec<SceneConfig> {
    vec![
        SceneConfig {
            event: None,
            func: "pushHomeLogic".into(),
            page: Some("home".into()),
            uid: None,
            all: false,
            message: serde_json::json!({"code": 200, "message": "后端按了按钮1"}),
        },
        SceneConfig {
            event: None,
            func: "pushListLogic".into(),
            page: Some("list".into()),
            uid: None,
            all: false,
            message: serde_json::json!({"code": 200, "message": "后端按了按钮2"}),
        },
    ]
}

/// A list setting (every `Vec<String>` field has `deserialize_with = "list"`): a TOML
/// array, or one comma-separated string (how a list is written in an environment
/// variable; items trimmed, empty items dropped).
fn list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct List;
    impl<'de> serde::de::Visitor<'de> for List {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of strings, or one comma-separated string")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Vec<String>, E> {
            let items = text.split(',').map(str::trim).filter(|i| !i.is_empty());
            Ok(items.map(String::from).collect())
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            items: A,
        ) -> Result<Vec<String>, A::Error> {
            Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(items))
        }
    }
    deserializer.deserialize_any(List)
}

/// An enum setting by its name; an unknown name is refused with the valid ones
/// (`"everyone" is not one of api_token, any, off`), from the file or a variable alike.
fn one_of<'de, D: Deserializer<'de>, T: DeserializeOwned>(deserializer: D) -> Result<T, D::Error> {
    let name = String::deserialize(deserializer)?;
    T::deserialize(name.as_str().into_deserializer()).map_err(|e: serde::de::value::Error| {
        let message = e.to_string();
        let expected = message
            .rsplit_once("expected ")
            .map_or("", |(_, list)| list);
        D::Error::custom(format!(
            "{name:?} is not one of {}",
            expected_names(expected)
        ))
    })
}

/// The `SCENECAST__...` variables of `env`, sorted by name. Which settings they name
/// is checked when the crate deserializes them (`deny_unknown_fields`).
fn env_variables(
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<Variable>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in env {
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(ENV_PREFIX)) else {
            continue;
        };
        let name = format!("{ENV_PREFIX}{rest}");
        let key = rest.to_lowercase().replace("__", ".");
        let refuse = |problem: &str| invalid(key.clone(), problem).at(name.clone());
        if !key.contains('.') || key.split('.').any(str::is_empty) {
            return Err(refuse(&format!(
                "a setting is named {ENV_PREFIX}SECTION__KEY, e.g. {ENV_PREFIX}SERVER__BIND"
            )));
        }
        let Ok(value) = value.into_string() else {
            return Err(refuse("the value is not UTF-8"));
        };
        vars.push(Variable { name, key, value });
    }
    vars.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(vars)
}

/// The `config` crate's error as one a person can act on, keyed by its setting: a
/// value of the wrong type, a missing or unknown key (naming the known ones).
fn from_crate(error: config::ConfigError) -> ConfigError {
    let (key, message) = match error {
        config::ConfigError::Type {
            unexpected,
            expected,
            key,
            ..
        } => {
            let key = key.unwrap_or_default();
            let shown = unexpected.to_string();
            let value = shown.strip_prefix("string ").unwrap_or(&shown);
            let problem = match expected {
                _ if value == "map" => format!("{key} is not a section"),
                "an integer" => format!("{value} is not a whole number"),
                "a boolean" => format!("{value} is not true or false"),
                _ => format!("{value} is not {expected}"),
            };
            return invalid(key, problem);
        }
        // The crate writes `scenes[0]message` for a field of a list item.
        config::ConfigError::NotFound(key) => {
            return invalid(key.replace(']', "].").replace("].[", "]["), "must be set");
        }
        config::ConfigError::At { error, key, .. } => (key.unwrap_or_default(), error.to_string()),
        other => (String::new(), other.to_string()),
    };
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return invalid(key, one_line(&message));
    };
    let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
    let names = expected_names(expected);
    let known = match (key.is_empty(), names.is_empty()) {
        (_, true) => String::new(),
        (true, false) => format!(" (known sections: {names})"),
        (false, false) => format!(" (known in [{key}]: {names})"),
    };
    let key = match key.is_empty() {
        true => field.to_string(),
        false => format!("{key}.{field}"),
    };
    ConfigError::Unknown { key, known }
}

/// serde's ", expected one of `a`, `b`" / "expected `a` or `b`" as "a, b".
fn expected_names(expected: &str) -> String {
    let list = expected
        .trim_start_matches([',', ' '])
        .trim_start_matches("expected ")
        .trim_start_matches("one of ");
    list.split(", ")
        .flat_map(|part| part.split(" or "))
        .map(|name| name.trim().trim_matches('`'))
        .filter(|name| !name.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The line of the TOML `text` that sets `key` (`server.bind`, `scenes[0].page`), or
/// the nearest part of it that the text sets; `None` when it sets none of it.
fn line_of(text: &str, key: &str) -> Option<usize> {
    use toml::de::DeValue;
    let root = DeValue::Table(toml::de::DeTable::parse(text).ok()?.into_inner());
    let mut here = &root;
    let mut start = None;
    for part in key.split(['.', '[']).filter(|p| !p.is_empty()) {
        let next = match (here, part.strip_suffix(']')) {
            (DeValue::Array(items), Some(index)) => {
                index.parse().ok().and_then(|i: usize| items.get(i))
            }
            (DeValue::Table(table), None) => table.get(part),
            _ => None,
        };
        let Some(next) = next else { break };
        start = Some(next.span().start);
        here = next.get_ref();
    }
    start.map(|at| line_at(text, at))
}

/// The 1-based line of byte `at` in `text`.
fn line_at(text: &str, at: usize) -> usize {
    text.get(..at).unwrap_or(text).matches('\n').count() + 1
}

impl Settings {
    /// The settings as TOML, for `scenecast check-config`: every token, secret and
    /// password replaced by `***` (an empty one stays empty, so "not set" shows),
    /// and the password in any URL (`redis://:pw@host`) too.
    pub fn to_masked_toml(&self) -> String {
        let Ok(mut table) = toml::Table::try_from(self) else {
            return format!("{self:#?}\n");
        };
        for (key, value) in table.iter_mut() {
            mask(key, value, false);
        }
        toml::to_string(&table).unwrap_or_else(|e| format!("# cannot print as TOML: {e}\n"))
    }
}

/// Masks `value` when it or a parent is a secret by name, and URL passwords always.
fn mask(key: &str, value: &mut toml::Value, parent_secret: bool) {
    let lower = key.to_ascii_lowercase();
    let secret = parent_secret
        || ["token", "secret", "password"]
            .iter()
            .any(|word| lower.split('_').any(|part| part.starts_with(word)));
    match value {
        toml::Value::String(text) if secret && !text.is_empty() => *text = "***".into(),
        toml::Value::String(text) => *text = mask_url_password(text),
        toml::Value::Array(items) => {
            for item in items {
                mask(key, item, secret);
            }
        }
        toml::Value::Table(table) => {
            for (key, value) in table.iter_mut() {
                mask(key, value, secret);
            }
        }
        _ => {}
    }
}

/// `redis://user:pw@host/` → `redis://user:***@host/`; anything else unchanged.
fn mask_url_password(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return text.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, password)) if !password.is_empty() => {
            format!("{scheme}://{user}:***@{host}")
        }
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    proptest! {
        /// Any text in a variable: loading never panics; a text setting is the
        /// exact text typed, and a list is the comma-separated items, trimmed.
        #[test]
        fn environment_text_is_taken_as_typed(
            node_id in "[0-9A-Za-z._-]{1,12}",
            tokens in proptest::collection::vec("[0-9A-Za-z_-]{1,10}", 1..4),
            spacing in " {0,2}",
            anything in "\\PC{0,20}",
        ) {
            let api_tokens = tokens.join(&format!("{spacing},{spacing}"));
            let loaded = Settings::load_from(
                Some(Path::new("/dev/null")),
                env(&[
                    ("SCENECAST__SERVER__NODE_ID", &node_id),
                    ("SCENECAST__AUTH__API_TOKENS", &api_tokens),
                ]),
            );
            let (settings, _) = loaded.unwrap();
            prop_assert_eq!(&settings.server.node_id, &node_id);
            prop_assert_eq!(&settings.auth.api_tokens, &tokens);
            // Any text at all: an error or settings, never a panic.
            for key in ["SCENECAST__SERVER__WORKERS", "SCENECAST__AUTH__CLIENT_TOKENS", "SCENECAST__X"] {
                let _ = Settings::load_from(Some(Path::new("/dev/null")), env(&[(key, &anything)]));
            }
        }
    }

    #[test]
    fn serde_messages_become_actionable() {
        // An enum value is refused by `one_of`, whichever deserializer reads it.
        let e = toml::from_str::<IngressSettings>("ws_publish = \"everyone\"")
            .expect_err("no such value");
        assert_eq!(
            e.message(),
            "\"everyone\" is not one of api_token, any, off"
        );
        assert_eq!(expected_names("expected `on` or `off`"), "on, off");
        // The crate keys an unknown field by its section.
        let unknown = |key: &str, message: &str| {
            from_crate(config::ConfigError::At {
                error: Box::new(config::ConfigError::Message(message.into())),
                origin: None,
                key: Some(key.into()),
            })
        };
        let e = unknown(
            "server",
            "unknown field `bnd`, expected `bind` or `node_id`",
        );
        assert_eq!(
            e.to_string(),
            "unknown setting server.bnd (known in [server]: bind, node_id)"
        );
        let e = from_crate(config::ConfigError::Message(
            "unknown field `servr`, expected one of `server`, `auth`".into(),
        ));
        assert_eq!(
            e.to_string(),
            "unknown setting servr (known sections: server, auth)"
        );
        let e = from_crate(config::ConfigError::NotFound("scenes[0]message".into()));
        assert_eq!(e.to_string(), "scenes[0].message: must be set");
    }

    #[test]
    fn history_bounds_are_checked() {
        let with = |size: usize, ttl_secs: u64| {
            let mut s = Settings::default();
            s.history.size = size;
            s.history.ttl_secs = ttl_secs;
            s.validate().map_err(|e| e.to_string())
        };
        assert!(with(1000, 300).is_ok());
        assert!(with(0, 0).is_ok(), "recovery off needs no ttl");
        assert!(with(MAX_HISTORY_SIZE, 1).is_ok());
        let too_big = with(MAX_HISTORY_SIZE + 1, 300).unwrap_err();
        assert!(too_big.contains("history.size"), "{too_big}");
        let no_ttl = with(10, 0).unwrap_err();
        assert!(no_ttl.contains("history.ttl_secs"), "{no_ttl}");
    }

    #[test]
    fn the_idempotency_window_is_at_least_a_second() {
        let mut s = Settings::default();
        s.history.idempotency_secs = 0;
        let e = s.validate().expect_err("0 is refused");
        assert!(e.to_string().contains("history.idempotency_secs"), "{e}");
        s.history.idempotency_secs = 1;
        assert!(s.validate().is_ok());
    }

    #[test]
    fn urls_keep_everything_but_the_password() {
        assert_eq!(mask_url_password("redis://:pw@h:1/"), "redis://:***@h:1/");
        assert_eq!(mask_url_password("redis://u:pw@h/0"), "redis://u:***@h/0");
        assert_eq!(mask_url_password("redis://h:6379/"), "redis://h:6379/");
        assert_eq!(mask_url_password("no url"), "no url");
    }

    #[test]
    fn a_variable_is_typed_by_the_setting_it_names() {
        let (s, source) = Settings::load_from(
            Some(Path::new("/dev/null")),
            env(&[
                ("SCENECAST__SERVER__NODE_ID", "007"),
                ("SCENECAST__SERVER__MAX_MESSAGE_BYTES", "1000"),
                ("SCENECAST__AUTH__API_TOKENS", "1,2"),
                ("SCENECAST__OPS__METRICS_PAGES", " home, list "),
                ("SCENECAST_OTHER", "x"),
                ("OTHER__SERVER__BIND", "x"),
            ]),
        )
        .expect("valid");
        assert_eq!(s.server.node_id, "007");
        assert_eq!(s.server.max_message_bytes, 1000);
        assert_eq!(s.auth.api_tokens, ["1", "2"]);
        assert_eq!(s.ops.metrics_pages, ["home", "list"]);
        assert_eq!(source.env.len(), 4);

        for (name, value, needle) in [
            ("SCENECAST__SERVER", "x", "SCENECAST__SECTION__KEY"),
            ("SCENECAST__SERVER__", "x", "SCENECAST__SECTION__KEY"),
            ("SCENECAST__SERVER__WORKERS", "-", "not a whole number"),
            (
                "SCENECAST__AUTH__ALLOW_ANONYMOUS",
                "maybe",
                "not true or false",
            ),
            (
                "SCENECAST__SERVER__BIND__X",
                "1",
                "server.bind is not a section",
            ),
            ("SCENECAST__SERVER__WORKERS", "-1", "server.workers"),
            ("SCENECAST__SCENES__FUNC", "x", "scenes"),
            (
                "SCENECAST__SERVR__BIND",
                "x",
                "known sections: server, auth",
            ),
        ] {
            let error = Settings::load_from(Some(Path::new("/dev/null")), env(&[(name, value)]))
                .expect_err(name)
                .to_string();
            assert!(error.starts_with(name), "{error}");
            assert!(error.contains(needle), "{needle:?} not in {error}");
        }
    }

    #[test]
    fn keys_map_to_the_lines_that_set_them() {
        let text = "[server]\nbind = 1\n\n[[scenes]]\nfunc = 2\n[[scenes]]\nfunc = 3\n";
        assert_eq!(line_of(text, "server.bind"), Some(2));
        assert_eq!(line_of(text, "scenes[1].func"), Some(7));
        // Not set: the line of the nearest part that is (the list item).
        let item = line_of(text, "scenes[0].page").expect("scenes[0] is set");
        assert!((4..=5).contains(&item), "{item}");
        assert_eq!(line_of(text, "redis.url"), None);
    }
}
