//! A newcomer's first hour, as tests: the README's commands run on a fresh clone
//! (issue 10, "How it is proven"), and what the binary says about itself: its
//! version, its help, its start log, its index page.
//!
//! The processes run the binary under test (`SCENECAST_BIN`, as CI sets it, else the
//! one cargo built), so a clone is not compiled again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::node::binary;
use crate::common::{TestServer, WAIT, WsClient, free_port, php_push, udp_send};

/// A scenecast process in `dir`, its stderr in a file; SIGKILLed on drop.
struct Proc {
    child: Child,
    log: PathBuf,
    pub addr: SocketAddr,
}

impl Proc {
    /// `scenecast ARGS` in `dir` with `env` and `server.bind` on a free port; waits
    /// until the start log lists the pages (the server is then listening).
    fn start(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Proc {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let log = std::env::temp_dir().join(format!("scenecast-first-hour-{port}.log"));
        let stderr = std::fs::File::create(&log).expect("create the log");
        let mut command = Command::new(binary());
        command
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .env("SCENECAST__SERVER__BIND", addr.to_string())
            .env("SCENECAST__SERVER__WORKERS", "1")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().expect("start scenecast");
        let mut proc = Proc { child, log, addr };
        let deadline = std::time::Instant::now() + WAIT;
        while !proc.log().contains("pages: ") {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("scenecast exited ({status}) at start:\n{}", proc.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no start log within {WAIT:?}:\n{}",
                proc.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proc
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    fn ws(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.addr)
    }

    /// Waits until `query` (`page=home`, `uid=uid1`) has `n` connections, so a push
    /// that follows is not racing the connect.
    async fn wait_connections(&self, query: &str, token: &str, n: u64) {
        let url = self.url(&format!("/api/presence?{query}&token={token}"));
        crate::common::eventually(&format!("{n} connection(s) on {query}"), || async {
            let reply: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
            (reply["connections"] == n).then_some(())
        })
        .await;
    }

    /// Waits until the node holds `n` connections (for clients without page or uid).
    async fn wait_node_connections(&self, token: &str, n: u64) {
        let url = self.url(&format!("/api/stats?token={token}"));
        crate::common::eventually(&format!("{n} connection(s)"), || async {
            let reply: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
            (reply["node_connections"] == n).then_some(())
        })
        .await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary());
    command.args(args).current_dir(dir);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run scenecast")
}

/// An empty folder, removed on drop: "outside the repo folder".
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "scenecast-{what}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let output = run(repo(), &["--version"], &[]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    let commit = text
        .split("(commit ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no commit in {text:?}"));
    let in_git = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .current_dir(repo())
        .output()
        .is_ok_and(|o| o.status.success());
    if in_git {
        // Built from this checkout: the commit is one of this repository's.
        assert!(commit.len() >= 7, "{text}");
        let known = Command::new("git")
            .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
            .current_dir(repo())
            .status()
            .expect("git");
        assert!(known.success(), "{commit} is not a commit here: {text}");
    } else {
        assert_eq!(commit, "unknown", "{text}");
    }
}

#[test]
fn help_says_where_config_comes_from_and_lists_the_commands() {
    let output = run(repo(), &["--help"], &[]);
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    for needle in [
        "serve",
        "check-config",
        "--config",
        "scenecast.toml",
        "SCENECAST__SECTION__KEY",
        "comma-separated",
        "RUST_LOG",
    ] {
        assert!(
            help.contains(needle),
            "{needle:?} missing from --help:\n{help}"
        );
    }
}

#[test]
fn a_start_without_config_says_so_warns_about_tokens_and_lists_the_pages() {
    let empty = TempDir::new("no-config");
    let server = Proc::start(&empty.0, &["serve"], &[]);
    let log = server.log();
    assert!(
        log.contains("no config file; defaults + environment"),
        "{log}"
    );
    assert!(log.contains("NO TOKEN CONFIGURED"), "{log}");
    assert!(log.contains("401"), "{log}");
    for page in [
        "/home",
        "/list",
        "/back",
        "/dashboard",
        "/healthz",
        "/metrics",
    ] {
        let url = server.url(page);
        assert!(log.contains(&url), "{url} not in the start log:\n{log}");
    }
    drop(server);

    // With a file and a variable: both named, and no warning once a token is set.
    let server = Proc::start(
        repo(),
        &["serve", "--config", "scenecast.toml"],
        &[("SCENECAST__SERVER__NODE_ID", "n1".into())],
    );
    let log = server.log();
    assert!(log.contains("config file scenecast.toml"), "{log}");
    assert!(log.contains("SCENECAST__SERVER__NODE_ID"), "{log}");
    assert!(!log.contains("NO TOKEN CONFIGURED"), "{log}");
}

#[tokio::test]
async fn the_root_url_is_a_page_for_browsers_and_json_for_programs() {
    let server = TestServer::start(|_| {}).await;
    let browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let page = server
        .http
        .get(server.http_url("/"))
        .header("Accept", browser_accept)
        .send()
        .await
        .expect("GET /");
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "CSP: {csp:?}");
    let content_type = page.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let body = page.text().await.unwrap();
    for link in [
        "href=\"/home\"",
        "href=\"/list\"",
        "href=\"/back\"",
        "href=\"/dashboard\"",
        "href=\"/healthz\"",
        "href=\"/metrics\"",
        "README.md",
    ] {
        assert!(body.contains(link), "{link} missing from the index page");
    }

