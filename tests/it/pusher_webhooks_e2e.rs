//! Webhooks caused by real client actions on one real server (embedded state):
//! pusher-js 8.6 clients under Node trigger `client-*` events, subscribe to empty
//! and kept `cache-` channels, occupy and vacate channels; real HTTP receivers get
//! the batches, and every batch is read back with the `pusher` Node SDK's own
//! `webhook({headers, rawBody})` (`isValid()`, `getEvents()`). A receiver with an
//! `events` list gets those events and nothing else. Order comes from markers (a
//! later event that must arrive) and from the graceful stop, which delivers every
//! queued webhook before it returns.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::common::capture::{Captured, HttpCapture};
use crate::common::clients::{self, Script};
use crate::common::server::TestServer;

const APP: &str = "5";
const KEY: &str = "e2e-hook-key";
const SECRET: &str = "e2e-hook-secret";

/// A server whose one app has client events on and these receivers
/// (`(receiver address, events)`, empty events = all).
async fn server(receivers: Vec<(SocketAddr, Vec<&str>)>) -> TestServer {
    let webhooks: Vec<Value> = receivers
        .iter()
        .map(|(addr, events)| json!({"url": format!("http://{addr}/pusher/webhook"), "events": events}))
        .collect();
    let app: scenecast::pusher::PusherApp = serde_json::from_value(json!({
        "id": APP, "key": KEY, "secret": SECRET, "client_events": true, "webhooks": webhooks,
    }))
    .unwrap();
    TestServer::start(|s| s.pusher.apps = vec![app]).await
}

/// A connected pusher-js client (presence user `user`) and its socket id.
async fn js(server: &TestServer, user: &str) -> (Script, String) {
    let mut script = Script::node(
        "pusher-js.js",
        &json!({"key": KEY, "port": server.addr.port(), "secret": SECRET, "appId": APP,
                "presence": {"user_id": user, "user_info": {"name": user}}}),
    );
    let connected = script
        .next_where("connected", |l| l["type"] == "connected")
        .await;
    let socket_id = connected["socket_id"].as_str().unwrap().to_string();
    (script, socket_id)
}

fn event_on(channel: &str, name: &str) -> impl Fn(&Value) -> bool {
    let (channel, name) = (channel.to_string(), name.to_string());
    move |l| l["type"] == "event" && l["channel"] == channel && l["event"] == name
}

async fn subscribe(script: &mut Script, channel: &str) {
    script
        .send(&json!({"cmd": "subscribe", "channel": channel}))
        .await;
    let line = script
        .next_where("subscription result", |l| {
            l["type"] == "event"
                && l["channel"] == channel
                && (l["event"] == "pusher:subscription_succeeded"
                    || l["event"] == "pusher:subscription_error")
        })
        .await;
    assert_eq!(line["event"], "pusher:subscription_succeeded", "{line}");
}

async fn unsubscribe(script: &mut Script, channel: &str) {
    script
        .send(&json!({"cmd": "unsubscribe", "channel": channel}))
        .await;
}

async fn trigger(script: &mut Script, channel: &str, event: &str, data: Value) {
    script
        .send(&json!({"cmd": "trigger", "channel": channel, "event": event, "data": data}))
        .await;
    let line = script
        .next_where("triggered", |l| l["type"] == "triggered")
        .await;
    assert_eq!(line["ok"], true, "pusher-js did not send {event}");
}

/// `"name channel"` of a webhook event.
fn text(event: &Value) -> String {
    format!(
        "{} {}",
        event["name"].as_str().unwrap(),
        event["channel"].as_str().unwrap()
    )
}

/// What one receiver got: the requests and their events in arrival order.
struct Hooks {
    receiver: HttpCapture,
    requests: Vec<Captured>,
    events: Vec<Value>,
}

impl Hooks {
    async fn start() -> Hooks {
        Hooks {
            receiver: HttpCapture::start(vec![]).await,
            requests: Vec::new(),
            events: Vec::new(),
        }
    }

    fn add(&mut self, request: Captured) {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        self.events
            .extend(body["events"].as_array().unwrap().iter().cloned());
        self.requests.push(request);
    }

    /// Takes requests until an event whose text is `wanted` has arrived.
    async fn until(&mut self, wanted: &str) {
        while !self.events.iter().any(|e| text(e) == wanted) {
            let request = self.receiver.next().await;
            self.add(request);
        }
    }

    /// Takes what already arrived (after the server's graceful stop: everything).
    fn drain(&mut self) {
        for request in self.receiver.drain() {
            self.add(request);
        }
    }

    fn count(&self, wanted: &str) -> usize {
        self.events.iter().filter(|e| text(e) == wanted).count()
    }

