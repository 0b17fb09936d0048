//! The code-shape guards' reading of Rust sources (rustfmt's layout): how long each function
//! is, and which files hold an `impl` block of a type. Line-based, on purpose: it needs no
//! parser, and rustfmt puts a function's closing brace on a line of its own at the
//! indentation of its `fn`.

use std::path::{Path, PathBuf};

/// A function and its length in lines, signature to closing brace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionLength {
    pub file: PathBuf,
    /// 1-based line of the `fn`.
    pub line: usize,
    pub name: String,
    pub lines: usize,
}

/// The lines of `source` that are production code: `#[cfg(test)] mod … { … }` blocks left out
/// (their lines become empty, so line numbers stay those of the file).
pub fn production_lines(source: &str) -> Vec<&str> {
    let lines: Vec<&str> = source.lines().collect();
    let mut kept = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let opens_test_module = lines[i].trim() == "#[cfg(test)]"
            && lines.get(i + 1).is_some_and(|next| {
                let next = next.trim_start();
                next.starts_with("mod ") && next.trim_end().ends_with('{')
            });
        if !opens_test_module {
            kept.push(lines[i]);
            i += 1;
            continue;
        }
        let indent = indentation(lines[i + 1]);
        let mut end = i + 2;
        while end < lines.len() && !closes_at(lines[end], indent) {
            end += 1;
        }
        let blanked = end.min(lines.len() - 1) + 1 - i;
        kept.extend(std::iter::repeat_n("", blanked));
        i = end + 1;
    }
    kept
}

/// Every function of `source` (production lines only) with its length.
pub fn function_lengths(file: &Path, source: &str) -> Vec<FunctionLength> {
    let lines = production_lines(source);
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(name) = function_name(line) else {
            continue;
        };
        let indent = indentation(line);
        // The line that opens the body; a declaration without one (a trait's) has none.
        let Some(open) = (start..lines.len()).find(|at| {
            let text = lines[*at].trim_end();
            text.ends_with('{') || text.ends_with(';') || text.ends_with("{}")
        }) else {
            continue;
        };
        let opened = lines[open].trim_end();
        if opened.ends_with(';') || opened.ends_with("{}") {
            continue;
        }
        let Some(end) = (open + 1..lines.len()).find(|at| closes_at(lines[*at], indent)) else {
            continue;
        };
        found.push(FunctionLength {
            file: file.to_path_buf(),
            line: start + 1,
            name,
            lines: end - start + 1,
        });
    }
    found
}

/// Whether `source` (production lines only) holds an `impl <type_name> {` block, or an
/// `impl … for <type_name>` of a trait.
pub fn has_impl_of(source: &str, type_name: &str) -> bool {
    production_lines(source).iter().any(|line| {
        let line = line.trim_start();
        line.starts_with("impl ")
            && (line.starts_with(&format!("impl {type_name} "))
                || line.contains(&format!(" for {type_name} ")))
    })
}

/// The `.rs` files under `dir`, sorted.
pub fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn closes_at(line: &str, indent: usize) -> bool {
    indentation(line) == indent && line.trim_start().starts_with('}')
}

/// The name of the function `line` declares, if it declares one.
fn function_name(line: &str) -> Option<String> {
    let mut rest = line.trim_start();
    for prefix in ["pub(crate) ", "pub(super) ", "pub "] {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
    }
    for qualifier in ["const ", "async ", "unsafe "] {
        rest = rest.strip_prefix(qualifier).unwrap_or(rest);
    }
    let rest = rest.strip_prefix("fn ")?;
    let name: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_are_measured_signature_to_closing_brace() {
        let source = "fn short() {\n    one();\n}\n\npub(crate) async fn longer(\n    a: u8,\n) -> u8 {\n    if a > 0 {\n        a\n    } else {\n        0\n    }\n}\n\ntrait T {\n    fn declared(&self);\n    fn empty(&self) {}\n}\n";
        let lengths = function_lengths(Path::new("x.rs"), source);
        let named: Vec<(&str, usize, usize)> = lengths
            .iter()
            .map(|f| (f.name.as_str(), f.line, f.lines))
            .collect();
        assert_eq!(named, [("short", 1, 3), ("longer", 5, 9)]);
    }

    #[test]
    fn test_modules_are_left_out_and_impls_found() {
        let source = "impl Node {\n    fn a() {}\n}\n#[cfg(test)]\nmod tests {\n    impl Other {}\n    fn long() {\n    }\n}\nimpl Debug for Node {\n}\n";
        assert!(function_lengths(Path::new("x.rs"), source).is_empty());
        assert!(has_impl_of(source, "Node"));
        assert!(!has_impl_of(source, "Other"));
        assert!(has_impl_of("impl std::fmt::Debug for Node {\n}\n", "Node"));
        assert!(!has_impl_of("impl NodeMetrics {\n}\n", "Node"));
    }
}
