//! The pages people look at (`/home`, `/list`, `/back`, `/dashboard`, rendered from
//! `templates/` by askama) and the files they load from `static/`.
//!
//! Pages carry no secret: the client token is read by the page's own script from its
//! URL, and the API token is typed by the operator and kept in the tab's
//! sessionStorage. Every page is sent with a Content-Security-Policy that allows
//! scripts, styles and connections from this origin only (no inline script), so even a
//! pushed message that slipped into the DOM as HTML could not run code.
//!
//! Static files are compiled into the binary (`include_str!`): the server serves the
//! same files from any working directory or container, and a file can never be out
//! of step with the templates that reference it. Their URLs carry a content version
//! (`?v=`) so browsers may cache them for a year and still pick up a new release.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, Responder, guard, web};
use askama::Template;
use askama_web::WebTemplate;

use crate::app::AppState;
use crate::edge::Query;
use crate::error::ApiError;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/home", read().to(home))
        .route("/list", read().to(list))
        .route("/back", read().to(back))
        .route("/dashboard", read().to(dashboard))
        .route("/static/{file}", read().to(static_file));
}

/// GET, and HEAD for monitors and caches (actix sends HEAD answers without a body).
fn read() -> actix_web::Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// One file from `static/`, compiled in.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "scenecast.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../static/scenecast.js"),
    },
    Asset {
        name: "scenecast.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../static/scenecast.css"),
    },
    Asset {
        name: "feed.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../static/feed.js"),
    },
    Asset {
        name: "operator.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../static/operator.js"),
    },
    Asset {
        name: "back.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../static/back.js"),
    },
    Asset {
        name: "dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../static/dashboard.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../static/favicon.svg"),
    },
];

/// Content hashes: one ETag per asset, and the version put in asset URLs.
struct Versions {
    etags: Vec<String>,
    all: String,
}

static VERSIONS: LazyLock<Versions> = LazyLock::new(|| {
    let hash = |text: &str| {
        let mut hasher = DefaultHasher::new();
        text.hash(&mut hasher);
        hasher.finish()
    };
    let mut all = DefaultHasher::new();
    let etags = ASSETS
        .iter()
        .map(|asset| {
            asset.body.hash(&mut all);
            format!("\"{:016x}\"", hash(asset.body))
        })
        .collect();
    Versions {
        etags,
        all: format!("{:016x}", all.finish()),
    }
});

/// The version in asset URLs (`/static/scenecast.css?v=...`).
fn asset_version() -> &'static str {
    &VERSIONS.all
}

/// `/static/{file}`: compiled-in files with their content type, an ETag, and a
/// year-long cache when the URL names the current version (else revalidate).
async fn static_file(req: HttpRequest, file: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let found = ASSETS
        .iter()
        .zip(VERSIONS.etags.iter())
        .find(|(a, _)| a.name == file.as_str());
    let Some((asset, etag)) = found else {
        return Err(ApiError::not_found(format!(
            "no static file {:?}",
            file.as_str()
        )));
    };
    let versioned =
        Query::parse(req.query_string()).is_ok_and(|query| query.get("v") == Some(asset_version()));
    let cache = if versioned {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::CACHE_CONTROL, cache))
        .insert_header((header::ETAG, etag.as_str()))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if fresh {
        return Ok(response.finish());
    }
    Ok(response
        .insert_header((header::CONTENT_TYPE, asset.content_type))
        .body(asset.body))
}

/// `/home` and `/list`: one template, the page as parameter.
#[derive(Template, WebTemplate)]
#[template(path = "feed.html")]
struct FeedPage {
    view: &'static str,
    title: &'static str,
    page: &'static str,
    version: &'static str,
}

/// A scene as the back office shows it.
struct SceneButton {
    func: String,
    target: String,
    params: Vec<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "back.html")]
struct BackPage {
    view: &'static str,
    version: &'static str,
    scenes: Vec<SceneButton>,
}

#[derive(Template, WebTemplate)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    view: &'static str,
    version: &'static str,
}

