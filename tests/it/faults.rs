//! Redis faults against real nodes (processes) on a test-owned redis-server, under a
//! steady push load: what clients receive, what push replies say, what `/healthz`
//! says, and that each node recovers by itself. One test per fault of issue 13.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::{api_push, client_url, get, hlen, wait_registered};
use crate::common::{API_TOKEN, Node, Proxy, RedisServer, WsClient, eventually};

fn cmd(redis: &RedisServer, args: &[&str]) -> redis::Value {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command
        .query(&mut redis.conn())
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

async fn presence(node: &Node, page: &str) -> Value {
    get(
        node,
        &format!("/api/presence?page={page}&token={API_TOKEN}"),
    )
    .await
}

/// Pushes `{"n": i}` to page `load` through one node every 20 ms while a tab on
/// (usually) another node records what it receives.
struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    pusher: tokio::task::JoinHandle<u64>,
    reader: tokio::task::JoinHandle<(WsClient, Vec<u64>)>,
    received: Arc<Mutex<Vec<u64>>>,
}

impl Load {
    async fn start(via: &Node, tab_on: &Node) -> Load {
        let mut tab = WsClient::connect(&client_url(tab_on, "page=load")).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let url = via.http_url("/api/push");
        let pusher = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = http
                        .post(&url)
                        .bearer_auth(API_TOKEN)
                        .timeout(Duration::from_secs(5))
                        .json(&json!({"page": "load", "message": {"n": n}}))
                        .send()
                        .await;
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                n
            })
        };
        let reader = {
            let received = received.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    // Faults may hold pushes up for longer than a usual wait.
                    let Some(text) = tab.next_text(Duration::from_secs(60)).await else {
                        panic!("no load push within 60 s");
                    };
                    let frame: Value = serde_json::from_str(&text).expect("JSON frame");
                    if frame == json!("end") {
                        return (tab, seen);
                    }
                    let n = frame["n"].as_u64().expect("a load frame");
                    seen.push(n);
                    received.lock().unwrap().push(n);
                }
            })
        };
        Load {
            stop,
            pusher,
            reader,
            received,
        }
    }

    /// Waits until the tab received a push sent after this call (the cluster
    /// delivers through `via` to the tab again).
    async fn wait_flowing(&self) {
        let from = self.received.lock().unwrap().len();
        let start = self.received.lock().unwrap().last().copied().unwrap_or(0);
        eventually("load pushes arriving again", || async {
            let received = self.received.lock().unwrap();
            (received.len() > from + 2 && received.last().copied().unwrap_or(0) > start)
                .then_some(())
        })
        .await;
    }

    /// Stops pushing, sends `"end"` through `via` and returns what the tab got: it
    /// must be in order and without duplicates, whatever was lost in a fault.
    async fn finish(self, via: &Node) -> Vec<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = self.pusher.await.expect("pusher");
        let reply = api_push(via, json!({"page": "load", "message": "end"})).await;
        assert_eq!(reply["cluster_wide"], true, "{reply}");
        let (_tab, seen) = self.reader.await.expect("reader");
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "pushes out of order or twice: {seen:?}"
        );
        assert!(
            seen.last().is_some_and(|last| *last + 5 >= sent),
            "the last pushes before the end must arrive (sent {sent}): {seen:?}"
        );
        seen
    }
}

