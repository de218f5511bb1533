//! Idempotent publish (`Idempotency-Key`): a repeat within `history.idempotency_secs`
//! pushes nothing and answers the first reply plus `"duplicate":true`, on one node,
//! across nodes sharing a Redis, under concurrency, and with Redis down.
//!
//! "Nothing was pushed" is proven by order: after the repeat, a marker push sent
//! without a key is the very next frame the subscriber gets.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::{API_TOKEN, CLIENT_TOKEN, RedisServer, TestServer, WsClient, eventually};

/// One HTTP answer: status, `Idempotent-Replayed` header, JSON body.
struct Answer {
    status: StatusCode,
    replayed: bool,
    body: Value,
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let body = response.json().await.expect("a JSON body");
    Answer {
        status,
        replayed,
        body,
    }
}

/// `POST /api/push` with `body`, and the `Idempotency-Key` header when given.
async fn post(server: &TestServer, key: Option<&str>, body: Value) -> Answer {
    let mut request = server
        .http
        .post(server.http_url("/api/push"))
        .bearer_auth(API_TOKEN)
        .json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    answer(request.send().await.expect("HTTP request")).await
}

/// `GET /?func=...` with `query` appended, and the header when given.
async fn trigger(server: &TestServer, query: &str, key: Option<&str>) -> Answer {
    let url = server.http_url(&format!("/?func=pushHomeLogic&token={API_TOKEN}{query}"));
    let mut request = server.http.get(url);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    answer(request.send().await.expect("HTTP request")).await
}

fn to_home(n: u64) -> Value {
    json!({"page": "home", "message": {"n": n}})
}

/// A page-home viewer whose connection the server has taken in (a pong came back).
async fn viewer(server: &TestServer) -> WsClient {
    let mut client =
        WsClient::connect(&server.ws_url(&format!("/?page=home&token={CLIENT_TOKEN}"))).await;
    client.send("heartbeat").await;
    assert_eq!(client.recv_json().await, json!({"type": "pong"}));
    client
}

/// Pushes a marker without a key through `server` and asserts it is the viewer's
/// next frame: nothing was pushed in between.
async fn marker_is_next(server: &TestServer, viewer: &mut WsClient, n: u64) {
    let marker = json!({"page": "home", "message": {"marker": n}});
    assert_eq!(post(server, None, marker).await.status, StatusCode::OK);
    assert_eq!(viewer.recv_json().await, json!({"marker": n}));
}

/// The first reply plus `"duplicate":true`.
fn duplicate_of(first: &Value) -> Value {
    let mut body = first.clone();
    body["duplicate"] = json!(true);
    body
}

