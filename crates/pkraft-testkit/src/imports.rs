//! Which files of a crate import which, and the circles among them: the `make test` side of
//! `../shared/tools/crate_cycles.py`, so that the crates stay layered (docs/ARCHITECTURE.md,
//! "Layers inside the crates"). Line-based like `code_shape`: an arrow runs from a file to the
//! file that defines the longest prefix of each `crate::…`, `super::…` or `self::…` path its
//! production lines name (grouped imports expanded; comment lines and `#[cfg(test)]` modules
//! left out).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::code_shape::{production_lines, rust_files};

/// A module path inside the crate (`["log_store", "segments"]`; the crate root is empty).
pub type ModulePath = Vec<String>;

/// The import circles among the files of the crate whose sources are in `src`: each circle a
/// sorted list of module paths (`log_store::damage`), two or more. Files named `tests.rs` are
/// test code and left out.
pub fn import_circles(src: &Path) -> Vec<Vec<String>> {
    let arrows = import_arrows(src);
    strongly_connected(&arrows)
        .into_iter()
        .filter(|component| component.len() > 1)
        .map(|component| component.into_iter().map(|path| display(&path)).collect())
        .collect()
}

/// Every file's module path and the files it imports (module paths).
pub fn import_arrows(src: &Path) -> BTreeMap<ModulePath, BTreeSet<ModulePath>> {
    let files: BTreeMap<ModulePath, std::path::PathBuf> = rust_files(src)
        .into_iter()
        .filter(|file| !file.ends_with("tests.rs"))
        .filter_map(|file| Some((module_path(src, &file)?, file)))
        .collect();
    let mut arrows = BTreeMap::new();
    for (module, file) in &files {
        let source = std::fs::read_to_string(file).unwrap_or_default();
        let code: String = production_lines(&source)
            .into_iter()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let targets: BTreeSet<ModulePath> = named_paths(&code)
            .into_iter()
            .filter_map(|(anchor, rest)| absolute(module, &anchor, rest))
            .filter_map(|path| longest_file_prefix(&files, &path))
            .filter(|target| target != module)
            .collect();
        arrows.insert(module.clone(), targets);
    }
    arrows
}

