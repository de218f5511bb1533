//! The pages in a real headless Chromium, as a person uses them: /home and /list
//! open, an operator runs scenes and pushes from /back, the server is killed and
//! started again, the pages come back by themselves, a hostile message shows as
//! text, and /dashboard counts the connections. One screenshot per page lands in
//! tests/artifacts/.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::chrome::Tab;
use crate::common::{API_TOKEN, CLIENT_TOKEN, Chrome, Node, Proxy, RedisServer, TestServer};

/// The whole flow must finish within this, or the test fails (and its drop guards
/// kill Chromium, chromedriver and the server).
const TEST_BOUND: Duration = Duration::from_secs(180);

const HOME_MESSAGE: &str = "后端按了按钮1";
const LIST_MESSAGE: &str = "后端按了按钮2";
const XSS: &str = r#"<img src=x onerror="document.title='pwned'">"#;

const ENTRY_COUNT: &str = "return document.querySelectorAll('#feed .entry').length;";
/// The newest entry's text once there are at least `arguments[0]` entries.
const NEWEST_ENTRY: &str = "var e = document.querySelectorAll('#feed .entry'); \
     return e.length >= arguments[0] ? e[0].querySelector('.entry-text').textContent : null;";
/// The newest result on /back once there are at least `arguments[0]` results.
const NEWEST_RESULT: &str = "var r = document.querySelectorAll('#results .result'); \
     return r.length >= arguments[0] ? r[0].querySelector('.result-text').textContent : null;";

async fn wait_state(chrome: &Chrome, tab: &Tab, page: &str, state: &str) {
    chrome.switch_to(tab).await;
    chrome
        .wait_for(
            &format!("/{page} shows the connection as {state}"),
            &format!("return document.getElementById('state').dataset.state === '{state}';"),
            json!([]),
        )
        .await;
}

async fn wait_not_open(chrome: &Chrome, tab: &Tab, page: &str) {
    chrome.switch_to(tab).await;
    chrome
        .wait_for(
            &format!("/{page} notices the server is gone"),
            "return document.getElementById('state').dataset.state !== 'open';",
            json!([]),
        )
        .await;
}

/// Waits for the `n`-th entry on the feed in `tab` and returns the newest entry's text.
async fn newest_entry(chrome: &Chrome, tab: &Tab, page: &str, n: usize) -> String {
    chrome.switch_to(tab).await;
    let text = chrome
        .wait_for(
            &format!("/{page} shows {n} message(s)"),
            NEWEST_ENTRY,
            json!([n]),
        )
        .await;
    text.as_str().unwrap_or_default().to_string()
}

async fn entry_count(chrome: &Chrome, tab: &Tab) -> u64 {
    chrome.switch_to(tab).await;
    chrome
        .js(ENTRY_COUNT, json!([]))
        .await
        .as_u64()
        .unwrap_or(0)
}

/// Clicks `button` on /back and returns the text of the `n`-th result it produced.
async fn back_action(chrome: &Chrome, back: &Tab, button: &str, n: usize) -> String {
    chrome.switch_to(back).await;
    chrome.click(button).await;
    let text = chrome
        .wait_for(
            &format!("/back shows result #{n}"),
            NEWEST_RESULT,
            json!([n]),
        )
        .await;
    text.as_str().unwrap_or_default().to_string()
}

