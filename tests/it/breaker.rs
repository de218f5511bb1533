//! Attacks on issue 11's features from the outside (helper B1): what a visitor
//! holding only the public client token, a flaky network or an unlucky user can
//! make the server do. Each test is a defect found and fixed, asserted as a user
//! would see it.

use std::time::Duration;

use serde_json::json;

use crate::common::server::TestServer;
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
