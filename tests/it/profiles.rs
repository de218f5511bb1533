//! The drop-in profiles in examples/: each loads with `Settings::load` (so none can
//! rot), has the settings its recipe needs, and — started on port 0 — serves that
//! recipe's own client code unchanged.

use std::path::{Path, PathBuf};

use scenecast::Settings;
use scenecast::config::WsPublish;
use serde_json::json;

use crate::common::server::API_TOKEN;
use crate::common::{TestServer, WsClient, eventually, php_push, udp_send};

fn profile(name: &str) -> Settings {
    let path = Path::new("examples").join(name);
    Settings::load(Some(&path)).unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()))
}

fn port(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("an address with a port")
}

/// The profile with every port moved to 127.0.0.1:0, so tests never collide.
async fn start(mut settings: Settings) -> TestServer {
    settings.server.bind = "127.0.0.1:0".into();
    settings.server.workers = crate::common::server::workers();
    for bind in [
        &mut settings.ingress.text_bind,
        &mut settings.ingress.udp_bind,
    ] {
        if !bind.is_empty() {
            *bind = "127.0.0.1:0".into();
        }
    }
    settings.validate().expect("still valid with ports moved");
    TestServer::start_with(settings).await
}

#[test]
fn every_example_profile_loads_and_is_checked_here() {
    let mut names: Vec<String> = std::fs::read_dir("examples")
        .expect("examples/ exists")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path: &PathBuf| path.extension().is_some_and(|e| e == "toml"))
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "swoole-laravel.toml",
            "swoole-scenes.toml",
            "swoole-udp.toml",
            "workerman.toml"
        ],
        "a new profile needs its checks and its seed flow in this file"
    );
    for name in &names {
        profile(name);
    }

    let workerman = profile("workerman.toml");
    assert_eq!(port(&workerman.server.bind), 1234);
    assert_eq!(workerman.ingress.text_bind, "127.0.0.1:5678");
    assert!(workerman.auth.allow_anonymous);

    let laravel = profile("swoole-laravel.toml");
    assert_eq!(port(&laravel.server.bind), 9501);
    assert_eq!(laravel.ingress.ws_publish, WsPublish::Any);
    assert!(laravel.auth.allow_anonymous);

    let scenes = profile("swoole-scenes.toml");
    assert_eq!(port(&scenes.server.bind), 9502);
    assert!(!scenes.auth.allow_anonymous);
    assert!(!scenes.auth.client_tokens.is_empty() && !scenes.auth.api_tokens.is_empty());
    let funcs: Vec<_> = scenes.scene_configs().into_iter().map(|s| s.func).collect();
    assert_eq!(funcs, ["pushHomeLogic", "pushListLogic"]);

    let udp = profile("swoole-udp.toml");
    assert_eq!(port(&udp.server.bind), 6552);
    assert_eq!(udp.ingress.udp_bind, "127.0.0.1:6553");
    assert!(udp.auth.allow_anonymous);

    // Only the Workerman and UDP recipes open a side port, and only on loopback.
    for settings in [&laravel, &scenes] {
        assert!(settings.ingress.text_bind.is_empty() && settings.ingress.udp_bind.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workerman_recipe_runs_unchanged() {
    let mut settings = profile("workerman.toml");
    settings.auth.api_tokens = vec![API_TOKEN.into()];
    let server = start(settings).await;
    let text = server.text_addr.expect("the inner text port");

    // var ws = new WebSocket('ws://127.0.0.1:1234'); ws.onopen = () => ws.send('uid1');
    let mut browser = WsClient::connect(&server.ws_url("")).await;
    browser.send("uid1").await;

    // $client = stream_socket_client('tcp://127.0.0.1:5678', ...);
    // fwrite($client, json_encode(['uid' => 'uid1', 'percent' => '88%']) . "\n");
    // echo fread($client, 8192);
    let pushed = r#"{"uid":"uid1","percent":"88%"}"#;
    // The binding has no reply: wait for it on the read API (the test's own API
    // token), not by retrying the push, which could deliver it twice when the
    // binding lands between a push's count ("fail") and its fan-out.
    eventually("the browser's uid is bound", || async {
        (server.connections("uid=uid1").await == 1).then_some(())
    })
    .await;
    assert_eq!(php_push(text, pushed).await, "ok\n");
    assert_eq!(browser.recv_text().await, pushed);
    assert_eq!(
        php_push(text, r#"{"uid":"uid2","percent":"1%"}"#).await,
        "fail\n"
    );
    assert_eq!(php_push(text, r#"{"order_num":1234}"#).await, "ok\n");
    assert_eq!(browser.recv_text().await, r#"{"order_num":1234}"#);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swoole_laravel_recipe_runs_unchanged() {
    let server = start(profile("swoole-laravel.toml")).await;
    // new WebSocket('ws://localhost:9501/?uid=1'), in two tabs
    let mut tab1 = WsClient::connect(&server.ws_url("/?uid=1")).await;
    let mut tab2 = WsClient::connect(&server.ws_url("/?uid=1")).await;
    // The application's own WebSocket client, as in the recipe: no token.
    let mut app = WsClient::connect(&server.ws_url("/")).await;
    app.send(r#"{"user_id":1,"cnt":5}"#).await;
    assert_eq!(tab1.recv_text().await, r#"{"user_id":1,"cnt":5}"#);
    assert_eq!(tab2.recv_text().await, r#"{"user_id":1,"cnt":5}"#);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swoole_scene_router_recipe_runs_unchanged() {
    let settings = profile("swoole-scenes.toml");
    let client_token = settings.auth.client_tokens[0].clone();
    let api_token = settings.auth.api_tokens[0].clone();
    let server = start(settings).await;
    // new WebSocket('ws://host:9502?page=home&token=...'); a browser sends that as
    // `GET /?page=...` (tungstenite does not add the `/` itself).
    let mut home =
        WsClient::connect(&server.ws_url(&format!("/?page=home&token={client_token}"))).await;
    let mut list =
        WsClient::connect(&server.ws_url(&format!("/?page=list&token={client_token}"))).await;
    home.send("heartbeat").await;
    assert_eq!(home.recv_json().await, json!({"type": "pong"}));

    // The back page's button: GET /?func=pushHomeLogic&token=...
    let (status, body) = server
        .get_json(&format!("/?func=pushHomeLogic&token={api_token}"))
        .await;
    assert_eq!((status, body["delivered"].clone()), (200, json!(1)));
    assert_eq!(
        home.recv_json().await,
        json!({"code": 200, "message": "后端按了按钮1"})
    );
    let (status, _) = server
        .get_json(&format!("/?func=pushListLogic&token={api_token}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        list.recv_json().await,
        json!({"code": 200, "message": "后端按了按钮2"})
    );
    // Pages without the token stay out.
    let refused = WsClient::try_connect(&server.ws_url("/?page=home"), None).await;
    assert_eq!(refused.err().expect("refused").status, 401);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swoole_udp_recipe_runs_unchanged() {
    let server = start(profile("swoole-udp.toml")).await;
    let udp = server.udp_addr.expect("the UDP side port");
    // new WebSocket('ws://127.0.0.1:6552')
    let mut browser = WsClient::connect(&server.ws_url("")).await;
    // echo '{"order_num":1234}' | socat - UDP:127.0.0.1:6553
    udp_send(udp, b"{\"order_num\":1234}\n");
    assert_eq!(browser.recv_text().await, r#"{"order_num":1234}"#);
    server.stop().await;
}
