//! The Pusher WebSocket at `/app/{key}` of a real server, driven by pusher-js 8.6
//! and laravel-echo 2.5 under Node (tests/clients) and by a raw WebSocket client
//! where a test reads exact frames: handshake, ping, refusal codes, public channels
//! bridged both ways with native pages, private/presence auth, client events,
//! sign-in and `#server-to-user-{id}`, encrypted relay, cache channels, 4200 on a
//! graceful stop.

use std::time::Duration;

use scenecast::pusher::sign::sign_channel;
use serde_json::{Value, json};

use crate::common::clients::Script;
use crate::common::server::{CLIENT_TOKEN, TestServer};
use crate::common::ws::WsClient;

const KEY: &str = "js-key";
const SECRET: &str = "js-secret";

fn app(extra: Value) -> scenecast::pusher::PusherApp {
    let mut base = json!({"id": "1", "key": KEY, "secret": SECRET, "client_events": true});
    if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        base.extend(extra.clone());
    }
    serde_json::from_value(base).unwrap()
}

async fn server(extra: Value) -> TestServer {
    TestServer::start(|s| s.pusher.apps = vec![app(extra)]).await
}

fn port(server: &TestServer) -> u16 {
    server.addr.port()
}

fn js(server: &TestServer, extra: Value) -> Script {
    let mut arg = json!({"key": KEY, "host": "127.0.0.1", "port": port(server), "secret": SECRET});
    if let (Some(arg), Some(extra)) = (arg.as_object_mut(), extra.as_object()) {
        arg.extend(extra.clone());
    }
    Script::node("pusher-js.js", &arg)
}

fn is(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |line| line["type"] == kind
}

fn event(name: &'static str) -> impl Fn(&Value) -> bool {
    move |line| line["type"] == "event" && line["event"] == name
}

/// A raw Pusher connection and its socket id.
async fn raw(server: &TestServer) -> (WsClient, String) {
    let mut ws = WsClient::connect(&server.ws_url(&format!("/app/{KEY}?protocol=7"))).await;
    let hello = ws.recv_json().await;
    assert_eq!(hello["event"], "pusher:connection_established");
    let data: Value = serde_json::from_str(hello["data"].as_str().unwrap()).unwrap();
    (ws, data["socket_id"].as_str().unwrap().to_string())
}

/// The next frame of `ws` whose event is `name`, with its `data` decoded.
async fn next_event(ws: &mut WsClient, name: &str) -> Value {
    loop {
        let mut frame = ws.recv_json().await;
        if frame["event"] == name {
            if let Some(text) = frame["data"].as_str() {
                frame["data"] = serde_json::from_str(text).unwrap_or(Value::String(text.into()));
            }
            return frame;
        }
    }
}

async fn native(server: &TestServer, page: &str) -> WsClient {
    WsClient::connect(&server.ws_url(&format!("/ws?token={CLIENT_TOKEN}&page={page}"))).await
}

