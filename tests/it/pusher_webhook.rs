//! The webhook sender against real local HTTP receivers: batching, the signature as
//! the Node SDK's own `webhook(...).isValid()` checks it, retries after a 500,
//! per-receiver event filters, and a full queue that drops instead of blocking.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use scenecast::pusher::sign::webhook_signature;
use scenecast::pusher::webhook::{WebhookEvent, WebhookOptions, WebhookSender};
use scenecast::pusher::{PusherApp, WebhookTarget};
use serde_json::{Value, json};

use crate::common::capture::{Captured, HttpCapture};
use crate::common::clients;

const KEY: &str = "hook-key";
const SECRET: &str = "hook-secret";

fn app(targets: Vec<(String, Vec<&str>)>) -> PusherApp {
    let webhooks: Vec<WebhookTarget> = targets
        .into_iter()
        .map(|(url, events)| WebhookTarget {
            url,
            events: events.into_iter().map(String::from).collect(),
        })
        .collect();
    let toml = format!("id = \"9\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"");
    let mut app: PusherApp = toml::from_str(&toml).unwrap();
    app.webhooks = webhooks;
    app
}

fn fast() -> WebhookOptions {
    WebhookOptions {
        batch_wait: Duration::from_millis(50),
        backoff: Duration::from_millis(50),
        timeout: Duration::from_secs(2),
        ..WebhookOptions::default()
    }
}

fn events(request: &Captured) -> Vec<Value> {
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert!(
        body["time_ms"].as_u64().unwrap() > 1_600_000_000_000,
        "{body}"
    );
    body["events"].as_array().unwrap().clone()
}

/// What the Node SDK's `pusher.webhook({headers, rawBody}).isValid()` says.
async fn node_sdk_says_valid(request: &Captured, body: &str) -> bool {
    let headers: serde_json::Map<String, Value> = request
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    let lines = clients::node(
        "sdk.js",
        &json!({"appId": "9", "key": KEY, "secret": SECRET,
                "ops": [{"op": "webhook", "headers": headers, "body": body}]}),
    )
    .await;
    lines[0]["result"].as_bool().unwrap()
}

#[tokio::test]
async fn events_are_batched_signed_and_the_node_sdk_verifies_them() {
    let mut receiver = HttpCapture::start(vec![]).await;
    let url = format!("http://{}/pusher/webhook", receiver.addr);
    let sender = WebhookSender::start(&[app(vec![(url, vec![])])], fast()).unwrap();
    assert!(sender.send("9", WebhookEvent::channel_occupied("orders")));
    assert!(sender.send("9", WebhookEvent::member_added("presence-room", "7")));
    assert!(sender.send(
        "9",
        WebhookEvent::client_event("private-a", "client-typing", "{\"x\":1}", "1.2", None)
    ));
    // An unknown app's events are ignored, not sent.
    assert!(sender.send("other", WebhookEvent::channel_vacated("orders")));

    let request = receiver.next().await;
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/pusher/webhook")
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("x-pusher-key"), Some(KEY));
    let body = String::from_utf8(request.body.clone()).unwrap();
    assert_eq!(
        request.header("x-pusher-signature"),
        Some(webhook_signature(SECRET, body.as_bytes()).as_str())
    );
    assert_eq!(
        events(&request),
        vec![
            json!({"name": "channel_occupied", "channel": "orders"}),
            json!({"name": "member_added", "channel": "presence-room", "user_id": "7"}),
            json!({"name": "client_event", "channel": "private-a", "event": "client-typing",
                   "data": "{\"x\":1}", "socket_id": "1.2"}),
        ]
    );
    assert!(
        node_sdk_says_valid(&request, &body).await,
        "the Node SDK refused our signature"
    );
    // The same helper refuses a changed body: the check above can fail.
    assert!(!node_sdk_says_valid(&request, &body.replace("orders", "orderz")).await);
    assert!(
        receiver.quiet(Duration::from_millis(300)).await,
        "the unknown app's event was sent"
    );
}