async fn dashboard_count(chrome: &Chrome, page: &str) -> Value {
    chrome
        .js(
            "var c = document.querySelector('#pages-body tr[data-page=\"' + arguments[0] + '\"] .page-count'); \
             return c ? c.textContent : null;",
            json!([page]),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_show_pushes_reconnect_after_a_crash_and_render_text_as_text() {
    match tokio::time::timeout(TEST_BOUND, flow()).await {
        Ok(()) => {}
        Err(_) => panic!("the browser flow did not finish within {TEST_BOUND:?}"),
    }
}

async fn flow() {
    // The real binary, embedded mode (no Redis), so that it can be killed for real.
    let mut server = Node::spawn("pages", "", "browser", 10, "");
    server.wait_status("ok").await;
    let base = server.http_url("");
    let mut chrome = Chrome::start().await;

    // Two viewers: /home for user u1, /list anonymous; each takes its token from its URL.
    let home = chrome
        .open_tab(&format!("{base}/home?token={CLIENT_TOKEN}&uid=u1"))
        .await;
    wait_state(&chrome, &home, "home", "open").await;
    let list = chrome
        .open_tab(&format!("{base}/list?token={CLIENT_TOKEN}"))
        .await;
    wait_state(&chrome, &list, "list", "open").await;

    // The operator types the API token on /back and runs the home scene.
    let back = chrome.open_tab(&format!("{base}/back")).await;
    chrome.type_into("#api-token", API_TOKEN).await;
    let result = back_action(&chrome, &back, "button[data-scene='pushHomeLogic']", 1).await;
    assert_eq!(result, "delivered: 1");
    assert_eq!(newest_entry(&chrome, &home, "home", 1).await, HOME_MESSAGE);
    assert_eq!(
        entry_count(&chrome, &list).await,
        0,
        "the home scene must not reach /list"
    );

    // The list scene reaches /list alone: its first and only entry is its own message.
    let result = back_action(&chrome, &back, "button[data-scene='pushListLogic']", 2).await;
    assert_eq!(result, "delivered: 1");
    assert_eq!(newest_entry(&chrome, &list, "list", 1).await, LIST_MESSAGE);
    assert_eq!(entry_count(&chrome, &list).await, 1);
    assert_eq!(entry_count(&chrome, &home).await, 1);

    // Crash: SIGKILL, no close frame. Both pages notice, then reconnect on their own
    // once a new server listens on the same port.
    server.kill();
    wait_not_open(&chrome, &home, "home").await;
    wait_not_open(&chrome, &list, "list").await;
    server.restart();
    server.wait_status("ok").await;
    wait_state(&chrome, &home, "home", "open").await;
    wait_state(&chrome, &list, "list", "open").await;
    // The restarted server has a new history (a new epoch): it cannot tell what the
    // pages missed, and they say so.
    for tab in [&home, &list] {
        chrome.switch_to(tab).await;
        chrome
            .wait_for(
                "the page says messages may have been missed",
                "return !document.getElementById('missed').hidden \
                 && document.getElementById('recovered').hidden;",
                json!([]),
            )
            .await;
    }

    let result = back_action(&chrome, &back, "button[data-scene='pushHomeLogic']", 3).await;
    assert_eq!(result, "delivered: 1");
    assert_eq!(newest_entry(&chrome, &home, "home", 2).await, HOME_MESSAGE);

    // A hostile message, pushed to user u1 from the free-form box, shows as characters.
    chrome.switch_to(&back).await;
    chrome.click("#push-kind option[value='uid']").await;
    chrome.type_into("#push-name", "u1").await;
    let hostile = json!({"code": 200, "message": XSS}).to_string();
    chrome.type_into("#push-message", &hostile).await;
    let result = back_action(&chrome, &back, "#push-send", 4).await;
    assert_eq!(result, "delivered: 1");
    assert_eq!(newest_entry(&chrome, &home, "home", 3).await, XSS);
    chrome.switch_to(&home).await;
    let images = chrome
        .js(
            "return document.querySelectorAll('#feed img').length;",
            json!([]),
        )
        .await;
    assert_eq!(images, 0, "the pushed markup must not become an element");
    let title = chrome.js("return document.title;", json!([])).await;
    assert_eq!(title, "Home · scenecast");

    // A bad push shows the server's error message as the result.
    chrome.switch_to(&back).await;
    chrome.click("#push-kind option[value='page']").await;
    chrome.clear("#push-name").await;
    let result = back_action(&chrome, &back, "#push-send", 5).await;
    assert_eq!(result, "error 400: page must not be empty");

    // A wrong client token: the browser only sees failed connects, so after a few
    // the page says what to check, and keeps retrying.
    chrome
        .open_tab(&format!("{base}/list?token=not-a-client-token"))
        .await;
    chrome
        .wait_for(
            "/list with a wrong token explains it cannot connect",
            "return !document.getElementById('unreachable').hidden \
             && document.getElementById('state').dataset.state !== 'open';",
            json!([]),
        )
        .await;

    // The dashboard counts one connection on each page.
    let dashboard = chrome.open_tab(&format!("{base}/dashboard")).await;
    chrome.type_into("#api-token", API_TOKEN).await;
    chrome
        .wait_for(
            "/dashboard shows one connection on home and one on list",
            "var n = function (p) { var c = document.querySelector('#pages-body tr[data-page=\"' + p + '\"] .page-count'); return c && c.textContent; }; \
             return n('home') === '1' && n('list') === '1' && document.getElementById('total').textContent === '2';",
            json!([]),
        )
        .await;
    assert_eq!(dashboard_count(&chrome, "home").await, "1");
    // Pushes per second come from two successive samples: once there is a figure,
    // pushes made now show up in the next one.
    chrome
        .wait_for(
            "/dashboard shows a pushes-per-second figure",
            "return document.getElementById('rate').textContent !== '–';",
            json!([]),
        )
        .await;
    let http = reqwest::Client::new();
    for n in 0..20 {
        let reply = http
            .post(format!("{base}/api/push"))
            .bearer_auth(API_TOKEN)
            .json(&json!({"page": "nobody", "message": {"n": n}}))
            .send()
            .await
            .expect("push through the API");
        assert_eq!(reply.status().as_u16(), 200);
    }
    chrome
        .wait_for(
            "/dashboard shows pushes per second above zero",
            "return parseFloat(document.getElementById('rate').textContent) > 0;",
            json!([]),
        )
        .await;

    for (tab, name) in [
        (&home, "home"),
        (&list, "list"),
        (&back, "back"),
        (&dashboard, "dashboard"),
    ] {
        chrome.switch_to(tab).await;
        chrome.js("window.scrollTo(0, 0);", json!([])).await;
        let path = chrome.screenshot(name).await;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "screenshot {} is empty", path.display());
    }

    chrome.quit().await;
    drop(server);
}

/// Every entry's text on the feed in `tab`, oldest first (the feed shows newest first).
async fn entries_oldest_first(chrome: &Chrome, tab: &Tab) -> Vec<String> {
    chrome.switch_to(tab).await;
    let texts = chrome
        .js(
            "return Array.from(document.querySelectorAll('#feed .entry .entry-text'), \
             function (e) { return e.textContent; }).reverse();",
            json!([]),
        )
        .await;
    serde_json::from_value(texts).unwrap_or_default()
}

/// The visible text of the element `id` in the current tab, or `None` while hidden.
async fn shown_text(chrome: &Chrome, id: &str) -> Option<String> {
    let text = chrome
        .js(
            "var e = document.getElementById(arguments[0]); \
             return e && !e.hidden ? e.textContent.replace(/\\s+/g, ' ').trim() : null;",
            json!([id]),
        )
        .await;
    text.as_str().map(str::to_string)
}

/// Pushes `{"code":200,"message":text}` to page home straight to the server.
async fn push_home(server: &TestServer, text: &str) {
    let body = json!({"page": "home", "message": {"code": 200, "message": text}});
    let (status, reply) = server.api_push(&body.to_string()).await;
    assert_eq!(status, 200, "push {text}: {reply}");
}

/// Pushes to page home for everyone but the connection `conn` (what a back office
/// does with the id a page sent it along with a change it made).
async fn push_home_excluding(server: &TestServer, conn: &str, text: &str) {
    let body = json!({"page": "home", "exclude": conn, "message": {"code": 200, "message": text}});
    let (status, reply) = server.api_push(&body.to_string()).await;
    assert_eq!(status, 200, "push {text}: {reply}");
}

/// Opens /home through `proxy`, pushes `before`, cuts the page's connection (the
/// server stays up), pushes `missed` while the page is away, lets it reconnect, then
/// pushes a marker. Returns the feed (oldest first) once the marker shows, and the
/// recovered / missed notices as they are then.
async fn blip(
    chrome: &mut Chrome,
    server: &TestServer,
    proxy: &Proxy,
    before: &[&str],
    missed: &[&str],
) -> (Vec<String>, Option<String>, Option<String>) {
    let home = chrome
        .open_tab(&format!("http://{}/home?token={CLIENT_TOKEN}", proxy.addr))
        .await;
    wait_state(chrome, &home, "home", "open").await;
    // The page connects with recover=1: its welcome frame is in once it has an id,
    // the server's id for this connection, which a push can exclude.
    let conn = chrome
        .wait_for(
            "/home knows its connection id",
            "return window.scenecastClient.conn;",
            json!([]),
        )
        .await;
    let conn = conn.as_str().unwrap_or_default().to_string();
    let (node, local) = conn.split_once('.').unwrap_or_default();
    assert!(
        !node.is_empty()
            && !local.is_empty()
            && (node.chars().chain(local.chars())).all(|c| c.is_ascii_digit()),
        "a connection id is node.local: {conn:?}"
    );
    push_home_excluding(server, &conn, "not for the page that acted").await;
    for (n, text) in before.iter().enumerate() {
        push_home(server, text).await;
        assert_eq!(newest_entry(chrome, &home, "home", n + 1).await, *text);
    }
    // Nothing to say on a first connect.
    assert_eq!(shown_text(chrome, "recovered").await, None);
    assert_eq!(shown_text(chrome, "missed").await, None);

    proxy.cut();
    wait_not_open(chrome, &home, "home").await;
    crate::common::eventually("the server sees the page gone", || async {
        (server.connections("page=home").await == 0).then_some(())
    })
    .await;
    // While away: one push that excludes the page's old connection (it reconnects
    // with `prev` = that id, so the replay skips it), and the ones it missed.
    push_home_excluding(server, &conn, "not for the page that acted, while away").await;
    for text in missed {
        push_home(server, text).await;
    }
    proxy.reopen();
    wait_state(chrome, &home, "home", "open").await;

    // A marker pushed after the reconnect: once it shows, everything before it has.
    let marker = "after the reconnect";
    crate::common::eventually("the page is back on the server", || async {
        (server.connections("page=home").await == 1).then_some(())
    })
    .await;
    push_home(server, marker).await;
    chrome
        .wait_for(
            "/home shows the marker pushed after the reconnect",
            "var e = document.querySelector('#feed .entry .entry-text'); \
             return e && e.textContent === arguments[0];",
            json!([marker]),
        )
        .await;
    let feed = entries_oldest_first(chrome, &home).await;
    let recovered = shown_text(chrome, "recovered").await;
    let missed_note = shown_text(chrome, "missed").await;
    (feed, recovered, missed_note)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_page_recovers_what_was_pushed_while_its_connection_was_cut() {
    match tokio::time::timeout(TEST_BOUND, recovery_flow()).await {
        Ok(()) => {}
        Err(_) => panic!("the recovery flow did not finish within {TEST_BOUND:?}"),
    }
}

async fn recovery_flow() {
    let mut chrome = Chrome::start().await;

    // The default history (1000 pushes) covers the three pushed while away: the page
    // shows every push once, in order, and says it recovered three.
    let server = TestServer::start(|_| {}).await;
    let proxy = Proxy::start(server.addr).await;
    let (feed, recovered, missed) = blip(
        &mut chrome,
        &server,
        &proxy,
        &["before 1", "before 2"],
        &["missed 1", "missed 2", "missed 3"],
    )
    .await;
    assert_eq!(
        feed,
        [
            "before 1",
            "before 2",
            "missed 1",
            "missed 2",
            "missed 3",
            "after the reconnect"
        ],
        "every push once, in order"
    );
    assert_eq!(recovered.as_deref(), Some("3 missed messages recovered"));
    assert_eq!(missed, None);
    drop(proxy);
    server.stop().await;

    // A history of one push cannot cover three: nothing is replayed (never a partial
    // replay) and the page says messages may have been missed, with a reload link.
    let server = TestServer::start(|s| s.history.size = 1).await;
    let proxy = Proxy::start(server.addr).await;
    let (feed, recovered, missed) = blip(
        &mut chrome,
        &server,
        &proxy,
        &["before 1"],
        &["missed 1", "missed 2", "missed 3"],
    )
    .await;
    assert_eq!(feed, ["before 1", "after the reconnect"]);
    assert_eq!(recovered, None);
    assert_eq!(
        missed.as_deref(),
        Some("Some messages may have been missed — reload")
    );
    let reload = chrome
        .js(
            "var a = document.querySelector('#missed a'); return a ? a.href : null;",
            json!([]),
        )
        .await;
    assert_eq!(
        reload,
        format!("http://{}/home?token={CLIENT_TOKEN}", proxy.addr),
        "the reload link opens the same page again"
    );
    let path = chrome.screenshot("home-missed").await;
    assert!(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) > 1000);

    chrome.quit().await;
    drop(proxy);
    server.stop().await;
}

/// Pushes `{"code":200,"message":text}` to page home through `node`'s JSON API.
async fn push_home_via(node: &Node, text: &str) {
    let reply = reqwest::Client::new()
        .post(node.http_url("/api/push"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"page": "home", "message": {"code": 200, "message": text}}))
        .send()
        .await
        .expect("push through the API");
    assert_eq!(reply.status().as_u16(), 200, "push {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_page_comes_back_to_another_node_after_a_crash_with_what_it_missed() {
    match tokio::time::timeout(TEST_BOUND, failover_flow()).await {
        Ok(()) => {}
        Err(_) => panic!("the failover flow did not finish within {TEST_BOUND:?}"),
    }
}

/// Two nodes share a Redis; the page reaches node a through a proxy (a load
/// balancer). Node a is SIGKILLed while the page is away, three pushes are made
/// through node b, and the balancer sends the page's reconnect to node b, which
/// replays them from the Redis history.
async fn failover_flow() {
    let redis = RedisServer::start();
    let prefix = "browserfailover";
    let mut a = Node::spawn("a", &redis.url(), prefix, 10, "");
    let b = Node::spawn("b", &redis.url(), prefix, 10, "");
    a.wait_status("ok").await;
    b.wait_status("ok").await;
    let balancer = Proxy::start(a.addr).await;
    let mut chrome = Chrome::start().await;
    let home = chrome
        .open_tab(&format!(
            "http://{}/home?token={CLIENT_TOKEN}",
            balancer.addr
        ))
        .await;
    wait_state(&chrome, &home, "home", "open").await;
    chrome
        .wait_for(
            "/home knows its connection id",
            "return typeof window.scenecastClient.conn === 'string';",
            json!([]),
        )
        .await;
    // Pushed through node b, delivered by node a.
    push_home_via(&b, "before").await;
    assert_eq!(newest_entry(&chrome, &home, "home", 1).await, "before");

    balancer.cut();
    a.kill();
    wait_not_open(&chrome, &home, "home").await;
    for text in ["missed 1", "missed 2", "missed 3"] {
        push_home_via(&b, text).await;
    }
    balancer.redirect(b.addr);
    balancer.reopen();
    wait_state(&chrome, &home, "home", "open").await;
    chrome
        .wait_for(
            "/home says what it recovered",
            "var e = document.getElementById('recovered'); return !e.hidden && e.textContent;",
            json!([]),
        )
        .await;
    push_home_via(&b, "after the reconnect").await;
    chrome
        .wait_for(
            "/home shows the marker pushed after the reconnect",
            "var e = document.querySelector('#feed .entry .entry-text'); \
             return e && e.textContent === arguments[0];",
            json!(["after the reconnect"]),
        )
        .await;
    assert_eq!(
        entries_oldest_first(&chrome, &home).await,
        [
            "before",
            "missed 1",
            "missed 2",
            "missed 3",
            "after the reconnect"
        ]
    );
    assert_eq!(
        shown_text(&chrome, "recovered").await.as_deref(),
        Some("3 missed messages recovered")
    );
    assert_eq!(shown_text(&chrome, "missed").await, None);
    chrome.quit().await;
}
