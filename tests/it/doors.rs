//! Every door refuses, bounds and never leaks (issue 12, cases 5, 6, 11, 12): text-port
//! slots and idleness, per-source push rates, the `/metrics` exposition and its
//! token, fail-closed demo tokens, the heartbeat default, throttled refusal logs.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use scenecast::Settings;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::common::{
    API_TOKEN, CLIENT_TOKEN, TestServer, TextClient, WAIT, WsClient, eventually, free_port,
};

/// A second loopback address: Linux routes all of 127/8 to `lo`, so a client bound
/// to it is "another IP" to the server.
const OTHER_IP: [u8; 4] = [127, 0, 0, 2];

async fn connect_from(ip: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(SocketAddr::new(IpAddr::from(ip), 0))
        .expect("bind to a loopback address");
    socket
        .connect(addr)
        .await
        .expect("connect to the text port")
}

/// A viewer on page home, counted by presence before the test goes on.
async fn home_viewer(server: &TestServer) -> WsClient {
    let viewer =
        WsClient::connect(&server.ws_url(&format!("/?page=home&token={CLIENT_TOKEN}"))).await;
    eventually("the viewer is registered", || async {
        (server.connections("page=home").await == 1).then_some(())
    })
    .await;
    viewer
}

/// Waits for the server to close `stream` (end of stream or reset); panics after WAIT.
async fn expect_closed_by_server(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(WAIT, stream.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(_)) => panic!("the server wrote instead of closing"),
        Err(_) => panic!("the server did not close the connection within {WAIT:?}"),
    }
}

