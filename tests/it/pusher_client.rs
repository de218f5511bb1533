//! pusher-js 8.6 itself (tests/clients/pusher-js.js under Node) against a minimal
//! WebSocket server made of `scenecast::pusher::protocol` frames and
//! `scenecast::pusher::sign` checks: the handshake pusher-js accepts, the frames it
//! sends (subscribe with auth and channel_data, client events, sign-in) as our parser
//! reads them, the SDK's signatures as our checks accept them, and what pusher-js does
//! on a 4301 error (stays connected) and a 4200 close (reconnects at once); and
//! laravel-echo 2.5 on top of it (tests/clients/echo.mjs): listen, private, join.

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use scenecast::pusher::protocol::{self, ClientFrame, Presence, PusherCode};
use scenecast::pusher::sign::{check_channel_auth, check_user_auth};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::common::WAIT;
use crate::common::clients::Script;

const KEY: &str = "js-key";
const SECRET: &str = "js-secret";

type Ws = WebSocketStream<TcpStream>;

/// Accepts one WebSocket and returns it with the request's path and query.
// tungstenite's callback signature returns its large `ErrorResponse`: not ours to shrink.
#[allow(clippy::result_large_err)]
async fn accept(listener: &TcpListener) -> (Ws, String) {
    let (socket, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("no connection")
        .unwrap();
    let mut uri = String::new();
    let ws =
        tokio_tungstenite::accept_hdr_async(socket, |request: &Request, response: Response| {
            uri = request.uri().to_string();
            Ok(response)
        })
        .await
        .unwrap();
    (ws, uri)
}

/// The next text frame, parsed by our protocol parser (pings skipped).
async fn next_frame(ws: &mut Ws) -> ClientFrame {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            let frame = protocol::parse(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            if frame != ClientFrame::Ping {
                return frame;
            }
        }
    }
}

async fn send(ws: &mut Ws, text: String) {
    ws.send(Message::text(text)).await.unwrap();
}

fn is(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |line| line["type"] == kind
}

fn event(name: &'static str) -> impl Fn(&Value) -> bool {
    move |line| line["type"] == "event" && line["event"] == name
}

