//! The scene router end to end: WebSocket gateway, token auth, func handler table,
//! JSON push API, Redis hash, heartbeat, back-pressure and graceful stop.

use std::time::Duration;

use serde_json::json;

use crate::common::{
    API_TOKEN, CLIENT_TOKEN, RedisServer, SilentClient, TestServer, WsClient, eventually,
};

fn page_url(server: &TestServer, page: &str) -> String {
    server.ws_url(&format!("/?page={page}&token={CLIENT_TOKEN}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_push_reaches_home_pages_only() {
    let server = TestServer::start(|_| {}).await;
    let mut home_a = WsClient::connect(&page_url(&server, "home")).await;
    let mut home_b =
        WsClient::connect(&server.ws_url(&format!("/ws?page=home&token={CLIENT_TOKEN}"))).await;
    let mut list = WsClient::connect(&page_url(&server, "list")).await;

    // The seed's own trigger names the caller's page (`back`); the scene's fixed
    // target wins.
    let (status, body) = server.trigger("pushHomeLogic", "&page=back").await;
    assert_eq!(status, 200);
    assert_eq!(body["code"], 200);
    assert_eq!(body["func"], "pushHomeLogic");
    assert_eq!(body["delivered"], 2);

    let expected = json!({"code": 200, "message": "后端按了按钮1"});
    assert_eq!(home_a.recv_json().await, expected);
    assert_eq!(home_b.recv_json().await, expected);

    let (_, body) = server.trigger("pushListLogic", "").await;
    assert_eq!(body["delivered"], 1);
    // The list page's first frame is its own message: the home push never reached it.
    assert_eq!(
        list.recv_json().await,
        json!({"code": 200, "message": "后端按了按钮2"})
    );
    home_a.expect_silence(Duration::from_millis(300)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenes_come_from_config_with_query_params() {
    let server = TestServer::start(|s| {
        s.scenes = Some(vec![
            scenecast::config::SceneConfig {
                event: None,
                func: "notify".into(),
                page: Some("{page}".into()),
                uid: None,
                all: false,
                message: json!({"code": 200, "message": "{text}", "order": {"id": "{id}"}}),
            },
            scenecast::config::SceneConfig {
                event: None,
                func: "everyone".into(),
                page: None,
                uid: None,
                all: true,
                message: json!("hello all"),
            },
        ])
    })
    .await;
    let mut list = WsClient::connect(&page_url(&server, "list")).await;
    let mut home = WsClient::connect(&page_url(&server, "home")).await;

    let (status, body) = server
        .trigger("notify", "&page=list&text=%3Cb%3E%22hi%22&id=7")
        .await;
    assert_eq!((status, body["delivered"].clone()), (200, json!(1)));
    assert_eq!(
        list.recv_json().await,
        json!({"code": 200, "message": "<b>\"hi\"", "order": {"id": "7"}})
    );

    let (_, body) = server.trigger("everyone", "").await;
    assert_eq!(body["delivered"], 2);
    assert_eq!(home.recv_json().await, json!("hello all"));
    assert_eq!(list.recv_json().await, json!("hello all"));

    // A scene whose parameter is missing says which one.
    let (status, body) = server.trigger("notify", "&page=list").await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("\"text\""),
        "{body}"
    );
    // The built-in defaults are replaced by the configured table.
    let (status, body) = server.trigger("pushHomeLogic", "").await;
    assert_eq!(status, 404);
    assert_eq!(body["funcs"], json!(["notify", "everyone"]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uid_pushes_reach_every_tab_of_that_user() {
    let server = TestServer::start(|_| {}).await;
    let url = |uid: &str| server.ws_url(&format!("/?page=home&uid={uid}&token={CLIENT_TOKEN}"));
    let mut tab1 = WsClient::connect(&url("42")).await;
    let mut tab2 = WsClient::connect(&url("42")).await;
    let mut other = WsClient::connect(&url("43")).await;

    let (status, body) = server.api_push(r#"{"uid":42,"message":{"cnt":5}}"#).await;
    assert_eq!((status, body["delivered"].clone()), (200, json!(2)));
    assert_eq!(tab1.recv_json().await, json!({"cnt": 5}));
    assert_eq!(tab2.recv_json().await, json!({"cnt": 5}));

    let (_, body) = server.api_push(r#"{"all":true,"message":"all"}"#).await;
    assert_eq!(body["delivered"], 3);
    assert_eq!(
        other.recv_json().await,
        json!("all"),
        "uid 43 got only the broadcast"
    );

    // Closing one tab leaves the other bound.
    tab1.close().await;
    let (_, body) = eventually("tab1 gone", || async {
        let r = server.api_push(r#"{"uid":"42","message":"again"}"#).await;
        (r.1["delivered"] == 1).then_some(r)
    })
    .await;
    assert_eq!(body["code"], 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_text_and_ping_json_get_pong() {
    let server = TestServer::start(|_| {}).await;
    let mut client = WsClient::connect(&page_url(&server, "home")).await;
    client.send("heartbeat").await;
    assert_eq!(client.recv_json().await, json!({"type": "pong"}));
    client.send(r#"{"type":"ping"}"#).await;
    assert_eq!(client.recv_json().await, json!({"type": "pong"}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connects_are_refused_with_json() {
    let server = TestServer::start(|s| {
        s.server.allowed_origins = vec!["https://shop.example".into()];
    })
    .await;
    let refused = |url: String, origin: Option<&'static str>| async move {
        match WsClient::try_connect(&url, origin).await {
            Ok(_) => panic!("{url} with origin {origin:?} was accepted"),
            Err(refused) => refused,
        }
    };
    let r = refused(server.ws_url("/?page=home"), None).await;
    assert_eq!((r.status, r.body["code"].clone()), (401, json!(401)));
    assert_eq!(r.body["message"], "missing token");
    let r = refused(server.ws_url("/?page=home&token=wrong"), None).await;
    assert_eq!(r.status, 401);
    let r = refused(page_url(&server, "home"), Some("https://evil.example")).await;
    assert_eq!((r.status, r.body["code"].clone()), (403, json!(403)));
    let r = refused(
        server.ws_url(&format!("/?page={}&token={CLIENT_TOKEN}", "x".repeat(200))),
        None,
    )
    .await;
    assert_eq!(r.status, 400);

    // A listed origin, and no origin at all (curl, PHP), are both fine.
    WsClient::try_connect(&page_url(&server, "home"), Some("https://shop.example"))
        .await
        .expect("listed origin");
    WsClient::try_connect(&page_url(&server, "home"), None)
        .await
        .expect("no origin header");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_triggers_get_clear_json_errors() {
    let server = TestServer::start(|_| {}).await;

    let (status, body) = server.get_json(&format!("/?token={API_TOKEN}")).await;
    assert_eq!((status, body["code"].clone()), (400, json!(400)));
    assert!(body["message"].as_str().unwrap().contains("func"));

    let (status, _) = server.get_json("/?func=pushHomeLogic&token=wrong").await;
    assert_eq!(status, 401);
    // A browser's client token can never trigger a push.
    let (status, _) = server
        .get_json(&format!("/?func=pushHomeLogic&token={CLIENT_TOKEN}"))
        .await;
    assert_eq!(status, 401);

    let (status, body) = server.trigger("nope", "").await;
    assert_eq!(status, 404);
    assert_eq!(body["funcs"], json!(["pushHomeLogic", "pushListLogic"]));

    let (status, body) = server.api_push(r#"{"page":"home","message":"#).await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON: EOF"),
        "{body}"
    );
    let (status, body) = server
        .api_push(r#"{"page":"home","uid":"1","message":1}"#)
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = server.api_push(r#"{"message":1}"#).await;
    assert_eq!(status, 400);
    let (status, _) = server.api_push(r#"{"page":"home"}"#).await;
    assert_eq!(status, 400, "message is required");

    let response = server
        .http
        .post(server.http_url("/api/push"))
        .bearer_auth(CLIENT_TOKEN)
        .body(r#"{"all":true,"message":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    let (status, body) = server.get_json("/ws").await;
    assert_eq!((status, body["code"].clone()), (400, json!(400)));
    let (status, body) = server.get_json("/no/such/route").await;
    assert_eq!((status, body["code"].clone()), (404, json!(404)));

    // None of that disturbed the server.
    let (status, body) = server.get_json("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["mode"], "embedded");
    assert_eq!(body["redis"], false);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_close_with_1009_and_others_carry_on() {
    let server = TestServer::start(|s| s.server.max_message_bytes = 1024).await;
    let mut big = WsClient::connect(&page_url(&server, "home")).await;
    let mut bystander = WsClient::connect(&page_url(&server, "home")).await;
    big.send(&"x".repeat(2048)).await;
    assert_eq!(big.expect_close().await.0, 1009);
    let (_, body) = server.trigger("pushHomeLogic", "").await;
    assert_eq!(body["delivered"], 1);
    assert_eq!(bystander.recv_json().await["code"], 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_forgotten() {
    let server = TestServer::start(|s| {
        s.heartbeat.interval_secs = 1;
        s.heartbeat.idle_timeout_secs = 2;
    })
    .await;
    // A frozen tab: it never answers the server's pings.
    let mut silent =
        SilentClient::connect(server.addr, &format!("/?page=home&token={CLIENT_TOKEN}")).await;
    assert_eq!(server.connections("page=home").await, 1);
    let (code, reason, _) = silent.expect_close().await;
    assert_eq!((code, reason.as_str()), (4001, "idle timeout"));
    eventually("idle connection forgotten", || async {
        (server.connections("page=home").await == 0).then_some(())
    })
    .await;

    // A client that answers pings (tungstenite does so while reading) stays open.
    let mut alive = WsClient::connect(&page_url(&server, "home")).await;
    alive.expect_silence(Duration::from_millis(3500)).await;
    let (_, body) = server.trigger("pushHomeLogic", "").await;
    assert_eq!(body["delivered"], 1);
    assert_eq!(alive.recv_json().await["code"], 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_without_hurting_others() {
    let server = TestServer::start(|s| {
        s.server.max_message_bytes = 64 * 1024;
        s.server.send_queue_bytes = 256 * 1024;
        s.server.send_timeout_secs = 2;
        s.scenes = Some(vec![scenecast::config::SceneConfig {
            event: None,
            func: "bulk".into(),
            page: Some("home".into()),
            uid: None,
            all: false,
            message: json!({"seq": "{seq}", "blob": "{blob}"}),
        }]);
    })
    .await;
    let mut stalled =
        SilentClient::connect(server.addr, &format!("/?page=home&token={CLIENT_TOKEN}")).await;
    let mut reader = WsClient::connect(&page_url(&server, "home")).await;
    let blob = "y".repeat(60 * 1024);
    // Lockstep: each push waits until the reading client has the previous one, so
    // the reader can never be the slow one, however loaded the machine is. The
    // stalled client's kernel buffers and queue fill up within a few MB.
    let max_pushes = 2_000;
    let mut pushes = 0;
    loop {
        assert!(pushes < max_pushes, "the stalled client was never dropped");
        let (status, body) = server
            .trigger("bulk", &format!("&seq={pushes}&blob={blob}"))
            .await;
        assert_eq!(status, 200);
        let frame = reader.recv_json().await;
        assert_eq!(
            frame["seq"],
            pushes.to_string(),
            "the reader gets every push in order"
        );
        pushes += 1;
        if body["delivered"] == 1 {
            break; // the stalled client is no longer on the page
        }
        assert_eq!(body["delivered"], 2, "{body}");
    }
    // Once it reads again it finds what was in flight, then the close.
    let (code, reason, received) = stalled.expect_close().await;
    assert_eq!((code, reason.as_str()), (4008, "slow consumer"));
    assert!(
        received < pushes,
        "it cannot have received all {pushes} pushes"
    );
    let metrics = server
        .http
        .get(server.http_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("scenecast_slow_consumers_closed_total 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hash_tracks_open_and_closed_connections() {
    let redis = RedisServer::start();
    let server = TestServer::start(|s| {
        s.redis.url = redis.url();
        s.redis.prefix = "sc-test".into();
        s.server.node_id = "node-a".into();
    })
    .await;
    let mut conn = redis.conn();
    let mut client = WsClient::connect(&server.ws_url(&format!(
        "/?page=home&uid=42&session=s1&token={CLIENT_TOKEN}"
    )))
    .await;

    let entries: std::collections::HashMap<String, String> = eventually("hash entry", || {
        let all: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg("sc-test:conns")
            .query(&mut conn)
            .unwrap();
        async move { (!all.is_empty()).then_some(all) }
    })
    .await;
    assert_eq!(entries.len(), 1);
    let (id, value) = entries.into_iter().next().unwrap();
    assert!(
        id.starts_with("node-a:"),
        "connection id {id} names its node"
    );
    let record: serde_json::Value = serde_json::from_str(&value).unwrap();
    assert_eq!(record["page"], "home");
    assert_eq!(record["uid"], "42");
    assert_eq!(record["session"], "s1");
    assert_eq!(record["node"], "node-a");
    assert!(record["connected_at"].as_u64().unwrap() > 1_700_000_000);
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg("sc-test:page:home")
        .query(&mut conn)
        .unwrap();
    assert_eq!(members, vec![id.clone()]);

    let (_, health) = server.get_json("/healthz").await;
    assert_eq!(
        health,
        json!({"status": "ok", "mode": "redis", "redis": true, "node": "node-a", "connections": 1})
    );

    client.send("heartbeat").await;
    assert_eq!(client.recv_json().await["type"], "pong");
    client.close().await;
    eventually("hash entry removed", || {
        let len: usize = redis::cmd("HLEN")
            .arg("sc-test:conns")
            .query(&mut conn)
            .unwrap();
        let page: usize = redis::cmd("SCARD")
            .arg("sc-test:page:home")
            .query(&mut conn)
            .unwrap();
        async move { (len == 0 && page == 0).then_some(()) }
    })
    .await;

    // An abruptly dropped socket (a crashed tab) is cleaned up the same way.
    let crashed = WsClient::connect(&page_url(&server, "list")).await;
    eventually("second entry", || {
        let len: usize = redis::cmd("HLEN")
            .arg("sc-test:conns")
            .query(&mut conn)
            .unwrap();
        async move { (len == 1).then_some(()) }
    })
    .await;
    crashed.drop_abruptly();
    eventually("crashed tab removed", || {
        let len: usize = redis::cmd("HLEN")
            .arg("sc-test:conns")
            .query(&mut conn)
            .unwrap();
        async move { (len == 0).then_some(()) }
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_sends_1001_and_clears_redis() {
    let redis = RedisServer::start();
    let server = TestServer::start(|s| {
        s.redis.url = redis.url();
        s.redis.prefix = "sc-stop".into();
    })
    .await;
    let mut conn = redis.conn();
    let mut clients = Vec::new();
    for page in ["home", "list", "home"] {
        clients.push(WsClient::connect(&page_url(&server, page)).await);
    }
    eventually("three entries", || {
        let len: usize = redis::cmd("HLEN")
            .arg("sc-stop:conns")
            .query(&mut conn)
            .unwrap();
        async move { (len == 3).then_some(()) }
    })
    .await;
    let stopping = tokio::spawn(server.stop());
    for client in &mut clients {
        assert_eq!(client.expect_close().await.0, 1001);
    }
    stopping.await.unwrap();
    let len: usize = redis::cmd("HLEN")
        .arg("sc-stop:conns")
        .query(&mut conn)
        .unwrap();
    assert_eq!(len, 0, "a graceful stop leaves no entries behind");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("sc-stop:*")
        .query(&mut conn)
        .unwrap();
    assert!(keys.is_empty(), "left behind: {keys:?}");
}
