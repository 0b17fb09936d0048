//! The layering guards' reading of a crate's manifest: which pkraft crates it depends on.

/// The pkraft crates `manifest` (a `Cargo.toml`'s text) lists under `[dependencies]` (and
/// target-specific dependencies), sorted; dev- and build-dependencies are not counted.
pub fn pkraft_dependencies(manifest: &str) -> Vec<String> {
    let mut in_dependencies = false;
    let mut ours = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]"
                || (line.starts_with("[target.") && line.ends_with(".dependencies]"));
            continue;
        }
        if in_dependencies
            && let Some((name, _)) = line.split_once(['.', ' ', '='])
            && name.starts_with("pkraft")
        {
            ours.push(name.to_string());
        }
    }
    ours.sort();
    ours
}

#[cfg(test)]
mod tests {
    use super::pkraft_dependencies;

    #[test]
    fn only_the_pkraft_crates_of_dependencies_are_read() {
        let manifest = "[package]\nname = \"pkraft-x\"\n\n[dependencies]\npkraft-state.workspace = true\n\
                        pkraft-types = { path = \"../t\" }\nserde.workspace = true\n\n\
                        [target.'cfg(unix)'.dependencies]\npkraft-tasks.workspace = true\n\n\
                        [dev-dependencies]\npkraft-testkit.workspace = true\n";
        assert_eq!(
            pkraft_dependencies(manifest),
            ["pkraft-state", "pkraft-tasks", "pkraft-types"]
        );
    }
}
