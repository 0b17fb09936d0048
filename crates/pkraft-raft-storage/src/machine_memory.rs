//! The memory this process may use, and the state cache derived from it when
//! `raft.state_cache_mib` is unset.
//!
//! What the process may use is the smaller of the machine's memory (`MemTotal` in
//! `/proc/meminfo`) and the memory limit of every cgroup it is in, from its own up to the root of
//! the hierarchy: a container's limit, a Kubernetes pod's, or a systemd unit's `MemoryMax=` is
//! what the kernel holds the process to, not the machine (cgroup v2's `memory.max`, v1's
//! `memory.limit_in_bytes`; Documentation/admin-guide/cgroup-v2.rst, "Memory"). The cgroups are
//! found where they are mounted (`/proc/self/mountinfo`), through each mount's root: inside a
//! container with a cgroup namespace `/proc/self/cgroup` names `/` and the mount shows the
//! container's own cgroup; without one, the mount's root is the container's cgroup
//! (`/docker/abc`) and `/proc/self/cgroup` names it or a cgroup below it.
//!
//! Why a share of it, and a ceiling: redb's page cache is the node's own memory and never
//! shrinks, while a read that misses it goes to the kernel's page cache, which the rest of the
//! memory holds and the kernel gives back under pressure. An eighth leaves most of the memory to
//! the kernel's cache and to the rest of the node (about 300 MiB beside the cache: with a 1 GiB
//! container limit, 128 MiB of cache and a node of about 430 MiB). The ceiling is the fixed
//! default this setting had before it was derived, 256 MiB: at 1M records a 512 MiB cache
//! answered names never asked before about 5 % faster here (154,041 and 146,724 q/s against
//! 146,525 and 140,230 with 256 MiB) and held 810-837 MiB steady and 947-1,118 MiB at its peak,
//! against 434-592 and 623-629 (docs/BENCHMARKS.md, "The state cache derived from the machine").
//! So the
//! derived cache lowers the setting where memory is short and never raises it; an operator who
//! wants more of a large store in the node's own memory sets `raft.state_cache_mib`
//! (docs/SCALING.md).

use std::path::{Path, PathBuf};

/// The share of the memory the process may use that a derived state cache takes (1/8).
pub const STATE_CACHE_SHARE: u64 = 8;
/// The least a derived state cache is, in MiB.
pub const STATE_CACHE_MIN_MIB: u64 = 16;
/// The most a derived state cache is, in MiB (see the module's comment).
pub const STATE_CACHE_MAX_MIB: u64 = 256;
/// The state cache when the memory the process may use cannot be read (not Linux, no `/proc`):
/// the ceiling, the fixed default this setting had before it was derived.
pub const STATE_CACHE_UNKNOWN_MEMORY_MIB: u64 = STATE_CACHE_MAX_MIB;

/// A v1 limit at or above this is "no limit": the kernel shows an unlimited cgroup as the
/// largest page count times the page size (9,223,372,036,854,771,712 with 4 KiB pages).
const CGROUP_V1_UNLIMITED: u64 = 1 << 62;

/// What limits the memory this process may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemorySource {
    /// The machine's memory (`MemTotal`): no cgroup limits it lower.
    Machine,
    /// The memory limit of this cgroup (a file of `/sys/fs/cgroup`).
    Cgroup(PathBuf),
}

impl std::fmt::Display for MemorySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemorySource::Machine => f.write_str("the machine's memory"),
            MemorySource::Cgroup(file) => write!(f, "the cgroup limit in {}", file.display()),
        }
    }
}

/// The memory this process may use and what sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub source: MemorySource,
}

/// The memory this process may use: the smaller of the machine's and its cgroups' limits. `None`
/// when even the machine's cannot be read.
pub fn memory_limit() -> Option<MemoryLimit> {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| mem_total_bytes(&meminfo))?;
    let cgroup = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .zip(std::fs::read_to_string("/proc/self/cgroup").ok())
        .and_then(|(mountinfo, membership)| cgroup_limit(&membership, &cgroup_mounts(&mountinfo)));
    Some(match cgroup {
        Some((bytes, file)) if bytes < machine => MemoryLimit {
            bytes,
            source: MemorySource::Cgroup(file),
        },
        _ => MemoryLimit {
            bytes: machine,
            source: MemorySource::Machine,
        },
    })
}