/// Case 1: garbage on the bus channel (a lone multi-byte character panicked every
/// node's bus task) is counted and skipped; delivery goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_bus_channel_stops_no_delivery() {
    let redis = RedisServer::start();
    let prefix = "sc-garbage";
    let a = Node::spawn("a", &redis.url(), prefix, 10, "");
    let b = Node::spawn("b", &redis.url(), prefix, 10, "");
    a.wait_status("ok").await;
    b.wait_status("ok").await;
    let load = Load::start(&b, &a).await;
    let mut tab = WsClient::connect(&client_url(&a, "page=home")).await;
    wait_registered(&redis, prefix, 2).await;

    let channel = format!("{prefix}:push");
    for garbage in [
        "é",
        "",
        "p",
        "p1:2:3:9:é",
        "a1:x:0:0:",
        "u99999999999999999999:1:1:1:é{}",
    ] {
        cmd(&redis, &["PUBLISH", &channel, garbage]);
    }
    cmd(&redis, &["PUBLISH", &channel, "\u{1F600}\u{1F600}"]);
    // Well-formed envelopes for the tab's page that no ingress could have sent: an
    // empty frame, and one over server.max_message_bytes (64 KiB by default).
    let oversized = format!("p1:0:0:4:home\"{}\"", "y".repeat(70_000));
    cmd(&redis, &["PUBLISH", &channel, "p1:0:0:4:home"]);
    cmd(&redis, &["PUBLISH", &channel, &oversized]);

    let reply = api_push(&b, json!({"page": "home", "message": "after garbage"})).await;
    assert_eq!(reply["cluster_wide"], true, "{reply}");
    assert_eq!(tab.recv_json().await, json!("after garbage"));
    load.wait_flowing().await;
    assert_eq!(a.health().await.unwrap()["status"], "ok");
    let metrics = reqwest::get(a.http_url("/metrics")).await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains("scenecast_rejected_total{reason=\"bus_message\"} 9"),
        "{metrics}"
    );
    load.finish(&b).await;
}

/// Case 1, crash-only: a critical task that ends stops the process with a
/// non-zero status. The registry worker ends when another process takes over this
/// node's liveness key (two live processes with one node id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_critical_task_stops_the_process_non_zero() {
    let redis = RedisServer::start();
    let prefix = "sc-critical";
    let mut a = Node::spawn("a", &redis.url(), prefix, 2, "");
    a.wait_status("ok").await;
    cmd(
        &redis,
        &["SET", &format!("{prefix}:node:a:alive"), "someone-else"],
    );
    let status = a
        .wait_exit(Duration::from_secs(10))
        .expect("the node must stop when its registry worker ends");
    assert!(!status.success(), "{status:?}");
    assert!(
        a.log_text().contains("critical task registry worker"),
        "{}",
        a.log_text()
    );
}

