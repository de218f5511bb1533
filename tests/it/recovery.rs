//! Recovery on one node (embedded mode): `?recover=1` frames, replay on reconnect
//! with `epoch` + `since` (+ `prev`), `recovered:false` cases, the seam while pushes
//! keep streaming, and the `conn` / `exclude` targets.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::server::{CLIENT_TOKEN, TestServer};
use crate::common::ws::WsClient;

/// A `?recover=1` connection and what its welcome said.
pub struct Recovering {
    pub ws: WsClient,
    pub conn: String,
    pub epoch: String,
    pub offset: String,
}

/// Connects `/?token&{query}&recover=1{resume}` and reads the welcome frame.
pub async fn connect(url: &str, query: &str, resume: &str) -> Recovering {
    let ws = WsClient::connect(&format!(
        "{url}/?token={CLIENT_TOKEN}&{query}&recover=1{resume}"
    ))
    .await;
    welcome(ws).await
}

/// [`connect`], retrying while the node answers 503 (its Redis links are coming
/// back), as a client that backs off and retries does.
pub async fn connect_when_ready(url: &str, query: &str, resume: &str) -> Recovering {
    let url = format!("{url}/?token={CLIENT_TOKEN}&{query}&recover=1{resume}");
    let deadline = tokio::time::Instant::now() + crate::common::WAIT;
    loop {
        match WsClient::try_connect(&url, None).await {
            Ok(ws) => return welcome(ws).await,
            Err(refused) if refused.status == 503 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(refused) => panic!("{url} refused: {refused:?}"),
        }
    }
}

