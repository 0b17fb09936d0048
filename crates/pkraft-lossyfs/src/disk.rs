//! The disk model: what the programs on the mount see, and what a power cut leaves.
//!
//! Two layers, as in LazyFS:
//! - **durable**: each file's content as of its last fsync, kept in a backing file named by its
//!   inode number; each directory's entries as of its last fsync, kept in memory;
//! - **volatile**: each file's writes since then ([`Extents`], in memory, with its current length
//!   and how far a truncation reached into the durable content), and each directory's current
//!   entries.
//!
//! Reads see the volatile layer over the durable one. `fsync` of a file moves its volatile bytes
//! to its backing file; `fsync` of a directory makes its current entries durable (nothing else
//! does: a file created, renamed or unlinked without a directory fsync is undone by a cut, like
//! on a file system that promises only what POSIX does). A cut drops the volatile layer
//! everywhere: every file goes back to its durable content and every directory to its durable
//! entries, and files and directories no durable entry reaches are gone.
//!
//! This model has no FUSE in it (`fs.rs` adapts it), so it is tested without a mount.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, INodeNo};

use crate::extents::Extents;

/// How a power cut treats the last write that was not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Every unsynced byte is lost.
    Clean,
    /// A torn write: the first `keep` bytes of the last unsynced write (if its file still holds
    /// them unsynced) reach the disk; everything else unsynced is lost.
    TornLastWrite { keep: usize },
    /// A write torn out of order: the last unsynced write's bytes from `skip` on reach the
    /// disk and its first `skip` do not (a disk that wrote a later sector and not an earlier
    /// one); those read back as what the file durably held there, zeros past its end.
    TornOutOfOrder { skip: usize },
}

/// What a cut dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Unsynced file bytes dropped.
    pub dropped_bytes: u64,
    /// Files and directories gone because no durable directory entry reached them.
    pub dropped_entries: usize,
    /// Bytes of the torn write that were kept.
    pub torn_bytes: usize,
    /// Bad writes ([`BadWrite`]) that the cut revealed.
    pub bad_writes: usize,
}

/// A write that the disk acknowledged (its fsync succeeded) and did not store as asked, as
/// disks do ("Protocol-Aware Recovery for Consensus-Based Storage", FAST 2018; TigerBeetle's
/// storage faults). The disk's cache keeps answering reads with what was written, so the
/// damage shows only once the cache is gone: at the next cut, or at
/// [`Disk::reveal_bad_write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadWrite {
    /// The bytes never reached the platter: their range reads what the file durably held there
    /// before (zeros past its former end; the file's length, metadata, did move on).
    Lost,
    /// The bytes landed `back` bytes earlier in the same file (offset 0 at the least), over
    /// what was durable there; their own range reads what it held before, as for `Lost`.
    Misdirected { back: u64 },
}

/// Where a bad write hit, once an fsync took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadWriteReport {
    /// The file's name (its last path component).
    pub file: OsString,
    /// The first byte the bad write should have stored, and how many bytes it held.
    pub offset: u64,
    pub len: u64,
    /// Fsyncs of that file since, none of which wrote over the bad write's bytes: with at
    /// least one, a log's bad append is followed by a later one (damage, not a torn tail).
    pub later_syncs: u32,
}

/// An armed bad write, and once an fsync took it, what the platter must show at the reveal.
#[derive(Debug)]
pub(crate) struct BadWriteFault {
    kind: BadWrite,
    /// The fault is taken by the next fsync of a file whose name ends so.
    name_suffix: OsString,
    taken: Option<TakenBadWrite>,
}

#[derive(Debug)]
struct TakenBadWrite {
    ino: u64,
    report: BadWriteReport,
    /// Each extent the fsync stored: its offset, what the file durably held there before, and
    /// the bytes written.
    extents: Vec<(u64, Vec<u8>, Vec<u8>)>,
}

/// Faults the disk answers with, on command.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Faults {
    /// Every fsync fails with EIO, and the unsynced data of its file is lost (as Linux marks the
    /// pages clean after a failed writeback: a later fsync succeeds without writing them).
    pub(crate) fsync_fails: bool,
    /// The disk's size in bytes, if limited: a write that would make the files' lengths add up
    /// to more fails with ENOSPC, and so does creating an entry on a disk with nothing free.
    pub(crate) capacity: Option<u64>,
    /// `statfs` answers a size of zero blocks, as Jepsen's LazyFS and several FUSE and network
    /// file systems do: the free space is unknown.
    pub(crate) size_unknown: bool,
}

#[derive(Debug)]
struct Node {
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Open handles (their ids): a file unlinked while open stays readable until its last
    /// release. Ids, not a count: the kernel releases a killed process's handles whenever it
    /// gets to it, possibly after a cut and after the next process opened the same file.
    handles: HashSet<u64>,
}

#[derive(Debug)]
enum Kind {
    File(FileData),
    Dir(DirEntries),
}

#[derive(Debug)]
struct FileData {
    /// The backing file's length (the content as of the last fsync).
    durable_len: u64,
    /// Durable bytes at or beyond this offset are hidden (a truncation since the last fsync).
    durable_visible: u64,
    /// The length programs see.
    len: u64,
    unsynced: Extents,
    /// The durable content: `backing_dir/<inode number>`.
    backing: File,
}

#[derive(Debug, Default)]
struct DirEntries {
    current: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
    parent: u64,
}

/// The last write, for a torn cut.
#[derive(Debug, Clone, Copy)]
struct LastWrite {
    ino: u64,
    offset: u64,
    len: usize,
}

/// Attributes set by `setattr` (`None` leaves one as it is).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SetAttr {
    pub(crate) mode: Option<u32>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) size: Option<u64>,
    pub(crate) mtime: Option<SystemTime>,
}

