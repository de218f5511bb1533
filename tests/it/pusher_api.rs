//! The Pusher HTTP API (`/apps/{id}/...`) driven by the real server SDKs (the `pusher`
//! Node SDK through tests/clients/sdk.js, the `pusher` Python SDK through sdk.py),
//! with real subscribers: pusher-js under Node (tests/clients/pusher-js.js) and
//! native WebSocket pages (the bridge: public channel X is page X).

use std::time::{SystemTime, UNIX_EPOCH};

use scenecast::Settings;
use scenecast::pusher::sign::sign_api_request;
use serde_json::{Value, json};

use crate::common::clients::{self, Script};
use crate::common::{CLIENT_TOKEN, TestServer, WAIT, WsClient, eventually};

const APP_ID: &str = "42";
const KEY: &str = "api-key";
const SECRET: &str = "api-secret-0123";

/// One bridged app (`42`/`api-key`), client events off, at most `max_channels`
/// channels per event.
fn with_app(s: &mut Settings, max_channels: usize) {
    let toml = format!(
        "id = \"{APP_ID}\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\nmax_channels_per_event = {max_channels}\nmax_batch = 3"
    );
    s.pusher.apps = vec![toml::from_str(&toml).unwrap()];
}

async fn server() -> TestServer {
    TestServer::start(|s| with_app(s, 100)).await
}

fn sdk_args(server: &TestServer, secret: &str, ops: Value) -> Value {
    json!({"appId": APP_ID, "key": KEY, "secret": secret, "host": "127.0.0.1",
           "port": server.addr.port(), "ops": ops})
}

/// Runs Node SDK ops against the server; one line per op.
async fn node_sdk(server: &TestServer, ops: Value) -> Vec<Value> {
    clients::node("sdk.js", &sdk_args(server, SECRET, ops)).await
}

/// Runs Python SDK ops against the server; one line per op.
async fn python_sdk(server: &TestServer, ops: Value) -> Vec<Value> {
    clients::python("sdk.py", &sdk_args(server, SECRET, ops)).await
}

/// The Node SDK's reply: status 200 and the JSON body.
fn node_ok(line: &Value) -> Value {
    assert!(line.get("error").is_none(), "SDK error: {line}");
    assert_eq!(line["result"]["status"], 200, "{line}");
    serde_json::from_str(line["result"]["body"].as_str().unwrap()).unwrap()
}

/// The Node SDK's refusal: status and the JSON body.
fn node_refused(line: &Value) -> (u64, Value) {
    let status = line["status"]
        .as_u64()
        .unwrap_or_else(|| panic!("not an HTTP refusal: {line}"));
    let body = serde_json::from_str(line["body"].as_str().unwrap()).unwrap();
    (status, body)
}

/// A pusher-js client connected to the server, its `socket_id` read.
struct JsClient {
    script: Script,
    socket_id: String,
}

impl JsClient {
    async fn connect(server: &TestServer, extra: Value) -> Self {
        let mut args = json!({"key": KEY, "host": "127.0.0.1", "port": server.addr.port(),
                              "secret": SECRET, "appId": APP_ID});
        if let (Some(args), Some(extra)) = (args.as_object_mut(), extra.as_object()) {
            args.extend(extra.clone());
        }
        let mut script = Script::node("pusher-js.js", &args);
        let connected = script
            .next_where("connected", |l| l["type"] == "connected")
            .await;
        let socket_id = connected["socket_id"].as_str().unwrap().to_string();
        JsClient { script, socket_id }
    }

    /// Subscribes and waits for `pusher:subscription_succeeded`.
    async fn subscribe(&mut self, channel: &str) {
        self.script
            .send(&json!({"cmd": "subscribe", "channel": channel}))
            .await;
        self.script
            .next_where("subscription_succeeded", |l| {
                l["type"] == "event"
                    && l["channel"] == channel
                    && l["event"] == "pusher:subscription_succeeded"
            })
            .await;
    }

    /// The next application event (not `pusher:*` / `pusher_internal:*`).
    async fn next_event(&mut self) -> Value {
        self.script
            .next_where("an event", |l| {
                l["type"] == "event"
                    && !l["event"].as_str().is_some_and(|e| e.starts_with("pusher"))
            })
            .await
    }
}