async fn welcome(mut ws: WsClient) -> Recovering {
    let welcome = ws.recv_json().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let text = |field: &str| welcome[field].as_str().expect(field).to_string();
    let (conn, epoch, offset) = (text("conn"), text("epoch"), text("offset"));
    assert!(
        conn.split_once('.').is_some_and(|(a, b)| !a.is_empty()
            && !b.is_empty()
            && (a.to_owned() + b).bytes().all(|c| c.is_ascii_digit())),
        "conn {conn:?} matches ^\\d+\\.\\d+$"
    );
    assert_eq!(epoch.len(), 16, "{epoch}");
    assert!(
        epoch
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(offset.len(), 20, "{offset}");
    Recovering {
        ws,
        conn,
        epoch,
        offset,
    }
}

/// `&epoch=E&since=O` for resuming after `offset` of `epoch`.
pub fn resume(epoch: &str, offset: &str) -> String {
    format!("&epoch={epoch}&since={offset}")
}

/// The next push frame's (offset, data).
pub async fn next_push(ws: &mut WsClient) -> (String, Value) {
    let frame = ws.recv_json().await;
    assert_eq!(frame["type"], "push", "{frame}");
    (
        frame["offset"].as_str().expect("an offset").to_string(),
        frame["data"].clone(),
    )
}

/// The `recovered` frame's (recovered, replayed).
pub async fn recovered(ws: &mut WsClient) -> (bool, u64) {
    let frame = ws.recv_json().await;
    assert_eq!(frame["type"], "recovered", "{frame}");
    (
        frame["recovered"].as_bool().unwrap(),
        frame["replayed"].as_u64().unwrap(),
    )
}

async fn push(server: &TestServer, body: Value) -> Value {
    let (status, reply) = server.api_push(&body.to_string()).await;
    assert_eq!(status, 200, "{reply}");
    reply
}

fn ws_base(server: &TestServer) -> String {
    server.ws_url("").trim_end_matches('/').to_string()
}

#[tokio::test]
async fn a_reconnect_gets_exactly_the_pushes_it_missed_in_order() {
    let server = TestServer::start(|_| {}).await;
    let url = ws_base(&server);
    let mut first = connect(&url, "page=home&uid=7", "").await;
    assert_eq!(first.offset, "00000000000000000000", "an empty history");
    let reply = push(&server, json!({"page": "home", "message": {"n": 0}})).await;
    assert_eq!(reply["offset"], "00000000000000000001");
    let (offset, data) = next_push(&mut first.ws).await;
    assert_eq!(
        (offset.as_str(), data),
        ("00000000000000000001", json!({"n": 0}))
    );
    first.ws.drop_abruptly();

    // Missed while away: to its page, its uid, everyone, and to others.
    for body in [
        json!({"page": "home", "message": {"n": 1}}),
        json!({"page": "list", "message": {"other": 1}}),
        json!({"uid": "7", "message": {"n": 2}}),
        json!({"uid": "8", "message": {"other": 2}}),
        json!({"all": true, "message": {"n": 3}}),
        json!({"page": "home", "message": "text is a JSON string"}),
    ] {
        push(&server, body).await;
    }
    let mut back = connect(&url, "page=home&uid=7", &resume(&first.epoch, &offset)).await;
    assert_eq!(back.epoch, first.epoch);
    assert_eq!(back.offset, "00000000000000000007", "the head at connect");
    assert_ne!(back.conn, first.conn);
    let mut replayed = Vec::new();
    for _ in 0..4 {
        replayed.push(next_push(&mut back.ws).await);
    }
    assert_eq!(
        replayed,
        [
            ("00000000000000000002".into(), json!({"n": 1})),
            ("00000000000000000004".into(), json!({"n": 2})),
            ("00000000000000000006".into(), json!({"n": 3})),
            (
                "00000000000000000007".into(),
                json!("text is a JSON string")
            ),
        ]
    );
    assert_eq!(recovered(&mut back.ws).await, (true, 4));
    // Then live, after the seam.
    push(&server, json!({"page": "home", "message": {"n": 4}})).await;
    assert_eq!(
        next_push(&mut back.ws).await,
        ("00000000000000000008".into(), json!({"n": 4}))
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("scenecast_recoveries_total{outcome=\"recovered\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("scenecast_replayed_total 4"), "{metrics}");
}

#[tokio::test]
async fn raw_connections_get_payloads_as_before() {
    let server = TestServer::start(|_| {}).await;
    let mut raw =
        WsClient::connect(&server.ws_url(&format!("/?token={CLIENT_TOKEN}&page=home"))).await;
    let mut rec = connect(&ws_base(&server), "page=home", "").await;
    push(&server, json!({"page": "home", "message": {"a": 1}})).await;
    assert_eq!(raw.recv_text().await, r#"{"a":1}"#);
    let frame = rec.ws.recv_text().await;
    assert_eq!(
        frame,
        r#"{"type":"push","offset":"00000000000000000001","data":{"a":1}}"#
    );
}

#[tokio::test]
async fn positions_the_history_no_longer_covers_are_lost_and_nothing_is_replayed() {
    let server = TestServer::start(|s| s.history.size = 3).await;
    let url = ws_base(&server);
    let first = connect(&url, "page=home", "").await;
    for n in 0..5 {
        push(&server, json!({"page": "home", "message": {"n": n}})).await;
    }
    // 4 of 5 missed, 3 kept: not covered.
    let since = "00000000000000000001";
    let mut back = connect(&url, "page=home", &resume(&first.epoch, since)).await;
    assert_eq!(recovered(&mut back.ws).await, (false, 0));
    // Live pushes follow, after the welcome's offset.
    push(&server, json!({"page": "home", "message": {"n": 5}})).await;
    assert_eq!(next_push(&mut back.ws).await.0, "00000000000000000006");
    // 3 missed, 3 kept: covered.
    let mut covered = connect(
        &url,
        "page=home",
        &resume(&first.epoch, "00000000000000000003"),
    )
    .await;
    for offset in [
        "00000000000000000004",
        "00000000000000000005",
        "00000000000000000006",
    ] {
        assert_eq!(next_push(&mut covered.ws).await.0, offset);
    }
    assert_eq!(recovered(&mut covered.ws).await, (true, 3));
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("scenecast_recoveries_total{outcome=\"lost\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn malformed_or_foreign_positions_are_lost() {
    let server = TestServer::start(|_| {}).await;
    let url = ws_base(&server);
    let first = connect(&url, "page=home", "").await;
    push(&server, json!({"page": "home", "message": 1})).await;
    let since = "00000000000000000000";
    for resume in [
        format!("&epoch={}", first.epoch),
        format!("&since={since}"),
        "&epoch=&since=".to_string(),
        format!("&epoch={}&since=0", first.epoch),
        format!("&epoch={}&since={since}", first.epoch.to_uppercase()),
        format!("&epoch=0123456789abcdef&since={since}"),
        format!("&epoch={}&since=00000000000000000099", first.epoch),
        format!("&epoch={}&since={since}&prev=abc", first.epoch),
    ] {
        let mut back = connect(&url, "page=home", &resume).await;
        assert_eq!(recovered(&mut back.ws).await, (false, 0), "{resume}");
    }
}

#[tokio::test]
async fn size_zero_keeps_offsets_and_recovers_nothing() {
    let server = TestServer::start(|s| s.history.size = 0).await;
    let url = ws_base(&server);
    let mut first = connect(&url, "page=home", "").await;
    let reply = push(&server, json!({"page": "home", "message": 1})).await;
    assert!(
        reply.get("offset").is_none(),
        "no offset in replies: {reply}"
    );
    assert_eq!(next_push(&mut first.ws).await.0, "00000000000000000001");
    let mut back = connect(
        &url,
        "page=home",
        &resume(&first.epoch, "00000000000000000001"),
    )
    .await;
    assert_eq!(back.offset, "00000000000000000001");
    assert_eq!(recovered(&mut back.ws).await, (false, 0));
}

#[tokio::test]
async fn a_null_exclude_is_no_exclude() {
    let server = TestServer::start(|_| {}).await;
    let url = ws_base(&server);
    let mut me = connect(&url, "page=home", "").await;
    let reply = push(
        &server,
        json!({"page": "home", "exclude": null, "message": "for all"}),
    )
    .await;
    assert_eq!(reply["delivered"], 1, "{reply}");
    assert_eq!(next_push(&mut me.ws).await.1, json!("for all"));
}

#[tokio::test]
async fn conn_and_exclude_targets_and_prev_replay_rules() {
    let server = TestServer::start(|_| {}).await;
    let url = ws_base(&server);
    let mut me = connect(&url, "page=home", "").await;
    let mut other = connect(&url, "page=home", "").await;
    let mut raw =
        WsClient::connect(&server.ws_url(&format!("/?token={CLIENT_TOKEN}&page=home"))).await;

    // conn: only that connection.
    let reply = push(&server, json!({"conn": me.conn, "message": {"to": "me"}})).await;
    assert_eq!(reply["delivered"], 1);
    assert_eq!(next_push(&mut me.ws).await.1, json!({"to": "me"}));
    // exclude: everyone on the page but that one.
    let reply = push(
        &server,
        json!({"page": "home", "exclude": me.conn, "message": {"not": "me"}}),
    )
    .await;
    assert_eq!(reply["delivered"], 2);
    assert_eq!(next_push(&mut other.ws).await.1, json!({"not": "me"}));
    assert_eq!(raw.recv_text().await, r#"{"not":"me"}"#);
    // GET triggers take &exclude=.
    let (status, _) = server
        .trigger("pushHomeLogic", &format!("&exclude={}", other.conn))
        .await;
    assert_eq!(status, 200);
    let marker = push(&server, json!({"all": true, "message": "marker"})).await;
    assert!(marker["offset"].is_string());
    // `me` got the trigger, then the marker; `other` only the marker.
    let (_, data) = next_push(&mut me.ws).await;
    assert_eq!(data["code"], 200, "the triggered push comes first");
    assert_eq!(next_push(&mut me.ws).await.1, json!("marker"));
    assert_eq!(next_push(&mut other.ws).await.1, json!("marker"));

    // Bad ids and two targets are refused.
    for body in [
        json!({"conn": "1-2", "message": 1}),
        json!({"conn": 12, "message": 1}),
        json!({"page": "home", "conn": me.conn, "message": 1}),
        json!({"page": "home", "exclude": "x", "message": 1}),
    ] {
        let (status, reply) = server.api_push(&body.to_string()).await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert!(
            reply["message"].as_str().unwrap().contains("conn")
                || reply["message"].as_str().unwrap().contains("exclude"),
            "{reply}"
        );
    }

    // prev: conn pushes to the old id are replayed, pushes excluding it are not.
    let since = "00000000000000000004";
    me.ws.drop_abruptly();
    push(&server, json!({"conn": me.conn, "message": "to old me"})).await;
    push(
        &server,
        json!({"page": "home", "exclude": me.conn, "message": "my own change"}),
    )
    .await;
    push(
        &server,
        json!({"page": "home", "message": "for all of home"}),
    )
    .await;
    let mut back = connect(
        &url,
        "page=home",
        &format!("{}&prev={}", resume(&me.epoch, since), me.conn),
    )
    .await;
    assert_eq!(next_push(&mut back.ws).await.1, json!("to old me"));
    assert_eq!(next_push(&mut back.ws).await.1, json!("for all of home"));
    assert_eq!(recovered(&mut back.ws).await, (true, 2));
    // Without prev: no conn pushes, and exclude does not apply.
    let mut anon = connect(&url, "page=home", &resume(&me.epoch, since)).await;
    assert_eq!(next_push(&mut anon.ws).await.1, json!("my own change"));
    assert_eq!(next_push(&mut anon.ws).await.1, json!("for all of home"));
    assert_eq!(recovered(&mut anon.ws).await, (true, 2));
}

/// Every push exactly once, in order, across a reconnect made while a publisher
/// keeps pushing as fast as it can.
#[tokio::test]
async fn a_reconnect_while_pushes_stream_gets_every_push_once_in_order() {
    let server = TestServer::start(|_| {}).await;
    let url = ws_base(&server);
    let first = connect(&url, "page=home", "").await;
    let publisher = {
        let http = server.http.clone();
        let push_url = server.http_url("/api/push");
        tokio::spawn(async move {
            for n in 0..600u64 {
                let response = http
                    .post(&push_url)
                    .bearer_auth(crate::common::server::API_TOKEN)
                    .body(json!({"page": "home", "message": {"n": n}}).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        })
    };
    let mut seen: Vec<u64> = Vec::new();
    let mut position = (first, None::<String>);
    let mut last_offset: Option<String> = None;
    for round in 0..6 {
        let (mut client, _) = position;
        // Read a few pushes, then drop the connection mid-stream.
        for _ in 0..40 {
            let frame = client.ws.recv_json().await;
            match frame["type"].as_str() {
                Some("push") => {
                    let offset = frame["offset"].as_str().unwrap().to_string();
                    if let Some(last) = &last_offset {
                        assert!(offset > *last, "{offset} after {last}");
                    }
                    last_offset = Some(offset);
                    seen.push(frame["data"]["n"].as_u64().unwrap());
                }
                Some("recovered") => assert_eq!(frame["recovered"], true, "round {round}"),
                _ => panic!("unexpected {frame}"),
            }
        }
        let epoch = client.epoch.clone();
        client.ws.drop_abruptly();
        let since = last_offset.clone().unwrap_or(client.offset.clone());
        position = (
            connect(&url, "page=home", &resume(&epoch, &since)).await,
            None,
        );
    }
    let (mut client, _) = position;
    publisher.await.unwrap();
    push(&server, json!({"page": "home", "message": {"n": "end"}})).await;
    loop {
        let frame = client.ws.recv_json().await;
        match frame["type"].as_str() {
            Some("push") if frame["data"]["n"] == "end" => break,
            Some("push") => seen.push(frame["data"]["n"].as_u64().unwrap()),
            Some("recovered") => assert_eq!(frame["recovered"], true),
            _ => panic!("unexpected {frame}"),
        }
    }
    assert_eq!(
        seen,
        (0..600).collect::<Vec<_>>(),
        "every push once, in order"
    );
    client.ws.expect_silence(Duration::from_millis(50)).await;
}
