//! Pusher channel state across real nodes (real processes, one real redis-server):
//! presence member lists are cluster-wide, a user with tabs on two nodes is added
//! once and removed once, a SIGKILLed node's members and channels are cleaned by its
//! peers with one `member_removed` / `channel_vacated` each (webhooks to a real HTTP
//! receiver, signatures checked by the Node SDK's own helper), occupied/vacated
//! once per cluster; and laravel-echo's `.join()` with `here/joining/leaving` across
//! two nodes. Clients are pusher-js 8.6 and laravel-echo 2.5 under Node.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::capture::{Captured, HttpCapture};
use crate::common::clients::{self, Script};
use crate::common::{Node, RedisServer};

const APP: &str = "7";
const KEY: &str = "presence-key";
const SECRET: &str = "presence-secret";

fn pusher_toml(hook: &str) -> String {
    format!(
        "[[pusher.apps]]\nid = \"{APP}\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\n\
         webhooks = [{{ url = \"{hook}\" }}]\n"
    )
}

/// A pusher-js client of `node` signing presence subscriptions as `user`.
async fn client(node: &Node, user: &str) -> Script {
    let mut script = Script::node(
        "pusher-js.js",
        &json!({"key": KEY, "port": node.addr.port(), "secret": SECRET, "appId": APP,
                "presence": {"user_id": user, "user_info": {"name": user}}}),
    );
    script
        .next_where("connected", |l| l["type"] == "connected")
        .await;
    script
}

fn event(name: &'static str) -> impl Fn(&Value) -> bool {
    move |l| l["type"] == "event" && l["event"] == name
}

async fn subscribe(script: &mut Script, channel: &str) {
    script
        .send(&json!({"cmd": "subscribe", "channel": channel}))
        .await;
    let line = script
        .next_where("subscription_succeeded", |l| {
            l["type"] == "event"
                && l["channel"] == channel
                && (l["event"] == "pusher:subscription_succeeded"
                    || l["event"] == "pusher:subscription_error")
        })
        .await;
    assert_eq!(line["event"], "pusher:subscription_succeeded", "{line}");
}

