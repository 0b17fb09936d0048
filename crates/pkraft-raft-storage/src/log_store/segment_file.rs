//! One segment file: its name (`<first index, 20 digits>.seg`) and what an open log knows of
//! it (the file, and where each of its records starts). Below `scan.rs`, which builds a
//! [`Segment`] for each file at open, and `segments.rs`, which appends to them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record::Format;

pub(crate) struct Segment {
    pub(crate) first_index: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<File>,
    pub(crate) format: Format,
    /// Start of each record; record `i` holds index `first_index + i`.
    pub(crate) offsets: Vec<u64>,
    /// End of the last record, where the next one goes.
    pub(crate) end: u64,
}

impl Segment {
    /// The index the next record in this segment gets.
    pub(crate) fn next_index(&self) -> u64 {
        self.first_index + self.offsets.len() as u64
    }

    pub(crate) fn last_index(&self) -> Option<u64> {
        self.next_index()
            .checked_sub(1)
            .filter(|_| !self.offsets.is_empty())
    }

    pub(crate) fn record_end(&self, position: usize) -> u64 {
        self.offsets.get(position + 1).copied().unwrap_or(self.end)
    }
}

pub(crate) fn segment_file_name(first_index: u64) -> String {
    format!("{first_index:020}.seg")
}

pub(crate) fn segment_first_index(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}
