//! A scenecast node as a real process (the binary CI builds in release mode, or the
//! test profile's one), for cluster tests: own config file, own port, killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{API_TOKEN, CLIENT_TOKEN, WAIT, free_port};

/// The binary under test: `$SCENECAST_BIN` (CI points it at the release build),
/// else the one cargo built for this test run. Panics naming the path when it is
/// missing (a `SCENECAST_BIN` that ignored `CARGO_TARGET_DIR`, say), rather than
/// letting the spawn fail with a bare `NotFound`.
pub fn binary() -> PathBuf {
    let (path, from) = match std::env::var_os("SCENECAST_BIN") {
        Some(path) => (PathBuf::from(path), "SCENECAST_BIN"),
        None => (PathBuf::from(env!("CARGO_BIN_EXE_scenecast")), "cargo"),
    };
    assert!(
        path.is_file(),
        "the scenecast binary {} (from {from}) does not exist: build it \
         (cargo build --release --bin scenecast) and point SCENECAST_BIN at \
         ${{CARGO_TARGET_DIR:-target}}/release/scenecast",
        path.display()
    );
    path
}

/// Starts the binary with `config`, its stderr appended to `log`.
fn launch(config: &Path, log: &Path) -> Child {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open node log");
    Command::new(binary())
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary().display()))
}

pub struct Node {
    pub id: String,
    pub addr: SocketAddr,
    child: Option<Child>,
    config: PathBuf,
    pub log: PathBuf,
}

impl Node {
    /// Starts a node on a free port with `redis_url`/`prefix`; `extra` is appended
    /// to the generated TOML (extra sections only).
    pub fn spawn(id: &str, redis_url: &str, prefix: &str, ttl_secs: u64, extra: &str) -> Node {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let dir = std::env::temp_dir();
        let config = dir.join(format!("scenecast-{prefix}-{id}-{port}.toml"));
        let log = dir.join(format!("scenecast-{prefix}-{id}-{port}.log"));
        let workers = super::server::workers();
        let text = format!(
            "[server]\nbind = \"{addr}\"\nnode_id = \"{id}\"\nworkers = {workers}\n\
             [auth]\nclient_tokens = [\"{CLIENT_TOKEN}\"]\napi_tokens = [\"{API_TOKEN}\"]\n\
             [redis]\nurl = \"{redis_url}\"\nprefix = \"{prefix}\"\nnode_ttl_secs = {ttl_secs}\n{extra}"
        );
        std::fs::write(&config, text).expect("write node config");
        let _ = std::fs::remove_file(&log);
        let child = launch(&config, &log);
        Node {
            id: id.to_string(),
            addr,
            child: Some(child),
            config,
            log,
        }
    }

    /// Kills the node if it runs and starts it again with the same config, on the
    /// same port (its log goes on in the same file).
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(launch(&self.config, &self.log));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn http_url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    /// The node's `/healthz` JSON, or `None` while it does not answer.
    pub async fn health(&self) -> Option<serde_json::Value> {
        let response = reqwest::get(self.http_url("/healthz")).await.ok()?;
        response.json().await.ok()
    }

    /// Waits until `/healthz` says `status` (e.g. "ok" once Redis is connected).
    pub async fn wait_status(&self, status: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.health().await.is_some_and(|h| h["status"] == status) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "node {} never reported {status:?}; log:\n{}",
                    self.id,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGSTOP: the process freezes (a long GC-like stall, a VM pause); its
    /// sockets stay open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Node::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {}", self.pid());
    }

    /// What the node wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `wait` for the process to exit by itself; its status, or `None`
    /// while it still runs.
    pub fn wait_exit(&mut self, wait: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: a crash, no clean-up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit (graceful stop).
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {} did not exit within {WAIT:?} of SIGTERM", self.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.log);
    }
}