    // Programs keep the JSON answers: no Accept, a JSON Accept, or any query.
    for (accept, path) in [
        (None, "/"),
        (Some("application/json"), "/"),
        (Some("*/*"), "/"),
        (Some(browser_accept), "/?page=home"),
    ] {
        let mut request = server.http.get(server.http_url(path));
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        let response = request.send().await.expect("GET /");
        assert_eq!(response.status(), 400, "{accept:?} {path}");
        let json: Value = response.json().await.expect("a JSON error");
        assert_eq!(json["code"], 400, "{accept:?} {path}: {json}");
    }
}

/// Clones this checkout's HEAD into a temp folder and runs what README.md tells a
/// newcomer, against the clone's own files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_clone_runs_the_readme() {
    let has_git = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo())
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_git {
        eprintln!("a_fresh_clone_runs_the_readme: not a git checkout, nothing to clone");
        return;
    }
    let temp = TempDir::new("clone");
    let clone = temp.0.join("scenecast");
    let status = Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks"])
        .arg(repo())
        .arg(&clone)
        .status()
        .expect("git clone");
    assert!(status.success(), "git clone failed");
    let readme = std::fs::read_to_string(clone.join("README.md")).expect("README.md");

    // check-config on every shipped config.
    let mut configs: Vec<PathBuf> = std::fs::read_dir(clone.join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    configs.sort();
    configs.push(clone.join("scenecast.toml"));
    for config in &configs {
        let output = Command::new(binary())
            .args(["check-config", "--config"])
            .arg(config)
            .current_dir(&clone)
            .output()
            .expect("check-config");
        assert!(
            output.status.success(),
            "check-config {}: {}",
            config.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    quick_start(&clone, &readme).await;
    scenes_example(&clone, &readme).await;
    workerman_profile(&clone).await;
    udp_profile(&clone).await;
    scenes_profile(&clone).await;
    laravel_profile(&clone).await;
}

/// The text of the README between `heading` and the next heading of its level.
fn section<'a>(readme: &'a str, heading: &str) -> &'a str {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    let rest = &readme[start + heading.len()..];
    let level = heading.split(' ').next().unwrap_or("##");
    let end = rest.find(&format!("\n{level} ")).unwrap_or(rest.len());
    &rest[..end]
}

