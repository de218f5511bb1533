//! The WebSocket protocol as the gateway speaks it on the bare socket: frames are
//! written by hand here (masked, fragmented, broken) so that every branch a browser
//! or a buggy client can reach is exercised against the real server.

use serde_json::json;

use crate::common::ws::client_frame;
use crate::common::{CLIENT_TOKEN, SilentClient, TestServer, WsClient, eventually};

const TEXT: u8 = 0x1;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

fn home_path() -> String {
    format!("/?page=home&token={CLIENT_TOKEN}")
}

fn pong_text() -> Option<(u8, Vec<u8>)> {
    Some((TEXT, br#"{"type":"pong"}"#.to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_frames_close_with_1002_and_bad_text_with_1007() {
    let server = TestServer::start(|_| {}).await;
    let mut bystander = WsClient::connect(&server.ws_url(&home_path())).await;

    // Clients must mask their frames (RFC 6455 §5.1).
    let mut unmasked = SilentClient::connect(server.addr, &home_path()).await;
    unmasked
        .send_raw(&client_frame(true, TEXT, b"heartbeat", false))
        .await;
    let (code, _, _) = unmasked.expect_close().await;
    assert_eq!(code, 1002);
    assert!(
        unmasked.next_frame().await.is_none(),
        "the server ends the socket after its close frame"
    );

    let mut not_utf8 = SilentClient::connect(server.addr, &home_path()).await;
    not_utf8
        .send_raw(&client_frame(true, TEXT, &[b'o', b'k', 0xff, 0xfe], true))
        .await;
    let (code, reason, _) = not_utf8.expect_close().await;
    assert_eq!((code, reason.as_str()), (1007, "text frame is not UTF-8"));

    assert_eq!(server.rejected("protocol").await, 1);
    assert_eq!(server.rejected("not_utf8").await, 1);
    eventually("closed connections forgotten", || async {
        (server.connections("page=home").await == 1).then_some(())
    })
    .await;
    let (_, body) = server.trigger("pushHomeLogic", "").await;
    assert_eq!(body["delivered"], 1);
    assert_eq!(bystander.recv_json().await["code"], 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_messages_are_put_together_within_the_limit() {
    let server = TestServer::start(|s| s.server.max_message_bytes = 1024).await;
    let mut client = SilentClient::connect(server.addr, &home_path()).await;

    // "heart" + "beat" in two fragments, with a ping between them: control frames
    // may come in the middle of a fragmented message and are answered at once.
    let frames = [
        client_frame(false, TEXT, b"heart", true),
        client_frame(true, PING, b"p", true),
        client_frame(true, CONTINUATION, b"beat", true),
    ]
    .concat();
    client.send_raw(&frames).await;
    assert_eq!(client.next_frame().await, Some((PONG, b"p".to_vec())));
    assert_eq!(client.next_frame().await, pong_text());

    // Each fragment is under the limit, the message is not.
    client
        .send_raw(&client_frame(false, TEXT, &[b'x'; 800], true))
        .await;
    client
        .send_raw(&client_frame(true, CONTINUATION, &[b'x'; 800], true))
        .await;
    let (code, reason, _) = client.expect_close().await;
    assert_eq!((code, reason.as_str()), (1009, "message too big"));
    server.stop().await;
}

/// The first bytes of `frame`: its header up to the mask, without the payload.
fn header_only(frame: &[u8]) -> &[u8] {
    let header = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    &frame[..header + 4]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_announcing_too_much_is_closed_at_its_header() {
    let server = TestServer::start(|s| s.server.max_message_bytes = 1024).await;
    let mut bystander = WsClient::connect(&server.ws_url(&home_path())).await;

    // The issue's frame: a text header announcing 32 MiB, then its mask, and not
    // one byte of payload. The 1009 must come anyway: the server did not wait for
    // (nor buffer) the 32 MiB.
    let mut huge = SilentClient::connect(server.addr, &home_path()).await;
    huge.send_raw(&[0x81, 0xFF, 0, 0, 0, 0, 2, 0, 0, 0, 0x37, 0xfa, 0x21, 0x3d])
        .await;
    let (code, reason, _) = huge.expect_close().await;
    assert_eq!((code, reason.as_str()), (1009, "message too big"));

    // A binary frame just over the limit, by its header alone.
    let mut binary = SilentClient::connect(server.addr, &home_path()).await;
    binary
        .send_raw(header_only(&client_frame(true, 0x2, &[0; 1025], true)))
        .await;
    assert_eq!(binary.expect_close().await.0, 1009);

    // A continuation that would take the message past the limit: refused at its
    // header, its payload never sent.
    let mut fragments = SilentClient::connect(server.addr, &home_path()).await;
    fragments
        .send_raw(&client_frame(false, TEXT, &[b'x'; 800], true))
        .await;
    fragments
        .send_raw(header_only(&client_frame(
            false,
            CONTINUATION,
            &[b'x'; 300],
            true,
        )))
        .await;
    assert_eq!(fragments.expect_close().await.0, 1009);

    // A control frame over 125 bytes (RFC 6455 §5.5) breaks the protocol: 1002,
    // also from its header alone.
    let mut ping = SilentClient::connect(server.addr, &home_path()).await;
    ping.send_raw(header_only(&client_frame(true, PING, &[0; 126], true)))
        .await;
    assert_eq!(ping.expect_close().await.0, 1002);

    assert_eq!(server.rejected("too_big").await, 3);
    eventually("closed connections forgotten", || async {
        (server.connections("page=home").await == 1).then_some(())
    })
    .await;
    let (_, body) = server.trigger("pushHomeLogic", "").await;
    assert_eq!(body["delivered"], 1);
    assert_eq!(bystander.recv_json().await["code"], 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_with_the_upgrade_request_is_read() {
    let server = TestServer::start(|_| {}).await;
    // Bytes that arrive with the request are in actix's read buffer when the
    // socket is handed over; they must not be lost.
    let early = client_frame(true, TEXT, b"heartbeat", true);
    let mut client = SilentClient::connect_sending(server.addr, &home_path(), &early).await;
    assert_eq!(client.next_frame().await, pong_text());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_echoed_and_the_connection_forgotten() {
    let server = TestServer::start(|_| {}).await;
    let mut client = SilentClient::connect(server.addr, &home_path()).await;
    assert_eq!(server.connections("page=home").await, 1);
    let mut payload = 4321u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    client
        .send_raw(&client_frame(true, CLOSE, &payload, true))
        .await;
    assert_eq!(client.next_frame().await, Some((CLOSE, payload)));
    assert!(client.next_frame().await.is_none(), "then the socket ends");
    eventually("closed connection forgotten", || async {
        (server.connections("page=home").await == 0).then_some(())
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_only_on_the_websocket_paths() {
    let server = TestServer::start(|_| {}).await;
    let refused = WsClient::try_connect(
        &server.ws_url(&format!("/api/stats?page=home&token={CLIENT_TOKEN}")),
        None,
    )
    .await
    .err()
    .expect("no WebSocket on /api/stats");
    assert_eq!(refused.status, 404);
    assert_eq!(refused.body["code"], json!(404));
    assert!(
        refused.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("/ws")),
        "{}",
        refused.body
    );
    // A plain GET on /ws says what the endpoint is for.
    let (status, body) = server.get_json("/ws").await;
    assert_eq!((status, body["code"].clone()), (400, json!(400)));
    server.stop().await;
}