/// A native WebSocket connection on `page`, registered (the page's count, which
/// includes Pusher subscribers of the same channel, went up by one).
async fn native_page(server: &TestServer, page: &str) -> WsClient {
    let target = format!("page={page}");
    let before = server.connections(&target).await;
    let ws = WsClient::connect(&server.ws_url(&format!("/?{target}&token={CLIENT_TOKEN}"))).await;
    eventually("the native connection is registered", || async {
        (server.connections(&target).await == before + 1).then_some(())
    })
    .await;
    ws
}

#[tokio::test]
async fn node_sdk_trigger_reaches_pusher_js_and_native_pages() {
    let server = server().await;
    let mut js = JsClient::connect(&server, json!({})).await;
    js.subscribe("orders").await;
    js.subscribe("invoices").await;
    let mut native = native_page(&server, "orders").await;

    let lines = node_sdk(
        &server,
        json!([{"op": "trigger", "channels": ["orders", "invoices"], "event": "order.paid",
                "data": {"id": 5, "note": "é & \"q\""}}]),
    )
    .await;
    // The PHP SDK accepts only 200 with a JSON body: `{}`.
    assert_eq!(node_ok(&lines[0]), json!({}));

    let mut got = [js.next_event().await, js.next_event().await];
    got.sort_by_key(|e| e["channel"].as_str().unwrap().to_string());
    for (event, channel) in got.iter().zip(["invoices", "orders"]) {
        assert_eq!(event["channel"], channel);
        assert_eq!(event["event"], "order.paid");
        assert_eq!(event["data"], json!({"id": 5, "note": "é & \"q\""}));
    }
    // The native page-`orders` connection gets the data string as its frame text.
    let text = native.recv_text().await;
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"id": 5, "note": "é & \"q\""})
    );
    server.stop().await;
}

#[tokio::test]
async fn socket_id_exclusion_skips_that_connection_only() {
    let server = server().await;
    let mut a = JsClient::connect(&server, json!({})).await;
    let mut b = JsClient::connect(&server, json!({})).await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    // Node SDK with socket_id = a's, then Python SDK with socket_id = b's, then a
    // marker for everyone: each excluded client's next event is the one after.
    let lines = node_sdk(
        &server,
        json!([{"op": "trigger", "channels": ["room"], "event": "first", "data": "1",
                "params": {"socket_id": a.socket_id}}]),
    )
    .await;
    assert_eq!(node_ok(&lines[0]), json!({}));
    let lines = python_sdk(
        &server,
        json!([{"op": "trigger", "channels": ["room"], "event": "second", "data": "2",
                "socket_id": b.socket_id}]),
    )
    .await;
    assert_eq!(lines[0]["result"], json!({}), "{lines:?}");
    let lines = node_sdk(
        &server,
        json!([{"op": "trigger", "channels": ["room"], "event": "marker", "data": "m"}]),
    )
    .await;
    node_ok(&lines[0]);
    assert_eq!(a.next_event().await["event"], "second");
    assert_eq!(a.next_event().await["event"], "marker");
    assert_eq!(b.next_event().await["event"], "first");
    assert_eq!(b.next_event().await["event"], "marker");
    server.stop().await;
}

#[tokio::test]
async fn batches_from_both_sdks_arrive_in_order() {
    let server = server().await;
    let mut js = JsClient::connect(&server, json!({})).await;
    js.subscribe("feed").await;
    let lines = node_sdk(
        &server,
        json!([{"op": "triggerBatch", "batch": [
            {"channel": "feed", "name": "one", "data": {"n": 1}},
            {"channel": "feed", "name": "two", "data": "plain text"},
            {"channel": "other", "name": "three", "data": "x"},
        ]}]),
    )
    .await;
    assert_eq!(node_ok(&lines[0]), json!({}));
    let lines = python_sdk(
        &server,
        json!([{"op": "trigger_batch", "batch": [
            {"channel": "feed", "name": "four", "data": {"n": 4}},
        ]}]),
    )
    .await;
    assert_eq!(lines[0]["result"], json!({}), "{lines:?}");
    let one = js.next_event().await;
    assert_eq!(
        (&one["event"], &one["data"]),
        (&json!("one"), &json!({"n": 1}))
    );
    let two = js.next_event().await;
    assert_eq!(
        (&two["event"], &two["data"]),
        (&json!("two"), &json!("plain text"))
    );
    let four = js.next_event().await;
    assert_eq!(
        (&four["event"], &four["data"]),
        (&json!("four"), &json!({"n": 4}))
    );
    // Over max_batch (3): refused whole, nothing published.
    let five: Vec<Value> = (0..4)
        .map(|i| json!({"channel": "feed", "name": format!("over{i}"), "data": "x"}))
        .collect();
    let lines = node_sdk(
        &server,
        json!([{"op": "triggerBatch", "batch": five},
               {"op": "trigger", "channels": ["feed"], "event": "marker", "data": "m"}]),
    )
    .await;
    let (status, body) = node_refused(&lines[0]);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("at most 3"),
        "{body}"
    );
    assert_eq!(js.next_event().await["event"], "marker");
    server.stop().await;
}