/// The state cache, in MiB, for a process that may use `memory_bytes`.
pub fn derived_state_cache_mib(memory_bytes: u64) -> u64 {
    (memory_bytes / STATE_CACHE_SHARE / (1 << 20)).clamp(STATE_CACHE_MIN_MIB, STATE_CACHE_MAX_MIB)
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .and_then(|kib| kib.checked_mul(1024))
}

/// Which hierarchy a cgroup mount shows: the limit file is named differently in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hierarchy {
    /// cgroup v2's unified hierarchy: `memory.max`.
    Unified,
    /// cgroup v1's memory controller: `memory.limit_in_bytes`.
    V1Memory,
}

impl Hierarchy {
    fn limit_file(self) -> &'static str {
        match self {
            Hierarchy::Unified => "memory.max",
            Hierarchy::V1Memory => "memory.limit_in_bytes",
        }
    }
}

/// A mounted cgroup hierarchy: the cgroup `root` of it shows at `mount_point`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    hierarchy: Hierarchy,
    /// The cgroup the mount shows at its mount point (`/docker/abc` in a container without a
    /// cgroup namespace; `/` mostly).
    root: PathBuf,
    mount_point: PathBuf,
}

/// The cgroup mounts in `mountinfo` (the text of `/proc/self/mountinfo`, proc(5)): cgroup v2
/// mounts, and v1 mounts holding the memory controller. A hybrid host has both (v2 at
/// `/sys/fs/cgroup/unified`, memory on v1); a container may show a cgroup below the
/// hierarchy's root at its mount point, so paths are resolved through the mount's root rather
/// than joined onto a fixed directory.
fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // "id parent major:minor root mount-point options [optional...] - fstype source super-options"
            let (mount, filesystem) = line.split_once(" - ")?;
            let mut mount = mount.split(' ');
            let root = mount.nth(3)?;
            let mount_point = mount.next()?;
            let mut filesystem = filesystem.split(' ');
            let fstype = filesystem.next()?;
            let super_options = filesystem.nth(1)?;
            let hierarchy = match fstype {
                "cgroup2" => Hierarchy::Unified,
                "cgroup" if super_options.split(',').any(|option| option == "memory") => {
                    Hierarchy::V1Memory
                }
                _ => return None,
            };
            Some(CgroupMount {
                hierarchy,
                root: PathBuf::from(unescape_mountinfo(root)),
                mount_point: PathBuf::from(unescape_mountinfo(mount_point)),
            })
        })
        .collect()
}