    /// Every event's text, sorted.
    fn texts(&self) -> Vec<String> {
        let mut texts: Vec<String> = self.events.iter().map(text).collect();
        texts.sort();
        texts
    }

    fn named(&self, name: &str) -> Vec<Value> {
        self.events
            .iter()
            .filter(|e| e["name"] == name)
            .cloned()
            .collect()
    }

    /// Every request as the Node SDK reads it: all must be valid, and the SDK's
    /// `getEvents()` must be the events this test read.
    async fn check_with_node_sdk(&self) {
        assert!(!self.requests.is_empty(), "no webhook arrived");
        let ops: Vec<Value> = self
            .requests
            .iter()
            .map(|r| {
                let headers: serde_json::Map<String, Value> = r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                    .collect();
                json!({"op": "webhookEvents", "headers": headers,
                       "body": String::from_utf8(r.body.clone()).unwrap()})
            })
            .collect();
        let lines = clients::node(
            "sdk.js",
            &json!({"appId": APP, "key": KEY, "secret": SECRET, "ops": ops}),
        )
        .await;
        assert_eq!(lines.len(), self.requests.len());
        let mut sdk_events = Vec::new();
        for line in &lines {
            assert_eq!(
                line["result"]["valid"], true,
                "the Node SDK refused a webhook: {line}"
            );
            sdk_events.extend(line["result"]["events"].as_array().unwrap().iter().cloned());
        }
        assert_eq!(sdk_events, self.events);
    }
}

#[tokio::test]
async fn a_pusher_js_client_event_reaches_the_webhook_with_its_socket_and_user() {
    let mut hooks = Hooks::start().await;
    let server = server(vec![(hooks.receiver.addr, vec![])]).await;
    let (mut ann, ann_socket) = js(&server, "ann").await;
    let (mut bob, _) = js(&server, "bob").await;
    for channel in ["private-chat", "presence-room"] {
        subscribe(&mut ann, channel).await;
        subscribe(&mut bob, channel).await;
    }

    // A client event the server refuses (public channel: 4301) is not reported.
    subscribe(&mut ann, "orders").await;
    trigger(&mut ann, "orders", "client-nope", json!({})).await;
    let refused = ann
        .next_where("pusher:error", |l| l["type"] == "connection_error")
        .await;
    assert_eq!(refused["error"]["code"], 4301, "{refused}");

    trigger(&mut ann, "private-chat", "client-typing", json!({"x": 1})).await;
    let got = bob
        .next_where("client-typing", event_on("private-chat", "client-typing"))
        .await;
    assert_eq!(got["data"], json!({"x": 1}));
    trigger(&mut ann, "presence-room", "client-wave", json!("hi")).await;
    let got = bob
        .next_where("client-wave", event_on("presence-room", "client-wave"))
        .await;
    assert_eq!(
        (&got["data"], &got["user_id"]),
        (&json!("hi"), &json!("ann"))
    );

    hooks.until("client_event private-chat").await;
    hooks.until("client_event presence-room").await;
    let mut client_events = hooks.named("client_event");
    client_events.sort_by_key(|e| e["channel"].as_str().unwrap().to_string());
    assert_eq!(
        client_events,
        [
            json!({"name": "client_event", "channel": "presence-room", "event": "client-wave",
                   "data": "\"hi\"", "socket_id": ann_socket, "user_id": "ann"}),
            json!({"name": "client_event", "channel": "private-chat", "event": "client-typing",
                   "data": "{\"x\":1}", "socket_id": ann_socket}),
        ]
    );

    // Everything queued is delivered by the graceful stop: each relayed client
    // event once (not once per recipient), the refused one not at all.
    drop((ann, bob));
    server.stop().await;
    hooks.drain();
    assert_eq!(
        hooks.texts(),
        [
            "channel_occupied orders",
            "channel_occupied presence-room",
            "channel_occupied private-chat",
            "channel_vacated orders",
            "channel_vacated presence-room",
            "channel_vacated private-chat",
            "client_event presence-room",
            "client_event private-chat",
            "member_added presence-room",
            "member_added presence-room",
            "member_removed presence-room",
            "member_removed presence-room",
        ]
    );
    hooks.check_with_node_sdk().await;
}

