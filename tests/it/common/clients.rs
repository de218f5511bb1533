//! Real Pusher client libraries and server SDKs as processes: the Node scripts in
//! tests/clients/ (pusher-js, laravel-echo, the `pusher` Node SDK; installed by
//! `scripts/test` with `npm ci` there) and the `pusher` Python SDK (`scripts/test`
//! installs it with pip). Every script takes one JSON argument and prints JSON lines.
//!
//! ```ignore
//! let lines = clients::node("sdk.js", &json!({"appId": "1", "key": "k", "secret": "s",
//!     "ops": [{"op": "authorizeChannel", "socketId": "1.2", "channel": "private-a"}]})).await;
//! let mut client = clients::Script::node("pusher-js.js", &args);     // long-lived
//! client.send(&json!({"cmd": "subscribe", "channel": "orders"})).await; // a stdin line
//! let event = client.next().await;                                  // next JSON line
//! ```

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::WAIT;

/// tests/clients/, with its node_modules installed (else a panic saying how).
pub fn dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    assert!(
        dir.join("node_modules/pusher-js").is_dir(),
        "tests/clients/node_modules is missing: run scripts/test --deps-only \
         (or `npm ci` in tests/clients)"
    );
    dir
}

/// A running script; killed on drop.
pub struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    what: String,
}

impl Script {
    /// `node tests/clients/{script} '<arg JSON>'`.
    pub fn node(script: &str, arg: &Value) -> Script {
        Self::spawn("node", script, arg, &[])
    }

    /// `python3 tests/clients/{script} '<arg JSON>'`.
    pub fn python(script: &str, arg: &Value) -> Script {
        Self::spawn("python3", script, arg, &[])
    }

    /// `program` (`node`, `python3`) runs tests/clients/{script} with the one JSON
    /// argument and extra environment variables; stdin stays open for [`Script::send`].
    pub fn spawn(program: &str, script: &str, arg: &Value, env: &[(&str, &str)]) -> Script {
        let dir = dir();
        let mut child = Command::new(program)
            .arg(dir.join(script))
            .arg(arg.to_string())
            .envs(env.iter().copied())
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} {script}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        Script {
            stdin: child.stdin.take(),
            child,
            lines: BufReader::new(stdout).lines(),
            what: format!("{program} {script}"),
        }
    }

    /// Writes `command` as one line to the script's stdin.
    pub async fn send(&mut self, command: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        let line = format!("{command}\n");
        stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to script");
        stdin.flush().await.expect("flush script stdin");
    }

    /// The next JSON line that satisfies `wanted`, skipping others; panics at the
    /// end of the output or after `WAIT` without one.
    pub async fn next_where(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let line = tokio::time::timeout(left, self.next())
                .await
                .unwrap_or_else(|_| panic!("{}: no {what} within {WAIT:?}", self.what))
                .unwrap_or_else(|| panic!("{}: ended before {what}", self.what));
            if wanted(&line) {
                return line;
            }
        }
    }

    /// The next JSON line, or `None` at the end of the output; panics after `WAIT`.
    pub async fn next(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{}: no output line within {WAIT:?}", self.what))
            .expect("read script output")?;
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{}: output line is not JSON ({e}): {line}", self.what)),
        )
    }

    /// Every remaining line, after the script exited successfully.
    pub async fn finish(mut self) -> Vec<Value> {
        // End of input: long-lived scripts exit on it.
        drop(self.stdin.take());
        let mut lines = Vec::new();
        while let Some(line) = self.next().await {
            lines.push(line);
        }
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("script exit")
            .expect("wait for script");
        assert!(status.success(), "{} exited with {status}", self.what);
        lines
    }
}

/// Runs a Node script to its end and returns its JSON lines.
pub async fn node(script: &str, arg: &Value) -> Vec<Value> {
    Script::node(script, arg).finish().await
}

/// Runs a Python script to its end and returns its JSON lines.
pub async fn python(script: &str, arg: &Value) -> Vec<Value> {
    Script::python(script, arg).finish().await
}