#[tokio::test]
async fn a_silent_text_connection_is_closed_after_the_idle_timeout() {
    let server = TestServer::start(|s| {
        s.ingress.text_bind = "127.0.0.1:0".into();
        s.ingress.text_idle_timeout_secs = 1;
    })
    .await;
    let addr = server.text_addr.expect("text port");
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    expect_closed_by_server(&mut idle).await;

    // A client that speaks is served as before.
    let _home = home_viewer(&server).await;
    let mut client = TextClient::connect(addr).await;
    assert_eq!(client.push(r#"{"page":"home"}"#).await, "ok\n");
    server.stop().await;
}

#[tokio::test]
async fn one_ip_cannot_hold_every_text_slot_and_the_back_office_gets_through() {
    let server = TestServer::start(|s| {
        s.ingress.text_bind = "127.0.0.1:0".into();
        s.ingress.text_token = "text-secret".into();
        s.ingress.text_max_connections_per_ip = 3;
    })
    .await;
    let addr = server.text_addr.expect("text port");
    let mut home = home_viewer(&server).await;

    // One IP fills its share with idle connections; one more is closed at accept.
    let mut hoard = Vec::new();
    for _ in 0..3 {
        hoard.push(connect_from(OTHER_IP, addr).await);
    }
    let mut over = connect_from(OTHER_IP, addr).await;
    expect_closed_by_server(&mut over).await;
    assert_eq!(server.rejected("text_connections_per_ip").await, 1);

    // The back office, from another IP, still pushes with its token.
    let mut office = TextClient::connect(addr).await;
    assert_eq!(
        office
            .push(r#"{"page":"home","token":"text-secret","n":1}"#)
            .await,
        "ok\n"
    );
    assert_eq!(home.recv_json().await["n"], 1);

    // A hoarded slot given back lets that IP in again.
    drop(hoard.pop());
    eventually("the slot is given back", || async {
        let mut again = connect_from(OTHER_IP, addr).await;
        let mut byte = [0u8; 1];
        let closed = matches!(
            tokio::time::timeout(Duration::from_millis(200), again.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        );
        (!closed).then_some(())
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn text_pushes_over_the_source_rate_get_fail_and_other_sources_do_not() {
    let server = TestServer::start(|s| {
        s.ingress.text_bind = "127.0.0.1:0".into();
        s.ingress.push_rate_per_sec = 1;
        s.ingress.push_burst = 2;
    })
    .await;
    let addr = server.text_addr.expect("text port");
    let mut home = home_viewer(&server).await;

    // One write, so that the three lines arrive well within a second.
    let mut flood = TextClient::connect(addr).await;
    flood
        .write(b"{\"page\":\"home\",\"n\":1}\n{\"page\":\"home\",\"n\":2}\n{\"page\":\"home\",\"n\":3}\n")
        .await;
    assert_eq!(flood.reply().await, "ok\n");
    assert_eq!(flood.reply().await, "ok\n");
    assert_eq!(flood.reply().await, "fail\n");
    assert_eq!(server.rejected("rate_limited").await, 1);

    let (read, writer) = connect_from(OTHER_IP, addr).await.into_split();
    let mut other = TextClient {
        reader: tokio::io::BufReader::new(read),
        writer,
    };
    assert_eq!(other.push(r#"{"page":"home","n":4}"#).await, "ok\n");
    for n in [1, 2, 4] {
        assert_eq!(
            home.recv_json().await["n"],
            n,
            "the refused push never arrives"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn udp_datagrams_over_the_source_rate_are_dropped_and_counted() {
    let server = TestServer::start(|s| {
        s.ingress.udp_bind = "127.0.0.1:0".into();
        s.ingress.push_rate_per_sec = 1;
        s.ingress.push_burst = 1;
    })
    .await;
    let addr = server.udp_addr.expect("UDP port");
    let mut home = home_viewer(&server).await;

    let flood = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    for n in 1..=3 {
        flood
            .send_to(format!(r#"{{"page":"home","n":{n}}}"#).as_bytes(), addr)
            .expect("send");
    }
    let marker = std::net::UdpSocket::bind(SocketAddr::new(OTHER_IP.into(), 0)).expect("bind");
    marker
        .send_to(br#"{"page":"home","n":"marker"}"#, addr)
        .expect("send");
    assert_eq!(home.recv_json().await["n"], 1);
    assert_eq!(
        home.recv_json().await["n"],
        "marker",
        "datagrams over the source's rate are dropped"
    );
    assert_eq!(server.rejected("rate_limited").await, 2);
    server.stop().await;
}

#[tokio::test]
async fn a_publisher_over_its_rate_is_closed_with_1008() {
    let server = TestServer::start(|s| {
        s.ingress.push_rate_per_sec = 1;
        s.ingress.push_burst = 1;
    })
    .await;
    let mut home =
        WsClient::connect(&server.ws_url(&format!("/?page=home&token={CLIENT_TOKEN}"))).await;
    let mut app = WsClient::connect(&server.ws_url(&format!("/?token={API_TOKEN}"))).await;
    eventually("both are registered", || async {
        (server.connections("page=home").await == 1).then_some(())
    })
    .await;
    app.send(r#"{"page":"home","n":1}"#).await;
    app.send(r#"{"page":"home","n":2}"#).await;
    let (code, _) = app.expect_close().await;
    assert_eq!(code, 1008);
    assert_eq!(home.recv_json().await["n"], 1);
    assert_eq!(server.rejected("rate_limited").await, 1);

    // Another publisher has its own budget.
    let mut other = WsClient::connect(&server.ws_url(&format!("/?token={API_TOKEN}"))).await;
    other.send(r#"{"page":"home","n":3}"#).await;
    assert_eq!(home.recv_json().await["n"], 3);
    server.stop().await;
}

/// One sample line: metric name, labels (unescaped values), value.
type Sample = (String, Vec<(String, String)>, f64);

/// A strict check of the Prometheus text format (0.0.4): every line is a `# HELP`,
/// `# TYPE` or `# EOF` comment or a sample `name{label="value",...} number`, label
/// values holding only the escapes `\\`, `\"` and `\n`. Returns the samples as
/// (name, [(label, unescaped value)], value).
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") || line == "# EOF" {
            continue;
        }
        let mut chars = line.chars().peekable();
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        assert!(!name.is_empty(), "no metric name in {line:?}");
        let mut labels = Vec::new();
        if chars.peek() == Some(&'{') {
            chars.next();
            loop {
                let mut key = String::new();
                for c in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    assert!(
                        c.is_ascii_alphanumeric() || c == '_',
                        "bad label name in {line:?}"
                    );
                    key.push(c);
                }
                assert_eq!(chars.next(), Some('"'), "unquoted label value in {line:?}");
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some('\\') => match chars.next() {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => panic!("bad escape {other:?} in {line:?}"),
                        },
                        Some('"') => break,
                        Some('\n') | None => panic!("unterminated label value in {line:?}"),
                        Some(c) => value.push(c),
                    }
                }
                labels.push((key, value));
                match chars.next() {
                    Some(',') => continue,
                    Some('}') => break,
                    other => panic!("expected , or }} after a label, got {other:?} in {line:?}"),
                }
            }
        }
        assert_eq!(
            chars.next(),
            Some(' '),
            "no space before the value in {line:?}"
        );
        let value: String = chars.collect();
        let value: f64 = value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("bad sample value in {line:?}"));
        samples.push((name, labels, value));
    }
    samples
}

fn page_series(samples: &[Sample]) -> Vec<(String, f64)> {
    samples
        .iter()
        .filter(|(name, ..)| name == "scenecast_page_connections")
        .map(|(_, labels, value)| (labels[0].1.clone(), *value))
        .collect()
}

#[tokio::test]
async fn metrics_stay_valid_whatever_pages_clients_choose_and_do_not_grow() {
    let server = TestServer::start(|s| {
        s.ops.metrics_pages = vec!["a\"b".into(), "x\\y".into()];
    })
    .await;
    let mut clients = Vec::new();
    for page in ["a%22b", "x%5Cy", "home"] {
        clients.push(
            WsClient::connect(&server.ws_url(&format!("/?page={page}&token={CLIENT_TOKEN}"))).await,
        );
    }
    for n in 0..50 {
        clients.push(
            WsClient::connect(&server.ws_url(&format!("/?page=p{n}&token={CLIENT_TOKEN}"))).await,
        );
    }
    let metrics = eventually("every connection counted", || async {
        let text = server.metrics().await;
        text.contains("scenecast_connections 53").then_some(text)
    })
    .await;
    let mut pages = page_series(&parse_exposition(&metrics));
    pages.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        pages,
        [
            ("_other".to_string(), 50.0),
            ("a\"b".to_string(), 1.0),
            ("home".to_string(), 1.0),
            ("x\\y".to_string(), 1.0),
        ],
        "configured pages keep their series, the 50 others are one"
    );
    server.stop().await;
}

#[tokio::test]
async fn metrics_need_the_bearer_token_when_one_is_set() {
    let server = TestServer::start(|s| s.ops.metrics_token = "scrape-secret".into()).await;
    let url = server.http_url("/metrics");
    let without = server.http.get(&url).send().await.expect("GET");
    assert_eq!(without.status().as_u16(), 401);
    let body: serde_json::Value = without.json().await.expect("JSON");
    assert_eq!(body["code"], 401);
    let wrong = server
        .http
        .get(&url)
        .bearer_auth("scrape-secre")
        .send()
        .await;
    assert_eq!(wrong.expect("GET").status().as_u16(), 401);
    let right = server
        .http
        .get(&url)
        .header("authorization", "bearer scrape-secret")
        .send()
        .await
        .expect("GET");
    assert_eq!(right.status().as_u16(), 200);
    assert!(
        right
            .text()
            .await
            .expect("text")
            .contains("scenecast_rejected_total{reason=\"metrics_token\"} 2")
    );
    server.stop().await;
}

/// The binary under test, as in `common::node`.
fn binary() -> PathBuf {
    std::env::var_os("SCENECAST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_scenecast")))
}

/// Starts the binary with `toml` as its config file, which is removed on drop.
struct Process {
    child: std::process::Child,
    config: PathBuf,
}

impl Process {
    fn start(toml: &str, env: &[(&str, &str)], stderr: Stdio) -> Self {
        let config = std::env::temp_dir().join(format!("scenecast-doors-{}.toml", free_port()));
        std::fs::write(&config, toml).expect("write config");
        let child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(&config)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start the binary");
        Process { child, config }
    }

    /// Waits for the exit (panics after WAIT); the exit code and stderr.
    fn exit(mut self) -> (Option<i32>, String) {
        let deadline = std::time::Instant::now() + WAIT;
        let code = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            use std::io::Read;
            let _ = pipe.read_to_string(&mut stderr);
        }
        (code, stderr)
    }

    /// Whether `/healthz` on `port` answers 200 before the process exits.
    async fn serves(&mut self, port: u16) -> bool {
        let url = format!("http://127.0.0.1:{port}/healthz");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(response) = reqwest::get(&url).await {
                return response.status().is_success();
            }
            assert!(tokio::time::Instant::now() < deadline, "no answer on {url}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

#[test]
fn demo_tokens_beyond_loopback_stop_the_server_naming_the_setting() {
    for (key, section) in [
        (
            "auth.api_tokens",
            "[auth]\napi_tokens = [\"demo-api-token\"]\n",
        ),
        (
            "auth.client_tokens",
            "[auth]\nclient_tokens = [\"change-me-client-token\"]\n",
        ),
    ] {
        let toml = format!("[server]\nbind = \"0.0.0.0:{}\"\n{section}", free_port());
        let (code, stderr) = Process::start(&toml, &[], Stdio::piped()).exit();
        assert_eq!(code, Some(2), "{key}: {stderr}");
        assert!(stderr.contains(key), "the message names {key}: {stderr}");
    }
}

#[tokio::test]
async fn demo_tokens_on_loopback_or_replaced_by_env_start() {
    let port = free_port();
    let toml = format!(
        "[server]\nbind = \"127.0.0.1:{port}\"\nworkers = 1\n\
         [auth]\nclient_tokens = [\"demo-client-token\"]\napi_tokens = [\"demo-api-token\"]\n"
    );
    let mut local = Process::start(&toml, &[], Stdio::null());
    assert!(local.serves(port).await, "demo tokens on loopback start");
    drop(local);

    let port = free_port();
    let toml = format!(
        "[server]\nbind = \"0.0.0.0:{port}\"\nworkers = 1\n\
         [auth]\napi_tokens = [\"demo-api-token\"]\n"
    );
    let env = [("SCENECAST__AUTH__API_TOKENS", "a-real-secret")];
    let mut exposed = Process::start(&toml, &env, Stdio::null());
    assert!(
        exposed.serves(port).await,
        "a real secret from the env starts"
    );
}

#[tokio::test]
async fn anonymous_publishing_beyond_loopback_starts_with_a_warning() {
    let port = free_port();
    let toml = format!(
        "[server]\nbind = \"0.0.0.0:{port}\"\nworkers = 1\n\
         [auth]\nallow_anonymous = true\n[ingress]\nws_publish = \"any\"\n"
    );
    let log = std::env::temp_dir().join(format!("scenecast-doors-open-{port}.log"));
    let stderr = std::fs::File::create(&log).expect("log file");
    let mut node = Process::start(&toml, &[], stderr.into());
    assert!(
        node.serves(port).await,
        "the Swoole + Laravel setup still starts"
    );
    drop(node);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(
        text.contains("WARN") && text.contains("ingress.ws_publish = \"any\""),
        "a warning names the settings:\n{text}"
    );
}

#[tokio::test]
async fn refused_http_requests_are_logged_through_a_throttle() {
    let port = free_port();
    let toml = format!(
        "[server]\nbind = \"127.0.0.1:{port}\"\nworkers = 1\n\
         [auth]\nclient_tokens = [\"{CLIENT_TOKEN}\"]\napi_tokens = [\"{API_TOKEN}\"]\n"
    );
    let log = std::env::temp_dir().join(format!("scenecast-doors-refusals-{port}.log"));
    let stderr = std::fs::File::create(&log).expect("log file");
    let mut node = Process::start(&toml, &[], stderr.into());
    assert!(node.serves(port).await);
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/api/stats?token=wrong");
    for _ in 0..100 {
        let response = http.get(&url).send().await.expect("GET");
        assert_eq!(response.status().as_u16(), 401);
    }
    drop(node);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let lines = text.matches("request refused").count();
    assert!(
        (1..50).contains(&lines),
        "100 refusals left {lines} log lines:\n{text}"
    );
}

#[test]
fn the_heartbeat_default_stays_under_proxy_idle_timeouts_and_swoole_keeps_the_seed() {
    let defaults = Settings::default();
    assert_eq!(defaults.heartbeat.interval_secs, 25);
    assert_eq!(defaults.heartbeat.idle_timeout_secs, 121);
    for name in [
        "swoole-laravel.toml",
        "swoole-scenes.toml",
        "swoole-udp.toml",
    ] {
        let path = std::path::Path::new("examples").join(name);
        let profile = Settings::load(Some(&path)).expect("the profile loads");
        assert_eq!(
            (
                profile.heartbeat.interval_secs,
                profile.heartbeat.idle_timeout_secs
            ),
            (60, 121),
            "{name} keeps the seed's heartbeat"
        );
    }
    let mut tight = Settings::default();
    tight.heartbeat.interval_secs = 60;
    tight.heartbeat.idle_timeout_secs = 61;
    let error = tight.validate().expect_err("one missed ping would close");
    assert!(error.to_string().contains("heartbeat.idle_timeout_secs"));
}
