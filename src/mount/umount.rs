//! `cfsmount umount TARGET`: only mounts cfsmount made (a record with the mount id of what is
//! mounted there), only the caller's own in privileged mode, and exactly the pinned mount.

use std::os::fd::AsFd;
use std::path::Path;

use super::access::Access;
use super::error::MountError;
use super::kernel::Kernel;
use super::pipeline::check_procfs;
use super::records::{liveness, Liveness, MountRecord, RecordStore};
use super::request::Settings;

/// overlayfs `f_type`
const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// Unmounts the cfsmount mount at `target`: opened without following a final symlink (through
/// the access policy), matched by mount id (never by path) against its record, checked by the
/// access policy, then detached through the pinned fd.
pub(crate) fn unmount(
    target: &Path,
    access: &dyn Access,
    kernel: &dyn Kernel,
    settings: &Settings,
) -> Result<MountRecord, MountError> {
    check_procfs()?;
    let not_ours = |reason| MountError::NotOurs { target: target.into(), reason };
    let fd = access.open_umount_target(target)?;
    let dir_err = |errno| MountError::Dir { what: "target", path: target.into(), errno };
    let id = kernel.mount_id(fd.as_fd()).map_err(dir_err)?;
    if !id.is_mount_root {
        return Err(not_ours("not a mount point; a directory inside a mount does not name it"));
    }
    #[allow(clippy::unnecessary_cast)]
    if rustix::fs::fstatfs(&fd).map_err(dir_err)?.f_type as i64 != OVERLAYFS_SUPER_MAGIC {
        return Err(not_ours("not an overlay"));
    }
    // No state directory yet (a fresh machine): nothing was ever recorded.
    let Some(store) = RecordStore::open(&settings.state_dir, false)? else {
        return Err(not_ours("no record with its mount id"));
    };
    let _lock = store.lock()?;
    // A record that cannot be read is never trusted: as if there were none.
    let rec = store
        .read(id.id)
        .ok()
        .flatten()
        .filter(|r| r.mount_id_unique == id.unique)
        .ok_or_else(|| not_ours("no record with its mount id"))?;
    access.check_unmount(target, &rec)?;
    // Detach exactly the pinned mount (MNT_DETACH through /proc/self/fd/N; a plain umount2
    // would always see the mount busy, held by the very fd that pins it). The overlay, the EROFS
    // mount and the loop device under it go away as soon as the last file open in it is closed.
    kernel.umount_pinned(fd.as_fd()).map_err(|errno| MountError::Umount { target: target.into(), errno })?;
    drop(fd);
    // Still held open by someone: the record stays, without its target, so the per-user limits
    // keep counting the mount and its loop devices until they are released (liveness by
    // diskseq); otherwise, or with nothing to watch, it is removed.
    let mut detached = rec.clone();
    detached.target = None;
    let held = still_held(&detached);
    if !(held && store.write(&detached).is_ok()) {
        store.remove(rec.mount_id);
    }
    Ok(rec)
}

/// Whether the detached mount of `rec` is still held. Its EROFS superblocks go away while the
/// pinning fd is closed (the last reference), but a loop device under them is released
/// asynchronously (AUTOCLEAR runs from a workqueue after the superblock is gone), so a loop
/// still bound alone does not mean "held": the EROFS superblock on it (`/sys/fs/erofs/loopN`)
/// must still exist too. Kernels without that sysfs directory get up to half a second for the
/// release.
fn still_held(rec: &MountRecord) -> bool {
    let sysfs = Path::new("/sys/fs/erofs");
    let erofs_on_a_loop = || rec.loop_devices.iter().any(|d| d.file_name().is_some_and(|n| sysfs.join(n).exists()));
    for _ in 0..50 {
        if liveness(rec) != Liveness::Live {
            return false;
        }
        if sysfs.is_dir() {
            return erofs_on_a_loop();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    true
}