pub(crate) const ROOT: u64 = 1;

#[derive(Debug)]
pub(crate) struct Disk {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    backing_dir: PathBuf,
    /// Between a cut and the next power-on every operation fails with EIO, so nothing a dying
    /// process still sends lands after the cut.
    powered: bool,
    pub(crate) faults: Faults,
    last_write: Option<LastWrite>,
    /// A cut that happens at the next fsync, in place of it (see [`Disk::arm_cut`]).
    armed: Option<Cut>,
    /// What the last armed cut dropped, once it has happened.
    pub(crate) armed_report: Option<CutReport>,
    /// An armed or taken bad write (one at a time).
    bad_write: Option<BadWriteFault>,
    /// The next open handle's id.
    next_handle: u64,
}

type Result<T> = std::result::Result<T, Errno>;

impl Disk {
    /// An empty disk whose durable file content lives in `backing_dir` (an empty directory).
    pub(crate) fn new(backing_dir: PathBuf) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node::new(
                Kind::Dir(DirEntries {
                    parent: ROOT,
                    ..DirEntries::default()
                }),
                0o755,
                0,
                0,
            ),
        );
        Disk {
            nodes,
            next_ino: ROOT + 1,
            backing_dir,
            powered: true,
            faults: Faults::default(),
            last_write: None,
            armed: None,
            armed_report: None,
            bad_write: None,
            next_handle: 1,
        }
    }

    fn powered(&self) -> Result<()> {
        if self.powered {
            Ok(())
        } else {
            Err(Errno::EIO)
        }
    }

    fn node(&self, ino: u64) -> Result<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: u64) -> Result<&DirEntries> {
        match &self.node(ino)?.kind {
            Kind::Dir(dir) => Ok(dir),
            Kind::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut DirEntries> {
        match &mut self.node_mut(ino)?.kind {
            Kind::Dir(dir) => Ok(dir),
            Kind::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut FileData> {
        match &mut self.node_mut(ino)?.kind {
            Kind::File(file) => Ok(file),
            Kind::Dir(_) => Err(Errno::EISDIR),
        }
    }

    pub(crate) fn attr(&self, ino: u64) -> Result<FileAttr> {
        self.powered()?;
        let node = self.node(ino)?;
        let (kind, size, nlink) = match &node.kind {
            Kind::File(file) => (FileType::RegularFile, file.len, 1),
            Kind::Dir(dir) => (FileType::Directory, 0, 2 + dir.subdirs(self)),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.ctime,
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm: node.perm,
            nlink,
            uid: node.uid,
            gid: node.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    pub(crate) fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr> {
        self.powered()?;
        let ino = *self.dir(parent)?.current.get(name).ok_or(Errno::ENOENT)?;
        self.attr(ino)
    }

    /// A new file or directory named `name` in `parent` (not durable until `parent` is synced).
    pub(crate) fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        directory: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<FileAttr> {
        self.powered()?;
        if self.free_bytes() == Some(0) {
            return Err(Errno::ENOSPC);
        }
        if self.dir(parent)?.current.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let kind = if directory {
            Kind::Dir(DirEntries {
                parent,
                ..DirEntries::default()
            })
        } else {
            let backing = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(self.backing_dir.join(ino.to_string()))
                .map_err(Errno::from)?;
            Kind::File(FileData {
                durable_len: 0,
                durable_visible: 0,
                len: 0,
                unsynced: Extents::default(),
                backing,
            })
        };
        self.nodes
            .insert(ino, Node::new(kind, (mode & 0o7777) as u16, uid, gid));
        self.dir_mut(parent)?.current.insert(name.to_owned(), ino);
        self.touch(parent);
        self.attr(ino)
    }

    /// Removes `name` from `parent`: a file (`directory` false) or an empty directory.
    pub(crate) fn remove(&mut self, parent: u64, name: &OsStr, directory: bool) -> Result<()> {
        self.powered()?;
        let ino = *self.dir(parent)?.current.get(name).ok_or(Errno::ENOENT)?;
        match (&self.node(ino)?.kind, directory) {
            (Kind::Dir(dir), true) if !dir.current.is_empty() => return Err(Errno::ENOTEMPTY),
            (Kind::Dir(_), false) => return Err(Errno::EISDIR),
            (Kind::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        self.dir_mut(parent)?.current.remove(name);
        self.touch(parent);
        Ok(())
    }

    /// `rename(2)`; with `no_replace`, an existing target is EEXIST (`RENAME_NOREPLACE`).
    pub(crate) fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<()> {
        self.powered()?;
        let ino = *self.dir(parent)?.current.get(name).ok_or(Errno::ENOENT)?;
        self.dir(new_parent)?;
        let moving_dir = matches!(self.node(ino)?.kind, Kind::Dir(_));
        if moving_dir && self.is_ancestor(ino, new_parent) {
            return Err(Errno::EINVAL);
        }
        if let Some(&target) = self.dir(new_parent)?.current.get(new_name) {
            if target == ino {
                return Ok(());
            }
            if no_replace {
                return Err(Errno::EEXIST);
            }
            match (&self.node(target)?.kind, moving_dir) {
                (Kind::Dir(dir), true) if !dir.current.is_empty() => {
                    return Err(Errno::ENOTEMPTY);
                }
                (Kind::Dir(_), false) => return Err(Errno::EISDIR),
                (Kind::File(_), true) => return Err(Errno::ENOTDIR),
                _ => {}
            }
        }
        self.dir_mut(parent)?.current.remove(name);
        self.dir_mut(new_parent)?
            .current
            .insert(new_name.to_owned(), ino);
        if moving_dir {
            self.dir_mut(ino)?.parent = new_parent;
        }
        self.touch(parent);
        self.touch(new_parent);
        Ok(())
    }

    /// Whether `ancestor` is `ino` or above it in the current tree (bounded by the number of
    /// nodes, should the parents ever form a loop).
    fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> bool {
        for _ in 0..=self.nodes.len() {
            if ino == ancestor {
                return true;
            }
            match self.dir(ino) {
                Ok(dir) if dir.parent != ino => ino = dir.parent,
                _ => return false,
            }
        }
        false
    }

    pub(crate) fn entries(&self, dir_ino: u64) -> Result<Vec<(u64, FileType, OsString)>> {
        self.powered()?;
        let dir = self.dir(dir_ino)?;
        let mut entries = vec![
            (dir_ino, FileType::Directory, OsString::from(".")),
            (dir.parent, FileType::Directory, OsString::from("..")),
        ];
        for (name, ino) in &dir.current {
            let kind = match self.node(*ino)?.kind {
                Kind::Dir(_) => FileType::Directory,
                Kind::File(_) => FileType::RegularFile,
            };
            entries.push((*ino, kind, name.clone()));
        }
        Ok(entries)
    }

    /// Opens `ino`; returns the handle's id (unique for the life of the disk).
    pub(crate) fn open(&mut self, ino: u64) -> Result<u64> {
        self.powered()?;
        let handle = self.next_handle;
        self.node_mut(ino)?.handles.insert(handle);
        self.next_handle += 1;
        Ok(handle)
    }

    /// Always succeeds, powered or not: the kernel releases handles of a killed process. A
    /// handle from before a cut is no longer held (the cut closed it) and changes nothing.
    pub(crate) fn release(&mut self, ino: u64, handle: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.handles.remove(&handle);
        }
    }

    pub(crate) fn read(&mut self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        self.powered()?;
        let file = self.file_mut(ino)?;
        let end = file.len.min(offset.saturating_add(u64::from(size)));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let durable_end = file.durable_len.min(file.durable_visible).min(end);
        if offset < durable_end {
            let backing = &file.backing;
            let part = &mut buf[..(durable_end - offset) as usize];
            backing.read_exact_at(part, offset).map_err(Errno::from)?;
        }
        file.unsynced.overlay(offset, &mut buf);
        Ok(buf)
    }

    pub(crate) fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<u32> {
        self.powered()?;
        let end = offset.saturating_add(data.len() as u64);
        self.check_growth(ino, end)?;
        let file = self.file_mut(ino)?;
        file.unsynced.write(offset, data);
        file.len = file.len.max(end);
        self.last_write = Some(LastWrite {
            ino,
            offset,
            len: data.len(),
        });
        self.touch(ino);
        u32::try_from(data.len()).map_err(|_| Errno::EINVAL)
    }

    pub(crate) fn setattr(&mut self, ino: u64, set: SetAttr) -> Result<FileAttr> {
        self.powered()?;
        if let Some(size) = set.size {
            self.check_growth(ino, size)?;
            self.file_mut(ino)?.truncate(size);
        }
        let node = self.node_mut(ino)?;
        if let Some(mode) = set.mode {
            node.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = set.uid {
            node.uid = uid;
        }
        if let Some(gid) = set.gid {
            node.gid = gid;
        }
        if let Some(mtime) = set.mtime {
            node.mtime = mtime;
        }
        node.ctime = SystemTime::now();
        self.attr(ino)
    }

    /// `fallocate` mode 0: the file is at least `offset + len` long.
    pub(crate) fn allocate(&mut self, ino: u64, offset: u64, len: u64) -> Result<()> {
        self.powered()?;
        let end = offset.saturating_add(len);
        self.check_growth(ino, end)?;
        let file = self.file_mut(ino)?;
        file.len = file.len.max(end);
        Ok(())
    }

    /// The files' lengths added up: what the disk holds (unlinked files still open included).
    pub(crate) fn used_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|node| match &node.kind {
                Kind::File(file) => file.len,
                Kind::Dir(_) => 0,
            })
            .sum()
    }

    /// Bytes free, if the disk's size is limited.
    pub(crate) fn free_bytes(&self) -> Option<u64> {
        let capacity = self.faults.capacity?;
        Some(capacity.saturating_sub(self.used_bytes()))
    }

    /// Whether file `ino` may grow to `new_len`: ENOSPC if that needs more than the disk has
    /// free. Shrinking and overwriting always succeed.
    fn check_growth(&self, ino: u64, new_len: u64) -> Result<()> {
        let len = match &self.node(ino)?.kind {
            Kind::File(file) => file.len,
            Kind::Dir(_) => return Err(Errno::EISDIR),
        };
        match self.free_bytes() {
            Some(free) if new_len.saturating_sub(len) > free => Err(Errno::ENOSPC),
            _ => Ok(()),
        }
    }

    /// Makes the file's content durable; a directory's entries (`fsync` of a directory).
    pub(crate) fn sync(&mut self, ino: u64) -> Result<()> {
        self.powered()?;
        if let Some(cut) = self.armed.take() {
            self.armed_report = Some(self.cut(cut));
            return Err(Errno::EIO);
        }
        let fails = self.faults.fsync_fails;
        if !fails {
            self.bad_write_at_sync(ino)?;
        }
        match &mut self.node_mut(ino)?.kind {
            Kind::File(file) if fails => {
                file.drop_unsynced();
                Err(Errno::EIO)
            }
            Kind::File(file) => file.sync(),
            Kind::Dir(_) if fails => Err(Errno::EIO),
            Kind::Dir(dir) => {
                dir.durable = dir.current.clone();
                self.collect_garbage();
                Ok(())
            }
        }
    }

    /// Arms a bad write: the next fsync of a file whose name ends with `name_suffix` succeeds,
    /// and every byte it stores goes wrong as `kind` says, shown at the next cut or
    /// [`Disk::reveal_bad_write`]. Replaces a bad write armed or taken before.
    pub(crate) fn arm_bad_write(&mut self, kind: BadWrite, name_suffix: &OsStr) {
        self.bad_write = Some(BadWriteFault {
            kind,
            name_suffix: name_suffix.to_owned(),
            taken: None,
        });
    }

    /// Disarms the bad write, armed or taken: a taken one's bytes stay as written (they
    /// reached the platter after all).
    pub(crate) fn disarm_bad_write(&mut self) {
        self.bad_write = None;
    }

    /// The armed bad write, once an fsync took it.
    pub(crate) fn bad_write_report(&self) -> Option<BadWriteReport> {
        let taken = self.bad_write.as_ref()?.taken.as_ref()?;
        Some(taken.report.clone())
    }

    /// At an fsync of `ino` (before its bytes are stored): takes the armed bad write if the
    /// file's name matches and it has bytes to store, and keeps a taken one's count of later
    /// fsyncs. A later fsync that stores over the bad write's bytes (or where a misdirected
    /// write landed) undoes the fault: those bytes reached the platter after all.
    fn bad_write_at_sync(&mut self, ino: u64) -> Result<()> {
        let Some(fault) = &self.bad_write else {
            return Ok(());
        };
        let kind = fault.kind;
        let Kind::File(file) = &self.node(ino)?.kind else {
            return Ok(());
        };
        match &fault.taken {
            Some(taken) if taken.ino == ino => {
                let overlaps = file.unsynced.iter().any(|(offset, bytes)| {
                    let end = offset + bytes.len() as u64;
                    taken.extents.iter().any(|(at, _, new)| {
                        let hit = |start: u64| start < end && offset < start + new.len() as u64;
                        hit(*at) || hit(misdirected_to(kind, *at))
                    })
                });
                if overlaps {
                    self.bad_write = None;
                } else if let Some(taken) = self.bad_write.as_mut().and_then(|f| f.taken.as_mut()) {
                    taken.report.later_syncs += 1;
                }
            }
            Some(_) => {}
            None => {
                let Some(name) = self.name_of(ino) else {
                    return Ok(());
                };
                if file.unsynced.bytes() == 0
                    || !name
                        .as_encoded_bytes()
                        .ends_with(fault.name_suffix.as_encoded_bytes())
                {
                    return Ok(());
                }
                let mut extents = Vec::new();
                for (offset, bytes) in file.unsynced.iter() {
                    let before = file.durable_bytes(offset, bytes.len())?;
                    extents.push((offset, before, bytes.to_vec()));
                }
                let offset = extents.first().map_or(0, |(at, _, _)| *at);
                let end = extents
                    .last()
                    .map_or(0, |(at, _, new)| at + new.len() as u64);
                let taken = TakenBadWrite {
                    ino,
                    report: BadWriteReport {
                        file: name,
                        offset,
                        len: end - offset,
                        later_syncs: 0,
                    },
                    extents,
                };
                if let Some(fault) = self.bad_write.as_mut() {
                    fault.taken = Some(taken);
                }
            }
        }
        Ok(())
    }

    /// The platter shows a taken bad write (the cache that hid it is gone): its extents read
    /// what the file held before, and a misdirected write's bytes land where it went. Bytes
    /// past the file's durable length are left out (the file does not grow). Returns whether
    /// a bad write was shown; it is disarmed either way.
    pub(crate) fn reveal_bad_write(&mut self) -> bool {
        let Some(BadWriteFault {
            kind,
            taken: Some(taken),
            ..
        }) = self.bad_write.take()
        else {
            return false;
        };
        let Some(Node {
            kind: Kind::File(file),
            ..
        }) = self.nodes.get_mut(&taken.ino)
        else {
            return false;
        };
        for (offset, before, new) in &taken.extents {
            file.overwrite_durable(*offset, before);
            if let BadWrite::Misdirected { .. } = kind {
                file.overwrite_durable(misdirected_to(kind, *offset), new);
            }
        }
        true
    }

    /// A current name of `ino` (the first directory entry found that holds it).
    fn name_of(&self, ino: u64) -> Option<OsString> {
        self.nodes.values().find_map(|node| match &node.kind {
            Kind::Dir(dir) => dir
                .current
                .iter()
                .find(|(_, child)| **child == ino)
                .map(|(name, _)| name.clone()),
            Kind::File(_) => None,
        })
    }

    /// Bytes written and not yet synced, on every file.
    pub(crate) fn unsynced_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|node| match &node.kind {
                Kind::File(file) => file.unsynced.bytes(),
                Kind::Dir(_) => 0,
            })
            .sum()
    }

    /// A power cut: everything not synced is dropped (see [`Cut`]), and every operation fails
    /// with EIO until [`Disk::power_on`].
    pub(crate) fn cut(&mut self, cut: Cut) -> CutReport {
        let mut report = CutReport::default();
        if let Some(last) = self.last_write
            && let Some(Node {
                kind: Kind::File(file),
                ..
            }) = self.nodes.get_mut(&last.ino)
        {
            report.torn_bytes = match cut {
                Cut::Clean => 0,
                Cut::TornLastWrite { keep } => file.keep_torn(last, 0, keep).unwrap_or(0),
                Cut::TornOutOfOrder { skip } => file.keep_torn(last, skip, last.len).unwrap_or(0),
            };
        }
        self.last_write = None;
        // A cut ends any armed one: it must not fire in the next process's first fsync.
        self.armed = None;
        for node in self.nodes.values_mut() {
            match &mut node.kind {
                Kind::File(file) => report.dropped_bytes += file.drop_unsynced(),
                Kind::Dir(dir) => dir.current = dir.durable.clone(),
            }
            node.handles.clear();
        }
        // The cache is gone with the power: a bad write shows. After the unsynced bytes went,
        // so that its bytes land on the durable content.
        report.bad_writes = usize::from(self.reveal_bad_write());
        report.dropped_entries = self.collect_garbage();
        self.reparent();
        self.powered = false;
        report
    }

    pub(crate) fn power_on(&mut self) {
        self.powered = true;
    }

    /// Arms a cut for the worst moment: the next fsync (of any file or directory) does not
    /// happen, and the cut does instead, so the data that fsync was for is lost unless the cut
    /// tears it. A program that writes and then fsyncs always has something unsynced then.
    pub(crate) fn arm_cut(&mut self, cut: Cut) {
        self.armed = Some(cut);
        self.armed_report = None;
    }

    /// Cuts now unless the armed cut already happened; either way the power is off after it.
    /// Returns what the cut dropped.
    pub(crate) fn cut_armed_or_now(&mut self) -> CutReport {
        match (self.armed.take(), self.armed_report.take()) {
            (_, Some(report)) => report,
            (Some(cut), None) => self.cut(cut),
            (None, None) => self.cut(Cut::Clean),
        }
    }

    /// Removes the nodes that no directory entry, durable or current, reaches and that no
    /// handle holds open, with their backing files. Returns how many.
    fn collect_garbage(&mut self) -> usize {
        let mut reached = HashSet::from([ROOT]);
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if let Some(Node {
                kind: Kind::Dir(dir),
                ..
            }) = self.nodes.get(&ino)
            {
                for child in dir.current.values().chain(dir.durable.values()) {
                    if reached.insert(*child) {
                        stack.push(*child);
                    }
                }
            }
        }
        let gone: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(ino, node)| !reached.contains(ino) && node.handles.is_empty())
            .map(|(ino, _)| *ino)
            .collect();
        for ino in &gone {
            if let Some(Node {
                kind: Kind::File(_),
                ..
            }) = self.nodes.remove(ino)
            {
                // Its content is gone with it (nothing reaches it); a failure only leaves a
                // file behind in the backing dir.
                let _ = std::fs::remove_file(self.backing_dir.join(ino.to_string()));
            }
        }
        gone.len()
    }

    /// Sets every directory's parent from a walk of the current tree from the root (the first
    /// entry that reaches a directory wins: after a cut a directory moved without syncing both
    /// sides may be listed twice).
    fn reparent(&mut self) {
        let mut parents = HashMap::from([(ROOT, ROOT)]);
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if let Ok(dir) = self.dir(ino) {
                for child in dir.current.values() {
                    if matches!(self.nodes.get(child).map(|n| &n.kind), Some(Kind::Dir(_)))
                        && !parents.contains_key(child)
                    {
                        parents.insert(*child, ino);
                        stack.push(*child);
                    }
                }
            }
        }
        for (child, parent) in parents {
            if let Ok(dir) = self.dir_mut(child) {
                dir.parent = parent;
            }
        }
    }

    fn touch(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            let now = SystemTime::now();
            node.mtime = now;
            node.ctime = now;
        }
    }
}

