//! Recovery under attack and mishap, from the outside: what a visitor holding only
//! the public client token, or a Redis restored from an old snapshot, could make the
//! server do. Each test is a defect once found and fixed, asserted as a user would
//! see it.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::api_push;
use crate::common::server::TestServer;
use crate::common::{Node, RedisServer};
use crate::recovery::{connect, next_push, recovered, resume};

fn ws_base(server: &TestServer) -> String {
    server.ws_url("").trim_end_matches('/').to_string()
}

/// A visitor must not get another user's `conn`-targeted pushes replayed by
/// naming that user's connection as its `prev`: connection ids were
/// `{node}.{counter}`, so a visitor's own welcome told it its neighbours' ids.
/// A `prev` is only proof of being that connection if nobody else can guess it.
#[tokio::test]
async fn a_visitor_cannot_replay_someone_elses_conn_pushes_by_guessing_prev() {
    let server = TestServer::start(|_| {}).await;
    let url = ws_base(&server);
    // The victim: logged in, its back office answers it on its own connection.
    let mut victim = connect(&url, "page=orders&uid=alice", "").await;
    let (status, _) = server
        .api_push(&json!({"conn": victim.conn, "message": {"secret": "alice's order"}}).to_string())
        .await;
    assert_eq!(status, 200);
    let (_, data) = next_push(&mut victim.ws).await;
    assert_eq!(data["secret"], "alice's order");

    // The attacker: the public client token only, right after the victim.
    let attacker = connect(&url, "page=home", "").await;
    let (node, local) = attacker.conn.split_once('.').unwrap();
    let local: u64 = local.parse().unwrap();
    let start = "00000000000000000000";
    let mut guesses = Vec::new();
    for back in 1..=3u64 {
        guesses.push(format!("{node}.{}", local.saturating_sub(back)));
    }
    for prev in &guesses {
        let mut guess = connect(
            &url,
            "page=home",
            &format!("{}&prev={prev}", resume(&attacker.epoch, start)),
        )
        .await;
        // Nothing targeted page home, so a clean replay is empty.
        let frame = guess.ws.recv_json().await;
        assert_eq!(
            frame,
            json!({"type": "recovered", "recovered": true, "replayed": 0}),
            "prev={prev} (guessed from the attacker's own {}) got the victim's ({}) push",
            attacker.conn,
            victim.conn
        );
    }

    // The owner, reconnecting with its own id, still gets it back.
    let mut owner = connect(
        &url,
        "page=orders&uid=alice",
        &format!("{}&prev={}", resume(&victim.epoch, start), victim.conn),
    )
    .await;
    let (_, data) = next_push(&mut owner.ws).await;
    assert_eq!(data["secret"], "alice's order");
    assert_eq!(recovered(&mut owner.ws).await, (true, 1));
    owner.ws.expect_silence(Duration::from_millis(100)).await;
}

/// The history's keys as they are now (`DUMP`), to put back later: what a Redis
/// restarted from an older RDB snapshot, or a replica promoted before it had the
/// last writes, holds.
fn snapshot(redis: &RedisServer, prefix: &str) -> Vec<(String, Option<Vec<u8>>)> {
    let mut conn = redis.conn();
    [
        format!("{prefix}:history:epoch"),
        format!("{prefix}:history"),
    ]
    .into_iter()
    .map(|key| {
        let dump: Option<Vec<u8>> = redis::cmd("DUMP").arg(&key).query(&mut conn).unwrap();
        (key, dump)
    })
    .collect()
}

fn roll_back(redis: &RedisServer, snapshot: &[(String, Option<Vec<u8>>)]) {
    let mut conn = redis.conn();
    for (key, dump) in snapshot {
        let Some(dump) = dump else {
            let _: () = redis::cmd("DEL").arg(key).query(&mut conn).unwrap();
            continue;
        };
        let _: () = redis::cmd("RESTORE")
            .arg(key)
            .arg(0)
            .arg(dump)
            .arg("REPLACE")
            .query(&mut conn)
            .unwrap();
    }
}

/// Redis went back in time (restarted from an older snapshot, a lagging replica
/// promoted): its epoch is the same, its offsets are lower than what the nodes
/// saw, and the next pushes reuse offsets that clients already hold. A client
/// that missed pushes in the lost stretch must hear `recovered:false`, never a
/// `recovered:true` replay that silently skips them or hands it a reused offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_rolled_back_to_an_older_snapshot_is_a_new_epoch() {
    let redis = RedisServer::start();
    let prefix = "sc-rollback";
    let a = Node::spawn("a", &redis.url(), prefix, 10, "");
    a.wait_status("ok").await;
    let url = a.ws_url("");
    let mut live = connect(&url, "page=home", "").await;
    let mut away = connect(&url, "page=home", "").await;
    let epoch = live.epoch.clone();
    let push = |n: u64| api_push(&a, json!({"page": "home", "message": {"n": n}}));
    for n in 1..=3 {
        push(n).await;
    }
    let mut held = String::new();
    for _ in 1..=3 {
        next_push(&mut live.ws).await;
        held = next_push(&mut away.ws).await.0;
    }
    away.ws.drop_abruptly();
    let before = snapshot(&redis, prefix);
    // Missed by `away`, delivered to `live`: then Redis loses them.
    for n in 4..=5 {
        push(n).await;
        next_push(&mut live.ws).await;
    }
    roll_back(&redis, &before);

    // Phase 1: a reconnect right after the rollback (the history read).
    let mut back = connect(&url, "page=home", &resume(&epoch, &held)).await;
    let frame = back.ws.recv_json().await;
    assert_eq!(
        frame,
        json!({"type": "recovered", "recovered": false, "replayed": 0}),
        "pushes 4 and 5 are gone from Redis: the client missed them ({})",
        back.epoch
    );
    assert_ne!(back.epoch, epoch, "a new epoch");
    assert_eq!(
        live.ws.expect_close().await.0,
        1012,
        "live clients resume too"
    );
    back.ws.drop_abruptly();

    // Phase 2: again, but the next push comes first (the publish script).
    let mut live = connect(&url, "page=home", "").await;
    let epoch = live.epoch.clone();
    let held = live.offset.clone();
    let before = snapshot(&redis, prefix);
    let mut seen = String::new();
    for n in 6..=7 {
        push(n).await;
        seen = next_push(&mut live.ws).await.0;
    }
    roll_back(&redis, &before);
    let reply = push(8).await;
    // The live client must not get an offset it already had: the push that found
    // the rollback opened a new epoch, and the client is asked to resume.
    let next = tokio::time::timeout(crate::common::WAIT, live.ws.raw().next())
        .await
        .expect("a frame")
        .expect("not ended")
        .expect("no error");
    match next {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1012),
        other => panic!("after offset {seen} the live client got {other:?}"),
    }
    let mut back = connect(&url, "page=home", &resume(&epoch, &held)).await;
    let frame = back.ws.recv_json().await;
    assert_eq!(
        frame,
        json!({"type": "recovered", "recovered": false, "replayed": 0}),
        "pushes 6 and 7 are gone (push 8 got {}): the client missed them",
        reply["offset"]
    );
    assert_ne!(back.epoch, epoch, "a new epoch");
    back.ws.drop_abruptly();

    // Phase 3: nobody publishes or reconnects; the node's head watch finds it.
    let mut live = connect(&url, "page=home", "").await;
    let before = snapshot(&redis, prefix);
    push(9).await;
    next_push(&mut live.ws).await;
    roll_back(&redis, &before);
    assert_eq!(live.ws.expect_close().await.0, 1012);
}
