//! Hostile and odd input at every door (issue 12, cases 1, 2 and 7): a target that
//! is not a name is refused everywhere and reaches nobody; integral numbers are ids;
//! the clients that real back offices and browsers run (.NET with a BOM, PHP's
//! repeated query keys, cache busters, `bearer`, subprotocols) are served.
//!
//! "Nobody got it" is proven by order, not by waiting: after each refused input a
//! marker is pushed to a bystander, and the marker must be the bystander's next frame.

use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use scenecast::config::SceneConfig;

use crate::common::{API_TOKEN, CLIENT_TOKEN, TestServer, TextClient, WsClient, udp_send};

/// Target values every door must refuse, as JSON text, with a label for messages.
fn bad_targets() -> Vec<String> {
    let long = format!("\"{}\"", "x".repeat(129));
    [
        "null",
        "true",
        "false",
        "1.5",
        "[1]",
        "{\"a\":1}",
        "\"\"",
        "\"a\\u0001b\"",
        "\"a\\nb\"",
        "\"a\\u202eb\"",
        long.as_str(),
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

async fn server() -> TestServer {
    TestServer::start(|s| {
        s.ingress.text_bind = "127.0.0.1:0".into();
        s.ingress.udp_bind = "127.0.0.1:0".into();
        s.scenes = Some(vec![
            SceneConfig {
                event: None,
                func: "toPage".into(),
                page: Some("{page}".into()),
                uid: None,
                all: false,
                message: json!({"to": "page {page}", "m": "{m}"}),
            },
            SceneConfig {
                event: None,
                func: "toUser".into(),
                page: None,
                uid: Some("{uid}".into()),
                all: false,
                message: json!({"to": "uid {uid}"}),
            },
        ]);
    })
    .await
}

/// A connected tab, known to be in the hub: the pong to its heartbeat comes from
/// its connection task, which runs once the connection is registered.
async fn client(server: &TestServer, query: &str) -> WsClient {
    let mut client =
        WsClient::connect(&server.ws_url(&format!("/?token={CLIENT_TOKEN}&{query}"))).await;
    sync(&mut client).await;
    client
}

/// Pushes a marker to page home through the API; `bystander` must get it next.
async fn marker_is_next(server: &TestServer, bystander: &mut WsClient, n: usize, after: &str) {
    let (status, body) = server
        .api_push(&json!({"page": "home", "message": {"marker": n}}).to_string())
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        bystander.recv_json().await,
        json!({"marker": n}),
        "something reached the bystander after {after}"
    );
}

/// Sends `heartbeat` and waits for the pong: the frames before it were handled.
async fn sync(client: &mut WsClient) {
    client.send("heartbeat").await;
    assert_eq!(client.recv_json().await, json!({"type": "pong"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_is_not_a_name_is_refused_at_every_door_and_reaches_nobody() {
    let server = server().await;
    // A bystander on page home with uid "1", and one on no page at all: a
    // broadcast would reach both.
    let mut home = client(&server, "page=home&uid=1").await;
    let mut lone = client(&server, "").await;
    let mut text = TextClient::connect(server.text_addr.unwrap()).await;
    let udp = server.udp_addr.unwrap();
    let mut n = 0;

    for value in bad_targets() {
        for field in ["uid", "user_id", "page"] {
            let line = format!(r#"{{"{field}":{value},"secret":"x"}}"#);

            // Text port: `fail`.
            assert_eq!(text.push(&line).await, "fail\n", "text port took {line}");
            n += 1;
            marker_is_next(&server, &mut home, n, &format!("text {line}")).await;

            // UDP: dropped and counted; the marker follows on the same port.
            let before = server.rejected("udp_target").await;
            udp_send(udp, line.as_bytes());
            n += 1;
            udp_send(udp, format!(r#"{{"page":"home","marker":{n}}}"#).as_bytes());
            assert_eq!(
                home.recv_json().await,
                json!({"page": "home", "marker": n}),
                "something reached the bystander after udp {line}"
            );
            assert_eq!(server.rejected("udp_target").await, before + 1, "{line}");

            // Publisher frame: closed with 1007.
            let mut publisher =
                WsClient::connect(&server.ws_url(&format!("/?token={API_TOKEN}"))).await;
            publisher.send(&line).await;
            assert_eq!(
                publisher.expect_close().await.0,
                1007,
                "publisher sent {line}"
            );
            n += 1;
            marker_is_next(&server, &mut home, n, &format!("publisher {line}")).await;
        }
        // API: 400 for page and uid.
        for field in ["uid", "page"] {
            let body = format!(r#"{{"{field}":{value},"message":{{"secret":"x"}}}}"#);
            let (status, reply) = server.api_push(&body).await;
            assert_eq!(status, 400, "API took {body}: {reply}");
            assert!(
                reply["message"].as_str().unwrap().contains(field),
                "{reply}"
            );
        }
        n += 1;
        marker_is_next(&server, &mut home, n, &format!("API {value}")).await;
    }

    // A null next to a valid target is refused too, whichever field routes.
    for line in [r#"{"uid":"1","page":null}"#, r#"{"uid":"1","uid":null}"#] {
        assert_eq!(text.push(line).await, "fail\n", "{line}");
    }
    n += 1;
    marker_is_next(&server, &mut home, n, "a null beside a uid").await;

    // Names from the query: WebSocket connect, GET trigger params, presence.
    let long = "x".repeat(129);
    for bad in ["%01", "a%0Ab", "a%E2%80%AEb", long.as_str()] {
        for field in ["page", "uid", "session"] {
            let refused = WsClient::try_connect(
                &server.ws_url(&format!("/?token={CLIENT_TOKEN}&{field}={bad}")),
                None,
            )
            .await
            .err()
            .unwrap_or_else(|| panic!("connect with {field}={bad} was accepted"));
            assert_eq!(refused.status, 400, "{field}={bad}");
        }
        let (status, _) = server.trigger("toUser", &format!("&uid={bad}")).await;
        assert_eq!(status, 400, "trigger uid={bad}");
        let (status, _) = server.trigger("toPage", &format!("&page={bad}&m=x")).await;
        assert_eq!(status, 400, "trigger page={bad}");
        let (status, _) = server
            .get_json(&format!("/api/presence?uid={bad}&token={API_TOKEN}"))
            .await;
        assert_eq!(status, 400, "presence uid={bad}");
    }
    n += 1;
    marker_is_next(&server, &mut home, n, "the query doors").await;

    // The lone connection (no page) got nothing but what was broadcast: nothing.
    let (status, _) = server
        .api_push(r#"{"all":true,"message":{"everyone":1}}"#)
        .await;
    assert_eq!(status, 200);
    assert_eq!(lone.recv_json().await, json!({"everyone": 1}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integral_numbers_reach_the_tab_bound_by_a_number() {
    let server = server().await;
    // Workerman's `ws.send(1)`: the first frame binds uid "1".
    let mut tab =
        WsClient::connect(&server.ws_url(&format!("/?page=home&token={CLIENT_TOKEN}"))).await;
    tab.send("1").await;
    sync(&mut tab).await;
    let mut text = TextClient::connect(server.text_addr.unwrap()).await;

    for number in ["1", "1.0", "1e0", "1.0E+0", "10e-1"] {
        for field in ["uid", "user_id"] {
            let line = format!(r#"{{"{field}":{number},"via":"text"}}"#);
            assert_eq!(text.push(&line).await, "ok\n", "{line}");
            assert_eq!(tab.recv_text().await, line);

            let line = format!(r#"{{"{field}":{number},"via":"udp"}}"#);
            udp_send(server.udp_addr.unwrap(), line.as_bytes());
            assert_eq!(tab.recv_text().await, line);
        }
        let (status, body) = server
            .api_push(&format!(r#"{{"uid":{number},"message":{{"via":"api"}}}}"#))
            .await;
        assert_eq!(
            (status, body["delivered"].clone()),
            (200, json!(1)),
            "{number}"
        );
        assert_eq!(tab.recv_json().await, json!({"via": "api"}));

        let mut publisher =
            WsClient::connect(&server.ws_url(&format!("/?token={API_TOKEN}"))).await;
        let frame = format!(r#"{{"uid":{number},"via":"publisher"}}"#);
        publisher.send(&frame).await;
        assert_eq!(tab.recv_text().await, frame);
        publisher.close().await;
    }
    assert_eq!(server.connections("uid=1").await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bom_in_front_of_json_is_skipped_at_every_door() {
    let server = server().await;
    let mut home = client(&server, "page=home").await;

    let response = server
        .http
        .post(server.http_url("/api/push"))
        .bearer_auth(API_TOKEN)
        .header("content-type", "application/json")
        .body(b"\xEF\xBB\xBF{\"page\":\"home\",\"message\":{\"via\":\"api\"}}".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(home.recv_json().await, json!({"via": "api"}));

    let mut text = TextClient::connect(server.text_addr.unwrap()).await;
    text.write(b"\xEF\xBB\xBF{\"page\":\"home\",\"via\":\"text\"}\r\n")
        .await;
    assert_eq!(text.reply().await, "ok\n");
    // The frame is the object without the BOM (JSON.parse would choke on it).
    assert_eq!(home.recv_text().await, r#"{"page":"home","via":"text"}"#);

    udp_send(
        server.udp_addr.unwrap(),
        b"\xEF\xBB\xBF{\"page\":\"home\",\"via\":\"udp\"}\n",
    );
    assert_eq!(home.recv_text().await, r#"{"page":"home","via":"udp"}"#);

    let mut publisher = WsClient::connect(&server.ws_url(&format!("/?token={API_TOKEN}"))).await;
    publisher
        .send("\u{FEFF}{\"page\":\"home\",\"via\":\"publisher\"}")
        .await;
    assert_eq!(
        home.recv_text().await,
        r#"{"page":"home","via":"publisher"}"#
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_query_key_means_its_last_value() {
    let server = server().await;
    let mut tab = WsClient::connect(&server.ws_url(&format!(
        "/?page=list&token=wrong&page=home&token={CLIENT_TOKEN}"
    )))
    .await;
    sync(&mut tab).await;
    assert_eq!(server.connections("page=home").await, 1);
    assert_eq!(server.connections("page=list").await, 0);

    let (status, body) = server
        .trigger("toPage", "&page=list&m=first&page=home&m=last")
        .await;
    assert_eq!(
        (status, body["delivered"].clone()),
        (200, json!(1)),
        "{body}"
    );
    assert_eq!(
        tab.recv_json().await,
        json!({"to": "page home", "m": "last"})
    );

    let (status, body) = server
        .get_json(&format!(
            "/api/presence?page=list&page=home&token={API_TOKEN}"
        ))
        .await;
    assert_eq!((status, body["connections"].clone()), (200, json!(1)));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_busters_are_ignored_on_the_read_apis() {
    let server = server().await;
    for path in [
        "/api/presence?page=home&_=1700000000123",
        "/api/stats?_=123",
    ] {
        let (status, body) = server.get_json(&format!("{path}&token={API_TOKEN}")).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let server = server().await;
    let mut home = client(&server, "page=home").await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let response = server
            .http
            .post(server.http_url("/api/push"))
            .header("authorization", format!("{scheme} {API_TOKEN}"))
            .body(r#"{"page":"home","message":1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{scheme}");
        assert_eq!(home.recv_text().await, "1");
        let (status, _) = {
            let response = server
                .http
                .get(server.http_url("/api/stats"))
                .header("authorization", format!("{scheme} {API_TOKEN}"))
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), ())
        };
        assert_eq!(status, 200, "{scheme} on /api/stats");
    }

    // POST /api/push takes no `?token=`, and its 401 does not suggest one.
    let response = server
        .http
        .post(server.http_url(&format!("/api/push?token={API_TOKEN}")))
        .body(r#"{"page":"home","message":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(!message.contains("or ?token="), "{message}");
    assert!(message.contains("Bearer"), "{message}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offered_subprotocol_is_answered_with_the_first_one() {
    let server = server().await;
    let mut request = server
        .ws_url(&format!("/?page=home&token={CLIENT_TOKEN}"))
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "scenecast.v1, chat".parse().unwrap(),
    );
    // tungstenite, like browsers, fails the handshake when none is selected.
    let (_stream, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the handshake selects an offered protocol");
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "scenecast.v1"
    );
    // Without an offer, no protocol is selected (RFC 6455 §4.2.2).
    let request = server
        .ws_url(&format!("/?page=home&token={CLIENT_TOKEN}"))
        .into_client_request()
        .unwrap();
    let (_stream, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert!(response.headers().get("sec-websocket-protocol").is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokenised_line_is_forwarded_byte_exact_without_its_token() {
    let server = TestServer::start(|s| {
        s.ingress.text_bind = "127.0.0.1:0".into();
        s.ingress.text_token = "inner-secret".into();
    })
    .await;
    let mut tab = client(&server, "uid=u1").await;
    let mut text = TextClient::connect(server.text_addr.unwrap()).await;
    for (line, forwarded) in [
        (
            r#"{"z":1, "token":"inner-secret","uid":"u1","big":12345678901234567890123,"e":1e2,"f":1.50}"#,
            r#"{"z":1,"uid":"u1","big":12345678901234567890123,"e":1e2,"f":1.50}"#,
        ),
        (
            r#"{ "token" : "inner-secret" , "uid":"u1", "é":"\u00e9" }"#,
            r#"{ "uid":"u1", "é":"\u00e9" }"#,
        ),
    ] {
        assert_eq!(text.push(line).await, "ok\n", "{line}");
        assert_eq!(tab.recv_text().await, forwarded);
    }
    assert_eq!(server.rejected("text_token").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_forwards_a_message_as_written() {
    let server = server().await;
    let mut tab = client(&server, "page=home").await;
    // Key order, a number's spelling and a big integer are the sender's: the same
    // promise the text port keeps.
    let message = r#"{"z":1, "a":1.50,"big":12345678901234567890123,"e":1e2}"#;
    let body = format!(r#"{{"page":"home","message":{message}}}"#);
    let (status, reply) = server.api_push(&body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(tab.recv_text().await, message);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_frame_that_is_json_but_not_an_object_is_closed_with_1007() {
    let server = server().await;
    let mut bystander = client(&server, "page=home").await;
    for (n, frame) in ["[1,2]", "  {\"page\":\"home\"", "\u{FEFF} [\"home\"]"]
        .into_iter()
        .enumerate()
    {
        let mut publisher =
            WsClient::connect(&server.ws_url(&format!("/?token={API_TOKEN}"))).await;
        publisher.send(frame).await;
        let (code, _) = publisher.expect_close().await;
        assert_eq!(code, 1007, "{frame:?}");
        marker_is_next(&server, &mut bystander, n, frame).await;
    }
    server.stop().await;
}

/// Percent-encoding that is not UTF-8 (Latin-1 from a PHP page) is refused at every
/// query door: made U+FFFD, `M%E4ller` and `M%FCller` would be one user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_value_that_is_not_utf8_is_refused_and_never_merges_two_ids() {
    let server = server().await;
    let mut bystander = client(&server, "page=home").await;
    let connect = WsClient::try_connect(
        &server.ws_url(&format!("/?token={CLIENT_TOKEN}&uid=M%E4ller")),
        None,
    )
    .await;
    match connect {
        Ok(_) => panic!("a non-UTF-8 uid was accepted at connect"),
        Err(refused) => assert_eq!(refused.status, 400, "{:?}", refused.body),
    }
    for (n, query) in ["uid=M%FCller", "uid=%FF", "uid=%C0%AF"]
        .into_iter()
        .enumerate()
    {
        let (status, body) = server.trigger("toUser", &format!("&{query}")).await;
        assert_eq!(status, 400, "trigger {query}: {body}");
        let (status, body) = server
            .get_json(&format!("/api/presence?{query}&token={API_TOKEN}"))
            .await;
        assert_eq!(status, 400, "presence {query}: {body}");
        marker_is_next(&server, &mut bystander, n, query).await;
    }
    server.stop().await;
}