#[tokio::test]
async fn handshake_ping_and_refusal_codes() {
    let server = server(json!({})).await;
    let mut ws = WsClient::connect(&server.ws_url(&format!("/app/{KEY}?protocol=7"))).await;
    let hello = ws.recv_json().await;
    assert_eq!(hello["event"], "pusher:connection_established");
    let data: Value = serde_json::from_str(hello["data"].as_str().unwrap()).unwrap();
    let socket_id = data["socket_id"].as_str().unwrap();
    let (node, local) = socket_id.split_once('.').unwrap();
    assert!(
        !node.is_empty()
            && !local.is_empty()
            && node
                .bytes()
                .chain(local.bytes())
                .all(|b| b.is_ascii_digit()),
        "{socket_id}"
    );
    assert_eq!(data["activity_timeout"], 30);
    ws.send(r#"{"event":"pusher:ping","data":{}}"#).await;
    assert_eq!(ws.recv_json().await["event"], "pusher:pong");
    // A frame that is not JSON: a pusher:error, the connection stays.
    ws.send("hello").await;
    assert_eq!(ws.recv_json().await["event"], "pusher:error");
    ws.send(r#"{"event":"pusher:ping"}"#).await;
    assert_eq!(ws.recv_json().await["event"], "pusher:pong");

    for (path, code) in [
        ("/app/nope?protocol=7", 4001),
        (&*format!("/app/{KEY}"), 4008),
        (&*format!("/app/{KEY}?protocol=x"), 4006),
        (&*format!("/app/{KEY}?protocol=99"), 4007),
    ] {
        let mut ws = WsClient::connect(&server.ws_url(path)).await;
        let error = ws.recv_json().await;
        assert_eq!(error["event"], "pusher:error", "{path}");
        assert_eq!(error["data"]["code"], code, "{path}");
        assert_eq!(ws.expect_close().await.0, code, "{path}");
    }

    // pusher-js takes the handshake, and stops for good on 4001.
    let mut js = js(&server, json!({}));
    let connected = js.next_where("connected", is("connected")).await;
    assert_eq!(
        connected["socket_id"].as_str().unwrap().split('.').count(),
        2
    );
    let mut refused = Script::node(
        "pusher-js.js",
        &json!({"key": "nope", "host": "127.0.0.1", "port": port(&server)}),
    );
    let error = refused
        .next_where("4001", |l| l["type"] == "connection_error")
        .await;
    assert_eq!(error["error"]["data"]["code"], 4001, "{error}");
    refused
        .next_where("disconnected", |l| {
            l["type"] == "state" && l["current"] == "disconnected"
        })
        .await;
    let before = server.rejected("pusher_app").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        server.rejected("pusher_app").await,
        before,
        "pusher-js must not retry after 4001"
    );
}

#[tokio::test]
async fn public_channels_are_native_pages_both_ways() {
    let server = server(json!({})).await;
    let mut js = js(&server, json!({}));
    js.next_where("connected", is("connected")).await;
    js.send(&json!({"cmd": "subscribe", "channel": "orders"}))
        .await;
    js.next_where("subscribed", event("pusher:subscription_succeeded"))
        .await;
    let mut page = native(&server, "orders").await;

    // A native push to page orders: the native page gets the payload, pusher-js the
    // event (default name, then a named one).
    let (status, _) = server
        .api_push(r#"{"page":"orders","message":{"id":1}}"#)
        .await;
    assert_eq!(status, 200);
    assert_eq!(page.recv_json().await, json!({"id": 1}));
    let got = js.next_where("push", event("scenecast.push")).await;
    assert_eq!(
        (got["channel"].clone(), got["data"].clone()),
        (json!("orders"), json!({"id": 1}))
    );
    server
        .api_push(r#"{"page":"orders","event":"order.paid","message":{"id":2}}"#)
        .await;
    assert_eq!(page.recv_json().await, json!({"id": 2}));
    let got = js.next_where("order.paid", event("order.paid")).await;
    assert_eq!(got["data"], json!({"id": 2}));

    // A Pusher event on the channel reaches the native page as its data.
    let (mut raw, _) = raw(&server).await;
    raw.send(r#"{"event":"pusher:subscribe","data":{"channel":"orders"}}"#)
        .await;
    next_event(&mut raw, "pusher_internal:subscription_succeeded").await;
    let state_publisher = server
        .api_push(r#"{"page":"orders","event":"from.api","message":"plain text"}"#)
        .await;
    assert_eq!(state_publisher.0, 200);
    assert_eq!(page.recv_text().await, "\"plain text\"");
    let got = next_event(&mut raw, "from.api").await;
    assert_eq!(got["data"], "plain text");
    js.next_where("from.api", event("from.api")).await;

    // `all` is native only; a page elsewhere reaches neither.
    server.api_push(r#"{"all":true,"message":{"n":3}}"#).await;
    assert_eq!(page.recv_json().await, json!({"n": 3}));
    server
        .api_push(r#"{"page":"orders","message":{"n":4}}"#)
        .await;
    // Order-based: the pusher-js client's next event on orders is n=4, not the broadcast.
    let next = js.next_where("n4", |l| l["type"] == "event").await;
    assert_eq!(next["data"], json!({"n": 4}));

    // Unsubscribed: nothing more.
    raw.send(r#"{"event":"pusher:unsubscribe","data":{"channel":"orders"}}"#)
        .await;
    raw.send(r#"{"event":"pusher:ping","data":{}}"#).await;
    next_event(&mut raw, "pusher:pong").await;
    server
        .api_push(r#"{"page":"orders","message":{"n":5}}"#)
        .await;
    raw.expect_silence(Duration::from_millis(300)).await;

    // The stats count Pusher subscribers with the native page connections.
    let (_, stats) = server
        .get_json(&format!(
            "/api/stats?token={}",
            crate::common::server::API_TOKEN
        ))
        .await;
    let orders = stats["pages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["page"] == "orders")
        .cloned();
    // The native page, pusher-js (raw unsubscribed).
    assert_eq!(orders.unwrap()["connections"], 2, "{stats}");
    assert_eq!(stats["node_pusher_connections"], 2, "{stats}");
}

#[tokio::test]
async fn native_connections_cannot_open_private_pages() {
    let server = server(json!({})).await;
    for page in [
        "private-x",
        "presence-x",
        "private-encrypted-x",
        "%23server-to-user-7",
    ] {
        let refused = WsClient::try_connect(
            &server.ws_url(&format!("/ws?token={CLIENT_TOKEN}&page={page}")),
            None,
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{page} opened"));
        assert_eq!(refused.status, 403, "{page}");
    }
    native(&server, "cache-x").await;
}

#[tokio::test]
async fn private_channels_need_the_apps_signature() {
    let server = server(json!({})).await;
    let mut good = js(&server, json!({}));
    good.next_where("connected", is("connected")).await;
    good.send(&json!({"cmd": "subscribe", "channel": "private-orders"}))
        .await;
    good.next_where("subscribed", event("pusher:subscription_succeeded"))
        .await;
    server
        .api_push(r#"{"page":"private-orders","event":"paid","message":{"id":5}}"#)
        .await;
    assert_eq!(
        good.next_where("paid", event("paid")).await["data"],
        json!({"id": 5})
    );

    // Signed with another secret: subscription_error 401, the connection stays.
    let mut bad = js(&server, json!({"secret": "not-the-secret"}));
    bad.next_where("connected", is("connected")).await;
    bad.send(&json!({"cmd": "subscribe", "channel": "private-orders"}))
        .await;
    let error = bad
        .next_where("error", event("pusher:subscription_error"))
        .await;
    assert_eq!(error["data"]["status"], 401, "{error}");
    bad.send(&json!({"cmd": "subscribe", "channel": "public"}))
        .await;
    bad.next_where("subscribed", event("pusher:subscription_succeeded"))
        .await;
}

#[tokio::test]
async fn client_events_reach_the_others_and_are_rate_limited_without_a_close() {
    let server = server(json!({"client_event_rate": 2})).await;
    let mut a = js(&server, json!({}));
    let mut b = js(&server, json!({}));
    for js in [&mut a, &mut b] {
        js.next_where("connected", is("connected")).await;
        js.send(&json!({"cmd": "subscribe", "channel": "private-chat"}))
            .await;
        js.next_where("subscribed", event("pusher:subscription_succeeded"))
            .await;
    }
    a.send(&json!({"cmd": "trigger", "channel": "private-chat", "event": "client-typing", "data": {"who": "a"}}))
        .await;
    let got = b.next_where("typing", event("client-typing")).await;
    assert_eq!(got["data"], json!({"who": "a"}));
    // Not echoed: a's next client event is b's.
    b.send(
        &json!({"cmd": "trigger", "channel": "private-chat", "event": "client-reply", "data": 1}),
    )
    .await;
    let next = a
        .next_where("an event", |l| {
            l["type"] == "event" && l["event"].as_str().unwrap_or("").starts_with("client-")
        })
        .await;
    assert_eq!(next["event"], "client-reply");

    // Over the rate: a pusher:error 4301, and the connection stays.
    for _ in 0..3 {
        a.send(&json!({"cmd": "trigger", "channel": "private-chat", "event": "client-burst", "data": 0}))
            .await;
    }
    let error = a
        .next_where("4301", |l| l["type"] == "connection_error")
        .await;
    assert_eq!(error["error"]["code"], 4301, "{error}");
    b.send(
        &json!({"cmd": "trigger", "channel": "private-chat", "event": "client-after", "data": 2}),
    )
    .await;
    a.next_where("after", event("client-after")).await;
    assert!(server.rejected("rate_limited").await >= 1);

    // Not on public channels, nor when the app does not allow them.
    let (mut raw, _) = raw(&server).await;
    raw.send(r#"{"event":"pusher:subscribe","data":{"channel":"lobby"}}"#)
        .await;
    next_event(&mut raw, "pusher_internal:subscription_succeeded").await;
    raw.send(r#"{"event":"client-x","channel":"lobby","data":{}}"#)
        .await;
    let error = raw.recv_json().await;
    assert_eq!(error["event"], "pusher:error");
    assert_eq!(error["data"]["code"], 4301);
}

#[tokio::test]
async fn sign_in_binds_the_user_and_server_to_user_is_theirs_only() {
    let server = server(json!({})).await;
    let mut js = js(&server, json!({"user": {"id": "7", "name": "Ann"}}));
    js.next_where("connected", is("connected")).await;
    js.send(&json!({"cmd": "signin"})).await;
    js.next_where("signed in", is("signed_in")).await;
    // pusher-js subscribes #server-to-user-7 itself; a uid push then arrives.
    let mut arrived = None;
    for _ in 0..50 {
        server
            .api_push(r#"{"uid":"7","event":"note","message":{"hi":1}}"#)
            .await;
        if let Ok(line) = tokio::time::timeout(
            Duration::from_millis(200),
            js.next_where("note", is("user_event")),
        )
        .await
        {
            arrived = Some(line);
            break;
        }
    }
    let arrived = arrived.expect("a uid push reached the signed-in user");
    assert_eq!(arrived["event"], "note");
    assert_eq!(arrived["data"], json!({"hi": 1}));

    // Another's channel, or without sign-in: subscription_error 403.
    let (mut raw, _) = raw(&server).await;
    raw.send(r##"{"event":"pusher:subscribe","data":{"channel":"#server-to-user-7"}}"##)
        .await;
    let error = next_event(&mut raw, "pusher:subscription_error").await;
    assert_eq!(error["data"]["status"], 403);
    assert_eq!(error["channel"], "#server-to-user-7");
}

#[tokio::test]
async fn encrypted_channels_are_relayed_and_cache_channels_replay_the_last_event() {
    let server = server(json!({})).await;
    let (mut ws, socket_id) = raw(&server).await;
    let channel = "private-encrypted-box";
    let auth = sign_channel(KEY, SECRET, &socket_id, channel, None);
    ws.send(
        &json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}})
            .to_string(),
    )
    .await;
    next_event(&mut ws, "pusher_internal:subscription_succeeded").await;
    let sealed = r#"{"nonce":"bm9uY2U=","ciphertext":"c2VhbGVk"}"#;
    server
        .api_push(&format!(
            r#"{{"page":"{channel}","event":"secret","message":{sealed}}}"#
        ))
        .await;
    let got = next_event(&mut ws, "secret").await;
    assert_eq!(got["data"], serde_json::from_str::<Value>(sealed).unwrap());
    // No client events on encrypted channels.
    ws.send(&json!({"event": "client-x", "channel": channel, "data": {}}).to_string())
        .await;
    assert_eq!(
        next_event(&mut ws, "pusher:error").await["data"]["code"],
        4301
    );

    // A cache channel with nothing kept: cache_miss; after an event, a new
    // subscriber gets it right after subscription_succeeded.
    ws.send(r#"{"event":"pusher:subscribe","data":{"channel":"cache-score"}}"#)
        .await;
    next_event(&mut ws, "pusher_internal:subscription_succeeded").await;
    assert_eq!(
        next_event(&mut ws, "pusher:cache_miss").await["channel"],
        "cache-score"
    );
    server
        .api_push(r#"{"page":"cache-score","event":"score","message":{"home":2}}"#)
        .await;
    next_event(&mut ws, "score").await;
    let mut js = js(&server, json!({}));
    js.next_where("connected", is("connected")).await;
    js.send(&json!({"cmd": "subscribe", "channel": "cache-score"}))
        .await;
    js.next_where("subscribed", event("pusher:subscription_succeeded"))
        .await;
    let last = js.next_where("score", |l| l["type"] == "event").await;
    assert_eq!(
        (last["event"].clone(), last["data"].clone()),
        (json!("score"), json!({"home": 2}))
    );
}

#[tokio::test]
async fn a_graceful_stop_closes_with_4200_and_pusher_js_reconnects_at_once() {
    let server = server(json!({})).await;
    let (mut ws, _) = raw(&server).await;
    let mut js = js(&server, json!({}));
    js.next_where("connected", is("connected")).await;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(ws.expect_close().await.0, 4200);
    let started = std::time::Instant::now();
    js.next_where("connecting", |l| {
        l["type"] == "state" && l["current"] == "connecting"
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "pusher-js waited {:?}",
        started.elapsed()
    );
    stopping.await.unwrap();
}

#[tokio::test]
async fn laravel_echo_hears_scene_pushes_and_authorizes_private_channels() {
    let server = TestServer::start(|s| {
        s.pusher.apps = vec![app(json!({}))];
        s.scenes = Some(vec![scenecast::config::SceneConfig {
            func: "paid".into(),
            event: Some("order.paid".into()),
            page: Some("orders".into()),
            uid: None,
            all: false,
            message: json!({"order": "{id}"}),
        }]);
    })
    .await;
    // The app's auth endpoint (Laravel's /broadcasting/auth), signing with the SDK.
    let mut auth = Script::node("auth-server.js", &json!({"key": KEY, "secret": SECRET}));
    let auth_port = auth.next_where("listening", is("listening")).await["port"].clone();
    let mut echo = Script::node(
        "echo.mjs",
        &json!({"key": KEY, "host": "127.0.0.1", "port": port(&server),
                "authEndpoint": format!("http://127.0.0.1:{auth_port}/broadcasting/auth")}),
    );
    let socket_id = echo.next_where("connected", is("connected")).await["socket_id"].clone();
    echo.send(&json!({"cmd": "channel", "channel": "orders", "event": ".order.paid"}))
        .await;
    echo.next_where("subscribed", is("subscribed")).await;
    let (status, _) = server.trigger("paid", "&id=5").await;
    assert_eq!(status, 200);
    let heard = echo.next_where("listen", is("listen")).await;
    assert_eq!(heard["data"], json!({"order": "5"}));

    echo.send(&json!({"cmd": "private", "channel": "orders", "event": ".shipped"}))
        .await;
    let asked = auth.next_where("auth request", is("auth")).await;
    assert_eq!(
        (asked["socket_id"].clone(), asked["channel"].clone()),
        (socket_id, json!("private-orders"))
    );
    // Echo names the channel as given (`orders`); this is the private one's.
    echo.next_where("private subscribed", is("subscribed"))
        .await;
    server
        .api_push(r#"{"page":"private-orders","event":"shipped","message":{"id":5}}"#)
        .await;
    let heard = echo
        .next_where("shipped", |l| {
            l["type"] == "listen" && l["event"] == ".shipped"
        })
        .await;
    assert_eq!(heard["data"], json!({"id": 5}));

    // The app's endpoint refusing: Echo's .error(), nothing subscribed.
    echo.send(&json!({"cmd": "private", "channel": "refused"}))
        .await;
    let refused = echo.next_where("endpoint refusal", is("error")).await;
    assert_eq!(refused["channel"], "refused", "{refused}");

    // A subscription the server refuses reaches Echo's .error().
    let mut wrong = Script::node(
        "echo.mjs",
        &json!({"key": KEY, "host": "127.0.0.1", "port": port(&server), "secret": "wrong"}),
    );
    wrong.next_where("connected", is("connected")).await;
    wrong
        .send(&json!({"cmd": "private", "channel": "orders"}))
        .await;
    let refused = wrong.next_where("error", is("error")).await;
    assert_eq!(refused["error"]["status"], 401, "{refused}");
}

#[tokio::test]
async fn laravel_echo_join_lists_members_and_follows_joins_and_leaves() {
    let server = server(json!({})).await;
    let member = |id: &str, name: &str| {
        Script::node(
            "echo.mjs",
            &json!({"key": KEY, "host": "127.0.0.1", "port": port(&server), "secret": SECRET,
                    "presence": {"user_id": id, "user_info": {"name": name}}}),
        )
    };
    let mut ann = member("7", "Ann");
    ann.next_where("connected", is("connected")).await;
    ann.send(&json!({"cmd": "join", "channel": "room"})).await;
    let here = ann.next_where("here", is("here")).await;
    assert_eq!(here["members"], json!([{"name": "Ann"}]));

    let mut bob = member("8", "Bob");
    bob.next_where("connected", is("connected")).await;
    bob.send(&json!({"cmd": "join", "channel": "room"})).await;
    let here = bob.next_where("here", is("here")).await;
    assert_eq!(here["members"], json!([{"name": "Ann"}, {"name": "Bob"}]));
    assert_eq!(
        ann.next_where("joining", is("joining")).await["member"],
        json!({"name": "Bob"})
    );
    // A second connection of Bob's is no new member; its leaving is no leave.
    let mut bob2 = member("8", "Bob");
    bob2.next_where("connected", is("connected")).await;
    bob2.send(&json!({"cmd": "join", "channel": "room"})).await;
    bob2.next_where("here", is("here")).await;
    bob2.send(&json!({"cmd": "exit"})).await;
    bob.send(&json!({"cmd": "exit"})).await;
    let left = ann
        .next_where("joining or leaving", |l| {
            l["type"] == "joining" || l["type"] == "leaving"
        })
        .await;
    assert_eq!(
        (left["type"].clone(), left["member"].clone()),
        (json!("leaving"), json!({"name": "Bob"}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_channels_client_events_and_the_bridge() {
    let redis = crate::common::redis::RedisServer::start();
    let node = |id: &'static str| {
        let url = redis.url();
        TestServer::start(move |s| {
            s.redis.url = url;
            s.redis.prefix = "sc-pusher".into();
            s.server.node_id = id.into();
            s.pusher.apps = vec![app(json!({}))];
        })
    };
    let (a, b) = (node("node-a").await, node("node-b").await);
    let mut on_a = js(&a, json!({}));
    let mut on_b = js(&b, json!({}));
    for js in [&mut on_a, &mut on_b] {
        js.next_where("connected", is("connected")).await;
        for channel in ["private-chat", "orders"] {
            js.send(&json!({"cmd": "subscribe", "channel": channel}))
                .await;
            js.next_where("subscribed", event("pusher:subscription_succeeded"))
                .await;
        }
    }
    // A client event on node a reaches node b's subscriber, not its sender.
    on_a.send(&json!({"cmd": "trigger", "channel": "private-chat", "event": "client-hi", "data": {"from": "a"}}))
        .await;
    assert_eq!(
        on_b.next_where("client-hi", event("client-hi")).await["data"],
        json!({"from": "a"})
    );
    // A native push entering node b reaches node a's Pusher subscriber and node
    // a's native page; the sender saw no echo of its client event before it.
    let mut page_a = native(&a, "orders").await;
    let mut pushed = false;
    for _ in 0..50 {
        // The subscriptions of node b reach Redis asynchronously; retry until the
        // native page on a is registered and reached.
        let (_, reply) = b
            .api_push(r#"{"page":"orders","event":"paid","message":{"id":9}}"#)
            .await;
        if reply["delivered"].as_u64().unwrap_or(0) >= 1 {
            pushed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pushed, "the push found node a's page");
    assert_eq!(page_a.recv_json().await, json!({"id": 9}));
    let next = on_a.next_where("an event", |l| l["type"] == "event").await;
    assert_eq!(
        (next["event"].clone(), next["data"].clone()),
        (json!("paid"), json!({"id": 9})),
        "node a's pusher-js got no echo of its own client event"
    );
    on_b.next_where("paid", event("paid")).await;
}

#[tokio::test]
async fn an_apps_quota_and_a_disabled_app_are_refused_with_their_codes() {
    let server = TestServer::start(|s| {
        s.pusher.apps = vec![
            app(json!({"max_connections": 1, "bridge": true})),
            serde_json::from_value(
                json!({"id": "2", "key": "off-key", "secret": "x", "enabled": false}),
            )
            .unwrap(),
        ];
    })
    .await;
    let (mut first, _) = raw(&server).await;
    for (path, code) in [
        (format!("/app/{KEY}?protocol=7"), 4004),
        ("/app/off-key?protocol=7".to_string(), 4003),
    ] {
        let mut ws = WsClient::connect(&server.ws_url(&path)).await;
        let error = ws.recv_json().await;
        assert_eq!(error["data"]["code"], code, "{path}: {error}");
        assert_eq!(ws.expect_close().await.0, code, "{path}");
    }
    // The first one is untouched; once it leaves, there is room again.
    first.send(r#"{"event":"pusher:ping","data":{}}"#).await;
    assert_eq!(first.recv_json().await["event"], "pusher:pong");
    first.close().await;
    crate::common::eventually("room for one", || async {
        let mut ws = WsClient::connect(&server.ws_url(&format!("/app/{KEY}?protocol=7"))).await;
        (ws.recv_json().await["event"] == "pusher:connection_established").then_some(())
    })
    .await;
}
