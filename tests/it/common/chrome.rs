//! A real headless Chromium driven over the W3C WebDriver protocol.
//!
//! The test starts Debian's `chromedriver` on a free port in a process group of its
//! own; chromedriver starts Chromium (with a fresh profile directory) inside that
//! group. Dropping [`Chrome`] kills the whole group and removes the profile, so no
//! browser outlives a test, even one that panicked or timed out.
//!
//! The protocol is a handful of JSON-over-HTTP calls, spoken here with the test
//! suite's own reqwest client: no extra crate to build in CI.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use super::{WAIT, free_port};

/// W3C name of the key holding an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Bound on any single WebDriver call (a page load included).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on what a page must show by itself (a reconnect after a restart included).
pub const PAGE_WAIT: Duration = Duration::from_secs(20);

/// Where tests keep screenshots and logs for a human to look at.
pub fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/artifacts");
    std::fs::create_dir_all(&dir).expect("create tests/artifacts");
    dir
}

/// The chromedriver process group and the profile directory.
struct Driver {
    child: Child,
    profile: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group id is chromedriver's pid (process_group(0) at spawn); the
        // browser and its helpers live in that group.
        let group = self.child.id() as i32;
        // SAFETY: kill(2) with a negative pid only sends a signal to our own group.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A tab, by its WebDriver window handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tab(String);

pub struct Chrome {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
    first_tab: Option<Tab>,
    _driver: Driver,
}

fn chromium_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    // Debian's /usr/bin/chromium is a shell wrapper; the browser itself is here.
    ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Chrome {
    /// Starts chromedriver and a headless Chromium session with a 1280x900 window.
    /// Panics with the install command when either is missing.
    pub async fn start() -> Self {
        const MISSING: &str = "the browser test needs Chromium and its driver: \
             apt-get install -y chromium chromium-driver (.ci/run installs them)";
        let binary = chromium_binary()
            .unwrap_or_else(|| panic!("no Chromium found (set CHROMIUM=path); {MISSING}"));
        let port = free_port();
        let profile =
            std::env::temp_dir().join(format!("scenecast-chrome-{}-{port}", std::process::id()));
        let log = std::fs::File::create(artifacts_dir().join("chromedriver.log"))
            .expect("create chromedriver.log");
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromedriver ({e}); {MISSING}"));
        let driver = Driver { child, profile };
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .expect("HTTP client");
        let base = format!("http://127.0.0.1:{port}");

        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(response) = ready
                && let Ok(status) = response.json::<Value>().await
                && status["value"]["ready"] == true
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not become ready on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            "--window-size=1280,900",
            "--lang=en-US",
        ]
        .into_iter()
        .map(String::from)
        .chain([format!("--user-data-dir={}", driver.profile.display())])
        .collect::<Vec<_>>();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": binary, "args": args},
            "timeouts": {"pageLoad": 20_000, "script": 10_000, "implicit": 0},
        }}});
        let reply = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("chromedriver answers POST /session");
        let body: Value = reply.json().await.expect("session reply is JSON");
        let Some(id) = body["value"]["sessionId"].as_str() else {
            panic!("Chromium did not start: {}", body["value"]["message"]);
        };
        Chrome {
            http,
            session: format!("{base}/session/{id}"),
            first_tab: None,
            _driver: driver,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.session);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: reply is not JSON: {e}"));
        assert!(
            status.is_success(),
            "WebDriver {method} {path} failed ({status}): {} {}",
            body["value"]["error"],
            body["value"]["message"]
        );
        body["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Opens `url` in a new tab (the first call reuses the initial one) and makes it
    /// the current tab.
    pub async fn open_tab(&mut self, url: &str) -> Tab {
        let tab = if self.first_tab.is_none() {
            let handle = self.get("/window").await;
            let tab = Tab(handle.as_str().expect("window handle").to_string());
            self.first_tab = Some(tab.clone());
            tab
        } else {
            let window = self.post("/window/new", json!({"type": "tab"})).await;
            Tab(window["handle"]
                .as_str()
                .expect("new tab handle")
                .to_string())
        };
        self.switch_to(&tab).await;
        self.goto(url).await;
        tab
    }

    pub async fn switch_to(&self, tab: &Tab) {
        self.post("/window", json!({"handle": tab.0})).await;
    }

    /// Loads `url` in the current tab and waits for the load event.
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        found[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element id for {css}: {found}"))
            .to_string()
    }

    /// Clicks the element matching `css`, as a user would (scrolled into view).
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.post(&format!("/element/{id}/click"), json!({})).await;
    }

    /// Empties the input matching `css`.
    pub async fn clear(&self, css: &str) {
        let id = self.element(css).await;
        self.post(&format!("/element/{id}/clear"), json!({})).await;
    }

    /// Replaces the content of the input matching `css` by typing `text`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.post(&format!("/element/{id}/clear"), json!({})).await;
        self.post(&format!("/element/{id}/value"), json!({"text": text}))
            .await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": args}))
            .await
    }

    /// Polls `script` in the current tab until it returns something other than
    /// null or false, and returns that; panics after `PAGE_WAIT` naming `what`.
    pub async fn wait_for(&self, what: &str, script: &str, args: Value) -> Value {
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        loop {
            let value = self.js(script, args.clone()).await;
            if !value.is_null() && value != Value::Bool(false) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG of the current tab's viewport to `tests/artifacts/{name}.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let encoded = self.get("/screenshot").await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("screenshot is a base64 string"))
            .expect("screenshot is valid base64");
        let path = artifacts_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Ends the session (Chromium exits); the drop then stops chromedriver.
    pub async fn quit(self) {
        let _ = self
            .http
            .delete(&self.session)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
    }
}
