//! Configuration as a user meets it: the repo's own file, layering by environment,
//! and the one-line error plus exit status 2 for a bad value.

use std::path::Path;
use std::process::Command;

/// The binary under test (`SCENECAST_BIN`, else cargo's).
fn scenecast() -> Command {
    Command::new(crate::common::node::binary())
}

fn write_config(text: &str) -> tempfile_path::TempConfig {
    tempfile_path::TempConfig::new(text)
}

/// A config file in the system temp dir, removed on drop.
mod tempfile_path {
    pub struct TempConfig(pub std::path::PathBuf);

    impl TempConfig {
        pub fn new(text: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "scenecast-test-{}-{}.toml",
                std::process::id(),
                crate::common::free_port()
            ));
            std::fs::write(&path, text).expect("write temp config");
            TempConfig(path)
        }
    }

    impl Drop for TempConfig {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn the_repos_own_config_loads_with_both_seed_scenes() {
    let settings = scenecast::Settings::load(Some(Path::new("scenecast.toml")))
        .expect("scenecast.toml is valid");
    assert_eq!(settings.server.bind, "127.0.0.1:9502");
    assert!(
        settings.redis.url.is_empty(),
        "the repo's config runs embedded"
    );
    let funcs: Vec<String> = settings
        .scene_configs()
        .into_iter()
        .map(|s| s.func)
        .collect();
    assert!(funcs.starts_with(&["pushHomeLogic".to_string(), "pushListLogic".to_string()]));
}

#[test]
fn a_config_without_scenes_gets_the_seed_defaults_and_keeps_key_case() {
    let file = write_config("[auth]\napi_tokens = [\"k1\"]\n");
    let settings = scenecast::Settings::load(Some(&file.0)).unwrap();
    let scenes = settings.scene_configs();
    assert_eq!(scenes.len(), 2);
    assert_eq!(scenes[0].page.as_deref(), Some("home"));
    assert_eq!(scenes[1].message["message"], "后端按了按钮2");

    let file = write_config(
        "[[scenes]]\nfunc = \"orderCreated\"\nuid = \"{uid}\"\nmessage = { orderId = \"{id}\", Count = 2 }\n",
    );
    let settings = scenecast::Settings::load(Some(&file.0)).unwrap();
    let scenes = settings.scene_configs();
    assert_eq!(scenes.len(), 1, "a configured table replaces the defaults");
    assert_eq!(
        scenes[0].message,
        serde_json::json!({"orderId": "{id}", "Count": 2})
    );
}

#[test]
fn bad_values_exit_2_with_one_line_naming_the_key() {
    /// (file text, environment variable, what the error line must name)
    type Case = (
        &'static str,
        Option<(&'static str, &'static str)>,
        &'static str,
    );
    let cases: &[Case] = &[
        ("[server]\nbind = \"nowhere\"\n", None, "server.bind"),
        (
            "[heartbeat]\ninterval_secs = \"soon\"\n",
            None,
            "heartbeat.interval_secs",
        ),
        (
            "[heartbeat]\ninterval_secs = 10\nidle_timeout_secs = 5\n",
            None,
            "heartbeat.idle_timeout_secs",
        ),
        ("[server]\nbnd = \"127.0.0.1:1\"\n", None, "bnd"),
        ("[redis]\nurl = \"localhost:6379\"\n", None, "redis.url"),
        ("[ingress]\nws_publish = \"everyone\"\n", None, "everyone"),
        (
            "[[scenes]]\nfunc = \"x\"\nmessage = 1\n",
            None,
            "scenes[0].page",
        ),
        (
            "",
            Some(("SCENECAST__SERVER__MAX_MESSAGE_BYTES", "lots")),
            "server.max_message_bytes",
        ),
    ];
    for (text, env, key) in cases {
        let file = write_config(text);
        let mut command = scenecast();
        command.args(["serve", "--config"]).arg(&file.0);
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        let output = command.output().expect("run scenecast");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "config {text:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(key), "{key} named in: {stderr}");
    }
}

#[test]
fn environment_overrides_the_file_and_splits_lists() {
    // Run in a child process so the variables never leak into other tests.
    let file = write_config("[auth]\napi_tokens = [\"from-file\"]\n[server]\nbind = \"nowhere\"\n");
    let output = scenecast()
        .args(["--config"])
        .arg(&file.0)
        .env("SCENECAST__SERVER__BIND", "127.0.0.1:1")
        .env("SCENECAST__AUTH__API_TOKENS", "a1,b2")
        .env("SCENECAST__AUTH__CLIENT_TOKENS", "b2")
        .output()
        .expect("run scenecast");
    // bind came from the environment (valid), and the list was split: b2 is then
    // both a client and an API token, which validation names.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("auth.api_tokens"), "{stderr}");
}

/// `scenecast check-config` with `file` and `env`: (exit code, stdout, stderr).
fn check_config(file: &Path, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = scenecast();
    command.args(["check-config", "--config"]).arg(file);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("run scenecast check-config");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Issue 10 §5: each error says what is wrong, where it was set, and what would do.
#[test]
fn config_errors_name_the_place_and_what_would_be_valid() {
    /// (file text, environment, what the one error line must contain)
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
    );
    let cases: &[Case] = &[
        (
            "[ingress]\nws_publish = \"everyone\"\n",
            &[],
            &[
                "ingress.ws_publish: \"everyone\" is not one of api_token, any, off",
                "line 2",
            ],
        ),
        (
            "[server]\nallowed_origins = [\"example.com\"]\n",
            &[],
            &[
                "server.allowed_origins",
                "scheme",
                "\"https://example.com\"",
            ],
        ),
        (
            "[server]\nbnd = \"127.0.0.1:1\"\n",
            &[],
            &["unknown setting server.bnd", "line 2", "bind"],
        ),
        (
            "",
            &[("SCENECAST__SERVER__WORKRES", "2")],
            &[
                "SCENECAST__SERVER__WORKRES: unknown setting server.workres",
                "workers",
            ],
        ),
        (
            "",
            &[("SCENECAST__INGRESS__WS_PUBLISH", "everyone")],
            &[
                "SCENECAST__INGRESS__WS_PUBLISH: ingress.ws_publish: \"everyone\" is not one of api_token, any, off",
            ],
        ),
        (
            "",
            &[("SCENECAST__SERVER__WORKERS", "two")],
            &["SCENECAST__SERVER__WORKERS: server.workers: \"two\" is not a whole number"],
        ),
        (
            "[server]\nbind = \"127.0.0.1:1\"\n",
            &[("SCENECAST__SERVER__BIND", "nowhere")],
            &["SCENECAST__SERVER__BIND: server.bind", "localhost:9502"],
        ),
    ];
    for (text, env, needles) in cases {
        let file = write_config(text);
        let (code, _, stderr) = check_config(&file.0, env);
        assert_eq!(code, Some(2), "{text:?} {env:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        for needle in *needles {
            assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
        }
        if env.is_empty() {
            let name = file.0.display().to_string();
            assert!(stderr.contains(&name), "the file {name} is named: {stderr}");
        }
    }
}

#[test]
fn a_host_name_bind_is_resolved() {
    let file = write_config("[server]\nbind = \"localhost:9502\"\n");
    let (code, stdout, stderr) = check_config(&file.0, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("bind = \"localhost:9502\""), "{stdout}");
    let file = write_config("[server]\nbind = \"no-such-host.invalid:9502\"\n");
    let (code, _, stderr) = check_config(&file.0, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("does not resolve"), "{stderr}");
}

#[test]
fn check_config_prints_the_settings_in_force_with_secrets_masked() {
    let file = write_config(
        "[auth]\napi_tokens = [\"file-api-secret\"]\nclient_tokens = [\"file-client-secret\"]\n",
    );
    let (code, stdout, stderr) = check_config(
        &file.0,
        &[
            ("SCENECAST__INGRESS__TEXT_TOKEN", "text-secret"),
            (
                "SCENECAST__REDIS__URL",
                "redis://user:redis-secret@127.0.0.1:6390/",
            ),
            ("SCENECAST__SERVER__NODE_ID", "007"),
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    for secret in [
        "file-api-secret",
        "file-client-secret",
        "text-secret",
        "redis-secret",
    ] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
    }
    for shown in [
        "api_tokens = [\"***\"]",
        "text_token = \"***\"",
        "url = \"redis://user:***@127.0.0.1:6390/\"",
        "node_id = \"007\"",
        "ws_publish = \"api_token\"",
        "SCENECAST__SERVER__NODE_ID",
    ] {
        assert!(stdout.contains(shown), "{shown} not in:\n{stdout}");
    }
    assert!(stdout.contains(&file.0.display().to_string()), "{stdout}");
    // The printed settings are TOML, in the file's own shape.
    let printed: toml::Table = stdout.parse().expect("check-config prints TOML");
    assert!(printed["server"].get("bind").is_some(), "{stdout}");
}

/// Issue 12 case 3: a text setting from the environment is the text typed.
#[test]
fn environment_text_settings_are_the_exact_text_typed() {
    let env = |pairs: &[(&str, &str)]| -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    };
    let file = write_config("");
    let (settings, source) = scenecast::Settings::load_from(
        Some(&file.0),
        env(&[
            ("SCENECAST__AUTH__API_TOKENS", "123456"),
            ("SCENECAST__AUTH__CLIENT_TOKENS", " 1, 0x2 ,,003"),
            ("SCENECAST__INGRESS__TEXT_TOKEN", "00123"),
            ("SCENECAST__SERVER__NODE_ID", "007"),
            ("SCENECAST__REDIS__PREFIX", "1e3"),
            ("SCENECAST__SERVER__WORKERS", "3"),
            ("SCENECAST__AUTH__ALLOW_ANONYMOUS", "true"),
            ("SCENECAST_BIN", "/not/a/setting"),
        ]),
    )
    .expect("valid");
    assert_eq!(settings.auth.api_tokens, ["123456"]);
    assert_eq!(settings.auth.client_tokens, ["1", "0x2", "003"]);
    assert_eq!(settings.ingress.text_token, "00123");
    assert_eq!(settings.server.node_id, "007");
    assert_eq!(settings.redis.prefix, "1e3");
    assert_eq!(settings.server.workers, 3);
    assert!(settings.auth.allow_anonymous);
    assert_eq!(source.env.len(), 7, "{:?}", source.env);
}

/// The same through the binary: the Swoole recipe's numeric token pushes, and a
/// zero-padded text token is the secret (not its number).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numeric_token_from_the_environment_works_as_typed() {
    use crate::common::{TextClient, WsClient};
    let port = crate::common::free_port();
    let text_port = crate::common::free_port();
    let log = std::env::temp_dir().join(format!("scenecast-numeric-token-{port}.log"));
    let empty = write_config("");
    let mut child = scenecast()
        .args(["serve", "--config"])
        .arg(&empty.0)
        .env("SCENECAST__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env(
            "SCENECAST__INGRESS__TEXT_BIND",
            format!("127.0.0.1:{text_port}"),
        )
        .env("SCENECAST__SERVER__WORKERS", "1")
        .env("SCENECAST__AUTH__API_TOKENS", "123456")
        .env("SCENECAST__AUTH__CLIENT_TOKENS", "0042")
        .env("SCENECAST__INGRESS__TEXT_TOKEN", "00123")
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start scenecast");
    struct Kill<'a>(&'a mut std::process::Child, std::path::PathBuf);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_file(&self.1);
        }
    }
    let guard = Kill(&mut child, log.clone());
    let url = format!("http://127.0.0.1:{port}/api/presence?page=home&token=123456");
    let presence = crate::common::eventually("the server answers", || async {
        let reply: serde_json::Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
        Some(reply)
    })
    .await;
    assert_eq!(
        presence["code"],
        200,
        "{presence}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let mut ws = WsClient::connect(&format!("ws://127.0.0.1:{port}/?page=home&token=0042")).await;
    crate::common::eventually("the viewer is registered", || async {
        let reply: serde_json::Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
        (reply["connections"] == 1).then_some(())
    })
    .await;
    let text_addr = format!("127.0.0.1:{text_port}").parse().unwrap();
    let mut text = TextClient::connect(text_addr).await;
    assert_eq!(
        text.push(r#"{"page":"home","token":"123","n":1}"#).await,
        "fail\n"
    );
    assert_eq!(
        text.push(r#"{"page":"home","token":"00123","n":2}"#).await,
        "ok\n"
    );
    let frame: serde_json::Value = serde_json::from_str(&ws.recv_text().await).unwrap();
    assert_eq!(frame, serde_json::json!({"page": "home", "n": 2}));
    drop(guard);
}