#[tokio::test]
async fn channel_info_and_channel_lists_count_subscribers() {
    let server = server().await;
    let mut a = JsClient::connect(&server, json!({})).await;
    let mut b = JsClient::connect(&server, json!({})).await;
    a.subscribe("news-a").await;
    b.subscribe("news-a").await;
    a.subscribe("news-b").await;
    a.subscribe("sport").await;
    let lines = python_sdk(
        &server,
        json!([
            {"op": "channel_info", "channel": "news-a", "info": ["subscription_count"]},
            {"op": "channel_info", "channel": "empty"},
            {"op": "channels_info", "prefix_filter": "news-"},
            {"op": "channels_info"},
        ]),
    )
    .await;
    assert_eq!(
        lines[0]["result"],
        json!({"occupied": true, "subscription_count": 2}),
        "{lines:?}"
    );
    assert_eq!(lines[1]["result"], json!({"occupied": false}));
    assert_eq!(
        lines[2]["result"],
        json!({"channels": {"news-a": {}, "news-b": {}}})
    );
    assert_eq!(
        lines[3]["result"],
        json!({"channels": {"news-a": {}, "news-b": {}, "sport": {}}})
    );
    // `info` on a trigger: the counts of the channels it went to.
    let lines = node_sdk(
        &server,
        json!([
            {"op": "trigger", "channels": ["news-a", "sport"], "event": "e", "data": "x",
             "params": {"info": "subscription_count"}},
            {"op": "get", "path": "/channels", "params": {"info": "user_count"}},
        ]),
    )
    .await;
    assert_eq!(
        node_ok(&lines[0]),
        json!({"channels": {"news-a": {"subscription_count": 2}, "sport": {"subscription_count": 1}}})
    );
    // user_count is for presence channels only.
    let (status, body) = node_refused(&lines[1]);
    assert_eq!(status, 400, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn presence_users_and_user_counts() {
    let server = server().await;
    let member = |id: &str| json!({"presence": {"user_id": id, "user_info": {"name": id}}});
    let mut ann = JsClient::connect(&server, member("ann")).await;
    let mut ann2 = JsClient::connect(&server, member("ann")).await;
    let mut bob = JsClient::connect(&server, member("bob")).await;
    for client in [&mut ann, &mut ann2, &mut bob] {
        client.subscribe("presence-room").await;
    }
    let lines = python_sdk(
        &server,
        json!([
            {"op": "users_info", "channel": "presence-room"},
            {"op": "channel_info", "channel": "presence-room", "info": ["user_count", "subscription_count"]},
            {"op": "channels_info", "prefix_filter": "presence-", "attributes": ["user_count"]},
            {"op": "users_info", "channel": "public-room"},
        ]),
    )
    .await;
    let mut ids: Vec<String> = lines[0]["result"]["users"]
        .as_array()
        .unwrap_or_else(|| panic!("{lines:?}"))
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["ann", "bob"]);
    assert_eq!(
        lines[1]["result"],
        json!({"occupied": true, "user_count": 2, "subscription_count": 3})
    );
    assert_eq!(
        lines[2]["result"],
        json!({"channels": {"presence-room": {"user_count": 2}}})
    );
    // Users of a non-presence channel: 400, which the Python SDK raises as bad request.
    assert_eq!(lines[3]["error_type"], "PusherBadRequest", "{lines:?}");
    server.stop().await;
}

#[tokio::test]
async fn terminate_connections_closes_a_users_signed_in_connections() {
    let server = server().await;
    let user = |id: &str| json!({"user": {"id": id}});
    let mut seven = JsClient::connect(&server, user("7")).await;
    let mut eight = JsClient::connect(&server, user("8")).await;
    for client in [&mut seven, &mut eight] {
        client.script.send(&json!({"cmd": "signin"})).await;
        client
            .script
            .next_where("signed_in", |l| l["type"] == "signed_in")
            .await;
        client.subscribe("lobby").await;
    }
    let lines = node_sdk(
        &server,
        json!([{"op": "terminateUserConnections", "userId": "7"}]),
    )
    .await;
    assert_eq!(node_ok(&lines[0]), json!({}));
    // Closed with 4009: pusher-js stops (no reconnect until the app says so).
    let left = seven
        .script
        .next_where("the connection leaves connected", |l| {
            l["type"] == "state" && l["previous"] == "connected"
        })
        .await;
    assert_eq!(left["current"], "disconnected", "{left}");
    // User 8 is untouched: the next event reaches it.
    let lines = node_sdk(
        &server,
        json!([{"op": "trigger", "channels": ["lobby"], "event": "marker", "data": "m"}]),
    )
    .await;
    node_ok(&lines[0]);
    assert_eq!(eight.next_event().await["event"], "marker");
    // The Python SDK's path (`/users/{id}/terminate_connections`, no `/apps/{id}`).
    let lines = python_sdk(
        &server,
        json!([{"op": "terminate_user_connections", "userId": "8"}]),
    )
    .await;
    assert_eq!(lines[0]["result"], json!({}), "{lines:?}");
    eight
        .script
        .next_where("the connection leaves connected", |l| {
            l["type"] == "state" && l["previous"] == "connected"
        })
        .await;
    server.stop().await;
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A request signed by our own signer (to make what the SDKs will not: stale
/// timestamps, a wrong body_md5), sent raw.
async fn raw_post(server: &TestServer, path: &str, query: &str, body: &str) -> (u16, Value) {
    let response = server
        .http
        .post(server.http_url(&format!("{path}?{query}")))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn refusals_are_documented_json_and_publish_nothing() {
    let server = TestServer::start(|s| {
        with_app(s, 2);
        s.server.max_message_bytes = 1000;
    })
    .await;
    let mut native = native_page(&server, "guarded").await;
    let event = json!({"name": "e", "data": "x", "channels": ["guarded"]}).to_string();
    let path = format!("/apps/{APP_ID}/events");
    let signed = |timestamp: u64, body: &str| {
        sign_api_request(KEY, SECRET, "POST", &path, &[], body.as_bytes(), timestamp)
    };

    // Wrong secret: 401 from the Node SDK and the Python SDK's own error class.
    let wrong = clients::node(
        "sdk.js",
        &sdk_args(
            &server,
            "not-the-secret",
            json!([
            {"op": "trigger", "channels": ["guarded"], "event": "e", "data": "x"}]),
        ),
    )
    .await;
    let (status, body) = node_refused(&wrong[0]);
    assert_eq!((status, body["code"].as_u64()), (401, Some(401)), "{body}");
    assert_eq!(body["error"], "invalid signature");
    let wrong = clients::python(
        "sdk.py",
        &sdk_args(
            &server,
            "not-the-secret",
            json!([
            {"op": "trigger", "channels": ["guarded"], "event": "e", "data": "x"}]),
        ),
    )
    .await;
    assert_eq!(wrong[0]["error_type"], "PusherBadAuth", "{wrong:?}");

    // Stale timestamp (601 s old), either way: 401.
    for stamp in [now() - 700, now() + 700] {
        let (status, body) = raw_post(&server, &path, &signed(stamp, &event), &event).await;
        assert_eq!(status, 401, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("timestamp"),
            "{body}"
        );
    }
    // A body that is not the one signed (body_md5 mismatch): 401.
    let query = signed(now(), &event);
    let other = event.replace("\"x\"", "\"y\"");
    let (status, body) = raw_post(&server, &path, &query, &other).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("body_md5"),
        "{body}"
    );
    // Unknown app: 404.
    let other_path = "/apps/999/events";
    let query = sign_api_request(
        KEY,
        SECRET,
        "POST",
        other_path,
        &[],
        event.as_bytes(),
        now(),
    );
    let (status, body) = raw_post(&server, other_path, &query, &event).await;
    assert_eq!((status, body["code"].as_u64()), (404, Some(404)), "{body}");
    // Over max_channels_per_event (2): 400, from the Node SDK.
    let lines = node_sdk(
        &server,
        json!([{"op": "trigger", "channels": ["guarded", "b", "c"], "event": "e", "data": "x"}]),
    )
    .await;
    let (status, body) = node_refused(&lines[0]);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("too many channels"),
        "{body}"
    );
    // Data over server.max_message_bytes: 413 (the Python SDK's own limit is 10 KB).
    let lines = node_sdk(
        &server,
        json!([{"op": "trigger", "channels": ["guarded"], "event": "e", "data": "x".repeat(1001)}]),
    )
    .await;
    let (status, body) = node_refused(&lines[0]);
    assert_eq!(status, 413, "{body}");
    // A body over the request limit: 413 before anything is parsed.
    let huge = "x".repeat(64 * 1024);
    let query = signed(now(), &huge);
    let (status, _) = raw_post(&server, &path, &query, &huge).await;
    assert_eq!(status, 413);

    // None of the above reached the page; a valid trigger does, next.
    let lines = node_sdk(
        &server,
        json!([{"op": "trigger", "channels": ["guarded"], "event": "e", "data": "marker"}]),
    )
    .await;
    node_ok(&lines[0]);
    assert_eq!(native.recv_text().await, "marker");
    for reason in [
        "pusher_api_signature",
        "pusher_api_app",
        "pusher_api_request",
        "pusher_api_body",
    ] {
        assert!(server.rejected(reason).await > 0, "{reason}");
    }
    server.stop().await;
}

#[tokio::test]
async fn python_sdk_gets_with_body_md5_are_accepted() {
    let server = server().await;
    let lines = python_sdk(
        &server,
        json!([
            {"op": "channels_info"},
            {"op": "channel_info", "channel": "nobody", "info": ["subscription_count"]},
        ]),
    )
    .await;
    assert_eq!(lines[0]["result"], json!({"channels": {}}), "{lines:?}");
    assert_eq!(
        lines[1]["result"],
        json!({"occupied": false, "subscription_count": 0})
    );
    server.stop().await;
}

/// Deletes a generated file, also when the test fails.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The fenced block (```{lang}) that follows `marker` in README.md.
fn readme_block(marker: &str, lang: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = &readme[readme
        .find(marker)
        .unwrap_or_else(|| panic!("README has {marker}"))..];
    let fence = format!("```{lang}\n");
    let start = after.find(&fence).unwrap() + fence.len();
    let len = after[start..].find("```").unwrap();
    after[start..start + len].to_string()
}

/// "Laravel in five minutes" as written: scenecast started from the README's config
/// block, the README's Echo block run under Node with the `.env` values Vite would
/// put in `import.meta.env`, and the README's Node SDK trigger (step 4, what
/// Laravel's broadcaster sends) run as a file, reaching its listeners.
#[tokio::test]
async fn the_readme_laravel_guide_works_as_written() {
    #[derive(serde::Deserialize)]
    struct Snippet {
        pusher: scenecast::pusher::PusherSettings,
    }
    let config: Snippet = toml::from_str(&readme_block("<!-- laravel-config", "toml")).unwrap();
    let app = config.pusher.apps[0].clone();
    let server = TestServer::start(|s| s.pusher = config.pusher).await;
    let port = server.addr.port().to_string();
    let env = [
        ("VITE_PUSHER_APP_KEY", app.key.as_str()),
        ("VITE_PUSHER_HOST", "127.0.0.1"),
        ("VITE_PUSHER_PORT", port.as_str()),
        ("VITE_PUSHER_SCHEME", "http"),
        ("VITE_PUSHER_APP_CLUSTER", "mt1"),
    ];
    let block = readme_block("<!-- laravel-echo", "js");
    // As written (the `pusher` broadcaster), and with the `reverb` broadcaster and the
    // VITE_REVERB_* names (the reverb .env block has no cluster: Vite gives undefined).
    let reverb = block
        .replace("broadcaster: 'pusher'", "broadcaster: 'reverb'")
        .replace("VITE_PUSHER_", "VITE_REVERB_");
    assert!(reverb.contains("'reverb'"), "{block}");
    let mut listeners = Vec::new();
    for (variant, mut script) in [("pusher", block.clone()), ("reverb", reverb)] {
        for (name, value) in env {
            let name = name.replace("VITE_PUSHER_", &format!("VITE_{}_", variant.to_uppercase()));
            let value = match name.as_str() {
                "VITE_REVERB_APP_CLUSTER" => "undefined".to_string(),
                _ => json!(value).to_string(),
            };
            script = script.replace(&format!("import.meta.env.{name}"), &value);
        }
        assert!(!script.contains("import.meta.env"), "{script}");
        // A browser's `window`, and the listener's output on stdout.
        let script = format!(
            "globalThis.window = globalThis;\n{}\n\
             window.Echo.channel('orders').subscribed(() => process.stdout.write(JSON.stringify({{type: 'subscribed'}}) + '\\n'));\n",
            script.replace(
                "console.log(e)",
                "process.stdout.write(JSON.stringify({type: 'listen', data: e}) + '\\n')"
            )
        );
        let file = format!("readme-echo-{variant}-{}-{port}.mjs", std::process::id());
        let path = clients::dir().join(&file);
        std::fs::write(&path, script).unwrap();
        let _remove = RemoveOnDrop(path);
        let mut echo = Script::node(&file, &json!({}));
        echo.next_where("subscribed", |l| l["type"] == "subscribed")
            .await;
        listeners.push(echo);
    }
    // Step 4 as written (a CommonJS file, `node trigger.js`), on the test server's port.
    let trigger = readme_block("<!-- laravel-trigger", "js");
    assert!(trigger.contains("port: 9502"), "{trigger}");
    let file = format!("readme-trigger-{}-{port}.js", std::process::id());
    let path = clients::dir().join(&file);
    std::fs::write(
        &path,
        trigger.replace("port: 9502", &format!("port: {port}")),
    )
    .unwrap();
    let _remove = RemoveOnDrop(path);
    let run = tokio::process::Command::new("node")
        .arg(&file)
        .current_dir(clients::dir())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT, run)
        .await
        .expect("node trigger.js within WAIT")
        .expect("run node");
    assert!(
        output.status.success(),
        "node trigger.js: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200 {}\n");
    for echo in &mut listeners {
        let got = echo
            .next_where("the listener", |l| l["type"] == "listen")
            .await;
        assert_eq!(got["data"], json!({"id": 5}));
    }
    server.stop().await;
}

/// `#server-to-user-{uid}` (the Node SDK's `sendToUser` channel) on the bridged app
/// is a uid push: the user's native tabs get the data, other users' do not.
#[tokio::test]
async fn server_to_user_events_reach_that_users_native_tabs() {
    let server = server().await;
    let connect = |uid: &'static str| {
        let url = server.ws_url(&format!("/?page=home&uid={uid}&token={CLIENT_TOKEN}"));
        async move { WsClient::connect(&url).await }
    };
    let mut seven = connect("7").await;
    let mut eight = connect("8").await;
    eventually("both tabs are registered", || async {
        (server.connections("page=home").await == 2).then_some(())
    })
    .await;
    let lines = node_sdk(
        &server,
        json!([
            {"op": "sendToUser", "userId": "7", "event": "note", "data": "for seven"},
            {"op": "trigger", "channels": ["home"], "event": "note", "data": "for all"},
        ]),
    )
    .await;
    assert_eq!(node_ok(&lines[0]), json!({}));
    node_ok(&lines[1]);
    assert_eq!(seven.recv_text().await, "for seven");
    assert_eq!(seven.recv_text().await, "for all");
    assert_eq!(eight.recv_text().await, "for all");
    server.stop().await;
}