/// Where a write to `offset` lands under `kind`.
fn misdirected_to(kind: BadWrite, offset: u64) -> u64 {
    match kind {
        BadWrite::Lost => offset,
        BadWrite::Misdirected { back } => offset.saturating_sub(back),
    }
}

impl Node {
    fn new(kind: Kind, perm: u16, uid: u32, gid: u32) -> Self {
        let now = SystemTime::now();
        Node {
            kind,
            perm,
            uid,
            gid,
            mtime: now,
            ctime: now,
            handles: HashSet::new(),
        }
    }
}

impl DirEntries {
    fn subdirs(&self, disk: &Disk) -> u32 {
        let count = self
            .current
            .values()
            .filter(|ino| matches!(disk.nodes.get(ino).map(|n| &n.kind), Some(Kind::Dir(_))))
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }
}

impl FileData {
    fn truncate(&mut self, len: u64) {
        self.unsynced.truncate(len);
        self.durable_visible = self.durable_visible.min(len);
        self.len = len;
    }

    /// Writes the unsynced bytes to the backing file.
    fn sync(&mut self) -> Result<()> {
        let backing = &self.backing;
        let visible = self.durable_visible.min(self.durable_len);
        if visible < self.durable_len {
            backing.set_len(visible).map_err(Errno::from)?;
        }
        for (offset, bytes) in self.unsynced.iter() {
            backing.write_all_at(bytes, offset).map_err(Errno::from)?;
        }
        backing.set_len(self.len).map_err(Errno::from)?;
        self.unsynced.clear();
        self.durable_len = self.len;
        self.durable_visible = self.len;
        Ok(())
    }