/// The member ids pusher-js holds for `channel`, sorted.
async fn members(script: &mut Script, channel: &str) -> Vec<String> {
    script
        .send(&json!({"cmd": "members", "channel": channel}))
        .await;
    let line = script
        .next_where("members", |l| l["type"] == "members")
        .await;
    let mut ids: Vec<String> = line["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(line["count"], ids.len());
    ids
}

/// The user id of a `pusher:member_added` / `_removed` line (pusher-js gives the
/// member `{id, info}`).
fn member_id(line: &Value) -> String {
    line["data"]["id"].as_str().unwrap_or_default().to_string()
}

/// Webhook events seen so far, as `name channel user_id` texts with their counts.
#[derive(Default)]
struct Hooks {
    seen: BTreeMap<String, usize>,
    first: Option<Captured>,
}

impl Hooks {
    fn add(&mut self, request: Captured) {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        for e in body["events"].as_array().unwrap() {
            let text = format!(
                "{} {} {}",
                e["name"].as_str().unwrap(),
                e["channel"].as_str().unwrap(),
                e["user_id"].as_str().unwrap_or("-")
            );
            *self.seen.entry(text).or_default() += 1;
        }
        self.first.get_or_insert(request);
    }

    /// Takes requests until every one of `wanted` was seen.
    async fn until(&mut self, receiver: &mut HttpCapture, wanted: &[&str]) {
        while !wanted.iter().all(|w| self.seen.contains_key(*w)) {
            let request = receiver.next().await;
            self.add(request);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_cluster_wide_and_a_killed_nodes_members_leave_once() {
    let redis = RedisServer::start();
    let mut receiver = HttpCapture::start(vec![]).await;
    let hook = format!("http://{}/pusher/webhook", receiver.addr);
    let prefix = "presence";
    let mut a = Node::spawn("a", &redis.url(), prefix, 2, &pusher_toml(&hook));
    let mut b = Node::spawn("b", &redis.url(), prefix, 2, &pusher_toml(&hook));
    a.wait_status("ok").await;
    b.wait_status("ok").await;
    let room = "presence-room";

    let mut ann1 = client(&a, "ann").await;
    subscribe(&mut ann1, room).await;
    assert_eq!(members(&mut ann1, room).await, ["ann"]);
    let mut bob = client(&b, "bob").await;
    subscribe(&mut bob, room).await;
    assert_eq!(
        members(&mut bob, room).await,
        ["ann", "bob"],
        "node b lists node a's member"
    );
    let added = ann1
        .next_where("member_added", event("pusher:member_added"))
        .await;
    assert_eq!(member_id(&added), "bob");
    assert_eq!(added["data"]["info"], json!({"name": "bob"}));

    // Ann's second tab, on node b: no member_added; then carl joins on node a,
    // and carl is the next member bob hears of.
    let mut ann2 = client(&b, "ann").await;
    subscribe(&mut ann2, room).await;
    assert_eq!(members(&mut ann2, room).await, ["ann", "bob"]);
    let mut carl = client(&a, "carl").await;
    subscribe(&mut carl, room).await;
    subscribe(&mut carl, "private-carl").await;
    let next = bob
        .next_where("member_added", event("pusher:member_added"))
        .await;
    assert_eq!(member_id(&next), "carl", "ann's second tab was announced");
    assert_eq!(members(&mut bob, room).await, ["ann", "bob", "carl"]);

    // The webhooks node a decided reach the receiver before it dies (a batch still
    // in a killed node's memory is lost: the queue is not durable).
    let mut hooks = Hooks::default();
    hooks
        .until(
            &mut receiver,
            &[
                "channel_occupied presence-room -",
                "channel_occupied private-carl -",
                "member_added presence-room carl",
            ],
        )
        .await;

    // Node a dies: ann keeps her tab on b; carl is gone.
    a.kill();
    drop((ann1, carl));
    let removed = bob
        .next_where("member_removed", event("pusher:member_removed"))
        .await;
    assert_eq!(
        member_id(&removed),
        "carl",
        "ann was removed though her tab on b lives"
    );
    assert_eq!(members(&mut bob, room).await, ["ann", "bob"]);
    // Ann's last tab leaves: now she is removed, and she is the next one.
    ann2.send(&json!({"cmd": "unsubscribe", "channel": room}))
        .await;
    let removed = bob
        .next_where("member_removed", event("pusher:member_removed"))
        .await;
    assert_eq!(member_id(&removed), "ann");
    assert_eq!(members(&mut bob, room).await, ["bob"]);

    let expected = [
        "channel_occupied presence-room -",
        "channel_occupied private-carl -",
        "member_added presence-room ann",
        "member_added presence-room bob",
        "member_added presence-room carl",
        "member_removed presence-room carl",
        "channel_vacated private-carl -",
        "member_removed presence-room ann",
    ];
    hooks.until(&mut receiver, &expected).await;
    // Anything else (a second copy) would come within the batching window.
    while let Ok(request) = tokio::time::timeout(Duration::from_millis(1500), receiver.next()).await
    {
        hooks.add(request);
    }
    let once: BTreeMap<String, usize> = expected.iter().map(|e| (e.to_string(), 1)).collect();
    assert_eq!(hooks.seen, once, "each transition once per cluster");

    // The receiver can check what it got with the Node SDK's own helper.
    let request = hooks.first.take().unwrap();
    let body = String::from_utf8(request.body.clone()).unwrap();
    let headers: serde_json::Map<String, Value> = request
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    let lines = clients::node(
        "sdk.js",
        &json!({"appId": APP, "key": KEY, "secret": SECRET,
                "ops": [{"op": "webhook", "headers": headers, "body": body}]}),
    )
    .await;
    assert_eq!(
        lines[0]["result"], true,
        "the Node SDK refused the signature"
    );

    // Node b's metrics: bob is its one member of its one channel; it carried out
    // the removals of node a's users.
    let metrics = reqwest::get(b.http_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "scenecast_pusher_channels_occupied 1",
        "scenecast_pusher_presence_members 1",
        "scenecast_pusher_transitions_total{kind=\"member_removed\"} 2",
        "scenecast_pusher_webhooks_total{outcome=\"dropped\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in:\n{metrics}"
        );
    }
    let _ = b.terminate();
}

/// laravel-echo's presence API on two nodes: `here` lists both users, `joining`
/// and `leaving` fire on the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_join_here_joining_leaving_across_two_nodes() {
    let redis = RedisServer::start();
    let prefix = "echojoin";
    let apps = format!("[[pusher.apps]]\nid = \"{APP}\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\n");
    let a = Node::spawn("a", &redis.url(), prefix, 2, &apps);
    let b = Node::spawn("b", &redis.url(), prefix, 2, &apps);
    a.wait_status("ok").await;
    b.wait_status("ok").await;
    let echo = |node: &Node, user: &str| {
        Script::node(
            "echo.mjs",
            &json!({"key": KEY, "port": node.addr.port(), "secret": SECRET, "appId": APP,
                    "presence": {"user_id": user, "user_info": {"name": user}}}),
        )
    };
    let names = |members: &Value| -> Vec<String> {
        let mut names: Vec<String> = members
            .as_array()
            .unwrap_or_else(|| panic!("members: {members}"))
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    let mut ann = echo(&a, "ann");
    ann.send(&json!({"cmd": "join", "channel": "room"})).await;
    let here = ann.next_where("here", |l| l["type"] == "here").await;
    assert_eq!(names(&here["members"]), ["ann"]);

    let mut bob = echo(&b, "bob");
    bob.send(&json!({"cmd": "join", "channel": "room"})).await;
    let here = bob.next_where("here", |l| l["type"] == "here").await;
    assert_eq!(
        names(&here["members"]),
        ["ann", "bob"],
        "node b's here lists node a's user"
    );
    let joining = ann.next_where("joining", |l| l["type"] == "joining").await;
    assert_eq!(joining["member"]["name"], "bob");

    bob.send(&json!({"cmd": "leave", "channel": "room"})).await;
    let leaving = ann.next_where("leaving", |l| l["type"] == "leaving").await;
    assert_eq!(leaving["member"]["name"], "bob");
}

/// A graceful stop (SIGTERM) removes the node's members at once: the others hear
/// `member_removed` long before the node's liveness key (30 s here) would expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_removes_the_nodes_members_at_once() {
    let redis = RedisServer::start();
    let mut receiver = HttpCapture::start(vec![]).await;
    let hook = format!("http://{}/hook", receiver.addr);
    let prefix = "presencestop";
    let mut a = Node::spawn("a", &redis.url(), prefix, 30, &pusher_toml(&hook));
    let b = Node::spawn("b", &redis.url(), prefix, 30, &pusher_toml(&hook));
    a.wait_status("ok").await;
    b.wait_status("ok").await;
    let room = "presence-room";
    let mut bob = client(&b, "bob").await;
    subscribe(&mut bob, room).await;
    let mut dan = client(&a, "dan").await;
    subscribe(&mut dan, room).await;
    subscribe(&mut dan, "private-dan").await;
    let added = bob
        .next_where("member_added", event("pusher:member_added"))
        .await;
    assert_eq!(member_id(&added), "dan");

    let stopped = tokio::task::spawn_blocking(move || a.terminate())
        .await
        .unwrap();
    assert!(
        stopped.is_some_and(|s| s.success()),
        "node a did not stop cleanly"
    );
    let removed = bob
        .next_where("member_removed", event("pusher:member_removed"))
        .await;
    assert_eq!(member_id(&removed), "dan");
    assert_eq!(members(&mut bob, room).await, ["bob"]);
    let mut hooks = Hooks::default();
    hooks
        .until(
            &mut receiver,
            &[
                "member_removed presence-room dan",
                "channel_vacated private-dan -",
            ],
        )
        .await;
    drop(dan);
}
