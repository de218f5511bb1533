//! Settings: built-in defaults, then a TOML file, then `SCENECAST__SECTION__KEY`
//! environment variables, layered by the `config` crate and validated once at start.
//!
//! Unknown keys are errors (`deny_unknown_fields`): a typo in the file must not turn
//! into a silently ignored setting. Every error names the key it is about, because the
//! binary prints it as its one line before exiting with status 2.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

/// Everything the server needs to start; cheap to clone, read-only after start.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub redis: RedisSettings,
    pub heartbeat: HeartbeatSettings,
    pub ingress: IngressSettings,
    /// The func handler table. `None` (no `[[scenes]]` in any layer) means the
    /// built-in defaults; a config that lists scenes replaces them entirely.
    pub scenes: Option<Vec<SceneConfig>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// HTTP and WebSocket share this address, as in the seed recipes.
    pub bind: String,
    /// Unique across the cluster; empty means `hostname-pid`.
    pub node_id: String,
    /// Browsers' `Origin` values allowed to open a WebSocket; empty allows any.
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
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Accepted in `?token=` on WebSocket connect (browsers).
    pub client_tokens: Vec<String>,
    /// Accepted on push triggers; on WebSocket connect they make a publisher.
    pub api_tokens: Vec<String>,
    /// Accept WebSocket connects without any token (the seeds' browser code).
    pub allow_anonymous: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// Empty = embedded mode: one node, everything in memory.
    pub url: String,
    /// Prefix of every key and channel this server touches.
    pub prefix: String,
    /// TTL of this node's liveness key; a dead node's entries go within 2 x TTL.
    pub node_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatSettings {
    /// The server sends a WebSocket ping this often.
    pub interval_secs: u64,
    /// A connection from which nothing arrived for this long is closed (4001).
    pub idle_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressSettings {
    /// Workerman-style text port (newline-delimited JSON); empty = off.
    pub text_bind: String,
    /// When set, every text line must carry `"token": "<this>"`.
    pub text_token: String,
    /// Swoole-style UDP side port (one JSON object per datagram); empty = off.
    pub udp_bind: String,
    /// Who may publish by sending JSON frames on a WebSocket.
    pub ws_publish: WsPublish,
}

/// Who may publish `{"user_id":..}` / `{"page":..}` frames over a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneConfig {
    pub func: String,
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
            interval_secs: 60,
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
        }
    }
}

/// A setting that cannot be used, with the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
    /// Reading or type errors from the `config` crate; its text names the key.
    #[error("{0}")]
    Load(#[from] config::ConfigError),
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: [&str; 3] = [
    "auth.client_tokens",
    "auth.api_tokens",
    "server.allowed_origins",
];

impl Settings {
    /// Loads defaults → `file` (required when given; else `scenecast.toml` when it
    /// exists in the working directory) → environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        match file {
            Some(path) => {
                if !path.exists() {
                    return Err(invalid(
                        "--config",
                        format!("{} does not exist", path.display()),
                    ));
                }
                builder =
                    builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
            }
            None => {
                builder = builder.add_source(
                    config::File::with_name("scenecast.toml")
                        .format(config::FileFormat::Toml)
                        .required(false),
                );
            }
        }
        let mut env = config::Environment::with_prefix("SCENECAST")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        for key in LIST_KEYS {
            env = env.with_list_parse_key(key);
        }
        let settings: Settings = builder.add_source(env).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
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
        if self.heartbeat.idle_timeout_secs <= self.heartbeat.interval_secs {
            return Err(invalid(
                "heartbeat.idle_timeout_secs",
                "must be greater than heartbeat.interval_secs",
            ));
        }
        if self.redis.node_ttl_secs < 2 {
            return Err(invalid("redis.node_ttl_secs", "must be at least 2"));
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
        for origin in &self.server.allowed_origins {
            if origin.is_empty() || origin.ends_with('/') {
                return Err(invalid(
                    "server.allowed_origins",
                    format!("{origin:?} is not an origin like \"https://shop.example\""),
                ));
            }
        }
        // Scene templates are compiled (and their errors reported) by the scene table.
        crate::scenes::SceneTable::compile(&self.scene_configs())?;
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

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("{value:?} is not an address like 127.0.0.1:9502"),
        )
    })
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

/// The seed's two scenes, used when the config has no `[[scenes]]`.
pub fn default_scenes() -> Vec<SceneConfig> {
    vec![
        SceneConfig {
            func: "pushHomeLogic".into(),
            page: Some("home".into()),
            uid: None,
            all: false,
            message: serde_json::json!({"code": 200, "message": "后端按了按钮1"}),
        },
        SceneConfig {
            func: "pushListLogic".into(),
            page: Some("list".into()),
            uid: None,
            all: false,
            message: serde_json::json!({"code": 200, "message": "后端按了按钮2"}),
        },
    ]
}