/// Two nodes on one Redis: an API call to node A reaches a pusher-js client on node
/// B (trigger), counts it (channel info), and closes it (terminate_connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_on_one_node_act_on_another_nodes_connections() {
    let redis = crate::common::RedisServer::start();
    let node = |name: &'static str| {
        let url = redis.url();
        async move {
            let server = TestServer::start(|s| {
                with_app(s, 100);
                s.redis.url = url;
                s.redis.prefix = "papi".into();
                s.server.node_id = name.into();
            })
            .await;
            eventually("the node says its Redis links are up", || async {
                let (_, health) = server.get_json("/healthz").await;
                (health["status"] == "ok").then_some(())
            })
            .await;
            server
        }
    };
    let a = node("a").await;
    let b = node("b").await;
    let mut js = JsClient::connect(&b, json!({"user": {"id": "7"}})).await;
    js.script.send(&json!({"cmd": "signin"})).await;
    js.script
        .next_where("signed_in", |l| l["type"] == "signed_in")
        .await;
    js.subscribe("orders").await;

    let lines = node_sdk(
        &a,
        json!([
            {"op": "trigger", "channels": ["orders"], "event": "paid", "data": "from a"},
            {"op": "get", "path": "/channels/orders", "params": {"info": "subscription_count"}},
        ]),
    )
    .await;
    assert_eq!(node_ok(&lines[0]), json!({}));
    let event = js.next_event().await;
    assert_eq!(
        (&event["event"], &event["data"]),
        (&json!("paid"), &json!("from a"))
    );
    assert_eq!(
        node_ok(&lines[1]),
        json!({"occupied": true, "subscription_count": 1})
    );
    let lines = node_sdk(
        &a,
        json!([{"op": "terminateUserConnections", "userId": "7"}]),
    )
    .await;
    assert_eq!(node_ok(&lines[0]), json!({}));
    js.script
        .next_where("the connection leaves connected", |l| {
            l["type"] == "state" && l["previous"] == "connected"
        })
        .await;
    a.stop().await;
    b.stop().await;
}