    /// The `len` bytes at `offset` as the file durably holds them (zeros past the durable
    /// content's visible end).
    fn durable_bytes(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let visible = self.durable_len.min(self.durable_visible);
        if offset < visible {
            let part = (visible - offset).min(len as u64) as usize;
            self.backing
                .read_exact_at(&mut buf[..part], offset)
                .map_err(Errno::from)?;
        }
        Ok(buf)
    }

    /// Writes `bytes` at `offset` into the durable content, leaving out what lies past its
    /// end. Best effort, as a fault injected behind the program's back: a failure to write the
    /// backing file leaves the durable content as it was.
    fn overwrite_durable(&mut self, offset: u64, bytes: &[u8]) {
        let end = self.durable_len.min(self.durable_visible);
        if offset >= end {
            return;
        }
        let part = (end - offset).min(bytes.len() as u64) as usize;
        let _ = self.backing.write_all_at(&bytes[..part], offset);
    }

    /// Back to the durable content; returns the bytes dropped.
    fn drop_unsynced(&mut self) -> u64 {
        let dropped = self.unsynced.bytes();
        self.unsynced.clear();
        self.len = self.durable_len;
        self.durable_visible = self.durable_len;
        dropped
    }

    /// Writes bytes `from..to` of `last` to the backing file if they are still unsynced;
    /// returns how many.
    fn keep_torn(&mut self, last: LastWrite, from: usize, to: usize) -> Option<usize> {
        let to = to.min(last.len);
        if from >= to {
            return None;
        }
        let start = last.offset + from as u64;
        let kept = self.unsynced.get(start, to - from)?.to_vec();
        self.backing.write_all_at(&kept, start).ok()?;
        let end = last.offset + to as u64;
        if end > self.durable_len {
            self.durable_len = end;
        }
        Some(to - from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        disk: Disk,
        _dir: tempfile::TempDir,
    }

    fn disk() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        Fixture {
            disk: Disk::new(dir.path().to_path_buf()),
            _dir: dir,
        }
    }

