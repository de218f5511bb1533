use std::sync::Mutex;

use proptest::prelude::*;

use super::*;

/// app, channel, event, data, exclude.
type Published = (String, String, &'static str, String, Option<ConnKey>);

/// Records what the state publishes to subscribers.
#[derive(Default)]
struct Sink {
    published: Mutex<Vec<Published>>,
}

impl MemberSink for Sink {
    fn publish(
        &self,
        app: &str,
        channel: &Channel,
        event: &'static str,
        data: String,
        exclude: Option<ConnKey>,
    ) {
        self.published.lock().unwrap().push((
            app.into(),
            channel.to_string(),
            event,
            data,
            exclude,
        ));
    }
}

fn ch(name: &str) -> Channel {
    Channel::parse(name).unwrap()
}

fn sock(node: u64, local: u64) -> ConnKey {
    ConnKey { node, local }
}

fn member(id: &str, info: &str) -> Option<Member> {
    Some(Member::new(id, info).unwrap())
}

fn state() -> (ChannelState, Arc<Sink>) {
    let state = ChannelState::embedded(None);
    let sink = Arc::new(Sink::default());
    state.set_sink(sink.clone());
    (state, sink)
}

#[tokio::test]
async fn presence_members_are_unique_users() {
    let (state, sink) = state();
    let room = ch("presence-room");
    let first = state
        .subscribe("1", &room, sock(1, 1), member("7", r#"{"name":"Ann"}"#))
        .await;
    assert!(first.new);
    assert_eq!(
        first.presence.as_ref().unwrap().ids().collect::<Vec<_>>(),
        ["7"]
    );
    // Ann's second tab: no new member, still one user.
    let second = state
        .subscribe("1", &room, sock(1, 2), member("7", r#"{"name":"other"}"#))
        .await;
    assert_eq!(second.presence.as_ref().unwrap().members.len(), 1);
    assert_eq!(
        second.presence.as_ref().unwrap().members[0].1.get(),
        r#"{"name":"Ann"}"#,
        "the first connection's user_info stays"
    );
    assert_eq!(second.subscription_count, 2);
    let bob = state
        .subscribe("1", &room, sock(2, 1), member("8", "null"))
        .await;
    assert_eq!(bob.presence.unwrap().ids().collect::<Vec<_>>(), ["7", "8"]);

    let published = sink.published.lock().unwrap().clone();
    assert_eq!(published.len(), 2, "{published:?}");
    assert_eq!(published[0].2, "pusher_internal:member_added");
    assert_eq!(
        published[0].3,
        r#"{"user_id":"7","user_info":{"name":"Ann"}}"#
    );
    assert_eq!(published[0].4, Some(sock(1, 1)), "the joiner is excluded");
    assert_eq!(published[1].3, r#"{"user_id":"8","user_info":null}"#);

    let info = state.channel("1", &room).await;
    assert_eq!(
        (info.occupied, info.subscription_count, info.user_count),
        (true, 3, Some(2))
    );
    // One of Ann's tabs closes: she stays.
    state.left("1", &room, sock(1, 1));
    assert_eq!(sink.published.lock().unwrap().len(), 2);
    assert_eq!(state.users("1", &room).await.len(), 2);
    // Her last one: member_removed, to everyone.
    state.left("1", &room, sock(1, 2));
    let published = sink.published.lock().unwrap().clone();
    assert_eq!(
        published.last().unwrap(),
        &(
            "1".to_string(),
            "presence-room".to_string(),
            "pusher_internal:member_removed",
            r#"{"user_id":"7"}"#.to_string(),
            None
        )
    );
    assert_eq!(state.users("1", &room).await, vec![Arc::<str>::from("8")]);
    // Unknown or repeated leaves change nothing.
    state.left("1", &room, sock(1, 2));
    state.left("1", &room, sock(9, 9));
    assert_eq!(sink.published.lock().unwrap().len(), 3);
    state.left("1", &room, sock(2, 1));
    assert_eq!(
        state.channel("1", &room).await,
        ChannelInfo {
            occupied: false,
            subscription_count: 0,
            user_count: Some(0),
            cluster_wide: true
        }
    );
    let stats = state.stats();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        (
            stats.occupied.load(Relaxed),
            stats.vacated.load(Relaxed),
            stats.members_added.load(Relaxed),
            stats.members_removed.load(Relaxed)
        ),
        (1, 1, 2, 2)
    );
}

#[tokio::test]
async fn repeated_subscribe_changes_nothing() {
    let (state, sink) = state();
    let room = ch("presence-r");
    state
        .subscribe("1", &room, sock(1, 1), member("7", "{}"))
        .await;
    let again = state
        .subscribe("1", &room, sock(1, 1), member("7", "{}"))
        .await;
    assert!(!again.new);
    assert_eq!(again.subscription_count, 1);
    assert_eq!(sink.published.lock().unwrap().len(), 1);
    state.left("1", &room, sock(1, 1));
    assert!(!state.channel("1", &room).await.occupied);
}

#[tokio::test]
async fn apps_have_their_own_namespaces_and_listing_filters() {
    let (state, _) = state();
    state.subscribe("1", &ch("orders"), sock(1, 1), None).await;
    state
        .subscribe("1", &ch("presence-a"), sock(1, 1), member("u", "{}"))
        .await;
    state.subscribe("2", &ch("orders"), sock(1, 2), None).await;
    state.subscribe("2", &ch("orders"), sock(1, 3), None).await;
    // A member on a non-presence channel is ignored.
    state
        .subscribe("1", &ch("private-x"), sock(1, 1), member("u", "{}"))
        .await;

    let all = state.channels("1", "").await;
    let names: Vec<&str> = all.iter().map(|c| c.channel.as_str()).collect();
    assert_eq!(names, ["orders", "presence-a", "private-x"]);
    assert_eq!(all[0].user_count, None);
    assert_eq!(all[1].user_count, Some(1));
    assert_eq!(all[2].user_count, None);
    let presence = state.channels("1", "presence-").await;
    assert_eq!(presence.len(), 1);
    assert_eq!(
        state.channel("2", &ch("orders")).await.subscription_count,
        2
    );
    assert!(state.channels("3", "").await.is_empty());
    assert_eq!(state.local_counts(), (4, 1));
    assert!(state.users("1", &ch("private-x")).await.is_empty());
}

#[tokio::test]
async fn occupied_and_vacated_webhooks_and_filters() {
    use std::io::{Read, Write};
    // A real HTTP receiver on a thread: collects the bodies it gets.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::<String>::new()));
    let got = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = stream.read(&mut chunk).unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        got.lock().unwrap().push(body.to_string());
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let app: crate::pusher::PusherApp = toml::from_str(&format!(
        "id = \"1\"\nkey = \"k\"\nsecret = \"s\"\nwebhooks = [{{ url = \"{url}\", events = [\"channel_occupied\", \"channel_vacated\", \"member_removed\"] }}]"
    ))
    .unwrap();
    let options = crate::pusher::WebhookOptions {
        batch_wait: Duration::from_millis(50),
        ..Default::default()
    };
    let sender = WebhookSender::start(std::slice::from_ref(&app), options).unwrap();
    let state = ChannelState::embedded(Some(sender));
    let room = ch("presence-r");
    state
        .subscribe("1", &room, sock(1, 1), member("7", "{}"))
        .await;
    state
        .subscribe("1", &room, sock(1, 2), member("7", "{}"))
        .await;
    state.left("1", &room, sock(1, 1));
    state.left("1", &room, sock(1, 2));
    state.cache_miss("1", &ch("cache-x"));
    let mut events = Vec::new();
    for _ in 0..200 {
        events = bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| {
                let v: serde_json::Value = serde_json::from_str(b).unwrap();
                v["events"].as_array().unwrap().clone()
            })
            .map(|e| {
                format!(
                    "{}:{}:{}",
                    e["name"].as_str().unwrap(),
                    e["channel"].as_str().unwrap(),
                    e["user_id"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>();
        if events.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        events,
        [
            "channel_occupied:presence-r:",
            "member_removed:presence-r:7",
            "channel_vacated:presence-r:"
        ],
        "member_added and cache_miss are filtered out by the receiver's events"
    );
}

#[tokio::test]
async fn cache_channels_keep_the_last_event() {
    let (state, _) = state();
    let cache = ch("cache-prices");
    assert_eq!(state.cache_last("1", &cache).await, None);
    state.cache_store("1", &cache, "tick", "1");
    state.cache_store("1", &cache, "tick", "2");
    assert_eq!(
        state.cache_last("1", &cache).await,
        Some(CachedEvent {
            event: "tick".into(),
            data: "2".into()
        })
    );
    assert_eq!(state.cache_last("2", &cache).await, None);
    // Not a cache channel: not kept.
    state.cache_store("1", &ch("prices"), "tick", "1");
    assert_eq!(state.cache_last("1", &ch("prices")).await, None);
}

#[test]
fn channel_data_parsing() {
    let m = Member::parse(r#"{"user_id":"7","user_info":{"name":"Ann"}}"#).unwrap();
    assert_eq!((&*m.user_id, m.user_info.get()), ("7", r#"{"name":"Ann"}"#));
    let m = Member::parse(r#"{"user_id":42}"#).unwrap();
    assert_eq!((&*m.user_id, m.user_info.get()), ("42", "null"));
    assert_eq!(Member::parse("[]").unwrap_err(), MemberError::NotObject);
    assert_eq!(
        Member::parse(r#"{"user_id":""}"#).unwrap_err(),
        MemberError::BadUserId
    );
    assert_eq!(
        Member::parse(r#"{"user_id":1.5}"#).unwrap_err(),
        MemberError::BadUserId
    );
    assert_eq!(
        Member::parse(r#"{"user_id":null}"#).unwrap_err(),
        MemberError::BadUserId
    );
    let long = format!(r#"{{"user_id":"{}"}}"#, "a".repeat(129));
    assert_eq!(
        Member::parse(&long).unwrap_err(),
        MemberError::UserIdTooLong
    );
    let big = format!(r#"{{"user_id":"a","user_info":"{}"}}"#, "x".repeat(1100));
    assert_eq!(
        Member::parse(&big).unwrap_err(),
        MemberError::UserInfoTooLong
    );
}

proptest! {
    /// Any text parses or is refused without panicking; a member's id is bounded.
    #[test]
    fn any_channel_data(text in "\\PC{0,60}|\\{\"user_id\":(\"[^\"]{0,10}\"|-?[0-9]{1,25}),\"user_info\":\\PC{0,10}\\}") {
        if let Ok(member) = Member::parse(&text) {
            prop_assert!(!member.user_id.is_empty() && member.user_id.len() <= MAX_USER_ID_BYTES);
        }
    }

    /// Any sequence of subscribes and leaves keeps the counts consistent with a
    /// model, and emits one member_added per user's first connection and one
    /// member_removed per last.
    #[test]
    fn transitions_match_a_model(ops in proptest::collection::vec((any::<bool>(), 0u64..6, 0u8..3), 0..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let (state, sink) = state();
            let room = ch("presence-p");
            let mut model: std::collections::BTreeMap<u64, u8> = Default::default();
            let (mut added, mut removed) = (0, 0);
            for (join, socket, user) in ops {
                let key = sock(1, socket);
                let users_before: std::collections::BTreeSet<u8> = model.values().copied().collect();
                if join {
                    state.subscribe("1", &room, key, member(&user.to_string(), "{}")).await;
                    model.entry(socket).or_insert(user);
                } else {
                    state.left("1", &room, key);
                    model.remove(&socket);
                }
                let users_after: std::collections::BTreeSet<u8> = model.values().copied().collect();
                added += users_after.difference(&users_before).count();
                removed += users_before.difference(&users_after).count();
                let info = state.channel("1", &room).await;
                assert_eq!(info.subscription_count, model.len());
                assert_eq!(info.user_count, Some(users_after.len()));
            }
            let published = sink.published.lock().unwrap();
            let count = |e: &str| published.iter().filter(|p| p.2 == e).count();
            assert_eq!(count("pusher_internal:member_added"), added);
            assert_eq!(count("pusher_internal:member_removed"), removed);
        });
    }
}

use crate::redis::test_server::TestRedis;

/// One node's state in Redis, its liveness key held (as its registry would).
struct TestNode {
    state: ChannelState,
    sink: Arc<Sink>,
    task: tokio::task::JoinHandle<()>,
    alive: String,
}

impl TestNode {
    fn start(redis: &TestRedis, node: &str, ttl: Duration) -> Self {
        let alive = format!("t:node:{node}:alive");
        redis.query::<()>(::redis::cmd("SET").arg(&alive).arg("x"));
        let link = crate::redis::Link::open("commands", &redis.url, None).unwrap();
        let (state, task) =
            ChannelState::redis(None, link, crate::redis::RedisKeys::new("t", node), ttl);
        let sink = Arc::new(Sink::default());
        state.set_sink(sink.clone());
        Self {
            state,
            sink,
            task,
            alive,
        }
    }

    fn events(&self, event: &str) -> Vec<String> {
        self.sink
            .published
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.2 == event)
            .map(|p| p.3.clone())
            .collect()
    }

    /// The node dies: its worker stops and its liveness key goes.
    fn crash(self, redis: &TestRedis) -> Arc<Sink> {
        self.task.abort();
        redis.query::<()>(::redis::cmd("DEL").arg(&self.alive));
        self.sink
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..300 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Presence across two nodes: member lists are cluster-wide, a user with a tab
/// on each node is added once and removed once, when the last tab leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_across_two_nodes_in_redis() {
    let redis = TestRedis::start();
    let a = TestNode::start(&redis, "a", Duration::from_secs(10));
    let b = TestNode::start(&redis, "b", Duration::from_secs(10));
    let room = ch("presence-room");
    // Wait for the first resync of each worker: until then subscribes answer locally.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let ann = a
        .state
        .subscribe("1", &room, sock(1, 1), member("ann", r#"{"n":1}"#))
        .await;
    assert!(ann.cluster_wide && ann.new);
    let bob = b
        .state
        .subscribe("1", &room, sock(2, 1), member("bob", "null"))
        .await;
    assert!(bob.cluster_wide);
    assert_eq!(
        bob.presence.unwrap().ids().collect::<Vec<_>>(),
        ["ann", "bob"],
        "node b sees node a's member"
    );
    // Ann's second tab, on node b.
    let ann2 = b
        .state
        .subscribe("1", &room, sock(2, 2), member("ann", r#"{"n":2}"#))
        .await;
    assert_eq!(ann2.presence.as_ref().unwrap().members.len(), 2);
    assert_eq!(ann2.subscription_count, 3);
    let added: Vec<String> = [
        a.events("pusher_internal:member_added"),
        b.events("pusher_internal:member_added"),
    ]
    .concat();
    assert_eq!(added.len(), 2, "ann once, bob once: {added:?}");
    let info = a.state.channel("1", &room).await;
    assert_eq!(
        (
            info.occupied,
            info.subscription_count,
            info.user_count,
            info.cluster_wide
        ),
        (true, 3, Some(2), true)
    );
    assert_eq!(a.state.channels("1", "presence-").await.len(), 1);
    assert_eq!(
        a.state
            .stats()
            .occupied
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        b.state
            .stats()
            .occupied
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // Ann's tab on a closes: she is still there (her tab on b).
    a.state.left("1", &room, sock(1, 1));
    eventually("a's leave written", || {
        let n: usize = redis.query(::redis::cmd("HLEN").arg("t:pusher:1:ch:presence-room:socks"));
        n == 2
    })
    .await;
    assert!(a.events("pusher_internal:member_removed").is_empty());
    assert_eq!(b.state.users("1", &room).await.len(), 2);
    // Her last tab closes: removed once.
    b.state.left("1", &room, sock(2, 2));
    eventually("member_removed", || {
        b.events("pusher_internal:member_removed") == [r#"{"user_id":"ann"}"#]
    })
    .await;
    b.state.left("1", &room, sock(2, 1));
    eventually("vacated", || {
        b.state
            .stats()
            .vacated
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    assert!(!a.state.channel("1", &room).await.occupied);
    assert!(a.state.channels("1", "").await.is_empty());
    // Nothing left in Redis but the node sets.
    let mut keys: Vec<String> = redis.query(::redis::cmd("KEYS").arg("t:pusher:*"));
    keys.sort();
    assert_eq!(keys, ["t:pusher:nodes"]);
}

/// A node dies: its peers' purge removes its sockets, and its users' member_removed
/// and its channels' vacated are carried out exactly once across the surviving nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_members_are_removed_once() {
    let redis = TestRedis::start();
    let ttl = Duration::from_secs(2);
    let a = TestNode::start(&redis, "a", ttl);
    let b = TestNode::start(&redis, "b", ttl);
    let c = TestNode::start(&redis, "c", ttl);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let room = ch("presence-room");
    let solo = ch("private-solo");
    a.state
        .subscribe("1", &room, sock(1, 1), member("ann", "null"))
        .await;
    b.state
        .subscribe("1", &room, sock(2, 1), member("bob", "null"))
        .await;
    b.state
        .subscribe("1", &room, sock(2, 2), member("bob", "null"))
        .await;
    b.state.subscribe("1", &solo, sock(2, 1), None).await;
    c.state
        .subscribe("1", &room, sock(3, 1), member("ann", "null"))
        .await;

    let b_sink = b.crash(&redis);
    eventually("b's entries purged", || {
        let n: usize = redis.query(::redis::cmd("HLEN").arg("t:pusher:1:ch:presence-room:socks"));
        n == 2
    })
    .await;
    // Give the other survivor a few beats to (not) purge again.
    tokio::time::sleep(ttl).await;
    let removed: Vec<String> = [
        a.events("pusher_internal:member_removed"),
        c.events("pusher_internal:member_removed"),
    ]
    .concat();
    assert_eq!(removed, [r#"{"user_id":"bob"}"#], "bob removed once");
    let vacated = a
        .state
        .stats()
        .vacated
        .load(std::sync::atomic::Ordering::Relaxed)
        + c.state
            .stats()
            .vacated
            .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        vacated, 1,
        "private-solo vacated once, presence-room not at all"
    );
    assert!(
        b_sink
            .published
            .lock()
            .unwrap()
            .iter()
            .all(|p| p.2 != "pusher_internal:member_removed")
    );
    assert_eq!(a.state.users("1", &room).await.len(), 1);
    assert!(!a.state.channel("1", &solo).await.occupied);
    let nodes: Vec<String> = redis.query(::redis::cmd("SMEMBERS").arg("t:pusher:nodes"));
    assert!(!nodes.contains(&"b".to_string()));

    // A graceful stop removes a's entries at once; ann stays (her tab on c).
    a.state.shutdown().await;
    assert_eq!(c.state.users("1", &room).await.len(), 1);
    assert_eq!(c.state.channel("1", &room).await.subscription_count, 1);
}

/// A node purged by its peers while it was cut off writes its subscriptions
/// again (and its members are added again) once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_node_writes_its_entries_again() {
    let redis = TestRedis::start();
    let ttl = Duration::from_secs(2);
    let a = TestNode::start(&redis, "a", ttl);
    let b = TestNode::start(&redis, "b", ttl);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let room = ch("presence-room");
    b.state
        .subscribe("1", &room, sock(2, 1), member("bob", "null"))
        .await;
    // b's liveness key goes (its registry stalled): a purges it.
    redis.query::<()>(::redis::cmd("DEL").arg(&b.alive));
    eventually("b purged", || {
        a.events("pusher_internal:member_removed").len() == 1
    })
    .await;
    // b's registry beats again; b notices and writes its entries again.
    redis.query::<()>(::redis::cmd("SET").arg(&b.alive).arg("x"));
    eventually("b re-registered", || {
        let n: usize = redis.query(::redis::cmd("HLEN").arg("t:pusher:1:ch:presence-room:socks"));
        n == 1
    })
    .await;
    assert_eq!(
        a.state.users("1", &room).await,
        vec![Arc::<str>::from("bob")]
    );
    assert_eq!(
        b.events("pusher_internal:member_added").len(),
        2,
        "added at subscribe and again after the purge"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_channels_in_redis() {
    let redis = TestRedis::start();
    let a = TestNode::start(&redis, "a", Duration::from_secs(10));
    let b = TestNode::start(&redis, "b", Duration::from_secs(10));
    let cache = ch("cache-prices");
    a.state.cache_store("1", &cache, "tick", "42");
    let expected = Some(CachedEvent {
        event: "tick".into(),
        data: "42".into(),
    });
    for _ in 0..100 {
        if b.state.cache_last("1", &cache).await == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        b.state.cache_last("1", &cache).await,
        expected,
        "node b reads a's event"
    );
    let ttl: i64 = redis.query(::redis::cmd("TTL").arg("t:pusher:1:cache:cache-prices"));
    assert!(ttl > 1700 && ttl <= 1800, "{ttl}");
    // A value that does not parse is a miss.
    redis.query::<()>(::redis::cmd("SET").arg("t:pusher:1:cache:cache-x").arg("{"));
    assert_eq!(b.state.cache_last("1", &ch("cache-x")).await, None);
}

/// Redis goes away: a subscription answers at once with this node's view and is
/// written, with its transitions, when Redis is back (as an empty server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_made_while_redis_is_down_are_written_when_it_is_back() {
    let redis = TestRedis::start();
    let port: u16 = redis
        .url
        .trim_start_matches("redis://127.0.0.1:")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let a = TestNode::start(&redis, "a", Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let room = ch("presence-room");
    a.state
        .subscribe("1", &room, sock(1, 1), member("ann", "null"))
        .await;
    drop(redis);
    // The worker notices at its next beat.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = std::time::Instant::now();
    let bob = a
        .state
        .subscribe("1", &room, sock(1, 2), member("bob", "null"))
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "waited {:?}",
        started.elapsed()
    );
    assert!(!bob.cluster_wide);
    assert_eq!(
        bob.presence.unwrap().ids().collect::<Vec<_>>(),
        ["ann", "bob"]
    );

    let redis = TestRedis::start_on(port);
    // The registry claims the node again (its liveness key).
    redis.query::<()>(::redis::cmd("SET").arg(&a.alive).arg("x"));
    eventually("the subscriptions written again", || {
        let n: usize = redis.query(::redis::cmd("HLEN").arg("t:pusher:1:ch:presence-room:socks"));
        n == 2
    })
    .await;
    assert_eq!(a.state.users("1", &room).await.len(), 2);
    let added = a.events("pusher_internal:member_added");
    assert!(added.iter().any(|d| d.contains("bob")), "{added:?}");
    // Scripts flushed (as by a restart): a write fails with NOSCRIPT, the resync
    // loads them again, and later subscriptions are answered by Redis.
    redis.query::<()>(::redis::cmd("SCRIPT").arg("FLUSH"));
    a.state
        .subscribe("1", &room, sock(1, 3), member("cat", "null"))
        .await;
    eventually("cat written", || {
        let n: usize = redis.query(::redis::cmd("HLEN").arg("t:pusher:1:ch:presence-room:socks"));
        n == 3
    })
    .await;
    let dan = a
        .state
        .subscribe("1", &room, sock(1, 4), member("dan", "null"))
        .await;
    assert!(dan.cluster_wide);
    assert_eq!(dan.presence.unwrap().members.len(), 4);
}

/// Measures subscribe throughput in Redis mode (run by hand:
/// `cargo test --release --lib pusher::state::tests::measure -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_subscribe_throughput_in_redis() {
    let redis = TestRedis::start();
    let a = TestNode::start(&redis, "a", Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = 10_000u64;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let state = a.state.clone();
        tasks.push(tokio::spawn(async move {
            let room = ch(&format!("presence-r{}", i % 100));
            state
                .subscribe("1", &room, sock(1, i), member(&format!("u{i}"), "{}"))
                .await
                .cluster_wide
        }));
    }
    let mut wide = 0;
    for t in tasks {
        wide += usize::from(t.await.unwrap());
    }
    let took = started.elapsed();
    eprintln!(
        "{n} presence subscribes (100 channels): {took:?}, {:.0}/s, {wide} answered by redis",
        n as f64 / took.as_secs_f64()
    );
    let started = std::time::Instant::now();
    for i in 0..n {
        a.state
            .left("1", &ch(&format!("presence-r{}", i % 100)), sock(1, i));
    }
    eventually("all left", || {
        let n: usize = redis.query(::redis::cmd("SCARD").arg("t:pusher:node:a"));
        n == 0
    })
    .await;
    eprintln!("{n} leaves written in {:?}", started.elapsed());
    let stats: String = redis.query(::redis::cmd("INFO").arg("commandstats"));
    for line in stats
        .lines()
        .filter(|l| l.contains("evalsha") || l.contains("cmdstat_eval:"))
    {
        eprintln!("{line}");
    }
}
