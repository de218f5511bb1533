//! Pusher signatures checked by `scenecast::pusher::sign` against what the real SDKs
//! produce: the Node SDK's channel authorization and user authentication, and HTTP
//! API requests as the Node and Python SDKs send them (captured off a real socket).
//! The PHP SDK is not covered: it installs through Composer/Packagist, which this
//! project's machines cannot reach.

use std::time::{SystemTime, UNIX_EPOCH};

use scenecast::pusher::sign::{
    ApiAuthError, ApiRequest, AuthError, check_api_request, check_channel_auth, check_user_auth,
};
use serde_json::{Value, json};

use crate::common::capture::{Captured, HttpCapture};
use crate::common::clients;

const KEY: &str = "app-key";
const SECRET: &str = "app-secret-0123";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sdk_args(port: u16, ops: Value) -> Value {
    json!({"appId": "77", "key": KEY, "secret": SECRET, "host": "127.0.0.1", "port": port, "ops": ops})
}

fn result(line: &Value) -> &Value {
    assert!(line.get("error").is_none(), "SDK error: {line}");
    &line["result"]
}

#[tokio::test]
async fn node_sdk_channel_and_user_auth_are_accepted_and_tampering_refused() {
    let presence = json!({"user_id": "7", "user_info": {"name": "Ann"}});
    let user = json!({"id": "7", "name": "Ann"});
    let lines = clients::node(
        "sdk.js",
        &sdk_args(1, json!([
            {"op": "authorizeChannel", "socketId": "123.456", "channel": "private-orders"},
            {"op": "authorizeChannel", "socketId": "123.456", "channel": "presence-room", "presence": presence},
            {"op": "authenticateUser", "socketId": "123.456", "user": user},
        ])),
    )
    .await;
    assert_eq!(lines.len(), 3, "{lines:?}");

    let private = result(&lines[0])["auth"].as_str().unwrap();
    let check = |socket: &str, channel: &str, data: Option<&str>, auth: &str| {
        check_channel_auth(KEY, SECRET, socket, channel, data, Some(auth))
    };
    assert_eq!(check("123.456", "private-orders", None, private), Ok(()));
    assert_eq!(
        check("123.457", "private-orders", None, private),
        Err(AuthError::BadSignature)
    );
    assert_eq!(
        check("123.456", "private-order", None, private),
        Err(AuthError::BadSignature)
    );
    let flipped = flip_last(private);
    assert_eq!(
        check("123.456", "private-orders", None, &flipped),
        Err(AuthError::BadSignature)
    );
    let other_key = private.replacen(KEY, "other-key", 1);
    assert_eq!(
        check("123.456", "private-orders", None, &other_key),
        Err(AuthError::WrongKey)
    );
    assert_eq!(
        check_channel_auth(
            "app-key",
            "other-secret",
            "123.456",
            "private-orders",
            None,
            Some(private)
        ),
        Err(AuthError::BadSignature)
    );

    let presence = result(&lines[1]);
    let (auth, data) = (
        presence["auth"].as_str().unwrap(),
        presence["channel_data"].as_str().unwrap(),
    );
    assert_eq!(check("123.456", "presence-room", Some(data), auth), Ok(()));
    let other_data = data.replace("Ann", "Bob");
    assert_eq!(
        check("123.456", "presence-room", Some(&other_data), auth),
        Err(AuthError::BadSignature)
    );
    assert_eq!(
        check("123.456", "presence-room", None, auth),
        Err(AuthError::BadSignature)
    );

    let signin = result(&lines[2]);
    let (auth, user_data) = (
        signin["auth"].as_str().unwrap(),
        signin["user_data"].as_str().unwrap(),
    );
    assert_eq!(
        check_user_auth(KEY, SECRET, "123.456", user_data, Some(auth)),
        Ok(())
    );
    assert_eq!(
        check_user_auth(KEY, SECRET, "123.999", user_data, Some(auth)),
        Err(AuthError::BadSignature)
    );
    let other_user = user_data.replace("\"7\"", "\"8\"");
    assert_eq!(
        check_user_auth(KEY, SECRET, "123.456", &other_user, Some(auth)),
        Err(AuthError::BadSignature)
    );
}

fn flip_last(text: &str) -> String {
    let mut text = text.to_string();
    let last = text.pop().unwrap();
    text.push(if last == '0' { '1' } else { '0' });
    text
}

fn verify(request: &Captured, now: u64) -> Result<(), ApiAuthError> {
    let request = ApiRequest {
        method: &request.method,
        path: &request.path,
        query: &request.query,
        body: &request.body,
    };
    check_api_request(KEY, SECRET, request, now).map(|_| ())
}