#[tokio::test]
async fn occupied_on_the_first_subscriber_vacated_after_the_last() {
    let mut hooks = Hooks::start().await;
    let server = server(vec![(hooks.receiver.addr, vec![])]).await;
    let (mut ann, _) = js(&server, "ann").await;
    let (mut bob, _) = js(&server, "bob").await;

    subscribe(&mut ann, "orders").await;
    subscribe(&mut bob, "orders").await;
    // Ann leaves, bob stays: not vacated. The marker channel's occupied comes after
    // anything ann's unsubscribe caused.
    unsubscribe(&mut ann, "orders").await;
    subscribe(&mut ann, "marker-1").await;
    hooks.until("channel_occupied marker-1").await;
    assert_eq!(hooks.count("channel_occupied orders"), 1);
    assert_eq!(
        hooks.count("channel_vacated orders"),
        0,
        "vacated with a subscriber left"
    );

    // The last subscriber unsubscribes: vacated. Then a new first subscriber:
    // occupied again, and its connection closing vacates again.
    unsubscribe(&mut bob, "orders").await;
    hooks.until("channel_vacated orders").await;
    subscribe(&mut bob, "orders").await;
    drop(bob);
    drop(ann);
    server.stop().await;
    hooks.drain();
    assert_eq!(
        hooks.texts(),
        [
            "channel_occupied marker-1",
            "channel_occupied orders",
            "channel_occupied orders",
            "channel_vacated marker-1",
            "channel_vacated orders",
            "channel_vacated orders",
        ]
    );
    hooks.check_with_node_sdk().await;
}

#[tokio::test]
async fn cache_miss_when_a_pusher_js_client_finds_a_cache_channel_empty() {
    let mut hooks = Hooks::start().await;
    let server = server(vec![(hooks.receiver.addr, vec![])]).await;
    let (mut ann, _) = js(&server, "ann").await;
    let (mut bob, _) = js(&server, "bob").await;

    subscribe(&mut ann, "cache-score").await;
    ann.next_where("cache_miss", event_on("cache-score", "pusher:cache_miss"))
        .await;
    hooks.until("cache_miss cache-score").await;

    // After an event, the next subscriber gets it: no cache_miss.
    let (status, _) = server
        .api_push(r#"{"page":"cache-score","event":"score","message":{"home":2}}"#)
        .await;
    assert_eq!(status, 200);
    ann.next_where("score", event_on("cache-score", "score"))
        .await;
    subscribe(&mut bob, "cache-score").await;
    let last = bob
        .next_where("score", |l| {
            l["type"] == "event" && l["channel"] == "cache-score"
        })
        .await;
    assert_eq!(
        last["event"], "score",
        "bob got {last} instead of the kept event"
    );

    drop((ann, bob));
    server.stop().await;
    hooks.drain();
    assert_eq!(
        hooks.named("cache_miss"),
        [json!({"name": "cache_miss", "channel": "cache-score"})],
        "{:?}",
        hooks.texts()
    );
    hooks.check_with_node_sdk().await;
}

#[tokio::test]
async fn a_receiver_that_lists_channel_vacated_gets_nothing_else() {
    let mut vacated = Hooks::start().await;
    let mut all = Hooks::start().await;
    let server = server(vec![
        (vacated.receiver.addr, vec!["channel_vacated"]),
        (all.receiver.addr, vec![]),
    ])
    .await;
    let (mut ann, _) = js(&server, "ann").await;
    let (mut bob, _) = js(&server, "bob").await;
    // Every kind of event: occupied, member_added, client_event, cache_miss...
    for channel in ["presence-room", "private-chat"] {
        subscribe(&mut ann, channel).await;
        subscribe(&mut bob, channel).await;
    }
    subscribe(&mut ann, "cache-empty").await;
    trigger(&mut ann, "private-chat", "client-typing", json!({})).await;
    bob.next_where("client-typing", event_on("private-chat", "client-typing"))
        .await;
    // ...then ann's connection closes (member_removed, cache-empty vacated) and
    // bob leaves private-chat (vacated): the marker both receivers wait for.
    drop(ann);
    bob.next_where(
        "member_removed",
        event_on("presence-room", "pusher:member_removed"),
    )
    .await;
    unsubscribe(&mut bob, "private-chat").await;
    all.until("channel_vacated private-chat").await;
    vacated.until("channel_vacated private-chat").await;

    drop(bob);
    server.stop().await;
    all.drain();
    vacated.drain();
    let names: std::collections::BTreeSet<&str> = all
        .events
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "cache_miss",
            "channel_occupied",
            "channel_vacated",
            "client_event",
            "member_added",
            "member_removed"
        ],
        "the unfiltered receiver missed a kind"
    );
    let all_vacated: Vec<String> = all
        .texts()
        .into_iter()
        .filter(|t| t.starts_with("channel_vacated "))
        .collect();
    assert_eq!(
        all_vacated,
        [
            "channel_vacated cache-empty",
            "channel_vacated presence-room",
            "channel_vacated private-chat"
        ]
    );
    assert_eq!(
        vacated.texts(),
        all_vacated,
        "the filtered receiver got other events"
    );
    vacated.check_with_node_sdk().await;
    all.check_with_node_sdk().await;
}
