//! Signed identities (README "Signed identities"): a JWT in `?token=` binds the
//! uid (`sub`) and the pages (`pages`); expired or badly signed tokens get 401
//! before the upgrade, a `?uid=` or page the token does not allow gets 403, and
//! `auth.require_signed_uid` turns off every unsigned way to claim a uid. Keys are
//! made with `openssl`; tokens are minted here with `jsonwebtoken`, by the real
//! `scenecast token` binary, and by the README's Node and PHP snippets as written.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::common::{CLIENT_TOKEN, TestServer, WsClient, free_port};

const SECRET: &str = "identity-test-secret-0123456789abcdef";

/// A JWT over `claims`, signed with `key` under `alg`.
fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret).unwrap(),
        claims,
    )
}

/// `exp` for a token that expires `secs` from now (negative: in the past).
fn exp_in(secs: i64) -> u64 {
    (scenecast::auth::now() as i64 + secs) as u64
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An unsigned token (`alg: none`) over `claims`: RFC 7519 §6.1's form.
fn alg_none(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

async fn jwt_server(tweak: impl FnOnce(&mut scenecast::Settings)) -> TestServer {
    TestServer::start(|s| {
        s.auth.jwt_secret = SECRET.into();
        tweak(s);
    })
    .await
}

async fn connect(server: &TestServer, query: &str) -> WsClient {
    WsClient::connect(&server.ws_url(&format!("/?{query}"))).await
}

/// The refusal of a connect with `query`: status and JSON body.
async fn refusal(server: &TestServer, query: &str) -> (u16, Value) {
    match WsClient::try_connect(&server.ws_url(&format!("/?{query}")), None).await {
        Ok(_) => panic!("/?{query} was accepted"),
        Err(refused) => (refused.status, refused.body),
    }
}

/// Pushes `{"to": uid}` to `uid` and says how many connections it reached.
async fn push_uid(server: &TestServer, uid: &str) -> u64 {
    let (status, body) = server
        .api_push(&json!({"uid": uid, "message": {"to": uid}}).to_string())
        .await;
    assert_eq!(status, 200, "{body}");
    body["delivered"].as_u64().unwrap()
}

/// Pushes a marker to page `page`: whatever a connection on it receives next
/// after earlier pushes.
async fn push_marker(server: &TestServer, page: &str, marker: &str) {
    let (status, body) = server
        .api_push(&json!({"page": page, "message": {"marker": marker}}).to_string())
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Asserts `client` is bound to `uid`: a push to the uid reaches it, and only it.
async fn assert_bound(server: &TestServer, client: &mut WsClient, uid: &str) {
    assert_eq!(push_uid(server, uid).await, 1);
    assert_eq!(client.recv_json().await, json!({"to": uid}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_token_binds_its_sub_and_a_uid_push_reaches_it() {
    let server = jwt_server(|_| {}).await;
    let token = hs256(&json!({"sub": "42", "exp": exp_in(600)}), SECRET.as_bytes());
    let mut tab = connect(&server, &format!("page=home&token={token}")).await;
    assert_bound(&server, &mut tab, "42").await;
    assert_eq!(server.connections("uid=42").await, 1);

    // `?uid=` may repeat the sub; a numeric sub is its decimal text.
    let numeric = hs256(&json!({"sub": 7, "exp": exp_in(600)}), SECRET.as_bytes());
    let mut seven = connect(&server, &format!("uid=7&token={numeric}")).await;
    assert_bound(&server, &mut seven, "7").await;

    // The static tokens of the seeds' recipes still work beside JWTs.
    let mut legacy = connect(&server, &format!("uid=8&token={CLIENT_TOKEN}")).await;
    assert_bound(&server, &mut legacy, "8").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_wrongly_signed_and_unsigned_tokens_get_401_before_the_upgrade() {
    let server = jwt_server(|_| {}).await;
    let expired = hs256(&json!({"sub": "1", "exp": exp_in(-120)}), SECRET.as_bytes());
    let (status, body) = refusal(&server, &format!("token={expired}")).await;
    assert_eq!((status, &body["code"]), (401, &json!(401)), "{body}");
    assert_eq!(body["message"], "token expired");
    assert_eq!(server.rejected("expired").await, 1);

    let claims = json!({"sub": "1", "exp": exp_in(600)});
    let wrong_key = hs256(&claims, b"another-secret-another-secret-another");
    let none = alg_none(&claims);
    // The right secret under another HMAC: the configured key fixes HS256.
    let hs512 = sign(
        Algorithm::HS512,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        &claims,
    );
    let no_exp = hs256(&json!({"sub": "1"}), SECRET.as_bytes());
    for token in [&wrong_key, &none, &hs512, &no_exp] {
        let (status, body) = refusal(&server, &format!("token={token}")).await;
        assert_eq!(status, 401, "{token}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with("invalid token"),
            "{body}"
        );
    }
    assert_eq!(server.rejected("bad_signature").await, 3);
    assert_eq!(server.rejected("bad_claims").await, 1);
    // Nobody was bound to uid 1 along the way.
    assert_eq!(server.connections("uid=1").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_uid_than_the_sub_gets_403_and_binds_nothing() {
    let server = jwt_server(|_| {}).await;
    let token = hs256(&json!({"sub": "42", "exp": exp_in(600)}), SECRET.as_bytes());
    let (status, body) = refusal(&server, &format!("uid=43&token={token}")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["message"], "?uid= is not the token's sub");
    assert_eq!(server.rejected("uid_mismatch").await, 1);
    assert_eq!(server.connections("uid=43").await, 0);
    assert_eq!(server.connections("uid=42").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_in_a_token_allow_those_pages_only() {
    let server = jwt_server(|_| {}).await;
    let token = hs256(
        &json!({"sub": "42", "pages": ["home", "list"], "exp": exp_in(600)}),
        SECRET.as_bytes(),
    );
    let mut home = connect(&server, &format!("page=home&token={token}")).await;
    assert_bound(&server, &mut home, "42").await;
    let _list = connect(&server, &format!("page=list&token={token}")).await;

    for query in [
        format!("page=back&token={token}"),
        format!("token={token}"),
        format!("page=&token={token}"),
    ] {
        let (status, body) = refusal(&server, &query).await;
        assert_eq!(status, 403, "{query}: {body}");
    }
    assert_eq!(server.rejected("page_scope").await, 3);
    assert_eq!(server.connections("page=back").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_signed_uid_turns_off_every_unsigned_uid() {
    let server = jwt_server(|s| s.auth.require_signed_uid = true).await;
    // `?uid=` with a static token, or with a JWT that has no sub: 403.
    let (status, body) = refusal(&server, &format!("uid=7&token={CLIENT_TOKEN}")).await;
    assert_eq!(status, 403, "{body}");
    let no_sub = hs256(&json!({"exp": exp_in(600)}), SECRET.as_bytes());
    let (status, _) = refusal(&server, &format!("uid=7&token={no_sub}")).await;
    assert_eq!(status, 403);
    assert_eq!(server.rejected("unsigned_uid").await, 2);

    // A viewer without a uid still connects; its Workerman-style uid frame is ignored.
    let mut viewer = connect(&server, &format!("page=home&token={CLIENT_TOKEN}")).await;
    viewer.send("7").await;
    viewer.send("heartbeat").await;
    assert_eq!(viewer.recv_json().await, json!({"type": "pong"}));
    assert_eq!(server.rejected("unsigned_uid").await, 3);
    // The signed owner of uid 7 gets its push; the viewer gets the marker next.
    let signed = hs256(&json!({"sub": "7", "exp": exp_in(600)}), SECRET.as_bytes());
    let mut owner = connect(&server, &format!("page=list&token={signed}")).await;
    assert_eq!(push_uid(&server, "7").await, 1);
    assert_eq!(owner.recv_json().await, json!({"to": "7"}));
    push_marker(&server, "home", "after-uid-7").await;
    assert_eq!(viewer.recv_json().await, json!({"marker": "after-uid-7"}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_require_signed_uid_a_jwt_without_sub_binds_like_a_static_token() {
    let server = jwt_server(|_| {}).await;
    let no_sub = hs256(&json!({"exp": exp_in(600)}), SECRET.as_bytes());
    let mut by_query = connect(&server, &format!("uid=5&token={no_sub}")).await;
    assert_bound(&server, &mut by_query, "5").await;
    let mut by_frame = connect(&server, &format!("token={no_sub}")).await;
    by_frame.send("6").await;
    by_frame.send("heartbeat").await;
    assert_eq!(by_frame.recv_json().await, json!({"type": "pong"}));
    assert_bound(&server, &mut by_frame, "6").await;
    server.stop().await;
}

/// A folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("scenecast-{what}-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (scripts/test installs it)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A private key (PKCS#8 PEM) and its public key file, made by openssl:
/// `rsa` (2048 bits) or `ec` (P-256).
fn keypair(dir: &TempDir, name: &str, kind: &str) -> (Vec<u8>, PathBuf) {
    let private = dir.path(&format!("{name}.key"));
    let public = dir.path(&format!("{name}.pub.pem"));
    let private_s = private.to_str().unwrap();
    match kind {
        "rsa" => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            private_s,
        ]),
        _ => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            private_s,
        ]),
    }
    openssl(&[
        "pkey",
        "-in",
        private_s,
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (std::fs::read(&private).unwrap(), public)
}

/// RS256 or ES256 by the key file's type: accepted and bound when signed with the
/// matching private key; refused (401) when signed with another key, with HS256
/// keyed by the public key's text (the classic algorithm confusion), or unsigned.
async fn public_key_tokens(kind: &str, alg: Algorithm, with_secret: bool) {
    let dir = TempDir::new(&format!("identity-{kind}"));
    let (private, public) = keypair(&dir, "issuer", kind);
    let (other, _) = keypair(&dir, "other", kind);
    let encoding = |pem: &[u8]| match kind {
        "rsa" => EncodingKey::from_rsa_pem(pem).unwrap(),
        _ => EncodingKey::from_ec_pem(pem).unwrap(),
    };
    let server = TestServer::start(|s| {
        s.auth.jwt_public_key_file = public.to_str().unwrap().into();
        if with_secret {
            s.auth.jwt_secret = SECRET.into();
        }
    })
    .await;
    let claims = json!({"sub": "k1", "exp": exp_in(600)});
    let token = sign(alg, &encoding(&private), &claims);
    let mut tab = connect(&server, &format!("page=home&token={token}")).await;
    assert_bound(&server, &mut tab, "k1").await;

    let public_text = std::fs::read(&public).unwrap();
    let refused = [
        sign(alg, &encoding(&other), &claims),
        hs256(&claims, &public_text),
        alg_none(&claims),
    ];
    for token in &refused {
        let (status, body) = refusal(&server, &format!("token={token}")).await;
        assert_eq!(status, 401, "{token}: {body}");
    }
    assert_eq!(server.rejected("bad_signature").await, 3);
    if with_secret {
        let hs = hs256(&json!({"sub": "h1", "exp": exp_in(600)}), SECRET.as_bytes());
        let mut tab = connect(&server, &format!("token={hs}")).await;
        assert_bound(&server, &mut tab, "h1").await;
    }
    assert_eq!(server.connections("uid=k1").await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_verify_with_an_rsa_public_key_file() {
    public_key_tokens("rsa", Algorithm::RS256, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_tokens_verify_with_an_ec_public_key_file_beside_a_secret() {
    public_key_tokens("ec", Algorithm::ES256, true).await;
}

/// The binary under test, as in `common::node`.
fn binary() -> PathBuf {
    crate::common::node::binary()
}

#[test]
fn key_settings_that_cannot_work_stop_the_start_with_exit_2_naming_the_key() {
    let dir = TempDir::new("identity-config");
    let (private, _) = keypair(&dir, "issuer", "ec");
    let private_file = dir.path("issuer.key");
    let garbage = dir.path("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN PUBLIC KEY-----\nnot a key\n").unwrap();
    assert!(!private.is_empty());
    let missing = dir.path("missing.pem");
    for (toml, key) in [
        (
            format!(
                "[auth]\njwt_public_key_file = {:?}\n",
                garbage.to_str().unwrap()
            ),
            "auth.jwt_public_key_file",
        ),
        (
            format!(
                "[auth]\njwt_public_key_file = {:?}\n",
                missing.to_str().unwrap()
            ),
            "auth.jwt_public_key_file",
        ),
        // The signing key itself does not belong on the server.
        (
            format!(
                "[auth]\njwt_public_key_file = {:?}\n",
                private_file.to_str().unwrap()
            ),
            "auth.jwt_public_key_file",
        ),
        (
            "[auth]\njwt_secret = \"short-secret\"\n".to_string(),
            "auth.jwt_secret",
        ),
    ] {
        let config = dir.path("scenecast.toml");
        std::fs::write(&config, &toml).unwrap();
        for command in ["check-config", "serve"] {
            let output = Command::new(binary())
                .args([command, "--config"])
                .arg(&config)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{command} {toml}: {stderr}");
            assert!(stderr.contains(key), "{command} {toml}: {stderr}");
        }
    }
}

/// `scenecast token ARGS --config FILE`: exit code, stdout, stderr.
fn token_command(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(binary())
        .arg("token")
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("SCENECAST__AUTH__JWT_SECRET")
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_command_mints_a_token_that_connects_and_binds() {
    let dir = TempDir::new("identity-token");
    let config = dir.path("scenecast.toml");
    std::fs::write(&config, format!("[auth]\njwt_secret = {SECRET:?}\n")).unwrap();
    let (code, token, stderr) = token_command(
        &config,
        &[
            "--uid", "42", "--page", "home", "--page", "list", "--ttl", "600",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    // Its claims, as a client library would read them.
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "42");
    assert_eq!(claims["pages"], json!(["home", "list"]));
    let exp = claims["exp"].as_u64().unwrap();
    assert!(exp.abs_diff(exp_in(600)) <= 5, "{claims}");

    let server = jwt_server(|_| {}).await;
    let mut tab = connect(&server, &format!("page=home&token={token}")).await;
    assert_bound(&server, &mut tab, "42").await;
    let (status, _) = refusal(&server, &format!("page=back&token={token}")).await;
    assert_eq!(status, 403);
    server.stop().await;

    // Without a secret: exit 2 and a line that says which setting is missing.
    std::fs::write(&config, "[auth]\nclient_tokens = [\"x-client\"]\n").unwrap();
    let (code, out, stderr) = token_command(&config, &["--uid", "42"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.is_empty());
    assert!(stderr.contains("auth.jwt_secret is not set"), "{stderr}");
    // A uid that breaks the Names rule is refused, not signed.
    std::fs::write(&config, format!("[auth]\njwt_secret = {SECRET:?}\n")).unwrap();
    let (code, _, stderr) = token_command(&config, &["--uid", ""]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--uid"), "{stderr}");
}

/// The repository's root (where README.md and examples/ are).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a README snippet file with `program` (`node`, `php`) for uid 42 on page
/// home, and connects with the token it prints.
async fn snippet_token_connects(program: &str, file: &str) {
    let output = Command::new(program)
        .arg(repo().join("examples").join(file))
        .args(["42", "home"])
        .env("SCENECAST_JWT_SECRET", SECRET)
        .output()
        .unwrap_or_else(|e| panic!("{program} (scripts/test installs it): {e}"));
    assert!(
        output.status.success(),
        "{program} {file}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let server = jwt_server(|s| s.auth.require_signed_uid = true).await;
    let mut tab = connect(&server, &format!("page=home&token={token}")).await;
    assert_bound(&server, &mut tab, "42").await;
    let (status, _) = refusal(&server, &format!("page=list&token={token}")).await;
    assert_eq!(status, 403, "the snippet's pages claim limits the page");
    server.stop().await;

    // The README shows this very file.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let text = std::fs::read_to_string(repo().join("examples").join(file)).unwrap();
    assert!(
        readme.contains(text.trim()),
        "README.md must quote examples/{file} as it is"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_node_snippet_mints_a_working_token() {
    snippet_token_connects("node", "mint-token.mjs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_php_snippet_mints_a_working_token() {
    snippet_token_connects("php", "mint-token.php").await;
}

/// Any `token` text is answered 101, 401 or 403 (never a dropped socket, a 500 or
/// a dead server): random texts, JWT-shaped ones with random parts, and tokens
/// with random claims signed with the right secret.
#[test]
fn any_token_text_is_accepted_or_refused_with_401_or_403() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(jwt_server(|_| {}));
    let json_value = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::from),
        proptest::collection::vec("[a-z]{0,4}", 0..3).prop_map(|v| json!(v)),
    ];
    let signed = (json_value.clone(), json_value, any::<bool>(), any::<bool>()).prop_map(
        |(sub, pages, with_sub, with_pages)| {
            let mut claims = json!({"exp": exp_in(600)});
            if with_sub {
                claims["sub"] = sub;
            }
            if with_pages {
                claims["pages"] = pages;
            }
            hs256(&claims, SECRET.as_bytes())
        },
    );
    let shaped = (
        proptest::collection::vec(any::<u8>(), 0..60),
        proptest::collection::vec(any::<u8>(), 0..60),
        proptest::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(h, p, s)| format!("{}.{}.{}", b64(&h), b64(&p), b64(&s)));
    let texts = prop_oneof!["\\PC{0,80}", shaped, signed];
    let queries = (texts, proptest::option::of("[a-z]{1,4}"), any::<bool>());
    let mut runner = TestRunner::new(Config {
        cases: 96,
        ..Config::default()
    });
    runner
        .run(&queries, |(text, page, with_uid)| {
            let token =
                percent_encoding::utf8_percent_encode(&text, percent_encoding::NON_ALPHANUMERIC);
            let mut query = format!("token={token}");
            if let Some(page) = page {
                query.push_str(&format!("&page={page}"));
            }
            if with_uid {
                query.push_str("&uid=u1");
            }
            let url = server.ws_url(&format!("/?{query}"));
            let status = runtime.block_on(async {
                match WsClient::try_connect(&url, None).await {
                    Ok(client) => {
                        client.close().await;
                        101
                    }
                    Err(refused) => refused.status,
                }
            });
            prop_assert!(
                [101, 401, 403].contains(&status),
                "{text:?} {query}: {status}"
            );
            Ok(())
        })
        .unwrap();
    // The server is still up and well.
    let (status, _) = runtime.block_on(server.get_json("/healthz"));
    assert_eq!(status, 200);
    runtime.block_on(server.stop());
}

/// The start log of `scenecast serve` with `auth` as its `[auth]` section: the
/// process is stopped once it serves `/healthz`.
async fn start_log(auth: &str) -> String {
    let dir = TempDir::new("identity-start");
    let port = free_port();
    let config = dir.path("scenecast.toml");
    std::fs::write(
        &config,
        format!("[server]\nbind = \"127.0.0.1:{port}\"\n[auth]\n{auth}\n"),
    )
    .unwrap();
    let log = dir.path("stderr.log");
    let mut child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");
    crate::common::eventually("the server serves /healthz", || async {
        reqwest::get(&url).await.ok().map(|_| ())
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(&log).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_tokens_without_require_signed_uid_warn_at_start() {
    let secret = format!("jwt_secret = {SECRET:?}");
    let warned = start_log(&secret).await;
    assert!(
        warned.contains("auth.require_signed_uid is false"),
        "{warned}"
    );
    let strict = start_log(&format!("{secret}\nrequire_signed_uid = true")).await;
    assert!(!strict.contains("require_signed_uid is false"), "{strict}");
    assert!(strict.contains("scenecast"), "{strict}");
}
