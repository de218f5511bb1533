//! Configuration as a user meets it: the repo's own file, layering by environment,
//! and the one-line error plus exit status 2 for a bad value.

use std::path::Path;
use std::process::Command;

fn scenecast() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scenecast"))
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