fn display(path: &ModulePath) -> String {
    if path.is_empty() {
        "(root)".to_string()
    } else {
        path.join("::")
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; `lib.rs` and `main.rs` the root.
fn module_path(src: &Path, file: &Path) -> Option<ModulePath> {
    let relative = file.strip_prefix(src).ok()?;
    let mut parts: ModulePath = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    let stem = parts.pop()?.strip_suffix(".rs")?.to_string();
    if !matches!(stem.as_str(), "mod" | "lib" | "main") {
        parts.push(stem);
    }
    Some(parts)
}

/// Every `crate::`, `super::` and `self::` path in `code`: its anchor and its segments, a
/// grouped import (`crate::a::{b, c::{d, e}}`) as one path per leaf.
fn named_paths(code: &str) -> Vec<(String, ModulePath)> {
    let mut paths = Vec::new();
    for anchor in ["crate", "super", "self"] {
        let needle = format!("{anchor}::");
        let mut from = 0;
        while let Some(found) = code[from..].find(&needle) {
            let start = from + found;
            from = start + needle.len();
            let preceded_by_word = code[..start]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            if preceded_by_word {
                continue;
            }
            for rest in use_tree(&code[from..]) {
                paths.push((anchor.to_string(), rest));
            }
        }
    }
    paths
}

/// The paths a use tree (or an expression path) at the start of `text` names.
fn use_tree(text: &str) -> Vec<ModulePath> {
    let text = text.trim_start();
    if let Some(group) = text.strip_prefix('{') {
        return split_group(group).into_iter().flat_map(use_tree).collect();
    }
    let name: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if name.is_empty() {
        return vec![Vec::new()];
    }
    let after = &text[name.len()..];
    match after.strip_prefix("::") {
        Some(deeper) => use_tree(deeper)
            .into_iter()
            .map(|mut rest| {
                rest.insert(0, name.clone());
                rest
            })
            .collect(),
        None => vec![vec![name]],
    }
}

/// The top-level branches of a group whose `{` was just read, up to its matching `}`.
fn split_group(group: &str) -> Vec<&str> {
    let mut branches = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                branches.push(&group[start..at]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                branches.push(&group[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    branches
}

/// The crate-absolute path `anchor::rest` names from the file of `module`.
fn absolute(module: &ModulePath, anchor: &str, rest: ModulePath) -> Option<ModulePath> {
    let mut path = match anchor {
        "crate" => Vec::new(),
        "super" => module.split_last()?.1.to_vec(),
        _ => module.clone(),
    };
    for segment in rest {
        if segment == "super" {
            path.pop()?;
        } else {
            path.push(segment);
        }
    }
    Some(path)
}

fn longest_file_prefix(
    files: &BTreeMap<ModulePath, std::path::PathBuf>,
    path: &ModulePath,
) -> Option<ModulePath> {
    (0..=path.len())
        .rev()
        .map(|len| path[..len].to_vec())
        .find(|prefix| files.contains_key(prefix))
}

/// Tarjan's strongly connected components of `arrows`, each sorted.
fn strongly_connected(arrows: &BTreeMap<ModulePath, BTreeSet<ModulePath>>) -> Vec<Vec<ModulePath>> {
    struct Walk<'a> {
        arrows: &'a BTreeMap<ModulePath, BTreeSet<ModulePath>>,
        index: BTreeMap<&'a ModulePath, usize>,
        low: BTreeMap<&'a ModulePath, usize>,
        stack: Vec<&'a ModulePath>,
        on_stack: BTreeSet<&'a ModulePath>,
        components: Vec<Vec<ModulePath>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, node: &'a ModulePath) {
            let number = self.index.len();
            self.index.insert(node, number);
            self.low.insert(node, number);
            self.stack.push(node);
            self.on_stack.insert(node);
            for next in self.arrows.get(node).into_iter().flatten() {
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let lowest = self.low[node].min(self.low[next]);
                    self.low.insert(node, lowest);
                } else if self.on_stack.contains(next) {
                    let lowest = self.low[node].min(self.index[next]);
                    self.low.insert(node, lowest);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(member) = self.stack.pop() {
                    self.on_stack.remove(member);
                    component.push(member.clone());
                    if member == node {
                        break;
                    }
                }
                component.sort();
                self.components.push(component);
            }
        }
    }
    let mut walk = Walk {
        arrows,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for node in arrows.keys() {
        if !walk.index.contains_key(node) {
            walk.visit(node);
        }
    }
    walk.components
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    /// A circle through a grouped import and a `super::` path is found; an import that only
    /// goes down is not a circle, nor is a comment or a test module's import.
    #[test]
    fn finds_a_circle_and_only_a_circle() {
        let dir = tempfile_dir();
        let src = dir.join("src");
        write(&src, "lib.rs", "mod a;\nmod b;\nmod low;\n");
        write(
            &src,
            "a.rs",
            "use crate::{low::Thing, b::{self, Other}};\n// crate::ignored::Path\n",
        );
        write(&src, "b.rs", "fn f() { super::a::g(); crate::low::h() }\n");
        write(
            &src,
            "low.rs",
            "pub struct Thing;\n#[cfg(test)]\nmod tests {\n    use crate::a::g;\n}\n",
        );
        assert_eq!(
            import_circles(&src),
            vec![vec!["a".to_string(), "b".to_string()]]
        );
        write(&src, "b.rs", "fn f() { crate::low::h() }\n");
        assert!(import_circles(&src).is_empty());
        let arrows = import_arrows(&src);
        let a = vec!["a".to_string()];
        let low = vec!["low".to_string()];
        assert!(arrows[&a].contains(&low));
        assert!(
            arrows[&low].is_empty(),
            "a test module's import is no arrow"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "pkraft-imports-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }
}
