//! Guards of the code's shape: no production function longer than 100 lines; the node's
//! methods in two files, so that a feature is a part of the node with its own type
//! (docs/ARCHITECTURE.md, "Crates") rather than more `impl Node` blocks; and no import circles
//! among a production crate's files ("Layers inside the crates").

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
