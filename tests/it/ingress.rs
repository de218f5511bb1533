//! Every way the seed recipes push, over real sockets: the Workerman text port, the
//! Swoole UDP side port, first-frame and `?uid=` uid binding, publisher WebSockets
//! under each `ingress.ws_publish` policy, and tokenless (anonymous) clients.

use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::common::{
    API_TOKEN, CLIENT_TOKEN, TestServer, TextClient, WsClient, eventually, udp_send,
};

/// How long a test listens to be sure that nothing arrives.
const QUIET: Duration = Duration::from_millis(300);

async fn with_text_port(tweak: impl FnOnce(&mut scenecast::Settings)) -> TestServer {
    TestServer::start(|s| {
        s.ingress.text_bind = "127.0.0.1:0".into();
        tweak(s);
    })
    .await
}

async fn text_client(server: &TestServer) -> TextClient {
    TextClient::connect(server.text_addr.expect("text port on")).await
}

/// Sends `heartbeat` and waits for the pong: every frame sent before it has been
/// handled by the server once this returns.
async fn sync(client: &mut WsClient) {
    client.send("heartbeat").await;
    assert_eq!(client.recv_json().await, json!({"type": "pong"}));
}

// ---- Text port -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_reach_a_uid_a_page_or_everyone_and_say_ok_or_fail() {
    let server = with_text_port(|_| {}).await;
    let mut uid1 =
        WsClient::connect(&server.ws_url(&format!("/?page=home&uid=uid1&token={CLIENT_TOKEN}")))
            .await;
    let mut home =
        WsClient::connect(&server.ws_url(&format!("/?page=home&token={CLIENT_TOKEN}"))).await;
    let mut list =
        WsClient::connect(&server.ws_url(&format!("/?page=list&token={CLIENT_TOKEN}"))).await;
    let mut text = text_client(&server).await;

    // The Workerman example line, pushed as sent (key order and spacing kept).
    let line = r#"{"uid":"uid1", "percent":"88%"}"#;
    assert_eq!(text.push(line).await, "ok\n");
    assert_eq!(uid1.recv_text().await, line);

    assert_eq!(text.push(r#"{"uid":"nobody","x":1}"#).await, "fail\n");
    assert_eq!(text.push(r#"{"page":"nowhere"}"#).await, "fail\n");

    let line = r#"{"page":"list","n":1}"#;
    assert_eq!(text.push(line).await, "ok\n");
    assert_eq!(list.recv_text().await, line);

    let line = r#"{"order_num":1234}"#;
    assert_eq!(text.push(line).await, "ok\n");
    for client in [&mut uid1, &mut home, &mut list] {
        assert_eq!(client.recv_text().await, line);
    }
    // home got only the broadcast: the uid and list pushes never reached it.
    home.expect_silence(QUIET).await;

    // `\r\n` line endings (telnet, some PHP code) work the same.
    text.write(b"{\"user_id\":\"uid1\",\"cnt\":5}\r\n").await;
    assert_eq!(text.reply().await, "ok\n");
    assert_eq!(uid1.recv_text().await, r#"{"user_id":"uid1","cnt":5}"#);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_token_is_required_and_never_forwarded() {
    let server = with_text_port(|s| s.ingress.text_token = "inner-secret".into()).await;
    let mut home =
        WsClient::connect(&server.ws_url(&format!("/?page=home&token={CLIENT_TOKEN}"))).await;
    let mut text = text_client(&server).await;

    assert_eq!(text.push(r#"{"page":"home","n":1}"#).await, "fail\n");
    assert_eq!(
        text.push(r#"{"page":"home","n":2,"token":"guess"}"#).await,
        "fail\n"
    );
    assert_eq!(
        text.push(r#"{"page":"home","n":3,"token":"inner-secret"}"#)
            .await,
        "ok\n"
    );
    let frame = home.recv_json().await;
    assert_eq!(frame, json!({"page": "home", "n": 3}));
    assert_eq!(server.rejected("text_token").await, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_get_fail_and_disturb_nobody() {
    let server = with_text_port(|s| s.server.max_message_bytes = 1024).await;
    let mut home =
        WsClient::connect(&server.ws_url(&format!("/?page=home&token={CLIENT_TOKEN}"))).await;
    let mut bad = text_client(&server).await;
    let mut good = text_client(&server).await;

    for line in [
        "hello",
        "[1,2]",
        r#"{"uid":"#,
        r#"{"uid":""}"#,
        r#"{"page":{"a":1}}"#,
    ] {
        assert_eq!(bad.push(line).await, "fail\n", "{line}");
    }
    bad.write(b"{\"page\":\"home\",\"x\":\"\xff\xfe\"}\n").await;
    assert_eq!(bad.reply().await, "fail\n", "not UTF-8");

    // A line over server.max_message_bytes is skipped, not buffered, and the
    // connection reads the next line normally. It arrives in pieces, as a big
    // write does.
    let huge = format!(r#"{{"page":"home","pad":"{}"}}"#, "x".repeat(200_000));
    bad.write(huge.as_bytes()).await;
    bad.write(b"\n").await;
    assert_eq!(bad.reply().await, "fail\n", "oversize line");
    let at_limit = format!(r#"{{"page":"home","pad":"{}"}}"#, "y".repeat(1000));
    assert!(at_limit.len() <= 1024);
    assert_eq!(bad.push(&at_limit).await, "ok\n");
    assert_eq!(home.recv_text().await, at_limit);

    // Blank lines are skipped without a reply: the next reply is the next line's.
    bad.write(b"\n\r\n   \n").await;
    assert_eq!(bad.push(r#"{"page":"home","after":"blank"}"#).await, "ok\n");
    assert_eq!(
        home.recv_json().await,
        json!({"page": "home", "after": "blank"})
    );
    // A lone BOM or a Unicode space is not blank: it is answered, so a client
    // waiting for one reply per line does not wait for ever.
    for line in ["\u{FEFF}", "\u{A0}", "\u{3000}"] {
        assert_eq!(bad.push(line).await, "fail\n", "{line:?}");
    }

    // Another text connection and the WebSocket side never noticed.
    assert_eq!(good.push(r#"{"page":"home","from":"good"}"#).await, "ok\n");
    assert_eq!(
        home.recv_json().await,
        json!({"page": "home", "from": "good"})
    );
    sync(&mut home).await;

    assert_eq!(server.rejected("text_json").await, 6);
    assert_eq!(server.rejected("text_target").await, 2);
    assert_eq!(server.rejected("text_encoding").await, 1);
    assert_eq!(server.rejected("text_too_big").await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_written_line_is_never_pushed() {
    let server = with_text_port(|_| {}).await;
    let mut home =
        WsClient::connect(&server.ws_url(&format!("/?page=home&token={CLIENT_TOKEN}"))).await;

    // The client stops sending mid-line but still reads: it is told `fail`.
    let mut half = text_client(&server).await;
    half.write(br#"{"page":"home","n":1"#).await;
    half.writer
        .shutdown()
        .await
        .expect("shut down the sending side");
    assert_eq!(half.reply().await, "fail\n");
    assert_eq!(half.reply().await, "", "then the server closes");

    // The client vanishes mid-line: nothing to tell it, nothing pushed.
    let mut gone = text_client(&server).await;
    gone.write(br#"{"page":"home","n":2"#).await;
    drop(gone);
    eventually("both unfinished lines counted", || async {
        (server.rejected("text_unfinished").await == 2).then_some(())
    })
    .await;

    let mut text = text_client(&server).await;
    assert_eq!(text.push(r#"{"page":"home","n":3}"#).await, "ok\n");
    assert_eq!(
        home.recv_json().await,
        json!({"page": "home", "n": 3}),
        "no part of the unfinished lines was pushed"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_lines_on_one_connection_are_answered_in_order() {
    let server = with_text_port(|_| {}).await;
    let mut home =
        WsClient::connect(&server.ws_url(&format!("/?page=home&token={CLIENT_TOKEN}"))).await;
    let mut text = text_client(&server).await;

    // One write holding 200 lines, alternating a delivered and an undelivered push,
    // with a bad line every 50th.
    let mut batch = String::new();
    let mut expected = Vec::new();
    for n in 0..200 {
        if n % 50 == 49 {
            batch.push_str("not json\n");
            expected.push("fail\n");
        } else if n % 2 == 0 {
            batch.push_str(&format!("{{\"page\":\"home\",\"n\":{n}}}\n"));
            expected.push("ok\n");
        } else {
            batch.push_str(&format!("{{\"page\":\"empty\",\"n\":{n}}}\n"));
            expected.push("fail\n");
        }
    }
    text.write(batch.as_bytes()).await;
    for (n, want) in expected.iter().enumerate() {
        assert_eq!(text.reply().await, *want, "reply to line {n}");
    }
    for n in (0..200).step_by(2) {
        assert_eq!(home.recv_json().await["n"], n);
    }
    // The connection stays open for more, as Workerman's do.
    assert_eq!(text.push(r#"{"page":"home","n":"last"}"#).await, "ok\n");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_ten_thousand_lines_over_one_connection_none_lost() {
    const LINES: usize = 10_000;
    let server = with_text_port(|_| {}).await;
    let mut home =
        WsClient::connect(&server.ws_url(&format!("/?page=soak&token={CLIENT_TOKEN}"))).await;
    let text = text_client(&server).await;
    let TextClient {
        mut reader,
        mut writer,
    } = text;

    // Writing and reading replies at once, as a pipelining back office would.
    let writing = tokio::spawn(async move {
        for chunk in (0..LINES).collect::<Vec<_>>().chunks(500) {
            let mut batch = String::new();
            for n in chunk {
                batch.push_str(&format!("{{\"page\":\"soak\",\"n\":{n}}}\n"));
            }
            writer
                .write_all(batch.as_bytes())
                .await
                .expect("write lines");
        }
        writer
    });
    let replying = tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut oks = 0;
        let mut line = String::new();
        for _ in 0..LINES {
            line.clear();
            reader.read_line(&mut line).await.expect("read a reply");
            if line == "ok\n" {
                oks += 1;
            }
        }
        oks
    });

    for n in 0..LINES {
        let frame = home.recv_json().await;
        assert_eq!(frame["n"], n, "frames arrive complete and in order");
    }
    let oks = tokio::time::timeout(crate::common::WAIT, replying)
        .await
        .expect("all replies in time")
        .expect("reader task");
    assert_eq!(oks, LINES);
    drop(writing.await.expect("writer task"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_closes_the_text_port() {
    let server = with_text_port(|_| {}).await;
    let addr = server.text_addr.expect("text port on");
    let mut text = text_client(&server).await;
    assert_eq!(text.push(r#"{"page":"x"}"#).await, "fail\n");
    server.stop().await;
    assert_eq!(text.reply().await, "", "open connections are closed");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "nothing listens any more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_ingress_port_fails_the_start_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut settings = crate::common::server::settings();
    settings.ingress.text_bind = taken.local_addr().unwrap().to_string();
    let error = scenecast::start(settings).await.err().expect("start fails");
    assert!(error.to_string().contains("ingress.text_bind"), "{error}");

    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut settings = crate::common::server::settings();
    settings.ingress.udp_bind = taken.local_addr().unwrap().to_string();
    let error = scenecast::start(settings).await.err().expect("start fails");
    assert!(error.to_string().contains("ingress.udp_bind"), "{error}");
}

// ---- UDP port --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_are_routed_and_bad_ones_counted() {
    let server = TestServer::start(|s| {
        s.ingress.udp_bind = "127.0.0.1:0".into();
        s.server.max_message_bytes = 1024;
    })
    .await;
    let udp = server.udp_addr.expect("udp port on");
    let mut u1 =
        WsClient::connect(&server.ws_url(&format!("/?page=list&uid=u1&token={CLIENT_TOKEN}")))
            .await;
    let mut home =
        WsClient::connect(&server.ws_url(&format!("/?page=home&token={CLIENT_TOKEN}"))).await;

    udp_send(udp, br#"{"uid":"u1","x":1}"#);
    assert_eq!(u1.recv_text().await, r#"{"uid":"u1","x":1}"#);
    // `echo '...' | socat - UDP:...` adds a newline; it is not part of the frame.
    udp_send(udp, b"{\"page\":\"home\",\"x\":2}\n");
    assert_eq!(home.recv_text().await, r#"{"page":"home","x":2}"#);

    udp_send(udp, b"hello");
    udp_send(udp, br#"{"uid":"#);
    udp_send(udp, br#"{"uid":""}"#);
    udp_send(udp, b"{\"x\":\"\xff\"}");
    udp_send(
        udp,
        format!(r#"{{"pad":"{}"}}"#, "z".repeat(2000)).as_bytes(),
    );
    udp_send(udp, b"");
    udp_send(udp, br#"{"order_num":1234}"#);
    // Datagrams are handled in order: when the broadcast arrives, the bad ones
    // before it have been refused, and none of them reached anyone.
    assert_eq!(u1.recv_text().await, r#"{"order_num":1234}"#);
    assert_eq!(home.recv_text().await, r#"{"order_num":1234}"#);
    assert_eq!(server.rejected("udp_json").await, 2);
    assert_eq!(server.rejected("udp_target").await, 1);
    assert_eq!(server.rejected("udp_encoding").await, 1);
    assert_eq!(server.rejected("udp_too_big").await, 1);
    assert_eq!(server.rejected("udp_empty").await, 1);
    assert!(
        server
            .metrics()
            .await
            .contains("scenecast_pushes_total{ingress=\"udp\"} 3"),
        "three datagrams became pushes"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_need_the_text_token_when_one_is_set() {
    let server = TestServer::start(|s| {
        s.ingress.udp_bind = "127.0.0.1:0".into();
        s.ingress.text_token = "inner-secret".into();
    })
    .await;
    let udp = server.udp_addr.expect("udp port on");
    let mut home =
        WsClient::connect(&server.ws_url(&format!("/?page=home&token={CLIENT_TOKEN}"))).await;
    udp_send(udp, br#"{"page":"home","n":1}"#);
    udp_send(udp, br#"{"page":"home","n":2,"token":"inner-secret"}"#);
    assert_eq!(home.recv_json().await, json!({"page": "home", "n": 2}));
    assert_eq!(server.rejected("udp_token").await, 1);
    server.stop().await;
}

// ---- uid binding -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_first_frame_binds_the_uid_once() {
    let server = with_text_port(|s| s.auth.allow_anonymous = true).await;
    let mut text = text_client(&server).await;

    // Workerman's browser code: `new WebSocket('ws://host:1234')`, then `ws.send(uid)`.
    let mut tab1 = WsClient::connect(&server.ws_url("")).await;
    let mut tab2 = WsClient::connect(&server.ws_url("/")).await;
    let mut numeric = WsClient::connect(&server.ws_url("/")).await;
    tab1.send("uid1").await;
    tab2.send("uid1").await;
    numeric.send("1").await; // ws.send(1)
    for client in [&mut tab1, &mut tab2, &mut numeric] {
        sync(client).await;
    }
    assert_eq!(server.connections("uid=uid1").await, 2);
    assert_eq!(text.push(r#"{"uid":"uid1","percent":"88%"}"#).await, "ok\n");
    assert_eq!(
        tab1.recv_json().await,
        json!({"uid": "uid1", "percent": "88%"})
    );
    assert_eq!(
        tab2.recv_json().await,
        json!({"uid": "uid1", "percent": "88%"})
    );
    assert_eq!(text.push(r#"{"uid":1,"cnt":5}"#).await, "ok\n");
    assert_eq!(numeric.recv_json().await, json!({"uid": 1, "cnt": 5}));

    // A later plain frame does not re-bind.
    tab1.send("uid9").await;
    sync(&mut tab1).await;
    assert_eq!(server.connections("uid=uid9").await, 0);
    assert_eq!(server.connections("uid=uid1").await, 2);

    // A uid given in the URL is not replaced by a first frame either.
    let mut url_uid = WsClient::connect(&server.ws_url("/?uid=7")).await;
    url_uid.send("8").await;
    sync(&mut url_uid).await;
    assert_eq!(server.connections("uid=7").await, 1);
    assert_eq!(server.connections("uid=8").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_or_heartbeat_first_frame_binds_nothing() {
    let server = TestServer::start(|s| s.auth.allow_anonymous = true).await;
    let mut json_first = WsClient::connect(&server.ws_url("/")).await;
    json_first.send(r#"{"type":"ping"}"#).await;
    assert_eq!(
        json_first.recv_json().await,
        json!({"type": "pong"}),
        "handled as usual"
    );
    let mut heartbeat_first = WsClient::connect(&server.ws_url("/")).await;
    sync(&mut heartbeat_first).await;
    let mut other_json = WsClient::connect(&server.ws_url("/")).await;
    other_json.send(r#"{"hello":"world"}"#).await;
    sync(&mut other_json).await;

    // Only the first frame may bind, so these later ones do not.
    json_first.send("a").await;
    heartbeat_first.send("b").await;
    other_json.send("c").await;
    for client in [&mut json_first, &mut heartbeat_first, &mut other_json] {
        sync(client).await;
    }
    for uid in ["a", "b", "c", "heartbeat"] {
        assert_eq!(
            server.connections(&format!("uid={uid}")).await,
            0,
            "uid {uid}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uid_in_the_url_binds_at_connect() {
    let server = with_text_port(|s| s.auth.allow_anonymous = true).await;
    // The Swoole recipe's URL, with no token.
    let mut tab1 = WsClient::connect(&server.ws_url("/?uid=1")).await;
    let mut tab2 = WsClient::connect(&server.ws_url("/?uid=1")).await;
    let mut text = text_client(&server).await;
    assert_eq!(text.push(r#"{"user_id":1,"cnt":5}"#).await, "ok\n");
    assert_eq!(tab1.recv_text().await, r#"{"user_id":1,"cnt":5}"#);
    assert_eq!(tab2.recv_text().await, r#"{"user_id":1,"cnt":5}"#);
    server.stop().await;
}

// ---- publisher WebSockets ----------------------------------------------------------

/// A browser of user 1 on page home, and the next frame it receives.
async fn user1(server: &TestServer) -> WsClient {
    WsClient::connect(&server.ws_url(&format!("/?page=home&uid=1&token={CLIENT_TOKEN}"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_api_token_connections_publish_by_default() {
    let server = TestServer::start(|_| {}).await;
    let mut browser = user1(&server).await;
    let mut publisher = WsClient::connect(&server.ws_url(&format!("/?token={API_TOKEN}"))).await;
    let mut other_browser =
        WsClient::connect(&server.ws_url(&format!("/?page=list&token={CLIENT_TOKEN}"))).await;

    publisher.send(r#"{"user_id":1,"cnt":5}"#).await;
    assert_eq!(browser.recv_text().await, r#"{"user_id":1,"cnt":5}"#);
    publisher.send(r#"{"page":"home","n":1}"#).await;
    assert_eq!(browser.recv_json().await, json!({"page": "home", "n": 1}));
    publisher.send(r#"{"n":2}"#).await;
    assert_eq!(browser.recv_json().await, json!({"n": 2}));
    assert_eq!(other_browser.recv_json().await, json!({"n": 2}));

    // A browser's client token can never publish: its JSON is ignored.
    other_browser.send(r#"{"user_id":1,"cnt":666}"#).await;
    other_browser.send(r#"{"n":667}"#).await;
    sync(&mut other_browser).await;
    publisher.send(r#"{"user_id":1,"cnt":6}"#).await;
    assert_eq!(
        browser.recv_json().await,
        json!({"user_id": 1, "cnt": 6}),
        "the browser's frames were not forwarded"
    );

    // A publisher frame that cannot be routed closes the publisher with 1007.
    publisher.send(r#"{"user_id":""}"#).await;
    assert_eq!(publisher.expect_close().await.0, 1007);
    sync(&mut browser).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_any_every_connection_publishes() {
    let server = TestServer::start(|s| {
        s.ingress.ws_publish = scenecast::config::WsPublish::Any;
        s.auth.allow_anonymous = true;
    })
    .await;
    let mut browser = WsClient::connect(&server.ws_url("/?uid=1")).await;
    // The Swoole + Laravel application connects like any client and publishes.
    let mut app = WsClient::connect(&server.ws_url("/")).await;
    app.send(r#"{"user_id":1,"cnt":5}"#).await;
    assert_eq!(browser.recv_text().await, r#"{"user_id":1,"cnt":5}"#);
    let mut client = WsClient::connect(&server.ws_url(&format!("/?token={CLIENT_TOKEN}"))).await;
    client.send(r#"{"user_id":1,"cnt":6}"#).await;
    assert_eq!(browser.recv_json().await, json!({"user_id": 1, "cnt": 6}));
    // Plain frames and pings are still what they were, not pushes.
    app.send("heartbeat").await;
    assert_eq!(app.recv_json().await, json!({"type": "pong"}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_off_nobody_publishes() {
    let server =
        TestServer::start(|s| s.ingress.ws_publish = scenecast::config::WsPublish::Off).await;
    let mut browser = user1(&server).await;
    let mut publisher = WsClient::connect(&server.ws_url(&format!("/?token={API_TOKEN}"))).await;
    publisher.send(r#"{"user_id":1,"cnt":5}"#).await;
    sync(&mut publisher).await;
    let (status, _) = server.api_push(r#"{"uid":"1","message":"marker"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(
        browser.recv_json().await,
        json!("marker"),
        "the publisher's frame was not forwarded"
    );
    server.stop().await;
}

// ---- anonymous clients -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenless_connects_follow_allow_anonymous_and_wrong_tokens_never_pass() {
    let strict = TestServer::start(|_| {}).await;
    let refused = WsClient::try_connect(&strict.ws_url("/?uid=1"), None)
        .await
        .err()
        .expect("no token is refused by default");
    assert_eq!(
        (refused.status, refused.body["code"].clone()),
        (401, json!(401))
    );
    strict.stop().await;

    let open = TestServer::start(|s| s.auth.allow_anonymous = true).await;
    let mut browser = WsClient::connect(&open.ws_url("")).await;
    let _empty_token = WsClient::connect(&open.ws_url("/?uid=1&token=")).await;
    let refused = WsClient::try_connect(&open.ws_url("/?uid=1&token=wrong"), None)
        .await
        .err()
        .expect("a wrong token is refused even when anonymous is allowed");
    assert_eq!(refused.status, 401);
    let (_, body) = open.api_push(r#"{"all":true,"message":"hi"}"#).await;
    assert_eq!(body["delivered"], 2);
    assert_eq!(browser.recv_json().await, json!("hi"));
    open.stop().await;
}
