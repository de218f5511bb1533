//! The server frames of `scenecast::pusher::protocol` as pusher-js itself decodes
//! them: tests/clients/protocol.js runs pusher-js's own `Protocol.decodeMessage`,
//! `processHandshake` and `getCloseAction` (cut from its Node bundle) on our bytes.

use scenecast::pusher::protocol::{self, Presence, PusherCode};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::common::clients;

#[tokio::test]
async fn pusher_js_decodes_every_server_frame_as_intended() {
    let info = RawValue::from_string(r#"{"name":"Ann","tags":["a"]}"#.into()).unwrap();
    let other = RawValue::from_string("null".into()).unwrap();
    let presence = Presence {
        members: vec![("7", &info), ("8", &other)],
    };
    let data = RawValue::from_string(r#"{"typing":true}"#.into()).unwrap();
    let frames = [
        protocol::connection_established("12.345", 30),
        protocol::pong(),
        protocol::error("App key does not exist", Some(PusherCode::AppNotFound)),
        protocol::subscription_succeeded("orders", None),
        protocol::subscription_succeeded("presence-room", Some(&presence)),
        protocol::member_added("presence-room", "9", &info),
        protocol::member_removed("presence-room", "9"),
        protocol::channel_event("order.paid", "orders", r#"{"id":5,"note":"é \" \n"}"#),
        // A native push's payload that is not JSON reaches pusher-js as the string.
        protocol::channel_event("scenecast.push", "home", "hello \"world\""),
        protocol::client_event("client-typing", "presence-room", &data, Some("7")),
        protocol::subscription_error("private-x", "AuthError", "invalid signature", 401),
        protocol::cache_miss("cache-x"),
        protocol::signin_success(r#"{"id":"7"}"#),
        protocol::subscription_count("orders", 3),
    ];
    let codes: Vec<u16> = [
        PusherCode::SslOnly,
        PusherCode::AppNotFound,
        PusherCode::AppDisabled,
        PusherCode::OverQuota,
        PusherCode::PathNotFound,
        PusherCode::InvalidVersionFormat,
        PusherCode::UnsupportedProtocol,
        PusherCode::NoProtocol,
        PusherCode::Unauthorized,
        PusherCode::OverCapacity,
        PusherCode::Restart,
        PusherCode::PongTimeout,
        PusherCode::Inactive,
        PusherCode::ClientEventRejected,
    ]
    .iter()
    .map(|c| c.code())
    .collect();
    let lines = clients::node("protocol.js", &json!({"frames": frames, "codes": codes})).await;
    let decoded: Vec<&Value> = lines
        .iter()
        .take(frames.len())
        .map(|l| &l["decoded"])
        .collect();
    let expected = [
        json!({"event": "pusher:connection_established", "data": {"socket_id": "12.345", "activity_timeout": 30}}),
        json!({"event": "pusher:pong", "data": {}}),
        json!({"event": "pusher:error", "data": {"code": 4001, "message": "App key does not exist"}}),
        json!({"event": "pusher_internal:subscription_succeeded", "channel": "orders", "data": {}}),
        json!({"event": "pusher_internal:subscription_succeeded", "channel": "presence-room", "data":
            {"presence": {"ids": ["7", "8"], "hash": {"7": {"name": "Ann", "tags": ["a"]}, "8": null}, "count": 2}}}),
        json!({"event": "pusher_internal:member_added", "channel": "presence-room", "data":
            {"user_id": "9", "user_info": {"name": "Ann", "tags": ["a"]}}}),
        json!({"event": "pusher_internal:member_removed", "channel": "presence-room", "data": {"user_id": "9"}}),
        json!({"event": "order.paid", "channel": "orders", "data": {"id": 5, "note": "é \" \n"}}),
        json!({"event": "scenecast.push", "channel": "home", "data": "hello \"world\""}),
        json!({"event": "client-typing", "channel": "presence-room", "data": {"typing": true}, "user_id": "7"}),
        json!({"event": "pusher:subscription_error", "channel": "private-x", "data":
            {"type": "AuthError", "error": "invalid signature", "status": 401}}),
        json!({"event": "pusher:cache_miss", "channel": "cache-x", "data": {}}),
        json!({"event": "pusher:signin_success", "data": {"user_data": "{\"id\":\"7\"}"}}),
        json!({"event": "pusher_internal:subscription_count", "channel": "orders", "data": {"subscription_count": 3}}),
    ];
    for (i, (got, want)) in decoded.iter().zip(&expected).enumerate() {
        assert_eq!(*got, want, "frame {i}: {}", frames[i]);
    }
    // The handshake pusher-js accepts, and what it makes of a 4001 error frame.
    assert_eq!(
        lines[0]["handshake"],
        json!({"action": "connected", "id": "12.345", "activityTimeout": 30000})
    );
    assert_eq!(lines[2]["handshake"]["action"], "refused");
    let actions: Vec<(u64, &str)> = lines
        .iter()
        .skip(frames.len())
        .map(|l| (l["code"].as_u64().unwrap(), l["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            (4000, "tls_only"),
            (4001, "refused"),
            (4003, "refused"),
            (4004, "refused"),
            (4005, "refused"),
            (4006, "refused"),
            (4007, "refused"),
            (4008, "refused"),
            (4009, "refused"),
            (4100, "backoff"),
            (4200, "retry"),
            (4201, "retry"),
            (4202, "retry"),
            // Why 4301 is sent as a pusher:error and never as a close: pusher-js gives up.
            (4301, "refused"),
        ]
    );
}
