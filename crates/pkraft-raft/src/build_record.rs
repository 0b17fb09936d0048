//! The builds that wrote a data dir, in `<data_dir>/build`: the one that created it and the
//! last one started on it. An operator reads which release a data dir came from, and a node
//! says at start when another build ran on it before (an upgrade or a downgrade:
//! docs/OPERATIONS.md, "Upgrading"). Two lines of text:
//!
//! ```text
//! created_by 0.2.0 0123456789ab
//! last_started_by 0.2.0 0123456789ab
//! ```
//!
//! A data dir without the file was made by a development build before 0.2.0 (or is new). The
//! record is a report: no format decision is taken from it (each file carries its own
//! version). A record that does not parse is named in a warning and written anew, its creator
//! then unknown, never read as something it is not. A line of a key this build does not know
//! (`word`, `word FIELDS...`) is a later release's: kept as it is, so that a downgrade loses
//! nothing of the record. (0.2.0 took such a line for damage.)

use std::io::Write;
use std::path::Path;

use pkraft_types::BuildInfo;

use crate::node::sync_dir;

pub(crate) const BUILD_RECORD_FILE: &str = "build";

/// What `<data_dir>/build` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BuildRecord {
    pub created_by: BuildInfo,
    pub last_started_by: BuildInfo,
    /// The lines of keys a later release added, in their order, kept as they were.
    pub later_lines: Vec<String>,
}

/// What a data dir said of its builds before this start.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Before {
    /// No record: a new data dir, or one of a development build before 0.2.0.
    None,
    Record(BuildRecord),
    /// A record that does not parse (what is wrong, composed here).
    Unreadable(String),
}

/// Records, durably, that `build` starts on `data_dir` (opened: it exists); `held_a_log`: its
/// Raft log held entries before this start, so a data dir without a record was made by an
/// earlier build (one an earlier build made and that never held an entry is recorded as this
/// build's). Returns what the record said before.
pub(crate) fn record_start(
    data_dir: &Path,
    build: &BuildInfo,
    held_a_log: bool,
) -> std::io::Result<Before> {
    let path = data_dir.join(BUILD_RECORD_FILE);
    let before = match std::fs::read_to_string(&path) {
        Ok(text) => match parse(&text) {
            Ok(record) => Before::Record(record),
            Err(why) => Before::Unreadable(why),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Before::None,
        Err(e) => return Err(e),
    };
    let (created_by, later_lines) = match &before {
        Before::Record(record) => (record.created_by.clone(), record.later_lines.clone()),
        // A data dir of an earlier build holds a log already: its creator is not this build.
        Before::None if held_a_log => (unknown_build(), Vec::new()),
        Before::None => (build.clone(), Vec::new()),
        Before::Unreadable(_) => (unknown_build(), Vec::new()),
    };
    let record = BuildRecord {
        created_by,
        last_started_by: build.clone(),
        later_lines,
    };
    if before != Before::Record(record.clone()) {
        write(data_dir, &record)?;
    }
    Ok(before)
}

fn unknown_build() -> BuildInfo {
    BuildInfo {
        version: "unknown".to_string(),
        commit: BuildInfo::UNKNOWN_COMMIT.to_string(),
    }
}

fn parse(text: &str) -> Result<BuildRecord, String> {
    let mut created_by = None;
    let mut last_started_by = None;
    let mut later_lines = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (slot, version, commit) = match fields.as_slice() {
            [] => continue,
            ["created_by", version, commit] => (&mut created_by, version, commit),
            ["last_started_by", version, commit] => (&mut last_started_by, version, commit),
            [key, ..] if is_later_key(key) => {
                later_lines.push(line.trim().to_string());
                continue;
            }
            _ => {
                return Err(format!(
                    "line {} is not `created_by|last_started_by VERSION COMMIT`",
                    number + 1
                ));
            }
        };
        *slot = Some(BuildInfo {
            version: version.to_string(),
            commit: commit.to_string(),
        });
    }
    match (created_by, last_started_by) {
        (Some(created_by), Some(last_started_by)) => Ok(BuildRecord {
            created_by,
            last_started_by,
            later_lines,
        }),
        _ => Err("it lacks a created_by or a last_started_by line".to_string()),
    }
}