    impl Fixture {
        fn create(&mut self, parent: u64, name: &str) -> u64 {
            let attr = self
                .disk
                .create(parent, OsStr::new(name), false, 0o644, 0, 0)
                .expect("create");
            attr.ino.0
        }

        /// A file in the root with `content`, both durable (the file and the root synced).
        fn synced_file(&mut self, name: &str, content: &[u8]) -> u64 {
            let ino = self.create(ROOT, name);
            self.disk.sync(ROOT).expect("dir sync");
            self.disk.write(ino, 0, content).expect("write");
            self.disk.sync(ino).expect("sync");
            ino
        }

        fn mkdir(&mut self, parent: u64, name: &str) -> u64 {
            let attr = self
                .disk
                .create(parent, OsStr::new(name), true, 0o755, 0, 0)
                .expect("mkdir");
            attr.ino.0
        }

        fn read_all(&mut self, ino: u64) -> Vec<u8> {
            self.disk.read(ino, 0, 1 << 20).expect("read")
        }

        fn find(&self, parent: u64, name: &str) -> Option<u64> {
            self.disk
                .lookup(parent, OsStr::new(name))
                .ok()
                .map(|a| a.ino.0)
        }

        fn cut(&mut self, cut: Cut) -> CutReport {
            let report = self.disk.cut(cut);
            self.disk.power_on();
            report
        }
    }

