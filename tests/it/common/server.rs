//! A scenecast server started in-process through the library, on port 0.

use std::net::SocketAddr;

use scenecast::Settings;

pub const CLIENT_TOKEN: &str = "test-client-token";
pub const API_TOKEN: &str = "test-api-token";

/// HTTP workers of every test server: `$SCENECAST_TEST_WORKERS`, else 1. CI runs
/// the suites with 2 and 4 as well, so the per-worker fan-out is exercised.
pub fn workers() -> usize {
    std::env::var("SCENECAST_TEST_WORKERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// Settings for tests: ephemeral port, known tokens, [`workers`] workers.
pub fn settings() -> Settings {
    let mut s = Settings::default();
    s.server.bind = "127.0.0.1:0".into();
    s.server.workers = workers();
    s.server.node_id = format!("test-{}", super::free_port());
    s.auth.client_tokens = vec![CLIENT_TOKEN.into()];
    s.auth.api_tokens = vec![API_TOKEN.into()];
    s
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// The text port, when `ingress.text_bind` was set (use `127.0.0.1:0`).
    pub text_addr: Option<SocketAddr>,
    /// The UDP port, when `ingress.udp_bind` was set (use `127.0.0.1:0`).
    pub udp_addr: Option<SocketAddr>,
    running: Option<scenecast::Running>,
    pub http: reqwest::Client,
}

impl TestServer {
    /// Starts with `settings()` changed by `tweak`.
    pub async fn start(tweak: impl FnOnce(&mut Settings)) -> Self {
        let mut s = settings();
        tweak(&mut s);
        s.validate().expect("test settings are valid");
        Self::start_with(s).await
    }

    pub async fn start_with(settings: Settings) -> Self {
        // RUST_LOG=debug shows the server's log under `--nocapture`.
        let _ = env_logger::builder().is_test(true).try_init();
        let running = scenecast::start(settings).await.expect("server starts");
        TestServer {
            addr: running.http_addr,
            text_addr: running.text_addr,
            udp_addr: running.udp_addr,
            running: Some(running),
            http: reqwest::Client::new(),
        }
    }

    pub fn http_url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    /// `GET path` and the JSON body with the status.
    pub async fn get_json(&self, path_and_query: &str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .get(self.http_url(path_and_query))
            .send()
            .await
            .expect("HTTP request");
        let status = response.status().as_u16();
        let body = response.json().await.expect("a JSON body");
        (status, body)
    }

    /// `POST /api/push` with the API token and a raw body.
    pub async fn api_push(&self, body: &str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .post(self.http_url("/api/push"))
            .bearer_auth(API_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("HTTP request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON body"))
    }

    /// Runs a scene through the seed's GET trigger.
    pub async fn trigger(&self, func: &str, extra_query: &str) -> (u16, serde_json::Value) {
        self.get_json(&format!("/?func={func}&token={API_TOKEN}{extra_query}"))
            .await
    }

    /// The connection count `/api/presence?{target}` answers (`page=home`, `uid=7`).
    pub async fn connections(&self, target: &str) -> u64 {
        let (_, body) = self
            .get_json(&format!("/api/presence?{target}&token={API_TOKEN}"))
            .await;
        body["connections"].as_u64().expect("a connection count")
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.http_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of `scenecast_rejected_total{reason=...}` (0 when absent).
    pub async fn rejected(&self, reason: &str) -> u64 {
        let needle = format!("scenecast_rejected_total{{reason=\"{reason}\"}} ");
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(&needle).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }
}