/// A key this build does not know, shaped as its own are (lower case and `_`): a later
/// release's. Anything else on a line of its own is damage.
fn is_later_key(key: &str) -> bool {
    !matches!(key, "created_by" | "last_started_by")
        && !key.is_empty()
        && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// Writes the record to a temporary file, syncs it and renames it into place: a crash leaves
/// the old record or the new one.
fn write(data_dir: &Path, record: &BuildRecord) -> std::io::Result<()> {
    let tmp = data_dir.join(format!("{BUILD_RECORD_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    writeln!(
        file,
        "created_by {} {}",
        record.created_by.version, record.created_by.commit
    )?;
    writeln!(
        file,
        "last_started_by {} {}",
        record.last_started_by.version, record.last_started_by.commit
    )?;
    for line in &record.later_lines {
        writeln!(file, "{line}")?;
    }
    pkraft_types::world::sync_all(&file)?;
    std::fs::rename(&tmp, data_dir.join(BUILD_RECORD_FILE))?;
    sync_dir(data_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(version: &str, commit: &str) -> BuildInfo {
        BuildInfo {
            version: version.to_string(),
            commit: commit.to_string(),
        }
    }

    #[test]
    fn a_new_data_dir_records_its_creator_and_each_later_build() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = build("0.2.0", "aaaaaaaaaaaa");
        assert_eq!(
            record_start(dir.path(), &first, false).expect("record"),
            Before::None
        );
        let second = build("0.3.0", "bbbbbbbbbbbb");
        assert_eq!(
            record_start(dir.path(), &second, true).expect("record"),
            Before::Record(BuildRecord {
                created_by: first.clone(),
                last_started_by: first.clone(),
                later_lines: Vec::new(),
            })
        );
        let text = std::fs::read_to_string(dir.path().join(BUILD_RECORD_FILE)).expect("read");
        assert_eq!(
            text,
            "created_by 0.2.0 aaaaaaaaaaaa\nlast_started_by 0.3.0 bbbbbbbbbbbb\n"
        );
    }

    #[test]
    fn a_used_data_dir_without_a_record_was_created_by_an_unknown_build() {
        let dir = tempfile::tempdir().expect("tempdir");
        record_start(dir.path(), &build("0.2.0", "aaaaaaaaaaaa"), true).expect("record");
        let text = std::fs::read_to_string(dir.path().join(BUILD_RECORD_FILE)).expect("read");
        assert_eq!(
            text,
            "created_by unknown unknown\nlast_started_by 0.2.0 aaaaaaaaaaaa\n"
        );
    }

    #[test]
    fn the_lines_of_a_later_release_are_kept_through_a_downgrade() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(BUILD_RECORD_FILE),
            "created_by 0.2.0 aaaaaaaaaaaa\nlast_started_by 0.4.0 cccccccccccc\n\
             downgraded_from 0.4.0 cccccccccccc 2027-01-01\nsealed\n",
        )
        .expect("write");
        let before =
            record_start(dir.path(), &build("0.3.0", "bbbbbbbbbbbb"), true).expect("record");
        assert!(
            matches!(&before, Before::Record(record) if record.later_lines.len() == 2),
            "{before:?}"
        );
        let text = std::fs::read_to_string(dir.path().join(BUILD_RECORD_FILE)).expect("read");
        assert_eq!(
            text,
            "created_by 0.2.0 aaaaaaaaaaaa\nlast_started_by 0.3.0 bbbbbbbbbbbb\n\
             downgraded_from 0.4.0 cccccccccccc 2027-01-01\nsealed\n"
        );
    }

    #[test]
    fn a_damaged_record_is_named_and_written_anew() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(BUILD_RECORD_FILE),
            "created_by 0.2.0\n\u{0}\u{0}",
        )
        .expect("write");
        let before =
            record_start(dir.path(), &build("0.2.0", "aaaaaaaaaaaa"), true).expect("record");
        assert!(
            matches!(&before, Before::Unreadable(why) if why.contains("line 1")),
            "{before:?}"
        );
        let text = std::fs::read_to_string(dir.path().join(BUILD_RECORD_FILE)).expect("read");
        assert!(text.starts_with("created_by unknown unknown\n"), "{text}");
    }
}
