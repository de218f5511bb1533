//! Recovery in cluster mode: real scenecast processes sharing a test redis-server.
//! The history and its offsets live in Redis, so a client comes back to any node;
//! a node killed mid-stream loses nobody's pushes; Redis restarted empty is a new
//! epoch and `recovered:false`.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::{api_push, wait_registered};
use crate::common::{API_TOKEN, Node, RedisServer};
use crate::recovery::{Recovering, connect, connect_when_ready, next_push, recovered, resume};

fn base(node: &Node) -> String {
    node.ws_url("")
}

async fn push_ok(node: &Node, body: Value) -> Value {
    let reply = api_push(node, body).await;
    assert_eq!(reply["code"], 200, "{reply}");
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_recovers_on_another_node_with_targets_as_they_were() {
    let redis = RedisServer::start();
    let prefix = "sc-recover-x";
    let a = Node::spawn("a", &redis.url(), prefix, 10, "");
    let b = Node::spawn("b", &redis.url(), prefix, 10, "");
    for node in [&a, &b] {
        node.wait_status("ok").await;
    }
    let mut first = connect(&base(&a), "page=home&uid=7", "").await;
    wait_registered(&redis, prefix, 1).await;
    let reply = push_ok(&b, json!({"page": "home", "message": {"n": 0}})).await;
    let (since, data) = next_push(&mut first.ws).await;
    assert_eq!(data, json!({"n": 0}));
    assert_eq!(
        reply["offset"],
        since.as_str(),
        "the reply names the push's offset"
    );
    let old_conn = first.conn.clone();
    first.ws.drop_abruptly();

    // Missed while away, published on both nodes.
    for (node, body) in [
        (&b, json!({"page": "home", "message": {"n": 1}})),
        (&a, json!({"page": "list", "message": "not home"})),
        (&a, json!({"uid": "7", "message": {"n": 2}})),
        (&b, json!({"conn": old_conn, "message": {"n": 3}})),
        (
            &b,
            json!({"all": true, "exclude": old_conn, "message": "own change"}),
        ),
        (&a, json!({"all": true, "message": {"n": 4}})),
    ] {
        push_ok(node, body).await;
    }
    let mut back = connect(
        &base(&b),
        "page=home&uid=7",
        &format!("{}&prev={old_conn}", resume(&first.epoch, &since)),
    )
    .await;
    assert_eq!(back.epoch, first.epoch, "one epoch for the cluster");
    let mut replayed = Vec::new();
    for _ in 0..4 {
        replayed.push(next_push(&mut back.ws).await.1);
    }
    assert_eq!(
        replayed,
        [
            json!({"n": 1}),
            json!({"n": 2}),
            json!({"n": 3}),
            json!({"n": 4})
        ]
    );
    assert_eq!(recovered(&mut back.ws).await, (true, 4));
    let head = back.offset.clone();
    // Live pushes after the seam, from the other node, to the new id.
    wait_registered(&redis, prefix, 1).await;
    let reply = push_ok(&a, json!({"conn": back.conn, "message": {"n": 5}})).await;
    let (offset, data) = next_push(&mut back.ws).await;
    assert_eq!(data, json!({"n": 5}));
    assert!(offset > head, "{offset} after the welcome's {head}");
    assert_eq!(reply["offset"], offset.as_str());
    push_ok(
        &a,
        json!({"page": "home", "exclude": back.conn, "message": "own"}),
    )
    .await;
    push_ok(&a, json!({"page": "home", "message": "marker"})).await;
    assert_eq!(next_push(&mut back.ws).await.1, json!("marker"));
}

/// Reads pushes until the connection ends (its node was killed) or `until`
/// arrives; appends each `n` to `seen` and keeps the last offset.
async fn read_stream(client: &mut Recovering, seen: &mut Vec<u64>, last: &mut String) -> bool {
    loop {
        let next = tokio::time::timeout(crate::common::WAIT, client.ws.raw().next()).await;
        let text = match next {
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => return false,
            Ok(Some(Ok(_))) => continue,
            Err(_) => panic!("nothing for {:?}", crate::common::WAIT),
        };
        let frame: Value = serde_json::from_str(&text).unwrap();
        match frame["type"].as_str() {
            Some("recovered") => assert_eq!(frame["recovered"], true, "{frame}"),
            Some("push") => {
                let offset = frame["offset"].as_str().unwrap().to_string();
                assert!(offset > *last, "{offset} after {last}");
                *last = offset;
                match &frame["data"]["n"] {
                    Value::String(end) if end == "end" => return true,
                    n => seen.push(n.as_u64().unwrap()),
                }
            }
            _ => panic!("unexpected {frame}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_node_recover_every_push_once_in_order_on_another() {
    const PUSHES: u64 = 300;
    const CLIENTS: usize = 4;
    let redis = RedisServer::start();
    let prefix = "sc-recover-kill";
    let mut a = Node::spawn("a", &redis.url(), prefix, 10, "");
    let b = Node::spawn("b", &redis.url(), prefix, 10, "");
    for node in [&a, &b] {
        node.wait_status("ok").await;
    }
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let client = connect(&base(&a), "page=home", "").await;
        let last = client.offset.clone();
        clients.push((client, Vec::new(), last));
    }
    wait_registered(&redis, prefix, CLIENTS).await;
    let publisher = {
        let url = b.http_url("/api/push");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in 0..PUSHES {
                let reply = http
                    .post(&url)
                    .bearer_auth(API_TOKEN)
                    .body(json!({"page": "home", "message": {"n": n}}).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(reply.status(), 200);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    // Each client reads some of the stream on a...
    for (client, seen, last) in &mut clients {
        while seen.len() < 20 {
            let frame = client.ws.recv_json().await;
            assert_eq!(frame["type"], "push");
            *last = frame["offset"].as_str().unwrap().to_string();
            seen.push(frame["data"]["n"].as_u64().unwrap());
        }
    }
    // ...then a dies, mid-stream.
    a.kill();
    let mut moved = Vec::new();
    for (mut client, mut seen, mut last) in clients {
        assert!(
            !read_stream(&mut client, &mut seen, &mut last).await,
            "a is gone"
        );
        let back = connect(&base(&b), "page=home", &resume(&client.epoch, &last)).await;
        moved.push((back, seen, last));
    }
    publisher.await.unwrap();
    push_ok(&b, json!({"page": "home", "message": {"n": "end"}})).await;
    for (mut client, mut seen, mut last) in moved {
        assert!(read_stream(&mut client, &mut seen, &mut last).await);
        assert_eq!(
            seen,
            (0..PUSHES).collect::<Vec<_>>(),
            "every push once, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_history_and_a_redis_restart_are_recovered_false() {
    let redis = RedisServer::start();
    let prefix = "sc-recover-lost";
    let a = Node::spawn("a", &redis.url(), prefix, 10, "[history]\nsize = 3\n");
    a.wait_status("ok").await;
    let mut live = connect(&base(&a), "page=home", "").await;
    let first = connect(&base(&a), "page=home", "").await;
    let epoch = first.epoch.clone();
    first.ws.drop_abruptly();
    for n in 0..5 {
        push_ok(&a, json!({"page": "home", "message": {"n": n}})).await;
    }
    let mut last = String::new();
    for _ in 0..5 {
        last = next_push(&mut live.ws).await.0;
    }
    // 5 missed, 3 kept.
    let mut short = connect(&base(&a), "page=home", &resume(&epoch, &first.offset)).await;
    assert_eq!(recovered(&mut short.ws).await, (false, 0));
    assert_eq!(short.offset, last, "the welcome names the head");

    // Redis restarted empty: the history is gone with it.
    let port = redis.kill();
    let _redis = RedisServer::start_on(port);
    a.wait_status("ok").await;
    let mut back = connect(&base(&a), "page=home", &resume(&epoch, &last)).await;
    assert_ne!(back.epoch, epoch, "a new epoch");
    assert_eq!(
        back.offset, "00000000000000000000",
        "the new epoch's start, never an old offset"
    );
    assert_eq!(recovered(&mut back.ws).await, (false, 0));
    // Its read found the history lost: every recover connection of the node is
    // asked to reconnect (this one too, once), and each learns where it stands.
    assert_eq!(back.ws.expect_close().await.0, 1012);
    assert_eq!(live.ws.expect_close().await.0, 1012);
    let mut back = connect(&base(&a), "page=home", &resume(&back.epoch, &back.offset)).await;
    assert_eq!(recovered(&mut back.ws).await, (true, 0));
    let mut live = connect(&base(&a), "page=home", &resume(&epoch, &last)).await;
    assert_eq!(live.epoch, back.epoch);
    assert_eq!(recovered(&mut live.ws).await, (false, 0));
    let reply = push_ok(&a, json!({"page": "home", "message": "after"})).await;
    assert_eq!(reply["offset"], "00000000000000000001");
    for client in [&mut back, &mut live] {
        assert_eq!(
            next_push(&mut client.ws).await,
            ("00000000000000000001".into(), json!("after"))
        );
    }
}

/// A node whose subscription drops misses pushes published meanwhile on other
/// nodes; its recover connections are asked to reconnect (1012) and get them
/// replayed: every push once, in order, although the node never had some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_pushes_sends_its_clients_to_recover_them() {
    let redis = RedisServer::start();
    let prefix = "sc-recover-hole";
    let a = Node::spawn("a", &redis.url(), prefix, 10, "");
    let b = Node::spawn("b", &redis.url(), prefix, 10, "");
    for node in [&a, &b] {
        node.wait_status("ok").await;
    }
    let mut client = connect(&base(&a), "page=home", "").await;
    wait_registered(&redis, prefix, 1).await;
    // Big enough that what node a does not read passes the kernel's socket
    // buffers and piles up in Redis.
    let pad = "x".repeat(50_000);
    // The pushes that got an offset: a push b made while its own subscription was
    // down went to b's clients only, has none, and is not recoverable (README).
    let mut expected = Vec::new();
    let push = |n: u64| {
        let (b, pad) = (&b, &pad);
        async move {
            let reply = push_ok(b, json!({"page": "home", "message": {"n": n, "pad": pad}})).await;
            reply["offset"].is_string().then_some(n)
        }
    };
    for n in 0..10 {
        expected.extend(push(n).await);
    }
    let (mut seen, mut last) = (Vec::new(), client.offset.clone());
    while seen.len() < 10 {
        let (offset, data) = next_push(&mut client.ws).await;
        last = offset;
        seen.push(data["n"].as_u64().unwrap());
    }
    // Node a stalls; once what it does not read has passed the socket buffers and
    // stayed over 4 KiB in Redis for a second, Redis drops its subscription (b's,
    // read at once, never stays over) while b goes on publishing.
    let config = |value: &str| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("client-output-buffer-limit")
            .arg(value)
            .query(&mut redis.conn())
            .unwrap();
    };
    let subscriptions = || {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut redis.conn())
            .unwrap();
        list.lines().count()
    };
    assert_eq!(subscriptions(), 2);
    config("pubsub 0 4096 1");
    a.pause();
    let mut n = 10;
    while subscriptions() == 2 {
        assert!(n < 5000, "redis never dropped the stalled subscription");
        expected.extend(push(n).await);
        n += 1;
    }
    config("pubsub 33554432 8388608 60");
    a.resume();
    for node in [&a, &b] {
        node.wait_status("ok").await;
    }
    for n in n..n + 10 {
        expected.extend(push(n).await);
    }
    push_ok(&b, json!({"page": "home", "message": {"n": "end"}})).await;
    let mut reconnects = 0;
    while !read_stream(&mut client, &mut seen, &mut last).await {
        reconnects += 1;
        assert!(reconnects < 5, "too many reconnects");
        client = connect_when_ready(&base(&a), "page=home", &resume(&client.epoch, &last)).await;
    }
    assert!(expected.len() > 20, "{expected:?}");
    assert_eq!(seen, expected, "every push once, in order");
    assert!(reconnects >= 1, "the hole sent the client to recover");
}

/// `history.ttl_secs` in Redis: a position whose next push is older than the TTL
/// is not covered, although the stream still holds the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_older_than_the_ttl_are_not_recovered() {
    let redis = RedisServer::start();
    let prefix = "sc-recover-ttl";
    let a = Node::spawn("a", &redis.url(), prefix, 10, "[history]\nttl_secs = 2\n");
    a.wait_status("ok").await;
    let first = connect(&base(&a), "page=home", "").await;
    first.ws.drop_abruptly();
    push_ok(&a, json!({"page": "home", "message": "old"})).await;
    let mut fresh = connect(&base(&a), "page=home", &resume(&first.epoch, &first.offset)).await;
    assert_eq!(next_push(&mut fresh.ws).await.1, json!("old"));
    assert_eq!(recovered(&mut fresh.ws).await, (true, 1), "within the TTL");
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let mut late = connect(&base(&a), "page=home", &resume(&first.epoch, &first.offset)).await;
    assert_eq!(recovered(&mut late.ws).await, (false, 0), "past the TTL");
    // A position after the expired push is still good.
    let mut current = connect(&base(&a), "page=home", &resume(&late.epoch, &late.offset)).await;
    assert_eq!(recovered(&mut current.ws).await, (true, 0));
}