/// `/` for a browser: where the pages and the docs are.
#[derive(Template, WebTemplate)]
#[template(path = "index.html")]
struct IndexPage {
    view: &'static str,
    version: &'static str,
    /// `0.1.0 (commit abc1234)`
    version_text: &'static str,
    node: String,
    mode: &'static str,
    /// The Host the browser used, for the examples (a placeholder when unusable).
    host: String,
}

/// Whether a request to `/` without a query comes from a browser that wants a
/// page (`Accept: text/html`); programs get the trigger's JSON answers.
pub fn wants_index(req: &HttpRequest) -> bool {
    req.query_string().is_empty()
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/html"))
}

/// The index page (see [`wants_index`]).
pub fn index(req: &HttpRequest, state: &AppState) -> HttpResponse {
    let host = req.connection_info().host().to_string();
    let page = IndexPage {
        view: "index",
        version: asset_version(),
        version_text: concat!(
            "scenecast ",
            env!("CARGO_PKG_VERSION"),
            " (commit ",
            env!("SCENECAST_COMMIT"),
            ")"
        ),
        node: state.node_id.to_string(),
        mode: state.registry.mode(),
        host: if is_plain_host(&host) {
            host
        } else {
            "HOST:PORT".into()
        },
    };
    with_page_headers(page, req)
}

async fn home(req: HttpRequest) -> HttpResponse {
    let page = FeedPage {
        view: "home",
        title: "Home",
        page: "home",
        version: asset_version(),
    };
    with_page_headers(page, &req)
}

async fn list(req: HttpRequest) -> HttpResponse {
    let page = FeedPage {
        view: "list",
        title: "List",
        page: "list",
        version: asset_version(),
    };
    with_page_headers(page, &req)
}

async fn back(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let scenes = state
        .scenes
        .iter()
        .map(|scene| SceneButton {
            func: scene.func.clone(),
            target: scene.target_label(),
            params: scene.params().into_iter().map(String::from).collect(),
        })
        .collect();
    let page = BackPage {
        view: "back",
        version: asset_version(),
        scenes,
    };
    with_page_headers(page, &req)
}

async fn dashboard(req: HttpRequest) -> HttpResponse {
    let page = DashboardPage {
        view: "dashboard",
        version: asset_version(),
    };
    with_page_headers(page, &req)
}

/// Renders `page` and adds the headers every page carries: the CSP, no caching of
/// the HTML (it names the current asset version), and no Referer (page URLs hold
/// the client token).
fn with_page_headers(
    page: impl Responder<Body = actix_web::body::BoxBody>,
    req: &HttpRequest,
) -> HttpResponse {
    let mut response = page.respond_to(req);
    let headers = response.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy(req)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Same-origin everything, no inline script or style, no plugins, no framing, no
/// form submission (forms are handled by script, so a form can never put the API
/// token in a URL). `connect-src` names this host's ws:// and wss:// explicitly for
/// browsers whose `'self'` does not cover WebSocket schemes.
fn content_security_policy(req: &HttpRequest) -> String {
    let info = req.connection_info();
    let host = info.host();
    let mut connect = String::from("'self'");
    if is_plain_host(host) {
        connect.push_str(&format!(" ws://{host} wss://{host}"));
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// A Host header we can put into a header value as is (name or address, port).
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_hosts_reach_the_policy() {
        assert!(is_plain_host("127.0.0.1:9502"));
        assert!(is_plain_host("[::1]:80"));
        assert!(is_plain_host("push.example.com"));
        assert!(!is_plain_host("evil.com; script-src *"));
        assert!(!is_plain_host(""));
    }

    #[test]
    fn every_asset_has_a_distinct_name_and_a_version() {
        for (i, a) in ASSETS.iter().enumerate() {
            assert!(ASSETS[i + 1..].iter().all(|b| b.name != a.name));
        }
        assert_eq!(VERSIONS.etags.len(), ASSETS.len());
        assert_eq!(asset_version().len(), 16);
    }
}