async fn duplicates_counted(server: &TestServer) -> u64 {
    server
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("scenecast_idempotent_duplicates_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn redis_node(redis: &RedisServer, prefix: &str, node: &str) -> TestServer {
    let server = TestServer::start(|s| {
        s.redis.url = redis.url();
        s.redis.prefix = prefix.into();
        s.server.node_id = node.into();
    })
    .await;
    wait_healthy(&server).await;
    server
}

async fn wait_healthy(server: &TestServer) {
    eventually("the node says its Redis links are up", || async {
        let (_, health) = server.get_json("/healthz").await;
        (health["status"] == "ok").then_some(())
    })
    .await;
}

fn redis_key(prefix: &str, key: &str) -> String {
    let hex: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{prefix}:idem:{hex}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_key_pushes_once_and_answers_the_first_reply() {
    let server = TestServer::start(|_| {}).await;
    let mut home = viewer(&server).await;

    let first = post(&server, Some("order-42"), to_home(1)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(!first.replayed);
    assert_eq!(first.body["delivered"], 1);
    assert_eq!(first.body.get("duplicate"), None);
    assert_eq!(home.recv_json().await, json!({"n": 1}));

    // Same key, same body: the retry of a reply that got lost.
    let again = post(&server, Some("order-42"), to_home(1)).await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.replayed);
    assert_eq!(again.body, duplicate_of(&first.body));
    // Same key, another body: the key alone decides.
    let other = post(&server, Some("order-42"), to_home(2)).await;
    assert_eq!(other.body, duplicate_of(&first.body));
    marker_is_next(&server, &mut home, 1).await;

    // Another key is another push.
    let next = post(&server, Some("order-43"), to_home(3)).await;
    assert_eq!(next.body.get("duplicate"), None);
    assert_eq!(home.recv_json().await, json!({"n": 3}));
    assert_eq!(duplicates_counted(&server).await, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_body_field_and_get_query_are_one_key() {
    let server = TestServer::start(|_| {}).await;
    let mut home = viewer(&server).await;

    // Body field first; the header and the GET query then name the same key.
    let mut body = to_home(1);
    body["idempotency_key"] = json!("k-1");
    let first = post(&server, None, body).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(home.recv_json().await, json!({"n": 1}));
    let by_header = post(&server, Some("k-1"), to_home(2)).await;
    assert_eq!(by_header.body, duplicate_of(&first.body));
    let by_query = trigger(&server, "&idempotency_key=k-1", None).await;
    assert_eq!(by_query.body, duplicate_of(&first.body));
    // A header in the IETF draft's quoted form is the same key.
    let quoted = post(&server, Some("\"k-1\""), to_home(2)).await;
    assert_eq!(quoted.body, duplicate_of(&first.body));
    marker_is_next(&server, &mut home, 1).await;

    // A GET trigger first: its reply (with "func") is what the header repeat gets.
    let first = trigger(&server, "&idempotency_key=g-1", None).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body["func"], "pushHomeLogic");
    assert_eq!(home.recv_json().await["message"], "后端按了按钮1");
    let again = trigger(&server, "", Some("g-1")).await;
    assert!(again.replayed);
    assert_eq!(again.body, duplicate_of(&first.body));
    marker_is_next(&server, &mut home, 2).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_are_refused_and_refused_requests_burn_no_key() {
    let server = TestServer::start(|_| {}).await;
    let mut home = viewer(&server).await;

    let long = "k".repeat(256);
    for key in ["", "has space", long.as_str(), "tab\there"] {
        let refused = post(&server, Some(key), to_home(1)).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "key {key:?}");
        let message = refused.body["message"].as_str().unwrap();
        assert!(message.contains("Idempotency-Key"), "{message}");
    }
    let mut body = to_home(1);
    body["idempotency_key"] = json!(42);
    let refused = post(&server, None, body).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused.body["message"]
            .as_str()
            .unwrap()
            .contains("idempotency_key")
    );
    let refused = trigger(&server, "&idempotency_key=caf%C3%A9", None).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused.body["message"]
            .as_str()
            .unwrap()
            .contains("?idempotency_key=")
    );
    // Two different keys in one request.
    let mut body = to_home(1);
    body["idempotency_key"] = json!("a");
    let refused = post(&server, Some("b"), body).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(server.rejected("idempotency_key").await >= 7);
    marker_is_next(&server, &mut home, 1).await;

    // A request refused before its push (bad target) leaves the key free: the
    // corrected retry with the same key publishes.
    let refused = post(
        &server,
        Some("fix-me"),
        json!({"page": "", "message": {"n": 2}}),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    let fixed = post(&server, Some("fix-me"), to_home(2)).await;
    assert_eq!(fixed.status, StatusCode::OK);
    assert_eq!(fixed.body.get("duplicate"), None);
    assert_eq!(home.recv_json().await, json!({"n": 2}));
    server.stop().await;
}

/// Ten identical requests at once, spread over `servers`: one push, ten identical
/// bodies, nine duplicates.
async fn ten_at_once(servers: &[&TestServer], viewer: &mut WsClient, key: &str) {
    let requests = (0..10).map(|i| post(servers[i % servers.len()], Some(key), to_home(7)));
    let answers = futures_util::future::join_all(requests).await;
    let firsts: Vec<&Answer> = answers.iter().filter(|a| !a.replayed).collect();
    assert_eq!(firsts.len(), 1, "one request published");
    let first = &firsts[0].body;
    assert_eq!(first["code"], 200);
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK);
        if answer.replayed {
            assert_eq!(answer.body, duplicate_of(first));
        }
    }
    assert_eq!(viewer.recv_json().await, json!({"n": 7}));
    marker_is_next(servers[0], viewer, 7).await;
    let mut duplicates = 0;
    for server in servers {
        duplicates += duplicates_counted(server).await;
    }
    assert_eq!(duplicates, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_repeats_push_once_in_memory() {
    let server = TestServer::start(|s| s.server.workers = 2).await;
    let mut home = viewer(&server).await;
    ten_at_once(&[&server], &mut home, "burst").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_repeats_on_two_nodes_push_once() {
    let redis = RedisServer::start();
    let a = redis_node(&redis, "idem-burst", "a").await;
    let b = redis_node(&redis, "idem-burst", "b").await;
    let mut on_b = viewer(&b).await;
    ten_at_once(&[&a, &b], &mut on_b, "burst").await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_pushes_again_after_the_window() {
    let server = TestServer::start(|s| s.history.idempotency_secs = 1).await;
    let mut home = viewer(&server).await;
    let first = post(&server, Some("short"), to_home(1)).await;
    assert_eq!(home.recv_json().await, json!({"n": 1}));
    assert!(post(&server, Some("short"), to_home(2)).await.replayed);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let later = post(&server, Some("short"), to_home(3)).await;
    assert!(!later.replayed);
    // A new push: the same reply but for its own history offset.
    let without_offset = |mut body: Value| {
        body.as_object_mut().unwrap().remove("offset");
        body
    };
    assert_ne!(later.body["offset"], first.body["offset"]);
    assert_eq!(without_offset(later.body), without_offset(first.body));
    assert_eq!(home.recv_json().await, json!({"n": 3}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_sent_to_another_node_is_a_duplicate() {
    let redis = RedisServer::start();
    let prefix = "idem-two";
    let a = redis_node(&redis, prefix, "a").await;
    let b = redis_node(&redis, prefix, "b").await;
    let mut on_b = viewer(&b).await;

    let first = post(&a, Some("order-42"), to_home(1)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body["cluster_wide"], true);
    assert_eq!(on_b.recv_json().await, json!({"n": 1}));
    let retry = post(&b, Some("order-42"), to_home(1)).await;
    assert!(retry.replayed);
    assert_eq!(retry.body, duplicate_of(&first.body));
    marker_is_next(&b, &mut on_b, 1).await;

    // Redis holds the key's hash, never its text, for the window.
    let mut conn = redis.conn();
    let names: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:idem:*"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(names, vec![redis_key(prefix, "order-42")]);
    let ttl: i64 = redis::cmd("PTTL").arg(&names[0]).query(&mut conn).unwrap();
    assert!((290_000..=300_000).contains(&ttl), "ttl {ttl} ms");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_left_by_a_dead_node_expires_and_the_repeat_publishes() {
    let redis = RedisServer::start();
    let prefix = "idem-dead";
    let server = redis_node(&redis, prefix, "a").await;
    let mut home = viewer(&server).await;
    let mut conn = redis.conn();

    // A node claimed "orphan" and died before publishing: its claim outlives it
    // for a moment. The repeat waits, then publishes once the claim expires.
    let _: () = redis::cmd("SET")
        .arg(redis_key(prefix, "orphan"))
        .arg("pending:dead")
        .arg("PX")
        .arg(1_500)
        .query(&mut conn)
        .unwrap();
    let started = Instant::now();
    let answer = post(&server, Some("orphan"), to_home(1)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(!answer.replayed);
    assert!(started.elapsed() >= Duration::from_millis(1_000));
    assert_eq!(home.recv_json().await, json!({"n": 1}));

    // A claim that stays beyond the wait: 409, nothing pushed.
    let _: () = redis::cmd("SET")
        .arg(redis_key(prefix, "stuck"))
        .arg("pending:slow")
        .arg("PX")
        .arg(60_000)
        .query(&mut conn)
        .unwrap();
    let answer = post(&server, Some("stuck"), to_home(2)).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .contains("in progress")
    );
    // A value scenecast did not write: a JSON error, nothing pushed.
    let _: () = redis::cmd("SET")
        .arg(redis_key(prefix, "garbage"))
        .arg("\u{1}not ours")
        .query(&mut conn)
        .unwrap();
    let answer = post(&server, Some("garbage"), to_home(3)).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.body["code"], 500);
    assert_eq!(server.rejected("idempotency_in_progress").await, 1);
    assert_eq!(server.rejected("idempotency_unreadable").await, 1);
    marker_is_next(&server, &mut home, 1).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_a_keyed_push_is_refused_and_pushes_nothing() {
    let redis = RedisServer::start();
    let port = redis.port;
    let prefix = "idem-down";
    let server = redis_node(&redis, prefix, "a").await;
    let mut home = viewer(&server).await;

    redis.kill();
    let refused = post(&server, Some("during-outage"), to_home(1)).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    let message = refused.body["message"].as_str().unwrap();
    assert!(message.contains("nothing was pushed"), "{message}");
    // Pushes without a key still reach this node's viewers, as before.
    let unkeyed = post(&server, None, to_home(2)).await;
    assert_eq!(unkeyed.status, StatusCode::OK);
    assert_eq!(unkeyed.body["cluster_wide"], false);
    assert_eq!(home.recv_json().await, json!({"n": 2}));
    assert_eq!(server.rejected("idempotency_unavailable").await, 1);

    // Redis is back: the client's retry with the same key publishes.
    let _redis = RedisServer::start_on(port);
    wait_healthy(&server).await;
    let retry = post(&server, Some("during-outage"), to_home(1)).await;
    assert_eq!(retry.status, StatusCode::OK);
    assert!(!retry.replayed);
    assert_eq!(home.recv_json().await, json!({"n": 1}));
    server.stop().await;
}