/// Case 2: Redis closes the node's connections (CLIENT KILL, or its idle
/// `timeout`); each link comes back by itself and pushes go cluster-wide again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_connections_come_back_by_themselves() {
    let redis = RedisServer::start();
    let prefix = "sc-killed";
    let a = Node::spawn("a", &redis.url(), prefix, 10, "");
    let b = Node::spawn("b", &redis.url(), prefix, 10, "");
    a.wait_status("ok").await;
    b.wait_status("ok").await;
    let mut tab = WsClient::connect(&client_url(&b, "page=home")).await;
    let load = Load::start(&a, &b).await;
    wait_registered(&redis, prefix, 2).await;

    // Redis closes the quiet command connections: by CLIENT KILL, then by its own
    // idle `timeout` (managed Redis often sets one); then the subscribers too.
    cmd(&redis, &["CLIENT", "KILL", "TYPE", "normal"]);
    cmd(&redis, &["CONFIG", "SET", "timeout", "1"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cmd(&redis, &["CONFIG", "SET", "timeout", "0"]);
    cluster_wide_again(&a, &mut tab).await;
    cmd(&redis, &["CLIENT", "KILL", "TYPE", "pubsub"]);
    cluster_wide_again(&a, &mut tab).await;
    load.wait_flowing().await;
    load.finish(&a).await;
    a.wait_status("ok").await;
}

/// Pushes through `via` until one says `cluster_wide: true`, then a marker that
/// `tab` must get (after any of the tries).
async fn cluster_wide_again(via: &Node, tab: &mut WsClient) {
    let mut n = 0;
    eventually("a push through the node reaches the cluster", || {
        n += 1;
        let body = json!({"page": "home", "message": {"try": n}});
        async move {
            let reply = api_push(via, body).await;
            (reply["cluster_wide"] == true).then_some(())
        }
    })
    .await;
    let reply = api_push(via, json!({"page": "home", "message": "marker"})).await;
    assert_eq!(reply["cluster_wide"], true, "{reply}");
    loop {
        let frame = tab.recv_json().await;
        if frame == json!("marker") {
            break;
        }
        assert!(frame["try"].is_u64(), "{frame}");
    }
}

/// Case 3: the node's Redis sockets go silent (a black hole: no error, no reset).
/// The node notices within seconds, says `degraded` with a reason, answers
/// `cluster_wide: false` while still serving its own tabs, and recovers by itself
/// on fresh sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_redis_link_is_noticed_and_replaced() {
    let redis = RedisServer::start();
    let prefix = "sc-blackhole";
    let upstream = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    let proxy = Proxy::start(upstream).await;
    let deaf = Node::spawn("deaf", &proxy.url(), prefix, 10, "");
    let other = Node::spawn("other", &redis.url(), prefix, 10, "");
    deaf.wait_status("ok").await;
    other.wait_status("ok").await;
    let mut tab = WsClient::connect(&client_url(&deaf, "page=home")).await;
    let load = Load::start(&other, &deaf).await;
    wait_registered(&redis, prefix, 2).await;

    proxy.freeze();
    deaf.wait_status("degraded").await;
    let health = deaf.health().await.unwrap();
    let reason = health["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("redis link "), "{health}");
    assert!(health["since"].as_u64().is_some(), "{health}");

    // Its own tabs are still served, and the reply does not claim the cluster.
    let reply = api_push(&deaf, json!({"page": "home", "message": "local"})).await;
    assert_eq!(reply["cluster_wide"], false, "{reply}");
    loop {
        // Redis may run the publish later; the tab still gets it once.
        if tab.recv_json().await == json!("local") {
            break;
        }
    }

    // The old sockets stay silent for good; new ones work: the node must replace
    // its links by itself.
    proxy.thaw_new();
    deaf.wait_status("ok").await;
    load.wait_flowing().await;
    let reply = api_push(&other, json!({"page": "home", "message": "heard"})).await;
    assert_eq!(reply["cluster_wide"], true, "{reply}");
    assert_eq!(tab.recv_json().await, json!("heard"));
    tab.expect_silence(Duration::from_millis(300)).await;
    load.finish(&other).await;
}

/// Case 4: a second node with a node_id held by a live node refuses to start
/// (exit 2, naming `server.node_id`) and the first is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_id_held_by_a_live_node_is_refused() {
    let redis = RedisServer::start();
    let prefix = "sc-dup";
    let first = Node::spawn("same", &redis.url(), prefix, 2, "");
    first.wait_status("ok").await;
    let _tabs = [
        WsClient::connect(&client_url(&first, "page=home")).await,
        WsClient::connect(&client_url(&first, "page=home")).await,
    ];
    wait_registered(&redis, prefix, 2).await;

    let mut second = Node::spawn("same", &redis.url(), prefix, 2, "");
    let status = second
        .wait_exit(Duration::from_secs(10))
        .expect("the second node must stop");
    assert_eq!(status.code(), Some(2), "{}", second.log_text());
    assert!(
        second.log_text().contains("server.node_id"),
        "{}",
        second.log_text()
    );

    // The first one's entries survive, through more than a TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(presence(&first, "home").await["connections"], 2);
    assert_eq!(first.health().await.unwrap()["status"], "ok");
}

/// Case 4: the default node id is unique per process (and per server).
#[test]
fn the_default_node_id_is_unique() {
    let settings = scenecast::Settings::default();
    let (one, two) = (settings.node_id(), settings.node_id());
    assert_ne!(one, two);
    assert!(one.contains(&format!("-{}-", std::process::id())), "{one}");
}

