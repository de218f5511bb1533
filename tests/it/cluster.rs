//! Several scenecast processes on one test-owned redis-server: cross-node delivery
//! through every ingress, cluster-wide counts, crash clean-up, Redis outages.
//! Every process is killed by its guard's `Drop`, even when an assertion fails.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::text::{TextClient, udp_send};
use crate::common::{API_TOKEN, CLIENT_TOKEN, Node, RedisServer, WsClient, eventually, free_port};

pub(crate) fn client_url(node: &Node, query: &str) -> String {
    node.ws_url(&format!("/?{query}&token={CLIENT_TOKEN}"))
}

pub(crate) async fn get(node: &Node, path: &str) -> Value {
    reqwest::get(node.http_url(path))
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON")
}

pub(crate) async fn api_push(node: &Node, body: Value) -> Value {
    reqwest::Client::new()
        .post(node.http_url("/api/push"))
        .bearer_auth(API_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON")
}

pub(crate) fn hlen(redis: &RedisServer, prefix: &str) -> usize {
    redis::cmd("HLEN")
        .arg(format!("{prefix}:conns"))
        .query(&mut redis.conn())
        .unwrap_or(0)
}

/// Waits until Redis lists `expected` connections (the registry writes in the background).
pub(crate) async fn wait_registered(redis: &RedisServer, prefix: &str, expected: usize) {
    eventually(&format!("{expected} connections registered"), || async {
        (hlen(redis, prefix) == expected).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_entering_any_node_reaches_every_node_once() {
    let redis = RedisServer::start();
    let prefix = "sc-fanout";
    // Node a also takes the text port, node c the UDP port.
    let text_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let udp_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let a = Node::spawn(
        "a",
        &redis.url(),
        prefix,
        10,
        &format!("[ingress]\ntext_bind = \"{text_addr}\"\n"),
    );
    let b = Node::spawn("b", &redis.url(), prefix, 10, "");
    let c = Node::spawn(
        "c",
        &redis.url(),
        prefix,
        10,
        &format!("[ingress]\nudp_bind = \"{udp_addr}\"\n"),
    );
    for node in [&a, &b, &c] {
        node.wait_status("ok").await;
    }
    let mut home_a = WsClient::connect(&client_url(&a, "page=home")).await;
    let mut home_b = WsClient::connect(&client_url(&b, "page=home&uid=7")).await;
    let mut list_c = WsClient::connect(&client_url(&c, "page=list&uid=7")).await;
    wait_registered(&redis, prefix, 3).await;

    // Seed trigger on node a: both home pages, on a and b, and not the list on c.
    let body = get(&a, &format!("/?func=pushHomeLogic&token={API_TOKEN}")).await;
    assert_eq!(body["delivered"], 2, "{body}");
    assert_eq!(body["cluster_wide"], true);
    let expected = json!({"code": 200, "message": "后端按了按钮1"});
    assert_eq!(home_a.recv_json().await, expected);
    assert_eq!(home_b.recv_json().await, expected);

    // JSON API on node c to uid 7: its tabs on b and c.
    let body = api_push(&c, json!({"uid": "7", "message": {"cnt": 5}})).await;
    assert_eq!(body["delivered"], 2, "{body}");
    assert_eq!(home_b.recv_json().await, json!({"cnt": 5}));
    assert_eq!(list_c.recv_json().await, json!({"cnt": 5}));

    // A publisher WebSocket on node b, to everyone.
    let mut publisher = WsClient::connect(&b.ws_url(&format!("/?token={API_TOKEN}"))).await;
    publisher.send(r#"{"order_num":1234}"#).await;
    for client in [&mut home_a, &mut home_b, &mut list_c] {
        assert_eq!(client.recv_json().await, json!({"order_num": 1234}));
    }

    // The text port on node a: uid 7 lives on b and c; `ok` counts the cluster.
    let mut text = TextClient::connect(text_addr).await;
    assert_eq!(text.push(r#"{"uid":"7","percent":"88%"}"#).await, "ok\n");
    assert_eq!(
        home_b.recv_json().await,
        json!({"uid": "7", "percent": "88%"})
    );
    assert_eq!(
        list_c.recv_json().await,
        json!({"uid": "7", "percent": "88%"})
    );
    assert_eq!(text.push(r#"{"uid":"nobody"}"#).await, "fail\n");

    // A UDP datagram into node c, to the home page on a and b.
    udp_send(udp_addr, br#"{"page":"home","n":1}"#);
    assert_eq!(home_a.recv_json().await, json!({"page": "home", "n": 1}));
    assert_eq!(home_b.recv_json().await, json!({"page": "home", "n": 1}));

    // Exactly once: nothing further arrives anywhere.
    for client in [&mut home_a, &mut home_b, &mut list_c] {
        client.expect_silence(Duration::from_millis(300)).await;
    }

    // Presence and stats are cluster-wide, whichever node is asked.
    for node in [&a, &b, &c] {
        let presence = get(node, &format!("/api/presence?page=home&token={API_TOKEN}")).await;
        assert_eq!(
            presence,
            json!({"code": 200, "page": "home", "connections": 2, "cluster_wide": true})
        );
        let presence = get(node, &format!("/api/presence?uid=7&token={API_TOKEN}")).await;
        assert_eq!(presence["connections"], 2);
    }
    let stats = get(&a, &format!("/api/stats?token={API_TOKEN}")).await;
    // The publisher holds a connection too (no page).
    assert_eq!(stats["connections"], 4, "{stats}");
    assert_eq!(stats["nodes"], 3);
    assert_eq!(
        stats["pages"],
        json!([{"page": "home", "connections": 2}, {"page": "list", "connections": 1}])
    );

    let metrics = reqwest::get(b.http_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "scenecast_bus_latency_seconds_count",
        "scenecast_deliveries_total",
        "scenecast_redis_reconnects_total",
        "scenecast_page_connections{page=\"home\"} 1",
        "scenecast_pushes_total{ingress=\"ws_publisher\"} 1",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_disappears_from_redis_within_two_ttls() {
    let redis = RedisServer::start();
    let prefix = "sc-crash";
    let ttl = 3;
    let survivor = Node::spawn("survivor", &redis.url(), prefix, ttl, "");
    let mut doomed = Node::spawn("doomed", &redis.url(), prefix, ttl, "");
    survivor.wait_status("ok").await;
    doomed.wait_status("ok").await;
    let _alive = WsClient::connect(&client_url(&survivor, "page=home")).await;
    let mut on_doomed = Vec::new();
    for _ in 0..3 {
        on_doomed.push(WsClient::connect(&client_url(&doomed, "page=home&uid=9")).await);
    }
    wait_registered(&redis, prefix, 4).await;

    doomed.kill();
    let killed_at = Instant::now();
    wait_registered(&redis, prefix, 1).await;
    let took = killed_at.elapsed();
    assert!(
        took <= Duration::from_secs(2 * ttl + 1),
        "entries of a dead node must go within 2 x TTL; took {took:?}"
    );
    let mut conn = redis.conn();
    let entries: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{prefix}:conns"))
        .query(&mut conn)
        .unwrap();
    assert!(
        entries.keys().all(|id| id.starts_with("survivor:")),
        "{entries:?}"
    );
    let uid_members: usize = redis::cmd("SCARD")
        .arg(format!("{prefix}:uid:9"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(uid_members, 0, "index sets are cleaned too");
    let nodes: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{prefix}:nodes"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(nodes, vec!["survivor".to_string()]);
    let presence = get(
        &survivor,
        &format!("/api/presence?page=home&token={API_TOKEN}"),
    )
    .await;
    assert_eq!(presence["connections"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_removes_its_entries_at_once() {
    let redis = RedisServer::start();
    let prefix = "sc-term";
    let stays = Node::spawn("stays", &redis.url(), prefix, 10, "");
    let mut leaves = Node::spawn("leaves", &redis.url(), prefix, 10, "");
    stays.wait_status("ok").await;
    leaves.wait_status("ok").await;
    let _kept = WsClient::connect(&client_url(&stays, "page=home")).await;
    let mut dropped = WsClient::connect(&client_url(&leaves, "page=home")).await;
    wait_registered(&redis, prefix, 2).await;

    let status = leaves.terminate().expect("was running");
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(dropped.expect_close().await.0, 1001);
    // Removed by the stop itself, long before a TTL could expire.
    assert_eq!(hlen(&redis, prefix), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_ride_out_a_redis_restart() {
    let redis = RedisServer::start();
    let prefix = "sc-outage";
    let a = Node::spawn("a", &redis.url(), prefix, 10, "");
    let b = Node::spawn("b", &redis.url(), prefix, 10, "");
    a.wait_status("ok").await;
    b.wait_status("ok").await;
    let mut on_a = WsClient::connect(&client_url(&a, "page=home")).await;
    let mut on_b = WsClient::connect(&client_url(&b, "page=home")).await;
    wait_registered(&redis, prefix, 2).await;

    // Redis dies (no persistence: it will come back empty).
    let port = redis.kill();
    a.wait_status("degraded").await;
    let health = a.health().await.unwrap();
    assert_eq!(health["redis"], false);
    assert_eq!(health["mode"], "redis");

    // Node a still serves its own clients, and says the count is local.
    let body = get(&a, &format!("/?func=pushHomeLogic&token={API_TOKEN}")).await;
    assert_eq!(
        (body["code"].clone(), body["delivered"].clone()),
        (json!(200), json!(1))
    );
    assert_eq!(body["cluster_wide"], false);
    assert_eq!(on_a.recv_json().await["code"], 200);
    // A client connecting during the outage is served too.
    let mut late = WsClient::connect(&client_url(&b, "page=list")).await;

    let redis = RedisServer::start_on(port);
    a.wait_status("ok").await;
    b.wait_status("ok").await;
    // Every live connection is registered again, including the one that came
    // during the outage, and cross-node delivery works again.
    wait_registered(&redis, prefix, 3).await;
    let body = api_push(&a, json!({"all": true, "message": "back"})).await;
    assert_eq!(body["delivered"], 3, "{body}");
    assert_eq!(on_b.recv_json().await, json!("back"));
    assert_eq!(on_a.recv_json().await, json!("back"));
    assert_eq!(late.recv_json().await, json!("back"));
}
