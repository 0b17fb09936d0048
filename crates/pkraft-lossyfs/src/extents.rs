//! The unsynced bytes of one file: non-overlapping extents by offset, written over the file's
//! durable content when it is read or synced.

use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub(crate) struct Extents {
    /// offset → bytes; no two extents overlap or touch (touching ones are merged).
    by_offset: BTreeMap<u64, Vec<u8>>,
}

impl Extents {
    /// Bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.by_offset.values().map(|data| data.len() as u64).sum()
    }

    pub(crate) fn clear(&mut self) {
        self.by_offset.clear();
    }

    /// Every extent, in order of offset.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.by_offset
            .iter()
            .map(|(offset, data)| (*offset, data.as_slice()))
    }

    /// Records `data` at `offset`, over whatever was there.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        // The common case, an append or an overwrite inside one extent that reaches no other:
        // extend that extent in place (a log written in small appends stays linear).
        let next_start = self.by_offset.range(offset + 1..).next().map(|(s, _)| *s);
        if let Some((start, existing)) = self.by_offset.range_mut(..=offset).next_back() {
            let existing_end = *start + existing.len() as u64;
            if existing_end >= offset && next_start.is_none_or(|next| next > end) {
                let at = (offset - *start) as usize;
                let overlap = existing.len().saturating_sub(at).min(data.len());
                existing[at..at + overlap].copy_from_slice(&data[..overlap]);
                existing.extend_from_slice(&data[overlap..]);
                return;
            }
        }
        // Otherwise merge every extent that overlaps or touches [offset, end) into one.
        let touching: Vec<u64> = self
            .by_offset
            .range(..=end)
            .filter(|(start, bytes)| **start + bytes.len() as u64 >= offset)
            .map(|(start, _)| *start)
            .collect();
        let mut merged_start = offset;
        let mut merged_end = end;
        let mut parts = Vec::with_capacity(touching.len());
        for start in touching {
            if let Some(bytes) = self.by_offset.remove(&start) {
                merged_start = merged_start.min(start);
                merged_end = merged_end.max(start + bytes.len() as u64);
                parts.push((start, bytes));
            }
        }
        let mut merged = vec![0u8; (merged_end - merged_start) as usize];
        for (start, bytes) in parts {
            let at = (start - merged_start) as usize;
            merged[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        let at = (offset - merged_start) as usize;
        merged[at..at + data.len()].copy_from_slice(data);
        self.by_offset.insert(merged_start, merged);
    }

    /// Drops everything at or beyond `len` (a truncation).
    pub(crate) fn truncate(&mut self, len: u64) {
        let beyond: Vec<u64> = self.by_offset.range(len..).map(|(s, _)| *s).collect();
        for start in beyond {
            self.by_offset.remove(&start);
        }
        if let Some((start, bytes)) = self.by_offset.range_mut(..len).next_back() {
            let keep = (len - *start) as usize;
            bytes.truncate(keep);
        }
    }

    /// Copies the extents' bytes that fall in `[offset, offset + buf.len())` into `buf`.
    pub(crate) fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        // The extent that starts before `offset` may reach into the range.
        let first = self
            .by_offset
            .range(..=offset)
            .next_back()
            .map_or(offset, |(s, _)| *s);
        for (start, bytes) in self.by_offset.range(first..end) {
            let bytes_end = start + bytes.len() as u64;
            let from = offset.max(*start);
            let to = end.min(bytes_end);
            if from >= to {
                continue;
            }
            let src = &bytes[(from - start) as usize..(to - start) as usize];
            buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(src);
        }
    }

    /// The bytes at `[offset, offset + len)` if the extents hold all of them.
    pub(crate) fn get(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let (start, bytes) = self.by_offset.range(..=offset).next_back()?;
        let at = (offset - start) as usize;
        bytes.get(at..at.checked_add(len)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(extents: &Extents, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![b'.'; len];
        extents.overlay(offset, &mut buf);
        buf
    }

    #[test]
    fn appends_grow_one_extent() {
        let mut e = Extents::default();
        e.write(0, b"ab");
        e.write(2, b"cd");
        e.write(4, b"e");
        assert_eq!(e.iter().count(), 1);
        assert_eq!(read(&e, 0, 6), b"abcde.");
    }

    #[test]
    fn overlapping_and_touching_writes_merge() {
        let mut e = Extents::default();
        e.write(10, b"xxxx");
        e.write(0, b"aaaa");
        e.write(20, b"zz");
        e.write(3, b"BBBBBBBB"); // 3..11: joins the first two
        assert_eq!(e.iter().count(), 2);
        assert_eq!(read(&e, 0, 16), b"aaaBBBBBBBBxxx..");
        e.write(14, b"yyyyyy"); // 14..20 touches 10..14 and 20..22
        assert_eq!(e.iter().count(), 1);
        assert_eq!(read(&e, 0, 23), b"aaaBBBBBBBBxxxyyyyyyzz.");
        assert_eq!(e.bytes(), 22);
    }

    #[test]
    fn an_overwrite_inside_an_extent_changes_it_in_place() {
        let mut e = Extents::default();
        e.write(0, b"0123456789");
        e.write(20, b"far");
        e.write(2, b"ab");
        assert_eq!(read(&e, 0, 10), b"01ab456789");
        assert_eq!(e.iter().count(), 2);
    }

    #[test]
    fn truncate_cuts_extents() {
        let mut e = Extents::default();
        e.write(0, b"0123");
        e.write(10, b"abcd");
        e.truncate(2);
        assert_eq!(read(&e, 0, 14), b"01............");
        assert_eq!(e.bytes(), 2);
    }

    #[test]
    fn get_returns_only_whole_ranges() {
        let mut e = Extents::default();
        e.write(4, b"abcd");
        assert_eq!(e.get(5, 2), Some(&b"bc"[..]));
        assert_eq!(e.get(6, 4), None);
        assert_eq!(e.get(0, 1), None);
    }
}