/// Two apps: the bridged one's channels are the native pages; the other's are its
/// own namespace. An API event on app `other`'s `orders` reaches that app's
/// subscribers only, not the bridged app's `orders` nor page `orders`.
#[tokio::test]
async fn each_app_publishes_in_its_own_namespace() {
    let server = TestServer::start(|s| {
        with_app(s, 100);
        s.pusher.apps[0].bridge = true;
        let other = "id = \"43\"\nkey = \"other-key\"\nsecret = \"other-secret-0123\"";
        s.pusher.apps.push(toml::from_str(other).unwrap());
    })
    .await;
    let mut bridged = JsClient::connect(&server, json!({})).await;
    bridged.subscribe("orders").await;
    let mut other = JsClient::connect(
        &server,
        json!({"key": "other-key", "secret": "other-secret-0123", "appId": "43"}),
    )
    .await;
    other.subscribe("orders").await;
    let mut native = native_page(&server, "orders").await;

    let lines = clients::node(
        "sdk.js",
        &json!({"appId": "43", "key": "other-key", "secret": "other-secret-0123",
                "host": "127.0.0.1", "port": server.addr.port(), "ops": [
                    {"op": "trigger", "channels": ["orders"], "event": "theirs", "data": "o"}]}),
    )
    .await;
    assert_eq!(node_ok(&lines[0]), json!({}));
    assert_eq!(other.next_event().await["event"], "theirs");
    let lines = node_sdk(
        &server,
        json!([{"op": "trigger", "channels": ["orders"], "event": "ours", "data": "b"}]),
    )
    .await;
    node_ok(&lines[0]);
    assert_eq!(bridged.next_event().await["event"], "ours");
    assert_eq!(native.recv_text().await, "b");
    // The other app's key does not sign for the bridged app's id.
    let lines = clients::node(
        "sdk.js",
        &json!({"appId": APP_ID, "key": "other-key", "secret": "other-secret-0123",
                "host": "127.0.0.1", "port": server.addr.port(), "ops": [
                    {"op": "trigger", "channels": ["orders"], "event": "e", "data": "x"}]}),
    )
    .await;
    assert_eq!(node_refused(&lines[0]).0, 401);
    server.stop().await;
}

/// A disabled app (`enabled = false`): its correctly signed calls get 403, which
/// the Python SDK raises as `PusherForbidden`.
#[tokio::test]
async fn a_disabled_app_is_forbidden() {
    let server = TestServer::start(|s| {
        with_app(s, 100);
        s.pusher.apps[0].enabled = false;
    })
    .await;
    let lines = node_sdk(
        &server,
        json!([{"op": "trigger", "channels": ["a"], "event": "e", "data": "x"}]),
    )
    .await;
    let (status, body) = node_refused(&lines[0]);
    assert_eq!((status, body["code"].as_u64()), (403, Some(403)), "{body}");
    let lines = python_sdk(&server, json!([{"op": "channels_info"}])).await;
    assert_eq!(lines[0]["error_type"], "PusherForbidden", "{lines:?}");
    assert!(server.rejected("pusher_api_disabled").await >= 2);
    server.stop().await;
}
