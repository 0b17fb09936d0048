//! A node's data dir on a lossy disk (pkraft-lossyfs), for the power-cut and disk-fault tests
//! and the chaos harness.

use std::path::{Path, PathBuf};

use pkraft_lossyfs::LossyDisk;

/// Mounts a new lossy disk on `dir/data`, its durable content in `dir/backing`; returns it and
/// the mount point, to use as a node's data dir. `dir` must outlive the disk.
pub fn mount_lossy_disk(dir: &Path) -> std::io::Result<(LossyDisk, PathBuf)> {
    let mountpoint = dir.join("data");
    let backing = dir.join("backing");
    std::fs::create_dir_all(&mountpoint)?;
    std::fs::create_dir_all(&backing)?;
    let disk = LossyDisk::mount(&mountpoint, &backing).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("mount a lossy disk on {}: {e}", mountpoint.display()),
        )
    })?;
    Ok((disk, mountpoint))
}
