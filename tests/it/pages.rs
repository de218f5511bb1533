//! The pages and static files over plain HTTP: what a browser is sent before any
//! script runs (status, content type, security headers, caching), and that no page
//! ever carries a token.

use serde_json::json;

use crate::common::{API_TOKEN, CLIENT_TOKEN, TestServer};

const PAGES: [&str; 4] = ["/home", "/list", "/back", "/dashboard"];

struct Fetched {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn fetch(server: &TestServer, path: &str) -> Fetched {
    let response = server
        .http
        .get(server.http_url(path))
        .send()
        .await
        .expect("HTTP request");
    Fetched {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.expect("a text body"),
    }
}

fn header<'a>(fetched: &'a Fetched, name: &str) -> &'a str {
    fetched
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_is_html_under_a_strict_policy_without_inline_code() {
    let server = TestServer::start(|_| {}).await;
    for path in PAGES {
        let page = fetch(&server, path).await;
        assert_eq!(page.status, 200, "{path}");
        assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
        assert_eq!(header(&page, "cache-control"), "no-cache");
        assert_eq!(header(&page, "referrer-policy"), "no-referrer");
        assert_eq!(header(&page, "x-content-type-options"), "nosniff");

        let csp = header(&page, "content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(
                csp.contains(directive),
                "{path}: {directive} missing in {csp}"
            );
        }
        let host = server.addr.to_string();
        assert!(
            csp.contains(&format!("connect-src 'self' ws://{host} wss://{host}")),
            "{path}: {csp}"
        );
        assert!(!csp.contains("unsafe"), "{path}: {csp}");

        // Inline code would be blocked by the policy: every script is a file, and
        // no element carries a style or an event handler attribute.
        let scripts = page.body.matches("<script").count();
        assert!(scripts >= 1, "{path} loads its scripts");
        assert_eq!(scripts, page.body.matches("<script src=\"/static/").count());
        assert!(!page.body.contains(" style="), "{path} has an inline style");
        assert!(
            !page.body.contains(" onclick="),
            "{path} has an inline handler"
        );
        assert!(page.body.contains("/static/scenecast.css?v="));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_page_carries_a_token_even_when_its_url_does() {
    let server = TestServer::start(|_| {}).await;
    for path in PAGES {
        for query in [
            String::new(),
            format!("?token={CLIENT_TOKEN}&uid=42"),
            format!("?token={API_TOKEN}"),
        ] {
            let page = fetch(&server, &format!("{path}{query}")).await;
            assert_eq!(page.status, 200);
            assert!(
                !page.body.contains(API_TOKEN),
                "{path}{query} holds the API token"
            );
            assert!(
                !page.body.contains(CLIENT_TOKEN),
                "{path}{query} holds the client token"
            );
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_lists_every_configured_scene_with_its_parameters() {
    let server = TestServer::start(|s| {
        let mut scenes = s.scene_configs();
        scenes.push(
            serde_json::from_value(json!({
                "func": "pushPromo",
                "uid": "{user}",
                "message": {"code": 200, "message": "promo {code} for {user}"},
            }))
            .expect("a scene config"),
        );
        s.scenes = Some(scenes);
    })
    .await;
    let back = fetch(&server, "/back").await;
    assert_eq!(back.status, 200);
    for func in ["pushHomeLogic", "pushListLogic", "pushPromo"] {
        assert!(
            back.body.contains(&format!(
                "<button type=\"submit\" class=\"button\" data-scene=\"{func}\""
            )),
            "no button for {func}"
        );
    }
    assert!(back.body.contains("uid {user}"), "the promo scene's target");
    for param in ["user", "code"] {
        assert!(
            back.body.contains(&format!("<input name=\"{param}\"")),
            "no input for the promo scene's {param}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_have_their_types_a_version_and_revalidate() {
    let server = TestServer::start(|_| {}).await;
    let home = fetch(&server, "/home").await;
    let version = home
        .body
        .split("/static/scenecast.js?v=")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("/home links scenecast.js with a version")
        .to_string();

    for (file, content_type, needle) in [
        (
            "scenecast.js",
            "text/javascript; charset=utf-8",
            "class Scenecast",
        ),
        ("scenecast.css", "text/css; charset=utf-8", ".badge"),
        ("feed.js", "text/javascript; charset=utf-8", "textContent"),
        (
            "operator.js",
            "text/javascript; charset=utf-8",
            "sessionStorage",
        ),
        ("back.js", "text/javascript; charset=utf-8", "/api/push"),
        (
            "dashboard.js",
            "text/javascript; charset=utf-8",
            "/api/stats",
        ),
        ("favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let current = fetch(&server, &format!("/static/{file}?v={version}")).await;
        assert_eq!(current.status, 200, "{file}");
        assert_eq!(header(&current, "content-type"), content_type, "{file}");
        assert_eq!(header(&current, "x-content-type-options"), "nosniff");
        assert_eq!(
            header(&current, "cache-control"),
            "public, max-age=31536000, immutable",
            "{file} at the current version is cached for good"
        );
        assert!(current.body.contains(needle), "{file} content");

        let unversioned = fetch(&server, &format!("/static/{file}")).await;
        assert_eq!(header(&unversioned, "cache-control"), "no-cache");

        let etag = header(&current, "etag").to_string();
        let revalidated = server
            .http
            .get(server.http_url(&format!("/static/{file}")))
            .header("if-none-match", &etag)
            .send()
            .await
            .expect("HTTP request");
        assert_eq!(revalidated.status().as_u16(), 304, "{file} with its ETag");
    }

    let head = server
        .http
        .head(server.http_url("/home"))
        .send()
        .await
        .expect("HTTP request");
    assert_eq!(head.status().as_u16(), 200, "HEAD /home");

    let (status, body) = server.get_json("/static/nope.js").await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], 404);
    let (status, _) = server.get_json("/static/..%2FCargo.toml").await;
    assert_eq!(status, 404);
    server.stop().await;
}