#[tokio::test]
async fn a_500_is_retried_with_the_same_signed_batch() {
    let mut receiver = HttpCapture::start(vec![(500, "{\"error\":\"busy\"}"), (503, "")]).await;
    let url = format!("http://{}/hook", receiver.addr);
    let sender = WebhookSender::start(&[app(vec![(url, vec![])])], fast()).unwrap();
    sender.send("9", WebhookEvent::channel_vacated("orders"));
    let first = receiver.next().await;
    let second = receiver.next().await;
    let third = receiver.next().await;
    assert_eq!(first.body, second.body);
    assert_eq!(second.body, third.body);
    assert_eq!(
        first.header("x-pusher-signature"),
        third.header("x-pusher-signature")
    );
    crate::common::eventually("delivered after two retries", || async {
        (sender.stats().delivered.load(Ordering::Relaxed) == 1).then_some(())
    })
    .await;
    assert_eq!(sender.stats().retries.load(Ordering::Relaxed), 2);
    assert_eq!(sender.stats().failed.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn attempts_are_bounded_and_a_4xx_is_not_retried() {
    let mut failing = HttpCapture::start(vec![(500, ""), (500, ""), (500, "")]).await;
    let mut refusing = HttpCapture::start(vec![(403, "")]).await;
    let targets = vec![
        (format!("http://{}/a", failing.addr), vec![]),
        (format!("http://{}/b", refusing.addr), vec![]),
    ];
    let options = WebhookOptions {
        attempts: 3,
        ..fast()
    };
    let sender = WebhookSender::start(&[app(targets)], options).unwrap();
    sender.send("9", WebhookEvent::cache_miss("cache-x"));
    for _ in 0..3 {
        failing.next().await;
    }
    refusing.next().await;
    crate::common::eventually("both batches given up", || async {
        (sender.stats().failed.load(Ordering::Relaxed) == 2).then_some(())
    })
    .await;
    assert!(
        failing.quiet(Duration::from_millis(400)).await,
        "a 4th attempt was made"
    );
    assert!(
        refusing.quiet(Duration::from_millis(10)).await,
        "a 403 was retried"
    );
}

#[tokio::test]
async fn each_receiver_gets_only_the_events_it_lists() {
    let mut vacated_only = HttpCapture::start(vec![]).await;
    let mut all = HttpCapture::start(vec![]).await;
    let targets = vec![
        (
            format!("http://{}/v", vacated_only.addr),
            vec!["channel_vacated"],
        ),
        (format!("http://{}/all", all.addr), vec![]),
    ];
    let sender = WebhookSender::start(&[app(targets)], fast()).unwrap();
    sender.send("9", WebhookEvent::channel_occupied("orders"));
    sender.send("9", WebhookEvent::channel_vacated("orders"));
    let names = |request: &Captured| -> Vec<String> {
        events(request)
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    };
    let filtered = vacated_only.next().await;
    assert_eq!(names(&filtered), ["channel_vacated"]);
    // The filtered batch is signed over its own body.
    let body = String::from_utf8(filtered.body.clone()).unwrap();
    assert_eq!(
        filtered.header("x-pusher-signature"),
        Some(webhook_signature(SECRET, body.as_bytes()).as_str())
    );
    assert_eq!(
        names(&all.next().await),
        ["channel_occupied", "channel_vacated"]
    );
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_blocking_the_caller() {
    // A receiver that accepts and never answers: deliveries hang until the timeout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            let _ = accepted_tx.send(());
        }
    });
    let options = WebhookOptions {
        queue: 2,
        batch_max: 1,
        parallel: 1,
        timeout: Duration::from_secs(30),
        ..fast()
    };
    let sender =
        WebhookSender::start(&[app(vec![(format!("http://{addr}/"), vec![])])], options).unwrap();
    // The first batch takes the only delivery slot and hangs.
    assert!(sender.send("9", WebhookEvent::channel_occupied("a")));
    tokio::time::timeout(crate::common::WAIT, accepted.recv())
        .await
        .unwrap();
    // The second is taken off the queue; the batcher then waits for a slot.
    assert!(sender.send("9", WebhookEvent::channel_occupied("b")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let accepted_sends = (0..10)
        .filter(|i| sender.send("9", WebhookEvent::channel_occupied(&format!("c{i}"))))
        .count();
    let took = started.elapsed();
    assert_eq!(accepted_sends, 2, "the queue holds 2");
    assert_eq!(sender.stats().dropped.load(Ordering::Relaxed), 8);
    assert!(took < Duration::from_millis(50), "send waited {took:?}");
}

#[tokio::test]
async fn an_https_receiver_is_spoken_to_in_tls() {
    // A plain TCP listener: the first bytes must be a TLS handshake record (0x16),
    // which the sender then gives up on as a failed attempt (no panic, no plain text).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (first_tx, mut first) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut byte = [0u8; 1];
            if socket.read_exact(&mut byte).await.is_ok() {
                let _ = first_tx.send(byte[0]);
            }
        }
    });
    let options = WebhookOptions {
        attempts: 2,
        ..fast()
    };
    let url = format!("https://{addr}/hook");
    let sender = WebhookSender::start(&[app(vec![(url, vec![])])], options).unwrap();
    sender.send("9", WebhookEvent::channel_occupied("orders"));
    let byte = tokio::time::timeout(crate::common::WAIT, first.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(byte, 0x16, "not a TLS ClientHello");
    crate::common::eventually("the https batch given up", || async {
        (sender.stats().failed.load(Ordering::Relaxed) == 1).then_some(())
    })
    .await;
}
