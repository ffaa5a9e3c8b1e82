//! The few mount operations of an ALS root besides the composefs mounts (which the mount
//! engine makes): the root's own tmpfs, bind mounts of blobs into views, and the questions
//! "is this a mount point, of which filesystem" and "is this mount in use". All through
//! rustix's safe wrappers of the new mount API; nothing here resolves a path twice where a
//! pinned fd can be used.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, CWD};
use rustix::io::Errno;
use rustix::mount::{
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount, open_tree, FsMountFlags, FsOpenFlags,
    MountAttrFlags, MountPropagationFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags,
};

use super::AlsError;

/// `TMPFS_MAGIC` (statfs(2)).
pub const TMPFS_MAGIC: i64 = 0x0102_1994;
/// `OVERLAYFS_SUPER_MAGIC`.
pub const OVERLAYFS_MAGIC: i64 = 0x794c_7630;

fn sys<'a>(path: &'a Path, step: &'static str) -> impl FnOnce(Errno) -> AlsError + 'a {
    move |e| AlsError::Io { path: path.to_path_buf(), step, source: e.into() }
}

/// `O_PATH|O_DIRECTORY|O_NOFOLLOW` of a directory: the pinned target of a mount.
pub fn open_dir_path(p: &Path) -> Result<OwnedFd, AlsError> {
    rustix::fs::open(p, OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .map_err(sys(p, "opening"))
}

/// What is at `p`: whether it is the root of a mount, and that mount's filesystem magic.
pub fn mount_state(p: &Path) -> Result<Option<(bool, i64)>, AlsError> {
    let fd = match rustix::fs::open(p, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(sys(p, "opening")(e)),
    };
    let id = crate::mount::records::mount_id(fd.as_fd()).map_err(sys(p, "statx"))?;
    #[allow(clippy::unnecessary_cast)]
    let magic = rustix::fs::fstatfs(&fd).map_err(sys(p, "statfs"))?.f_type as i64;
    Ok(Some((id.is_mount_root, magic)))
}

/// A fresh tmpfs (`nosuid,nodev,noexec`, owner `uid:gid`, `mode`) attached on the directory
/// `target`, then made a shared mount (its own peer group), so that the mounts later made
/// below it also appear in mount namespaces copied from this one after it was attached
/// (rootless podman's namespace on a host whose `/` is private).
pub fn mount_tmpfs(target: &Path, mode: u32, uid: u32, gid: u32) -> Result<(), AlsError> {
    let tfd = open_dir_path(target)?;
    let fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(sys(target, "fsopen tmpfs"))?;
    for (k, v) in [
        ("mode", format!("{mode:o}")),
        ("uid", uid.to_string()),
        ("gid", gid.to_string()),
        ("size", "64m".into()),
        ("nr_inodes", "262144".into()),
    ] {
        fsconfig_set_string(&fs, k, v.as_str()).map_err(sys(target, "fsconfig tmpfs"))?;
    }
    fsconfig_create(&fs).map_err(sys(target, "creating the tmpfs"))?;
    let attrs =
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV | MountAttrFlags::MOUNT_ATTR_NOEXEC;
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(sys(target, "fsmount tmpfs"))?;
    let flags = MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH;
    move_mount(&mnt, "", &tfd, "", flags).map_err(sys(target, "attaching the tmpfs"))?;
    // The attached mount, named through the fd that still refers to it (no path lookup).
    let me = crate::mount::kernel::fd_path(mnt.as_fd());
    if let Err(e) = rustix::mount::mount_change(me.as_str(), MountPropagationFlags::SHARED) {
        let _ = rustix::mount::unmount(me.as_str(), UnmountFlags::DETACH);
        return Err(sys(target, "making the tmpfs shared")(e));
    }
    Ok(())
}

/// A read-only (`nosuid,nodev,noexec`) bind mount of the file `src` onto the existing file
/// `target` (a view's `blob`).
pub fn bind_file(src: &Path, target: &Path) -> Result<(), AlsError> {
    let clone = open_tree(
        CWD,
        src,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(sys(src, "open_tree"))?;
    let set = MountAttrFlags::MOUNT_ATTR_RDONLY
        | MountAttrFlags::MOUNT_ATTR_NOSUID
        | MountAttrFlags::MOUNT_ATTR_NODEV
        | MountAttrFlags::MOUNT_ATTR_NOEXEC;
    crate::sys::mount::mount_setattr_flags(clone.as_fd(), u64::from(set.bits()), 0).map_err(|e| AlsError::Io {
        path: src.into(),
        step: "mount_setattr",
        source: e.into(),
    })?;
    let tfd = rustix::fs::open(target, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .map_err(sys(target, "opening"))?;
    let flags = MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH;
    move_mount(&clone, "", &tfd, "", flags).map_err(sys(target, "attaching the bind mount"))
}

/// Whether the mount at `p` is in use (files open in it, a working directory, another mount
/// such as a container's overlay holding it as a layer): `umount2(MNT_EXPIRE)`, which never
/// unmounts on a first call; EAGAIN means idle (the expiry mark it sets is cleared by the
/// next access), EBUSY in use.
pub fn in_use(p: &Path) -> Result<bool, AlsError> {
    match rustix::mount::unmount(p, UnmountFlags::EXPIRE) {
        Err(Errno::AGAIN) => {
            // Clear the expiry mark at once (any path walk into the mount does), so that a
            // later check cannot be the "second call" that unmounts.
            drop(rustix::fs::open(p, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()));
            Ok(false)
        }
        Err(Errno::BUSY) => Ok(true),
        Ok(()) => Err(AlsError::Other(format!(
            "{}: the mount was already marked expired and idle, and the check unmounted it",
            p.display()
        ))),
        Err(e) => Err(sys(p, "umount2(MNT_EXPIRE)")(e)),
    }
}

/// Unmount the mount at `p` (not lazily: EBUSY when in use).
pub fn unmount(p: &Path) -> Result<(), AlsError> {
    rustix::mount::unmount(p, UnmountFlags::NOFOLLOW).map_err(sys(p, "umount2"))
}

/// Detach the mount at `p` and everything below it (lazily).
pub fn detach(p: &Path) -> Result<(), AlsError> {
    rustix::mount::unmount(p, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW).map_err(sys(p, "umount2(MNT_DETACH)"))
}
