//! Guards of the code's shape: no production function longer than 100 lines; the node's
//! methods in two files, so that a feature is a part of the node with its own type
//! (docs/ARCHITECTURE.md, "Crates") rather than more `impl Node` blocks; and no import circles
//! among a production crate's files ("Layers inside the crates"); and the node's crates reading
//! the clock and randomness only through seams a simulation replaces.

use std::path::{Path, PathBuf};

use pkraft_testkit::code_shape::{function_lengths, has_impl_of, rust_files};
use pkraft_testkit::imports::{import_arrows, import_circles};

/// The crates that ship in the binary; the others (bench, chaos, lossyfs, testkit) are tools.
const PRODUCTION_CRATES: [&str; 11] = [
    "pkraft",
    "pkraft-dht",
    "pkraft-dns",
    "pkraft-http",
    "pkraft-limits",
    "pkraft-peer",
    "pkraft-raft",
    "pkraft-raft-storage",
    "pkraft-state",
    "pkraft-tasks",
    "pkraft-types",
];

/// Longest production function, in lines, signature to closing brace.
const FUNCTION_LINES_MAX: usize = 100;

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crates/")
        .to_path_buf()
}

/// A crate's production sources: its `src/` without the test modules kept in files of their
/// own (`tests.rs`, `…/tests/…`).
fn production_files(krate: &str) -> Vec<PathBuf> {
    rust_files(&crates_dir().join(krate).join("src"))
        .into_iter()
        .filter(|path| {
            !path.ends_with("tests.rs")
                && !path.components().any(|part| part.as_os_str() == "tests")
        })
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn no_production_function_is_longer_than_100_lines() {
    let mut long = Vec::new();
    let mut measured = 0;
    for krate in PRODUCTION_CRATES {
        for file in production_files(krate) {
            for function in function_lengths(&file, &read(&file)) {
                measured += 1;
                if function.lines > FUNCTION_LINES_MAX {
                    long.push(format!(
                        "{}:{} {} ({} lines)",
                        function.file.display(),
                        function.line,
                        function.name,
                        function.lines
                    ));
                }
            }
        }
    }
    // The guard reads something: the workspace has well over a thousand functions.
    assert!(measured > 1000, "only {measured} functions found");
    assert!(
        long.is_empty(),
        "break these into steps (at most {FUNCTION_LINES_MAX} lines each):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_node_has_methods_in_two_files_only() {
    let holding: Vec<String> = production_files("pkraft-raft")
        .into_iter()
        .filter(|file| has_impl_of(&read(file), "Node"))
        .filter_map(|file| Some(file.file_name()?.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(
        holding,
        ["node.rs", "start.rs"],
        "a feature of the node is a part with its own type (docs/ARCHITECTURE.md), not an \
         impl Node block"
    );
}

/// The crates a node's consensus and storage run in: a simulation of the node puts its own
/// clock and randomness in place of the system's for these (`pkraft_types::world`).
const SIMULATED_CRATES: [&str; 6] = [
    "pkraft-peer",
    "pkraft-raft",
    "pkraft-raft-storage",
    "pkraft-state",
    "pkraft-tasks",
    "pkraft-types",
];

/// Reads of the system's clock, randomness and real-time waits that a simulation cannot
/// replace, and the replacement each would need: monotonic time through tokio (which a paused
/// runtime simulates), the wall clock, randomness and file syncs through `pkraft_types::world`
/// (a simulated power cut keeps what the simulator's syncs, made in place of the kernel's, made
/// durable).
const ESCAPES: [(&str, &str); 17] = [
    ("std::time::Instant", "tokio::time::Instant"),
    ("SystemTime::now", "pkraft_types::world::unix_micros_now"),
    ("UNIX_EPOCH.elapsed", "pkraft_types::world::unix_micros_now"),
    ("rand::", "pkraft_types::world::random_u64"),
    ("OsRng", "pkraft_types::world::random_u64"),
    ("getrandom", "pkraft_types::world::random_u64"),
    ("fastrand", "pkraft_types::world::random_u64"),
    ("std::thread::sleep", "tokio::time::sleep"),
    ("recv_timeout", "a wait a simulation's clock drives"),
    (
        "spawn_blocking",
        "pkraft_tasks::blocking, which a simulation runs inline",
    ),
    (
        "tokio::fs",
        "std::fs in a `pkraft_tasks::blocking` job, or a file that works inline in a simulation \
         (pkraft_raft_storage::snapshot_data)",
    ),
    (".sync_data()", "pkraft_types::world::sync_data"),
    (".sync_all()", "pkraft_types::world::sync_all"),
    (
        "Database::create(",
        "pkraft_state::create_database, whose syncs go through the seam",
    ),
    (
        "Database::open(",
        "pkraft_state::create_database, whose syncs go through the seam",
    ),
    (
        "create_with_backend(",
        "pkraft_state::create_database, whose syncs go through the seam",
    ),
    ("File::sync_", "pkraft_types::world::sync_data or sync_all"),
];

/// An OS thread of the node's own works in real time beside a simulation's one thread: a file
/// that starts one must also run its work inline when `runs_blocking_work_inline` says so.
const THREAD_STARTS: [&str; 2] = ["thread::Builder::new()", "thread::spawn("];

/// Escapes allowed, each in one file only, with why. Every other escape in these files is
/// flagged as anywhere else.
const KNOWN_ESCAPES: [(&str, &str, &str); 9] = [
    (
        "pkraft-raft-storage/src/snapshot_data.rs",
        "tokio::fs",
        "the production side of the snapshot file's seam itself (tokio's file on the blocking \
         pool; std's, inline, in a simulation)",
    ),
    (
        "pkraft-state/src/writer.rs",
        "recv_timeout",
        "the state writer's thread times its commits in real time; a simulation runs the writer \
         inline, with a task on its clock for the timer",
    ),
    (
        "pkraft-tasks/src/blocking.rs",
        "spawn_blocking",
        "the blocking pool's side of the seam itself",
    ),
    (
        "pkraft-tasks/src/lib.rs",
        "std::thread::sleep",
        "a supervised OS thread (the DNS server's UDP loops, which a simulation does not run) \
         sleeps its restart backoff in real time",
    ),
    (
        "pkraft-types/src/world.rs",
        "SystemTime::now",
        "the system's side of the seam itself",
    ),
    (
        "pkraft-types/src/world.rs",
        "rand::",
        "the system's side of the seam itself",
    ),
    (
        "pkraft-types/src/world.rs",
        ".sync_data()",
        "the seam itself: the kernel's sync, or the simulation's in its place",
    ),
    (
        "pkraft-types/src/world.rs",
        ".sync_all()",
        "the seam itself: the kernel's sync, or the simulation's in its place",
    ),
    (
        "pkraft-state/src/synced_backend.rs",
        "create_with_backend(",
        "the seam itself: redb opened on the backend whose syncs go through the seam",
    ),
];

/// `code` with its comment lines blanked (the lines keep their numbers).
fn without_comment_lines(code: &str) -> String {
    code.lines()
        .map(|line| {
            if line.trim_start().starts_with("//") {
                ""
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `source` without its test-only items: each `#[cfg(test)]` and the item after it (a `use`
/// line, a function, a `mod tests { .. }`), wherever in the file it stands. Braces inside
/// strings or comments of a test item could end it early; the node's files have none.
fn without_test_items(source: &str) -> String {
    let mut kept = String::new();
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            kept.push_str(line);
            kept.push('\n');
            continue;
        }
        let mut depth = 0i64;
        for item in lines.by_ref() {
            let trimmed = item.trim();
            if trimmed.starts_with("#[") && depth == 0 {
                continue;
            }
            depth += item.matches('{').count() as i64 - item.matches('}').count() as i64;
            if depth <= 0 && (trimmed.ends_with(';') || trimmed.ends_with('}')) {
                break;
            }
        }
        // Keep the line numbers of what follows honest enough to find: mark the cut.
        kept.push_str("// (a test-only item)\n");
    }
    kept
}

#[test]
fn test_only_items_are_cut_wherever_they_stand() {
    let source = "use a;\n#[cfg(test)]\nuse b;\nfn c() {}\n#[cfg(test)]\n#[allow(x)]\nfn d() {\n    e();\n}\nfn f() {}\n#[cfg(test)]\nmod tests {\n    fn g() {}\n}\n";
    let kept = without_test_items(source);
    for present in ["use a;", "fn c()", "fn f()"] {
        assert!(kept.contains(present), "{present} lost: {kept}");
    }
    for cut in ["use b;", "fn d()", "e();", "fn g()"] {
        assert!(!kept.contains(cut), "{cut} kept: {kept}");
    }
}

#[test]
fn the_node_reads_the_clock_and_randomness_through_seams_a_simulation_replaces() {
    let mut escapes = Vec::new();
    let mut files_read = 0;
    let mut allowed_seen = [false; KNOWN_ESCAPES.len()];
    for krate in SIMULATED_CRATES {
        for file in production_files(krate) {
            let relative = file
                .strip_prefix(crates_dir())
                .unwrap_or(&file)
                .to_string_lossy()
                .into_owned();
            files_read += 1;
            let code = without_comment_lines(&without_test_items(&read(&file)));
            if THREAD_STARTS.iter().any(|start| code.contains(start))
                && !code.contains("runs_blocking_work_inline()")
            {
                escapes.push(format!(
                    "{relative}: starts an OS thread and has no inline mode \
                     (pkraft_types::world::runs_blocking_work_inline)"
                ));
            }
            for (number, line) in code.lines().enumerate() {
                // `use std::time::{Duration, Instant}` and the like: std's monotonic clock
                // imported by name.
                let std_instant_import = line.contains("std::time::")
                    && line.contains("Instant")
                    && line.contains("use ");
                for (escape, instead) in ESCAPES {
                    if !line.contains(escape) {
                        continue;
                    }
                    let allowed = KNOWN_ESCAPES
                        .iter()
                        .position(|(known, pattern, _)| *known == relative && *pattern == escape);
                    match allowed {
                        Some(index) => allowed_seen[index] = true,
                        None => escapes.push(format!(
                            "{relative}:{}: {escape} (use {instead})",
                            number + 1
                        )),
                    }
                }
                if std_instant_import && !line.contains("std::time::Instant") {
                    escapes.push(format!(
                        "{relative}:{}: std's Instant imported (use tokio::time::Instant)",
                        number + 1
                    ));
                }
            }
        }
    }
    assert!(files_read > 60, "only {files_read} files read");
    assert!(
        escapes.is_empty(),
        "the node reads the system's clock or randomness, or syncs a file, past the seams a \
         simulation replaces (pkraft_types::world):\n{}",
        escapes.join("\n")
    );
    let stale: Vec<_> = KNOWN_ESCAPES
        .iter()
        .zip(allowed_seen)
        .filter(|(_, seen)| !seen)
        .map(|((file, pattern, _), _)| format!("{file}: {pattern}"))
        .collect();
    assert!(
        stale.is_empty(),
        "allowed escapes no longer in their files (take them off KNOWN_ESCAPES): {stale:?}"
    );
}

/// The fields of `pub struct Node` in pkraft-raft's node.rs: a part of its own is a field,
/// a part reached through a group (`Elections`, `ReplicaChecks`) is not.
fn node_fields() -> Vec<String> {
    let source = read(&crates_dir().join("pkraft-raft/src/node.rs"));
    let body = source
        .split_once("pub struct Node {")
        .and_then(|(_, rest)| rest.split_once("\n}"))
        .map(|(body, _)| body)
        .expect("node.rs declares `pub struct Node { .. }`");
    body.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("//"))
        .filter_map(|line| line.split_once(':').map(|(name, _)| name))
        .filter_map(|name| name.split_whitespace().last())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_node_holds_at_most_ten_things() {
    let fields = node_fields();
    assert!(
        fields.contains(&"core".to_owned()) && fields.contains(&"tasks".to_owned()),
        "the field reader lost its way: {fields:?}"
    );
    assert!(
        fields.len() <= 10,
        "Node has {} fields (at most 10: group the parts a reader meets together, \
         docs/ARCHITECTURE.md): {fields:?}",
        fields.len()
    );
}

#[test]
fn no_production_crate_has_import_circles() {
    let mut circles = Vec::new();
    let mut arrows = 0;
    for krate in PRODUCTION_CRATES {
        let src = crates_dir().join(krate).join("src");
        arrows += import_arrows(&src)
            .values()
            .map(|to| to.len())
            .sum::<usize>();
        for circle in import_circles(&src) {
            circles.push(format!("{krate}: {}", circle.join(" <-> ")));
        }
    }
    // The guard reads something: the consensus crate alone has about a hundred arrows.
    assert!(arrows > 200, "only {arrows} imports between files found");
    assert!(
        circles.is_empty(),
        "files that import each other, directly or through others (move what both need \
         below both; docs/ARCHITECTURE.md, \"Layers inside the crates\"):\n{}",
        circles.join("\n")
    );
}

/// The layers of pkraft-raft's files as docs/ARCHITECTURE.md lists them ("Layers inside the
/// crates"): each top-level module's name and its layer, from the table's rows `| N | files |`.
fn pkraft_raft_layers() -> std::collections::BTreeMap<String, u32> {
    let architecture = read(&crates_dir().join("../docs/ARCHITECTURE.md"));
    let table = architecture
        .split_once("In\n`pkraft-raft` the files stand in these layers")
        .or_else(|| architecture.split_once("In `pkraft-raft` the files stand in these layers"))
        .expect("ARCHITECTURE.md lists pkraft-raft's layers")
        .1;
    let mut layers = std::collections::BTreeMap::new();
    for row in table.lines().skip_while(|line| !line.starts_with('|')) {
        let Some(row) = row.strip_prefix('|') else {
            break;
        };
        let Some((layer, files)) = row.split_once('|') else {
            continue;
        };
        let Ok(layer) = layer.trim().parse::<u32>() else {
            continue;
        };
        // The module names are the cells' leading code spans of each comma-separated item
        // (an item may explain itself after its name, in parentheses).
        for item in files.split(", `") {
            let name = item.trim_start_matches([' ', '`']);
            let name: String = name
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                layers.insert(name, layer);
            }
        }
    }
    layers
}

/// Goal: the consensus crate stays layered as docs/ARCHITECTURE.md says: every file imports
/// only files of lower layers (a submodule counts as its top-level module; the crate root's
/// re-exports are not an import), and every file has a layer in the table.
#[test]
fn pkraft_raft_files_import_only_from_layers_below() {
    let layers = pkraft_raft_layers();
    assert!(
        layers.len() > 20,
        "only {} modules in the table: {layers:?}",
        layers.len()
    );
    let arrows = import_arrows(&crates_dir().join("pkraft-raft").join("src"));
    let mut unlisted = std::collections::BTreeSet::new();
    let mut upward = Vec::new();
    let mut counted = 0;
    for (from, targets) in &arrows {
        let Some(from_top) = from.first() else {
            continue;
        };
        let Some(&from_layer) = layers.get(from_top) else {
            unlisted.insert(from_top.clone());
            continue;
        };
        for target in targets {
            let Some(target_top) = target.first() else {
                continue;
            };
            if target_top == from_top {
                continue;
            }
            let Some(&target_layer) = layers.get(target_top) else {
                unlisted.insert(target_top.clone());
                continue;
            };
            counted += 1;
            if target_layer >= from_layer {
                upward.push(format!(
                    "{} (layer {from_layer}) imports {} (layer {target_layer})",
                    from.join("::"),
                    target.join("::")
                ));
            }
        }
    }
    assert!(counted > 50, "only {counted} imports between modules found");
    assert!(
        unlisted.is_empty(),
        "modules without a layer in docs/ARCHITECTURE.md's table: {unlisted:?}"
    );
    assert!(
        upward.is_empty(),
        "imports that do not go down a layer (docs/ARCHITECTURE.md, \"Layers inside the \
         crates\"):\n{}",
        upward.join("\n")
    );
}

/// A planted bug (`pkraft_types::planted`) can run only in a simulator's tests: no manifest but
/// pkraft-types' (which declares the feature) and pkraft-sim's (which passes it on, off by
/// default) names `planted-bugs`, and no code but pkraft-sim's tests (and the module itself)
/// calls `plant`, so a build with the feature (`--all-features`) still leaves every bug out.
#[test]
fn only_the_simulator_can_turn_planted_bugs_on() {
    // Spelled in two, so that this file is not found calling it.
    let call = ["plant", "("].concat();
    let mut planting = Vec::new();
    for entry in std::fs::read_dir(crates_dir()).expect("crates/") {
        let dir = entry.expect("a crate dir").path();
        for file in rust_files(&dir) {
            let code = without_comment_lines(&read(&file));
            let calls = code
                .match_indices(call.as_str())
                .any(|(at, _)| !code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_'));
            if calls {
                let shown = file.strip_prefix(crates_dir()).unwrap_or(&file);
                planting.push(shown.display().to_string());
            }
        }
    }
    planting.sort();
    assert_eq!(
        planting,
        ["pkraft-sim/tests/planted.rs", "pkraft-types/src/planted.rs"]
    );
    let mut naming = Vec::new();
    for entry in std::fs::read_dir(crates_dir()).expect("crates/") {
        let manifest = entry.expect("a crate dir").path().join("Cargo.toml");
        if manifest.exists() && read(&manifest).contains("planted-bugs") {
            naming.push(
                manifest
                    .parent()
                    .and_then(|dir| dir.file_name())
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
    }
    naming.sort();
    assert_eq!(naming, ["pkraft-sim", "pkraft-types"]);
    let sim = read(&crates_dir().join("pkraft-sim/Cargo.toml"));
    let defaults = sim
        .lines()
        .filter(|line| line.trim_start().starts_with("default"));
    assert!(
        defaults.clone().all(|line| !line.contains("planted-bugs")),
        "pkraft-sim must not plant bugs by default: {:?}",
        defaults.collect::<Vec<_>>()
    );
    let root = read(&crates_dir().join("../Cargo.toml"));
    assert!(
        !root.contains("planted-bugs"),
        "the workspace must not turn planted-bugs on"
    );
}
