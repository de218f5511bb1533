//! Puts the git commit into the binary for `scenecast --version`.
//!
//! `SCENECAST_COMMIT` (e.g. a Docker build argument) wins; else `git rev-parse --short
//! HEAD` when this is a git checkout and git is installed; else "unknown" (a tarball, or
//! a Docker build context without `.git`). A build never fails for want of git.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SCENECAST_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    // Rebuild when HEAD moves (a commit, a checkout): HEAD and its reflog, wherever
    // git keeps them (a worktree's `.git` is a file pointing elsewhere).
    for file in ["HEAD", "logs/HEAD"] {
        if let Some(path) = git(&["rev-parse", "--git-path", file]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let from_env = std::env::var("SCENECAST_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = from_env
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SCENECAST_COMMIT={}", commit.trim());
}

fn git_commit() -> Option<String> {
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    commit
        .chars()
        .all(|c| c.is_ascii_hexdigit())
        .then_some(commit)
}

/// One line of git's output, or `None` without git or outside a repository.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}
