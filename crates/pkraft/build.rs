//! Sets `PKRAFT_COMMIT`, the commit this binary is built from, for `pkraft --version`, each
//! member's `/cluster/status` and the data dir's record of its builds: `PKRAFT_BUILD_COMMIT`
//! if set (a build from a release tarball, which has no `.git`: `make release` sets it), else
//! what `git` says of the clone the sources are in, else `unknown`. A build from a tree with
//! uncommitted changes reports the commit it started from.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PKRAFT_BUILD_COMMIT");
    let commit = std::env::var("PKRAFT_BUILD_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=PKRAFT_COMMIT={commit}");
}

/// The first 12 hex digits of HEAD, and the files whose change moves it watched (so a new
/// commit rebuilds this crate alone, not the workspace).
fn git_commit() -> Option<String> {
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    // HEAD names a branch (or a commit, detached); a commit on the branch changes its ref,
    // which may sit in packed-refs. `--git-path` finds them in a worktree too.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])?];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch])?);
    }
    watched.push(git(&["rev-parse", "--git-path", "packed-refs"])?);
    for path in watched {
        // A path that does not exist would make cargo run this script on every build.
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    Some(commit)
}

/// `git ARGS` in this crate's directory: its output's first line, if it succeeded.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let line = text.lines().next()?.trim().to_string();
    (!line.is_empty()).then_some(line)
}
