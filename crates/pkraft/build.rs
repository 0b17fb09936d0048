//! Sets `PKRAFT_COMMIT`, the commit this binary is built from, for `pkraft --version`, each
//! member's `/cluster/status` and the data dir's record of its builds: `PKRAFT_BUILD_COMMIT`
//! if set (a build from a release tarball, which has no `.git`: `make release` sets it), else
//! what `git` says of the clone the sources are in, else `unknown`. A build from a tree with
//! uncommitted changes reports the commit it started from.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PKRAFT_BUILD_COMMIT");
    let given = std::env::var("PKRAFT_BUILD_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty());
    if let Some(commit) = &given {
        // It goes into `--version`, the status and the data dir's record, one word each.
        assert!(
            commit.bytes().all(|b| b.is_ascii_hexdigit()),
            "PKRAFT_BUILD_COMMIT must be hex digits (a commit), not {commit:?}"
        );
    }
    let commit = given
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=PKRAFT_COMMIT={commit}");
}

/// The first 12 hex digits of HEAD, and the files whose change moves it watched (so a new
/// commit rebuilds this crate alone, not the workspace). Only the clone these sources are the
/// root of: sources exported into some other repository's tree are not its commit.
fn git_commit() -> Option<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let top = git(&["rev-parse", "--show-toplevel"])?;
    if std::fs::canonicalize(&top).ok()? != std::fs::canonicalize(&root).ok()? {
        return None;
    }
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    // HEAD names a branch (or a commit, detached). Every move of HEAD (a commit, a checkout, a
    // reset) appends to its reflog, whichever way the ref itself is stored (a loose file, or
    // packed-refs, which a commit does not touch); HEAD and the loose ref are watched too, for
    // a clone without reflogs. `--git-path` finds them in a worktree too.
    let mut watched = vec![
        git(&["rev-parse", "--git-path", "HEAD"])?,
        git(&["rev-parse", "--git-path", "logs/HEAD"])?,
    ];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch])?);
    }
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