/// Case 5: a node paused past 2 x TTL is purged by its peers; when it resumes it
/// finds out and registers its live connections again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_purged_during_a_pause_registers_again() {
    let redis = RedisServer::start();
    let prefix = "sc-paused";
    let a = Node::spawn("a", &redis.url(), prefix, 2, "");
    let b = Node::spawn("b", &redis.url(), prefix, 2, "");
    a.wait_status("ok").await;
    b.wait_status("ok").await;
    let _on_a = WsClient::connect(&client_url(&a, "page=home")).await;
    let _on_b = [
        WsClient::connect(&client_url(&b, "page=home")).await,
        WsClient::connect(&client_url(&b, "page=home")).await,
    ];
    let load = Load::start(&a, &b).await;
    wait_registered(&redis, prefix, 4).await;

    b.pause();
    // Its peer purges it once its liveness key expired.
    eventually("b purged by a", || async {
        (hlen(&redis, prefix) == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.resume();

    eventually("presence back to 3 after the resume", || async {
        (presence(&a, "home").await["connections"] == 3).then_some(())
    })
    .await;
    wait_registered(&redis, prefix, 4).await;
    load.wait_flowing().await;
    load.finish(&a).await;
}

/// Case 7: a publish that times out while Redis is stalled, and that Redis runs
/// later, reaches the publishing node's tab once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_redis_runs_late_is_delivered_once() {
    let redis = RedisServer::start();
    let prefix = "sc-late";
    let a = Node::spawn("a", &redis.url(), prefix, 10, "");
    let b = Node::spawn("b", &redis.url(), prefix, 10, "");
    a.wait_status("ok").await;
    b.wait_status("ok").await;
    let mut on_a = WsClient::connect(&client_url(&a, "page=home")).await;
    let mut on_b = WsClient::connect(&client_url(&b, "page=home")).await;
    let load = Load::start(&b, &a).await;
    wait_registered(&redis, prefix, 3).await;

    cmd(&redis, &["CLIENT", "PAUSE", "2000", "WRITE"]);
    let reply = api_push(&a, json!({"page": "home", "message": "slow"})).await;
    assert_eq!(reply["cluster_wide"], false, "{reply}");
    assert_eq!(on_a.recv_json().await, json!("slow"));
    // Redis runs the publish once the pause ends: b gets it, a skips its echo.
    assert_eq!(on_b.recv_json().await, json!("slow"));
    let reply = api_push(&a, json!({"page": "home", "message": "marker"})).await;
    assert_eq!(reply["cluster_wide"], true, "{reply}");
    assert_eq!(on_a.recv_json().await, json!("marker"));
    assert_eq!(on_b.recv_json().await, json!("marker"));
    on_a.expect_silence(Duration::from_millis(300)).await;
    load.wait_flowing().await;
    load.finish(&b).await;
}

/// Redis restarted empty: until this node's subscription is back, a publish the command
/// link gets through reaches no subscriber, and the emptied nodes set made "0 of 0
/// nodes listening" look like everyone, so the push was lost for this node's own
/// clients. Every push made through the restart must reach the page, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_right_after_redis_restarted_empty_still_reach_this_nodes_clients() {
    use crate::common::TestServer;
    use crate::common::server::CLIENT_TOKEN;

    let redis = RedisServer::start();
    let server = TestServer::start(|s| {
        s.redis.url = redis.url();
        s.redis.prefix = "restart-empty".into();
    })
    .await;
    let healthy = || async {
        let (_, health) = server.get_json("/healthz").await;
        (health["status"] == "ok").then_some(())
    };
    eventually("the node's Redis links are up", healthy).await;
    let mut home =
        WsClient::connect(&server.ws_url(&format!("/?page=home&token={CLIENT_TOKEN}"))).await;
    home.send("heartbeat").await;
    assert_eq!(home.recv_json().await, json!({"type": "pong"}));

    let port = redis.kill();
    let _redis = RedisServer::start_on(port);
    // At once, while the subscription link is still in its back-off: each push
    // goes through Redis, or fails over to this node; none may be lost.
    let mut through_redis = 0;
    for n in 1..=40u64 {
        let (status, reply) = server
            .api_push(&json!({"page": "home", "message": {"n": n}}).to_string())
            .await;
        assert_eq!(status, 200, "{reply}");
        if reply["offset"].is_string() {
            through_redis += 1;
        }
        assert_eq!(home.recv_json().await, json!({"n": n}), "push {n}: {reply}");
        if through_redis >= 5 && healthy().await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        through_redis > 0,
        "no push went through the restarted Redis"
    );
    server.stop().await;
}