/// Every tampering of a real request is refused with the documented error.
fn assert_tampering_refused(request: &Captured) {
    let now = now();
    assert_eq!(verify(request, now), Ok(()), "{request:?}");
    // The window is 600 s either way from the request's own auth_timestamp (the SDK's
    // clock may round differently from ours, so not from `now`).
    let stamp: u64 = request
        .query
        .split('&')
        .find_map(|p| p.strip_prefix("auth_timestamp="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(stamp.abs_diff(now) <= 2, "SDK timestamp {stamp}, now {now}");
    assert_eq!(verify(request, stamp + 600), Ok(()));
    assert_eq!(verify(request, stamp - 600), Ok(()));
    assert_eq!(verify(request, stamp + 601), Err(ApiAuthError::Stale));
    assert_eq!(verify(request, stamp - 601), Err(ApiAuthError::Stale));
    let signature = request
        .query
        .split('&')
        .find(|p| p.starts_with("auth_signature="))
        .unwrap();
    let bad = Captured {
        query: request.query.replace(signature, &flip_last(signature)),
        ..request.clone()
    };
    assert_eq!(verify(&bad, now), Err(ApiAuthError::BadSignature));
    let other_path = Captured {
        path: request.path.replace("/apps/77", "/apps/78"),
        ..request.clone()
    };
    assert_eq!(verify(&other_path, now), Err(ApiAuthError::BadSignature));
    let other_method = Captured {
        method: "PUT".into(),
        ..request.clone()
    };
    assert_eq!(verify(&other_method, now), Err(ApiAuthError::BadSignature));
    // A shifted timestamp inside the window is still a changed signed parameter.
    let stamp = request
        .query
        .split('&')
        .find(|p| p.starts_with("auth_timestamp="))
        .unwrap();
    let shifted = format!("auth_timestamp={}", now - 5);
    let bad = Captured {
        query: request.query.replace(stamp, &shifted),
        ..request.clone()
    };
    assert_eq!(verify(&bad, now), Err(ApiAuthError::BadSignature));
    if !request.body.is_empty() {
        let mut body = request.body.clone();
        body.push(b' ');
        let bad = Captured {
            body,
            ..request.clone()
        };
        assert_eq!(verify(&bad, now), Err(ApiAuthError::BodyMd5));
    }
    let unsigned = request
        .query
        .split('&')
        .filter(|p| !p.starts_with("auth_signature="))
        .collect::<Vec<_>>()
        .join("&");
    let bad = Captured {
        query: unsigned,
        ..request.clone()
    };
    assert_eq!(
        verify(&bad, now),
        Err(ApiAuthError::Missing("auth_signature"))
    );
}

#[tokio::test]
async fn node_sdk_http_api_requests_verify_and_tampering_is_refused() {
    let mut capture = HttpCapture::start(vec![]).await;
    let lines = clients::node(
        "sdk.js",
        &sdk_args(capture.addr.port(), json!([
            {"op": "trigger", "channels": ["orders", "presence-room"], "event": "order.paid",
             "data": {"id": 5, "note": "a b,c&d=é"}, "params": {"socket_id": "1.2", "info": "user_count,subscription_count"}},
            {"op": "triggerBatch", "batch": [{"channel": "orders", "name": "e", "data": "x"}]},
            {"op": "get", "path": "/channels", "params": {"filter_by_prefix": "presence-", "info": "user_count"}},
            {"op": "terminateUserConnections", "userId": "7"},
        ])),
    )
    .await;
    for line in &lines {
        assert_eq!(result(line)["status"], 200, "{line}");
    }
    let trigger = capture.next().await;
    assert_eq!(
        (trigger.method.as_str(), trigger.path.as_str()),
        ("POST", "/apps/77/events")
    );
    assert!(trigger.query.contains("body_md5="), "{}", trigger.query);
    assert_tampering_refused(&trigger);
    let batch = capture.next().await;
    assert_eq!(batch.path, "/apps/77/batch_events");
    assert_tampering_refused(&batch);
    let get = capture.next().await;
    assert_eq!(
        (get.method.as_str(), get.path.as_str()),
        ("GET", "/apps/77/channels")
    );
    let params = check_api_request(
        KEY,
        SECRET,
        ApiRequest {
            method: &get.method,
            path: &get.path,
            query: &get.query,
            body: &get.body,
        },
        now(),
    )
    .unwrap();
    assert_eq!(params.get("filter_by_prefix"), Some("presence-"));
    assert_eq!(params.get("info"), Some("user_count"));
    assert_tampering_refused(&get);
    let terminate = capture.next().await;
    assert_eq!(terminate.path, "/apps/77/users/7/terminate_connections");
    assert_tampering_refused(&terminate);
}

#[tokio::test]
async fn python_sdk_http_api_requests_verify_including_body_md5_on_get() {
    let mut capture = HttpCapture::start(vec![]).await;
    let lines = clients::python(
        "sdk.py",
        &sdk_args(capture.addr.port(), json!([
            {"op": "trigger", "channels": ["orders"], "event": "order.paid", "data": {"id": 5}, "socket_id": "1.2"},
            {"op": "channels_info", "prefix_filter": "presence-", "attributes": ["user_count"]},
            {"op": "channel_info", "channel": "presence-room", "info": ["user_count", "subscription_count"]},
            {"op": "users_info", "channel": "presence-room"},
        ])),
    )
    .await;
    for line in &lines {
        assert!(line.get("error").is_none(), "{line}");
    }
    let trigger = capture.next().await;
    assert_eq!(trigger.path, "/apps/77/events");
    assert_tampering_refused(&trigger);
    for path in [
        "/apps/77/channels",
        "/apps/77/channels/presence-room",
        "/apps/77/channels/presence-room/users",
    ] {
        let get = capture.next().await;
        assert_eq!((get.method.as_str(), get.path.as_str()), ("GET", path));
        assert!(get.body.is_empty());
        // The Python SDK signs body_md5 (of the empty body) on GETs too: accepted,
        // and checked — a wrong one is refused.
        let md5 = get
            .query
            .split('&')
            .find(|p| p.starts_with("body_md5="))
            .expect("body_md5 on GET");
        assert_tampering_refused(&get);
        let bad = Captured {
            query: get
                .query
                .replace(md5, "body_md5=00000000000000000000000000000000"),
            ..get.clone()
        };
        assert_eq!(verify(&bad, now()), Err(ApiAuthError::BodyMd5));
    }
}