#[tokio::test]
async fn pusher_js_speaks_our_frames_and_signatures() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let presence = json!({"user_id": "7", "user_info": {"name": "Ann"}});
    let mut js = Script::node(
        "pusher-js.js",
        &json!({"key": KEY, "host": "127.0.0.1", "port": port, "secret": SECRET,
                "presence": presence, "user": {"id": "7", "name": "Ann"}}),
    );

    // Handshake: pusher-js connects to /app/{key} with protocol 7 and takes our socket_id.
    let (mut ws, uri) = accept(&listener).await;
    assert!(uri.starts_with(&format!("/app/{KEY}?protocol=7")), "{uri}");
    send(&mut ws, protocol::connection_established("12.34", 30)).await;
    assert_eq!(
        js.next_where("connected", is("connected")).await["socket_id"],
        "12.34"
    );

    // Private channel: the subscribe frame carries an auth our check accepts.
    js.send(&json!({"cmd": "subscribe", "channel": "private-orders"}))
        .await;
    let ClientFrame::Subscribe {
        channel,
        auth,
        channel_data,
    } = next_frame(&mut ws).await
    else {
        panic!("expected a subscribe")
    };
    assert_eq!((channel.as_str(), channel_data), ("private-orders", None));
    assert_eq!(
        check_channel_auth(KEY, SECRET, "12.34", &channel, None, auth.as_deref()),
        Ok(())
    );
    assert!(check_channel_auth(KEY, SECRET, "12.35", &channel, None, auth.as_deref()).is_err());
    send(&mut ws, protocol::subscription_succeeded(&channel, None)).await;
    js.next_where("subscribed", event("pusher:subscription_succeeded"))
        .await;
    send(
        &mut ws,
        protocol::channel_event("order.paid", "private-orders", r#"{"id":5}"#),
    )
    .await;
    let paid = js.next_where("order.paid", event("order.paid")).await;
    assert_eq!(
        (paid["channel"].clone(), paid["data"].clone()),
        (json!("private-orders"), json!({"id": 5}))
    );

    // A client event as pusher-js sends it.
    js.send(&json!({"cmd": "trigger", "channel": "private-orders", "event": "client-typing", "data": {"on": true}})).await;
    assert_eq!(
        js.next_where("triggered", is("triggered")).await["ok"],
        true
    );
    let ClientFrame::ClientEvent {
        event: name,
        channel,
        data,
    } = next_frame(&mut ws).await
    else {
        panic!("expected a client event")
    };
    assert_eq!(
        (name.as_str(), channel.as_str(), data.get()),
        ("client-typing", "private-orders", r#"{"on":true}"#)
    );

    // Presence: channel_data is signed; our member list becomes pusher-js's members.
    js.send(&json!({"cmd": "subscribe", "channel": "presence-room"}))
        .await;
    let ClientFrame::Subscribe {
        channel,
        auth,
        channel_data,
    } = next_frame(&mut ws).await
    else {
        panic!("expected a subscribe")
    };
    let data = channel_data.expect("channel_data");
    assert_eq!(
        check_channel_auth(KEY, SECRET, "12.34", &channel, Some(&data), auth.as_deref()),
        Ok(())
    );
    let info = RawValue::from_string(r#"{"name":"Ann"}"#.into()).unwrap();
    let other = RawValue::from_string(r#"{"name":"Bob"}"#.into()).unwrap();
    let members = Presence {
        members: vec![("7", &info), ("8", &other)],
    };
    send(
        &mut ws,
        protocol::subscription_succeeded(&channel, Some(&members)),
    )
    .await;
    js.next_where(
        "presence subscribed",
        event("pusher:subscription_succeeded"),
    )
    .await;
    send(&mut ws, protocol::member_added(&channel, "9", &other)).await;
    let added = js
        .next_where("member_added", event("pusher:member_added"))
        .await;
    assert_eq!(added["data"], json!({"id": "9", "info": {"name": "Bob"}}));
    send(&mut ws, protocol::member_removed(&channel, "8")).await;
    js.next_where("member_removed", event("pusher:member_removed"))
        .await;
    js.send(&json!({"cmd": "members", "channel": "presence-room"}))
        .await;
    let list = js.next_where("members", is("members")).await;
    assert_eq!(list["count"], 2);
    assert_eq!(list["me"], json!({"id": "7", "info": {"name": "Ann"}}));

    // Sign-in: the user_data signature passes; signin_success completes pusher-js's sign-in.
    js.send(&json!({"cmd": "signin"})).await;
    let ClientFrame::Signin { user_data, auth } = next_frame(&mut ws).await else {
        panic!("expected a signin")
    };
    assert_eq!(
        check_user_auth(KEY, SECRET, "12.34", &user_data, Some(&auth)),
        Ok(())
    );
    send(&mut ws, protocol::signin_success(&user_data)).await;
    let signed = js.next_where("signed in", is("signed_in")).await;
    assert_eq!(signed["user_data"]["id"], "7");
    // pusher-js then subscribes to its own #server-to-user channel.
    let ClientFrame::Subscribe { channel, .. } = next_frame(&mut ws).await else {
        panic!("expected the server-to-user subscribe")
    };
    assert_eq!(channel, "#server-to-user-7");

    // 4301 as a pusher:error: reported, the connection stays (a marker event still arrives).
    send(
        &mut ws,
        protocol::error(
            "Client event rejected",
            Some(PusherCode::ClientEventRejected),
        ),
    )
    .await;
    let error = js.next_where("4301", is("connection_error")).await;
    assert_eq!(error["error"]["code"], 4301);
    send(
        &mut ws,
        protocol::channel_event("marker", "private-orders", "1"),
    )
    .await;
    js.next_where("marker", event("marker")).await;

    // 4200 close: pusher-js reconnects at once (no 1 s back-off) and resubscribes.
    let closed = Instant::now();
    ws.close(Some(CloseFrame {
        code: CloseCode::from(PusherCode::Restart.code()),
        reason: "restart".into(),
    }))
    .await
    .unwrap();
    let (mut ws, _) = accept(&listener).await;
    let took = closed.elapsed();
    assert!(
        took < Duration::from_millis(900),
        "reconnected after {took:?}"
    );
    send(&mut ws, protocol::connection_established("12.35", 30)).await;
    assert_eq!(
        js.next_where("reconnected", is("connected")).await["socket_id"],
        "12.35"
    );
    // It resubscribes each channel with an auth for the new socket id (and signs in
    // again); the order of those frames is pusher-js's.
    let mut resubscribed = Vec::new();
    while resubscribed.len() < 2 {
        match next_frame(&mut ws).await {
            ClientFrame::Subscribe {
                channel,
                auth,
                channel_data,
            } if !channel.starts_with('#') => {
                let data = channel_data.as_deref();
                assert_eq!(
                    check_channel_auth(KEY, SECRET, "12.35", &channel, data, auth.as_deref()),
                    Ok(())
                );
                resubscribed.push(channel);
            }
            ClientFrame::Signin { user_data, auth } => {
                assert_eq!(
                    check_user_auth(KEY, SECRET, "12.35", &user_data, Some(&auth)),
                    Ok(())
                );
            }
            other => panic!("unexpected after reconnect: {other:?}"),
        }
    }
    resubscribed.sort();
    assert_eq!(resubscribed, ["presence-room", "private-orders"]);
    js.send(&json!({"cmd": "exit"})).await;
}

#[tokio::test]
async fn laravel_echo_listens_authorizes_and_joins_with_our_frames() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let presence = json!({"user_id": "7", "user_info": {"name": "Ann"}});
    let mut echo = Script::node(
        "echo.mjs",
        &json!({"key": KEY, "host": "127.0.0.1", "port": port, "secret": SECRET, "presence": presence}),
    );
    let (mut ws, uri) = accept(&listener).await;
    assert!(uri.starts_with(&format!("/app/{KEY}?protocol=7")), "{uri}");
    send(&mut ws, protocol::connection_established("5.6", 30)).await;
    assert_eq!(
        echo.next_where("connected", is("connected")).await["socket_id"],
        "5.6"
    );

    // Echo.channel('orders').listen('.order.paid'): a public subscribe, then the event.
    echo.send(&json!({"cmd": "channel", "channel": "orders", "event": ".order.paid"}))
        .await;
    let ClientFrame::Subscribe { channel, auth, .. } = next_frame(&mut ws).await else {
        panic!("expected a subscribe")
    };
    assert_eq!((channel.as_str(), auth), ("orders", None));
    send(&mut ws, protocol::subscription_succeeded("orders", None)).await;
    echo.next_where("subscribed", is("subscribed")).await;
    send(
        &mut ws,
        protocol::channel_event("order.paid", "orders", r#"{"order":{"id":5}}"#),
    )
    .await;
    let heard = echo.next_where("listen", is("listen")).await;
    assert_eq!(heard["data"], json!({"order": {"id": 5}}));

    // Echo.private('orders') subscribes private-orders with an auth we accept.
    echo.send(&json!({"cmd": "private", "channel": "orders", "event": ".shipped"}))
        .await;
    let ClientFrame::Subscribe { channel, auth, .. } = next_frame(&mut ws).await else {
        panic!("expected a subscribe")
    };
    assert_eq!(channel, "private-orders");
    assert_eq!(
        check_channel_auth(KEY, SECRET, "5.6", &channel, None, auth.as_deref()),
        Ok(())
    );
    // A refused subscription reaches Echo's .error().
    echo.send(&json!({"cmd": "private", "channel": "secret"}))
        .await;
    let ClientFrame::Subscribe { channel, .. } = next_frame(&mut ws).await else {
        panic!("expected a subscribe")
    };
    send(
        &mut ws,
        protocol::subscription_error(&channel, "AuthError", "invalid signature", 401),
    )
    .await;
    let refused = echo.next_where("error", is("error")).await;
    assert_eq!(refused["channel"], "secret");
    assert_eq!(refused["error"]["status"], 401);

    // Echo.join('room'): here() lists our members, joining()/leaving() follow.
    echo.send(&json!({"cmd": "join", "channel": "room"})).await;
    let ClientFrame::Subscribe {
        channel,
        auth,
        channel_data,
    } = next_frame(&mut ws).await
    else {
        panic!("expected a subscribe")
    };
    assert_eq!(channel, "presence-room");
    let data = channel_data.expect("channel_data");
    assert_eq!(
        check_channel_auth(KEY, SECRET, "5.6", &channel, Some(&data), auth.as_deref()),
        Ok(())
    );
    let ann = RawValue::from_string(r#"{"name":"Ann"}"#.into()).unwrap();
    let bob = RawValue::from_string(r#"{"name":"Bob"}"#.into()).unwrap();
    let members = Presence {
        members: vec![("7", &ann), ("8", &bob)],
    };
    send(
        &mut ws,
        protocol::subscription_succeeded(&channel, Some(&members)),
    )
    .await;
    let here = echo.next_where("here", is("here")).await;
    assert_eq!(here["members"], json!([{"name": "Ann"}, {"name": "Bob"}]));
    send(&mut ws, protocol::member_added(&channel, "9", &bob)).await;
    assert_eq!(
        echo.next_where("joining", is("joining")).await["member"],
        json!({"name": "Bob"})
    );
    send(&mut ws, protocol::member_removed(&channel, "8")).await;
    assert_eq!(
        echo.next_where("leaving", is("leaving")).await["member"],
        json!({"name": "Bob"})
    );
    echo.send(&json!({"cmd": "exit"})).await;
}
