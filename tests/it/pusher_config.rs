//! `[pusher]` settings as a user meets them: check-config prints the apps with the
//! secrets masked; a bad app exits 2 with one line naming the key.

use std::process::Command;

fn check_config(text: &str) -> (Option<i32>, String, String) {
    let path = std::env::temp_dir().join(format!(
        "scenecast-pusher-{}-{}.toml",
        std::process::id(),
        crate::common::free_port()
    ));
    std::fs::write(&path, text).unwrap();
    let output = Command::new(crate::common::node::binary())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const APP: &str = r#"
[server]
bind = "127.0.0.1:0"

[pusher]
activity_timeout_secs = 20

[[pusher.apps]]
id = 1234
key = "shop-key"
secret = "shop-secret-value"
client_events = true
webhooks = [{ url = "https://hooks.example/pusher", events = ["channel_occupied", "member_added"] }]
"#;

#[test]
fn check_config_prints_the_apps_with_secrets_masked() {
    let (code, stdout, stderr) = check_config(APP);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stdout.contains("shop-secret-value"), "{stdout}");
    let printed: toml::Table = stdout.parse().expect("TOML");
    let pusher = &printed["pusher"];
    assert_eq!(pusher["activity_timeout_secs"].as_integer(), Some(20));
    let app = &pusher["apps"][0];
    assert_eq!(app["id"].as_str(), Some("1234"));
    assert_eq!(app["secret"].as_str(), Some("***"));
    assert_eq!(app["client_events"].as_bool(), Some(true));
    assert_eq!(app["client_event_rate"].as_integer(), Some(10));
    assert_eq!(
        app["webhooks"][0]["events"][1].as_str(),
        Some("member_added")
    );
}

#[test]
fn bad_apps_exit_2_naming_the_key() {
    let cases: &[(&str, &str)] = &[
        (
            "\n[[pusher.apps]]\nid = 2\nkey = \"shop-key\"\nsecret = \"s\"\n",
            "pusher.apps[1].key",
        ),
        (
            "\n[[pusher.apps]]\nid = 1234\nkey = \"k2\"\nsecret = \"s\"\n",
            "pusher.apps[1].id",
        ),
        (
            "\n[[pusher.apps]]\nid = 2\nkey = \"k2\"\nsecret = \"\"\n",
            "pusher.apps[1].secret",
        ),
        (
            "\n[[pusher.apps]]\nid = 2\nkey = \"k2\"\nsecret = \"s\"\nwebhooks = [{ url = \"not a url\" }]\n",
            "pusher.apps[1].webhooks[0].url",
        ),
        (
            "\n[[pusher.apps]]\nid = 2\nkey = \"k2\"\nsecret = \"s\"\nwebhooks = [{ url = \"http://h/\", events = [\"occupied\"] }]\n",
            "pusher.apps[1].webhooks[0].events",
        ),
        (
            // Pusher's name, but never sent: a receiver would wait for it in vain.
            "\n[[pusher.apps]]\nid = 2\nkey = \"k2\"\nsecret = \"s\"\nwebhooks = [{ url = \"http://h/\", events = [\"subscription_count\"] }]\n",
            "does not send",
        ),
        (
            "\n[[pusher.apps]]\nid = 2\nkey = \"k2\"\nsecret = \"s\"\ncolour = 1\n",
            "colour",
        ),
    ];
    for (extra, key) in cases {
        let (code, _, stderr) = check_config(&format!("{APP}{extra}"));
        assert_eq!(code, Some(2), "{extra}: {stderr}");
        assert!(stderr.contains(key), "{key} not in: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    // A published example secret may guard loopback only.
    let demo = APP.replace("shop-secret-value", "demo-secret");
    assert_eq!(check_config(&demo).0, Some(0));
    let (code, _, stderr) = check_config(&demo.replace("127.0.0.1:0", "0.0.0.0:0"));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("pusher.apps[0].secret"), "{stderr}");
}