    #[test]
    fn unsynced_writes_are_gone_after_a_cut_and_synced_ones_stay() {
        let mut f = disk();
        let ino = f.synced_file("a", b"durable");
        f.disk.write(ino, 7, b" and lost").expect("write");
        f.disk.write(ino, 0, b"D").expect("write");
        assert_eq!(f.read_all(ino), b"Durable and lost");
        let report = f.cut(Cut::Clean);
        assert_eq!(report.dropped_bytes, 10);
        assert_eq!(f.read_all(ino), b"durable");
        assert_eq!(f.disk.attr(ino).expect("attr").size, 7);
    }

    #[test]
    fn a_new_file_needs_its_directory_synced() {
        let mut f = disk();
        let synced = f.create(ROOT, "synced");
        f.disk.write(synced, 0, b"x").expect("write");
        f.disk.sync(synced).expect("sync");
        f.disk.sync(ROOT).expect("dir sync");
        let unlinked = f.create(ROOT, "file-only");
        f.disk.write(unlinked, 0, b"y").expect("write");
        f.disk.sync(unlinked).expect("file sync, not the directory");
        let report = f.cut(Cut::Clean);
        assert_eq!(f.find(ROOT, "synced"), Some(synced));
        assert_eq!(f.find(ROOT, "file-only"), None);
        assert_eq!(report.dropped_entries, 1);
        assert!(f.disk.attr(unlinked).is_err(), "the inode is gone too");
    }

    #[test]
    fn a_rename_without_a_directory_sync_is_undone() {
        let mut f = disk();
        let old = f.create(ROOT, "current");
        f.disk.write(old, 0, b"old").expect("write");
        f.disk.sync(old).expect("sync");
        f.disk.sync(ROOT).expect("dir sync");
        // The atomic-replace pattern without its last step (the directory fsync).
        let new = f.create(ROOT, "current.tmp");
        f.disk.write(new, 0, b"new").expect("write");
        f.disk.sync(new).expect("sync");
        f.disk
            .rename(
                ROOT,
                OsStr::new("current.tmp"),
                ROOT,
                OsStr::new("current"),
                false,
            )
            .expect("rename");
        let found = f.find(ROOT, "current").expect("current");
        assert_eq!(f.read_all(found), b"new");
        f.cut(Cut::Clean);
        let found = f.find(ROOT, "current").expect("current");
        assert_eq!(f.read_all(found), b"old");
        assert_eq!(f.find(ROOT, "current.tmp"), None);

        // With the directory fsync it survives.
        let new = f.create(ROOT, "current.tmp");
        f.disk.write(new, 0, b"new").expect("write");
        f.disk.sync(new).expect("sync");
        f.disk
            .rename(
                ROOT,
                OsStr::new("current.tmp"),
                ROOT,
                OsStr::new("current"),
                false,
            )
            .expect("rename");
        f.disk.sync(ROOT).expect("dir sync");
        f.cut(Cut::Clean);
        let found = f.find(ROOT, "current").expect("current");
        assert_eq!(f.read_all(found), b"new");
    }

    #[test]
    fn an_unlink_without_a_directory_sync_is_undone() {
        let mut f = disk();
        let ino = f.create(ROOT, "segment");
        f.disk.write(ino, 0, b"entries").expect("write");
        f.disk.sync(ino).expect("sync");
        f.disk.sync(ROOT).expect("dir sync");
        f.disk
            .remove(ROOT, OsStr::new("segment"), false)
            .expect("unlink");
        assert_eq!(f.find(ROOT, "segment"), None);
        f.cut(Cut::Clean);
        let back = f.find(ROOT, "segment").expect("back after the cut");
        assert_eq!(f.read_all(back), b"entries");
    }