/// A mountinfo field with its octal escapes (`\040` for a space, `\011`, `\012`, `\134`)
/// turned back into the bytes they stand for; an escape that is not three octal digits is kept
/// as it is.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let escape = bytes.get(at + 1..at + 4).filter(|digits| {
            bytes[at] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match escape {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |value, digit| value * 8 + u32::from(digit - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                at += 4;
            }
            None => {
                out.push(bytes[at]);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The lowest memory limit of the cgroups named in `membership` (the text of
/// `/proc/self/cgroup`) and of their ancestors that `mounts` show, with the file that sets it;
/// `None` when none is limited. Every hierarchy there is a mount of is read (a hybrid v1/v2
/// host has both). A cgroup outside a mount's root (its path holds `..`, as when the process
/// sits outside its cgroup namespace's root) cannot be seen through that mount and is skipped;
/// ancestors above a mount's root cannot be seen either, so a limit set there (a container's
/// parent) is not read: the kernel still holds the process to it, but this cannot know it.
fn cgroup_limit(membership: &str, mounts: &[CgroupMount]) -> Option<(u64, PathBuf)> {
    let mut lowest: Option<(u64, PathBuf)> = None;
    for line in membership.lines() {
        // "hierarchy-ID:controller-list:cgroup-path"; the path may itself hold ':'.
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let hierarchy = if id == "0" && controllers.is_empty() {
            Hierarchy::Unified
        } else if controllers.split(',').any(|name| name == "memory") {
            Hierarchy::V1Memory
        } else {
            continue;
        };
        let path = Path::new(path);
        if path
            .components()
            .any(|part| part == std::path::Component::ParentDir)
        {
            continue;
        }
        for mount in mounts.iter().filter(|mount| mount.hierarchy == hierarchy) {
            let Ok(below_root) = path.strip_prefix(&mount.root) else {
                continue;
            };
            for dir in below_root.ancestors() {
                let file = mount.mount_point.join(dir).join(hierarchy.limit_file());
                let Some(bytes) = std::fs::read_to_string(&file)
                    .ok()
                    .and_then(|text| limit_bytes(&text))
                else {
                    continue;
                };
                if lowest.as_ref().is_none_or(|(low, _)| bytes < *low) {
                    lowest = Some((bytes, file));
                }
            }
        }
    }
    lowest
}

/// A cgroup memory limit file's value; `None` for no limit ("max", or v1's largest value).
fn limit_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse::<u64>()
        .ok()
        .filter(|&bytes| bytes < CGROUP_V1_UNLIMITED)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn the_derived_cache_is_an_eighth_between_its_floor_and_ceiling() {
        assert_eq!(derived_state_cache_mib(GIB), 128);
        assert_eq!(derived_state_cache_mib(1536 * MIB), 192);
        assert_eq!(derived_state_cache_mib(2 * GIB), STATE_CACHE_MAX_MIB);
        assert_eq!(derived_state_cache_mib(24 * GIB), STATE_CACHE_MAX_MIB);
        assert_eq!(derived_state_cache_mib(u64::MAX), STATE_CACHE_MAX_MIB);
        assert_eq!(derived_state_cache_mib(512 * MIB), 64);
        assert_eq!(derived_state_cache_mib(100 * MIB), STATE_CACHE_MIN_MIB);
        assert_eq!(derived_state_cache_mib(0), STATE_CACHE_MIN_MIB);
    }

    #[test]
    fn mem_total_is_read_in_kib() {
        let meminfo = "MemTotal:       24634368 kB\nMemFree:         1234 kB\n";
        assert_eq!(mem_total_bytes(meminfo), Some(24_634_368 * 1024));
        assert_eq!(mem_total_bytes("MemFree: 12 kB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn limit_files_read_no_limit_as_none() {
        assert_eq!(limit_bytes("max\n"), None);
        assert_eq!(limit_bytes("9223372036854771712\n"), None);
        assert_eq!(limit_bytes("157286400\n"), Some(157_286_400));
        assert_eq!(limit_bytes("garbage"), None);
    }

    /// A mount of `hierarchy` showing cgroup `root` at `mount_point`.
    fn mount(hierarchy: Hierarchy, root: &str, mount_point: &Path) -> CgroupMount {
        CgroupMount {
            hierarchy,
            root: PathBuf::from(root),
            mount_point: mount_point.to_path_buf(),
        }
    }

    #[test]
    fn cgroup_mounts_are_read_from_mountinfo() {
        // This machine's: a hybrid host, memory on v1, v2 at `unified`; and a container's v1
        // memory mount whose root is its own cgroup, at a mount point holding a space.
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime master:7 - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 31 0:32 /docker/abc /srv/with\\040space rw - cgroup cgroup rw,cpu,memory
51 31 0:40 / /mnt shared:1 - ext4 /dev/sda1 rw
";
        assert_eq!(
            cgroup_mounts(mountinfo),
            vec![
                mount(Hierarchy::V1Memory, "/", Path::new("/sys/fs/cgroup/memory")),
                mount(Hierarchy::Unified, "/", Path::new("/sys/fs/cgroup/unified")),
                mount(
                    Hierarchy::V1Memory,
                    "/docker/abc",
                    Path::new("/srv/with space")
                ),
            ]
        );
        assert_eq!(unescape_mountinfo("a\\134b\\04"), "a\\b\\04");
        assert!(cgroup_mounts("not mountinfo\n\n").is_empty());
    }

    /// A v2 hierarchy whose own cgroup is unlimited and whose parent is limited, and a v1
    /// memory hierarchy limited lower still: the lowest limit of either, with its file.
    #[test]
    fn the_lowest_limit_of_the_cgroup_and_its_ancestors_is_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v2 = dir.path().join("v2");
        let v1 = dir.path().join("v1");
        let mounts = [
            mount(Hierarchy::Unified, "/", &v2),
            mount(Hierarchy::V1Memory, "/", &v1),
        ];
        let own = v2.join("system.slice/pkraft.service");
        std::fs::create_dir_all(&own).expect("mkdir");
        std::fs::write(own.join("memory.max"), "max\n").expect("write");
        std::fs::write(v2.join("system.slice/memory.max"), "2147483648\n").expect("write");
        let membership_v2 = "0::/system.slice/pkraft.service\n";
        assert_eq!(
            cgroup_limit(membership_v2, &mounts),
            Some((2 * GIB, v2.join("system.slice/memory.max")))
        );

        std::fs::create_dir_all(v1.join("docker/abc")).expect("mkdir");
        std::fs::write(v1.join("docker/abc/memory.limit_in_bytes"), "536870912\n").expect("write");
        std::fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").expect("write");
        let hybrid =
            "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/system.slice/pkraft.service\n";
        assert_eq!(
            cgroup_limit(hybrid, &mounts),
            Some((512 * MIB, v1.join("docker/abc/memory.limit_in_bytes")))
        );
        // With no mount of either hierarchy there is nothing to read.
        assert_eq!(cgroup_limit(hybrid, &[]), None);
    }

    /// A container without a cgroup namespace: its memory mount's root is `/docker/abc`, shown
    /// at the mount point, and the process sits in a cgroup below it with a lower limit. Both
    /// are read through the mount's root (joining the path onto the mount point, as a fixed
    /// `/sys/fs/cgroup/memory` would, finds neither); a path outside the root, or with `..`
    /// (outside a cgroup namespace's root), is skipped.
    #[test]
    fn a_container_without_a_cgroup_namespace_reads_through_its_mount_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounts = [mount(Hierarchy::V1Memory, "/docker/abc", dir.path())];
        std::fs::create_dir_all(dir.path().join("worker")).expect("mkdir");
        std::fs::write(dir.path().join("memory.limit_in_bytes"), "1073741824\n").expect("write");
        assert_eq!(
            cgroup_limit("4:memory:/docker/abc\n", &mounts),
            Some((GIB, dir.path().join("memory.limit_in_bytes")))
        );
        std::fs::write(
            dir.path().join("worker/memory.limit_in_bytes"),
            "268435456\n",
        )
        .expect("write");
        assert_eq!(
            cgroup_limit("4:memory:/docker/abc/worker\n", &mounts),
            Some((256 * MIB, dir.path().join("worker/memory.limit_in_bytes")))
        );
        assert_eq!(cgroup_limit("4:memory:/docker/other\n", &mounts), None);
        assert_eq!(
            cgroup_limit("4:memory:/docker/abc/../other\n", &mounts),
            None
        );
        assert_eq!(cgroup_limit("4:memory:/../../x\n", &mounts), None);
    }

    /// Inside a container with a cgroup namespace the process is at `/`, and the limit is the
    /// root's file of the mount; no file at all (the host's root has none) is no limit.
    #[test]
    fn a_namespaced_container_reads_its_root_and_an_unlimited_host_gives_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounts = [mount(Hierarchy::Unified, "/", dir.path())];
        assert_eq!(cgroup_limit("0::/\n", &mounts), None);
        std::fs::write(dir.path().join("memory.max"), "1073741824\n").expect("write");
        assert_eq!(
            cgroup_limit("0::/\n", &mounts),
            Some((GIB, dir.path().join("memory.max")))
        );
        assert_eq!(cgroup_limit("not a cgroup line\n", &mounts), None);
    }
}