/// The quick start: the server in the clone with its own scenecast.toml, the
/// WebSocket URL, the curl, its exact reply and the frame, all read from the README.
async fn quick_start(clone: &Path, readme: &str) {
    let quick = section(readme, "## Quick start");
    let server = Proc::start(clone, &[], &[]);
    let port = server.addr.port().to_string();
    let local = |text: &str| text.replace("127.0.0.1:9502", &format!("127.0.0.1:{port}"));

    let ws_url = quick
        .lines()
        .find_map(|l| l.trim().strip_prefix("websocat '"))
        .and_then(|l| l.split('\'').next())
        .expect("the quick start's websocat URL");
    let mut ws = WsClient::connect(&local(ws_url)).await;
    server
        .wait_connections("page=home", "demo-api-token", 1)
        .await;

    let mut lines = quick.lines().skip_while(|l| !l.starts_with("curl '"));
    let curl = lines.next().expect("the quick start's curl");
    let url = curl
        .trim_start_matches("curl '")
        .split('\'')
        .next()
        .expect("a quoted URL");
    let expected = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .expect("the reply under the curl, as `# {...}`");
    let reply = reqwest::get(local(url))
        .await
        .expect("the quick start's push")
        .text()
        .await
        .expect("a reply");
    assert_eq!(
        reply, expected,
        "the quick start's reply, as the README shows it"
    );

    let frame = quick
        .split("The WebSocket prints `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .expect("the frame the README says arrives");
    assert_eq!(ws.recv_text().await, frame);
}

/// The `[[scenes]]` example's trigger (`orderCreated`) runs with the shipped config.
async fn scenes_example(clone: &Path, readme: &str) {
    let server = Proc::start(clone, &[], &[]);
    let trigger = readme
        .split('`')
        .find(|piece| piece.starts_with("/?func=orderCreated&"))
        .expect("the README's orderCreated trigger");
    let mut ws = WsClient::connect(&server.ws("/?uid=42&token=demo-client-token")).await;
    server.wait_connections("uid=42", "demo-api-token", 1).await;
    let url = server.url(&trigger.replace("token=...", "token=demo-api-token"));
    let reply: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(reply["code"], 200, "{url}: {reply}");
    assert_eq!(reply["delivered"], 1, "{url}: {reply}");
    let frame: Value = serde_json::from_str(&ws.recv_text().await).unwrap();
    assert_eq!(frame["order"], "A-17", "{frame}");
}

/// The anonymous profiles ship no API token (a published one would be refused on
/// their 0.0.0.0 bind); the test sets one by env, as the README says, to read
/// presence before it pushes.
const PRESENCE_TOKEN: &str = "first-hour-api-token";
fn presence_token_env() -> (&'static str, String) {
    ("SCENECAST__AUTH__API_TOKENS", PRESENCE_TOKEN.into())
}

/// examples/workerman.toml: uid by first frame, a line on the text port → `ok`.
async fn workerman_profile(clone: &Path) {
    let text_port = free_port();
    let server = Proc::start(
        clone,
        &["serve", "--config", "examples/workerman.toml"],
        &[
            (
                "SCENECAST__INGRESS__TEXT_BIND",
                format!("127.0.0.1:{text_port}"),
            ),
            presence_token_env(),
        ],
    );
    let mut ws = WsClient::connect(&server.ws("/")).await;
    ws.send("uid1").await;
    server.wait_connections("uid=uid1", PRESENCE_TOKEN, 1).await;
    let text_addr: SocketAddr = format!("127.0.0.1:{text_port}").parse().unwrap();
    let line = r#"{"uid":"uid1","percent":"88%"}"#;
    assert_eq!(php_push(text_addr, line).await, "ok\n");
    assert_eq!(ws.recv_text().await, line);
}

/// examples/swoole-udp.toml: one datagram reaches every connection.
async fn udp_profile(clone: &Path) {
    let udp_port = free_port();
    let server = Proc::start(
        clone,
        &["serve", "--config", "examples/swoole-udp.toml"],
        &[
            (
                "SCENECAST__INGRESS__UDP_BIND",
                format!("127.0.0.1:{udp_port}"),
            ),
            presence_token_env(),
        ],
    );
    let mut ws = WsClient::connect(&server.ws("/")).await;
    server.wait_node_connections(PRESENCE_TOKEN, 1).await;
    let udp: SocketAddr = format!("127.0.0.1:{udp_port}").parse().unwrap();
    let datagram = r#"{"order_num":1234}"#;
    udp_send(udp, format!("{datagram}\n").as_bytes());
    let frame = ws.next_text(WAIT).await.expect("the datagram's frame");
    assert_eq!(frame, datagram);
}

/// examples/swoole-laravel.toml: the application publishes over a WebSocket.
async fn laravel_profile(clone: &Path) {
    let server = Proc::start(
        clone,
        &["serve", "--config", "examples/swoole-laravel.toml"],
        &[presence_token_env()],
    );
    let mut user = WsClient::connect(&server.ws("/?uid=1")).await;
    server.wait_connections("uid=1", PRESENCE_TOKEN, 1).await;
    let mut app = WsClient::connect(&server.ws("/")).await;
    let frame = r#"{"user_id":1,"cnt":5}"#;
    app.send(frame).await;
    let received: Value = serde_json::from_str(&user.recv_text().await).unwrap();
    assert_eq!(received["cnt"], 5, "{received}");
}

/// examples/swoole-scenes.toml: the GET trigger with the profile's tokens.
async fn scenes_profile(clone: &Path) {
    let server = Proc::start(
        clone,
        &["serve", "--config", "examples/swoole-scenes.toml"],
        &[],
    );
    let mut ws = WsClient::connect(&server.ws("/?page=home&token=change-me-client-token")).await;
    server
        .wait_connections("page=home", "change-me-api-token", 1)
        .await;
    let reply: Value = reqwest::get(server.url("/?func=pushHomeLogic&token=change-me-api-token"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["delivered"], 1, "{reply}");
    let frame: Value = serde_json::from_str(&ws.recv_text().await).unwrap();
    assert_eq!(frame["message"], "后端按了按钮1");
}

/// The 401 of `POST /api/push` names the one place it reads the token from.
#[tokio::test]
async fn the_push_api_401_names_the_header_not_the_query() {
    let server = TestServer::start(|_| {}).await;
    let response = server
        .http
        .post(server.http_url(&format!("/api/push?token={}", crate::common::API_TOKEN)))
        .body(r#"{"all":true,"message":1}"#)
        .send()
        .await
        .expect("POST /api/push");
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("JSON");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("Authorization: Bearer"), "{body}");
    assert!(!message.contains("or ?token="), "{body}");
}