    #[test]
    fn a_directory_created_without_syncing_its_parent_is_gone_with_its_files() {
        let mut f = disk();
        let dir = f.mkdir(ROOT, "raft-log");
        let file = f.create(dir, "meta");
        f.disk.write(file, 0, b"m").expect("write");
        f.disk.sync(file).expect("sync");
        f.disk.sync(dir).expect("sync the new dir, not its parent");
        let report = f.cut(Cut::Clean);
        assert_eq!(f.find(ROOT, "raft-log"), None);
        assert_eq!(report.dropped_entries, 2);
    }

    #[test]
    fn a_torn_cut_keeps_a_prefix_of_the_last_write() {
        let mut f = disk();
        let ino = f.synced_file("log", b"head");
        f.disk.write(ino, 4, b"-record-one").expect("write");
        let report = f.cut(Cut::TornLastWrite { keep: 4 });
        assert_eq!(report.torn_bytes, 4);
        assert_eq!(f.read_all(ino), b"head-rec");
    }

    #[test]
    fn a_write_torn_out_of_order_keeps_its_end_and_not_its_start() {
        let mut f = disk();
        let ino = f.synced_file("log", b"head");
        f.disk.write(ino, 4, b"-record-one").expect("write");
        let report = f.cut(Cut::TornOutOfOrder { skip: 8 });
        assert_eq!(report.torn_bytes, 3);
        assert_eq!(f.read_all(ino), b"head\0\0\0\0\0\0\0\0one");
    }

    #[test]
    fn truncation_hides_durable_bytes_until_a_cut_brings_them_back() {
        let mut f = disk();
        let ino = f.synced_file("f", b"0123456789");
        let shrink = SetAttr {
            size: Some(2),
            ..SetAttr::default()
        };
        f.disk.setattr(ino, shrink).expect("truncate");
        let grow = SetAttr {
            size: Some(6),
            ..SetAttr::default()
        };
        f.disk.setattr(ino, grow).expect("extend");
        assert_eq!(f.read_all(ino), b"01\0\0\0\0");
        f.cut(Cut::Clean);
        assert_eq!(f.read_all(ino), b"0123456789");
        // Synced, the truncation is what the backing file holds.
        f.disk.setattr(ino, shrink).expect("truncate");
        f.disk.write(ino, 4, b"xy").expect("write");
        f.disk.sync(ino).expect("sync");
        f.cut(Cut::Clean);
        assert_eq!(f.read_all(ino), b"01\0\0xy");
    }

    #[test]
    fn a_failed_fsync_reports_eio_and_loses_the_data() {
        let mut f = disk();
        let ino = f.create(ROOT, "f");
        f.disk.write(ino, 0, b"abc").expect("write");
        f.disk.faults.fsync_fails = true;
        assert_eq!(f.disk.sync(ino), Err(Errno::EIO));
        f.disk.faults.fsync_fails = false;
        // The next fsync succeeds and the data it would have kept is gone.
        f.disk.sync(ino).expect("sync");
        assert_eq!(f.read_all(ino), b"");
    }

    #[test]
    fn a_full_disk_refuses_growth_but_not_overwrites() {
        let mut f = disk();
        let ino = f.create(ROOT, "f");
        f.disk.write(ino, 0, b"abcd").expect("write");
        f.disk.faults.capacity = Some(4);
        assert_eq!(f.disk.free_bytes(), Some(0));
        assert_eq!(f.disk.write(ino, 2, b"XYZ"), Err(Errno::ENOSPC));
        assert_eq!(f.disk.write(ino, 1, b"XY"), Ok(2));
        assert!(
            f.disk
                .create(ROOT, OsStr::new("g"), false, 0o644, 0, 0)
                .is_err()
        );
        f.disk.faults.capacity = None;
        assert_eq!(f.disk.write(ino, 2, b"XYZ"), Ok(3));
        assert_eq!(f.read_all(ino), b"aXXYZ");
    }

    #[test]
    fn a_limited_disk_takes_writes_up_to_its_size() {
        let mut f = disk();
        let a = f.create(ROOT, "a");
        let b = f.create(ROOT, "b");
        f.disk.write(a, 0, b"abcd").expect("write");
        f.disk.faults.capacity = Some(10);
        assert_eq!(f.disk.free_bytes(), Some(6));
        assert_eq!(f.disk.write(b, 0, b"123456"), Ok(6));
        assert_eq!(f.disk.write(b, 6, b"7"), Err(Errno::ENOSPC));
        // Space freed by a truncation can be written again, in another file.
        f.disk
            .setattr(
                a,
                SetAttr {
                    size: Some(1),
                    ..SetAttr::default()
                },
            )
            .expect("truncate");
        assert_eq!(f.disk.allocate(b, 0, 9), Ok(()));
        assert_eq!(f.disk.allocate(b, 0, 10), Err(Errno::ENOSPC));
        assert_eq!(f.disk.used_bytes(), 10);
    }

    #[test]
    fn between_a_cut_and_power_on_everything_fails() {
        let mut f = disk();
        let ino = f.create(ROOT, "f");
        f.disk.cut(Cut::Clean);
        assert_eq!(f.disk.lookup(ROOT, OsStr::new("f")), Err(Errno::EIO));
        assert_eq!(f.disk.write(ino, 0, b"late"), Err(Errno::EIO));
        f.disk.power_on();
        assert_eq!(f.find(ROOT, "f"), None);
    }

    #[test]
    fn an_armed_cut_happens_at_the_next_fsync_instead_of_it() {
        let mut f = disk();
        let ino = f.synced_file("log", b"entry-1");
        f.disk.arm_cut(Cut::TornLastWrite { keep: 3 });
        f.disk.write(ino, 7, b"entry-2").expect("writes still land");
        assert_eq!(f.disk.sync(ino), Err(Errno::EIO));
        assert_eq!(
            f.disk.write(ino, 14, b"late"),
            Err(Errno::EIO),
            "powered off"
        );
        let report = f.disk.cut_armed_or_now();
        assert_eq!((report.dropped_bytes, report.torn_bytes), (7, 3));
        f.disk.power_on();
        assert_eq!(f.read_all(ino), b"entry-1ent");
    }

    #[test]
    fn a_release_from_before_a_cut_does_not_close_a_newer_handle() {
        let mut f = disk();
        let ino = f.create(ROOT, "snap");
        f.disk.sync(ROOT).expect("dir sync");
        let old_handle = f.disk.open(ino).expect("open");
        f.cut(Cut::Clean);
        let new_handle = f.disk.open(ino).expect("open after the cut");
        f.disk
            .remove(ROOT, OsStr::new("snap"), false)
            .expect("unlink");
        // The killed process's close arrives late.
        f.disk.release(ino, old_handle);
        f.disk
            .sync(ROOT)
            .expect("dir sync collects unreachable nodes");
        assert!(f.disk.read(ino, 0, 10).is_ok(), "still open: must stay");
        f.disk.release(ino, new_handle);
        f.disk.sync(ROOT).expect("dir sync");
        assert_eq!(f.disk.read(ino, 0, 10), Err(Errno::ENOENT));
    }

    #[test]
    fn a_torn_cut_keeping_nothing_is_a_clean_one() {
        let mut f = disk();
        let ino = f.synced_file("log", b"synced");
        f.disk.write(ino, 6, b"-one").expect("write");
        f.disk.write(ino, 10, b"-two").expect("write");
        let report = f.cut(Cut::TornLastWrite { keep: 0 });
        assert_eq!(report.torn_bytes, 0);
        assert_eq!(f.read_all(ino), b"synced");
    }

    #[test]
    fn a_cut_leaves_no_armed_cut_behind() {
        let mut f = disk();
        let ino = f.create(ROOT, "f");
        f.disk.arm_cut(Cut::Clean);
        f.cut(Cut::Clean);
        f.disk.sync(ROOT).expect("the next fsync is an fsync");
        assert!(f.disk.attr(ino).is_err());
    }

    #[test]
    fn renaming_a_directory_into_itself_is_refused() {
        let mut f = disk();
        let a = f.mkdir(ROOT, "a");
        f.mkdir(a, "b");
        let b = f.find(a, "b").expect("b");
        assert_eq!(
            f.disk
                .rename(ROOT, OsStr::new("a"), b, OsStr::new("a"), false),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn a_lost_write_is_acknowledged_and_read_back_until_the_cut_shows_it() {
        let mut f = disk();
        let ino = f.synced_file("00001.seg", b"first ");
        let other = f.synced_file("state.redb", b"state");
        f.disk.arm_bad_write(BadWrite::Lost, OsStr::new(".seg"));
        // A file whose name does not match does not take it.
        f.disk.write(other, 5, b" more").expect("write");
        f.disk.sync(other).expect("sync");
        assert_eq!(f.disk.bad_write_report(), None);

        f.disk.write(ino, 6, b"second ").expect("write");
        f.disk.sync(ino).expect("the fsync succeeds");
        f.disk.write(ino, 13, b"third").expect("write");
        f.disk.sync(ino).expect("sync");
        let report = f.disk.bad_write_report().expect("taken");
        assert_eq!(
            (report.file.as_os_str(), report.offset, report.len),
            (OsStr::new("00001.seg"), 6, 7)
        );
        assert_eq!(report.later_syncs, 1);
        assert_eq!(f.read_all(ino), b"first second third", "the cache hides it");

        let cut = f.cut(Cut::Clean);
        assert_eq!(cut.bad_writes, 1);
        // The length moved on (metadata), the bytes did not: zeros where the file ended.
        assert_eq!(f.read_all(ino), b"first \0\0\0\0\0\0\0third");
        assert_eq!(f.read_all(other), b"state more");
        assert_eq!(f.disk.bad_write_report(), None, "disarmed by the cut");
    }

    #[test]
    fn a_misdirected_write_lands_earlier_and_its_own_range_keeps_the_old_bytes() {
        let mut f = disk();
        let ino = f.synced_file("log", b"aaaabbbbcccc");
        f.disk
            .arm_bad_write(BadWrite::Misdirected { back: 8 }, OsStr::new("log"));
        f.disk.write(ino, 8, b"XXXX").expect("write");
        f.disk.sync(ino).expect("sync");
        assert_eq!(f.read_all(ino), b"aaaabbbbXXXX");
        assert!(f.disk.reveal_bad_write(), "shown without a cut");
        assert_eq!(f.read_all(ino), b"XXXXbbbbcccc");
        assert!(!f.disk.reveal_bad_write(), "once");
    }

    #[test]
    fn a_later_write_over_a_bad_write_undoes_it() {
        let mut f = disk();
        let ino = f.synced_file("state.redb", b"page0page1");
        f.disk.arm_bad_write(BadWrite::Lost, OsStr::new(".redb"));
        f.disk.write(ino, 5, b"PAGE1").expect("write");
        f.disk.sync(ino).expect("sync");
        f.disk.write(ino, 7, b"G").expect("write");
        f.disk.sync(ino).expect("sync");
        assert_eq!(f.disk.bad_write_report(), None);
        let cut = f.cut(Cut::Clean);
        assert_eq!(cut.bad_writes, 0);
        assert_eq!(f.read_all(ino), b"page0PAGE1");
    }
}
